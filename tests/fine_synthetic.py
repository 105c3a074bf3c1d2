"""A synthetic talking subject for fine-training tests: a static Gaussian head whose "mouth" Gaussians move
down and darken with a known per-frame audio signal, rendered under tracked poses, with audio features that
carry that signal in each frame's own steps, mouth masks where the mouth is, blink and landmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline import landmarks as lmk
from pipeline.gaussians import GaussianModel, random_gaussians, rasterize
from pipeline.audio import AudioStats
from pipeline.io import save_image, save_json, save_npy
from pipeline.parsing import FACE
from pipeline.paths import frame_name
from pipeline.split import train_test_split
from pipeline.train import LearningRates, head_box
from tests.train_synthetic import synthetic_cameras

CHANNELS, WINDOW = 6, 16
MOUTH_DROP = 0.012  # metres the mouth moves down at full signal


def speech_signal(n: int, seed: int) -> np.ndarray:
    """Syllable-like openness in [0, 1] per frame."""
    rng = np.random.default_rng(seed)
    raw = np.convolve(rng.uniform(0, 1, n + 4) ** 3, np.ones(3) / 3, mode="same")[2:n + 2]
    return np.clip(raw / raw.max(), 0, 1)


def features_from_signal(signal: np.ndarray, seed: int) -> np.ndarray:
    """[N, WINDOW, CHANNELS]: each window's steps carry the signal of the frame they belong to, plus noise."""
    n = len(signal)
    rng = np.random.default_rng(seed + 1)
    steps = np.repeat(np.pad(signal, (4, 5)), 2)  # 2 steps per frame, context padding of 4 frames
    windows = np.stack([steps[2 * i + 1:2 * i + 1 + WINDOW] for i in range(n)])  # own steps at 7, 8
    feats = windows[:, :, None] * np.linspace(1, -1, CHANNELS) + rng.normal(0, 0.05, (n, WINDOW, CHANNELS))
    return feats.astype(np.float32)


def mouth_gaussians(model: GaussianModel, shape: np.ndarray) -> torch.Tensor:
    """Indices of the Gaussians nearest the lower middle of the face (the synthetic 'mouth')."""
    centre = torch.tensor(shape[152] * 0.55, dtype=torch.float32)  # between the origin and the chin
    return torch.argsort((model.means - centre).norm(dim=1))[:25]


def make_fine_subject(root: Path, frames: int = 66, size: int = 48, seed: int = 0) -> dict[str, Path]:
    """Write every input of train_fine under ``root``; returns the paths (keys as pipeline.fine's CLI)."""
    root.mkdir(parents=True, exist_ok=True)
    landmarks, shape, w2c, K = synthetic_cameras(frames, size, seed)
    lo, hi = head_box(shape)
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    static = random_gaussians(300, tuple(centre - 0.6 * half), tuple(centre + 0.6 * half), sh_degree=0,
                              opacity=0.8, scale=0.01, generator=torch.Generator().manual_seed(seed))
    mouth = mouth_gaussians(static, shape)
    static.sh[mouth, 0] = torch.tensor([1.2, -1.2, -1.2])  # a red mouth
    static.means[mouth, 2] -= 0.02  # in front of the face
    signal = speech_signal(frames, seed)

    yy, xx = np.mgrid[0:size, 0:size] / size
    plate = np.stack([0.3 + 0.4 * xx, 0.5 + 0.2 * yy, 0.6 - 0.3 * xx * yy], -1)
    background = torch.tensor(plate, dtype=torch.float32)
    K_t = torch.tensor(K, dtype=torch.float32)
    for sub in ("head", "mouth_masks", "parsing"):
        (root / sub).mkdir(exist_ok=True)
    for i in range(frames):
        moved = static.map(lambda t: t.clone())
        moved.means[mouth, 1] += MOUTH_DROP * float(signal[i])
        moved.sh[mouth, 0] *= 1 - 0.8 * float(signal[i])
        g = moved.activated()
        viewmat = torch.tensor(w2c[i], dtype=torch.float32)[None]
        with torch.no_grad():
            out = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, viewmat, K_t[None], size, size,
                            sh_degree=0, backend="torch")
            mouth_out = rasterize(g.means[mouth], g.quats[mouth], g.scales[mouth] * 2, g.opacities[mouth],
                                  torch.ones(len(mouth), 1), viewmat, K_t[None], size, size, backend="torch")
        image = out.color[0] + background * (1 - out.alpha[0])
        save_image(root / "head" / frame_name(i, "png"), (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
        mask = (mouth_out.alpha[0, ..., 0] > 0.3).numpy()
        save_image(root / "mouth_masks" / frame_name(i, "png"), (mask * 255).astype(np.uint8))
        labels = (out.alpha[0, ..., 0] > 0.5).numpy().astype(np.uint8) * FACE
        save_image(root / "parsing" / frame_name(i, "png"), labels)
    save_image(root / "background.png", (plate * 255 + 0.5).astype(np.uint8))
    train, test = train_test_split(frames)
    save_json(root / "cameras.json", {"width": size, "height": size, "K": K.tolist(), "frame_count": frames,
                                      "world_to_camera": w2c.tolist(), "split": {"train": train, "test": test},
                                      "canonical_landmarks": shape.tolist()})
    # the face mesh sees the mouth open with the signal: each inner-lip pair 3·signal px further apart
    for a, b in lmk._APERTURE_PAIRS:
        upper, lower = lmk.LIPS_INNER[a], lmk.LIPS_INNER[b]
        gap = landmarks[:, lower, :2] - landmarks[:, upper, :2]
        landmarks[:, lower, :2] += 3.0 * signal[:, None] * gap / np.linalg.norm(gap, axis=1, keepdims=True)
    save_npy(root / "landmarks.npy", landmarks)
    save_npy(root / "blink.npy", np.ones(frames, np.float32))
    save_npy(root / "features.npy", features_from_signal(signal, seed))
    AudioStats(np.zeros(CHANNELS, np.float32), np.ones(CHANNELS, np.float32), "mel", WINDOW, 25.0, 16000
               ).save(root / "stats.npz")
    coarse = {"model": {k: t.detach() for k, t in static.tensors().items()},
              "config": {"sh_degree": 0, "lr": vars(LearningRates())}, "head_box": np.stack([lo, hi]),
              "scene_scale": float(np.linalg.norm(hi - lo) / 2)}
    torch.save(coarse, root / "coarse.pt")
    np.save(root / "signal.npy", signal)
    return {"coarse": root / "coarse.pt", "head": root / "head", "background": root / "background.png",
            "cameras": root / "cameras.json", "masks": root / "mouth_masks", "parsing": root / "parsing",
            "landmarks": root / "landmarks.npy",
            "blink": root / "blink.npy", "features": root / "features.npy", "stats": root / "stats.npz"}
