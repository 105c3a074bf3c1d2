"""Stage ``detect_landmarks``: dense face landmarks for every frame, plus named index sets and the blink core.

Output (DESIGN section 2):

* ``landmarks.npy`` float32 [N, P, 3]: x, y in pixels of the frame (continuous coordinates, origin at the
  top-left corner of the top-left pixel, so pixel (0, 0) is centred at (0.5, 0.5)); z is MediaPipe's relative
  depth scaled by the frame width (pixels; smaller = closer to the camera; origin at MediaPipe's head centre).
  P = 478 for the default ``mediapipe`` backend (face mesh with refined irises). The optional
  ``face_alignment`` backend gives P = 68 (iBUG 68-point layout); the index sets below and every downstream
  stage (parsing, masks, blink, tracking) need the 478-point layout, so that backend is for comparison only.
* ``face_found.npy`` bool [N]: True where the detector found a face (before gap filling).

Missing frames are filled by linear interpolation between the nearest detected frames (held constant before
the first and after the last detection). Gaps of up to ``max_gap`` frames are routine (motion blur, a hand
over the face); longer gaps are filled too but logged. The stage fails only when more than
``max_missing_fraction`` of all frames have no face, naming the frame ranges.

Index sets (478 layout) are derived from MediaPipe's ``FACEMESH_*`` connection sets. "Left"/"right" are the
subject's, as in MediaPipe: the subject's right eye appears on the image's left.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from pipeline import cli
from pipeline.io import PipelineError, list_frames, load_json, load_rgb, save_npy

log = logging.getLogger("pipeline.landmarks")

NUM_MEDIAPIPE_POINTS = 478
NUM_IBUG_POINTS = 68
BACKENDS = ("mediapipe", "face_alignment")


# ---------------------------------------------------------------------------------------------------------
# Named index sets (MediaPipe 478-point layout)
# ---------------------------------------------------------------------------------------------------------

def _adjacency(edges: Iterable[tuple[int, int]]) -> dict[int, list[int]]:
    adj: dict[int, list[int]] = collections.defaultdict(list)
    for a, b in edges:
        adj[a].append(b)
        adj[b].append(a)
    return adj


def _loops(edges: Iterable[tuple[int, int]]) -> list[list[int]]:
    """Split an undirected edge set in which every vertex has degree 2 into ordered closed loops."""
    adj = _adjacency(edges)
    if any(len(n) != 2 for n in adj.values()):
        raise ValueError("edge set is not a union of simple loops")
    seen: set[int] = set()
    loops = []
    for start in sorted(adj):
        if start in seen:
            continue
        loop = [start]
        seen.add(start)
        prev, cur = start, min(adj[start])
        while cur != start:
            loop.append(cur)
            seen.add(cur)
            prev, cur = cur, next(n for n in adj[cur] if n != prev)
        loops.append(loop)
    return loops


def _loop_containing(edges: Iterable[tuple[int, int]], vertex: int) -> list[int]:
    return next(loop for loop in _loops(edges) if vertex in loop)


def _arc(loop: Sequence[int], start: int, end: int, via: int) -> tuple[int, ...]:
    """The arc of a closed loop from ``start`` to ``end`` (both included) that passes through ``via``."""
    n = len(loop)
    i = loop.index(start)
    for step in (1, -1):
        arc = [loop[i]]
        j = i
        while arc[-1] != end:
            j = (j + step) % n
            arc.append(loop[j])
        if via in arc:
            return tuple(arc)
    raise ValueError(f"no arc from {start} to {end} through {via}")


def _rotate(loop: Sequence[int], first: int, toward: int) -> tuple[int, ...]:
    """The whole closed loop starting at ``first``, in the direction that reaches ``toward`` soonest."""
    i = loop.index(first)
    forward = list(loop[i:]) + list(loop[:i])
    backward = forward[:1] + forward[:0:-1]
    return tuple(forward if forward.index(toward) <= len(loop) // 2 else backward)


def _path(edges: Iterable[tuple[int, int]], start: int, end: int) -> tuple[int, ...]:
    """Shortest path between two vertices of an edge graph (breadth-first)."""
    adj = _adjacency(edges)
    parent = {start: start}
    queue = collections.deque([start])
    while queue:
        v = queue.popleft()
        for n in adj[v]:
            if n not in parent:
                parent[n] = v
                queue.append(n)
    path = [end]
    while path[-1] != start:
        path.append(parent[path[-1]])
    return tuple(reversed(path))


def _index_sets() -> dict[str, tuple[int, ...]]:
    # The connection sets are plain Python data inside the wheel; importing them loads no model.
    from mediapipe.python.solutions import face_mesh_connections as fmc

    # A few anchor vertices pick arcs out of the loops (they are part of MediaPipe's topology, not geometry):
    # 0 / 13 upper-lip centre (outer / inner contour), 61 / 78 right mouth corner, 10 forehead top,
    # 152 chin, 234 / 454 right / left oval point at ear level, 33 / 133 right eye outer / inner corner,
    # 263 / 362 left eye outer / inner corner, 159 / 386 upper-lid centres, 168 nose bridge top, 4 nose tip.
    lips_outer = _loop_containing(fmc.FACEMESH_LIPS, 0)
    lips_inner = _loop_containing(fmc.FACEMESH_LIPS, 13)
    oval = _loop_containing(fmc.FACEMESH_FACE_OVAL, 10)
    right_eye = _loop_containing(fmc.FACEMESH_RIGHT_EYE, 33)
    left_eye = _loop_containing(fmc.FACEMESH_LEFT_EYE, 263)
    right_iris = _loop_containing(fmc.FACEMESH_RIGHT_IRIS, 469)
    left_iris = _loop_containing(fmc.FACEMESH_LEFT_IRIS, 474)

    sets = {
        "LIPS_OUTER": _rotate(lips_outer, 61, 0),
        "LIPS_INNER": _rotate(lips_inner, 78, 13),
        "FACE_OVAL": _rotate(oval, 10, 338),
        "RIGHT_EYE_UPPER": _arc(right_eye, 33, 133, 159),
        "RIGHT_EYE_LOWER": _arc(right_eye, 33, 133, 145),
        "LEFT_EYE_UPPER": _arc(left_eye, 263, 362, 386),
        "LEFT_EYE_LOWER": _arc(left_eye, 263, 362, 374),
        # iris centre (468 / 473, not part of the ring's edges) first, then the ring in order
        "RIGHT_IRIS": (468, *right_iris),
        "LEFT_IRIS": (473, *left_iris),
        "NOSE": tuple(sorted({v for e in fmc.FACEMESH_NOSE for v in e})),
        "RIGHT_EYEBROW": tuple(sorted({v for e in fmc.FACEMESH_RIGHT_EYEBROW for v in e})),
        "LEFT_EYEBROW": tuple(sorted({v for e in fmc.FACEMESH_LEFT_EYEBROW for v in e})),
        "NOSE_BRIDGE": _path(fmc.FACEMESH_NOSE, 168, 4),
        "JAW": _arc(oval, 234, 454, 152)[1:-1],
        "UPPER_OVAL": _arc(oval, 234, 454, 10),
    }
    return sets


_SETS = _index_sets()

#: Outer lip contour, closed polygon, starting at the subject's right mouth corner, upper lip first.
LIPS_OUTER: tuple[int, ...] = _SETS["LIPS_OUTER"]
#: Inner lip contour (mouth opening), closed polygon, same start and direction as LIPS_OUTER.
LIPS_INNER: tuple[int, ...] = _SETS["LIPS_INNER"]
#: Face silhouette, closed polygon starting at the top of the forehead (10).
FACE_OVAL: tuple[int, ...] = _SETS["FACE_OVAL"]
#: Eyelids, each from the eye's outer corner to its inner corner; UPPER[i] faces LOWER[i].
RIGHT_EYE_UPPER: tuple[int, ...] = _SETS["RIGHT_EYE_UPPER"]
RIGHT_EYE_LOWER: tuple[int, ...] = _SETS["RIGHT_EYE_LOWER"]
LEFT_EYE_UPPER: tuple[int, ...] = _SETS["LEFT_EYE_UPPER"]
LEFT_EYE_LOWER: tuple[int, ...] = _SETS["LEFT_EYE_LOWER"]
#: Eye contours as closed polygons (upper lid then lower lid back to the outer corner).
RIGHT_EYE: tuple[int, ...] = RIGHT_EYE_UPPER + tuple(reversed(RIGHT_EYE_LOWER[1:-1]))
LEFT_EYE: tuple[int, ...] = LEFT_EYE_UPPER + tuple(reversed(LEFT_EYE_LOWER[1:-1]))
#: (outer, inner) eye corners.
RIGHT_EYE_CORNERS: tuple[int, int] = (RIGHT_EYE_UPPER[0], RIGHT_EYE_UPPER[-1])
LEFT_EYE_CORNERS: tuple[int, int] = (LEFT_EYE_UPPER[0], LEFT_EYE_UPPER[-1])
#: Irises: centre first, then the 4-point ring in order (refined landmarks only).
RIGHT_IRIS: tuple[int, ...] = _SETS["RIGHT_IRIS"]
LEFT_IRIS: tuple[int, ...] = _SETS["LEFT_IRIS"]
#: All nose points of MediaPipe's nose contour (bridge, tip, nostril wings), sorted.
NOSE: tuple[int, ...] = _SETS["NOSE"]
#: Eyebrow points (upper and lower brow contour), sorted.
RIGHT_EYEBROW: tuple[int, ...] = _SETS["RIGHT_EYEBROW"]
LEFT_EYEBROW: tuple[int, ...] = _SETS["LEFT_EYEBROW"]
#: Nose bridge centre line from between the eyes (168) down to the tip (4).
NOSE_BRIDGE: tuple[int, ...] = _SETS["NOSE_BRIDGE"]
#: Lower face silhouette (jaw line) from just below the subject's right ear-level point 234 via the chin (152) to
#: just below the left one (454); disjoint from UPPER_OVAL, which holds 234 and 454.
JAW: tuple[int, ...] = _SETS["JAW"]
#: Upper face silhouette (temples and forehead) from 234 via the forehead top (10) to 454.
UPPER_OVAL: tuple[int, ...] = _SETS["UPPER_OVAL"]
#: Forehead centre line between the oval top and the nose bridge (no connection set lists it).
FOREHEAD_CENTRE: tuple[int, ...] = (151, 9, 8)
#: Mouth region: both lip contours.
MOUTH: tuple[int, ...] = tuple(sorted(set(LIPS_OUTER) | set(LIPS_INNER)))
NOSE_TIP, CHIN = 1, 152
# central inner-lip pairs facing each other across the mouth (LIPS_INNER runs upper lip first, 20 points)
_APERTURE_PAIRS = ((4, 16), (5, 15), (6, 14))
#: Points that do not move with speech or expression: forehead and temples, nose bridge, eye corners.
STABLE: tuple[int, ...] = tuple(sorted(
    set(UPPER_OVAL) | set(FOREHEAD_CENTRE) | set(NOSE_BRIDGE) | set(RIGHT_EYE_CORNERS) | set(LEFT_EYE_CORNERS)
))

del _SETS


# ---------------------------------------------------------------------------------------------------------
# Blink (pure core; the blink.npy artefact is written by split_head_torso)
# ---------------------------------------------------------------------------------------------------------

def _lid_pairs(upper: Sequence[int], lower: Sequence[int]) -> tuple[list[int], list[int]]:
    # the central five facing pairs: near the corners the lids meet whatever the eye does
    mid = len(upper) // 2
    return list(upper[mid - 2:mid + 3]), list(lower[mid - 2:mid + 3])


def eye_openness(landmarks: np.ndarray) -> np.ndarray:
    """Eye aperture per frame: mean over both eyes of (mean upper-lower lid distance) / (corner distance).

    landmarks: [N, 478, 3] (or [478, 3] for one frame) in pixels; only x, y are used.
    Returns float32 [N] (or a 0-d array), about 0.25-0.35 for open eyes and near 0 for closed ones.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape[-2] != NUM_MEDIAPIPE_POINTS or lm.shape[-1] < 2:
        raise ValueError(f"eye_openness needs [..., {NUM_MEDIAPIPE_POINTS}, 2 or 3] landmarks, got {lm.shape}")
    xy = lm[..., :2]
    ratios = []
    for upper, lower, (outer, inner) in ((RIGHT_EYE_UPPER, RIGHT_EYE_LOWER, RIGHT_EYE_CORNERS),
                                         (LEFT_EYE_UPPER, LEFT_EYE_LOWER, LEFT_EYE_CORNERS)):
        up, lo = _lid_pairs(upper, lower)
        gap = np.linalg.norm(xy[..., up, :] - xy[..., lo, :], axis=-1).mean(axis=-1)
        width = np.linalg.norm(xy[..., outer, :] - xy[..., inner, :], axis=-1)
        ratios.append(gap / np.maximum(width, 1e-6))
    return ((ratios[0] + ratios[1]) / 2).astype(np.float32)


