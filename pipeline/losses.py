"""Image losses of coarse and fine training (DESIGN.md section 3): L1, SSIM / D-SSIM, PSNR, and the
perceptual term of the training loss (LPIPS, or D-SSIM as the switch).

Images are float tensors [B,H,W,C] in [0,1], as ``rasterize`` returns them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline.io import PipelineError

from pipeline.lpips import load_lpips


def l1(pred: Tensor, target: Tensor) -> Tensor:
    return (pred - target).abs().mean()


@functools.lru_cache(maxsize=8)
def _gaussian_window(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: Tensor, window: Tensor) -> Tensor:
    """Separable 'valid' Gaussian filter of [B,C,H,W] (depthwise, so channels stay independent)."""
    c, k = x.shape[1], window.numel()
    x = F.conv2d(x, window.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, window.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim(pred: Tensor, target: Tensor, window_size: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM (Wang et al. 2004, Gaussian window 11 / 1.5 as 3DGS) of [B,H,W,C] images in [0,1].

    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)`` on the valid region.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise ValueError(f"ssim needs two [B,H,W,C] tensors of one shape, got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if min(pred.shape[1:3]) < window_size:
        raise ValueError(f"images of {pred.shape[1]}x{pred.shape[2]} are smaller than the SSIM window {window_size}")
    x, y = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    window = _gaussian_window(window_size, sigma, x.dtype, x.device)
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    var_x = _blur(x * x, window) - mu_x.square()
    var_y = _blur(y * y, window) - mu_y.square()
    cov = _blur(x * y, window) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    return s.mean()


def dssim(pred: Tensor, target: Tensor) -> Tensor:
    """Structural dissimilarity (1 - SSIM) / 2, in [0, 1]; the LPIPS stand-in when no LPIPS weights exist."""
    return (1 - ssim(pred, target)) / 2


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of images in [0,1]."""
    mse = (pred - target).square().mean().clamp_min(1e-12)
    return -10 * torch.log10(mse)


PERCEPTUAL = ("lpips", "dssim")


def check_perceptual(kind: str, section: str) -> None:
    """PipelineError naming the config ``section`` when ``kind`` is no perceptual loss of :data:`PERCEPTUAL`."""
    if kind not in PERCEPTUAL:
        raise PipelineError(f"{section} settings: perceptual must be one of {', '.join(PERCEPTUAL)}, got {kind!r}")


def perceptual_loss(kind: str, device: str | torch.device = "cpu") -> Callable[[Tensor, Tensor], Tensor]:
    """The perceptual term of the training loss: ``fn(image, target)`` of float [H,W,3] images in [0,1] -> scalar.

    ``lpips``: LPIPS AlexNet v0.1 (:mod:`pipeline.lpips`; weights loaded now, once per process, on ``device``);
    ``dssim``: (1 - SSIM) / 2.
    """
    if kind == "dssim":
        return lambda image, target: dssim(image[None], target[None])
    if kind == "lpips":
        model = load_lpips(device)
        return lambda image, target: model(image.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None])[0]
    raise ValueError(f"unknown perceptual loss {kind!r}; choose one of {', '.join(PERCEPTUAL)}")
