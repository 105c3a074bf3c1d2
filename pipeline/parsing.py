"""Stage ``parse_faces``: per-frame label maps from face-mesh polygons plus MediaPipe selfie segmentation.

Output ``parsing/%06d.png``: single-channel uint8 PNG, one label per pixel (DESIGN section 2):
0 background, 1 face skin, 2 hair and rest of head, 3 neck, 4 torso, 5 lips, 6 inner mouth/teeth.

How a pixel gets its label:

* person vs background: MediaPipe selfie segmentation (run at its native 256x256 on a JPEG decoded at reduced
  size, probability upsampled bilinearly to the frame, thresholded);
* face skin, lips, inner mouth: the face-mesh face oval, outer and inner lip contours, rasterised at full
  resolution regardless of the person mask (the mesh is the more precise of the two there);
* the rest of the person is split geometrically in the face's own frame (u along the ear-to-ear axis, v down
  the face). The jaw line is the face oval's lower contour between the jaw angles; under it, a band about as
  wide as the jaw and 0.6 face heights deep is neck. Person pixels inside a head box (2.5 face half-widths to
  either side, reaching one face height above the forehead) above the jaw angles are hair/head (hair, ears,
  skin behind the cheeks: what moves with the head); the box's lower edge is each side's jaw-angle height,
  joined by the line between the angles. Nothing outside the face oval below that line is head: beside the
  jaw the segmentation holds neck, collar and jacket (the torso image has them), and a seam at the jaw line
  is one the head model can follow. Every other person pixel is torso, including shoulders and long hair
  below the jaw angles.
"""

from __future__ import annotations

import argparse
import logging
import queue
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from pipeline import cli
from pipeline.io import PipelineError, atomic_dir, list_frames, load_image, map_threaded, write_png_into
from pipeline.landmarks import FACE_OVAL, JAW, LIPS_INNER, LIPS_OUTER, NUM_MEDIAPIPE_POINTS, load_landmarks
from pipeline.paths import frame_name

log = logging.getLogger("pipeline.parsing")

BACKGROUND, FACE, HAIR, NECK, TORSO, LIPS, INNER_MOUTH = range(7)
LABEL_NAMES: tuple[str, ...] = ("background", "face", "hair/head", "neck", "torso", "lips", "inner mouth")
#: Labels that move with the head: the head image (training target) is made of these.
HEAD_LABELS: tuple[int, ...] = (FACE, HAIR, LIPS, INNER_MOUTH)
#: Labels of the torso image.
BODY_LABELS: tuple[int, ...] = (NECK, TORSO)
#: Display colours of the labels (QC pictures), RGB uint8 [7, 3].
PALETTE = np.array([(0, 0, 0), (230, 180, 140), (140, 60, 200), (60, 170, 230), (40, 90, 200),
                    (230, 30, 60), (255, 240, 60)], dtype=np.uint8)

# MediaPipe topology anchors (vertex ids, not geometry): ear-level oval points (subject's right, left),
# forehead top, chin, and the jaw angles (gonion) where the jaw line turns up towards the ears.
_EAR_RIGHT, _EAR_LEFT, _FOREHEAD, _CHIN = 234, 454, 10, 152
_JAW_ANGLE_RIGHT, _JAW_ANGLE_LEFT = 172, 397
#: Jaw line from the right jaw angle via the chin to the left one.
JAW_LINE: tuple[int, ...] = JAW[JAW.index(_JAW_ANGLE_RIGHT):JAW.index(_JAW_ANGLE_LEFT) + 1]

SEGMENTATION_SIZE = 256  # selfie segmentation's native input (model 0: 256x256)


