"""The Snakemake workflow: lint, the demo DAG, caching and targeted reruns."""

from __future__ import annotations

import subprocess

import pytest

from tests.workflow_helpers import REPO, SNAKEMAKE, make_workdir, planned_jobs, snakemake


def test_lint_is_clean():
    proc = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Congratulations, your workflow is in a good condition" in proc.stdout + proc.stderr


def test_demo_dry_run_lists_the_demo_jobs(tmp_path):
    proc = subprocess.run([*SNAKEMAKE, "-n", "--cores", "all", "-d", str(tmp_path), "--configfile",
                           str(REPO / "config" / "config.yaml"), "--config", f"subjects={REPO}/config/subjects.tsv",
                           f"drives={REPO}/config/drives.tsv"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for rule in ("make_demo", "prepare_video"):
        assert f"rule {rule}:" in proc.stdout


def test_invalid_config_stops_with_clear_message(tmp_path):
    work = make_workdir(tmp_path, {"a": ("a.mp4", 128)}, prepare={"resolutoin": 128})
    proc = snakemake(work, "-n", check=False)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "resolutoin" in output and "Additional properties" in output


@pytest.mark.slow
def test_cached_then_resolution_change_reruns_only_that_subject(demo_short, tmp_path):
    video = demo_short / "video.mp4"
    work = make_workdir(tmp_path / "w", {"a": (video, 128), "b": (video, 128)})
    snakemake(work, "--cores", "2")
    assert planned_jobs(work) == []
    proc = snakemake(work, "-n")
    assert "Nothing to be done" in proc.stdout + proc.stderr

    make_workdir(tmp_path / "w", {"a": (video, 128), "b": (video, 160)})
    jobs = planned_jobs(work)
    assert ("prepare_video", "b") in jobs
    assert all(subject == "b" for _, subject in jobs), jobs
    snakemake(work, "--cores", "2")
    assert planned_jobs(work) == []
    import json

    assert json.loads((work / "results" / "b" / "video.json").read_text())["resolution"] == 160
    assert json.loads((work / "results" / "a" / "video.json").read_text())["resolution"] == 128