def blink_signal(landmarks: np.ndarray, percentile: float = 90.0, ceiling: float = 1.2) -> np.ndarray:
    """Per-subject normalised eye openness: open eyes ≈ 1, closed ≈ 0, clipped to [0, ceiling].

    landmarks: [N, 478, 3] of one video. The openness is divided by its ``percentile``-th percentile over
    the video, so the subject's usual open-eye aperture maps to about 1 whatever their eye shape.
    Returns float32 [N].
    """
    openness = eye_openness(landmarks)
    reference = float(np.percentile(openness, percentile)) if openness.size else 0.0
    if reference <= 1e-6:
        return np.zeros_like(openness)
    return np.clip(openness / reference, 0.0, ceiling).astype(np.float32)


def mouth_aperture(landmarks: np.ndarray) -> np.ndarray:
    """Mouth aperture in pixels: mean gap of the three central inner-lip pairs (13-14 and its neighbours),
    facing each other across the mouth. [N, 478, 2+] -> [N]."""
    xy = np.asarray(landmarks, dtype=np.float64)[..., :2]
    upper = [LIPS_INNER[a] for a, _ in _APERTURE_PAIRS]
    lower = [LIPS_INNER[b] for _, b in _APERTURE_PAIRS]
    return np.linalg.norm(xy[..., upper, :] - xy[..., lower, :], axis=-1).mean(axis=-1)


