"""Rendering figures of a trained demo subject (after the README's main command):

    python benchmarks/bench_render_demo.py [--workdir .]

* the driven render of resources/demo/drive.wav through the user command (``python -m pipeline.render``):
  its duration against the audio's, whether it has an audio stream, and the correlation of its mouth aperture
  (face mesh on the video) with the aperture signal the demo generator derives from that audio;
* plate between head and torso: on the test split, the fraction of the real frame's person pixels (parsing
  label not background) that the composite fills with the background plate (plate weight > 0.5), over the
  whole person mask (``plate leak``) and over its interior, the mask eroded by 0.8% of the frame side (2 px
  at 256², about the parsing outline's own accuracy: ``plate leak interior``). A rendered head one pixel
  narrower than the parsing's outline shows the plate beside the real background, not between head and
  torso; the interior figure counts only the latter.
Prints one JSON line. ``--subject-dir`` measures the plate figures of any trained subject.
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
from scipy import ndimage

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


def plate_leak(subject: SubjectPaths) -> dict[str, float]:
    """Share of person pixels the composite fills with the plate on the test split: the whole mask, its interior."""
    device = torch.device("cpu")
    model = load_model(subject.fine_pt, device)
    scene = Scene(subject, None, device)
    codes = model.audio_codes(torch.from_numpy(np.load(subject.audio_features(model.extractor))))
    maps = list_frames(subject.parsing, ext="png")
    seam = RenderConfig().seam
    margin = max(1, round(0.008 * scene.height))
    leaked, person = np.zeros(2), np.zeros(2)
    with torch.inference_mode():
        for i in scene.cameras.test:
            rgb, alpha = model.render(codes[i], scene.viewmats[i], scene.K, scene.width, scene.height,
                                      blink=float(scene.blink[i]))
            torso, outline = (torch.from_numpy(layer) for layer in scene.layers(i, seam))
            result = composite(rgb, alpha, torso, scene.plate, seam, outline)
            plate = (result.plate_weight > 0.5).numpy()
            mask = load_labels(maps[i], (scene.height, scene.width)) != BACKGROUND
            for k, inside in enumerate((mask, ndimage.binary_erosion(mask, iterations=margin))):
                leaked[k] += int(plate[inside].sum())
                person[k] += int(inside.sum())
    return {"plate leak": round(leaked[0] / person[0], 4), "plate leak interior": round(leaked[1] / person[1], 4)}


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
           **plate_leak(demo)}
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", type=Path, default=ROOT)
    p.add_argument("--subject-dir", type=Path, default=None, help="only the plate figures of this trained subject")
    args = p.parse_args()
    row = plate_leak(SubjectPaths(args.subject_dir)) if args.subject_dir else measure(args.workdir)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
