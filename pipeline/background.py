"""Stages ``extract_background`` (``plate``) and ``split_head_torso`` (``split``).

``plate`` writes ``background.png`` (RGB uint8, frame size), each pixel's background colour over sampled
frames. A sample counts at a pixel where the pixel is background farther than ``margin`` from the person
(segmentation edges leave a halo of skin and hair just outside the mask). The pixel takes the mean of those
samples, or, where they disagree by more than twice ``tolerance``, the mean of the ones within ``tolerance``
of their per-channel median, so a person the segmentation missed in a few frames is outvoted. A pixel that
counts in fewer than ``min_seen`` of the samples (where the person nearly always stands, its rare
"background" samples are likely misses) is unknown and inpainted from the surrounding plate by push-pull
interpolation. Frames are sampled evenly (at most ``max_samples``, at least ``min_stride`` frames apart:
neighbouring frames add no new background) and streamed; memory is bounded by the sample count.

``split`` writes, per frame:

* ``head/%06d.png`` RGB: the frame on head pixels (labels 1, 2, 5, 6), the plate elsewhere (training target);
* ``torso/%06d.png`` RGBA, straight alpha: the frame on neck and torso pixels (labels 3, 4) with alpha 255
  inside, ramping down over ``feather`` at the edge against the background (not against the head, so a
  composite shows no background at the neck seam); alpha 0 and RGB 0 elsewhere;
* ``blink.npy`` float32 [N]: :func:`pipeline.landmarks.blink_signal` (open eyes ~1, closed ~0);
* optionally the QC contact sheet ``qc/face_analysis.png``: evenly spaced frames with parsing colours,
  landmarks and the mouth-mask outline, plus the plate, one head image and one torso image.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from pipeline import cli
from pipeline.io import (
    PipelineError,
    atomic_dir,
    evenly_spaced,
    list_frames,
    load_image,
    load_rgb,
    map_threaded,
    save_image,
    save_npy,
    write_png_into,
)
from pipeline.landmarks import blink_signal, load_landmarks
from pipeline.parsing import BACKGROUND, LABEL_NAMES, NECK, PALETTE, TORSO, load_labels
from pipeline.paths import frame_name

log = logging.getLogger("pipeline.background")


def _check_pairs(frames: list[Path], maps: list[Path], frames_dir: Path, parsing_dir: Path) -> None:
    if not frames:
        raise PipelineError(f"{frames_dir}: no .jpg frames")
    if len(maps) != len(frames):
        raise PipelineError(f"{parsing_dir}: {len(maps)} label maps but {len(frames)} frames in {frames_dir}")


# ---------------------------------------------------------------------------------------------------------
# Background plate (pure core)
# ---------------------------------------------------------------------------------------------------------

MAX_PLATE_SAMPLES = 257  # the plate's uint16 sums hold 257 samples of 255


@dataclass(frozen=True)
class PlateConfig:
    max_samples: int = 100
    min_stride: int = 4  # frames between samples, at least
    margin: float = 0.03  # distance from the person for a trusted sample, fraction of frame size
    min_seen: float = 0.2  # pixels background in fewer of the samples are unknown (inpainted)
    tolerance: int = 24  # a sample within this of the pixel's median background colour (max over RGB) counts

    def __post_init__(self) -> None:
        if (not 1 <= self.max_samples <= MAX_PLATE_SAMPLES or self.min_stride < 1 or self.margin < 0
                or not 0 <= self.min_seen <= 1 or not 0 <= self.tolerance <= 255):
            raise ValueError(f"invalid plate settings {self} (max_samples 1..{MAX_PLATE_SAMPLES}, "
                             "min_seen 0..1, tolerance 0..255)")


def sample_indices(n: int, config: PlateConfig = PlateConfig()) -> np.ndarray:
    """Evenly spaced frame indices (int [K], first and last frame included) for the plate."""
    k = min(config.max_samples, max(1, -(-n // config.min_stride)))
    return np.asarray(evenly_spaced(n, k), dtype=np.int64)


def far_from_person(labels: np.ndarray, margin_px: float) -> np.ndarray:
    """bool [H, W]: background pixels more than ``margin_px`` from every person pixel (label != 0).

    The distance is computed on a ~128 px grid (a cell is person if any of its pixels is) with an allowance
    for the cell size, so the margin is never under-estimated.
    """
    person = labels != BACKGROUND
    h, w = person.shape
    # cells of at most 16 x 16: one 255 pixel among 256 still averages to a non-zero (rounded) value
    f = min(16, max(1, round(min(h, w) / 128)))
    small = np.asarray(Image.fromarray(person.view(np.uint8) * np.uint8(255)).reduce(f)) > 0
    if not small.any():
        return ~person
    far_small = ndimage.distance_transform_edt(~small) * f > margin_px + 1.5 * f
    far = Image.fromarray(far_small.view(np.uint8)).resize((small.shape[1] * f, small.shape[0] * f),
                                                           Image.NEAREST)
    return (np.asarray(far)[:h, :w] > 0) & ~person


# One RGB pixel as a single 3-byte item: copyto with a [H, W] mask then moves whole pixels, ~20x faster than
# numpy's broadcast over a trailing axis of 3.
_PIXEL = np.dtype("V3")


def _pixels(rgb: np.ndarray) -> np.ndarray:
    """[H, W] view of the pixels of RGB uint8 [H, W, 3] (channels-last, channel axis contiguous)."""
    return rgb.view(_PIXEL)[..., 0]


def _masked(image: np.ndarray, mask: np.ndarray, fill: int = 0) -> np.ndarray:
    """RGB uint8 [H, W, 3] with pixels outside bool ``mask`` [H, W] set to ``fill``."""
    out = np.full_like(image, fill)
    np.copyto(_pixels(out), _pixels(image), where=mask)
    return out


def masked_median(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-element lower median over the valid samples: uint8 [K, ...] values, bool [K, ...] valid ->
    uint8 [...] (0 where no sample is valid).

    One ``np.partition`` of all K samples: the invalid ones are replaced by 0s and 255s, as many 0s as must lie
    below the valid samples' median for it to land at the middle index.
    """
    k = len(values)
    n = valid.sum(axis=0, dtype=np.int16)
    lows = (k - 1) // 2 - (np.maximum(n, 1) - 1) // 2
    key = np.where(valid, values, np.uint8(255))
    taken = np.zeros(n.shape, dtype=np.int16)
    for i in range(k):
        low = ~valid[i] & (taken < lows)
        key[i][low] = 0
        taken += low
    median = np.partition(key, (k - 1) // 2, axis=0)[(k - 1) // 2]
    median[n == 0] = 0
    return median


def robust_mean(values: np.ndarray, valid: np.ndarray, tolerance: int) -> np.ndarray:
    """Mean of the valid samples within ``tolerance`` (every channel) of their per-channel median.

    values: uint8 [K, n, C]; valid: bool [K, n]. Returns float32 [n, C] (the median where no sample is that
    close). A minority of outliers (a person the segmentation missed) never shifts the result.
    """
    k, n, c = values.shape
    median = masked_median(values.reshape(k, n * c), np.repeat(valid, c, axis=1)).reshape(n, c)
    total = np.zeros((n, c), dtype=np.uint32)
    count = np.zeros(n, dtype=np.uint16)
    for sample, use in zip(values, valid):
        # |sample - median| <= tolerance in uint8 without widening: the difference of max and min
        close = (np.maximum(sample, median) - np.minimum(sample, median)) <= tolerance
        inlier = use & close[:, 0]
        for channel in range(1, c):
            inlier &= close[:, channel]
        total += sample * inlier[:, None]
        count += inlier
    return np.where((count > 0)[:, None], total / np.maximum(count, 1)[:, None].astype(np.float32),
                    median.astype(np.float32))


def inpaint(image: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill the unknown pixels of ``image`` from the known ones by push-pull interpolation.

    image: float [H, W, C]; known: bool [H, W] (some pixel known). Returns float32 [H, W, C], equal to
    ``image`` on known pixels. Pull: halve the resolution (2x2 weighted means, weights capped at 1) until
    every pixel has some weight; push: from the coarsest level down, each pixel keeps its own value by its
    weight and takes the bilinearly upsampled coarser level for the rest. Smooth fills in a few frame-sized
    passes (no streaks as from a nearest-pixel fill, no linear system as for a biharmonic one).
    """
    if not known.any():
        raise ValueError("no known pixel to inpaint from")
    colour = np.where(known[..., None], image, 0).astype(np.float32)
    weight = known.astype(np.float32)
    pyramid = [(colour, weight)]
    while weight.min() == 0:
        pad = ((0, weight.shape[0] % 2), (0, weight.shape[1] % 2))
        c = np.pad(colour * weight[..., None], (*pad, (0, 0)))
        w = np.pad(weight, pad)
        c = c[0::2, 0::2] + c[1::2, 0::2] + c[0::2, 1::2] + c[1::2, 1::2]
        w = w[0::2, 0::2] + w[1::2, 0::2] + w[0::2, 1::2] + w[1::2, 1::2]
        colour, weight = c / np.maximum(w, 1e-12)[..., None], np.minimum(w, 1.0)
        pyramid.append((colour, weight))
    filled = colour
    for colour, weight in reversed(pyramid[:-1]):
        h, w = weight.shape
        up = _resize_bilinear(filled, (h + h % 2, w + w % 2))[:h, :w]
        filled = colour * weight[..., None] + up * (1 - weight[..., None])
    return filled


def _resize_bilinear(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """float32 [h, w, C] -> [H, W, C], pixel centres aligned (Pillow's float mode, one channel at a time)."""
    size = (shape[1], shape[0])
    return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c]), mode="F")
                                .resize(size, Image.BILINEAR)) for c in range(image.shape[-1])], axis=-1)


