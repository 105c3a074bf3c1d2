"""Shared fixtures: the repository, the shared media clips, a short generated demo subject, clip factories."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.demo import DemoConfig, generate
from pipeline.media import ENV_VAR, ffmpeg_binary
from tests.distro_ffmpeg import distro_ffmpeg  # noqa: F401  (session fixture: the distribution's ffmpeg)
from tests.slurm_cluster import slurm_cluster  # noqa: F401  (session fixture: real single-node SLURM)

REPO = Path(__file__).resolve().parents[1]
MEDIA = REPO.parent / "shared" / "media"
CLIPS = sorted(MEDIA.glob("*.mp4")) if MEDIA.is_dir() else []


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def media_dir() -> Path:
    if not MEDIA.is_dir():
        pytest.skip("../shared/media is not present")
    return MEDIA


@pytest.fixture(scope="session")
def demo_short(tmp_path_factory) -> Path:
    """A 4 s demo subject (video.mp4, audio.wav, drive.wav, ground_truth.npz) at 512²."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    generate(out, DemoConfig(duration=4.0, drive_duration=2.0))
    return out


@pytest.fixture(params=["product", pytest.param("distribution", marks=pytest.mark.slow)])
def product_ffmpeg(request, monkeypatch) -> str:
    """Run a test twice: with the product's ffmpeg (bundled unless $PIPELINE_FFMPEG says otherwise) and,
    as a slow test, with the distribution's (tests/distro_ffmpeg.py) in its place, fixtures included."""
    if request.param == "distribution":
        monkeypatch.setenv(ENV_VAR, request.getfixturevalue("distro_ffmpeg"))
    return ffmpeg_binary()


def ffmpeg(*args: str) -> None:
    """Run the product's own ffmpeg. Fixtures use only options every accepted release has (>= 5.1)."""
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", *args], check=True)


def set_display_rotation(path: Path, degrees: int) -> None:
    """Tag an MP4's first track (the video) with a display rotation, in place, as phones do.

    Writes the track header's display matrix itself: ffmpeg's ``-display_rotation`` exists only from
    release 6, and the older ``rotate`` metadata is ignored by newer releases. Angles as ffmpeg reports
    them (``rotation of -90.00 degrees``), quarter turns only.
    """
    data = bytearray(path.read_bytes())
    box = data.find(b"tkhd")
    if box < 0 or degrees % 90:
        raise ValueError(f"{path}: no track header, or {degrees} is not a quarter turn")
    version = data[box + 4]
    # after the type: version+flags, times, track id, reserved, duration, reserved, layer, group, volume
    matrix = box + 4 + 4 + (32 if version == 1 else 20) + 16
    rad = np.deg2rad(degrees)
    cos, sin = int(round(np.cos(rad))), int(round(np.sin(rad)))
    # a, b, u, c, d, v, x, y, w: 16.16 fixed point, u v w 2.30
    values = (cos << 16, -sin << 16, 0, sin << 16, cos << 16, 0, 0, 0, 1 << 30)
    data[matrix:matrix + 36] = struct.pack(">9i", *values)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def make_clip(tmp_path_factory):
    """Factory: synthetic clips from ffmpeg's test sources, e.g. make_clip("noface.mp4", audio=True)."""
    root = tmp_path_factory.mktemp("clips")

    def make(name: str, *, video: bool = True, audio: bool = True, duration: float = 3.0,
             size: str = "320x240", rate: str = "25", extra: tuple[str, ...] = ()) -> Path:
        path = root / name
        args: list[str] = []
        if video:
            args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={duration}"]
        if audio:
            args += ["-f", "lavfi", "-i", f"sine=frequency=220:sample_rate=44100:duration={duration}"]
        ffmpeg(*args, *extra, str(path))
        return path

    return make

