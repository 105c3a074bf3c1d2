"""Compositing (DESIGN section 5): the rendered head over the source frame's torso over the background plate.

Layers, back to front: the background plate; the *outline* of the source frame; the torso layer of the
source frame (``torso/%06d.png``, RGBA, straight alpha, neck and torso of the frame the pose was taken from);
a *neck bridge*; the rendered head (premultiplied colour and alpha).

The outline is the source frame's own pixels on a thin ring just inside the person's silhouette (hair,
neck and torso labels within ``outline`` of the background). The rendered head's alpha fades out a pixel or
two inside the parsing's silhouette (Gaussians cover a soft hair edge only in part), which would put the
plate there; the source frame holds that edge as the camera saw it, and hair does not move with the audio.
Face labels stay out of the ring: the jaw does move with the audio, and the source frame's jaw line would
show under a rendered chin.

The neck bridge closes the seam. The torso layer ends where the source frame's head began (its jaw line),
while the rendered head ends where the model's chin is, which moves with the driving audio: a closed
rendered mouth over a source frame with an open one leaves a strip between chin and neck where the plate
would show. Column by column, where the head's lower edge lies at most ``reach`` above the torso's upper
edge, the bridge fills from ``overlap`` above the head's lower edge down to the torso with the neck colour
at the torso's top (averaged over a few rows, smoothed across columns). The head's soft alpha edge then
blends over neck colour, never over the plate (the feathered seam), and since the bridge is the neck's
colour stretched upwards, never the source frame's chin, the chin does not double. Columns whose gap is
larger than ``reach`` (under the jaw beside the neck) keep the plate: that is real background.

Everything is torch on the tensors' device, so a GPU render composites on the GPU too. Output is sRGB
uint8, as every image artefact on disk.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from pipeline.parsing import BACKGROUND, HAIR, NECK, TORSO

#: Labels whose silhouette the outline layer takes from the source frame (the face's moves with the audio).
OUTLINE_LABELS = (HAIR, NECK, TORSO)


@dataclass(frozen=True)
class SeamConfig:
    reach: float = 0.08  # largest head-to-torso gap the neck bridge closes, fraction of the frame height
    overlap: float = 0.02  # the bridge reaches this far under the head's lower edge, fraction of frame height
    colour_rows: int = 4  # torso rows averaged for the bridge colour
    smooth: float = 0.01  # box filter across columns of the bridge colour, fraction of the frame width
    outline: float = 0.03  # width of the source frame's silhouette ring, fraction of the frame height (0: none)

    def __post_init__(self) -> None:
        if not (0 <= self.reach <= 1 and 0 <= self.overlap <= 1 and self.colour_rows >= 1 and self.smooth >= 0
                and 0 <= self.outline <= 1):
            raise ValueError(f"invalid seam settings {self}")


@dataclass
class Composite:
    """image uint8 [H,W,3]; plate_weight float [H,W]: how much of each pixel is the background plate."""

    image: Tensor
    plate_weight: Tensor


def _last_true_row(mask: Tensor) -> Tensor:
    """int64 [W]: the lowest row where bool [H,W] ``mask`` holds (-1 where a column has none)."""
    rows = torch.arange(1, mask.shape[0] + 1, device=mask.device, dtype=torch.int32)[:, None]
    return (mask * rows).amax(dim=0).long() - 1


def outline_pixels(height: int, config: SeamConfig = SeamConfig()) -> int:
    """The outline ring's width in pixels for frames ``height`` tall (0: no outline layer)."""
    return max(1, round(config.outline * height)) if config.outline > 0 else 0


def outline_layer(frame: np.ndarray, labels: np.ndarray, width: int) -> np.ndarray:
    """The source frame's silhouette band: uint8 RGBA [H,W,4], straight alpha.

    frame: uint8 [H,W,3]; labels: parsing labels [H,W] of the same frame and size; width: band width in
    pixels. Opaque on the ring of :data:`OUTLINE_LABELS` pixels within ``width`` of the background (the image
    border does not count as background); outside the silhouette the alpha falls linearly to 0 over
    ``width // 4 + 2`` pixels, so the band carries the frame's own soft edge into the plate instead of a hard
    cut.
    """
    if frame.shape[:2] != labels.shape:
        raise ValueError(f"outline: frame {frame.shape[:2]} and labels {labels.shape} differ in size")
    alpha = np.zeros(labels.shape, np.float32)
    if width > 0:
        person = labels != BACKGROUND
        ring = person & ~ndimage.binary_erosion(person, iterations=width, border_value=1)
        ring &= np.isin(labels, OUTLINE_LABELS)
        if ring.any():
            outside = ndimage.distance_transform_edt(~ring)  # pixels to the nearest ring pixel
            fade = width // 4 + 1
            alpha = np.where(ring, 1.0, np.where(person, 0.0, np.clip(1 - outside / (fade + 1), 0, 1)))
    return np.concatenate([frame, np.round(alpha * 255).astype(np.uint8)[..., None]], axis=2)


