"""gsplat (CUDA) backend: the same inputs and outputs as the torch backend.

gsplat is optional and imported only here, on first use. Colours (already SH-evaluated) and extra
channels arrive concatenated as one [C,N,F] post-activation feature tensor, which gsplat composites with
any channel count when ``sh_degree`` is None; ``render_mode="RGB+ED"`` appends the expected depth. The
background is applied by the caller, identically for both backends. ``packed=False`` keeps ``means2d`` as
the dense [C,N,2] tensor whose gradient densification reads.
"""

from __future__ import annotations

from torch import Tensor

from pipeline.gaussians.types import BackendRaster
from pipeline.io import PipelineError


def rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, features: Tensor,
                     viewmats: Tensor, Ks: Tensor, width: int, height: int, near: float = 0.01,
                     far: float = 1e10, eps2d: float = 0.3, tile_size: int = 16) -> BackendRaster:
    """gsplat.rasterization with the torch backend's conventions; shapes as in ``rasterize_torch``."""
    try:
        import gsplat
    except ImportError as err:
        raise PipelineError(f"rasterizer backend 'gsplat' could not import gsplat ({err})") from err
    render, alpha, meta = gsplat.rasterization(
        means, quats, scales, opacities, features, viewmats, Ks, width, height,
        near_plane=near, far_plane=far, eps2d=eps2d, sh_degree=None, packed=False, tile_size=tile_size,
        render_mode="RGB+ED", rasterize_mode="classic",
    )
    radii = meta["radii"]
    if radii.dim() == 3:  # gsplat >= 1.5 reports per-axis radii [C,N,2]
        visible = (radii > 0).all(dim=-1)
        radii = radii.max(dim=-1).values * visible
    else:
        visible = radii > 0
    return BackendRaster(features=render[..., :-1], depth=render[..., -1:], alpha=alpha,
                         means2d=meta["means2d"], depths=meta["depths"], radii=radii.int(), visible=visible)
