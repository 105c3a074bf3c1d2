"""Benchmark train_coarse on a preprocessed subject (default: the demo at results/demo).

    snakemake --cores 2 --until track_head_pose split_head_torso     # once, to have the inputs
    python benchmarks/bench_train.py [--subject results/demo] [--preset cpu] [--threads 2] [--device cpu]
                                     [--iterations N] [--perceptual lpips|dssim]

Runs the stage's CLI with the preset's coarse settings (config/config.yaml merged as the workflow does) and
prints a markdown row: iterations, training size, wall time, iterations/s, final Gaussian count, test PSNR
and peak memory (RSS summed over the process tree).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import preset_settings  # noqa: E402
from benchmarks.memory import run_measured  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subject", type=Path, default=ROOT / "results" / "demo")
    parser.add_argument("--preset", default="cpu", choices=("cpu", "default"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int, default=None, help="override the preset's iteration count")
    parser.add_argument("--perceptual", choices=("lpips", "dssim"), default=None, help="override the loss term")
    args = parser.parse_args()

    settings = preset_settings(args.preset, "coarse")
    if args.iterations:
        settings["iterations"] = args.iterations
    if args.perceptual:
        settings["perceptual"] = args.perceptual
    subject = args.subject
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        cmd = [sys.executable, "-m", "pipeline.train", "coarse", "--head", str(subject / "head"),
               "--background", str(subject / "background.png"), "--cameras", str(subject / "cameras.json"),
               "--settings", json.dumps(settings), "--out-ply", str(out / "coarse.ply"),
               "--out-pt", str(out / "coarse.pt"), "--log-csv", str(out / "log.csv"),
               "--device", args.device, "--threads", str(args.threads)]
        with (out / "stderr.log").open("w") as err:
            wall, peak_mb, status = run_measured(cmd, cwd=ROOT, stderr=err)
        log = (out / "stderr.log").read_text()
        if status != 0:
            sys.exit(f"train_coarse failed:\n{log[-3000:]}")
        with (out / "log.csv").open() as fh:
            last = list(csv.DictReader(fh))[-1]
    found = re.search(r"training frames at (\d+)x(\d+) on (\S+),", log)
    psnr = re.search(r"test PSNR ([\d.]+) dB", log)
    iterations = settings["iterations"]
    print("| preset | iterations | size | device | wall s | it/s | Gaussians | test PSNR dB | peak MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    preset = f"{args.preset} ({settings['perceptual']})"
    print(f"| {preset} | {iterations} | {found[1]}² | {found[3]}, {args.threads} threads | {wall:.0f} | "
          f"{iterations / wall:.1f} | {last['gaussians']} | {psnr[1]} | {peak_mb:.0f} |")


if __name__ == "__main__":
    main()
