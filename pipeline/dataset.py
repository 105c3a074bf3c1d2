"""Training views of one subject: head frames, background plate and cameras at the training resolution.

Coarse and fine training sample frames from here; rendering and evaluation read the same cameras. Frames
are decoded lazily and kept as uint8 up to a memory budget, so a long video does not have to fit in memory.
Resizing scales the intrinsics exactly (pixel centres at i + 0.5, as the rasterizer uses).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pipeline.io import PipelineError, list_frames, load_image, load_json, load_rgb


@dataclass(frozen=True)
class Cameras:
    """cameras.json as arrays: K [3,3] at (width, height), world_to_camera [N,4,4], the split, and the
    canonical landmarks [L,3] of the head frame (metres)."""

    width: int
    height: int
    K: np.ndarray
    world_to_camera: np.ndarray
    train: list[int]
    test: list[int]
    canonical_landmarks: np.ndarray

    @classmethod
    def load(cls, path: str | Path) -> Cameras:
        doc = load_json(path)
        try:
            w2c = np.asarray(doc["world_to_camera"], np.float64)
            cams = cls(width=int(doc["width"]), height=int(doc["height"]), K=np.asarray(doc["K"], np.float64),
                       world_to_camera=w2c, train=list(doc["split"]["train"]), test=list(doc["split"]["test"]),
                       canonical_landmarks=np.asarray(doc["canonical_landmarks"], np.float64))
        except (KeyError, TypeError, ValueError) as err:
            raise PipelineError(f"{path}: not a cameras.json of track_head_pose ({err!r})") from err
        n = len(w2c)
        if w2c.shape != (n, 4, 4) or cams.K.shape != (3, 3) or cams.canonical_landmarks.ndim != 2:
            raise PipelineError(f"{path}: world_to_camera must be [N,4,4] and K [3,3], got {w2c.shape} and "
                                f"{cams.K.shape}")
        if any(not 0 <= i < n for i in cams.train + cams.test):
            raise PipelineError(f"{path}: split indices outside 0..{n - 1}")
        return cams

    def __len__(self) -> int:
        return len(self.world_to_camera)

    def scaled_K(self, width: int, height: int) -> np.ndarray:
        """Intrinsics for the image resized to width x height."""
        k = self.K.copy()
        k[0] *= width / self.width
        k[1] *= height / self.height
        return k


def training_size(width: int, height: int, resolution: int | None) -> tuple[int, int]:
    """(width, height) with the longer side ``resolution`` (the original size when None)."""
    if resolution is None:
        return width, height
    scale = resolution / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


class FrameStore:
    """The frames of one directory at a fixed size, decoded lazily and kept as uint8 up to ``cache_mb``.

    ``files`` hold images of ``source_size`` (W, H); ``pixels(i)`` is frame i resized (box filter) to
    ``size``, RGB [H,W,3] or, with ``grey``, one channel [H,W]. ``transform`` (uint8 [H,W] -> uint8 [H,W])
    maps a grey image before the resize, e.g. a label map to a mask (labels must not be averaged).
    """

    def __init__(self, files: list[Path], source_size: tuple[int, int], size: tuple[int, int],
                 grey: bool = False, cache_mb: int = 2048,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None):
        self.files = files
        self.source_size = source_size
        self.size = size
        self.grey = grey
        self.transform = transform
        self._cache: dict[int, np.ndarray] = {}
        self._cache_limit = max(0, cache_mb * 2**20 // (size[0] * size[1] * (1 if grey else 3)))

    def __len__(self) -> int:
        return len(self.files)

    def read(self, path: Path) -> np.ndarray:
        """An image of the source size, resized to ``size``."""
        image = load_image(path) if self.grey else load_rgb(path)
        if self.grey and image.ndim == 3:
            image = image[..., 0]
        width, height = self.source_size
        if image.shape[:2] != (height, width):
            raise PipelineError(f"{path}: {image.shape[1]}x{image.shape[0]} pixels, cameras.json says {width}x{height}")
        if self.transform is not None:
            image = self.transform(image)
        if self.size != self.source_size:
            image = np.asarray(Image.fromarray(image).resize(self.size, Image.Resampling.BOX))
        return image

    def pixels(self, index: int) -> np.ndarray:
        image = self._cache.get(index)
        if image is None:
            image = self.read(self.files[index])
            if len(self._cache) < self._cache_limit:
                self._cache[index] = image
        return image


class HeadViews:
    """Head frames (the training target: head over the background plate) with their cameras.

    ``image(i)`` float [H,W,3] in [0,1]; ``viewmat(i)`` [4,4]; ``K`` [3,3]; ``background`` [H,W,3];
    all at the training size on ``device``.
    """

    def __init__(self, head_dir: str | Path, cameras: Cameras, background: str | Path,
                 resolution: int | None = None, device: torch.device | str = "cpu", cache_mb: int = 2048):
        files = list_frames(head_dir, ext="png")
        if len(files) != len(cameras):
            raise PipelineError(f"{head_dir}: {len(files)} head frames but cameras.json has {len(cameras)}; "
                                "rerun split_head_torso and track_head_pose on the same frames")
        self.cameras = cameras
        self.device = torch.device(device)
        self.width, self.height = training_size(cameras.width, cameras.height, resolution)
        self.frames = FrameStore(files, (cameras.width, cameras.height), (self.width, self.height),
                                 cache_mb=cache_mb)
        self.K = torch.tensor(cameras.scaled_K(self.width, self.height), dtype=torch.float32, device=self.device)
        self.viewmats = torch.tensor(cameras.world_to_camera, dtype=torch.float32, device=self.device)
        self.background = self._to_tensor(self.frames.read(Path(background)))

    def __len__(self) -> int:
        return len(self.frames)

    def _to_tensor(self, rgb: np.ndarray) -> Tensor:
        return torch.from_numpy(np.array(rgb)).to(self.device, torch.float32) / 255

    def pixels(self, index: int) -> np.ndarray:
        """uint8 [H,W,3] of frame ``index`` at the training size."""
        return self.frames.pixels(index)

    def image(self, index: int) -> Tensor:
        return self._to_tensor(self.pixels(index))

    def viewmat(self, index: int) -> Tensor:
        return self.viewmats[index]
