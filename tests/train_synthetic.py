"""A synthetic subject for training tests: head frames rendered from known Gaussians under tracked poses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.gaussians import random_gaussians, rasterize
from pipeline.io import save_image, save_json
from pipeline.paths import frame_name
from pipeline.tracking import synthetic_track, train_test_split
from pipeline.train import head_box


def synthetic_cameras(frames: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A tracked synthetic face: (landmarks [N,478,3] px, canonical shape [478,3], world-to-camera [N,4,4],
    K [3,3])."""
    landmarks, truth = synthetic_track(frames, size=size, focal=2.2 * size, noise_px=0.0, seed=seed)
    w2c = np.tile(np.eye(4), (frames, 1, 1))
    w2c[:, :3, :3] = truth["rotations"]
    w2c[:, :3, 3] = truth["translations"]
    K = np.array([[2.2 * size, 0, size / 2], [0, 2.2 * size, size / 2], [0, 0, 1.0]])
    return landmarks, truth["shape"], w2c, K


def make_synthetic_subject(root: Path, frames: int = 22, size: int = 64, gaussians: int = 150, seed: int = 0
                           ) -> dict[str, Path]:
    """Write head/, background.png and cameras.json under ``root``; return their paths."""
    _, shape, w2c, K = synthetic_cameras(frames, size, seed)

    lo, hi = head_box(shape)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    gen = torch.Generator().manual_seed(seed)
    model = random_gaussians(gaussians, tuple(centre - 0.6 * half), tuple(centre + 0.6 * half), sh_degree=0,
                             opacity=0.7, scale=0.012, generator=gen)
    g = model.activated()
    yy, xx = np.mgrid[0:size, 0:size] / size
    plate = np.stack([0.3 + 0.4 * xx, 0.5 + 0.2 * yy, 0.6 - 0.3 * xx * yy], -1)
    background = torch.tensor(plate, dtype=torch.float32)

    head = root / "head"
    head.mkdir(parents=True, exist_ok=True)
    viewmats = torch.tensor(w2c, dtype=torch.float32)
    Ks = torch.tensor(K, dtype=torch.float32).expand(frames, 3, 3)
    with torch.no_grad():
        out = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, viewmats, Ks, size, size, sh_degree=0,
                        backend="torch")
        images = out.color + background * (1 - out.alpha)
    for i in range(frames):
        save_image(head / frame_name(i, "png"), (images[i].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    save_image(root / "background.png", (plate * 255 + 0.5).astype(np.uint8))
    train, test = train_test_split(frames)
    save_json(root / "cameras.json", {"width": size, "height": size, "K": K.tolist(), "frame_count": frames,
                                      "world_to_camera": w2c.tolist(), "split": {"train": train, "test": test},
                                      "canonical_landmarks": shape.tolist()})
    return {"head": head, "background": root / "background.png", "cameras": root / "cameras.json"}
