"""Rendering figures of a trained demo subject (after the README's main command):

    python benchmarks/bench_render_demo.py [--workdir .]

* the driven render of resources/demo/drive.wav through the user command (``python -m pipeline.render``):
  its duration against the audio's, whether it has an audio stream, and the correlation of its mouth aperture
  (face mesh on the video) with the aperture signal the demo generator derives from that audio;
* plate between head and torso: on the test split, the fraction of the real frame's person pixels (parsing
  label not background) that the composite fills with the background plate (plate weight > 0.5).
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import render  # noqa: E402
from pipeline.composite import composite  # noqa: E402
from pipeline.demo import DemoConfig, frame_openness, syllable_envelope  # noqa: E402
from pipeline.evaluate import video_aperture  # noqa: E402
from pipeline.io import list_frames  # noqa: E402
from pipeline.media import decode_audio, probe  # noqa: E402
from pipeline.parsing import BACKGROUND, load_labels  # noqa: E402
from pipeline.paths import SubjectPaths  # noqa: E402
from pipeline.render import RenderConfig, Scene, load_model  # noqa: E402


def drive_openness(cfg: DemoConfig) -> np.ndarray:
    """The aperture signal the demo generator derives from drive.wav (see pipeline.demo.generate)."""
    drive_cfg = replace(cfg, duration=cfg.drive_duration, seed=cfg.seed + 1)
    env, _ = syllable_envelope(drive_cfg, np.random.default_rng(drive_cfg.seed))
    return frame_openness(env, drive_cfg)


def plate_leak(demo: SubjectPaths) -> float:
    device = torch.device("cpu")
    model = load_model(demo.fine_pt, device)
    scene = Scene(demo, None, device)
    codes = model.audio_codes(torch.from_numpy(np.load(demo.audio_features(model.extractor))))
    maps = list_frames(demo.parsing, ext="png")
    seam = RenderConfig().seam
    leaked = person = 0
    with torch.inference_mode():
        for i in scene.cameras.test:
            rgb, alpha = model.render(codes[i], scene.viewmats[i], scene.K, scene.width, scene.height,
                                      blink=float(scene.blink[i]))
            result = composite(rgb, alpha, torch.from_numpy(scene.torso(i)), scene.plate, seam)
            inside = torch.from_numpy(load_labels(maps[i], (scene.height, scene.width)) != BACKGROUND)
            leaked += int((result.plate_weight[inside] > 0.5).sum())
            person += int(inside.sum())
    return leaked / person


def measure(workdir: Path) -> dict:
    """The row of the demo trained in ``workdir`` (its results/demo and resources/demo/drive.wav)."""
    demo = SubjectPaths(workdir / "results" / "demo")
    drive = workdir / "resources" / "demo" / "drive.wav"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "drive.mp4"
        if render.main(["--subject-dir", str(demo.root), "--audio", str(drive), "--out", str(out)]) != 0:
            raise RuntimeError("render failed")
        info = probe(out)
        mouth, _ = video_aperture(out)
    truth = drive_openness(DemoConfig())  # the shipped config's demo settings
    n = min(len(mouth), len(truth))
    found = np.isfinite(mouth[:n])
    row = {"video s": round(info.duration, 3), "audio s": round(len(decode_audio(drive)) / 16000, 3),
           "has audio": info.has_audio, "faces found": round(float(found.mean()), 3),
           "drive aperture r": round(float(np.corrcoef(mouth[:n][found], truth[:n][found])[0, 1]), 3),
           "plate leak": round(plate_leak(demo), 4)}
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", type=Path, default=ROOT)
    args = p.parse_args()
    print(json.dumps(measure(args.workdir)))


if __name__ == "__main__":
    main()
