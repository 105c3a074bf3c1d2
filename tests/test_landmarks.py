"""detect_landmarks: index sets, gap handling, blink core, backends, and MediaPipe on the real clips."""

from __future__ import annotations

import json
import logging
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline import landmarks as L
from pipeline.io import PipelineError

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
CLIPS = sorted(MEDIA.glob("*.mp4")) if MEDIA.is_dir() else []


@pytest.fixture(scope="module")
def clip_landmarks() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Raw MediaPipe landmarks and found flags of every development clip (streamed, no frame files)."""
    from pipeline.media import iter_frames

    out = {}
    for clip in CLIPS:
        detector = L.open_detector(L.LandmarkConfig())
        try:
            out[clip.name] = L.detect_frames(iter_frames(clip), detector, source=clip.name)
        finally:
            detector.close()
    return out


# --- index sets -------------------------------------------------------------------------------------------

def test_index_sets_follow_mediapipe_topology():
    from mediapipe.python.solutions import face_mesh_connections as fmc

    def edges(s):
        return {frozenset(e) for e in s}

    for loop, conn in ((L.LIPS_OUTER, fmc.FACEMESH_LIPS), (L.LIPS_INNER, fmc.FACEMESH_LIPS),
                       (L.FACE_OVAL, fmc.FACEMESH_FACE_OVAL), (L.RIGHT_EYE, fmc.FACEMESH_RIGHT_EYE),
                       (L.LEFT_EYE, fmc.FACEMESH_LEFT_EYE)):
        closed = list(zip(loop, loop[1:] + loop[:1]))
        assert {frozenset(e) for e in closed} <= edges(conn)
        assert len(set(loop)) == len(loop)
    assert len(L.LIPS_OUTER) == len(L.LIPS_INNER) == 20 and L.LIPS_OUTER[5] == 0 and L.LIPS_INNER[5] == 13
    assert len(L.FACE_OVAL) == 36
    for upper, lower in ((L.RIGHT_EYE_UPPER, L.RIGHT_EYE_LOWER), (L.LEFT_EYE_UPPER, L.LEFT_EYE_LOWER)):
        assert len(upper) == len(lower) == 9
        assert upper[0] == lower[0] and upper[-1] == lower[-1]
        assert not set(upper[1:-1]) & set(lower[1:-1])
    assert L.RIGHT_IRIS[0] == 468 and L.LEFT_IRIS[0] == 473 and len(L.RIGHT_IRIS) == len(L.LEFT_IRIS) == 5
    assert L.NOSE_BRIDGE == (168, 6, 197, 195, 5, 4)
    assert set(L.JAW) | set(L.UPPER_OVAL) == set(L.FACE_OVAL) and not set(L.JAW) & set(L.UPPER_OVAL)
    assert not set(L.STABLE) & (set(L.MOUTH) | set(L.JAW))
    assert max(L.STABLE) < L.NUM_MEDIAPIPE_POINTS


# --- gaps -------------------------------------------------------------------------------------------------

def _linear_track(n: int, p: int = 4) -> np.ndarray:
    t = np.arange(n, dtype=np.float32)[:, None, None]
    return (np.arange(p * 3, dtype=np.float32).reshape(1, p, 3) + t * np.array([1.0, -2.0, 0.5])).astype(np.float32)


def test_find_gaps():
    found = np.array([0, 1, 1, 0, 0, 1, 0], bool)
    assert L.find_gaps(found) == [(0, 0), (3, 4), (6, 6)]
    assert L.find_gaps(np.ones(5, bool)) == []


def test_fill_gaps_interpolates_linearly_and_holds_ends():
    truth = _linear_track(40)
    found = np.ones(40, bool)
    found[[0, 1, 10, 11, 12, 39]] = False
    damaged = truth.copy()
    damaged[~found] = np.nan
    filled = L.fill_gaps(damaged, found, max_gap=5, max_missing_fraction=0.2)
    np.testing.assert_allclose(filled[2:39], truth[2:39], atol=1e-4)  # interior gaps: exact on linear motion
    np.testing.assert_allclose(filled[0], truth[2])
    np.testing.assert_allclose(filled[39], truth[38])
    assert filled.dtype == np.float32 and not np.isnan(filled).any()


def test_long_gap_within_fraction_is_filled_with_warning(caplog):
    found = np.ones(1000, bool)
    found[120:161] = False  # 41 frames = 4.1% < 5%
    with caplog.at_level(logging.WARNING, logger="pipeline.landmarks"):
        filled = L.fill_gaps(_linear_track(1000), found, max_gap=5, max_missing_fraction=0.05, source="s/frames")
    assert not np.isnan(filled).any()
    assert "frames 120-160 (1.6 s)" in caplog.text and "s/frames" in caplog.text


def test_too_many_missing_frames_error_names_ranges():
    found = np.ones(500, bool)
    found[120:161] = False
    found[300] = False
    with pytest.raises(PipelineError) as err:
        L.fill_gaps(_linear_track(500), found, max_gap=5, max_missing_fraction=0.05, fps=25,
                    source="results/s/frames")
    msg = str(err.value)
    assert msg.startswith("results/s/frames:")
    assert "42 of 500" in msg and "frames 120-160 (1.6 s), 300 (0.04 s)" in msg


def test_no_face_at_all_is_a_clear_error():
    with pytest.raises(PipelineError, match="no face found in any of the 7 frames"):
        L.fill_gaps(np.full((7, 478, 3), np.nan, np.float32), np.zeros(7, bool), source="x/frames")


def test_largest_face_is_kept():
    small = np.array([[0, 0, 0], [10, 10, 0]], np.float32)
    big = np.array([[0, 0, 0], [50, 40, 0]], np.float32)
    assert L.largest_face([small, big, small]) == 1

    class TwoFaces:
        num_points = 2

        def detect(self, rgb):
            return [small, big]

        def close(self):
            pass

    lm, found = L.detect_frames([np.zeros((4, 4, 3), np.uint8)] * 3, TwoFaces())
    assert found.all() and np.array_equal(lm[1], big)


# --- real clips -------------------------------------------------------------------------------------------

@pytest.mark.skipif(not CLIPS, reason="development media absent")
def test_clips_have_landmarks_in_every_frame_inside_the_frame(clip_landmarks):
    for name, (lm, found) in clip_landmarks.items():
        assert found.all(), name
        assert lm.shape[1:] == (478, 3) and lm.dtype == np.float32
        assert len(lm) >= 120
        assert np.all((lm[..., :2] > 0) & (lm[..., :2] < 512)), name
        # eyes above the mouth, nose between: a flipped or transposed coordinate would break this
        assert np.all(lm[:, 159, 1] < lm[:, 4, 1]) and np.all(lm[:, 4, 1] < lm[:, 13, 1])
        # z is in pixels (scaled by the width): the face's depth range is a fraction of its width
        depth = np.ptp(lm[..., 2], axis=1)
        width = np.ptp(lm[..., 0], axis=1)
        assert np.all((depth > 0.2 * width) & (depth < 1.5 * width))


def _blink_events(signal: np.ndarray, depth: float = 0.6, window: int = 51) -> np.ndarray:
    """Frame of the lowest point of each dip of ``signal`` below ``depth`` x its running median (open eyes).

    The running median follows slow changes (head turns, distance to the camera), so blinks are found as
    events anywhere in a long clip rather than as one global minimum."""
    half = window // 2
    padded = np.pad(signal, half, mode="edge")
    baseline = np.median(np.lib.stride_tricks.sliding_window_view(padded, window), axis=1)
    low = np.concatenate([[False], signal < depth * baseline, [False]])
    starts, ends = np.flatnonzero(~low[:-1] & low[1:]), np.flatnonzero(low[:-1] & ~low[1:])
    return np.array([s + int(np.argmin(signal[s:e])) for s, e in zip(starts, ends)], dtype=int)


def _same_events(a: np.ndarray, b: np.ndarray, tolerance: int = 1) -> bool:
    """Each event of ``a`` has one of ``b`` within ``tolerance`` frames, and the other way round."""
    def covered(x, y):
        return all(np.abs(y - e).min() <= tolerance for e in x) if len(y) else not len(x)
    return covered(a, b) and covered(b, a)


@pytest.mark.skipif(not CLIPS, reason="development media absent")
def test_blinks_happen_where_the_eyelids_close(clip_landmarks):
    for name, (lm, _) in clip_landmarks.items():
        blink = L.blink_signal(lm)
        assert blink.shape == (len(lm),) and blink.dtype == np.float32
        assert 0.85 < np.median(blink) <= 1.0 and blink.min() < 0.5 and blink.max() <= 1.2
        # reference: central lid gaps of both eyes over the distance between the outer eye corners, a
        # different normalisation from the module's (each eye's own width, then a percentile)
        xy = lm[..., :2].astype(np.float64)
        lids = np.linalg.norm(xy[:, 159] - xy[:, 145], axis=1) + np.linalg.norm(xy[:, 386] - xy[:, 374], axis=1)
        reference = lids / np.linalg.norm(xy[:, 33] - xy[:, 263], axis=1)
        expected = _blink_events(reference)
        assert len(expected) >= 1, name
        assert _same_events(_blink_events(blink), expected), (name, _blink_events(blink), expected)
        # the comparison sees timing: the same signal a few frames late does not pass
        for shift in (-3, 3):
            assert not _same_events(_blink_events(np.roll(blink, shift)), expected), (name, shift)
        assert np.corrcoef(blink, reference)[0, 1] > 0.8, name


@pytest.mark.skipif(not CLIPS, reason="development media absent")
def test_collapsed_lids_give_low_blink(clip_landmarks):
    lm = next(iter(clip_landmarks.values()))[0].copy()
    closed = np.arange(0, len(lm), 10)
    for upper, lower in ((L.RIGHT_EYE_UPPER, L.RIGHT_EYE_LOWER), (L.LEFT_EYE_UPPER, L.LEFT_EYE_LOWER)):
        mid = (lm[:, list(upper)] + lm[:, list(lower)]) / 2
        lm[np.ix_(closed, list(upper))] = mid[closed]
        lm[np.ix_(closed, list(lower))] = mid[closed]
    blink = L.blink_signal(lm)
    assert np.all(blink[closed] < 0.05)
    assert np.median(np.delete(blink, closed)) > 0.85
    assert L.eye_openness(lm[closed[0]]).shape == ()


def test_blink_needs_478_points():
    with pytest.raises(ValueError, match="478"):
        L.eye_openness(np.zeros((3, 68, 3)))


# --- face_alignment backend -------------------------------------------------------------------------------

def test_face_alignment_package_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # import fails as if not installed
    with pytest.raises(PipelineError, match="face-alignment package is not installed"):
        L.open_detector(L.LandmarkConfig(backend="face_alignment"))


def test_face_alignment_weights_missing_names_files_and_directory(monkeypatch, tmp_path):
    fa = types.ModuleType("face_alignment")
    api = types.ModuleType("face_alignment.api")
    api.default_model_urls = {"3DFAN-4": "https://x/3DFAN4-4a694010b9.zip", "depth": "https://x/depth-6c4283c0e0.zip"}
    sfd = types.ModuleType("face_alignment.detection.sfd.sfd_detector")
    sfd.models_urls = {"s3fd": "https://x/s3fd-619a316812.pth"}
    fa.FaceAlignment = lambda *a, **k: pytest.fail("must not construct (it would download)")
    for name, mod in (("face_alignment", fa), ("face_alignment.api", api),
                      ("face_alignment.detection", types.ModuleType("d")),
                      ("face_alignment.detection.sfd", types.ModuleType("s")),
                      ("face_alignment.detection.sfd.sfd_detector", sfd)):
        monkeypatch.setitem(sys.modules, name, mod)
    (tmp_path / "depth-6c4283c0e0.zip").write_bytes(b"")
    with pytest.raises(PipelineError) as err:
        L.open_detector(L.LandmarkConfig(backend="face_alignment", face_alignment_weights=tmp_path))
    msg = str(err.value)
    assert "3DFAN4-4a694010b9.zip" in msg and "s3fd-619a316812.pth" in msg and str(tmp_path) in msg
    assert "depth-6c4283c0e0.zip" not in msg


# --- CLI --------------------------------------------------------------------------------------------------

@pytest.mark.skipif(not CLIPS, reason="development media absent")
def test_cli_writes_artefacts_and_rejects_frame_count_mismatch(tmp_path):
    from pipeline.media import iter_frames

    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in zip(range(20), iter_frames(CLIPS[0])):
        Image.fromarray(frame).save(frames / f"{i:06d}.jpg", quality=90)
    video = tmp_path / "video.json"
    video.write_text(json.dumps({"frame_count": 20, "resolution": 512, "fps": 25}))
    args = ["--frames", str(frames), "--video-json", str(video), "--out", str(tmp_path / "landmarks.npy"),
            "--face-found", str(tmp_path / "face_found.npy")]
    assert L.main(args) == 0
    lm = np.load(tmp_path / "landmarks.npy")
    assert lm.shape == (20, 478, 3) and np.load(tmp_path / "face_found.npy").all()
    video.write_text(json.dumps({"frame_count": 21, "fps": 25}))
    assert L.main(args) == 1


def test_load_landmarks_errors_name_the_file(tmp_path):
    bad_shape = tmp_path / "shape.npy"
    np.save(bad_shape, np.zeros((3, 68, 3), np.float32))
    with pytest.raises(PipelineError, match="shape.npy.*478"):
        L.load_landmarks(bad_shape)
    nan = tmp_path / "nan.npy"
    lm = np.zeros((3, 478, 3), np.float32)
    lm[1, 5, 0] = np.nan
    np.save(nan, lm)
    with pytest.raises(PipelineError, match=r"nan.npy.*not finite.*\[1\]"):
        L.load_landmarks(nan)
    ok = tmp_path / "ok.npy"
    np.save(ok, np.zeros((3, 478, 3), np.float32))
    with pytest.raises(PipelineError, match="ok.npy: 3 landmark frames but 4 video frames"):
        L.load_landmarks(ok, 4)
    with pytest.raises(PipelineError, match="missing.npy: file not found"):
        L.load_landmarks(tmp_path / "missing.npy")
