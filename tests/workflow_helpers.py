"""Running the workflow from tests: a throwaway working directory with its own config and sheets."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
# Coarse training settings that keep workflow tests fast (seconds): they test the DAG, not the fit.
TINY_COARSE = {"iterations": 30, "resolution": 64, "init_points": 200, "sh_degree": 1, "sh_increase_every": 15,
               "checkpoint_every": 10, "densify": {"start": 10, "stop": 20, "every": 10, "reset_every": 0}}
TINY_FINE = {"iterations": 20, "resolution": 64, "mouth_resolution": 128, "checkpoint_every": 10, "log_every": 10,
             "mouth_seed": 20, "model": {"resolution": 8, "scales": [1, 2], "feature_dim": 8, "hidden": 32},
             "densify": {"start": 10, "stop": 20, "every": 10}}


def make_workdir(root: Path, subjects: dict[str, tuple[Path, int]], drives: list[tuple[str, str, Path]] = (),
                 **overrides) -> Path:
    """A working directory whose sheets name ``subjects`` {name: (video, resolution)}."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["subject\tvideo\tresolution"] + [f"{n}\t{v}\t{r}" for n, (v, r) in subjects.items()]
    (root / "subjects.tsv").write_text("\n".join(lines) + "\n")
    lines = ["subject\taudio_id\taudio"] + [f"{s}\t{a}\t{p}" for s, a, p in drives]
    (root / "drives.tsv").write_text("\n".join(lines) + "\n")
    config = {"subjects": "subjects.tsv", "drives": "drives.tsv", "preset": "cpu", "audio": {"extractor": "mel"},
              "presets": {"cpu": {"coarse": TINY_COARSE, "fine": TINY_FINE}}, **overrides}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    return root


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow and the package (to edit code in a test); returns its Snakefile."""
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for part in ("Snakefile", "workflow", "pipeline", "config", "envs"):
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__", ".*"))
        else:
            shutil.copy2(src, dest / part)
    return dest / "Snakefile"


def snakemake(workdir: Path, *args: str, check: bool = True, env: dict | None = None,
              snakefile: Path | None = None) -> subprocess.CompletedProcess:
    """Run snakemake on ``workdir`` (with its config.yaml); ``snakefile`` defaults to the repository's."""
    base = [*SNAKEMAKE[:-1], str(snakefile)] if snakefile else SNAKEMAKE
    cmd = [*base, "-d", str(workdir), "--configfile", str(workdir / "config.yaml"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def planned_jobs(workdir: Path, *args: str, snakefile: Path | None = None) -> list[tuple[str, str]]:
    """(rule, subject) of every job a dry run would run, 'all' excluded."""
    jobs = []
    dry_run = snakemake(workdir, "-n", *args, snakefile=snakefile).stdout
    for block in re.split(r"\n(?=rule |localrule )", dry_run):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if not m or m[1] == "all":
            continue
        sub = re.search(r"wildcards: .*?subject=([^,\s]+)", block)
        jobs.append((m[1], sub[1] if sub else ""))
    return jobs
