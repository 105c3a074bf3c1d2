"""Quantitative checks against the demo subject's ground truth (DESIGN section 6): the prepared crop,
landmarks and tracking recover the known in-plane head motion; masks contain the known lips."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import landmarks, tracking, video
from pipeline.demo import apply, similarity_matrix

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
    return {"meta": meta, "landmarks": lm, "found": found, "cameras": cameras, "truth": truth, "dir": out}


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
