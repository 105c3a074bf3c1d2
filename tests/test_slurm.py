"""The SLURM profile on a real single-node cluster (fixture ``slurm_cluster`` from tests/slurm_cluster.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"

# Three submitted rules (4 jobs), each with threads/mem_mb/runtime and a log that records what SLURM gave
# the job; `summarize` asks for a GPU, which the test cluster models.
TOY_SNAKEFILE = textwrap.dedent(
    """\
    localrules: all

    rule all:
        input: "results/summary.txt"

    rule numbers:
        output: "results/numbers_{n}.txt"
        log: "logs/numbers_{n}.log"
        threads: 1
        resources: mem_mb=200, runtime=5
        shell:
            "echo job=${{SLURM_JOB_ID:-none}} cpus=${{SLURM_CPUS_PER_TASK:-none}} > {log}; "
            "seq 1 {wildcards.n} > {output}"

    rule squares:
        input: expand("results/numbers_{n}.txt", n=[3, 5])
        output: "results/squares.txt"
        log: "logs/squares.log"
        threads: 2
        resources: mem_mb=300, runtime=5
        shell:
            "echo job=${{SLURM_JOB_ID:-none}} cpus=${{SLURM_CPUS_PER_TASK:-none}} > {log}; "
            "python -c 'import sys; print(*(int(x) ** 2 for f in sys.argv[1:] for x in open(f)))' "
            "{input} > {output}"

    rule summarize:
        input: "results/squares.txt"
        output: "results/summary.txt"
        log: "logs/summarize.log"
        threads: 1
        resources: mem_mb=200, runtime=5, gpu=1
        shell:
            "echo job=${{SLURM_JOB_ID:-none}} gpus=${{SLURM_GPUS_ON_NODE:-none}} > {log}; "
            "python -c 'import sys; v = open(sys.argv[1]).read().split(); print(len(v), sum(map(int, v)))' "
            "{input} > {output}"
    """
)
EXPECTED_JOBS = Counter({"numbers": 2, "squares": 1, "summarize": 1})


def _snakemake(workdir: Path, args: list[str], env: dict[str, str] | None = None) -> None:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env, text=True,
                          capture_output=True, timeout=600, check=False)
    assert proc.returncode == 0, f"snakemake {args} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


def _outputs(workdir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted((workdir / "results").rglob("*"))
            if p.is_file()}


def _log_field(workdir: Path, log: str, key: str) -> str:
    match = re.search(rf"\b{key}=(\S+)", (workdir / "logs" / log).read_text())
    assert match, f"{log} has no {key}="
    return match.group(1)


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_runs_toy_workflow(slurm_cluster, tmp_path):
    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    for d in (on_slurm, local):
        d.mkdir()
        (d / "Snakefile").write_text(TOY_SNAKEFILE)

    _snakemake(on_slurm, ["--workflow-profile", str(SLURM_PROFILE), *slurm_cluster.snakemake_args()],
               env=slurm_cluster.env)
    _snakemake(local, ["--workflow-profile", "none", "--cores", "2"])

    assert _outputs(on_slurm) == _outputs(local)
    assert _outputs(on_slurm)["results/summary.txt"] == b"8 69\n"  # 8 values: 1+4+9 + 1+4+9+16+25

    # Every submitted job ran as a SLURM job, completed, and was the only thing run from this directory.
    jobs = {job.job_id: job for job in slurm_cluster.jobs(work_dir=on_slurm)}
    assert len(jobs) == sum(EXPECTED_JOBS.values())
    assert {job.state for job in jobs.values()} == {"COMPLETED"}
    assert len({job.name for job in jobs.values()}) == 1  # the plugin's run id

    # The plugin's log paths (.snakemake/slurm_logs/rule_<rule>/<wildcards>/<jobid>.log) map rules to jobs.
    slurm_logs = on_slurm / ".snakemake" / "slurm_logs"
    rule_of = {int(p.stem): p.relative_to(slurm_logs).parts[0].removeprefix("rule_")
               for p in slurm_logs.rglob("*.log")}
    assert set(rule_of) == set(jobs)
    assert Counter(rule_of.values()) == EXPECTED_JOBS
    assert all(slurm_cluster.comments()[i].startswith(f"rule_{rule}") for i, rule in rule_of.items())

    # Declared resources reached SLURM and the job itself.
    job_of = {rule: i for i, rule in rule_of.items() if rule != "numbers"}
    assert "cpu=2" in jobs[job_of["squares"]].tres and "mem=300M" in jobs[job_of["squares"]].tres
    assert _log_field(on_slurm, "squares.log", "job") == str(job_of["squares"])
    assert _log_field(on_slurm, "squares.log", "cpus") == "2"
    assert _log_field(on_slurm, "summarize.log", "job") == str(job_of["summarize"])
    assert _log_field(on_slurm, "summarize.log", "gpus") == "1"
    numbers_jobs = {int(_log_field(on_slurm, f"numbers_{n}.log", "job")) for n in (3, 5)}
    assert numbers_jobs == {i for i, rule in rule_of.items() if rule == "numbers"}
    assert _log_field(local, "squares.log", "job") == "none"


def _artefacts(workdir: Path) -> dict[str, bytes]:
    """Every artefact of a run (results and the generated demo), logs and benchmarks left out."""
    files = {}
    for top in ("results", "resources"):
        for p in sorted((workdir / top).rglob("*")):
            rel = p.relative_to(workdir)
            if p.is_file() and "logs" not in rel.parts:
                files[str(rel)] = p.read_bytes()
                if p.name == "train_log.csv":  # its last column is wall-clock seconds
                    files[str(rel)] = b"\n".join(line.rsplit(b",", 1)[0] for line in p.read_bytes().splitlines())
    return files


@pytest.mark.slow
@pytest.mark.slurm
def test_demo_dag_runs_as_slurm_jobs_and_matches_a_local_run(slurm_cluster, tmp_path):
    """The whole demo DAG (a short demo at 128²) through SLURM: every job is a SLURM job, outputs equal a
    local run's byte for byte."""
    from tests.workflow_helpers import SNAKEMAKE

    from tests.workflow_helpers import TINY_COARSE, TINY_FINE

    config = ("demo: {duration: 3.0, size: 256, drive_duration: 2.0}\n"
              f"presets: {{cpu: {{coarse: {json.dumps(TINY_COARSE)}, fine: {json.dumps(TINY_FINE)}}}}}\n")
    # the repository's demo row at 128² (the sheet's resolution wins over presets)
    sheet = (REPO / "config" / "subjects.tsv").read_text().replace("\tauto\t256\t", "\tauto\t128\t")
    assert "\t128\t" in sheet
    (tmp_path / "subjects.tsv").write_text(sheet)
    runs = {}
    for name in ("slurm", "local"):
        work = tmp_path / name
        work.mkdir()
        (work / "extra.yaml").write_text(config)
        runs[name] = work
    base = [*SNAKEMAKE, "--configfile", str(REPO / "config" / "config.yaml")]
    common = ["--config", f"subjects={tmp_path}/subjects.tsv", f"drives={REPO}/config/drives.tsv"]

    def run(work: Path, args: list[str], env=None) -> str:
        proc = subprocess.run([*base, str(work / "extra.yaml"), "-d", str(work), *common, *args], env=env,
                              capture_output=True, text=True, timeout=1500)
        assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
        return proc.stdout + proc.stderr

    run(runs["slurm"], ["--workflow-profile", str(SLURM_PROFILE), *slurm_cluster.snakemake_args()],
        env=slurm_cluster.env)
    run(runs["local"], ["--workflow-profile", "none", "--cores", "2"])

    on_slurm, local = _artefacts(runs["slurm"]), _artefacts(runs["local"])
    assert any(k.endswith("cameras.json") for k in local) and any("/head/" in k for k in local)
    assert sorted(on_slurm) == sorted(local)
    differing = [k for k in local if on_slurm[k] != local[k]]
    assert not differing, differing[:10]

    # every job of the DAG but the target `all` ran as a SLURM job, and completed
    planned = subprocess.run([*base, str(runs["local"] / "extra.yaml"), "-d", str(tmp_path / "plan"), *common,
                              "-n", "--workflow-profile", "none"], capture_output=True, text=True)
    expected = Counter(re.findall(r"^rule (\w+):", planned.stdout, flags=re.M))
    del expected["all"]
    jobs = slurm_cluster.jobs(work_dir=runs["slurm"])
    assert {job.state for job in jobs} == {"COMPLETED"}
    slurm_logs = runs["slurm"] / ".snakemake" / "slurm_logs"
    rule_of = {int(p.stem): p.relative_to(slurm_logs).parts[0].removeprefix("rule_") for p in slurm_logs.rglob("*.log")}
    assert set(rule_of) == {job.job_id for job in jobs}
    assert Counter(rule_of.values()) == expected
