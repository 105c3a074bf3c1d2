"""Fine training (pipeline/fine.py) on a synthetic talking subject whose mouth moves with a known audio signal:
the audio drives the learned deformation (true audio beats shuffled audio on unseen test frames), dynamic
splatting supervises only d, training never sees test audio, resume is exact, and the CLI writes a fine.pt
that renders on CPU."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from dataclasses import asdict, replace

import numpy as np
import pytest
import torch
import yaml

from pipeline import fine
from pipeline import landmarks as lmk
from pipeline.audioplane import AudioPlaneConfig, AudioPlaneDeformer, TalkingHead, displace
from pipeline.checkpoint import Checkpointer
from pipeline.gaussians.densify import DensifyConfig
from pipeline.io import PipelineError, load_image
from pipeline.losses import perceptual_loss
from pipeline.mouth_interior import interior_gaussians
from pipeline.split import audio_safe_train_frames
from tests.fine_synthetic import make_fine_subject
from tests.workflow_helpers import REPO

SMALL_MODEL = {"resolution": 8, "scales": [1, 2], "feature_dim": 8, "hidden": 32, "audio_dim": 16,
               "temporal_radius": 2}


def small_config(**overrides) -> fine.FineConfig:
    """Small and fast; over the plate, since the fixture's head targets have soft edges its parsing (alpha > 0.5)
    cuts, where a random background would put noise (split_head_torso cuts the targets with the parsing)."""
    base = fine.FineConfig(iterations=40, model=AudioPlaneConfig(**SMALL_MODEL), mouth_seed=0, mouth_interior=20,
                           lr_grids=2e-2, perceptual="dssim", random_background=False,
                           lr_networks=2e-3, checkpoint_every=1000, log_every=10,
                           densify=DensifyConfig(start=10_000, stop=0, every=100, reset_every=0))
    return replace(base, **overrides)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Training runs one torch thread, as the stage does by default (see README: threads under contention)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    return make_fine_subject(tmp_path_factory.mktemp("fine_subject"))


def load(subject, config):
    args = argparse.Namespace(**{k: subject[k] for k in ("cameras", "head", "background", "masks", "parsing",
                                                          "features", "blink", "landmarks")})
    return fine.load_data(args, config, torch.device("cpu"))


def mouth_psnr(head, data, features=None) -> float:
    return fine.evaluate_fine(head, data, data.views.cameras.test, "torch", features)["mouth_psnr"]


def test_audio_drives_the_mouth_on_unseen_frames(subject):
    torch.manual_seed(0)
    config = small_config(iterations=600)
    data = load(subject, config)
    coarse = fine.load_coarse(subject["coarse"])
    result = fine.train_fine(data, coarse, config, backend="torch")
    head = TalkingHead(result.gaussians, result.deformer, "synthetic", {}, 0)
    features = data.feature_tensor()
    shuffled = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(3))]
    true_psnr, shuffled_psnr = mouth_psnr(head, data), mouth_psnr(head, data, shuffled)
    untrained = fine.train_fine(data, coarse, replace(config, iterations=1, lr_grids=1e-12, lr_networks=1e-12),
                                backend="torch")
    static_psnr = mouth_psnr(TalkingHead(untrained.gaussians, untrained.deformer, "synthetic", {}, 0), data)
    assert true_psnr > shuffled_psnr + 1.5, (true_psnr, shuffled_psnr)
    assert true_psnr > static_psnr + 2.0, (true_psnr, static_psnr)
    iou = fine.evaluate_fine(head, data, data.views.cameras.test, "torch")["dynamism_iou"]
    assert iou > 0.3, iou  # dynamic splatting: d is high where the mouth mask is
    losses = [row["loss"] for row in result.log_rows]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


def test_mouth_shape_readout_learns_the_aperture_from_audio_alone(subject):
    """The code's mouth-shape readout is fitted to the face mesh of training frames (z-scored by their statistics
    only) and, from audio alone, predicts how far the lips part on test frames it never saw (the fixture's
    signal; the rest of the measured aperture follows the head pose, which the audio cannot know)."""
    torch.manual_seed(0)
    config = small_config(iterations=150, lambda_shape=1.0, lambda_landmarks=0.0)
    data = load(subject, config)
    train, test = data.views.cameras.train, data.views.cameras.test
    assert data.mouth_shape[train].mean(dim=0).abs().max() < 1e-4
    assert not torch.allclose(data.mouth_shape[test].mean(dim=0), torch.zeros(3))
    result = fine.train_fine(data, fine.load_coarse(subject["coarse"]), config, backend="torch")
    with torch.no_grad():
        codes = result.deformer.codes(data.feature_tensor(), torch.tensor(test))
        predicted = result.deformer.mouth_shape(codes)[:, 0].numpy()
        fitted = result.deformer.mouth_shape(result.deformer.codes(data.feature_tensor(), torch.tensor(train)))
    signal = np.load(subject["cameras"].parent / "signal.npy")
    assert np.corrcoef(predicted, signal[test])[0, 1] > 0.8
    # in the face mesh's units: aperture z-score per unit of signal as the training frames measured it (the six
    # test frames are too few to measure a slope on)
    measured = np.polyfit(signal[train], data.mouth_shape[train][:, 0].numpy(), 1)[0]
    assert measured > 0
    assert 0.75 * measured < np.polyfit(signal[train], fitted[:, 0].numpy(), 1)[0] < 1.25 * measured
    assert result.log_rows[-1]["shape"] < 0.5 * result.log_rows[0]["shape"]


def test_ridge_encoder_is_fitted_on_training_audio_and_predicts_unseen_frames(subject):
    """``audio_encoder: ridge``: before the first step the code becomes the mouth shape that a ridge regression
    reads off the training frames' audio; it predicts how far the lips part on test frames, and the test split's
    audio (and the frames whose context reaches into it) plays no part in the fit."""
    config = small_config(iterations=1, model=AudioPlaneConfig(**SMALL_MODEL, audio_encoder="ridge"))
    data = load(subject, config)
    coarse = fine.load_coarse(subject["coarse"])
    fitted = fine.train_fine(data, coarse, config, backend="torch").deformer
    test = data.views.cameras.test
    signal = np.load(subject["cameras"].parent / "signal.npy")
    with torch.no_grad():
        predicted = fitted.codes(data.feature_tensor(), torch.tensor(test))[:, 0].numpy()
    assert np.corrcoef(predicted, signal[test])[0, 1] > 0.8
    # the same fit with other audio in every window that hears the test split (a window spans ±W/4 frames)
    first = min(test) - data.features.shape[1] // 4
    changed = np.array(data.features)
    changed[first:] = np.random.default_rng(0).normal(size=changed[first:].shape)
    data.features = changed
    refitted = fine.train_fine(data, coarse, config, backend="torch").deformer
    for name in ("weight", "bias", "mean", "std"):
        torch.testing.assert_close(getattr(refitted.ridge, name), getattr(fitted.ridge, name), msg=name)


def test_ridge_appearance_adds_the_mouth_box_look_to_the_code(subject):
    """``ridge_appearance``: the code carries, after the mouth shape, scores of the mouth box's principal
    components, also predicted from audio: the fixture's mouth opens and darkens with its signal, so the first
    follows the signal on test frames; the shape readout stays the first three channels."""
    model = AudioPlaneConfig(**SMALL_MODEL, audio_encoder="ridge", ridge_appearance=2)
    config = small_config(iterations=1, model=model)
    data = load(subject, config)
    deformer = fine.train_fine(data, fine.load_coarse(subject["coarse"]), config, backend="torch").deformer
    test = data.views.cameras.test
    with torch.no_grad():
        codes = deformer.codes(data.feature_tensor(), torch.tensor(test))
    assert codes.shape == (len(test), 5)
    torch.testing.assert_close(deformer.shape_readout(codes), codes[:, :3])
    signal = np.load(subject["cameras"].parent / "signal.npy")
    assert abs(np.corrcoef(codes[:, 3].numpy(), signal[test])[0, 1]) > 0.8


def test_measured_codes_drive_training_frames_and_audio_drives_the_rest(subject, monkeypatch):
    """``measured_codes``: each training step is driven by its frame's measured code (the ridge's targets: the
    face mesh's mouth shape, then the mouth box's principal scores), not by the ridge's prediction from its audio;
    the trained deformer still codes any frame from its audio alone. The learnt encoder has no measured code."""
    model = AudioPlaneConfig(**SMALL_MODEL, audio_encoder="ridge", ridge_appearance=2)
    config = small_config(iterations=12, model=model, measured_codes=True)
    data = load(subject, config)
    frames = audio_safe_train_frames(data.views.cameras.train, data.views.cameras.test, model.audio_reach)
    measured = fine.measured_codes(data, frames, 2)
    assert measured.shape == (len(frames), 5)
    np.testing.assert_array_equal(measured[:, :3], data.mouth_shape[torch.tensor(frames)].numpy())
    seen = []
    original = fine.fine_step

    def spy(gaussians, deformer, data, frame, *args):
        seen.append((frame, args[-1], deformer.codes(data.feature_tensor(), torch.tensor([frame]))[0].detach()))
        return original(gaussians, deformer, data, frame, *args)

    monkeypatch.setattr(fine, "fine_step", spy)
    deformer = fine.train_fine(data, fine.load_coarse(subject["coarse"]), config, backend="torch").deformer
    assert len(seen) == 12
    for frame, driven, predicted in seen:
        torch.testing.assert_close(driven, torch.from_numpy(measured[frames.index(frame)]).float())
        assert not torch.allclose(driven, predicted, atol=1e-3)  # the prediction shrinks towards the mean
    test = torch.tensor(data.views.cameras.test)
    with torch.no_grad():
        assert torch.isfinite(deformer.codes(data.feature_tensor(), test)).all()
    with pytest.raises(PipelineError, match="measured_codes"):
        fine.FineConfig.from_dict({"measured_codes": True})


def test_weight_decay_shrinks_the_audio_path_only():
    """audio_weight_decay: with no gradient, one step scales the audio path's weights (encoder, attention, code
    norm, readout) by 1 - lr * decay and leaves the grids and decoders as they are."""
    torch.manual_seed(0)
    deformer = AudioPlaneDeformer(AudioPlaneConfig(**SMALL_MODEL), torch.tensor([[-1.0] * 3, [1.0] * 3]))
    config = small_config(audio_weight_decay=0.5, lr_networks=0.1)
    optimizer = fine.network_optimizer(deformer, config)
    before = {name: p.detach().clone() for name, p in deformer.named_parameters()}
    for p in deformer.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    audio_path = ("encoder.", "attention.", "norm.", "mouth_shape.")
    assert {name.split(".")[0] + "." for name in before if name.startswith(audio_path)} == set(audio_path)
    for name, p in deformer.named_parameters():
        factor = 1 - 0.1 * 0.5 if name.startswith(audio_path) else 1.0
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)


def test_landmark_loss_opens_the_deformed_mouth_with_the_audio(subject):
    """The canonical mouth landmarks, moved by the deformation field and projected, learn how far the face mesh
    saw the lips part (3·signal px here) and predict it from the audio alone, on test frames too. The shape
    readout keeps the audio code about the mouth (without it, how soon the code carries the signal depends on the
    seed); the amplitude comes from the landmark term: the image term alone opens these points ~0.8 px per unit
    of signal. (Weight 10: at 1 the amplitude reached 1-3 px depending on the seed; at 10, 2.1-2.8 px over five
    seeds.)"""
    torch.manual_seed(0)
    config = small_config(iterations=600, lambda_landmarks=10.0, lambda_shape=1.0, lambda_mouth=0.0,
                          dynamic_splatting=False, lr_networks=1e-2)
    data = load(subject, config)
    views, signal = data.views, np.load(subject["cameras"].parent / "signal.npy")
    chin = fine.MOUTH_POINTS.index(lmk.CHIN)  # unmoved by the fixture: the projection matches the face mesh
    assert torch.allclose(fine.project(data.canonical_mouth, views.viewmat(0), views.K)[chin],
                          data.mouth_points[0, chin], atol=1e-2)
    result = fine.train_fine(data, fine.load_coarse(subject["coarse"]), config, backend="torch")
    pairs = [(fine.MOUTH_POINTS.index(lmk.LIPS_INNER[a]), fine.MOUTH_POINTS.index(lmk.LIPS_INNER[b]))
             for a, b in lmk._APERTURE_PAIRS]
    upper, lower = [p for p, _ in pairs], [q for _, q in pairs]

    def gap(uv: torch.Tensor) -> float:
        return float((uv[upper] - uv[lower]).norm(dim=1).mean())

    for frames, least in ((views.cameras.train, 0.5), (views.cameras.test, 0.6)):
        codes = result.deformer.codes(data.feature_tensor(), torch.tensor(frames))
        opening = []
        with torch.no_grad():
            for code, f in zip(codes, frames):
                points = data.canonical_mouth
                moved = displace(points, *result.deformer(points, code), config.model)
                opening.append(gap(fine.project(moved, views.viewmat(f), views.K))
                               - gap(fine.project(points, views.viewmat(f), views.K)))
        assert np.corrcoef(opening, signal[frames])[0, 1] > least
        if frames is views.cameras.train:
            assert 2.0 < np.polyfit(signal[frames], opening, 1)[0] < 4.0  # px per unit of signal


def test_rendered_alpha_is_held_to_the_parsing_head_mask(subject):
    """A head whose coarse opacities are halved (holes where the plate would show) closes them with the alpha
    term, and not as much without it; rendering over a random background closes them without the term."""
    data = load(subject, small_config())
    coarse = fine.load_coarse(subject["coarse"])
    faded = {**coarse, "model": {**coarse["model"], "opacity_logits": coarse["model"]["opacity_logits"] - 2.0}}
    test = data.views.cameras.test

    def holes(lambda_alpha: float, random_background: bool = False) -> float:
        """Share of head-mask pixels the render leaves mostly transparent."""
        torch.manual_seed(0)
        config = small_config(iterations=80, lambda_alpha=lambda_alpha, gaussian_lr_scale=1.0,
                              random_background=random_background)
        result = fine.train_fine(data, faded, config, backend="torch")
        head = TalkingHead(result.gaussians, result.deformer, "synthetic", {}, 0)
        codes = head.deformer.codes(data.feature_tensor(), torch.tensor(test))
        holes = []
        for code, f in zip(codes, test):
            alpha = head.render(code, data.views.viewmat(f), data.views.K, data.views.width, data.views.height)[1]
            holes.append(float((alpha[..., 0][data.head_mask(f) == 1] < 0.5).float().mean()))
        return float(np.mean(holes))

    assert data.head_mask(test[0]).max() == 1 and data.head_mask(test[0]).min() == 0
    with_term, without = holes(2.0), holes(0.0)
    assert with_term < 0.5 * without, (with_term, without)
    assert holes(0.0, random_background=True) < 0.5 * without


def test_random_background_penalises_plate_coloured_gaussians():
    """Over the plate, an opaque render of the plate's colour outside the head matches the target (head over
    the plate); over a random colour it does not, while a render that is transparent there matches either way."""
    plate = torch.rand(8, 8, 3)
    face = torch.rand(8, 8, 3)
    head = torch.zeros(8, 8)
    head[2:6, 2:6] = 1
    target = torch.where(head[..., None] > 0, face, plate)
    clean_alpha = head[..., None]
    clean = face * clean_alpha
    ghost = torch.where(head[..., None] > 0, face, plate)  # opaque everywhere, the plate's colour outside
    colour = torch.tensor([0.9, 0.1, 0.5])
    for background in (None, colour):
        image, want = fine.over_background(clean, clean_alpha, target, plate, head, background)
        assert torch.allclose(image, want, atol=1e-6)
    image, want = fine.over_background(ghost, torch.ones(8, 8, 1), target, plate, head, None)
    assert torch.allclose(image, want)
    image, want = fine.over_background(ghost, torch.ones(8, 8, 1), target, plate, head, colour)
    assert (image - want).abs()[head == 0].mean() > 0.2


def untrained_step(subject, config: fine.FineConfig, delta_std: float = 0.0):
    """(deformer, FineStep) of frame 5 with a fresh deformer; ``delta_std`` > 0 draws D1's last layer at random
    (at 0, as initialised, ΔG = 0)."""
    torch.manual_seed(0)
    data = load(subject, config)
    coarse = fine.load_coarse(subject["coarse"])
    model_config = replace(config.model, audio_channels=data.features.shape[2], window=data.features.shape[1])
    deformer = AudioPlaneDeformer(model_config, torch.tensor(coarse["head_box"], dtype=torch.float32))
    if delta_std > 0:
        torch.nn.init.normal_(deformer.delta[-1].weight, std=delta_std)
    gaussians = fine.GaussianModel(**coarse["model"])
    step = fine.fine_step(gaussians, deformer, data, 5, replace(config, model=model_config), 0, "torch",
                          perceptual_loss("dssim"))
    return deformer, step


def test_mask_loss_trains_dynamism_not_geometry(subject):
    """Dynamic splatting rasterizes d with the geometry detached: its loss reaches D2, never D1 (ΔG)."""
    deformer, step = untrained_step(subject, small_config(lambda_mouth=0.0))
    mask_loss = step.losses["mask"]
    assert mask_loss > 0
    delta_grad, dyn_grad = torch.autograd.grad(mask_loss, [deformer.delta[-1].weight, deformer.dynamism[-1].weight],
                                               allow_unused=True, retain_graph=True)
    assert delta_grad is None or delta_grad.abs().max() == 0
    assert dyn_grad.abs().max() > 0
    photo_grad = torch.autograd.grad(step.losses["l1"], deformer.delta[-1].weight)[0]
    assert photo_grad.abs().max() > 0  # the photometric loss does move the geometry


@pytest.mark.parametrize("gated", [True, False])
def test_only_the_mask_trains_dynamism_unless_asked(subject, gated):
    """mask_trains_dynamism: the image and landmark terms reach ΔG but not D2; off, they reach D2 too."""
    # a ΔG that moves something, so that d matters to the other terms
    deformer, step = untrained_step(subject, small_config(mask_trains_dynamism=gated), delta_std=0.1)
    for term in ("l1", "mouth", "landmarks"):
        dyn, delta = torch.autograd.grad(step.losses[term], [deformer.dynamism[-1].weight, deformer.delta[-1].weight],
                                         allow_unused=True, retain_graph=True)
        assert delta.abs().max() > 0, term
        reaches = dyn is not None and dyn.abs().max() > 0
        assert reaches != gated, term
    mask_grad = torch.autograd.grad(step.losses["mask"], deformer.dynamism[-1].weight, retain_graph=True)[0]
    assert mask_grad.abs().max() > 0


def test_the_head_pays_for_its_share_of_the_inner_mouth(subject):
    """The mouth box splats a head/interior flag: the head's share of the frame's inner-mouth pixels costs
    ``lambda_interior``, which reaches the head's opacities and the deformation field."""
    config = small_config()
    data = load(subject, config)
    crop = data.mouth_crop
    data.mouth_crop = lambda i: replace(crop(i), inner=torch.ones_like(crop(i).inner))  # all open mouth
    coarse = fine.load_coarse(subject["coarse"])
    model_config = replace(config.model, audio_channels=data.features.shape[2], window=data.features.shape[1])
    torch.manual_seed(0)
    deformer = AudioPlaneDeformer(model_config, torch.tensor(coarse["head_box"], dtype=torch.float32))
    torch.nn.init.normal_(deformer.delta[-1].weight, std=0.1)
    gaussians = fine.GaussianModel(**coarse["model"]).requires_grad_()
    interior = interior_gaussians(data.views.cameras.canonical_landmarks, 20, 0, torch.Generator().manual_seed(0),
                                  0.7).requires_grad_()
    config = replace(config, model=model_config)

    def step(lambda_interior: float) -> fine.FineStep:
        return fine.fine_step(gaussians, deformer, data, 5, replace(config, lambda_interior=lambda_interior), 0,
                              "torch", perceptual_loss("dssim"), None, None, interior)

    charged = step(1.0)
    share = charged.losses["interior"]
    # every pixel is inner mouth here: the loss is the head's mean share of the box, most of it
    assert 0.3 < float(share.detach()) < 1.0
    face_grad, delta_grad = torch.autograd.grad(share, [gaussians.opacity_logits, deformer.delta[-1].weight])
    assert float(face_grad.max()) > 0 and float(face_grad.min()) >= 0  # more head opacity, more share
    assert delta_grad.abs().max() > 0
    assert "interior" not in step(0.0).losses