def mouth_width(landmarks: np.ndarray) -> np.ndarray:
    """Horizontal extent of the outer lip contour, pixels (wide for "ee", narrow for "oo"). [N, 478, 2+] -> [N]."""
    x = np.asarray(landmarks, dtype=np.float64)[..., list(LIPS_OUTER), 0]
    return x.max(axis=-1) - x.min(axis=-1)


def mouth_shape(landmarks: np.ndarray) -> np.ndarray:
    """Per-frame mouth shape [N, 3]: aperture, width and chin drop (pixels)."""
    return np.stack([mouth_aperture(landmarks), mouth_width(landmarks), chin_drop(landmarks)], axis=-1)


def chin_drop(landmarks: np.ndarray) -> np.ndarray:
    """Nose tip (1) to chin (152) distance, pixels: grows when the jaw opens. [N, 478, 2+] -> [N]."""
    lm = np.asarray(landmarks, dtype=np.float64)
    return np.linalg.norm(lm[..., CHIN, :2] - lm[..., NOSE_TIP, :2], axis=-1)


def detect_sequence(images: Iterable[np.ndarray], total: int | None = None) -> np.ndarray:
    """MediaPipe face mesh over RGB uint8 images in time order: [N, 478, 3] pixels, NaN where no face
    (for measuring renders and real frames alike)."""
    detector = MediaPipeDetector(LandmarkConfig(max_faces=1))
    try:
        return detect_frames(images, detector, total=total, source="images")[0]
    finally:
        detector.close()


