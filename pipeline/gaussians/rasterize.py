"""One rasterization entry point for training, dynamic splatting and rendering, whatever the backend.

``rasterize`` takes activated Gaussian parameters (gsplat's conventions: quats wxyz, linear scales,
opacities in [0,1], world-to-camera ``viewmats`` [C,4,4], intrinsics ``Ks`` [C,3,3]) and returns colour,
alpha, expected depth and any extra per-Gaussian channels composited exactly like colour, plus the
screen-space quantities densification needs.

Backends: ``torch`` (pure PyTorch, CPU or CUDA, see torch_backend.py), ``gsplat`` (CUDA, optional
package), ``auto`` (gsplat for CUDA tensors when it is installed, torch otherwise). Both get the same
per-camera feature tensor: SH colours are evaluated here, once, in PyTorch, and extra channels are
concatenated to the colours, so the two backends composite identical inputs in a single pass.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from pipeline.gaussians.sh import eval_sh_colors
from pipeline.gaussians.torch_backend import DEFAULT_CHUNK_PAIRS, rasterize_torch
from pipeline.io import PipelineError

Backend = Literal["auto", "torch", "gsplat"]


@dataclass
class RasterResult:
    """Rendered images and per-Gaussian screen-space data for C cameras and N Gaussians.

    color: [C,H,W,D] (D = 3 for RGB or SH) with the background applied as color + bg * (1 - alpha);
    alpha: [C,H,W,1]; depth: [C,H,W,1] expected (alpha-normalised) camera depth, 0 where alpha is 0;
    extra: [C,H,W,E] extra channels composited like colour (no background) or None;
    means2d: [C,N,2] pixel positions in the autograd graph: ``means2d.retain_grad()`` before backward, then
    ``means2d.grad`` is the screen-space positional gradient (pixel units) used for densification;
    radii: [C,N] int32 footprint half-extent in pixels (0 if culled); visible: [C,N] bool;
    depths: [C,N] camera-space z of the centres; backend: the backend that ran ("torch" or "gsplat").
    """

    color: Tensor
    alpha: Tensor
    depth: Tensor
    extra: Tensor | None
    means2d: Tensor
    radii: Tensor
    visible: Tensor
    depths: Tensor
    backend: str


def gsplat_available() -> bool:
    """True when the gsplat package can be imported (it is optional)."""
    return importlib.util.find_spec("gsplat") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that will run for tensors on ``device``; raises PipelineError when it cannot."""
    if backend == "auto":
        return "gsplat" if device.type == "cuda" and gsplat_available() else "torch"
    if backend == "torch":
        return backend
    if backend != "gsplat":
        raise ValueError(f"unknown rasterizer backend {backend!r}: use 'auto', 'torch' or 'gsplat'")
    if not torch.cuda.is_available():
        raise PipelineError("rasterizer backend 'gsplat' needs CUDA, which is not available here; "
                            "use backend='torch' (or 'auto')")
    if device.type != "cuda":
        raise PipelineError(f"rasterizer backend 'gsplat' needs CUDA tensors, got tensors on {device}; "
                            "move the Gaussians and cameras to the GPU or use backend='torch'")
    if not gsplat_available():
        raise PipelineError("rasterizer backend 'gsplat' needs the gsplat package, which is not installed "
                            "(pip install 'gsplat>=1.4', the project's 'cuda' extra); or use backend='torch'")
    return backend


def _per_camera(x: Tensor, n_cams: int, n_gauss: int, name: str, trailing: int) -> Tensor:
    """Broadcast [N, ...] or [C, N, ...] (``trailing`` dims after N) to [C, N, ...]."""
    if x.dim() == trailing + 1 and x.shape[0] == n_gauss:
        return x.expand(n_cams, *x.shape)
    if x.dim() == trailing + 2 and x.shape[:2] == (n_cams, n_gauss):
        return x
    raise ValueError(f"{name} must have shape [N, ...] or [C, N, ...] with N={n_gauss}, C={n_cams} and "
                     f"{trailing} trailing dims, got {tuple(x.shape)}")