def test_mouth_box_members_are_the_mouth_and_chin():
    # a face-shaped mesh (metres, y down): lips on ellipses 5 cm wide, 4 cm below the origin
    canonical = np.zeros((478, 3))
    for ring, (a, b) in ((lmk.LIPS_OUTER, (0.025, 0.012)), (lmk.LIPS_INNER, (0.018, 0.004))):
        t = np.linspace(0, 2 * np.pi, len(ring), endpoint=False)
        canonical[list(ring), 0], canonical[list(ring), 1] = a * np.cos(t), 0.04 + b * np.sin(t)
    canonical[152, 1], canonical[10, 1] = 0.09, -0.08  # chin, forehead
    canonical[[33, 263], :2] = [[-0.045, -0.03], [0.045, -0.03]]  # eye corners
    inside = fine.mouth_box_members(canonical, torch.from_numpy(canonical).float(), size_factor=2.0)
    assert bool(inside[list(lmk.MOUTH)].all()) and bool(inside[152])  # lips and chin
    assert not bool(inside[[10, 33, 263]].any())  # forehead, eye corners
    narrow = fine.mouth_box_members(canonical, torch.from_numpy(canonical).float(), size_factor=0.5)
    assert int(narrow.sum()) < int(inside.sum()) and not bool(narrow[152])