class PlateAccumulator:
    """The background samples of a plate: running per-pixel sums and ranges, and the samples themselves (about
    4 bytes per pixel and sample: memory is bounded by ``capacity``, not by the video length).

    A sample is trusted at a pixel when the pixel is background farther than ``margin_px`` from the person
    (segmentation edges are unreliable: a halo of skin and hair sits just outside them). :meth:`plate` takes
    each pixel's mean over its trusted samples; where they disagree by more than twice ``tolerance`` (an
    outlier, not noise), the mean of the ones within ``tolerance`` of their per-channel median instead, so a
    person the segmentation missed in a minority of them is outvoted. A pixel trusted in fewer than
    ``min_seen`` of the samples (where the person nearly always stands, its rare "background" samples are
    likely misses) is unknown and inpainted from the surrounding plate.
    """

    def __init__(self, shape: tuple[int, int], margin_px: float, capacity: int = MAX_PLATE_SAMPLES,
                 min_seen: float = PlateConfig.min_seen, tolerance: int = PlateConfig.tolerance):
        if not 1 <= capacity <= MAX_PLATE_SAMPLES:
            raise ValueError(f"a plate takes 1..{MAX_PLATE_SAMPLES} samples, not {capacity}")
        h, w = shape
        self.shape = (h, w)
        self.margin_px = margin_px
        self.min_seen = min_seen
        self.tolerance = tolerance
        self.samples = 0
        # np.empty reserves address space only: pages are committed as samples arrive
        self._frames = np.empty((capacity, h, w, 3), dtype=np.uint8)
        self._trusted = np.empty((capacity, h, w), dtype=bool)
        self._sum = np.zeros((h, w, 3), dtype=np.uint16)  # uint16 holds 257 samples of 255
        self._count = np.zeros((h, w), dtype=np.uint16)
        self._low = np.full((h, w, 3), 255, dtype=np.uint8)  # per-channel range of the trusted samples
        self._high = np.zeros((h, w, 3), dtype=np.uint8)

    def add(self, frame: np.ndarray, labels: np.ndarray) -> None:
        """frame: RGB uint8 [H, W, 3]; labels: uint8 [H, W]."""
        if frame.shape != (*self.shape, 3) or labels.shape != self.shape:
            raise ValueError(f"plate of size {self.shape} got frame {frame.shape} and labels {labels.shape}")
        if self.samples >= len(self._frames):
            raise ValueError(f"this plate takes at most {len(self._frames)} samples")
        frame = np.ascontiguousarray(frame)
        trusted = far_from_person(labels, self.margin_px)
        self._frames[self.samples] = frame
        self._trusted[self.samples] = trusted
        self.samples += 1
        seen = _masked(frame, trusted)
        self._sum += seen
        self._count += trusted
        np.maximum(self._high, seen, out=self._high)
        np.minimum(self._low, _masked(frame, trusted, fill=255), out=self._low)

    def known(self) -> np.ndarray:
        """bool [H, W]: pixels trusted in at least ``min_seen`` of the samples (the others are inpainted)."""
        return self._count >= max(1, int(np.ceil(self.min_seen * self.samples - 1e-9)))

    def known_fraction(self) -> float:
        return float(self.known().mean())

    def plate(self) -> np.ndarray:
        """RGB uint8 [H, W, 3]. Raises ValueError when no pixel was trusted in enough samples."""
        known = self.known()
        if not known.any():
            raise ValueError("no pixel is background in enough samples")
        plate = self._sum / np.maximum(self._count, 1)[..., None].astype(np.float32)
        # samples that disagree by more than twice the tolerance hold an outlier; noise alone seldom does
        contested = known & ((self._high.astype(np.int16) - self._low).max(axis=-1) > 2 * self.tolerance)
        if contested.any():
            ys, xs = np.nonzero(contested)
            plate[ys, xs] = robust_mean(self._frames[:self.samples, ys, xs],
                                        self._trusted[:self.samples, ys, xs], self.tolerance)
        return np.clip(inpaint(plate, known) + 0.5, 0, 255).astype(np.uint8)