# ---------------------------------------------------------------------------------------------------------
# Gap handling (pure core)
# ---------------------------------------------------------------------------------------------------------

def load_landmarks(path: Path, frame_count: int | None = None) -> np.ndarray:
    """Read a landmarks.npy artefact for the later stages: float32 [N, 478, 3].

    PipelineError naming the file if it is absent, not MediaPipe's 478 points, not finite, or (with
    ``frame_count``) not one entry per video frame."""
    try:
        lm = np.load(path)
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: file not found") from err
    except (OSError, ValueError) as err:
        raise PipelineError(f"{path}: not a readable .npy file ({err})") from err
    if lm.ndim != 3 or lm.shape[1:] != (NUM_MEDIAPIPE_POINTS, 3):
        raise PipelineError(f"{path}: expected [N, {NUM_MEDIAPIPE_POINTS}, 3] MediaPipe landmarks, got "
                            f"shape {list(lm.shape)} (the face_alignment backend's 68 points are not enough "
                            "for the later stages)")
    if not np.isfinite(lm).all():
        bad = np.flatnonzero(~np.isfinite(lm).all(axis=(1, 2)))
        raise PipelineError(f"{path}: landmarks are not finite (NaN or infinite) in {len(bad)} frame(s), "
                            f"first {bad[:5].tolist()}")
    if frame_count is not None and lm.shape[0] != frame_count:
        raise PipelineError(f"{path}: {lm.shape[0]} landmark frames but {frame_count} video frames")
    return lm.astype(np.float32, copy=False)


