"""Quantitative checks against the demo subject's ground truth (DESIGN section 6): the prepared crop,
landmarks and tracking recover the known in-plane head motion; masks contain the known lips."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import audio, landmarks, masks, parsing, tracking, video
from pipeline.demo import apply, similarity_matrix
from pipeline.io import load_image, save_npy

pytestmark = pytest.mark.slow
RESOLUTION = 256


@pytest.fixture(scope="module")
def demo_run(demo_short, tmp_path_factory):
    """prepare_video, detect_landmarks and track_head_pose on the short demo."""
    out = tmp_path_factory.mktemp("demo_run")
    meta = video.prepare_video(demo_short / "video.mp4", out / "frames", out / "audio.wav", out / "video.json",
                               video.VideoConfig(resolution=RESOLUTION))
    frames = sorted((out / "frames").glob("*.jpg"))
    lm, found = landmarks.detect_landmarks(frames, landmarks.LandmarkConfig())
    track = tracking.fit_head_pose(lm, RESOLUTION, RESOLUTION, tracking.TrackingConfig())
    cameras = tracking.cameras_document(track, tracking.tracking_quality(track, lm), tracking.TrackingConfig())
    truth = dict(np.load(demo_short / "ground_truth.npz"))
    save_npy(out / "landmarks.npy", lm)
    parsing.parse_video(out / "frames", out / "landmarks.npy", out / "parsing")
    masks.dilate_video(out / "parsing", out / "landmarks.npy", out / "mouth_masks")
    return {"meta": meta, "landmarks": lm, "found": found, "cameras": cameras, "truth": truth, "dir": out}


def _true_lips(demo_run) -> list[np.ndarray]:
    """Ground-truth lip regions (outer lip polygon, inner mouth included) in prepared-frame pixels."""
    meta, truth = demo_run["meta"], demo_run["truth"]
    shape = (meta["resolution"], meta["resolution"])
    return [parsing.polygon_mask(video.crop_to_frame(poly, meta), shape) for poly in truth["lips_outer"]]


def test_lips_and_inner_mouth_match_the_true_lips(demo_run):
    """Undilated lips + inner mouth (labels 5, 6) have IoU >= 0.8 with the true lip polygon."""
    maps = sorted((demo_run["dir"] / "parsing").glob("*.png"))
    ious = []
    for path, truth in zip(maps, _true_lips(demo_run), strict=True):
        mouth = masks.mouth_region(load_image(path))
        ious.append((mouth & truth).sum() / (mouth | truth).sum())
    assert min(ious) >= 0.8, f"worst IoU {min(ious):.3f}"


def test_dilated_mouth_mask_contains_the_true_lips(demo_run):
    """In >= 98% of frames the dilated mask m of dynamic splatting covers every true lip pixel."""
    paths = sorted((demo_run["dir"] / "mouth_masks").glob("*.png"))
    contained = [bool(np.all(load_image(path)[truth] > 0)) for path, truth in zip(paths, _true_lips(demo_run),
                                                                                 strict=True)]
    assert np.mean(contained) >= 0.98


def test_every_demo_frame_has_a_face(demo_run):
    assert demo_run["found"].all()


def test_roll_follows_the_known_motion(demo_run):
    poses = tracking.pose_series(demo_run["cameras"])
    # the demo's roll turns the image counter-clockwise, the tracker's roll clockwise; the photograph's own
    # head roll is an unknown constant
    err = poses["roll"] + demo_run["truth"]["pose"][:, 2]
    err -= np.median(err)
    assert np.median(np.abs(err)) <= 1.0
    assert np.abs(err).max() <= 2.0


def test_yaw_and_pitch_stay_put(demo_run):
    """The motion is in-plane only: yaw and pitch stay within 2° of their (photograph's own) value."""
    poses = tracking.pose_series(demo_run["cameras"])
    for angle in ("yaw", "pitch"):
        assert np.abs(poses[angle] - np.median(poses[angle])).max() <= 2.0, angle


def test_translation_follows_the_known_motion(demo_run):
    cams, truth, meta = demo_run["cameras"], demo_run["truth"], demo_run["meta"]
    t = tracking.pose_series(cams)["translation"]
    uv = t @ np.asarray(cams["K"]).T
    uv = uv[:, :2] / uv[:, 2:]  # the head centre in the prepared frames, pixels
    to_frame = meta["resolution"] / meta["crop"][2]
    moves = [similarity_matrix(p, tuple(truth["centre"])) for p in truth["pose"]]
    # where frame 0's head centre goes under the known similarity motion (demo-video pixels)
    origin = uv[0] / to_frame + np.asarray(meta["crop"][:2])
    expected = np.array([apply(m @ np.linalg.inv(moves[0]), origin[None])[0] for m in moves])
    expected = video.crop_to_frame(expected, meta)
    face_width = float(truth["face_width"]) * to_frame
    assert np.linalg.norm(uv - expected, axis=1).max() <= 0.02 * face_width


def test_landmark_mouth_aperture_follows_the_known_aperture(demo_run):
    """Inner-lip gap from the landmarks (points 13 and 14) correlates with the demo's known aperture."""
    lm, truth = demo_run["landmarks"], demo_run["truth"]
    measured = np.linalg.norm(lm[:, 13, :2] - lm[:, 14, :2], axis=1)
    assert np.corrcoef(measured, truth["aperture"])[0, 1] >= 0.9


def test_audio_features_are_in_sync_with_the_mouth(demo_run):
    """The frame's own mel steps carry the speech envelope that opens the mouth, at lag 0."""
    n = demo_run["meta"]["frame_count"]
    feats, _, _ = audio.subject_features(demo_run["dir"] / "audio.wav", n, audio.AudioFeatureConfig())
    half = feats.shape[1] // 2
    energy = feats[:, half - 1:half + 1].mean(axis=(1, 2))  # the frame's own two steps, all bands
    openness = demo_run["truth"]["openness"]
    corr = {lag: np.corrcoef(energy[max(0, lag):n + min(0, lag)], openness[max(0, -lag):n - max(0, lag)])[0, 1]
            for lag in range(-3, 4)}
    assert corr[0] >= 0.7
    assert max(corr, key=corr.get) == 0
