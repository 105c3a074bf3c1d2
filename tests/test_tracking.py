"""track_head_pose: closed-form pieces, synthetic recovery, smoothing, conventions, and the real clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline import landmarks as L
from pipeline import tracking as T
from pipeline.io import PipelineError

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
CLIPS = sorted(MEDIA.glob("*.mp4")) if MEDIA.is_dir() else []


def _angle_deg(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation angle between rotation matrices a and b [N,3,3]."""
    d = np.einsum("nij,nkj->nik", a, b)
    return np.degrees(np.arccos(np.clip((np.trace(d, axis1=1, axis2=2) - 1) / 2, -1, 1)))


def _relative_to_first(r: np.ndarray) -> np.ndarray:
    return r @ r[0].T


def _random_rotations(n: int, rng: np.random.Generator, degrees: float = 30.0) -> np.ndarray:
    return T.rotation_matrix(*(rng.uniform(-degrees, degrees, n) for _ in range(3)))


@pytest.fixture(scope="module")
def synthetic():
    landmarks, truth = T.synthetic_track(250, seed=0, noise_px=0.5)
    return landmarks, truth, T.fit_head_pose(landmarks, 512, 512)


# --- pure pieces ------------------------------------------------------------------------------------------

def test_similarity_fit_recovers_a_known_similarity():
    rng = np.random.default_rng(1)
    src = rng.normal(size=(50, 3))
    rot = _random_rotations(4, rng, 170)
    scale = np.array([0.5, 1.0, 2.0, 300.0])
    trans = rng.normal(size=(4, 3)) * 10
    dst = scale[:, None, None] * np.einsum("nij,pj->npi", rot, src) + trans[:, None]
    s, r, t = T.similarity_fit(src, dst, np.ones(50))
    np.testing.assert_allclose(s, scale, rtol=1e-9)
    np.testing.assert_allclose(r, rot, atol=1e-9)
    np.testing.assert_allclose(t, trans, atol=1e-7)


def test_regauge_leaves_projections_unchanged():
    rng = np.random.default_rng(2)
    shape = rng.normal(size=(478, 3)) * 0.05
    track = T.HeadTrack(_random_rotations(5, rng, 20), np.array([[0.01, -0.02, 0.7]] * 5), 900.0, shape, 512, 512)
    q = _random_rotations(1, rng, 90)[0]
    new_shape, new_r, new_t = T.regauge(shape, track.rotations, track.translations, 1.7, q, np.array([0.1, 0, 0]))
    moved = T.HeadTrack(new_r, new_t, 900.0, new_shape, 512, 512)
    np.testing.assert_allclose(moved.project(), track.project(), atol=1e-9)


def test_euler_angles_round_trip_and_sign_conventions():
    rng = np.random.default_rng(3)
    angles = rng.uniform(-60, 60, size=(20, 3))
    r = T.rotation_matrix(angles[:, 0], angles[:, 1], angles[:, 2])
    np.testing.assert_allclose(T.euler_angles(r), angles, atol=1e-9)
    # positive roll turns the head's x axis towards +y, i.e. clockwise in an image whose y axis points down
    assert T.rotation_matrix([10.0], [0.0], [0.0])[0][:, 0][1] > 0
    # positive pitch tips the face (which looks along -z) down (+y); positive yaw turns it to the image left
    assert (T.rotation_matrix([0.0], [10.0], [0.0])[0] @ [0, 0, -1])[1] > 0
    assert (T.rotation_matrix([0.0], [0.0], [10.0])[0] @ [0, 0, -1])[0] < 0


def test_split_is_contiguous_with_the_last_eleventh_for_test():
    train, test = T.train_test_split(200)
    assert test == list(range(182, 200)) and train == list(range(182))
    assert T.train_test_split(5) == ([0, 1, 2, 3], [4])
    assert len(T.train_test_split(7500)[1]) == 681
    with pytest.raises(PipelineError):
        T.train_test_split(1)


def test_point_weights_leave_out_moving_points():
    shape = T.synthetic_track(3)[1]["shape"]
    w = T.point_weights(shape, T.TrackingConfig())
    assert np.all(w[list(L.STABLE)] == 1.0)
    for moving in (L.MOUTH, L.JAW, L.RIGHT_IRIS, L.LEFT_EYE_UPPER[1:-1], L.RIGHT_EYEBROW):
        assert np.all(w[list(moving)] == 0.0)


# --- synthetic recovery -----------------------------------------------------------------------------------

def test_synthetic_fit_recovers_rotations_and_focal(synthetic):
    landmarks, truth, track = synthetic
    errors = _angle_deg(_relative_to_first(track.rotations), _relative_to_first(truth["rotations"]))
    assert errors.max() < 1.0
    assert abs(track.focal / truth["focal"] - 1) < 0.05
    # the canonical frame is the generator's (same gauge landmarks), so poses match absolutely too
    assert _angle_deg(track.rotations, truth["rotations"]).max() < 2.0
    np.testing.assert_allclose(track.translations[:, :2], truth["translations"][:, :2], atol=2e-3)
    quality = T.tracking_quality(track, landmarks)
    assert quality["reprojection_px"]["all"]["mean"] < 0.8  # noise alone: 0.5 px per axis -> 0.63 px


