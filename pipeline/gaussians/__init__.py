"""Differentiable 3D Gaussian rasterization (pure-PyTorch and gsplat backends) and the Gaussian container.

Public API:
- :func:`rasterize` / :class:`RasterResult`: render colour, alpha, expected depth and extra channels.
- :class:`GaussianModel` (with .ply save/load), :class:`ActivatedGaussians`, :func:`random_gaussians`,
  :func:`gaussians_from_points`.
- SH helpers :func:`eval_sh_colors`, :func:`rgb_to_sh`, :func:`sh_to_rgb`, :func:`num_sh_bases`;
  projection helpers :func:`project_gaussians`, :func:`quat_to_rotmat`, :func:`focal_from_fov`.
"""

from pipeline.gaussians.model import (
    ActivatedGaussians,
    GaussianModel,
    gaussians_from_points,
    random_gaussians,
)
from pipeline.gaussians.projection import Projection, focal_from_fov, project_gaussians, quat_to_rotmat
from pipeline.gaussians.rasterize import RasterResult, gsplat_available, rasterize, resolve_backend
from pipeline.gaussians.sh import eval_sh_colors, num_sh_bases, rgb_to_sh, sh_to_rgb

__all__ = [
    "ActivatedGaussians", "GaussianModel", "Projection", "RasterResult", "eval_sh_colors", "focal_from_fov",
    "gaussians_from_points", "gsplat_available", "num_sh_bases", "project_gaussians", "quat_to_rotmat",
    "random_gaussians", "rasterize", "resolve_backend", "rgb_to_sh", "sh_to_rgb",
]