def _check_inputs(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, viewmats: Tensor,
                  Ks: Tensor, width: int, height: int) -> None:
    n = means.shape[0]
    expected = {"means": (means, (n, 3)), "quats": (quats, (n, 4)), "scales": (scales, (n, 3)),
                "opacities": (opacities, (n,))}
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tensor.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must have shape [C,4,4], got {tuple(viewmats.shape)}")
    if tuple(Ks.shape) != (viewmats.shape[0], 3, 3):
        raise ValueError(f"Ks must have shape [C,3,3] with C={viewmats.shape[0]}, got {tuple(Ks.shape)}")
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              viewmats: Tensor, Ks: Tensor, width: int, height: int, sh_degree: int | None = None,
              extra: Tensor | None = None, background: Tensor | None = None, backend: Backend = "auto",
              near: float = 0.01, far: float = 1e10, eps2d: float = 0.3, tile_size: int = 16,
              chunk_pairs: int = DEFAULT_CHUNK_PAIRS) -> RasterResult:
    """Render N Gaussians into C pinhole cameras, differentiably.

    means [N,3]; quats [N,4] wxyz (normalised here); scales [N,3] linear; opacities [N] in [0,1];
    colors [N,D] or [C,N,D] post-activation colours when ``sh_degree`` is None, else SH coefficients
    [N,K,3] or [C,N,K,3] with K >= (sh_degree+1)^2, evaluated per camera along the camera-to-Gaussian ray;
    viewmats [C,4,4] world-to-camera; Ks [C,3,3]; extra [N,E] or [C,N,E] optional channels;
    background [D] or [C,D] optional colour behind the Gaussians. ``near``/``far`` cull by camera depth,
    ``eps2d`` is the screen-space dilation in pixels^2 (0.3 as 3DGS); ``tile_size`` is the tile edge in
    pixels (gsplat's tiles; the torch backend's chunk granularity); ``chunk_pairs`` bounds the torch
    backend's work per chunk.
    """
    _check_inputs(means, quats, scales, opacities, viewmats, Ks, width, height)
    n_cams, n_gauss = viewmats.shape[0], means.shape[0]
    chosen = resolve_backend(backend, means.device)

    if sh_degree is None:
        rgb = _per_camera(colors, n_cams, n_gauss, "colors", trailing=1)
    else:
        coeffs = _per_camera(colors, n_cams, n_gauss, "SH colors", trailing=2)
        if coeffs.shape[-1] != 3:
            raise ValueError(f"SH colors must end in 3 channels, got {tuple(colors.shape)}")
        cam_centres = torch.linalg.inv(viewmats)[:, :3, 3]  # [C,3]
        rgb = eval_sh_colors(sh_degree, coeffs, means.unsqueeze(0) - cam_centres.unsqueeze(1))
    n_color = rgb.shape[-1]
    if background is not None and tuple(background.shape) not in ((n_color,), (n_cams, n_color)):
        raise ValueError(f"background must have shape [{n_color}] or [C,{n_color}], "
                         f"got {tuple(background.shape)}")
    feats = rgb
    if extra is not None:
        extra = _per_camera(extra, n_cams, n_gauss, "extra", trailing=1).to(rgb.dtype)
        feats = torch.cat((rgb, extra), dim=-1)

    if chosen == "gsplat":
        from pipeline.gaussians.gsplat_backend import rasterize_gsplat

        raw = rasterize_gsplat(means, quats, scales, opacities, feats, viewmats, Ks, width, height, near, far,
                               eps2d, tile_size)
    else:
        raw = rasterize_torch(means, quats, scales, opacities, feats, viewmats, Ks, width, height, near, far,
                              eps2d, tile_size, chunk_pairs)

    color = raw.features[..., :n_color]
    if background is not None:
        color = color + background.to(color.dtype).reshape(-1, 1, 1, n_color) * (1 - raw.alpha)
    return RasterResult(color=color, alpha=raw.alpha, depth=raw.depth,
                        extra=raw.features[..., n_color:] if extra is not None else None,
                        means2d=raw.means2d, radii=raw.radii, visible=raw.visible, depths=raw.depths,
                        backend=chosen)
