"""Coarse training (DESIGN.md section 3) on a synthetic subject rendered from known Gaussians: it fits,
resumes from a checkpoint exactly where an uninterrupted run would be, stops cleanly on SIGTERM, writes its
artefacts, and rejects inputs that do not belong together."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
import yaml

from pipeline import config as pipeline_config
from pipeline.checkpoint import Checkpointer, StopFlag, fingerprint, save_torch
from pipeline.dataset import Cameras, HeadViews
from pipeline.gaussians import GaussianModel
from pipeline.gaussians.densify import DensifyConfig
from pipeline.io import PipelineError, load_image
from pipeline.train import CoarseConfig, LearningRates, evaluate_views, head_box, train_coarse
from tests.train_synthetic import make_synthetic_subject
from tests.workflow_helpers import REPO


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return make_synthetic_subject(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture()
def views(subject):
    return HeadViews(subject["head"], Cameras.load(subject["cameras"]), subject["background"])


def _config(**overrides) -> CoarseConfig:
    base = CoarseConfig(iterations=60, init_points=300, sh_degree=1, sh_increase_every=30, checkpoint_every=1000,
                        log_every=10, densify=DensifyConfig(start=20, stop=50, every=15, reset_every=40))
    return replace(base, **overrides)


def test_coarse_training_fits_unseen_test_frames(views):
    torch.manual_seed(0)
    config = _config(iterations=300, densify=DensifyConfig(start=100, stop=250, every=50, reset_every=0))
    before, _ = evaluate_views(GaussianModel(**{k: t for k, t in _init(views, config).tensors().items()}), views,
                               views.cameras.test, backend="torch")
    result = train_coarse(views, config, backend="torch")
    after, _ = evaluate_views(result.model, views, views.cameras.test, backend="torch")
    assert after >= 30.0 and after > before + 8, (before, after)
    assert len(result.model) != 300  # densification ran
    rows = result.log_rows
    assert [r["iteration"] for r in rows] == list(range(10, 301, 10))
    assert np.mean([r["loss"] for r in rows[-5:]]) < 0.5 * np.mean([r["loss"] for r in rows[:3]])


def _init(views, config):
    from pipeline.train import initial_gaussians

    return initial_gaussians(config, views, head_box(views.cameras.canonical_landmarks),
                             torch.Generator().manual_seed(config.seed))


def test_head_box_contains_face_and_extends_to_hair_and_skull(views):
    landmarks = views.cameras.canonical_landmarks
    lo, hi = head_box(landmarks)
    assert (landmarks >= lo).all() and (landmarks <= hi).all()
    assert lo[1] < landmarks[:, 1].min() - 0.03  # hair above (y points down)
    assert hi[2] > 0.08  # back of the skull (z points away from the face)


def test_landmark_initialisation_takes_colours_from_the_frame(views):
    model = _init(views, _config(init="landmarks"))
    assert len(model) == len(views.cameras.canonical_landmarks)
    dc = model.sh[:, 0]
    assert dc.std(dim=0).min() > 0  # not the uniform grey of an uncoloured init


def _equal_models(a: GaussianModel, b: GaussianModel) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.tensors().values(), b.tensors().values()))


def test_resume_after_interruption_equals_uninterrupted_run(views, tmp_path):
    config = _config()
    straight = train_coarse(views, config, backend="torch")

    ckpt = Checkpointer(tmp_path / "coarse.pt", key="k")
    first = train_coarse(views, config, ckpt, backend="torch", stop_after=33)  # between densify steps
    assert first.resumed_from == 0 and ckpt.load()["iteration"] == 33
    resumed = train_coarse(views, config, ckpt, backend="torch")
    assert resumed.resumed_from == 33
    assert _equal_models(resumed.model, straight.model)
    assert len(straight.model) != config.init_points
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in straight.log_rows]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.log_rows] == strip


def test_checkpoint_of_other_settings_is_ignored(views, tmp_path):
    config = _config(iterations=20)
    path = tmp_path / "coarse.pt"
    train_coarse(views, config, Checkpointer(path, key=fingerprint(asdict(config))), backend="torch", stop_after=10)
    other = replace(config, lr=LearningRates(opacity=0.01))
    assert fingerprint(asdict(other)) != fingerprint(asdict(config))
    result = train_coarse(views, other, Checkpointer(path, key=fingerprint(asdict(other))), backend="torch")
    assert result.resumed_from == 0
    same = train_coarse(views, config, Checkpointer(path, key=fingerprint(asdict(config))), backend="torch")
    assert same.resumed_from == 10  # the other run saved no checkpoint of its own (checkpoint_every 1000)


def test_saved_torch_files_are_byte_reproducible(tmp_path):
    payload = {"model": {"means": torch.arange(6.0).reshape(2, 3)}, "test_psnr": 30.0}
    save_torch(tmp_path / "a.pt", payload)
    save_torch(tmp_path / "b.pt", payload)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt")["model"]["means"], payload["model"]["means"])


def test_truncated_checkpoint_is_ignored(views, tmp_path):
    path = tmp_path / "coarse.pt"
    path.write_bytes(b"PK\x03\x04 not a whole checkpoint")
    assert Checkpointer(path, key="k").load() is None
    assert train_coarse(views, _config(iterations=5), Checkpointer(path, "k"), backend="torch").resumed_from == 0


def test_stop_flag_saves_a_checkpoint_then_stops(views, tmp_path):
    stop = StopFlag()
    stop.signal = signal.SIGTERM  # as if SLURM's SIGTERM had arrived during the first iteration
    ckpt = Checkpointer(tmp_path / "coarse.pt", key="k")
    with pytest.raises(PipelineError, match="stopped by signal 15 at iteration 1; checkpoint saved"):
        train_coarse(views, _config(iterations=10), ckpt, stop, backend="torch")
    assert ckpt.load()["iteration"] == 1
    assert train_coarse(views, _config(iterations=10), ckpt, backend="torch").resumed_from == 1


def test_fingerprint_follows_file_contents_and_directory_listing(subject, tmp_path):
    base = fingerprint({"a": 1}, files=[subject["cameras"]], directories=[subject["head"]])
    assert base == fingerprint({"a": 1}, files=[subject["cameras"]], directories=[subject["head"]])
    assert base != fingerprint({"a": 2}, files=[subject["cameras"]], directories=[subject["head"]])
    copy = tmp_path / "cameras.json"
    doc = json.loads(subject["cameras"].read_text())
    doc["K"][0][0] += 1
    copy.write_text(json.dumps(doc))
    assert base != fingerprint({"a": 1}, files=[copy], directories=[subject["head"]])


def _cli(subject, out, *extra, settings=None):
    settings = settings or {"iterations": 40, "init_points": 200, "sh_degree": 1, "checkpoint_every": 10,
                            "densify": {"start": 10, "stop": 30, "every": 10, "reset_every": 0}}
    return [sys.executable, "-m", "pipeline.train", "coarse", "--head", str(subject["head"]),
            "--background", str(subject["background"]), "--cameras", str(subject["cameras"]),
            "--settings", json.dumps(settings), "--out-ply", str(out / "coarse.ply"),
            "--out-pt", str(out / "coarse.pt"), "--log-csv", str(out / "train_log.csv"),
            "--qc", str(out / "qc.png"), "--checkpoint", str(out / "ck" / "coarse.pt"), "--device", "cpu",
            "--threads", "1", *extra]


def test_cli_writes_every_artefact_and_removes_its_checkpoint(subject, tmp_path):
    proc = subprocess.run(_cli(subject, tmp_path), capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = GaussianModel.load_ply(tmp_path / "coarse.ply")
    saved = torch.load(tmp_path / "coarse.pt", weights_only=False)
    assert len(model) == saved["model"]["means"].shape[0] and model.sh_degree == 1
    assert torch.allclose(model.means, saved["model"]["means"])
    assert saved["train_size"] == [64, 64] and saved["iterations"] == 40 and np.isfinite(saved["test_psnr"])
    assert saved["head_box"].shape == (2, 3)
    with (tmp_path / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [25, 40] and set(rows[0]) >= {"loss", "psnr", "gaussians"}
    qc = load_image(tmp_path / "qc.png")
    assert qc.shape[1] == 3 * 64 and qc.shape[0] % 64 == 0
    assert not (tmp_path / "ck" / "coarse.pt").exists()
    assert "test PSNR" in proc.stderr


def test_cli_sigterm_checkpoints_and_a_rerun_resumes(subject, tmp_path):
    settings = {"iterations": 100000, "init_points": 200, "sh_degree": 0, "checkpoint_every": 100000}
    proc = subprocess.Popen(_cli(subject, tmp_path, settings=settings), cwd=REPO, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(8)  # start-up, then some iterations
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err[-2000:]
    assert "error: stopped by signal 15 at iteration" in err
    saved = torch.load(tmp_path / "ck" / "coarse.pt", weights_only=False)
    stopped_at = saved["state"]["iteration"]
    assert stopped_at > 0 and not (tmp_path / "coarse.ply").exists()

    settings["iterations"] = stopped_at + 5
    proc = subprocess.run(_cli(subject, tmp_path, settings=settings), capture_output=True, text=True, cwd=REPO)
    # other settings (iterations) -> other fingerprint: the old checkpoint is not taken for this run
    assert proc.returncode == 0 and "checkpoint of other settings or inputs ignored" in proc.stderr


def test_mismatched_inputs_name_the_file(subject, tmp_path):
    cams = Cameras.load(subject["cameras"])
    short = replace(cams, world_to_camera=cams.world_to_camera[:-1])
    with pytest.raises(PipelineError, match=r"head: 22 head frames but cameras.json has 21"):
        HeadViews(subject["head"], short, subject["background"])
    wrong = replace(cams, width=80, height=80)
    with pytest.raises(PipelineError, match=r"background.png: 64x64 pixels, cameras.json says 80x80"):
        HeadViews(subject["head"], wrong, subject["background"])
    bad = tmp_path / "cameras.json"
    bad.write_text(json.dumps({"width": 64}))
    with pytest.raises(PipelineError, match="cameras.json: not a cameras.json of track_head_pose"):
        Cameras.load(bad)


def test_training_resolution_scales_the_intrinsics(subject):
    cams = Cameras.load(subject["cameras"])
    views = HeadViews(subject["head"], cams, subject["background"], resolution=32)
    assert (views.width, views.height) == (32, 32) and views.image(0).shape == (32, 32, 3)
    assert torch.allclose(views.K, torch.tensor(cams.K, dtype=torch.float32) * torch.tensor([[0.5], [0.5], [1]]))


def test_unknown_coarse_setting_is_an_error():
    with pytest.raises(PipelineError, match="unknown keys iteratoins"):
        CoarseConfig.from_dict({"iteratoins": 5})


def test_schema_defaults_equal_the_dataclass_defaults():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["coarse"]["properties"]
    defaults = asdict(CoarseConfig())
    for key, spec in props.items():
        if key in ("lr", "densify"):
            for sub, sub_spec in spec["properties"].items():
                assert sub_spec["default"] == pytest.approx(defaults[key][sub]), f"coarse.{key}.{sub}"
        else:
            assert spec["default"] == defaults[key], f"coarse.{key}"
    assert set(props) == set(defaults)


def test_preset_overrides_merge_into_the_coarse_settings(tmp_path):
    (tmp_path / "s.tsv").write_text("subject\tvideo\tpreset\na\ta.mp4\tcpu\n")
    s = pipeline_config.load({"subjects": str(tmp_path / "s.tsv"), "drives": str(tmp_path / "none.tsv"),
                              "coarse": {"iterations": 5000, "lr": {"opacity": 0.02}},
                              "presets": {"cpu": {"coarse": {"iterations": 700, "densify": {"stop": 600}}}}})
    cpu = pipeline_config.stage_settings(s.config, "cpu", "coarse")
    assert cpu["iterations"] == 700 and cpu["densify"]["stop"] == 600 and cpu["densify"]["start"] == 300
    assert cpu["lr"]["opacity"] == 0.02
    assert pipeline_config.stage_settings(s.config, "default", "coarse")["iterations"] == 5000
    bad = {**s.config, "presets": {"cpu": {"coarse": {"iterations": -1}}}}
    with pytest.raises(PipelineError, match="presets.cpu.coarse"):
        pipeline_config.stage_settings(bad, "cpu", "coarse")
    assert os.path.exists(REPO / "workflow" / "rules" / "train.smk")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the request is valid")
def test_cuda_request_without_cuda_is_a_clear_error():
    from pipeline.train import pick_device

    with pytest.raises(PipelineError, match="--device cuda: CUDA is not available here"):
        pick_device("cuda")
    assert pick_device("auto").type == "cpu"
