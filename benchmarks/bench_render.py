"""Benchmark rendering: head + composite frames/s (excluding decoding and encoding) and memory vs audio length.

    python benchmarks/bench_render.py [--subject results/demo] [--model results/demo/model/fine.pt]
        [--sizes 256 512] [--frames 200] [--threads 2] [--device auto] [--backend auto] [--memory 60 300]

Speed: the fine model renders ``--frames`` frames of synthetic speech in ping-pong order at each output size
(intrinsics scaled, whatever the training size) and composites them over torso and plate; frames are
dropped, not encoded. Memory: the user command renders ``--memory`` seconds of synthetic speech each (at the
first size) through ffmpeg, peak RSS summed over the process tree; flat means the same peak for 1 and 5 min.
Prints markdown rows for BENCHMARKS.md. Needs a trained subject (fine.pt of train_fine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.memory import run_measured  # noqa: E402
from pipeline.audio import AudioStats  # noqa: E402
from pipeline.demo import DemoConfig, syllable_envelope, synthesize_speech  # noqa: E402
from pipeline.media import write_wav  # noqa: E402
from pipeline.paths import SubjectPaths  # noqa: E402
from pipeline.render import (RenderConfig, RenderStats, Scene, features_for, load_model, pingpong,  # noqa: E402
                             render_frames)
from pipeline.train import pick_device  # noqa: E402


def speech(seconds: float, seed: int = 11) -> np.ndarray:
    cfg = DemoConfig(duration=seconds, seed=seed)
    rng = np.random.default_rng(seed)
    return synthesize_speech(cfg, *syllable_envelope(cfg, rng), rng)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--subject", type=Path, default=ROOT / "results" / "demo")
    p.add_argument("--model", type=Path, default=None, help="fine.pt (default: the subject's)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--backend", default="auto")
    p.add_argument("--memory", type=float, nargs="*", default=[60.0, 300.0], help="audio seconds per memory run")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    paths = SubjectPaths(args.subject)
    device = pick_device(args.device)
    model = load_model(args.model or paths.fine_pt, device)
    stats = AudioStats.load(paths.audio_stats(model.extractor))
    features = features_for(speech(args.frames / 25 + 0.5), stats, None)[:args.frames]
    codes = model.audio_codes(torch.from_numpy(features).to(device))
    print("| size | device | backend | frames | head + composite frames/s |")
    print("|---|---|---|---|---|")
    for size in args.sizes:
        scene = Scene(paths, size, device)
        config = RenderConfig(backend=args.backend)
        schedule = pingpong(len(codes), scene.cameras.train)
        warm = RenderStats()
        for _ in render_frames(model, codes[:5], schedule[:5], scene, config, warm, args.threads):
            pass
        timed = RenderStats()
        for _ in render_frames(model, codes, schedule, scene, config, timed, args.threads):
            pass
        print(f"| {size}² | {device} | {args.backend} | {timed.frames} | {timed.render_fps:.1f} |", flush=True)
    if not args.memory:
        return
    print("\n| audio | size | wall s | peak memory MB |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.memory:
            wav = Path(tmp) / f"speech_{seconds:g}.wav"
            write_wav(wav, speech(seconds), 16000)
            out = Path(tmp) / f"speech_{seconds:g}.mp4"
            cmd = [sys.executable, "-m", "pipeline.render", "--subject-dir", str(args.subject), "--audio", str(wav),
                   "--out", str(out), "--settings", json.dumps({"resolution": args.sizes[0],
                                                                 "backend": args.backend}),
                   "--device", args.device, "--threads", str(args.threads)]
            wall, peak, status = run_measured(cmd, cwd=ROOT)
            if status != 0:
                raise SystemExit(f"render failed ({status}): {' '.join(cmd)}")
            print(f"| {seconds:g} s | {args.sizes[0]}² | {wall:.0f} | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
