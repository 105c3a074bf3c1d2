"""EWA projection of 3D Gaussians to screen space (differentiable, pure PyTorch).

Conventions (the same as gsplat): ``viewmats`` are world-to-camera 4x4 (OpenCV axes: x right, y down,
z forward), ``Ks`` pinhole intrinsics, pixel (i, j) covers [i, i+1) x [j, j+1) so its centre is
(i+0.5, j+0.5), quaternions are wxyz (normalised here), scales are linear standard deviations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # a Gaussian's alpha below this at a pixel is skipped (3DGS)
MAX_EXTENT = 3.33  # cap on the footprint half-extent in standard deviations (gsplat)


@dataclass
class Projection:
    """Screen-space Gaussians for C cameras.

    means2d: [C,N,2] pixel coordinates; conics: [C,N,3] (a, b, c) of the inverse 2D covariance
    [[a, b], [b, c]] (dilated by eps2d); depths: [C,N] camera-space z; radii: [C,N,2] int32 per-axis
    half-extents in pixels of the alpha >= 1/255 region (0 where culled); visible: [C,N] bool.
    means2d, conics and depths carry gradients; radii and visible do not.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    radii: Tensor
    visible: Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices from (not necessarily unit) wxyz quaternions: [..., 4] -> [..., 3, 3]."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def covariance_3d(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariance R diag(s)^2 R^T: quats [N,4], scales [N,3] -> [N,3,3]."""
    m = quat_to_rotmat(quats) * scales.unsqueeze(-2)
    return m @ m.transpose(-1, -2)


def screen_covariance(means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor, Ks: Tensor, width: int,
                      height: int, near: float = 0.01, far: float = 1e10) -> tuple[Tensor, Tensor, Tensor]:
    """EWA: (camera-space means [C,N,3], undilated 2D covariances [C,N,2,2], in_depth [C,N] bool).

    means [N,3], quats [N,4] wxyz, scales [N,3], viewmats [C,4,4], Ks [C,3,3]. The Jacobian clamps x/z and
    y/z to 1.3x the field of view as 3DGS and gsplat do, so Gaussians far outside the view do not blow up;
    out-of-depth entries get z = 1 so that they stay finite for autograd.
    """
    rot_v = viewmats[:, :3, :3]  # [C,3,3]
    t_v = viewmats[:, :3, 3]  # [C,3]
    p_cam = torch.einsum("cij,nj->cni", rot_v, means) + t_v[:, None, :]  # [C,N,3]
    cov_cam = torch.einsum("cij,njk,clk->cnil", rot_v, covariance_3d(quats, scales), rot_v)  # [C,N,3,3]

    x, y, z = p_cam.unbind(-1)
    in_depth = (z > near) & (z < far)
    z = torch.where(in_depth, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C,1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    tx = z * torch.clamp(x / z, min=-(cx / fx + 0.3 * tan_x), max=(width - cx) / fx + 0.3 * tan_x)
    ty = z * torch.clamp(y / z, min=-(cy / fy + 0.3 * tan_y), max=(height - cy) / fy + 0.3 * tan_y)
    zero = torch.zeros_like(z)
    jac = torch.stack((fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)), dim=-1)
    jac = jac.reshape(*z.shape, 2, 3)  # [C,N,2,3]
    return torch.stack((x, y, z), dim=-1), jac @ cov_cam @ jac.transpose(-1, -2), in_depth


def project_gaussians(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor,
                      Ks: Tensor, width: int, height: int, near: float = 0.01, far: float = 1e10,
                      eps2d: float = 0.3) -> Projection:
    """Project N Gaussians into C pinhole cameras (EWA splatting with the 3DGS low-pass dilation).

    means [N,3], quats [N,4] wxyz, scales [N,3], opacities [N] in [0,1], viewmats [C,4,4], Ks [C,3,3].
    A Gaussian is culled (radii 0, visible False) when its depth is outside (near, far), its opacity is below
    1/255, or its footprint misses the image (:func:`screen_covariance` gives the undilated covariance).
    """
    p_cam, cov2d, in_depth = screen_covariance(means, quats, scales, viewmats, Ks, width, height, near, far)
    x, y, z = p_cam.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C,1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    a = cov2d[..., 0, 0] + eps2d
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + eps2d
    det = a * c - b * b
    valid = in_depth & (det > 0)
    det = torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack((c / det, -b / det, a / det), dim=-1)
    means2d = torch.stack((fx * x / z + cx, fy * y / z + cy), dim=-1)

    with torch.no_grad():
        # Opacity-aware half-extent: alpha = o*exp(-m^2/2) >= 1/255  <=>  m <= sqrt(2 ln(255 o)).
        opac = opacities.detach().expand(z.shape)
        ok_opacity = opac >= ALPHA_THRESHOLD
        extent = torch.sqrt(2.0 * torch.log(opac.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD))
        extent = extent.clamp(max=MAX_EXTENT)
        rx = torch.ceil(extent * torch.sqrt(a.detach().clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(c.detach().clamp_min(0)))
        mx, my = means2d.detach().unbind(-1)
        inside = (mx + rx > 0) & (mx - rx < width) & (my + ry > 0) & (my - ry < height)
        visible = valid & ok_opacity & inside & (rx > 0) & (ry > 0)
        radii = torch.stack((rx, ry), dim=-1).to(torch.int32) * visible.unsqueeze(-1)
    return Projection(means2d=means2d, conics=conics, depths=z, radii=radii, visible=visible)


def focal_from_fov(fov_degrees: float, size: int) -> float:
    """Pinhole focal length in pixels for a field of view across ``size`` pixels."""
    return 0.5 * size / math.tan(math.radians(fov_degrees) / 2)
