"""The distribution's ffmpeg for tests (session fixture ``distro_ffmpeg``): the path of an executable.

The product runs the ffmpeg bundled with imageio-ffmpeg (pipeline/media.py); these tests run it once more
with the one a user's distribution ships, so results that depend on the release cannot come back.

- The system ffmpeg on PATH, when there is one (e.g. after ``apt-get install ffmpeg``).
- Otherwise, as root with apt, the distribution's package and the libraries it needs that the machine
  lacks are downloaded with apt and unpacked with ``dpkg -x`` into ``$DISTRO_FFMPEG_ROOT`` (default
  ``/tmp/distro-ffmpeg``), behind a wrapper script that sets ``LD_LIBRARY_PATH``: nothing on the system
  changes, and a later session reuses the unpacked copy.

Without root, apt or the package the fixture skips with the reason, unless ``REQUIRE_DISTRO_FFMPEG=1`` is
set (CI), where it fails instead.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REQUIRE_ENV = "REQUIRE_DISTRO_FFMPEG"
ROOT_ENV = "DISTRO_FFMPEG_ROOT"
DEFAULT_ROOT = Path("/tmp/distro-ffmpeg")


class DistroFfmpegUnavailable(Exception):
    """No distribution ffmpeg can be found or unpacked here; the message says why."""


def _runs(exe: str) -> bool:
    try:
        return subprocess.run([exe, "-hide_banner", "-version"], capture_output=True, timeout=60).returncode == 0
    except OSError:
        return False


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", "-qq", "-o", "DPkg::Lock::Timeout=300", *args], env=env, text=True,
                          capture_output=True, timeout=900, check=False)


def _unpack(root: Path) -> Path:
    """Download ffmpeg and its missing libraries with apt into ``root``, unpack them; the wrapper's path."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise DistroFfmpegUnavailable("no ffmpeg on PATH, and unpacking the distribution's needs root, "
                                      "apt-get and dpkg")
    debs, tree = root / "debs", root / "tree"
    for path in (debs, tree):
        shutil.rmtree(path, ignore_errors=True)
    (debs / "partial").mkdir(parents=True)
    download = ("install", "--download-only", "-y", "--no-install-recommends",
                "-o", f"Dir::Cache::archives={debs}", "ffmpeg")
    proc = _apt(*download)
    if proc.returncode != 0:  # a fresh image may have no package lists yet
        _apt("update")
        proc = _apt(*download)
    if proc.returncode != 0:
        raise DistroFfmpegUnavailable(f"apt could not download ffmpeg: {proc.stderr.strip()[-500:]}")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg", "-x", str(deb), str(tree)], check=True, timeout=300)
    binary = tree / "usr" / "bin" / "ffmpeg"
    if not binary.is_file():
        raise DistroFfmpegUnavailable(f"apt's ffmpeg package holds no usr/bin/ffmpeg (unpacked in {tree})")
    libraries = sorted({str(p.parent) for p in tree.rglob("*.so*")})
    wrapper = root / "ffmpeg"
    wrapper.write_text(f'#!/bin/sh\nLD_LIBRARY_PATH="{":".join(libraries)}" exec "{binary}" "$@"\n')
    wrapper.chmod(0o755)
    shutil.rmtree(debs)
    return wrapper


def find_distro_ffmpeg() -> str:
    from pipeline.media import BUNDLED, resolve_ffmpeg

    on_path = shutil.which("ffmpeg")
    if on_path and os.path.realpath(on_path) != os.path.realpath(resolve_ffmpeg(BUNDLED)):
        return on_path
    root = Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:  # one unpacking at a time (pytest-xdist workers)
        fcntl.flock(lock, fcntl.LOCK_EX)
        wrapper = root / "ffmpeg"
        if not (wrapper.is_file() and _runs(str(wrapper))):
            wrapper = _unpack(root)
        if not _runs(str(wrapper)):
            raise DistroFfmpegUnavailable(f"the unpacked distribution ffmpeg does not run: {wrapper}")
        return str(wrapper)


@pytest.fixture(scope="session")
def distro_ffmpeg() -> str:
    try:
        return find_distro_ffmpeg()
    except DistroFfmpegUnavailable as err:
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but: {err}")
        pytest.skip(str(err))