def find_gaps(found: np.ndarray) -> list[tuple[int, int]]:
    """Runs of missing frames as inclusive (first, last) index pairs. found: bool [N]."""
    missing = ~np.asarray(found, dtype=bool)
    edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1) - 1
    return [(int(s), int(e)) for s, e in zip(starts, ends)]


def format_gaps(gaps: Sequence[tuple[int, int]], fps: float, limit: int = 10) -> str:
    """'frames 120-160 (1.6 s), 300 (0.04 s)', longest ``limit`` gaps listed in frame order."""
    shown = sorted(sorted(gaps, key=lambda g: g[0] - g[1])[:limit])
    parts = []
    for first, last in shown:
        span = f"{first}-{last}" if last > first else f"{first}"
        seconds = (last - first + 1) / fps
        parts.append(f"{span} ({seconds:.2g} s)" if seconds < 1 else f"{span} ({seconds:.1f} s)")
    text = "frames " + ", ".join(parts)
    if len(gaps) > limit:
        text += f" and {len(gaps) - limit} shorter gap(s)"
    return text


def fill_gaps(landmarks: np.ndarray, found: np.ndarray, max_gap: int = 5, max_missing_fraction: float = 0.05,
              fps: float = 25.0, source: str = "video") -> np.ndarray:
    """Fill frames without a face by linear interpolation in time; raise if too many are missing.

    landmarks: [N, P, 3] (values of missing frames are ignored); found: bool [N].
    Returns float32 [N, P, 3]. Frames before the first / after the last detection copy the nearest one.
    Raises PipelineError naming ``source`` when no frame has a face, or when the missing fraction exceeds
    ``max_missing_fraction`` (the message lists the missing frame ranges).
    """
    landmarks = np.asarray(landmarks, dtype=np.float32)
    found = np.asarray(found, dtype=bool)
    n = len(found)
    if landmarks.shape[0] != n:
        raise ValueError(f"{landmarks.shape[0]} landmark frames but {n} found flags")
    if n == 0:
        raise PipelineError(f"{source}: no frames")
    if not found.any():
        raise PipelineError(f"{source}: no face found in any of the {n} frames")
    gaps = find_gaps(found)
    missing = n - int(found.sum())
    if missing > max_missing_fraction * n:
        raise PipelineError(
            f"{source}: no face in {missing} of {n} frames ({100 * missing / n:.1f}%, more than the allowed "
            f"{100 * max_missing_fraction:g}%): {format_gaps(gaps, fps)}")
    long_gaps = [g for g in gaps if g[1] - g[0] + 1 > max_gap]
    if long_gaps:
        log.warning("%s: no face in %s (longer than %d frames); filled by interpolation",
                    source, format_gaps(long_gaps, fps), max_gap)
    if not gaps:
        return landmarks.copy()
    t = np.arange(n)
    known = np.flatnonzero(found)
    flat = landmarks[known].reshape(len(known), -1)
    out = np.empty((n, flat.shape[1]), dtype=np.float32)
    # np.interp clamps outside the known range, which is the hold-nearest rule for leading/trailing gaps
    for c in range(flat.shape[1]):
        out[:, c] = np.interp(t, known, flat[:, c])
    return out.reshape(landmarks.shape)


def largest_face(faces: Sequence[np.ndarray]) -> int:
    """Index of the face whose landmarks' x-y bounding box is largest. faces: list of [P, 3]."""
    areas = [float(np.ptp(f[:, 0]) * np.ptp(f[:, 1])) for f in faces]
    return int(np.argmax(areas))


