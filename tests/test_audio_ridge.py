"""The closed-form audio encoder (pipeline/audio_ridge.py): the fit recovers a linear map and predicts unseen
rows, the penalty follows the noise, the cross-validation keeps held-out audio apart, and the deformer's ridge
code reads only the frame's context and survives fine.pt."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.audio_ridge import RidgeMouthShape, cross_validated, fit_ridge, principal_scores
from pipeline.audioplane import AudioPlaneConfig, AudioPlaneDeformer, TalkingHead
from pipeline.gaussians import gaussians_from_points
from pipeline.io import PipelineError

BOX = torch.tensor([[-1.0] * 3, [1.0] * 3])


def linear_data(n: int, dims: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dims)) * rng.uniform(0.5, 3.0, size=dims) + rng.normal(size=dims)
    w = rng.normal(size=(dims, 3))
    clean = x @ w
    return x, clean + noise * clean.std(axis=0) * rng.normal(size=clean.shape), clean


def test_fit_predicts_held_out_rows_of_a_linear_map():
    x, y, clean = linear_data(600, 40, noise=0.3)
    fit = fit_ridge(x[:400], y[:400])
    predicted = ((x[400:] - fit.mean) / fit.std) @ fit.weight + fit.bias
    for k in range(3):
        assert np.corrcoef(predicted[:, k], clean[400:, k])[0, 1] > 0.97
    assert np.all(fit.cv_r > 0.9)  # what cross-validation reports matches what held-out rows show


def test_penalty_grows_with_the_noise():
    x, y_clean, _ = linear_data(400, 200, noise=0.05)
    _, y_noisy, _ = linear_data(400, 200, noise=1.0)
    assert np.all(fit_ridge(x, y_noisy).penalty > fit_ridge(x, y_clean).penalty)
    mixed = fit_ridge(x, np.concatenate([y_clean[:, :1], y_noisy[:, 1:]], axis=1))  # each output its own
    assert mixed.penalty[0] < mixed.penalty[1] and mixed.penalty[0] < mixed.penalty[2]


def test_cross_validation_sees_no_neighbour_of_a_held_out_row():
    """Inputs that only say where in time a row is (each shares an input with the rows within 2 of it) and a
    target that varies smoothly in time: neighbours predict a held-out row, so folds of 4 rows without a gap
    leak; with a gap of 2 no fitting row shares an input with a held-out one, and nothing is predicted."""
    n = 400
    rng = np.random.default_rng(0)
    y = np.convolve(rng.normal(size=n + 40), np.ones(21) / 21, mode="same")[20:-20, None]
    x = sum(np.eye(n, k=k) for k in range(-1, 2))
    gram = x @ x.T / n
    leaky = np.corrcoef(cross_validated(gram, y, 1e-3, folds=100, gap=0)[:, 0], y[:, 0])[0, 1]
    apart = np.corrcoef(cross_validated(gram, y, 1e-3, folds=100, gap=2)[:, 0], y[:, 0])[0, 1]
    assert leaky > 0.8 and apart < 0.1, (leaky, apart)  # (below 0: each fold moves the mean away from itself)


def test_principal_scores_recover_the_directions_of_most_variance():
    rng = np.random.default_rng(0)
    coefficients = rng.normal(size=(300, 2)) * [3.0, 1.0]
    directions = np.linalg.qr(rng.normal(size=(50, 2)))[0].T  # orthonormal [2, 50]
    rows = coefficients @ directions + 0.05 * rng.normal(size=(300, 50)) + 7.0
    scores = principal_scores(rows, 2)
    np.testing.assert_allclose(scores.std(axis=0), 1.0, rtol=1e-6)
    for k in range(2):
        assert abs(np.corrcoef(scores[:, k], coefficients[:, k])[0, 1]) > 0.99


def test_module_matches_the_fit():
    x, y, _ = linear_data(200, 12, noise=0.2)
    fit = fit_ridge(x, y)
    module = RidgeMouthShape(12)
    module.load_fit(fit)
    expected = ((x - fit.mean) / fit.std) @ fit.weight + fit.bias
    got = module(torch.tensor(x, dtype=torch.float32).view(200, 3, 4)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def ridge_deformer(context: int = 1) -> AudioPlaneDeformer:
    config = AudioPlaneConfig(audio_channels=5, window=4, resolution=8, scales=[1], feature_dim=4, hidden=16,
                              temporal_radius=2, audio_encoder="ridge", ridge_context=context)
    deformer = AudioPlaneDeformer(config, BOX)
    x, y, _ = linear_data(100, config.ridge_dims, noise=0.1)
    deformer.ridge.load_fit(fit_ridge(x, y))
    return deformer


def test_ridge_code_is_the_mouth_shape_of_the_frames_context_only():
    torch.manual_seed(0)
    deformer = ridge_deformer(context=1)
    assert not hasattr(deformer, "encoder") and not hasattr(deformer, "mouth_shape")
    windows = torch.randn(2, 5, 4, 5)  # B, 2r+1 with r = 2, W, C
    code = deformer.code(windows)
    assert code.shape == (2, 3)
    torch.testing.assert_close(deformer.shape_readout(code), code)
    outside = windows.clone()
    outside[:, [0, 4]] += 5.0  # the ±2 neighbours: beyond ridge_context
    torch.testing.assert_close(deformer.code(outside), code)
    inside = windows.clone()
    inside[:, 1] += 5.0
    assert not torch.allclose(deformer.code(inside), code)
    delta, d = deformer(torch.zeros(7, 3), code[0], 1.0)
    assert delta.shape == (7, deformer.config.delta_channels) and d.shape == (7,)


def test_fine_pt_keeps_the_fitted_ridge(tmp_path):
    torch.manual_seed(0)
    deformer = ridge_deformer()
    gaussians = gaussians_from_points(torch.rand(20, 3) - 0.5, torch.rand(20, 3), sh_degree=0)
    head = TalkingHead(gaussians, deformer, "synthetic", {}, 0)
    torch.save({"head": head.state()}, tmp_path / "fine.pt")
    loaded = TalkingHead.load(tmp_path / "fine.pt")
    features = torch.randn(9, 4, 5)
    torch.testing.assert_close(loaded.audio_codes(features), head.audio_codes(features))
    assert loaded.audio_codes(features).abs().sum() > 0


def test_bad_encoder_settings_are_named():
    with pytest.raises(PipelineError, match="audio_encoder"):
        AudioPlaneConfig(audio_encoder="hubert")
    with pytest.raises(PipelineError, match="ridge_context"):
        AudioPlaneConfig(ridge_context=5, temporal_radius=4)
