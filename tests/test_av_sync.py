"""prepare_video keeps sound and picture together: audio.wav sample 0 plays at frame 0 (the video's start),
whichever stream starts first, with the bundled and the distribution's ffmpeg."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from PIL import Image

from pipeline import video
from pipeline.media import audio_start, decode_audio, run_ffmpeg, video_timing
from tests.conftest import ffmpeg

FPS, SR = 25, 16000
FLASH = 40  # the source frame made white
CLICK_INTO_FRAME = 0.02  # s: the click plays in the middle of the flash frame


def _flash_and_click_clip(demo_short, tmp_path, video_delay: float, audio_delay: float):
    """The demo's face video (25 fps) with frame FLASH white and a click track, then its streams shifted by stream
    copy so that the video starts ``video_delay`` s and the audio ``audio_delay`` s into the file; the click
    plays CLICK_INTO_FRAME s after the flash frame appears."""
    click = FLASH / FPS + CLICK_INTO_FRAME + video_delay - audio_delay  # on the audio's own clock
    base = tmp_path / "base.mp4"
    ffmpeg("-i", str(demo_short / "video.mp4"),
           "-f", "lavfi", "-i", f"aevalsrc='0.8*between(t,{click},{click + 0.001})':s=48000:d=3.5",
           "-map", "0:v:0", "-map", "1:a:0", "-t", "3",
           "-vf", f"drawbox=x=0:y=0:w=iw:h=ih:color=white:t=fill:enable='eq(n,{FLASH})'",
           "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", str(base))
    clip = tmp_path / "shifted.mp4"
    ffmpeg("-itsoffset", str(video_delay), "-i", str(base), "-itsoffset", str(audio_delay), "-i", str(base),
           "-map", "0:v:0", "-map", "1:a:0", "-c", "copy", str(clip))
    return clip


@pytest.mark.parametrize("video_delay, audio_delay", [(0.3, 0.0), (0.0, 0.3)],
                         ids=["video_starts_later", "audio_starts_later"])
def test_click_lands_in_the_flash_frame(product_ffmpeg, demo_short, tmp_path, video_delay, audio_delay):
    clip = _flash_and_click_clip(demo_short, tmp_path, video_delay, audio_delay)
    timing = video_timing(clip)
    # the premise: the streams start 0.3 s apart (7.5 frames: off the output's frame grid)
    assert abs(timing.start - audio_start(clip) - (video_delay - audio_delay)) < 0.03

    out = tmp_path / "out"
    meta = video.prepare_video(clip, out / "frames", out / "audio.wav", out / "video.json",
                               video.VideoConfig(resolution=64, detect_samples=12))
    assert meta["frame_count"] == timing.frame_count(FPS) == 75

    brightness = [np.asarray(Image.open(p)).mean() for p in sorted((out / "frames").glob("*.jpg"))]
    flash = int(np.argmax(brightness))
    assert brightness[flash] > 200 and sorted(brightness)[-2] < 150  # one white frame
    assert flash == FLASH  # a 25 fps source: frame k is the source's frame k, from the video's start

    wav, sr = soundfile.read(out / "audio.wav")
    assert sr == SR and len(wav) == 75 * SR // FPS
    click = int(np.argmax(np.abs(wav)))
    assert click * FPS // SR == flash  # ±0 frames
    assert abs(click / SR - (flash / FPS + CLICK_INTO_FRAME)) < 0.005


@pytest.mark.parametrize("lead, n_samples", [(37, 2000), (-37, 1000), (0, 1500)])
def test_align_filter_is_sample_exact(product_ffmpeg, tmp_path, lead, n_samples):
    x = np.random.default_rng(0).integers(-20000, 20000, 1600).astype(np.int16)
    src, out = tmp_path / "in.wav", tmp_path / "out.wav"
    soundfile.write(src, x, SR, subtype="PCM_16")
    run_ffmpeg(src, "align", "-i", str(src), "-af", video.align_filter(lead, n_samples), "-c:a", "pcm_s16le",
               "-f", "wav", str(out))
    y, _ = soundfile.read(out, dtype="int16")
    shifted = x[lead:] if lead >= 0 else np.concatenate([np.zeros(-lead, np.int16), x])
    expected = np.zeros(n_samples, np.int16)
    expected[:min(n_samples, len(shifted))] = shifted[:n_samples]
    assert np.array_equal(y, expected)


def test_macron_audio_starts_at_its_video(product_ffmpeg, media_dir, tmp_path):
    """macron_50s.mp4's video starts at 0.08 s, its audio at 0: audio.wav must skip the first 80 ms (1280
    samples) of the decoded audio. Audio only (frames are covered above): a 50 s audio decode, not a full prepare."""
    clip = media_dir / "macron_50s.mp4"
    timing = video_timing(clip)
    assert timing.start == pytest.approx(0.08) and audio_start(clip) == 0.0
    n_frames = timing.frame_count(FPS)
    video.write_audio_track(clip, timing.start, n_frames, tmp_path / "audio.wav", video.VideoConfig())
    wav, _ = soundfile.read(tmp_path / "audio.wav", dtype="float32")
    assert len(wav) == n_frames * SR // FPS
    decoded = decode_audio(clip, SR)  # from the audio stream's first sample
    probe = wav[5 * SR:6 * SR]  # 1 s of speech from 5 s in
    errors = [np.mean((probe - decoded[5 * SR + lag:6 * SR + lag]) ** 2) for lag in range(0, 3200)]
    lag = int(np.argmin(errors))
    assert lag == round(0.08 * SR)
    assert np.max(np.abs(probe - decoded[5 * SR + lag:6 * SR + lag])) < 1e-3  # the same samples, shifted