# ---------------------------------------------------------------------------------------------------------
# Detectors
# ---------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LandmarkConfig:
    backend: str = "mediapipe"
    max_faces: int = 2  # >1 so a second face in view is noticed and the largest one kept
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    max_gap: int = 5  # frames; longer gaps are still filled, with a warning
    max_missing_fraction: float = 0.05
    face_alignment_weights: Path | None = None  # default: torch hub's checkpoints directory
    device: str = "cpu"  # face_alignment only


class Detector(Protocol):
    num_points: int

    def detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        """All faces in one RGB uint8 [H, W, 3] frame, each [num_points, 3] in pixels."""

    def close(self) -> None: ...


class MediaPipeDetector:
    """MediaPipe face mesh (legacy solution API) in video mode: frames must come in time order."""

    num_points = NUM_MEDIAPIPE_POINTS

    def __init__(self, config: LandmarkConfig):
        import mediapipe as mp

        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=False, refine_landmarks=True, max_num_faces=config.max_faces,
            min_detection_confidence=config.min_detection_confidence,
            min_tracking_confidence=config.min_tracking_confidence)

    def detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        h, w = rgb.shape[:2]
        result = self._mesh.process(rgb)
        faces = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float32)
            pts *= np.array([w, h, w], dtype=np.float32)
            faces.append(pts)
        return faces

    def close(self) -> None:
        self._mesh.close()


def face_alignment_weight_files() -> list[str]:
    """File names the installed face_alignment (3-D, 68 points, S3FD detector) loads from torch hub."""
    api = importlib.import_module("face_alignment.api")
    sfd_detector = importlib.import_module("face_alignment.detection.sfd.sfd_detector")

    urls = getattr(api, "default_model_urls", None) or api.models_urls
    names = [urls["3DFAN-4"], urls["depth"], sfd_detector.models_urls["s3fd"]]
    return [u.rsplit("/", 1)[-1] for u in names]


def default_face_alignment_weights() -> Path:
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


class FaceAlignmentDetector:
    """face_alignment's 3-D FAN (68 points) with its S3FD detector, weights only from a local directory."""

    num_points = NUM_IBUG_POINTS

    def __init__(self, config: LandmarkConfig):
        try:
            import face_alignment
        except ImportError as err:
            raise PipelineError(
                "backend face_alignment: the face-alignment package is not installed "
                "(pip install 'face-alignment>=1.4', the landmarks68 extra)") from err
        weights = Path(config.face_alignment_weights or default_face_alignment_weights())
        needed = face_alignment_weight_files()
        absent = [name for name in needed if not (weights / name).is_file()]
        if absent:
            raise PipelineError(
                f"backend face_alignment: weights not found: put {', '.join(absent)} into {weights} "
                "(or pass --face-alignment-weights DIR); nothing is downloaded")
        import torch

        # face_alignment reads from torch hub's checkpoints folder; point hub at a temporary folder whose
        # checkpoints entry is the weights directory, for the constructor only.
        previous = torch.hub.get_dir()
        with tempfile.TemporaryDirectory() as hub:
            os.symlink(weights.resolve(), Path(hub) / "checkpoints")
            torch.hub.set_dir(hub)
            try:
                kind = getattr(face_alignment.LandmarksType, "THREE_D", None) or face_alignment.LandmarksType._3D
                self._fa = face_alignment.FaceAlignment(kind, device=config.device, flip_input=False)
            finally:
                torch.hub.set_dir(previous)

    def detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        faces = self._fa.get_landmarks_from_image(rgb)
        return [np.asarray(f, dtype=np.float32) for f in faces or []]

    def close(self) -> None:
        self._fa = None


def open_detector(config: LandmarkConfig) -> Detector:
    """The configured backend; raises PipelineError at once if it cannot run here."""
    if config.backend == "mediapipe":
        return MediaPipeDetector(config)
    if config.backend == "face_alignment":
        return FaceAlignmentDetector(config)
    raise PipelineError(f"unknown landmark backend {config.backend!r} (choose from {', '.join(BACKENDS)})")


# ---------------------------------------------------------------------------------------------------------
# Running over a video
# ---------------------------------------------------------------------------------------------------------

