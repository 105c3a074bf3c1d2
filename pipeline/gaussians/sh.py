"""Real spherical harmonics up to degree 3 with the constants and sign convention of 3DGS.

Coefficients are stored per Gaussian as ``[..., K, 3]`` with ``K = (degree + 1) ** 2``; index 0 is the DC
term.
The colour of a Gaussian seen along ``dir`` is ``max(0, sum_k Y_k(dir) * coeffs[k] + 0.5)``, exactly as the
3DGS CUDA rasterizer and gsplat compute it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792,
         0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154,
         -0.4570457994644658, 1.445305721320277, -0.5900435899266435)
MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of coefficients K of an SH expansion of ``degree`` (0..3)."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_bases(k: int) -> int:
    """Inverse of :func:`num_sh_bases`; raises ValueError when ``k`` is not (d+1)^2 for d in 0..3."""
    degree = math.isqrt(k) - 1
    if k < 1 or (degree + 1) ** 2 != k or degree > MAX_SH_DEGREE:
        raise ValueError(f"{k} SH coefficients per channel is not (d+1)^2 for a degree d in "
                         f"0..{MAX_SH_DEGREE}")
    return degree


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Basis values Y_k(dir) for k < (degree+1)^2.

    dirs: [..., 3], need not be unit length (normalised here). Returns [..., K].
    """
    d = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    x, y, z = d.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz,
                SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [SH_C3[0] * y * (3 * xx - yy), SH_C3[1] * xy * z, SH_C3[2] * y * (4 * zz - xx - yy),
                SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy), SH_C3[4] * x * (4 * zz - xx - yy),
                SH_C3[5] * z * (xx - yy), SH_C3[6] * x * (xx - 3 * yy)]
    return torch.stack(out, dim=-1)


def eval_sh_colors(degree: int, coeffs: Tensor, dirs: Tensor) -> Tensor:
    """View-dependent RGB: ``clamp_min(sum_k Y_k(dir) c_k + 0.5, 0)``.

    coeffs: [..., K, 3] with K >= (degree+1)^2 (higher bands are ignored, as in 3DGS's active degree);
    dirs: [..., 3] viewing directions (Gaussian centre minus camera centre), broadcastable against
    coeffs[..., 0, :].
    Returns [..., 3].
    """
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"sh_degree {degree} needs {k} coefficients per channel, got {coeffs.shape[-2]}")
    basis = sh_basis(degree, dirs)  # [..., k]
    rgb = (basis.unsqueeze(-1) * coeffs[..., :k, :]).sum(dim=-2)
    return torch.clamp_min(rgb + 0.5, 0.0)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC coefficient that renders ``rgb`` (before clamping): [..., 3] -> [..., 3]."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(dc: Tensor) -> Tensor:
    """Colour rendered by a DC coefficient alone: [..., 3] -> [..., 3]."""
    return dc * SH_C0 + 0.5
