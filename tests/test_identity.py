"""Identity distance (dlib ResNet descriptor, 5-point alignment): same subject below dlib's 0.6, another
person above, no face -> None, models loaded once."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipeline.identity import IDENTITY_THRESHOLD, face_descriptor, identity_distance, load_identity
from pipeline.media import iter_frames


def _frames(path, indices: list[int]) -> list[np.ndarray]:
    wanted = set(indices)
    frames = [f.copy() for i, f in enumerate(itertools.islice(iter_frames(path), max(indices) + 1)) if i in wanted]
    assert len(frames) == len(indices)
    return frames


def test_same_subject_below_threshold_other_person_above(demo_short, media_dir):
    first, later = _frames(demo_short / "video.mp4", [0, 80])  # mouth and head pose differ between them
    other = _frames(media_dir / "hdtf_aoc_8s.mp4", [50])[0]
    a, b, c = (face_descriptor(f) for f in (first, later, other))
    assert a is not None and b is not None and c is not None
    assert a.shape == (128,)
    same, different = identity_distance(a, b), identity_distance(a, c)
    assert same < IDENTITY_THRESHOLD < different, (same, different)
    assert identity_distance(a, a) == 0.0


def test_no_face_gives_none():
    rng = np.random.default_rng(0)
    assert face_descriptor(np.full((128, 128, 3), 90, np.uint8)) is None
    assert face_descriptor(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) is None


def test_models_load_once_and_bad_input_is_refused():
    assert load_identity() is load_identity()
    with pytest.raises(ValueError, match="RGB uint8"):
        face_descriptor(np.zeros((64, 64, 3), np.float32))