def test_training_never_sees_test_audio(subject, monkeypatch):
    assert audio_safe_train_frames(list(range(90)), list(range(90, 99)), 8) == list(range(82))
    assert audio_safe_train_frames([0, 1, 2, 3, 10, 11], [5, 6], 2) == [0, 1, 2, 10, 11]
    seen = []
    original = fine.fine_step

    def spy(gaussians, deformer, data, frame, *args):
        seen.append(frame)
        return original(gaussians, deformer, data, frame, *args)

    monkeypatch.setattr(fine, "fine_step", spy)
    config = small_config(iterations=60)
    data = load(subject, config)
    fine.train_fine(data, fine.load_coarse(subject["coarse"]), config, backend="torch")
    first_test = min(data.views.cameras.test)
    reach = config.model.temporal_radius + data.features.shape[1] // 4
    assert max(seen) + reach < first_test and len(set(seen)) > 20


@pytest.mark.parametrize("encoder", ["network", "ridge, measured codes"])
def test_interrupted_training_resumes_exactly(subject, tmp_path, encoder):
    config = small_config(iterations=30, densify=DensifyConfig(start=10, stop=20, every=10, reset_every=0))
    if encoder != "network":  # the resumed run recomputes the measured codes and keeps the fitted ridge
        config = replace(config, measured_codes=True,
                         model=AudioPlaneConfig(**SMALL_MODEL, audio_encoder="ridge", ridge_appearance=2))
    data = load(subject, config)
    coarse = fine.load_coarse(subject["coarse"])
    full = fine.train_fine(data, coarse, config, backend="torch")
    checkpointer = Checkpointer(tmp_path / "fine.pt", "key")
    fine.train_fine(data, coarse, config, checkpointer, backend="torch", stop_after=15)
    resumed = fine.train_fine(data, coarse, config, checkpointer, backend="torch")
    assert resumed.resumed_from == 15
    for name, t in full.gaussians.tensors().items():
        assert torch.equal(t, resumed.gaussians.tensors()[name]), name
    for name, t in full.deformer.state_dict().items():
        assert torch.equal(t, resumed.deformer.state_dict()[name]), name
    assert [r["loss"] for r in full.log_rows] == [r["loss"] for r in resumed.log_rows]


