"""Training losses: SSIM agrees with scikit-image, D-SSIM and PSNR behave as defined."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from pipeline.losses import dssim, l1, psnr, ssim


def _pair(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.random((40, 48, 3))
    b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1)
    return a, b


def test_ssim_matches_scikit_image_on_valid_region():
    a, b = _pair()
    ours = float(ssim(torch.tensor(a)[None], torch.tensor(b)[None]))
    # skimage averages over the whole image with reflect padding; compare its SSIM map on the valid region.
    _, full = structural_similarity(a, b, channel_axis=2, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, full=True)
    assert ours == pytest.approx(full[5:-5, 5:-5].mean(), abs=1e-6)


def test_dssim_zero_for_identical_and_grows_with_noise():
    a, b = _pair(1)
    x, y = torch.tensor(a)[None], torch.tensor(b)[None]
    assert float(dssim(x, x)) == pytest.approx(0.0, abs=1e-7)
    noisier = torch.clamp(x + 0.4 * (y - x) * 3, 0, 1)
    assert 0 < float(dssim(x, y)) < float(dssim(x, noisier)) <= 1


def test_ssim_gradient_flows():
    a, b = _pair(2)
    x = torch.tensor(a, requires_grad=True)
    dssim(x[None], torch.tensor(b)[None]).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_psnr_and_l1_values():
    x = torch.zeros(1, 4, 4, 3)
    y = torch.full((1, 4, 4, 3), 0.1)
    assert float(psnr(x, y)) == pytest.approx(20.0, abs=1e-4)
    assert float(l1(x, y)) == pytest.approx(0.1)


def test_ssim_rejects_small_or_mismatched_images():
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        ssim(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.zeros(1, 16, 16, 3), torch.zeros(1, 16, 15, 3))


def test_perceptual_loss_kinds_take_hwc_images():
    from pipeline.losses import perceptual_loss

    a, b = _pair(3)
    x = torch.tensor(a, dtype=torch.float32, requires_grad=True)
    y = torch.tensor(b, dtype=torch.float32)
    for kind in ("lpips", "dssim"):
        fn = perceptual_loss(kind, "cpu")
        assert float(fn(y, y)) == pytest.approx(0.0, abs=1e-6)
        value = fn(x, y)
        assert value.dim() == 0 and float(value.detach()) > 0
    with torch.no_grad():
        assert float(perceptual_loss("dssim")(x, y)) == pytest.approx(float(dssim(x[None], y[None])))
    perceptual_loss("lpips")(x, y).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="unknown perceptual loss 'ssim'; choose one of lpips, dssim"):
        perceptual_loss("ssim")
