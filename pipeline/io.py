"""Atomic artefact writing and small readers shared by every stage.

Every artefact is written to a temporary sibling and renamed into place, so a job killed while writing
never leaves a file that a later run could take as complete. Directory artefacts (frame folders) are
filled in a temporary sibling directory and renamed as a whole.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import json
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
from isal import isal_zlib
from PIL import Image


class PipelineError(RuntimeError):
    """An input or environment problem, reported to the user as one clear line."""


def _clear_stale(path: Path) -> None:
    """Remove temporaries of ``path`` left by a killed earlier run (one job writes one artefact at a time)."""
    for stale in path.parent.glob(f".{path.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_stale(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(name, 0o644)  # mkstemp's 0600 would hide artefacts from other users of a shared results dir
    return Path(name)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        tmp = _tmp_sibling(path)
    except OSError as err:
        raise PipelineError(f"{path.parent}: cannot write here ({err.strerror or err})") from err
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        tmp.chmod(0o755)
    except OSError as err:
        raise PipelineError(f"{path.parent}: cannot write here ({err.strerror or err})") from err
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def save_npz(path: str | Path, **arrays: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def save_json(path: str | Path, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def load_json(path: str | Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: file not found") from err
    except json.JSONDecodeError as err:
        raise PipelineError(f"{path}: not valid JSON ({err})") from err


def save_image(path: str | Path, image: np.ndarray, quality: int = 95) -> None:
    """Write uint8 HxW, HxWx3 or HxWx4 as PNG or JPEG (by extension), atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        _write_image(tmp, image, path.suffix.lower(), quality)


def _write_image(path: Path, image: np.ndarray, ext: str, quality: int = 95) -> None:
    if image.dtype != np.uint8:
        raise TypeError(f"{path}: images are written as uint8, got {image.dtype}")
    pil = Image.fromarray(image)
    if ext in (".jpg", ".jpeg"):
        pil.save(path, format="JPEG", quality=quality)
    else:
        pil.save(path, format="PNG", compress_level=1)  # speed over size: these are intermediates


def load_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im)
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: file not found") from err
    except OSError as err:
        raise PipelineError(f"{path}: not a readable image ({err})") from err


def load_rgb(path: str | Path) -> np.ndarray:
    """An image file as RGB uint8 [H, W, 3] (grey or RGBA converted); PipelineError naming the file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: file not found") from err
    except OSError as err:
        raise PipelineError(f"{path}: not a readable image ({err})") from err


def list_frames(directory: str | Path, ext: str | None = None) -> list[Path]:
    """Frame files of a frame directory in index order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PipelineError(f"{directory}: frame directory not found")
    files = sorted(p for p in directory.iterdir() if not p.name.startswith(".") and p.is_file())
    if ext is not None:
        files = [p for p in files if p.suffix == f".{ext}"]
    return files


def evenly_spaced(n: int, count: int) -> list[int]:
    """Up to ``count`` indices in [0, n) spread evenly, first and last included (all of them when n <= count)."""
    if n <= 0 or count <= 0:
        return []
    return np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(np.int64)).tolist()


def map_threaded(fn: Callable[[Any], Any], items: Iterable[Any], threads: int = 2,
                 lookahead: int | None = None) -> Iterator[Any]:
    """``map(fn, items)`` on a thread pool, results in input order, at most ``lookahead`` items in flight.

    For per-frame work whose heavy parts (image decode/encode, numpy, zlib) release the GIL; the bound keeps
    memory flat in video length. ``threads <= 1`` runs inline. An exception in ``fn`` is raised here.
    """
    if threads <= 1:
        yield from map(fn, items)
        return
    lookahead = lookahead or 2 * threads
    with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
        pending: collections.deque = collections.deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= lookahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of uint8 [H, W], [H, W, 3] or [H, W, 4] (grey, RGB, RGBA), tuned for speed.

    Every row uses PNG's "Up" filter and ISA-L's deflate at level 1: on 512² video frames about 8× as fast
    as Pillow's ``compress_level=1`` (which tries five filters per row with zlib) at a similar size.
    """
    if image.dtype != np.uint8:
        raise TypeError(f"encode_png: images are written as uint8, got {image.dtype}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if image.ndim not in (2, 3) or channels not in (1, 3, 4):
        raise ValueError(f"encode_png: expected [H, W], [H, W, 3] or [H, W, 4], got {image.shape}")
    h, w = image.shape[:2]
    rows = image.reshape(h, w * channels)
    filtered = np.empty((h, w * channels + 1), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type Up: byte minus the byte above (mod 256)
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    idat = isal_zlib.compress(filtered, 1)
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    header = struct.pack(">IIBBBBB", w, h, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


def write_png_into(directory: Path, name: str, image: np.ndarray) -> None:
    """Write ``image`` as PNG with the fast :func:`encode_png` into a directory being built atomically
    (:func:`atomic_dir`), so no per-file rename is needed (per-frame artefacts of hot stages)."""
    (directory / name).write_bytes(encode_png(image))
