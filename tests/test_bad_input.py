"""Bad and unusual input, one module (issues 2 and 6): each case runs as the rule runs it and either
succeeds with the right result or fails with one clear line naming the file and the problem, leaving
nothing else in results/ touched."""

from __future__ import annotations

import errno
import subprocess
import sys

import numpy as np
import pytest

from pipeline import cli, video
from pipeline.media import video_timing
from tests.conftest import ffmpeg, set_display_rotation
from tests.workflow_helpers import make_workdir, snakemake


def _run_prepare(src, out, resolution=128):
    """Run prepare_video as Snakemake does; return (exit status, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.video", "--video", str(src), "--frames", str(out / "frames"),
         "--audio", str(out / "audio.wav"), "--json", str(out / "video.json"), "--resolution", str(resolution)],
        capture_output=True, text=True)
    return proc.returncode, proc.stderr


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _failing_inputs(make_clip, demo_short, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    truncated = tmp_path / "truncated.mp4"
    data = (demo_short / "video.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    short = tmp_path / "short.mp4"
    ffmpeg("-i", str(demo_short / "video.mp4"), "-t", "1.5", str(short))
    return {
        "audio-only file as video": (make_clip("audio_only.wav", video=False), "has no video stream"),
        "no audio track": (make_clip("silent_film.mp4", audio=False), "has no audio track"),
        "corrupt": (corrupt, "not a readable media file"),
        "truncated": (truncated, "truncated or corrupt"),
        "missing path": (tmp_path / "does_not_exist.mp4", "file not found"),
        "no face": (make_clip("noface.mp4"), "no face found"),
        "shorter than 2 s": (short, "shorter than the 2 s minimum"),
    }


def test_failing_inputs_give_one_clear_line_and_touch_nothing(make_clip, demo_short, tmp_path):
    results = tmp_path / "results"
    keep = results / "other" / "video.json"
    keep.parent.mkdir(parents=True)
    keep.write_text('{"untouched": true}')
    for case, (src, problem) in _failing_inputs(make_clip, demo_short, tmp_path).items():
        out = results / "subject"
        status, stderr = _run_prepare(src, out)
        assert status == 1, case
        line = _error_line(stderr)
        assert str(src) in line and problem in line, (case, line)
        assert not out.exists() or not any(out.iterdir()), case
    assert keep.read_text() == '{"untouched": true}'
    assert {p.name for p in results.iterdir()} <= {"other", "subject"}


def _prepared_ok(src, out, resolution=128):
    status, stderr = _run_prepare(src, out, resolution)
    assert status == 0, stderr
    import json

    meta = json.loads((out / "video.json").read_text())
    assert meta["frame_count"] == video_timing(src).frame_count(25)
    assert len(list((out / "frames").glob("*.jpg"))) == meta["frame_count"]
    return meta, stderr


def test_variable_frame_rate_and_rotation(product_ffmpeg, demo_short, tmp_path):
    """A VFR clip with a 90° display rotation comes out upright at a constant 25 fps."""
    rotated = tmp_path / "rotated.mp4"
    # drop every third frame and rotate the pixels; Matroska keeps the timestamps' gaps (variable frame
    # rate) with every ffmpeg release, and a stream copy carries them into the MP4
    ffmpeg("-i", str(demo_short / "video.mp4"), "-vf", "transpose=2,select='not(eq(mod(n\\,3)\\,2))'",
           "-c:a", "copy", str(tmp_path / "vfr.mkv"))
    ffmpeg("-i", str(tmp_path / "vfr.mkv"), "-c", "copy", str(rotated))
    set_display_rotation(rotated, -90)  # the opposite of the pixels' turn, as phones do
    timing = video_timing(rotated)
    assert timing.frames == 67 and timing.frame_count(25) == 100  # 2 of every 3 frames, spanning 4 s
    meta, _ = _prepared_ok(rotated, tmp_path / "out")
    assert meta["source_size"] == [512, 512] and meta["rotation"] == 270
    assert meta["frame_count"] == 100
    # upright: the face (found by the detector, which needs it upright) is in the upper half of the crop
    _, _, by, _, bh = np.median(np.asarray(meta["face_boxes"]), axis=0)
    assert by + bh / 2 < meta["crop"][1] + meta["crop"][2] * 0.6


def test_sixty_fps(product_ffmpeg, demo_short, tmp_path):
    clip = tmp_path / "sixty.mp4"
    ffmpeg("-i", str(demo_short / "video.mp4"), "-t", "3", "-vf", "fps=60", str(clip))
    meta, _ = _prepared_ok(clip, tmp_path / "out")
    assert meta["source_fps"] == 60 and meta["fps"] == 25


def test_portrait_1080x1920(demo_short, tmp_path):
    clip = tmp_path / "portrait.mp4"
    ffmpeg("-i", str(demo_short / "video.mp4"), "-t", "2.5", "-vf",
           "scale=1080:1080,pad=1080:1920:0:300", "-preset", "ultrafast", str(clip))
    meta, _ = _prepared_ok(clip, tmp_path / "out")
    x, y, side, _ = meta["crop"]
    assert meta["source_size"] == [1080, 1920]
    assert 0 <= x and x + side <= 1080 and 0 <= y and y + side <= 1920
    assert 300 <= y + side / 2 <= 1380  # centred on the content, not the padding


def test_ten_bit_hevc(demo_short, tmp_path):
    clip = tmp_path / "hevc10.mkv"
    try:
        ffmpeg("-i", str(demo_short / "video.mp4"), "-t", "2.5", "-c:v", "libx265", "-pix_fmt", "yuv420p10le",
               "-x265-params", "log-level=error", "-preset", "ultrafast", str(clip))
    except subprocess.CalledProcessError:
        pytest.skip("this ffmpeg cannot encode 10-bit HEVC")
    _prepared_ok(clip, tmp_path / "out")


def test_two_faces_uses_the_largest_with_a_warning(demo_short, tmp_path):
    clip = tmp_path / "two.mp4"
    ffmpeg("-i", str(demo_short / "video.mp4"), "-t", "3", "-filter_complex",
           "[0:v]split[a][b];[b]scale=256:256,pad=256:512:0:128[s];[a][s]hstack", str(clip))
    meta, stderr = _prepared_ok(clip, tmp_path / "out")
    assert meta["faces_per_frame_max"] == 2 and "using the largest" in stderr
    boxes = np.asarray(meta["face_boxes"])
    assert np.all(boxes[:, 1] < 512 - 40)  # every kept box is the big face on the left


def test_face_leaving_the_frame_for_a_second(demo_short, tmp_path):
    meta, _ = _prepared_ok(_away_clip(demo_short, tmp_path), tmp_path / "out")
    times = np.asarray(meta["face_boxes"])[:, 0]
    assert not np.any((times > 1.6) & (times < 2.4))  # no box invented while the face is away
    assert meta["frame_count"] == 100


def _landmarks_cli(out):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.landmarks", "--frames", str(out / "frames"), "--video-json",
         str(out / "video.json"), "--out", str(out / "landmarks.npy"), "--face-found", str(out / "found.npy")],
        capture_output=True, text=True)
    return proc.returncode, proc.stderr


@pytest.mark.slow
def test_face_away_for_a_second_is_bridged_in_a_long_clip_and_named_in_a_short_one(demo_short, tmp_path):
    """One second without a face: in a 24 s clip (4% of frames) landmarks bridge it and face_found marks it;
    in a 4 s clip (25%) the stage fails naming the frame range."""
    long_clip = tmp_path / "long.mp4"
    ffmpeg("-stream_loop", "5", "-i", str(demo_short / "video.mp4"), "-vf",
           "drawbox=x=0:y=0:w=iw:h=ih:color=gray:t=fill:enable='between(t,10,11)'", str(long_clip))
    out = tmp_path / "long"
    _prepared_ok(long_clip, out)
    status, stderr = _landmarks_cli(out)
    assert status == 0, stderr
    found = np.load(out / "found.npy")
    assert not found[252:273].any() and found[:245].all() and found[280:].all()
    lm = np.load(out / "landmarks.npy")
    assert np.isfinite(lm).all()
    # bridged frames lie between the landmarks either side of the gap
    lo, hi = np.minimum(lm[240], lm[285]), np.maximum(lm[240], lm[285])
    assert np.all((lm[262, :, :2] >= lo[:, :2] - 2) & (lm[262, :, :2] <= hi[:, :2] + 2))

    short = tmp_path / "short"
    _prepared_ok(_away_clip(demo_short, tmp_path), short)
    status, stderr = _landmarks_cli(short)
    assert status == 1
    line = _error_line(stderr)
    assert str(short / "frames") in line and "frames 3" in line and "more than the allowed 5%" in line


def _away_clip(demo_short, tmp_path):
    clip = tmp_path / "away.mp4"
    ffmpeg("-i", str(demo_short / "video.mp4"), "-vf",
           "drawbox=x=0:y=0:w=iw:h=ih:color=gray:t=fill:enable='between(t,1.5,2.5)'", str(clip))
    return clip


def test_non_ascii_and_space_paths_through_snakemake(demo_short, tmp_path):
    folder = tmp_path / "vidéos à traiter"
    folder.mkdir()
    clip = folder / "été 1.mp4"
    clip.write_bytes((demo_short / "video.mp4").read_bytes())
    work = make_workdir(tmp_path / "work dir", {"ete": (clip, 128)})
    snakemake(work, "--cores", "2", "--until", "prepare_video")
    assert len(list((work / "results" / "ete" / "frames").glob("*.jpg"))) == 100


def test_mismatched_drives_subject_stops_the_workflow(tmp_path):
    work = make_workdir(tmp_path, {"a": ("a.mp4", 128)}, )
    (work / "drives.tsv").write_text("subject\taudio_id\taudio\nb\tx\tx.wav\n")
    proc = snakemake(work, "-n", check=False)
    assert proc.returncode != 0
    assert "subject 'b' is not in subjects.tsv" in proc.stdout + proc.stderr


def test_full_disk_or_unwritable_results_fail_clearly(demo_short, tmp_path, monkeypatch):
    # unwritable results directory (as root, permissions do not stop us: use a file where a dir must be)
    blocker = tmp_path / "results"
    blocker.write_text("not a directory")
    status, stderr = _run_prepare(demo_short / "video.mp4", blocker / "s")
    assert status == 1
    assert "cannot write" in _error_line(stderr) and str(blocker) in _error_line(stderr)

    # a full disk mid-write: the storage error becomes one line, the half-written file is gone
    from pipeline import io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.json"))

    monkeypatch.setattr(io.json, "dumps", full)

    def body(_args):
        io.save_json(tmp_path / "x.json", {"a": 1})

    assert cli.run(lambda: __import__("argparse").ArgumentParser(), body, []) == 1
    assert not (tmp_path / "x.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".x.json")]


def test_crop_contains_every_box_in_the_matrix():
    rng = np.random.default_rng(0)
    for _ in range(50):
        w, h = rng.integers(200, 2000, size=2)
        s = rng.uniform(20, min(w, h) / 3)
        boxes = np.column_stack([rng.uniform(0, w - s, 5), rng.uniform(0, h - s, 5), np.full(5, s), np.full(5, s)])
        boxes[:, :2] = boxes[0, :2] + rng.uniform(-s / 4, s / 4, (5, 2))
        boxes[:, 0] = np.clip(boxes[:, 0], 0, w - s)
        boxes[:, 1] = np.clip(boxes[:, 1], 0, h - s)
        x, y, side = video.choose_crop(boxes, (int(w), int(h)), 2.6)
        assert 0 <= x and 0 <= y and x + side <= w and y + side <= h
        assert np.all(boxes[:, 0] >= x) and np.all(boxes[:, 0] + s <= x + side + 1)
        assert np.all(boxes[:, 1] >= y) and np.all(boxes[:, 1] + s <= y + side + 1)
