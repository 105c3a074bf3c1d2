"""prepare_video: frame counts, audio length, crop choice, and one clear error per kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from pipeline import video
from pipeline.media import probe
from tests.conftest import CLIPS, ffmpeg


def _prepare(src, out, **kw):
    cfg = video.VideoConfig(**kw)
    return video.prepare_video(src, out / "frames", out / "audio.wav", out / "video.json", cfg)


def _check_prepared(src, out, meta, resolution):
    info = probe(src)
    frames = sorted((out / "frames").glob("*.jpg"))
    assert abs(len(frames) - round(info.duration * 25)) <= 1
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


def test_variable_frame_rate_and_rotation(demo_short, tmp_path):
    """A VFR clip with a 90° display rotation comes out upright at a constant 25 fps."""
    vfr = tmp_path / "vfr.mp4"
    # drop every third frame (timestamps keep gaps: variable frame rate), then tag a rotation
    ffmpeg("-i", str(demo_short / "video.mp4"), "-vf", "transpose=2,select='not(eq(mod(n\\,3)\\,2))'",
           "-fps_mode", "vfr", "-c:a", "copy", str(tmp_path / "tmp.mp4"))
    ffmpeg("-display_rotation", "-90", "-i", str(tmp_path / "tmp.mp4"), "-c", "copy", str(vfr))
    info = probe(vfr)
    meta = _prepare(vfr, tmp_path / "out", resolution=128)
    assert abs(meta["frame_count"] - round(info.duration * 25)) <= 1
    assert meta["source_size"] == [512, 512]


# ---------------------------------------------------------------- bad input

def _run_cli(src, out):
    """Run the stage as Snakemake does; return (exit status, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.video", "--video", str(src), "--frames", str(out / "frames"),
         "--audio", str(out / "audio.wav"), "--json", str(out / "video.json"), "--resolution", "128"],
        capture_output=True, text=True)
    return proc.returncode, proc.stderr


def _bad_inputs(make_clip, demo_short, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    truncated = tmp_path / "truncated.mp4"
    data = (demo_short / "video.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    short = tmp_path / "short.mp4"
    ffmpeg("-i", str(demo_short / "video.mp4"), "-t", "1.5", str(short))
    return {
        "no video stream": (make_clip("audio_only.wav", video=False), "has no video stream"),
        "no audio": (make_clip("silent_film.mp4", audio=False), "has no audio track"),
        "corrupt": (corrupt, "not a readable media file"),
        "truncated": (truncated, "truncated or corrupt"),
        "missing": (tmp_path / "does_not_exist.mp4", "file not found"),
        "no face": (make_clip("noface.mp4"), "no face found"),
        "too short": (short, "shorter than the 2 s minimum"),
    }


def test_bad_inputs_fail_clearly_and_touch_nothing(make_clip, demo_short, tmp_path):
    results = tmp_path / "results"
    keep = results / "other" / "video.json"
    keep.parent.mkdir(parents=True)
    keep.write_text('{"untouched": true}')
    for case, (src, problem) in _bad_inputs(make_clip, demo_short, tmp_path).items():
        out = results / "subject"
        status, stderr = _run_cli(src, out)
        assert status == 1, case
        error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(error_lines) == 1, (case, stderr)
        assert str(src) in error_lines[0] and problem in error_lines[0], (case, error_lines)
        assert "Traceback" not in stderr, case
        assert not out.exists() or not any(out.iterdir()), case
    assert keep.read_text() == '{"untouched": true}'
    assert sorted(p.name for p in results.iterdir()) == ["other", "subject"] or \
        sorted(p.name for p in results.iterdir()) == ["other"]