@dataclass(frozen=True)
class ParsingConfig:
    """Geometry is relative to the face: ``W`` = ear-to-ear half-width (234-454), ``H`` = forehead-top-to-chin
    height (10-152), both measured along the face's own axes."""

    selfie_model: int = 0  # 0: general 256x256 model; 1: landscape 144x256 (faster, slightly coarser)
    person_threshold: float = 0.5  # on the selfie segmentation probability
    head_width: float = 2.5  # head box half-width in W (hair beside the face, long hair off-frame)
    head_top: float = 1.0  # head box top, in H above the forehead top (hair above the oval)
    neck_width: float = 0.9  # neck band width as a fraction of the jaw-angle distance
    neck_height: float = 0.6  # neck band depth below the chin, in H

    def __post_init__(self) -> None:
        if self.selfie_model not in (0, 1):
            raise ValueError(f"selfie_model must be 0 or 1, got {self.selfie_model}")
        if not 0.0 < self.person_threshold < 1.0:
            raise ValueError(f"person_threshold must be in (0, 1), got {self.person_threshold}")
        for name in ("head_width", "head_top", "neck_width", "neck_height"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------------------
# Pure core
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaceFrame:
    """The face's own 2-D frame in image pixels: ``origin`` between the ear-level oval points, ``ex`` unit
    vector towards the subject's left ear (image right for a frontal face), ``ey`` unit vector down the
    face."""

    origin: np.ndarray  # [2]
    ex: np.ndarray  # [2]
    ey: np.ndarray  # [2]
    half_width: float  # W, pixels
    height: float  # H, pixels

    @classmethod
    def of(cls, landmarks: np.ndarray) -> "FaceFrame":
        """landmarks: [478, 2 or 3] pixels of one frame."""
        xy = np.asarray(landmarks, dtype=np.float64)[:, :2]
        right, left = xy[_EAR_RIGHT], xy[_EAR_LEFT]
        axis = left - right
        width = float(np.hypot(*axis))
        if not np.isfinite(width) or width < 1e-3:
            raise ValueError("degenerate face landmarks (ear-level points coincide or are not finite)")
        ex = axis / width
        ey = np.array([-ex[1], ex[0]])
        origin = (left + right) / 2
        height = float((xy[_CHIN] - xy[_FOREHEAD]) @ ey)
        return cls(origin, ex, ey, width / 2, max(height, 1e-3))

    def to_face(self, xy: np.ndarray) -> np.ndarray:
        """Image points [..., 2] -> face coordinates (u, v) [..., 2]."""
        d = np.asarray(xy, dtype=np.float64) - self.origin
        return np.stack([d @ self.ex, d @ self.ey], axis=-1)

    def to_image(self, uv: np.ndarray) -> np.ndarray:
        """Face coordinates [..., 2] -> image points [..., 2]."""
        uv = np.asarray(uv, dtype=np.float64)
        return self.origin + uv[..., :1] * self.ex + uv[..., 1:2] * self.ey


def face_width(landmarks: np.ndarray) -> np.ndarray:
    """Ear-to-ear face width (pixels) per frame: distance between oval points 234 and 454.

    landmarks: [..., 478, 2 or 3]. Returns float32 [...].
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.linalg.norm(lm[..., _EAR_LEFT, :2] - lm[..., _EAR_RIGHT, :2], axis=-1).astype(np.float32)


@dataclass(frozen=True)
class _JawProfile:
    frame: FaceFrame
    ju: np.ndarray  # jaw line u, increasing
    jv: np.ndarray  # jaw line v at ju
    chin: np.ndarray  # (u, v) of the chin
    lo: float  # neck band's u range
    hi: float

    @classmethod
    def of(cls, landmarks: np.ndarray, config: ParsingConfig) -> "_JawProfile":
        lm = np.asarray(landmarks, dtype=np.float64)
        frame = FaceFrame.of(lm)
        jaw = frame.to_face(lm[list(JAW_LINE), :2])
        chin = frame.to_face(lm[_CHIN, :2])
        half = config.neck_width * abs(jaw[-1, 0] - jaw[0, 0]) / 2
        order = np.argsort(jaw[:, 0])
        return cls(frame, jaw[order, 0], jaw[order, 1], chin, chin[0] - half, chin[0] + half)

    def jaw_between(self, lo: float, hi: float) -> np.ndarray:
        """Jaw line points [K, 2] (u, v) from u = lo to u = hi, ends interpolated (flat beyond the jaw
        angles)."""
        inside = (self.ju > lo) & (self.ju < hi)
        return np.concatenate([[[lo, np.interp(lo, self.ju, self.jv)]],
                               np.stack([self.ju[inside], self.jv[inside]], 1),
                               [[hi, np.interp(hi, self.ju, self.jv)]]])


def head_polygon(landmarks: np.ndarray, config: ParsingConfig = ParsingConfig()) -> np.ndarray:
    """Hair/head region as an image polygon [K, 2] (x, y pixels): the head box down to the jaw angles (each
    side at its own angle's height, the line between the angles in between). Nothing below it is head but
    the face oval itself: beside the jaw lie neck, collar and jacket.

    landmarks: [478, 2 or 3] of one frame.
    """
    jp = _JawProfile.of(landmarks, config)
    top = float(jp.frame.to_face(np.asarray(landmarks)[_FOREHEAD, :2])[1]) - config.head_top * jp.frame.height
    # jaw angles in face coordinates, by increasing u (the jaw line's ends)
    (u0, v0), (u1, v1) = (jp.ju[0], jp.jv[0]), (jp.ju[-1], jp.jv[-1])
    a = max(config.head_width * jp.frame.half_width, abs(u0) + 1.0, abs(u1) + 1.0)
    uv = np.array([[-a, top], [a, top], [a, v1], [u1, v1], [u0, v0], [-a, v0]])
    return jp.frame.to_image(uv)


def neck_polygon(landmarks: np.ndarray, config: ParsingConfig = ParsingConfig()) -> np.ndarray:
    """Neck band under the jaw line, as an image polygon [K, 2] (x, y pixels).

    landmarks: [478, 2 or 3] of one frame.
    """
    jp = _JawProfile.of(landmarks, config)
    bottom = float(jp.chin[1]) + config.neck_height * jp.frame.height
    uv = np.concatenate([jp.jaw_between(jp.lo, jp.hi), [[jp.hi, bottom], [jp.lo, bottom]]])
    return jp.frame.to_image(uv)


def _polygon_inside(polygon_xy: np.ndarray, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """Even-odd scanline rasterisation: (bounding-box slices, bool mask within the box) of the pixels whose
    centres lie inside the polygon [K, 2] (x, y pixels, pixel (0, 0) centred at (0.5, 0.5)).

    Same pixels as ``skimage.draw.polygon`` (up to points exactly on an edge) at a fraction of its cost:
    skimage tests every pixel of the bounding box against every edge; this finds each row's edge crossings
    and fills the spans between consecutive pairs.
    """
    h, w = shape
    pts = np.asarray(polygon_xy, dtype=np.float64) - 0.5  # pixel-centre coordinates
    x0, y0 = pts[:, 0], pts[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    r0, r1 = max(0, int(np.ceil(y0.min()))), min(h - 1, int(np.floor(y0.max())))
    c0, c1 = max(0, int(np.ceil(x0.min()))), min(w - 1, int(np.floor(x0.max())))
    if r1 < r0 or c1 < c0:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), dtype=bool)
    rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    # half-open in y so a vertex shared by two edges is crossed once; every row then has an even count
    row_idx, edge = np.nonzero((rows >= np.minimum(y0, y1)) & (rows < np.maximum(y0, y1)))
    t = (rows[row_idx, 0] - y0[edge]) / (y1[edge] - y0[edge])
    width = c1 - c0 + 1
    # first column whose centre is right of the crossing
    col = np.clip(np.ceil(x0[edge] + t * (x1[edge] - x0[edge])).astype(np.int64) - c0, 0, width)
    order = np.lexsort((col, row_idx))
    row_idx, col = row_idx[order], col[order]
    per_row = np.bincount(row_idx, minlength=r1 - r0 + 1)
    slot = np.arange(len(row_idx)) - np.repeat(np.cumsum(per_row) - per_row, per_row)
    # int32 compares run at twice the speed of int64 ones
    spans = np.full((r1 - r0 + 1, max(int(per_row.max(initial=0)), 2)), width, dtype=np.int32)
    spans[row_idx, slot] = col
    columns = np.arange(width, dtype=np.int32)
    inside = np.zeros((r1 - r0 + 1, width), dtype=bool)
    for k in range(0, spans.shape[1] - 1, 2):
        span = np.greater_equal(columns, spans[:, k:k + 1])
        span &= np.less(columns, spans[:, k + 1:k + 2])
        inside |= span
    return (slice(r0, r1 + 1), slice(c0, c1 + 1)), inside


def fill_polygon(target: np.ndarray, polygon_xy: np.ndarray, value: int) -> None:
    """Set the pixels of ``target`` [H, W] whose centres lie inside the polygon [K, 2] (x, y pixels) to
    ``value``."""
    box, inside = _polygon_inside(polygon_xy, target.shape[:2])
    np.copyto(target[box], value, where=inside)


def polygon_mask(polygon_xy: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W] mask of the pixels whose centres are inside the polygon [K, 2] (x, y pixels)."""
    mask = np.zeros(shape, dtype=bool)
    fill_polygon(mask, polygon_xy, True)
    return mask


def person_mask(probability: np.ndarray, shape: tuple[int, int], threshold: float = 0.5) -> np.ndarray:
    """Upsample a selfie segmentation probability [h, w] float to ``shape`` (H, W) bilinearly and threshold.

    Returns bool [H, W].
    """
    # 8-bit resampling is SIMD in Pillow, about twice as fast as float; 1/255 steps are ample for a threshold
    prob = (np.clip(np.asarray(probability, dtype=np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if prob.shape != tuple(shape):
        prob = np.asarray(Image.fromarray(prob).resize((shape[1], shape[0]), Image.BILINEAR))
    return prob > threshold * 255.0


def parse_frame(landmarks: np.ndarray, person: np.ndarray,
                config: ParsingConfig = ParsingConfig()) -> np.ndarray:
    """Label map of one frame.

    landmarks: [478, 2 or 3] pixels; person: bool [H, W] (selfie segmentation). Returns uint8 [H, W] in 0..6.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] != NUM_MEDIAPIPE_POINTS or lm.shape[1] < 2:
        raise ValueError(f"parse_frame needs [{NUM_MEDIAPIPE_POINTS}, 2 or 3] landmarks, got {lm.shape}")
    if not np.isfinite(lm[:, :2]).all():
        raise ValueError("landmarks are not finite")
    region = np.full(person.shape, TORSO, dtype=np.uint8)
    fill_polygon(region, neck_polygon(lm, config), NECK)
    fill_polygon(region, head_polygon(lm, config), HAIR)
    labels = region * person.astype(np.uint8)
    fill_polygon(labels, lm[list(FACE_OVAL), :2], FACE)
    fill_polygon(labels, lm[list(LIPS_OUTER), :2], LIPS)
    fill_polygon(labels, lm[list(LIPS_INNER), :2], INNER_MOUTH)
    return labels


def inner_mouth_image(labels: np.ndarray) -> np.ndarray:
    """uint8 [H, W] labels -> uint8 [H, W]: 255 on the inner mouth (the open mouth's inside), 0 elsewhere; a
    FrameStore transform (labels must be mapped before they are resized)."""
    return (labels == INNER_MOUTH).view(np.uint8) * 255


def colorize(labels: np.ndarray) -> np.ndarray:
    """uint8 [H, W] labels -> RGB uint8 [H, W, 3] with :data:`PALETTE`."""
    return PALETTE[labels]


# ---------------------------------------------------------------------------------------------------------
# Selfie segmentation
# ---------------------------------------------------------------------------------------------------------

class PersonSegmenter:
    """A pool of MediaPipe selfie segmentation graphs, one per worker thread (a graph is not re-entrant).

    ``probability(rgb)`` takes RGB uint8 [h, w, 3] (best at 256x256) and returns float32 [h, w] in [0, 1].
    The selfie segmentation graph has no temporal state, so frames may be processed in any order.
    """

    def __init__(self, model: int = 0, workers: int = 1):
        import mediapipe as mp

        self._idle: queue.Queue = queue.Queue()
        self._all = [mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=model)
                     for _ in range(max(1, workers))]
        for graph in self._all:
            self._idle.put(graph)

    def probability(self, rgb: np.ndarray) -> np.ndarray:
        graph = self._idle.get()
        try:
            mask = graph.process(np.ascontiguousarray(rgb)).segmentation_mask
        finally:
            self._idle.put(graph)
        if mask is None:
            return np.zeros(rgb.shape[:2], dtype=np.float32)
        return np.asarray(mask, dtype=np.float32)

    def close(self) -> None:
        for graph in self._all:
            graph.close()

    def __enter__(self) -> "PersonSegmenter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load_reduced(path: Path, size: int = SEGMENTATION_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode a JPEG frame at reduced scale (DCT scaling, much cheaper than a full decode and resize).

    Returns (RGB uint8 [h, w, 3] with h, w >= size where the frame allows, full (H, W)).
    """
    try:
        with Image.open(path) as im:
            full = (im.height, im.width)
            im.draft("RGB", (size, size))
            return np.asarray(im if im.mode == "RGB" else im.convert("RGB")), full
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: file not found") from err
    except OSError as err:
        raise PipelineError(f"{path}: not a readable image ({err})") from err


# ---------------------------------------------------------------------------------------------------------
# Stage
# ---------------------------------------------------------------------------------------------------------

def load_labels(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A parsing label map, uint8 [H, W]; PipelineError naming the file if it is not single-channel (or,
    with ``shape``, not of that frame size)."""
    labels = load_image(path)
    if shape is not None and labels.shape != tuple(shape):
        raise PipelineError(f"{path}: label map of shape {list(labels.shape)}, expected {list(shape)} "
                            "(single channel, frame size)")
    if labels.ndim != 2:
        raise PipelineError(f"{path}: expected a single-channel label map, got shape {list(labels.shape)}")
    return labels


def parse_frame_file(path: Path, landmarks: np.ndarray, segmenter: PersonSegmenter,
                     config: ParsingConfig = ParsingConfig()) -> np.ndarray:
    """Label map uint8 [H, W] of one JPEG frame; landmarks: [478, 3] of that frame."""
    small, full = load_reduced(path)
    person = person_mask(segmenter.probability(small), full, config.person_threshold)
    return parse_frame(landmarks, person, config)


def parse_video(frames_dir: Path, landmarks_path: Path, out_dir: Path,
                config: ParsingConfig = ParsingConfig(), threads: int = 2) -> int:
    """Write ``out_dir/%06d.png`` label maps for every frame, ``threads`` frames at a time; returns the
    frame count."""
    frames = list_frames(frames_dir, ext="jpg")
    if not frames:
        raise PipelineError(f"{frames_dir}: no .jpg frames")
    landmarks = load_landmarks(landmarks_path, len(frames))
    with atomic_dir(out_dir) as tmp, PersonSegmenter(config.selfie_model, workers=threads) as segmenter:
        def one(i: int) -> None:
            try:
                labels = parse_frame_file(frames[i], landmarks[i], segmenter, config)
            except ValueError as err:  # degenerate landmarks
                raise PipelineError(f"{landmarks_path}: frame {i}: {err}") from err
            write_png_into(tmp, frame_name(i, "png"), labels)

        for _ in cli.progress(map_threaded(one, range(len(frames)), threads), total=len(frames),
                              desc="parse_faces"):
            pass
    return len(frames)


def _parser() -> argparse.ArgumentParser:
    d = ParsingConfig()
    p = argparse.ArgumentParser(prog="python -m pipeline.parsing", description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=Path, required=True, help="frame directory (000000.jpg ...)")
    p.add_argument("--landmarks", type=Path, required=True, help="landmarks.npy [N, 478, 3]")
    p.add_argument("--out", type=Path, required=True, help="parsing directory to write (%%06d.png)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--selfie-model", type=int, choices=(0, 1), default=d.selfie_model)
    p.add_argument("--person-threshold", type=float, default=d.person_threshold)
    p.add_argument("--head-width", type=float, default=d.head_width,
                   help="head box half-width / face half-width")
    p.add_argument("--head-top", type=float, default=d.head_top,
                   help="head box top above the forehead / face height")
    p.add_argument("--neck-width", type=float, default=d.neck_width,
                   help="neck band width / jaw-angle distance")
    p.add_argument("--neck-height", type=float, default=d.neck_height, help="neck band depth / face height")
    return p


def _run(args: argparse.Namespace) -> None:
    try:
        config = ParsingConfig(selfie_model=args.selfie_model, person_threshold=args.person_threshold,
                               head_width=args.head_width, head_top=args.head_top,
                               neck_width=args.neck_width, neck_height=args.neck_height)
    except ValueError as err:
        raise PipelineError(f"parse_faces: {err}") from err
    n = parse_video(args.frames, args.landmarks, args.out, config, args.threads)
    log.info("%s: %d label maps", args.out, n)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
