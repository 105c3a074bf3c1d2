"""Render above the training resolution without streaks: the training image's low-pass, carried into 3D.

3DGS dilates every projected Gaussian by ``eps2d`` (0.3 px²) of the image it is trained on, so Gaussians far
thinner than a training pixel still look right there. Rendered larger, that dilation shrinks with the pixel
and they show as needles (streaks at the eyes and in the hair of a head trained at 128² and rendered at 512²).
Growing each Gaussian in 3D by the world-space size of its training dilation at its depth, less the render's
own, gives the trained look at any size (Mip-Splatting's 3D smoothing filter, per camera, without its opacity
compensation: the training dilation had none either).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.gaussians.model import GaussianModel


def training_lowpass(gaussians: GaussianModel, viewmat: Tensor, focal: float, train_focal: Tensor | float,
                     eps2d: float = 0.3) -> GaussianModel:
    """``gaussians`` grown for a render of focal length ``focal`` (px) by the camera ``viewmat`` [4, 4].

    ``train_focal``: the focal length (px) each Gaussian was trained at, [N] or one number. Each Gaussian gains
    the isotropic variance ``eps2d · z² · (1/train_focal² - 1/focal²)`` (z: its camera depth) where that is
    positive: nothing at or below the training size."""
    train_focal = torch.as_tensor(train_focal, dtype=gaussians.means.dtype, device=gaussians.means.device)
    depth = gaussians.means @ viewmat[:3, :3].T[:, 2] + viewmat[2, 3]
    variance = eps2d * depth.square() * (train_focal.reciprocal().square() - 1.0 / focal**2)
    variance = variance.clamp_min(0).expand(len(gaussians))
    log_scales = 0.5 * torch.log(torch.exp(2 * gaussians.log_scales) + variance[:, None])
    return GaussianModel(**{**gaussians.tensors(), "log_scales": log_scales})