def extract_plate(frames_dir: Path, parsing_dir: Path, out: Path, config: PlateConfig = PlateConfig(),
                  threads: int = 2) -> float:
    """Write ``out`` (background.png); returns the fraction of pixels seen as background often enough (the
    rest is inpainted)."""
    frames = list_frames(frames_dir, ext="jpg")
    maps = list_frames(parsing_dir, ext="png")
    _check_pairs(frames, maps, frames_dir, parsing_dir)
    first = load_rgb(frames[0])
    indices = sample_indices(len(frames), config)
    accumulator = PlateAccumulator(first.shape[:2], config.margin * min(first.shape[:2]), len(indices),
                                   config.min_seen, config.tolerance)

    def load(i: int) -> tuple[np.ndarray, np.ndarray]:
        frame = load_rgb(frames[i])
        if frame.shape != first.shape:
            raise PipelineError(f"{frames[i]}: frame of shape {list(frame.shape)}, "
                                f"expected {list(first.shape)}")
        return frame, load_labels(maps[i], first.shape[:2])

    for frame, labels in cli.progress(map_threaded(load, indices, threads), total=len(indices),
                                      desc="extract_background"):
        accumulator.add(frame, labels)
    try:
        plate = accumulator.plate()
    except ValueError as err:
        raise PipelineError(f"{parsing_dir}: no pixel is background in {100 * config.min_seen:g}% of the "
                            f"{len(indices)} sampled frames (no background visible); a background plate needs "
                            "some background around the person") from err
    save_image(out, plate)
    return accumulator.known_fraction()