def test_canonical_gauge(synthetic):
    shape = synthetic[2].shape
    right = shape[list(L.RIGHT_EYE_CORNERS)].mean(0)
    left = shape[list(L.LEFT_EYE_CORNERS)].mean(0)
    assert np.linalg.norm(left - right) == pytest.approx(0.063, rel=1e-6)
    np.testing.assert_allclose((left - right)[1:], 0, atol=1e-9)  # eye line is the x axis, pointing left eye
    assert (left - right)[0] > 0
    np.testing.assert_allclose(shape[[234, 454]].mean(0), 0, atol=1e-9)  # origin: head centre
    assert shape[152, 1] > shape[10, 1]  # y down: chin below forehead
    assert abs(shape[152, 2] - shape[10, 2]) < 0.05 and shape[L.NOSE_BRIDGE[-1], 2] < 0  # face at -z


def test_smoothing_removes_jitter_without_lag():
    landmarks, truth = T.synthetic_track(250, seed=4, noise_px=1.5)
    fits = {w: T.fit_head_pose(landmarks, 512, 512, T.TrackingConfig(smoothing=w, focal_px=1200.0))
            for w in (0.0, 1.0)}
    quality = {w: T.tracking_quality(f, landmarks)["jitter"] for w, f in fits.items()}
    assert quality[1.0]["rotation_deg"] < 0.5 * quality[0.0]["rotation_deg"]
    err = {w: _angle_deg(_relative_to_first(f.rotations), _relative_to_first(truth["rotations"])).mean()
           for w, f in fits.items()}
    assert err[1.0] < err[0.0]
    yaw = T.euler_angles(fits[1.0].rotations)[:, 2]
    true_yaw = truth["yaw"] - truth["yaw"].mean()
    lags = range(-5, 6)
    corr = [np.corrcoef(np.roll(yaw, k)[10:-10], true_yaw[10:-10])[0, 1] for k in lags]
    assert lags[int(np.argmax(corr))] == 0


def test_cameras_document_and_pose_series(synthetic, tmp_path):
    landmarks, truth, track = synthetic
    doc = T.cameras_document(track, T.tracking_quality(track, landmarks), T.TrackingConfig())
    path = tmp_path / "cameras.json"
    path.write_text(json.dumps(doc))
    loaded = json.loads(path.read_text())
    assert loaded["convention"] == "opencv world-to-camera"
    w2c = np.array(loaded["world_to_camera"])
    assert w2c.shape == (250, 4, 4) and np.allclose(w2c[:, 3], [0, 0, 0, 1])
    k = np.array(loaded["K"])
    assert k[0, 0] == loaded["intrinsics"]["fx"] and k[0, 2] == 256 and loaded["width"] == 512
    assert np.array(loaded["canonical_landmarks"]).shape == (478, 3)
    assert loaded["split"]["test"][0] == loaded["split"]["train"][-1] + 1
    series = T.pose_series(path)
    assert np.abs(series["roll"] - truth["roll"]).max() < 1.0
    np.testing.assert_allclose(series["translation"][:, :2], truth["translations"][:, :2], atol=2e-3)
    # projecting the saved canonical landmarks with the saved cameras reproduces the fit
    cam = np.einsum("nij,pj->npi", w2c[:, :3, :3], np.array(loaded["canonical_landmarks"])) + w2c[:, None, :3, 3]
    uv = np.einsum("ij,npj->npi", k, cam)
    np.testing.assert_allclose(uv[..., :2] / uv[..., 2:], track.project(), atol=0.01)


# --- CLI and real clips -----------------------------------------------------------------------------------

def _write_inputs(tmp_path: Path, landmarks: np.ndarray) -> list[str]:
    np.save(tmp_path / "landmarks.npy", landmarks)
    (tmp_path / "video.json").write_text(json.dumps({"frame_count": len(landmarks), "resolution": 512, "fps": 25}))
    return ["--landmarks", str(tmp_path / "landmarks.npy"), "--video-json", str(tmp_path / "video.json"),
            "--out", str(tmp_path / "cameras.json")]


def test_cli_rejects_68_point_and_nan_landmarks(tmp_path, capsys):
    assert T.main(_write_inputs(tmp_path, np.zeros((10, 68, 3), np.float32))) == 1
    assert "478" in capsys.readouterr().err
    bad = T.synthetic_track(10)[0]
    bad[3, 7, 0] = np.nan
    assert T.main(_write_inputs(tmp_path, bad)) == 1
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "cameras.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not CLIPS, reason="development media absent")
@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.stem)
def test_real_clip_reprojection_within_targets(clip, tmp_path):
    from PIL import Image

    from pipeline.media import iter_frames

    detector = L.open_detector(L.LandmarkConfig())
    try:
        raw, found = L.detect_frames(iter_frames(clip), detector)
    finally:
        detector.close()
    landmarks = L.fill_gaps(raw, found)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(iter_frames(clip)):
        Image.fromarray(frame).save(frames / f"{i:06d}.jpg", quality=80)
    qc = tmp_path / "qc" / "tracking.png"
    assert T.main(_write_inputs(tmp_path, landmarks) + ["--qc", str(qc), "--frames", str(frames)]) == 0
    doc = json.loads((tmp_path / "cameras.json").read_text())
    rel = doc["quality"]["reprojection_rel_iod"]
    assert rel["stable"]["mean"] <= 0.015 and rel["stable"]["p95"] <= 0.035, rel
    assert rel["all"]["mean"] >= rel["stable"]["mean"]  # mouth and jaw move non-rigidly
    assert doc["quality"]["reprojection_px"]["stable"]["mean"] > 0
    jitter = doc["quality"]["jitter"]["stable_landmarks_px"]
    assert jitter["reprojected"] < jitter["detected"]
    assert len(doc["world_to_camera"]) == len(landmarks)
    image = np.asarray(Image.open(qc))
    assert image.shape == (256 + 2 * 150, 1024, 3) and image[:256].std() > 20
