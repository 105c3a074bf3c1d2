"""Gaussian parameter container, initialisers, and .ply files in the layout 3DGS viewers read.

Parameters are stored unconstrained, as 3DGS optimises them: log-scales, opacity logits, unnormalised
wxyz quaternions, SH coefficients [N,K,3] (index 0 the DC term). ``activated()`` gives the inputs
``rasterize`` expects.

.ply layout (binary little-endian, one float32 ``vertex`` property each, in this order): x, y, z, nx, ny,
nz (zeros), f_dc_0..2, f_rest_0..f_rest_{3(K-1)-1} channel-major (all R coefficients of bands >= 1, then
G, then B), opacity (logit), scale_0..2 (log), rot_0..3 (wxyz).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement
from torch import Tensor

from pipeline.gaussians.sh import num_sh_bases, rgb_to_sh, sh_degree_from_bases
from pipeline.io import PipelineError, atomic_path


@dataclass
class ActivatedGaussians:
    """Constrained parameters, as ``rasterize`` takes them: means [N,3], quats [N,4] unit wxyz,
    scales [N,3] > 0, opacities [N] in (0,1), sh [N,K,3]."""

    means: Tensor
    quats: Tensor
    scales: Tensor
    opacities: Tensor
    sh: Tensor


@dataclass
class GaussianModel:
    """N Gaussians: means [N,3], quats [N,4] wxyz (unnormalised), log_scales [N,3], opacity_logits [N],
    sh [N,K,3] with K = (sh_degree+1)^2."""

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        shapes = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"GaussianModel.{name} must have shape {shape}, got "
                                 f"{tuple(getattr(self, name).shape)}")
        if self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"GaussianModel.sh must have shape [{n},K,3], got {tuple(self.sh.shape)}")
        try:
            sh_degree_from_bases(self.sh.shape[1])
        except ValueError as err:
            raise ValueError(f"GaussianModel.sh: {err}") from err

    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(self.sh.shape[1])

    def tensors(self) -> dict[str, Tensor]:
        """Parameter tensors by field name (for optimisers and checkpoints)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def activated(self) -> ActivatedGaussians:
        return ActivatedGaussians(
            means=self.means,
            quats=self.quats / self.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12),
            scales=torch.exp(self.log_scales),
            opacities=torch.sigmoid(self.opacity_logits),
            sh=self.sh,
        )

    def map(self, fn: Callable[[Tensor], Tensor]) -> GaussianModel:
        """A model whose every tensor is ``fn(tensor)`` (e.g. ``lambda t: t.detach().clone()``)."""
        return GaussianModel(**{name: fn(t) for name, t in self.tensors().items()})

    def requires_grad_(self, flag: bool = True) -> GaussianModel:
        for t in self.tensors().values():
            t.requires_grad_(flag)
        return self

    def save_ply(self, path: str | Path) -> None:
        """Write the 3DGS .ply layout (float32), atomically."""
        n, k = len(self), self.sh.shape[1]
        sh = self.sh.detach().to("cpu", torch.float32)
        columns = {
            **_named("", ("x", "y", "z"), self.means),
            **{name: np.zeros(n, np.float32) for name in ("nx", "ny", "nz")},
            **_named("f_dc_", range(3), sh[:, 0, :]),
            **_named("f_rest_", range(3 * (k - 1)), sh[:, 1:, :].transpose(1, 2).reshape(n, -1)),
            "opacity": self.opacity_logits.detach().to("cpu", torch.float32).numpy(),
            **_named("scale_", range(3), self.log_scales),
            **_named("rot_", range(4), self.quats),
        }
        vertex = np.empty(n, dtype=[(name, "f4") for name in columns])
        for name, values in columns.items():
            vertex[name] = values
        with atomic_path(path) as tmp:
            PlyData([PlyElement.describe(vertex, "vertex")]).write(str(tmp))

    @classmethod
    def load_ply(cls, path: str | Path, device: torch.device | str = "cpu") -> GaussianModel:
        """Read a 3DGS .ply (as written by 3DGS, gsplat's exporter or :meth:`save_ply`)."""
        path = Path(path)
        try:
            ply = PlyData.read(str(path))
        except FileNotFoundError as err:
            raise PipelineError(f"{path}: file not found") from err
        except Exception as err:  # plyfile raises a zoo of types for malformed files
            raise PipelineError(f"{path}: not a readable .ply file ({err})") from err
        if "vertex" not in ply:
            raise PipelineError(f"{path}: no 'vertex' element, not a Gaussian splat .ply")
        vertex = ply["vertex"].data
        names = set(vertex.dtype.names or ())
        n_rest = sum(1 for name in names if name.startswith("f_rest_"))
        if n_rest % 3:
            raise PipelineError(f"{path}: {n_rest} f_rest_* properties is not a multiple of 3")
        k = 1 + n_rest // 3
        try:
            sh_degree_from_bases(k)
        except ValueError as err:
            raise PipelineError(f"{path}: {err}") from err
        required = (["x", "y", "z", "opacity"] + [f"f_dc_{i}" for i in range(3)]
                    + [f"f_rest_{i}" for i in range(n_rest)] + [f"scale_{i}" for i in range(3)]
                    + [f"rot_{i}" for i in range(4)])
        missing = [name for name in required if name not in names]
        if missing:
            raise PipelineError(f"{path}: missing vertex properties {', '.join(missing)}")

        n = len(vertex)

        def stack(cols: list[str]) -> Tensor:
            columns = [np.asarray(vertex[c], np.float32) for c in cols]
            array = np.stack(columns, axis=1) if columns else np.zeros((n, 0), np.float32)
            return torch.from_numpy(array).to(device)

        rest = stack([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, k - 1).transpose(1, 2)
        return cls(
            means=stack(["x", "y", "z"]),
            quats=stack([f"rot_{i}" for i in range(4)]),
            log_scales=stack([f"scale_{i}" for i in range(3)]),
            opacity_logits=stack(["opacity"])[:, 0],
            sh=torch.cat((stack([f"f_dc_{i}" for i in range(3)]).unsqueeze(1), rest), dim=1).contiguous(),
        )


def _named(prefix: str, suffixes, values: Tensor) -> dict[str, np.ndarray]:
    """Columns of a [N, M] tensor as float32 arrays named prefix+suffix."""
    array = values.detach().to("cpu", torch.float32).numpy()
    return {f"{prefix}{suffix}": array[:, i] for i, suffix in enumerate(suffixes)}


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def nearest_neighbour_scales(points: Tensor, k: int = 3, chunk: int = 1024) -> Tensor:
    """3DGS's initial scale: root mean squared distance to the k nearest other points. [N,3] -> [N]."""
    n = points.shape[0]
    if n < 2:
        return torch.full((n,), 0.01, dtype=points.dtype, device=points.device)
    k = min(k, n - 1)
    out = []
    for start in range(0, n, chunk):
        d2 = torch.cdist(points[start:start + chunk], points).square()
        d2[torch.arange(d2.shape[0]), torch.arange(start, start + d2.shape[0])] = float("inf")
        out.append(d2.topk(k, dim=1, largest=False).values.mean(dim=1))
    return torch.cat(out).clamp_min(1e-14).sqrt()


def gaussians_from_points(points: Tensor, colors: Tensor | None = None, sh_degree: int = 3,
                          opacity: float = 0.1, scale: float | None = None) -> GaussianModel:
    """Isotropic Gaussians at ``points`` [N,3].

    colors [N,3] or [3] in [0,1] (grey 0.5 if None) go into the DC band, higher bands start at 0;
    ``scale`` is the standard deviation (default: 3DGS's nearest-neighbour distance per point);
    identity rotations; opacity as given (stored as a logit).
    """
    n, dtype, device = points.shape[0], points.dtype, points.device
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"points must have shape [N,3], got {tuple(points.shape)}")
    if not 0 < opacity < 1:
        raise ValueError(f"opacity must be in (0,1), got {opacity}")
    if scale is None:
        std = nearest_neighbour_scales(points)
    else:
        std = torch.full((n,), scale, dtype=dtype, device=device)
    if colors is None:
        rgb = torch.full((n, 3), 0.5, dtype=dtype, device=device)
    else:
        rgb = colors.to(dtype).expand(n, 3)
    sh = torch.zeros(n, num_sh_bases(sh_degree), 3, dtype=dtype, device=device)
    sh[:, 0] = rgb_to_sh(rgb)
    quats = torch.zeros(n, 4, dtype=dtype, device=device)
    quats[:, 0] = 1
    return GaussianModel(means=points.clone(), quats=quats, log_scales=std.log().unsqueeze(1).repeat(1, 3),
                         opacity_logits=torch.full((n,), _logit(opacity), dtype=dtype, device=device), sh=sh)


def random_gaussians(n: int, box_min: Tensor | tuple[float, float, float],
                     box_max: Tensor | tuple[float, float, float], sh_degree: int = 3, opacity: float = 0.1,
                     scale: float | None = None, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> GaussianModel:
    """``n`` Gaussians uniformly in the axis-aligned box [box_min, box_max] with random colours
    (3DGS's random initialisation); scale and opacity as in :func:`gaussians_from_points`. CPU tensors."""
    lo = torch.as_tensor(box_min, dtype=dtype)
    hi = torch.as_tensor(box_max, dtype=dtype)
    if lo.shape != (3,) or hi.shape != (3,) or bool((hi <= lo).any()):
        raise ValueError(f"box must be two 3-vectors with box_min < box_max, got {box_min}, {box_max}")
    points = lo + (hi - lo) * torch.rand(n, 3, generator=generator, dtype=dtype)
    colors = torch.rand(n, 3, generator=generator, dtype=dtype)
    return gaussians_from_points(points, colors, sh_degree=sh_degree, opacity=opacity, scale=scale)
