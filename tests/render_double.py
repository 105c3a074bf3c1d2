"""A test double of the fine model (``TalkingHead``) and a synthetic subject to render it on.

The double is a face-sized Gaussian ellipsoid with a dark mouth Gaussian whose height follows a one-number
audio code (the loudness of each frame's own feature steps), rendered with the project's rasterizer: enough
to check that rendering puts each frame's code, pose and torso where they belong, with no trained model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from pipeline.audio import AudioFeatureConfig, extract_audio_features
from pipeline.demo import DemoConfig, syllable_envelope, synthesize_speech
from pipeline.gaussians import rasterize
from pipeline.io import load_rgb, save_image, save_npy
from pipeline.media import write_wav
from pipeline.parsing import HAIR, NECK, TORSO
from pipeline.paths import SubjectPaths, frame_name
from tests.train_synthetic import make_synthetic_subject

SKIN = (0.85, 0.65, 0.55)
MOUTH = (0.1, 0.02, 0.02)
#: A tuft of hair in the top-left corner of every source frame (rows, columns), beside the double's head, which
#: never covers it: its colour is (250, tuft_green(i), 250) in frame i, so a test can tell which frame shows.
TUFT = (slice(4, 14), slice(2, 16))


def tuft_green(frame: int) -> int:
    return 250 - 5 * frame


class MouthDouble:
    extractor = "mel"

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.calls: list[float | None] = []

    def audio_codes(self, features: Tensor | np.ndarray) -> Tensor:
        features = torch.as_tensor(np.array(features, dtype=np.float32))
        w = features.shape[1]
        own = features[:, w // 2 - 1:w // 2 + 1].mean(dim=(1, 2))
        return ((own + 1.5) / 3).clamp(0, 1)[:, None]

    def render(self, code: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int, blink: float | None = None,
               backend: str = "auto") -> tuple[Tensor, Tensor]:
        self.calls.append(blink)
        d = self.device
        means = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.05, -0.07]], device=d)
        scales = torch.stack([torch.tensor([0.07, 0.09, 0.03], device=d),
                              torch.stack([torch.tensor(0.022, device=d), 0.002 + 0.016 * code[0],
                                           torch.tensor(0.004, device=d)])])
        quats = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], device=d)
        opacities = torch.tensor([0.99, 0.99], device=d)
        colours = torch.tensor([SKIN, MOUTH], device=d)
        out = rasterize(means, quats, scales, opacities, colours, viewmat[None], K[None], width, height,
                        backend=backend)
        return out.color[0], out.alpha[0]


def speech(duration: float, seed: int) -> np.ndarray:
    cfg = DemoConfig(duration=duration, seed=seed)
    rng = np.random.default_rng(seed)
    return synthesize_speech(cfg, *syllable_envelope(cfg, rng), rng)


def make_render_subject(results: Path, name: str = "synth", frames: int = 22, size: int = 64) -> SubjectPaths:
    """A subject with what rendering reads: cameras.json, background.png, frames/ and parsing/ (the torso and
    a :data:`TUFT` of hair), torso/, blink.npy, audio.wav and mel features with their statistics (no model:
    render tests pass a :class:`MouthDouble`)."""
    paths = SubjectPaths.of(results, name)
    made = make_synthetic_subject(paths.root, frames=frames, size=size)  # head/, background.png, cameras.json
    for folder in (paths.torso, paths.frames, paths.parsing):
        folder.mkdir(parents=True, exist_ok=True)
    shoulders = np.s_[size - size // 6:, :]
    neck = np.s_[size - size // 4:, size // 2 - size // 10:size // 2 + size // 10]
    plate = load_rgb(made["background"])
    for i in range(frames):
        torso = np.zeros((size, size, 4), np.uint8)
        torso[shoulders] = (40, 120, 40, 255)
        torso[neck] = (200, 150, 120, 255)
        save_image(paths.torso / frame_name(i, "png"), torso)
        labels = np.zeros((size, size), np.uint8)
        labels[neck], labels[shoulders], labels[TUFT] = NECK, TORSO, HAIR
        save_image(paths.parsing / frame_name(i, "png"), labels)
        frame = plate.copy()  # the parsing has no head (the double renders one): the rest is background
        frame[TUFT] = (250, tuft_green(i), 250)
        frame[labels == NECK], frame[labels == TORSO] = (200, 150, 120), (40, 120, 40)
        save_image(paths.frames / frame_name(i, "jpg"), frame)
    save_npy(paths.blink, np.linspace(0.2, 1.0, frames).astype(np.float32))
    samples = speech(frames / 25, seed=3)
    write_wav(paths.audio_wav, samples, 16000)
    config = AudioFeatureConfig()
    features, stats = extract_audio_features(samples, frames, config)
    save_npy(paths.audio_features("mel"), features)
    stats.save(paths.audio_stats("mel"))
    return paths
