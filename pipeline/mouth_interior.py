"""The mouth interior of the fine stage: teeth, tongue and the dark of an open mouth as Gaussians of their own.

The coarse head is fitted to every frame at the training size, where a closed mouth is the common case and a lip
gap is a pixel wide: its lip Gaussians close over the mouth, and there is nothing behind them to show when the
deformation moves them apart (on macron the renders never parted the lips, with the rendered alpha ~1 inside the
real inner-lip polygon). After TalkingGaussian's face-mouth decomposition, kept within one deformation field:

- :func:`interior_gaussians` seeds Gaussians in the canonical mouth, behind the lips; fine training keeps them
  apart from the head's (the coarse run's rates, a fixed opacity, no densification) and deforms both with the
  same field;
- the mouth-box render splats each Gaussian's face flag (1 for the head's, 0 for the interior's) as an extra
  channel, and :func:`interior_loss` charges the head's share of the pixels inside the frame's inner-lip polygon
  (the parsing's inner-mouth label) and the interior's share outside it: the lips must leave the open mouth to
  the interior, and the interior stays behind the lips.

Opt-in (``fine.mouth_interior``): on macron the lips part over a teeth band, but lip sync drops (BENCHMARKS.md,
sixth session).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pipeline import landmarks as lmk
from pipeline.gaussians import GaussianModel, gaussians_from_points

INTERIOR_COLOUR = (0.30, 0.12, 0.12)  # the dark red of an open mouth; teeth are learnt


def interior_gaussians(canonical: np.ndarray, count: int, sh_degree: int, generator: torch.Generator,
                       opacity: float) -> GaussianModel:
    """``count`` Gaussians in the canonical mouth [478, 3] (metres, z pointing back): uniform in the outer-lip
    polygon shrunk by 15 % towards its centre, 3-15 mm behind the lips."""
    lips = torch.tensor(canonical[list(lmk.LIPS_OUTER)], dtype=torch.float32)
    centre = lips.mean(dim=0)
    # uniform in the fan of triangles (centre, lip k, lip k+1), weighted by their areas
    edges = lips - centre
    following = torch.roll(edges, -1, dims=0)
    areas = 0.5 * (edges[:, 0] * following[:, 1] - edges[:, 1] * following[:, 0]).abs()
    k = torch.multinomial(areas, count, replacement=True, generator=generator)
    u, v = torch.rand(count, 1, generator=generator), torch.rand(count, 1, generator=generator)
    flip = (u + v) > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    points = centre + 0.85 * (u * edges[k] + v * following[k])
    points[:, 2] += 0.003 + 0.012 * torch.rand(count, generator=generator)
    colours = torch.tensor(INTERIOR_COLOUR).expand(count, 3)
    return gaussians_from_points(points, colours, sh_degree=sh_degree, opacity=opacity, scale=0.0015)


def face_flags(face: int, interior: int, device: torch.device | str = "cpu") -> Tensor:
    """[face + interior, 1]: 1 for the head's Gaussians (first), 0 for the interior's: the extra channel whose
    splat is the head's share of each pixel."""
    return torch.cat([torch.ones(face, 1, device=device), torch.zeros(interior, 1, device=device)])


def interior_loss(face_share: Tensor, alpha: Tensor, inner_mouth: Tensor) -> Tensor:
    """Each side keeps to its own pixels: mean over the image of the head's share [H, W] inside the inner-mouth
    mask [H, W] in [0, 1] and of the interior's share (``alpha`` [H, W] minus the head's) outside it. Without the
    second part the interior Gaussians could take the lips' colour and cover them, which also clears the inner
    mouth of the head without parting the lips."""
    return (face_share * inner_mouth + (alpha - face_share) * (1 - inner_mouth)).mean()
