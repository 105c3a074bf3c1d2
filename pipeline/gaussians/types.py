"""What every rasterizer backend returns (before background and channel splitting)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class BackendRaster:
    """One backend's render of N Gaussians into C cameras.

    features: [C,H,W,F] alpha-weighted sum of the per-Gaussian features passed in (no background);
    depth: [C,H,W,1] expected depth sum(w z) / alpha (alpha clamped at 1e-10, so 0 where nothing is drawn);
    alpha: [C,H,W,1]; means2d: [C,N,2] pixel positions, part of the autograd graph (call ``retain_grad``
    before ``backward`` to read the screen-space positional gradient); depths: [C,N] camera-space z;
    radii: [C,N] int32 half-extent in pixels of each footprint (0 where culled); visible: [C,N] bool.
    """

    features: Tensor
    depth: Tensor
    alpha: Tensor
    means2d: Tensor
    depths: Tensor
    radii: Tensor
    visible: Tensor
