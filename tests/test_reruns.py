"""Targeted reruns and faults (issue 6): -R reruns a stage and what is downstream of it, a config value
reruns only its readers, editing a stage's module reruns that stage, a killed job leaves nothing a later
run would take as complete."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import time

import pytest
import torch
import yaml

from tests.conftest import ffmpeg
from tests.workflow_helpers import (SNAKEMAKE, TINY_COARSE, TINY_FINE, copy_workflow, make_workdir, planned_jobs,
                                    snakemake)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(demo_short, tmp_path_factory):
    """A copy of the workflow, and a workdir whose whole DAG has run for subject 'a' with one drive."""
    root = tmp_path_factory.mktemp("reruns")
    snakefile = copy_workflow(root / "code")
    work = make_workdir(root / "w", {"a": (demo_short / "video.mp4", 128)},
                        drives=[("a", "novel", demo_short / "drive.wav")])
    snakemake(work, "--cores", "2", snakefile=snakefile)
    assert planned_jobs(work, snakefile=snakefile) == []
    return work, snakefile


def _rules(jobs):
    return sorted({rule for rule, _ in jobs})


# what depends on the audio features: the fine model and everything made from it
AUDIO_AND_DOWNSTREAM = sorted(["extract_audio_features", "extract_drive_features", "train_fine", "render",
                               "render_test", "evaluate", "report_pages"])


def test_forced_rule_reruns_it_and_downstream_only(finished):
    work, snakefile = finished
    assert _rules(planned_jobs(work, "-R", "extract_audio_features", snakefile=snakefile)) == AUDIO_AND_DOWNSTREAM
    rules = _rules(planned_jobs(work, "-R", "prepare_video", snakefile=snakefile))
    assert "prepare_video" in rules and "extract_audio_features" in rules
    assert "make_demo" not in rules


def _rules_with_extra_config(finished, name: str, text: str) -> list[str]:
    """Rules a dry run would run with the config file ``text`` added after the workdir's config.yaml."""
    work, snakefile = finished
    (work / name).write_text(text)
    return _rules(planned_jobs(work, "--configfile", str(work / "config.yaml"), str(work / name),
                               snakefile=snakefile))


def test_config_value_reruns_only_its_readers(finished):
    rules = _rules_with_extra_config(finished, "more.yaml", "audio: {n_mels: 40}\n")
    assert rules == AUDIO_AND_DOWNSTREAM
    rules = _rules_with_extra_config(finished, "fine.yaml", "fine: {lambda_mask: 0.2}\n")
    assert rules == ["evaluate", "render", "render_test", "report_pages", "train_fine"]


def test_editing_a_module_reruns_its_stage(finished):
    work, snakefile = finished
    module = snakefile.parent / "pipeline" / "audio.py"
    module.write_text(module.read_text() + "\n# an edit\n")
    assert _rules(planned_jobs(work, snakefile=snakefile)) == AUDIO_AND_DOWNSTREAM


def test_killed_job_leaves_no_complete_looking_artefact(demo_short, tmp_path):
    long_clip = tmp_path / "long.mp4"
    ffmpeg("-stream_loop", "9", "-i", str(demo_short / "video.mp4"), "-c", "copy", str(long_clip))
    work = make_workdir(tmp_path / "w", {"k": (long_clip, 512)})
    frames = work / "results" / "k" / "frames"
    cmd = [*SNAKEMAKE, "-d", str(work), "--configfile", str(work / "config.yaml"), "--cores", "1",
           "--until", "prepare_video"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    # wait until ffmpeg is writing frames into the temporary directory, then kill everything
    deadline = time.time() + 60
    while time.time() < deadline:
        partial = [p for p in (work / "results" / "k").glob(".frames.*") if any(p.iterdir())] \
            if (work / "results" / "k").is_dir() else []
        if partial:
            break
        time.sleep(0.05)
    else:
        pytest.fail("prepare_video never started writing")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not frames.exists() and not (work / "results" / "k" / "video.json").exists()
    snakemake(work, "--unlock")  # a hard kill leaves Snakemake's lock behind, as after a power loss
    snakemake(work, "--cores", "1", "--until", "prepare_video", "--rerun-incomplete")
    meta = json.loads((work / "results" / "k" / "video.json").read_text())
    assert len(list(frames.glob("*.jpg"))) == meta["frame_count"] >= 1000
    assert not list((work / "results" / "k").glob(".frames.*"))


@pytest.mark.parametrize("stage, settings, artefact, log_csv", [
    ("coarse", TINY_COARSE, "gaussians/coarse.ply", "gaussians/train_log.csv"),
    ("fine", TINY_FINE, "model/fine.pt", "model/train_log.csv"),
])
def test_killed_training_job_resumes_from_its_checkpoint(finished, tmp_path, stage, settings, artefact, log_csv):
    """Kill Snakemake and its training job (SIGKILL, as an OOM killer or a lost node would) after a
    checkpoint; the rerun resumes from that checkpoint, finishes, and removes it."""
    work, snakefile = finished
    copy = work.parent / f"w-killed-{stage}"  # beside the original: the code's relative path, hence the DAG, stays
    shutil.copytree(work, copy, symlinks=True)
    longer = {**settings, "iterations": 400, "checkpoint_every": 20, "log_every": 25}
    (copy / "longer.yaml").write_text(yaml.safe_dump({"presets": {"cpu": {stage: longer}}}))
    results = copy / "results" / "a"
    checkpoint, output_file = results / "checkpoints" / f"{stage}.pt", results / artefact
    cmd = [*SNAKEMAKE[:-1], str(snakefile), "-d", str(copy), "--configfile", str(copy / "config.yaml"),
           str(copy / "longer.yaml"), "--cores", "2", str(output_file.relative_to(copy))]
    started = os.path.getmtime(output_file)
    output = tmp_path / "snakemake.out"
    with output.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, f"snakemake ended before a checkpoint:\n{output.read_text()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists(), f"train_{stage} never wrote a checkpoint"
    saved_at = torch.load(checkpoint, weights_only=False)["state"]["iteration"]
    assert 20 <= saved_at < 400
    assert not output_file.exists() or os.path.getmtime(output_file) == started  # removed or stale

    subprocess.run([*cmd[:-3], "--unlock"], check=True, capture_output=True)
    done = subprocess.run([*cmd, "--rerun-incomplete"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "1 of 1 steps (100%) done" in done.stdout + done.stderr  # the training job alone, nothing upstream
    log = (results / "logs" / f"train_{stage}.log").read_text()
    assert f"resuming {stage} training from iteration {saved_at}" in log
    assert not checkpoint.exists()
    with (results / log_csv).open() as fh:
        iterations = [int(row["iteration"]) for row in csv.DictReader(fh)]
    assert iterations == list(range(25, 401, 25))  # every row once: the log lives in the checkpoint


def test_switching_extractor_reruns_the_audio_features_and_what_is_made_from_them(finished):
    rules = _rules_with_extra_config(finished, "extractor.yaml",
                                     "audio: {extractor: wav2vec2, model_path: /models/w2v}\n")
    assert rules == AUDIO_AND_DOWNSTREAM