def read_frames(paths: Sequence[Path], prefetch: int = 4) -> Iterator[np.ndarray]:
    """Decode frame files to RGB uint8 [H, W, 3] in order, decoding ahead in a thread (PIL releases the
    GIL), so decoding overlaps with the consumer's work. Memory: ``prefetch`` frames."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        it = iter(paths)
        pending = collections.deque(pool.submit(load_rgb, p) for _, p in zip(range(prefetch), it))
        while pending:
            frame = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(load_rgb, nxt))
            yield frame


def detect_frames(frames: Iterable[np.ndarray], detector: Detector, total: int | None = None,
                  source: str = "video") -> tuple[np.ndarray, np.ndarray]:
    """Run ``detector`` over frames in time order.

    Returns (landmarks float32 [N, P, 3], NaN where no face; found bool [N]). When several faces are in a
    frame, the largest is kept and a warning is logged once with the number of such frames.
    """
    rows: list[np.ndarray] = []
    found: list[bool] = []
    empty = np.full((detector.num_points, 3), np.nan, dtype=np.float32)
    multi = 0
    for frame in cli.progress(frames, total=total, desc="landmarks"):
        faces = detector.detect(frame)
        if len(faces) > 1:
            multi += 1
        rows.append(faces[largest_face(faces)] if faces else empty)
        found.append(bool(faces))
    if multi:
        log.warning("%s: %d frame(s) show more than one face; the largest face was kept", source, multi)
    if not rows:
        return np.zeros((0, detector.num_points, 3), np.float32), np.zeros(0, bool)
    return np.stack(rows), np.array(found)


def detect_landmarks(frame_paths: Sequence[Path], config: LandmarkConfig, fps: float = 25.0,
                     source: str = "video") -> tuple[np.ndarray, np.ndarray]:
    """Landmarks of a frame sequence with gaps filled: (float32 [N, P, 3], found bool [N])."""
    detector = open_detector(config)
    try:
        raw, found = detect_frames(read_frames(frame_paths), detector, total=len(frame_paths), source=source)
    finally:
        detector.close()
    return fill_gaps(raw, found, config.max_gap, config.max_missing_fraction, fps, source), found


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    d = LandmarkConfig()
    p = argparse.ArgumentParser(prog="python -m pipeline.landmarks", description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=Path, required=True, help="frame directory (000000.jpg ...)")
    p.add_argument("--video-json", type=Path, required=True, help="video.json of prepare_video")
    p.add_argument("--out", type=Path, required=True, help="landmarks.npy to write")
    p.add_argument("--face-found", type=Path, required=True, help="face_found.npy to write")
    p.add_argument("--backend", choices=BACKENDS, default=d.backend)
    p.add_argument("--max-faces", type=int, default=d.max_faces)
    p.add_argument("--min-detection-confidence", type=float, default=d.min_detection_confidence)
    p.add_argument("--min-tracking-confidence", type=float, default=d.min_tracking_confidence)
    p.add_argument("--max-gap", type=int, default=d.max_gap)
    p.add_argument("--max-missing-fraction", type=float, default=d.max_missing_fraction)
    p.add_argument("--face-alignment-weights", type=Path, default=None,
                   help="directory with face_alignment's weight files (default: torch hub checkpoints)")
    p.add_argument("--device", default=d.device, help="torch device for the face_alignment backend")
    return p


def _run(args: argparse.Namespace) -> None:
    config = LandmarkConfig(
        backend=args.backend, max_faces=args.max_faces, min_detection_confidence=args.min_detection_confidence,
        min_tracking_confidence=args.min_tracking_confidence, max_gap=args.max_gap,
        max_missing_fraction=args.max_missing_fraction, face_alignment_weights=args.face_alignment_weights,
        device=args.device)
    video = load_json(args.video_json)
    frames = list_frames(args.frames, ext="jpg")
    expected = video.get("frame_count")
    if expected is not None and expected != len(frames):
        raise PipelineError(f"{args.frames}: {len(frames)} frames but {args.video_json} says {expected}")
    if not frames:
        raise PipelineError(f"{args.frames}: no frames")
    landmarks, found = detect_landmarks(frames, config, fps=float(video.get("fps", 25.0)), source=str(args.frames))
    save_npy(args.out, landmarks)
    save_npy(args.face_found, found)
    log.info("%s: %d frames, face found in %d", args.frames, len(found), int(found.sum()))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
