"""prepare_video: frame counts, audio length, crop choice, and one clear error per kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile

from pipeline import video
from pipeline.media import probe, video_timing
from tests.conftest import ffmpeg
from tests.conftest import CLIPS


def _prepare(src, out, **kw):
    cfg = video.VideoConfig(**kw)
    return video.prepare_video(src, out / "frames", out / "audio.wav", out / "video.json", cfg)


def _check_prepared(src, out, meta, resolution):
    frames = sorted((out / "frames").glob("*.jpg"))
    assert len(frames) == video_timing(src).frame_count(25)  # the module's frame-count contract
    assert meta["frame_count"] == len(frames)
    assert frames[0].name == "000000.jpg"
    from PIL import Image

    with Image.open(frames[0]) as im:
        assert im.size == (resolution, resolution)
    wav, sr = soundfile.read(out / "audio.wav")
    assert sr == 16000 and wav.ndim == 1
    assert abs(len(wav) / sr - len(frames) / 25) <= 0.040
    x, y, side, _ = meta["crop"]
    for _, bx, by, bw, bh in meta["face_boxes"]:
        assert x <= bx + 1e-6 and y <= by + 1e-6
        assert bx + bw <= x + side + 1e-6 and by + bh <= y + side + 1e-6
    assert json.loads((out / "video.json").read_text()) == meta


@pytest.mark.slow
@pytest.mark.parametrize("clip", CLIPS, ids=lambda p: p.name)
def test_prepare_shared_clips(clip, tmp_path):
    meta = _prepare(clip, tmp_path, resolution=256)
    _check_prepared(clip, tmp_path, meta, 256)


def test_frame_count_follows_the_video_stream_not_the_container(demo_short, tmp_path):
    """Video at 30 fps from 0.2 s to 3 s, audio 3.6 s long: 70 frames at 25 fps (the video's 2.8 s), not
    the 90 of the container's duration, and audio.wav exactly as long as the frames."""
    clip = tmp_path / "long_audio.mp4"
    ffmpeg("-i", str(demo_short / "video.mp4"), "-f", "lavfi", "-i", "sine=frequency=220:duration=3.6",
           "-map", "0:v", "-map", "1:a", "-vf", "fps=30,trim=start=0.2:end=3", "-c:a", "aac", str(clip))
    assert probe(clip).duration > 3.5
    timing = video_timing(clip)
    assert abs(timing.start - 0.2) < 0.02 and abs(timing.end - 3.0) < 0.02 and timing.frames == 84
    meta = _prepare(clip, tmp_path / "out", resolution=64)
    assert meta["frame_count"] == 70
    _check_prepared(clip, tmp_path / "out", meta, 64)
    wav, sr = soundfile.read(tmp_path / "out" / "audio.wav")
    assert len(wav) == 70 * sr // 25


def test_prepare_demo(demo_short, tmp_path):
    meta = _prepare(demo_short / "video.mp4", tmp_path, resolution=128)
    _check_prepared(demo_short / "video.mp4", tmp_path, meta, 128)
    # the demo's face is roughly centred: the crop must keep the face-centre ground truth well inside
    gt = np.load(demo_short / "ground_truth.npz")
    centre = video.crop_to_frame(gt["centre"], meta)
    assert np.all(centre > 0.2 * 128) and np.all(centre < 0.8 * 128)


def test_choose_crop_contains_boxes_and_stays_inside():
    boxes = np.array([[900, 300, 200, 220], [950, 320, 210, 200], [1000, 310, 190, 210]], float)
    x, y, side = video.choose_crop(boxes, (1920, 1080), crop_scale=2.6)
    assert 0 <= x and 0 <= y and x + side <= 1920 and y + side <= 1080
    assert side >= 2.6 * 200
    for bx, by, bw, bh in boxes:
        assert x <= bx and bx + bw <= x + side and y <= by and by + bh <= y + side


def test_choose_crop_near_border_is_shifted_inside():
    x, y, side = video.choose_crop(np.array([[5.0, 5, 100, 100]]), (640, 480), crop_scale=2.6)
    assert (x, y) == (0, 0) and side == 260


def test_choose_crop_never_exceeds_short_side():
    x, y, side = video.choose_crop(np.array([[100.0, 100, 400, 400]]), (640, 480), crop_scale=2.6)
    assert side == 480 and y == 0 and 0 <= x <= 160


def test_largest_face_is_used():
    assert video.largest_face([(0, 0, 10, 10), (5, 5, 30, 20), (1, 1, 20, 20)]) == (5, 5, 30, 20)