# ---------------------------------------------------------------------------------------------------------
# Head / torso split (pure core)
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SplitConfig:
    feather: float = 0.01  # torso alpha ramp at its edge against the background, fraction of frame size
    qc_frames: int = 6

    def __post_init__(self) -> None:
        if self.feather < 0 or self.qc_frames < 1:
            raise ValueError(f"invalid split settings {self}")


def body_mask(labels: np.ndarray) -> np.ndarray:
    """bool [H, W]: labels 3, 4 (neck, torso)."""
    return (labels == NECK) | (labels == TORSO)


def head_mask(labels: np.ndarray) -> np.ndarray:
    """bool [H, W]: labels 1, 2, 5, 6 (face, hair/head, lips, inner mouth), i.e. the other non-background
    labels."""
    return (labels != BACKGROUND) & ~body_mask(labels)


def torso_alpha(labels: np.ndarray, feather_px: int) -> np.ndarray:
    """uint8 [H, W]: 255 inside neck + torso, ramping down over ``feather_px`` towards the background, 0
    outside.

    The ramp is a box blur of the whole person mask, so it only forms against the background (next to head
    pixels the blurred person mask stays 255) and lies inside the body: nothing spills outside.
    """
    body = body_mask(labels)
    if feather_px <= 0:
        return body.view(np.uint8) * np.uint8(255)
    alpha = np.zeros(labels.shape, dtype=np.uint8)
    rows = np.flatnonzero(body.any(axis=1))
    if rows.size == 0:
        return alpha
    # blur only the rows that can reach a body pixel (the body is the lower part of the frame)
    top, bottom = max(0, rows[0] - feather_px - 1), min(labels.shape[0], rows[-1] + feather_px + 2)
    person = Image.fromarray((labels[top:bottom] != BACKGROUND).view(np.uint8) * np.uint8(255))
    blurred = np.asarray(person.filter(ImageFilter.BoxBlur(feather_px)))
    # a body pixel at a sharp corner may blur to ~0; keep it visible
    alpha[top:bottom] = np.where(body[top:bottom], np.maximum(blurred, 1), 0)
    return alpha


