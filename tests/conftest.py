"""Shared fixtures: the repository, the shared media clips, a short generated demo subject, clip factories."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipeline.demo import DemoConfig, generate
from pipeline.media import ffmpeg_binary
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


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", *args], check=True)


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