def neck_bridge(head_alpha: Tensor, torso_alpha: Tensor, torso_rgb: Tensor,
                config: SeamConfig = SeamConfig()) -> tuple[Tensor, Tensor]:
    """The neck bridge: (mask float [H,W] in {0,1}, colour float [W,3]).

    head_alpha, torso_alpha: float [H,W] in [0,1]; torso_rgb: float [H,W,3] straight colour.
    """
    h, w = head_alpha.shape
    head, torso = head_alpha > 0.5, torso_alpha > 0.5
    head_bottom = _last_true_row(head)
    torso_top = torch.argmax(torso.to(torch.uint8), dim=0)
    reach, overlap = round(config.reach * h), round(config.overlap * h)
    valid = head.any(0) & torso.any(0) & (torso_top - head_bottom - 1 <= reach)
    start = torch.minimum(head_bottom, torso_top) - overlap
    rows = torch.arange(h, device=head_alpha.device)[:, None]
    mask = (valid[None] & (rows >= start[None]) & (rows < torso_top[None])).to(head_alpha.dtype)

    # neck colour: mean of the torso's first rows in each column (only rows inside the torso count)
    take = torch.clamp(torso_top[None] + torch.arange(config.colour_rows, device=head_alpha.device)[:, None],
                       max=h - 1)  # [k, W]
    cols = torch.arange(w, device=head_alpha.device)[None].expand_as(take)
    weight = torso[take, cols].to(torso_rgb.dtype)[..., None]  # [k, W, 1]
    colour = (torso_rgb[take, cols] * weight).sum(0) / weight.sum(0).clamp(min=1)  # [W, 3]
    k = 2 * round(config.smooth * w / 2) + 1
    if k > 1:  # smooth along valid columns only, so the plate beside the neck does not bleed in
        v = valid.to(colour.dtype)[:, None]
        num = F.avg_pool1d((colour * v).T[None], k, stride=1, padding=k // 2, count_include_pad=False)[0].T
        den = F.avg_pool1d(v.T[None], k, stride=1, padding=k // 2, count_include_pad=False)[0].T
        colour = torch.where(den > 0, num / den.clamp(min=1e-6), colour)
    return mask, colour


def composite(head_rgb: Tensor, head_alpha: Tensor, torso_rgba: Tensor, plate: Tensor,
              config: SeamConfig = SeamConfig(), outline_rgba: Tensor | None = None) -> Composite:
    """One output frame.

    head_rgb: float [H,W,3] premultiplied head colour in [0,1]; head_alpha: float [H,W,1] or [H,W];
    torso_rgba: uint8 [H,W,4] straight alpha (torso/%06d.png); plate: float [H,W,3] in [0,1]
    (background.png / 255); outline_rgba: uint8 [H,W,4] (:func:`outline_layer`), or None for none.
    All on one device.
    """
    alpha = head_alpha.reshape(head_alpha.shape[0], head_alpha.shape[1]).clamp(0, 1)
    if head_rgb.shape != plate.shape or torso_rgba.shape[:2] != plate.shape[:2] or alpha.shape != plate.shape[:2]:
        raise ValueError(f"composite: head {tuple(head_rgb.shape)}, alpha {tuple(head_alpha.shape)}, torso "
                         f"{tuple(torso_rgba.shape)} and plate {tuple(plate.shape)} differ in size")
    torso = torso_rgba.to(plate.dtype) / 255
    torso_rgb, torso_alpha = torso[..., :3], torso[..., 3]
    bridge, colour = neck_bridge(alpha, torso_alpha, torso_rgb, config)
    lower, plate_weight = plate, (1 - alpha) * (1 - torso_alpha) * (1 - bridge)
    if outline_rgba is not None:
        if outline_rgba.shape != torso_rgba.shape:
            raise ValueError(f"composite: outline {tuple(outline_rgba.shape)} and torso {tuple(torso_rgba.shape)} "
                             "differ in size")
        outline = outline_rgba.to(plate.dtype) / 255
        lower = torch.lerp(lower, outline[..., :3], outline[..., 3:])
        plate_weight = plate_weight * (1 - outline[..., 3])
    lower = torch.lerp(lower, torso_rgb, torso_alpha[..., None])
    lower = torch.where(bridge[..., None] > 0, colour[None], lower)
    out = head_rgb + (1 - alpha)[..., None] * lower
    image = (out.clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    return Composite(image=image, plate_weight=plate_weight)