def split_frame(frame: np.ndarray, labels: np.ndarray, plate: np.ndarray,
                feather_px: int) -> tuple[np.ndarray, np.ndarray]:
    """(head RGB uint8 [H, W, 3], torso RGBA uint8 [H, W, 4]) of one frame.

    frame, plate: RGB uint8 [H, W, 3]; labels: uint8 [H, W].
    """
    frame = np.ascontiguousarray(frame)
    head = np.array(plate, dtype=np.uint8, order="C")
    np.copyto(_pixels(head), _pixels(frame), where=head_mask(labels))
    alpha = torso_alpha(labels, feather_px)
    torso = np.zeros((*labels.shape, 4), dtype=np.uint8)
    np.copyto(_pixels(torso[..., :3]), _pixels(frame), where=alpha > 0)
    torso[..., 3] = alpha
    return head, torso


# ---------------------------------------------------------------------------------------------------------
# QC contact sheet
# ---------------------------------------------------------------------------------------------------------

def _outline(mask: np.ndarray) -> np.ndarray:
    """bool [h, w]: mask pixels with a 4-neighbour outside the mask."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def analysis_tile(frame: np.ndarray, labels: np.ndarray, landmarks: np.ndarray, mouth: np.ndarray,
                  size: int = 256) -> np.ndarray:
    """One QC tile RGB uint8 [size, size, 3]: parsing colours blended over the frame (background untinted),
    landmarks as dots and the mouth-mask outline in white.

    frame: RGB uint8 [H, W, 3]; labels: uint8 [H, W]; landmarks: [478, 3] pixels; mouth: bool [H, W].
    """
    h, w = labels.shape
    tinted = frame // 2 + PALETTE[labels] // 2
    blend = np.where((labels != BACKGROUND)[..., None], tinted, frame).astype(np.uint8)
    scale = size / max(h, w)
    tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    tile = Image.fromarray(blend).resize((tw, th), Image.BOX)
    mouth_image = Image.fromarray(mouth.view(np.uint8) * np.uint8(255))
    small_mouth = np.asarray(mouth_image.resize((tw, th), Image.NEAREST))
    pixels = np.array(tile)
    pixels[_outline(small_mouth > 127)] = 255
    tile = Image.fromarray(pixels)
    ImageDraw.Draw(tile).point([(float(x) * scale, float(y) * scale) for x, y in landmarks[:, :2]],
                               fill=(0, 255, 120))
    canvas = Image.new("RGB", (size, size))
    canvas.paste(tile, ((size - tw) // 2, (size - th) // 2))
    return np.asarray(canvas)


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    scale = size / max(h, w)
    tile = Image.fromarray(image).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BOX)
    canvas = Image.new("RGB", (size, size))
    canvas.paste(tile, ((size - tile.width) // 2, (size - tile.height) // 2))
    return np.asarray(canvas)


def checker_composite(rgba: np.ndarray, cell: int = 16) -> np.ndarray:
    """RGBA uint8 [H, W, 4] over a grey checkerboard -> RGB uint8 [H, W, 3] (shows the alpha)."""
    h, w = rgba.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    board = np.where(((yy // cell + xx // cell) % 2 == 0)[..., None], 90, 160).astype(np.float32)
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    return (rgba[..., :3] * a + board * (1 - a) + 0.5).astype(np.uint8)


def contact_sheet(tiles: Sequence[np.ndarray], captions: Sequence[str], columns: int = 3) -> np.ndarray:
    """Grid of equal-size RGB tiles [s, s, 3] with a caption each and a label-colour legend below.

    Returns RGB uint8 [rows * (s + 14) + 16, columns * s, 3].
    """
    size = tiles[0].shape[0]
    rows = -(-len(tiles) // columns)
    cap = 14
    sheet = Image.new("RGB", (columns * size, rows * (size + cap) + 16), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for k, (tile, caption) in enumerate(zip(tiles, captions)):
        x, y = (k % columns) * size, (k // columns) * (size + cap)
        sheet.paste(Image.fromarray(tile), (x, y + cap))
        draw.text((x + 3, y + 1), caption, fill=(230, 230, 230))
    x, y = 3, rows * (size + cap) + 2
    for name, colour in zip(LABEL_NAMES, PALETTE):
        swatch = tuple(int(c) for c in colour)
        draw.rectangle([x, y + 1, x + 10, y + 11], fill=swatch, outline=(200, 200, 200))
        draw.text((x + 14, y), name, fill=(230, 230, 230))
        x += 14 + int(draw.textlength(name)) + 12
    return np.asarray(sheet)


# ---------------------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------------------

def split_video(frames_dir: Path, parsing_dir: Path, plate_path: Path, landmarks_path: Path, head_dir: Path,
                torso_dir: Path, blink_path: Path, mouth_dir: Path | None = None, qc_path: Path | None = None,
                config: SplitConfig = SplitConfig(), threads: int = 2) -> int:
    """Write head/, torso/, blink.npy and (with ``mouth_dir`` and ``qc_path``) the QC sheet; returns N."""
    frames = list_frames(frames_dir, ext="jpg")
    maps = list_frames(parsing_dir, ext="png")
    _check_pairs(frames, maps, frames_dir, parsing_dir)
    landmarks = load_landmarks(landmarks_path, len(frames))
    plate = load_rgb(plate_path)
    shape = plate.shape[:2]
    feather_px = int(round(config.feather * min(shape)))
    want_qc = set(evenly_spaced(len(frames), config.qc_frames)) if qc_path is not None else set()
    masks: list[Path] = []
    if qc_path is not None:
        if mouth_dir is None:
            raise PipelineError("split_head_torso: the QC sheet (--qc) needs the mouth masks (--mouth-masks)")
        masks = list_frames(mouth_dir, ext="png")
        if len(masks) != len(frames):
            raise PipelineError(f"{mouth_dir}: {len(masks)} mouth masks but {len(frames)} frames in "
                                f"{frames_dir}")
    kept: dict[int, tuple[np.ndarray, ...]] = {}

    with atomic_dir(head_dir) as head_tmp, atomic_dir(torso_dir) as torso_tmp:
        def one(i: int) -> None:
            frame = load_rgb(frames[i])
            if frame.shape[:2] != shape:
                raise PipelineError(f"{frames[i]}: frame of size {list(frame.shape[:2])} but the plate "
                                    f"{plate_path} is {list(shape)}")
            labels = load_labels(maps[i], shape)
            head, torso = split_frame(frame, labels, plate, feather_px)
            name = frame_name(i, "png")
            write_png_into(head_tmp, name, head)
            write_png_into(torso_tmp, name, torso)
            if i in want_qc:
                kept[i] = (frame, labels, head, torso)

        for _ in cli.progress(map_threaded(one, range(len(frames)), threads), total=len(frames),
                              desc="split_head_torso"):
            pass
        save_npy(blink_path, blink_signal(landmarks).astype(np.float32))
        if qc_path is not None:
            save_image(qc_path, _qc_sheet(kept, landmarks, masks, plate))
    return len(frames)


def _qc_sheet(kept: dict[int, tuple[np.ndarray, ...]], landmarks: np.ndarray, masks: list[Path],
              plate: np.ndarray) -> np.ndarray:
    tiles, captions = [], []
    for i in sorted(kept):
        frame, labels = kept[i][:2]
        mouth = load_image(masks[i]) > 127
        tiles.append(analysis_tile(frame, labels, landmarks[i], mouth))
        captions.append(f"frame {i}")
    middle = sorted(kept)[len(kept) // 2]
    tiles += [_fit(plate, tiles[0].shape[0]), _fit(kept[middle][2], tiles[0].shape[0]),
              _fit(checker_composite(kept[middle][3]), tiles[0].shape[0])]
    captions += ["background plate", f"head {middle}", f"torso {middle}"]
    return contact_sheet(tiles, captions)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.background", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = PlateConfig()
    plate = sub.add_parser("plate", help="stage extract_background: background.png")
    plate.add_argument("--frames", type=Path, required=True, help="frame directory (000000.jpg ...)")
    plate.add_argument("--parsing", type=Path, required=True, help="parsing directory (%%06d.png label maps)")
    plate.add_argument("--out", type=Path, required=True, help="background.png to write")
    plate.add_argument("--max-samples", type=int, default=d.max_samples)
    plate.add_argument("--min-stride", type=int, default=d.min_stride,
                       help="frames between samples, at least")
    plate.add_argument("--margin", type=float, default=d.margin,
                       help="distance from the person for a trusted sample, fraction of frame size")
    plate.add_argument("--min-seen", type=float, default=d.min_seen,
                       help="pixels background in fewer of the samples are inpainted (fraction)")
    plate.add_argument("--tolerance", type=int, default=d.tolerance,
                       help="samples within this of the median background colour are averaged (0..255)")
    plate.add_argument("--threads", type=int, default=2)
    s = SplitConfig()
    split = sub.add_parser("split", help="stage split_head_torso: head/, torso/, blink.npy, QC sheet")
    split.add_argument("--frames", type=Path, required=True, help="frame directory (000000.jpg ...)")
    split.add_argument("--parsing", type=Path, required=True, help="parsing directory (%%06d.png label maps)")
    split.add_argument("--background", type=Path, required=True, help="background.png")
    split.add_argument("--landmarks", type=Path, required=True, help="landmarks.npy [N, 478, 3]")
    split.add_argument("--head-out", type=Path, required=True, help="head directory to write")
    split.add_argument("--torso-out", type=Path, required=True, help="torso directory to write")
    split.add_argument("--blink-out", type=Path, required=True, help="blink.npy to write")
    split.add_argument("--mouth-masks", type=Path, default=None, help="mouth_masks directory (for --qc)")
    split.add_argument("--qc", type=Path, default=None, help="QC contact sheet PNG to write")
    split.add_argument("--feather", type=float, default=s.feather,
                       help="torso alpha ramp against the background, fraction of frame size")
    split.add_argument("--qc-frames", type=int, default=s.qc_frames)
    split.add_argument("--threads", type=int, default=2)
    return p


def _run(args: argparse.Namespace) -> None:
    try:
        if args.command == "plate":
            plate_config = PlateConfig(args.max_samples, args.min_stride, args.margin, args.min_seen,
                                       args.tolerance)
        else:
            split_config = SplitConfig(args.feather, args.qc_frames)
    except ValueError as err:
        raise PipelineError(f"background {args.command}: {err}") from err
    if args.command == "plate":
        known = extract_plate(args.frames, args.parsing, args.out, plate_config, args.threads)
        log.info("%s: plate written; %.1f%% of pixels seen as background, the rest inpainted", args.out, 100 * known)
    else:
        n = split_video(args.frames, args.parsing, args.background, args.landmarks, args.head_out,
                        args.torso_out, args.blink_out, args.mouth_masks, args.qc, split_config, args.threads)
        log.info("%s, %s: %d frames", args.head_out, args.torso_out, n)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
