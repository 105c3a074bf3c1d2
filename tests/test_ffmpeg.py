"""One decided ffmpeg: the bundled binary by default whatever the system has, other choices checked at start,
and the same frames with the distribution's ffmpeg as with the bundled one on every development clip."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile
from PIL import Image

from pipeline import media, video
from pipeline.io import PipelineError
from tests.conftest import CLIPS
from tests.workflow_helpers import make_workdir, snakemake

_ENCODERS = "libx264 aac mjpeg pcm_s16le rawvideo"
_FILTERS = "fps crop scale pad tpad apad atrim setpts adelay"


def _fake_ffmpeg(folder, version, encoders=_ENCODERS, filters=_FILTERS):
    """An `ffmpeg` script answering -version, -encoders and -filters like a real one."""
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "ffmpeg"
    listing = lambda names: "\\n".join(f" V..... {n}  something" for n in names.split())  # noqa: E731
    exe.write_text(f"""#!/bin/sh
for arg; do
  case "$arg" in
    -version) echo "ffmpeg version {version} Copyright (c) 2000-2022"; exit 0;;
    -encoders) printf 'Encoders:\\n ------\\n{listing(encoders)}\\n'; exit 0;;
    -filters) printf 'Filters:\\n ------\\n{listing(filters)}\\n'; exit 0;;
  esac
done
exit 1
""")
    exe.chmod(0o755)
    return exe


def test_bundled_ffmpeg_is_used_whatever_is_on_path(tmp_path, monkeypatch):
    old = _fake_ffmpeg(tmp_path / "bin", "4.4.2-0ubuntu0.22.04.1")
    monkeypatch.setenv("PATH", f"{old.parent}:{os.environ['PATH']}")
    monkeypatch.delenv(media.ENV_VAR, raising=False)
    exe = media.ffmpeg_binary()
    assert exe == media.resolve_ffmpeg(media.BUNDLED) and "imageio_ffmpeg" in exe
    assert tuple(int(v) for v in media.ffmpeg_version(exe).lstrip("n").split(".")[:2]) >= media.MIN_VERSION
    # choosing the system one checks it, and names what is wrong
    monkeypatch.setenv(media.ENV_VAR, media.SYSTEM)
    with pytest.raises(PipelineError, match=r"version 4\.4\.2-0ubuntu0\.22\.04\.1 is older than 5\.1"):
        media.ffmpeg_binary()


def test_check_names_missing_encoders_and_filters(tmp_path):
    exe = _fake_ffmpeg(tmp_path, "n7.1", encoders="aac mjpeg pcm_s16le rawvideo", filters="fps crop scale pad")
    with pytest.raises(PipelineError) as err:
        media.check_ffmpeg(str(exe))
    message = str(err.value)
    assert str(exe) in message and "no encoders libx264" in message and "no filters tpad, apad, atrim" in message
    assert "older" not in message
    media.check_ffmpeg(str(_fake_ffmpeg(tmp_path / "ok", "5.1.9-0+deb12u1")))
    media.check_ffmpeg(str(_fake_ffmpeg(tmp_path / "git", "N-118000-g1234abcd")))  # development snapshot


def test_unknown_binary_is_named(tmp_path):
    with pytest.raises(PipelineError, match="'/no/such/ffmpeg' is not an executable"):
        media.checked_ffmpeg("/no/such/ffmpeg")
    with pytest.raises(PipelineError, match="is not ffmpeg"):
        media.check_ffmpeg("/bin/true")


def test_workflow_checks_the_chosen_ffmpeg_before_any_job(tmp_path):
    old = _fake_ffmpeg(tmp_path / "old", "4.4.2-0ubuntu0.22.04.1", encoders="aac mjpeg")
    work = make_workdir(tmp_path / "work", {"a": ("a.mp4", 128)}, ffmpeg={"binary": str(old)})
    env = {k: v for k, v in os.environ.items() if k != media.ENV_VAR}
    proc = snakemake(work, "-n", check=False, env=env)
    assert proc.returncode != 0
    assert f"ffmpeg: {old} cannot run the pipeline: version 4.4.2-0ubuntu0.22.04.1 is older than 5.1; " \
           "no encoders libx264, pcm_s16le, rawvideo" in proc.stdout + proc.stderr


def _prepare(clip, out):
    cfg = video.VideoConfig(resolution=128)
    return video.prepare_video(clip, out / "frames", out / "audio.wav", out / "video.json", cfg)


@pytest.mark.slow
@pytest.mark.skipif(not CLIPS, reason="development media absent")
def test_distribution_ffmpeg_cuts_the_same_frames(distro_ffmpeg, tmp_path, monkeypatch):
    """prepare_video with the distribution's ffmpeg: same frame count, crop and audio length as with the
    bundled one, and frames equal up to JPEG noise, on every development clip."""
    assert media.ffmpeg_version(distro_ffmpeg) != media.ffmpeg_version(media.resolve_ffmpeg(media.BUNDLED))
    for clip in CLIPS:
        metas = {}
        for name, choice in (("bundled", media.BUNDLED), ("distro", distro_ffmpeg)):
            monkeypatch.setenv(media.ENV_VAR, choice)
            metas[name] = _prepare(clip, tmp_path / clip.stem / name)
        a, b = metas["bundled"], metas["distro"]
        assert a["frame_count"] == b["frame_count"] == media.video_timing(clip).frame_count(25), clip.name
        assert a["crop"] == b["crop"] and a["duration"] == b["duration"], clip.name
        frames = [sorted((tmp_path / clip.stem / n / "frames").glob("*.jpg")) for n in ("bundled", "distro")]
        assert len(frames[0]) == len(frames[1]) == a["frame_count"]
        load = lambda f: np.asarray(Image.open(f), dtype=np.float64)  # noqa: E731
        same, next_frame = [], []
        for k in range(0, a["frame_count"] - 1, 7):
            x = load(frames[0][k])
            same.append(np.abs(x - load(frames[1][k])).mean())
            next_frame.append(np.abs(x - load(frames[1][k + 1])).mean())
        # JPEG noise and the releases' YUV->RGB rounding: about one level of 255 (measured 0.97-1.26)
        assert max(same) < 1.5, (clip.name, max(same))
        # in time: the neighbouring frame differs clearly more, even on the nearly still 50 s clip (2.5x)
        assert np.mean(same) < 0.75 * np.mean(next_frame), (clip.name, np.mean(same), np.mean(next_frame))
        wavs = [soundfile.read(tmp_path / clip.stem / n / "audio.wav")[0] for n in ("bundled", "distro")]
        assert len(wavs[0]) == len(wavs[1])
        assert np.corrcoef(wavs[0], wavs[1])[0, 1] > 0.99, clip.name
