"""Render at another size than the training one: each Gaussian keeps the look its training image gave it.

3DGS dilates every projected Gaussian by ``eps2d`` (0.3 px²) of the image it is trained on, so Gaussians far
thinner than a training pixel still look right there.
- Rendered larger, that dilation shrinks with the pixel and they show as needles (streaks at the eyes and in
  the hair of a head trained at 128² and rendered at 512²). Growing each Gaussian in 3D by the world-space size
  of its training dilation at its depth, less the render's own, gives the trained look (Mip-Splatting's 3D
  smoothing filter, per camera, without its opacity compensation: the training dilation had none either).
- Rendered smaller, the render's own dilation (0.3 of its larger pixels) is wider than the trained one, so
  thin Gaussians gain mass: a mouth box trained at 512² and rendered at 256² draws its lip lines too dark and
  thick. Scaling each opacity by sqrt(det(Σ + e_trained) / det(Σ + e_render)) keeps its trained mass (gsplat's
  antialiased mode, with each Gaussian's own training dilation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.gaussians.model import GaussianModel
from pipeline.gaussians.projection import screen_covariance


def training_lowpass(gaussians: GaussianModel, viewmat: Tensor, K: Tensor, width: int, height: int,
                     train_focal: Tensor | float, eps2d: float = 0.3) -> GaussianModel:
    """``gaussians`` as trained, for a render by the camera ``viewmat`` [4, 4], ``K`` [3, 3] of ``width`` x ``height``.

    ``train_focal``: the focal length (px) each Gaussian was trained at, [N] or one number. Trained at a shorter
    focal than the render's (a smaller image), a Gaussian gains the isotropic variance
    ``eps2d · z² · (1/train_focal² - 1/focal²)`` (z: its camera depth); trained at a longer one, its opacity
    scales by ``sqrt(det(Σ + e_t I) / det(Σ + eps2d I))``, Σ its undilated screen covariance and
    ``e_t = eps2d · (focal / train_focal)²`` its training dilation in render pixels. At its training size
    nothing changes."""
    focal = float(K[0, 0])
    train_focal = torch.as_tensor(train_focal, dtype=gaussians.means.dtype, device=gaussians.means.device)
    train_focal = train_focal.expand(len(gaussians))
    depth = gaussians.means @ viewmat[:3, :3].T[:, 2] + viewmat[2, 3]
    variance = eps2d * depth.square() * (train_focal.reciprocal().square() - 1.0 / focal**2)
    log_scales = 0.5 * torch.log(torch.exp(2 * gaussians.log_scales) + variance.clamp_min(0)[:, None])
    opacity_logits = gaussians.opacity_logits
    trained_finer = train_focal > focal
    if bool(trained_finer.any()):
        _, cov2d, _ = screen_covariance(gaussians.means, gaussians.quats, torch.exp(gaussians.log_scales),
                                        viewmat[None], K[None], width, height)
        a, b, c = cov2d[0, :, 0, 0], cov2d[0, :, 0, 1], cov2d[0, :, 1, 1]
        trained = eps2d * (focal / train_focal).square()

        def dilated_det(eps: Tensor | float) -> Tensor:
            return (a + eps) * (c + eps) - b * b

        ratio = torch.sqrt((dilated_det(trained) / dilated_det(eps2d)).clamp(1e-6, 1.0))
        compensated = torch.logit((torch.sigmoid(opacity_logits) * ratio).clamp(1e-6, 1 - 1e-6))
        opacity_logits = torch.where(trained_finer, compensated, opacity_logits)
    return GaussianModel(**{**gaussians.tensors(), "log_scales": log_scales, "opacity_logits": opacity_logits})