def test_cli_writes_a_fine_model_that_renders_on_cpu(subject, tmp_path):
    settings = {**json.loads(json.dumps(small_config().__dict__, default=lambda o: o.__dict__)), "iterations": 20}
    out = tmp_path / "model"
    cmd = [sys.executable, "-m", "pipeline.fine", *[f"--{k}={v}" for k, v in subject.items()],
           "--extractor=synthetic", f"--settings={json.dumps(settings)}", f"--out={out / 'fine.pt'}",
           f"--log-csv={out / 'train_log.csv'}", f"--qc={tmp_path / 'fine.png'}",
           f"--checkpoint={tmp_path / 'ckpt.pt'}", "--device=cpu", "--threads=1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    head = TalkingHead.load(out / "fine.pt")
    assert head.extractor == "synthetic" and head.device.type == "cpu"
    # head trained at 48², the mouth box at the frame size: renders wider keep those low-passes
    assert set(head.train_widths.tolist()) == {48.0, float(fine.Cameras.load(subject["cameras"]).width)}
    saved = torch.load(out / "fine.pt", weights_only=False)
    assert saved["iterations"] == 20 and np.isfinite(saved["test"]["psnr"])
    with (out / "train_log.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [10, 20] and set(fine.LOG_COLUMNS) == set(rows[0])
    qc = load_image(tmp_path / "fine.png")
    assert qc.shape[1] == 4 * 48 and not (tmp_path / "ckpt.pt").exists()


def test_bad_inputs_are_named(subject, tmp_path):
    with pytest.raises(PipelineError, match="unknown keys iteratoins"):
        fine.FineConfig.from_dict({"iteratoins": 3})
    (tmp_path / "coarse.pt").write_bytes(b"junk")
    with pytest.raises(PipelineError, match="coarse.pt: not a coarse.pt"):
        fine.load_coarse(tmp_path / "coarse.pt")
    np.save(tmp_path / "blink.npy", np.ones(3, np.float32))
    with pytest.raises(PipelineError, match="blink.npy: blink of shape"):
        load({**subject, "blink": tmp_path / "blink.npy"}, small_config())


def test_schema_defaults_equal_the_dataclass_defaults():
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["fine"]["properties"]
    defaults = asdict(fine.FineConfig())
    for key, spec in props.items():
        if key in ("model", "densify"):
            for sub, sub_spec in spec["properties"].items():
                assert sub_spec["default"] == pytest.approx(defaults[key][sub]), f"fine.{key}.{sub}"
            assert set(spec["properties"]) == set(defaults[key])
        else:
            assert spec["default"] == defaults[key], f"fine.{key}"
    assert set(props) == set(defaults)
    preset_keys = schema["$defs"]["preset"]["properties"]["fine"]["propertyNames"]["enum"]
    assert set(preset_keys) == set(defaults)
