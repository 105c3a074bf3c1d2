"""Benchmark train_fine on a preprocessed subject with a coarse model (default: the demo at results/demo).

    snakemake --cores 2 --until train_coarse extract_audio_features     # once, to have the inputs
    python benchmarks/bench_fine.py [--subject results/demo] [--preset cpu] [--resolution 128] [--threads 1]
                                    [--iterations 300] [--busy 1] [--settings '{"dynamic_splatting": false}']

Runs the stage's CLI with the preset's fine settings (config/config.yaml merged as the workflow does, then
``--settings`` on top) and prints a markdown row: settings, iterations/s (from the training log, start-up and
evaluation excluded), test PSNR, mouth-mask PSNR, Gaussians and peak memory (RSS of the process tree).
``--busy N`` keeps N other processes spinning on the CPU meanwhile, to measure training under contention.
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import preset_settings  # noqa: E402
from benchmarks.memory import run_measured  # noqa: E402


def _spin() -> None:
    while True:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--subject", type=Path, default=ROOT / "results" / "demo")
    parser.add_argument("--preset", default="cpu", choices=("cpu", "default"))
    parser.add_argument("--resolution", type=int, default=None, help="training size (default: the preset's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int, default=None, help="override the preset's iteration count")
    parser.add_argument("--settings", default="{}", help="JSON merged over the fine settings")
    parser.add_argument("--extractor", default="mel")
    parser.add_argument("--busy", type=int, default=0, help="CPU-spinning processes running meanwhile")
    args = parser.parse_args()

    settings = preset_settings(args.preset, "fine")
    settings.update(json.loads(args.settings))
    if args.iterations:
        settings["iterations"] = args.iterations
    if args.resolution:
        settings["resolution"] = args.resolution
    s = args.subject
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    for p in spinners:
        p.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            cmd = [sys.executable, "-m", "pipeline.fine", "--coarse", str(s / "gaussians" / "coarse.pt"),
                   "--head", str(s / "head"), "--background", str(s / "background.png"),
                   "--cameras", str(s / "cameras.json"), "--masks", str(s / "mouth_masks"),
                   "--parsing", str(s / "parsing"),
                   "--landmarks", str(s / "landmarks.npy"), "--blink", str(s / "blink.npy"),
                   "--features", str(s / "audio_features" / f"{args.extractor}.npy"),
                   "--stats", str(s / "audio_features" / f"{args.extractor}_stats.npz"),
                   "--extractor", args.extractor, "--settings", json.dumps(settings), "--out", str(out / "fine.pt"),
                   "--log-csv", str(out / "log.csv"), "--device", args.device, "--threads", str(args.threads)]
            with (out / "stderr.log").open("w") as err:
                wall, peak_mb, status = run_measured(cmd, cwd=ROOT, stderr=err)
            if status != 0:
                sys.exit(f"train_fine failed:\n{(out / 'stderr.log').read_text()[-3000:]}")
            with (out / "log.csv").open() as fh:
                rows = list(csv.DictReader(fh))
            saved = torch.load(out / "fine.pt", weights_only=False)
    finally:
        for p in spinners:
            p.terminate()
    first, last = rows[0], rows[-1]
    rate = (int(last["iteration"]) - int(first["iteration"])) / (float(last["seconds"]) - float(first["seconds"]))
    size = saved["train_size"]
    print(f"| {s.name} | {args.preset} | {size[0]}² | {json.loads(args.settings) or '-'} | {args.threads} | "
          f"{args.busy} | {settings['iterations']} | {wall:.0f} s | {rate:.2f} | {saved['test']['psnr']:.2f} | "
          f"{saved['test']['mouth_psnr']:.2f} | {last['gaussians']} | {peak_mb:.0f} MB |")


if __name__ == "__main__":
    main()
