"""Training checkpoints that survive a killed job, and graceful stops on SIGTERM/SIGINT.

A training stage saves its whole state (parameters, optimiser moments, densification accumulators, random
generator, log rows) every few hundred iterations into ``checkpoints/<stage>.pt``, atomically. A rerun of
the stage (Snakemake reruns incomplete jobs) resumes from it, but only if the checkpoint's fingerprint --
a hash of the stage's settings and inputs -- still matches: a checkpoint of other inputs is ignored and
training starts over. The checkpoint is deleted once the stage's artefacts are written, so ``-R`` retrains.
SLURM and Snakemake stop jobs with SIGTERM: the stage then saves at the end of the current iteration.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from pipeline.io import PipelineError, atomic_path

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


def fingerprint(settings: Any, files: list[str | Path] = (), directories: list[str | Path] = ()) -> str:
    """Hash of JSON-able ``settings``, the bytes of ``files`` and the listing (names, sizes) of
    ``directories`` -- what decides whether a checkpoint belongs to this run."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in map(Path, files):
        h.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    for path in map(Path, directories):
        for entry in sorted(path.iterdir()):
            h.update(f"{entry.name}:{entry.stat().st_size}".encode())
    return h.hexdigest()


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save, atomically and byte-reproducibly: torch names the zip's top folder after the file, so
    writing the random temporary name straight would make equal payloads differ."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


class Checkpointer:
    """Save/load one stage's training state at ``path`` under ``key`` (a :func:`fingerprint`)."""

    def __init__(self, path: str | Path, key: str):
        self.path = Path(path)
        self.key = key

    def load(self, map_location: torch.device | str = "cpu") -> dict[str, Any] | None:
        """The saved state if there is one for this key, else None (with a log line saying why)."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location=map_location, weights_only=False)
        except Exception as err:  # a truncated or foreign file: not worth failing the stage over
            log.warning("%s: unreadable checkpoint ignored, training starts over (%s)", self.path, err)
            return None
        if not isinstance(saved, dict) or saved.get("version") != FORMAT_VERSION or saved.get("key") != self.key:
            log.info("%s: checkpoint of other settings or inputs ignored, training starts over", self.path)
            return None
        return saved["state"]

    def save(self, state: dict[str, Any]) -> None:
        save_torch(self.path, {"version": FORMAT_VERSION, "key": self.key, "state": state})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def end_of_iteration(iteration: int, save: Callable[[int], None], stop: StopFlag | None, path: Path | None,
                     every: int, stop_after: int | None = None) -> bool:
    """A training loop's checkpoint duty after ``iteration``: save every ``every`` iterations; on a raised
    ``stop`` flag save and raise PipelineError; True when the run ends here early (``stop_after``)."""
    if stop:
        save(iteration)
        raise PipelineError(f"stopped by signal {stop.signal} at iteration {iteration}; checkpoint saved to "
                            f"{path if path else '(none)'}, rerun to resume")
    if iteration % every == 0 or iteration == stop_after:
        save(iteration)
    return iteration == stop_after


class StopFlag:
    """Set by SIGTERM/SIGINT while :meth:`installed`; the training loop checks it once per iteration."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @contextlib.contextmanager
    def installed(self) -> Iterator[StopFlag]:
        def handler(signum, frame):  # noqa: ARG001 - signal handler signature
            self.signal = signum

        previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
