"""The Audio-Plane network (pipeline/audioplane.py): shapes, the factorised feature, cross-attention over the
prototype grid, fusion and ablation switches, and that an untrained deformer leaves the coarse head as it is."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.audio import frame_windows
from pipeline.audioplane import AudioPlane, AudioPlaneConfig, AudioPlaneDeformer, TalkingHead, deform
from pipeline.gaussians import random_gaussians
from pipeline.io import PipelineError

BOX = torch.tensor([[-0.1, -0.15, -0.05], [0.1, 0.05, 0.15]])


def small(**overrides) -> AudioPlaneConfig:
    base = dict(audio_channels=8, window=16, audio_dim=12, resolution=8, scales=[1, 2], feature_dim=4, hidden=16)
    return AudioPlaneConfig(**{**base, **overrides})


@pytest.mark.parametrize("fusion, audio_plane, width", [("concat", True, 2 * 3 * 4), ("add", True, 2 * 4),
                                                         ("multiply", True, 2 * 4), ("concat", False, 2 * 3 * 4 + 12)])
def test_feature_width_follows_fusion_and_ablation(fusion, audio_plane, width):
    torch.manual_seed(0)
    plane = AudioPlane(small(fusion=fusion, audio_plane=audio_plane))
    f = plane(torch.rand(50, 3) * 2 - 1, torch.randn(12))
    assert f.shape == (50, width) == (50, plane.out_dim)
    assert torch.isfinite(f).all()


def test_feature_is_plane_times_line_times_audio_prototype_read():
    """At a grid vertex, the concat feature of triple (XY, Z) at scale 1 is P_XY[y, x] * L_Z[z] * f_a."""
    torch.manual_seed(0)
    config = small(scales=[1])
    plane = AudioPlane(config)
    r = config.resolution
    ix, iy, iz = 2, 5, 7
    x = torch.tensor([[2 * ix / (r - 1) - 1, 2 * iy / (r - 1) - 1, 2 * iz / (r - 1) - 1]])
    code = torch.randn(12)
    f = plane(x, code)[0]
    grid = plane.prototypes[0].detach()
    q = plane.query(code).detach()
    f_a = torch.softmax(grid @ q / math.sqrt(config.feature_dim), dim=0) @ grid
    expected = plane.planes[0][0, :, iy, ix] * plane.lines[0][0, :, 0, iz] * f_a
    torch.testing.assert_close(f[:4], expected, rtol=1e-5, atol=1e-6)
    # (XZ, Y): plane XZ at (x, z), line Y
    expected = plane.planes[0][1, :, iz, ix] * plane.lines[0][1, :, 0, iy] * f_a
    torch.testing.assert_close(f[4:8], expected, rtol=1e-5, atol=1e-6)


def test_audio_changes_the_feature_only_through_the_prototype_read():
    torch.manual_seed(0)
    plane = AudioPlane(small())
    x = torch.rand(20, 3) * 2 - 1
    a, b = torch.randn(12), torch.randn(12)
    assert not torch.allclose(plane(x, a), plane(x, b))
    for f_a, grid in zip(plane.audio_features(a), plane.prototypes):  # convex combinations of prototype rows
        assert (f_a >= grid.min(dim=0).values - 1e-6).all() and (f_a <= grid.max(dim=0).values + 1e-6).all()


def test_untrained_deformer_keeps_the_coarse_gaussians_and_d_in_unit_interval():
    torch.manual_seed(0)
    config = small()
    deformer = AudioPlaneDeformer(config, BOX)
    g = random_gaussians(100, tuple(BOX[0].tolist()), tuple(BOX[1].tolist()), sh_degree=1)
    features = torch.randn(30, 16, 8)
    code = deformer.codes(features, torch.tensor([7]))[0]
    delta, d = deformer(g.means, code, 0.8)
    assert delta.shape == (100, config.delta_channels) and d.shape == (100,)
    assert ((d > 0) & (d < 1)).all()
    moved = deform(g, delta, d, config)
    for name, t in moved.tensors().items():
        torch.testing.assert_close(t, g.tensors()[name], msg=name)


def test_deform_applies_d_times_delta():
    config = small()
    g = random_gaussians(10, (-1, -1, -1), (1, 1, 1), sh_degree=1)
    delta = torch.randn(10, config.delta_channels)
    d = torch.rand(10)
    moved = deform(g, delta, d, config)
    torch.testing.assert_close(moved.means, g.means + d[:, None] * delta[:, :3] * config.position_scale)
    torch.testing.assert_close(moved.log_scales, g.log_scales + d[:, None] * delta[:, 7:10])
    torch.testing.assert_close(moved.sh[:, 0], g.sh[:, 0] + d[:, None] * delta[:, 10:13])
    torch.testing.assert_close(moved.sh[:, 1:], g.sh[:, 1:])
    torch.testing.assert_close(moved.opacity_logits, g.opacity_logits + d * delta[:, 13])


def test_temporal_attention_sees_only_the_neighbours_and_clamps_at_the_ends():
    torch.manual_seed(0)
    deformer = AudioPlaneDeformer(small(temporal_radius=2), BOX)
    features = torch.randn(20, 16, 8)
    codes = deformer.codes(features, torch.arange(20))
    changed = features.clone()
    changed[15] += 5  # frame 15 is outside ±2 of frame 10 and inside of frame 13
    after = deformer.codes(changed, torch.arange(20))
    torch.testing.assert_close(after[10], codes[10])
    assert not torch.allclose(after[13], codes[13])
    assert deformer.neighbour_indices(torch.tensor([0, 19]), 20).tolist() == [[0, 0, 0, 1, 2], [17, 18, 19, 19, 19]]


def test_bad_settings_are_named():
    with pytest.raises(PipelineError, match="fusion"):
        AudioPlaneConfig(fusion="mean")
    with pytest.raises(PipelineError, match="unknown model keys resolutoin"):
        AudioPlaneConfig.from_dict({"resolutoin": 3})


def test_talking_head_round_trips_and_checks_feature_shape(tmp_path):
    torch.manual_seed(0)
    config = small()
    deformer = AudioPlaneDeformer(config, BOX)
    with torch.no_grad():
        deformer.delta[-1].weight.normal_()  # a deformer that moves something
    g = random_gaussians(60, tuple(BOX[0].tolist()), tuple(BOX[1].tolist()), sh_degree=1, opacity=0.6)
    stats = {"mean": np.zeros(8, np.float32), "std": np.ones(8, np.float32)}
    widths = torch.tensor([24.0, 48.0]).repeat_interleave(30)  # half trained at 24 px wide, half at 48
    head = TalkingHead(g, deformer, "mel", stats, 1, train_widths=widths)
    torch.save({"head": head.state()}, tmp_path / "fine.pt")
    loaded = TalkingHead.load(tmp_path / "fine.pt")
    assert torch.equal(loaded.train_widths, widths)
    features = torch.randn(12, 16, 8)
    torch.testing.assert_close(loaded.audio_codes(features), head.audio_codes(features))
    # an array (memory map, overlapping window view) is read a chunk at a time, to the same codes
    steps = np.random.default_rng(0).standard_normal((40, 8)).astype(np.float32)
    view = frame_windows(steps, 12, 16)
    assert np.shares_memory(view, steps)  # no copy: windows overlap, a copy grows 8x with the audio
    torch.testing.assert_close(head.audio_codes(view), head.audio_codes(torch.from_numpy(view.copy())))
    torch.testing.assert_close(head.deformer.codes(view, torch.arange(12), chunk=5),
                               head.audio_codes(torch.from_numpy(view.copy())))
    viewmat = torch.eye(4)
    viewmat[2, 3] = 0.6
    K = torch.tensor([[60.0, 0, 24], [0, 60.0, 24], [0, 0, 1]])
    code = head.audio_codes(features)[3]
    rgb, alpha = loaded.render(code, viewmat, K, 48, 48, blink=1.0, backend="torch")
    rgb0, alpha0 = head.render(code, viewmat, K, 48, 48, blink=1.0, backend="torch")
    assert rgb.shape == (48, 48, 3) and alpha.shape == (48, 48, 1) and alpha.max() > 0.1
    torch.testing.assert_close(rgb, rgb0)
    # wider than it was trained, the head keeps its training low-pass; at the training width nothing changes;
    # narrower, the half trained at 48 px keeps its trained mass (lighter than the plain render, never heavier)
    unfiltered = TalkingHead(g, deformer, "mel", stats, 1)
    assert (unfiltered.render(code, viewmat, K, 48, 48, blink=1.0, backend="torch")[1] - alpha).abs().max() > 1e-3
    K_train = K.clone()
    K_train[:2] /= 2
    plain = unfiltered.render(code, viewmat, K_train, 24, 24, blink=1.0, backend="torch")
    all_at_24 = TalkingHead(g, deformer, "mel", stats, 1, train_widths=torch.full((60,), 24.0))
    torch.testing.assert_close(all_at_24.render(code, viewmat, K_train, 24, 24, blink=1.0, backend="torch"), plain)
    narrower = loaded.render(code, viewmat, K_train, 24, 24, blink=1.0, backend="torch")[1]
    # (heavier only by the rasterizer's early stop at transmittance 1e-4)
    assert bool((narrower <= plain[1] + 2e-4).all()) and float((plain[1] - narrower).max()) > 1e-3
    with pytest.raises(PipelineError, match="do not fit this model"):
        head.audio_codes(torch.randn(5, 16, 9))
    (tmp_path / "bad.pt").write_bytes(b"not a model")
    with pytest.raises(PipelineError, match="bad.pt"):
        TalkingHead.load(tmp_path / "bad.pt")
