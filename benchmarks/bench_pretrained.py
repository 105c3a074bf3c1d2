"""Benchmark the pretrained networks on CPU: audio extractors per minute of audio, LPIPS per image.

    python benchmarks/bench_pretrained.py [--threads 2] [--audio ../shared/media/speech_eng_60s.wav]

Prints two markdown tables: (1) each audio extractor on the clip (load once, then features of the whole clip,
normalisation included), seconds per minute of audio; (2) LPIPS AlexNet at 128² and 512², forward only and
forward + backward (gradient to the first image), median of repeated runs, milliseconds per image.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.audio import AudioFeatureConfig, extract_audio_features, frame_count, load_speech_encoder  # noqa: E402
from pipeline.lpips import load_lpips  # noqa: E402
from pipeline.media import decode_audio  # noqa: E402


def bench_extractors(audio: Path, threads: int) -> None:
    samples = decode_audio(audio, 16000)
    minutes = samples.shape[0] / 16000 / 60
    print(f"\n{audio.name}: {samples.shape[0] / 16000:.1f} s, {threads} threads\n")
    print("| extractor | channels | load s | extract s | s per minute of audio |")
    print("|---|---|---|---|---|")
    for extractor in ("mel", "whisper", "ppg"):
        config = AudioFeatureConfig(extractor=extractor, threads=threads)
        t0 = time.perf_counter()
        encoder = None if extractor == "mel" else load_speech_encoder(config)
        load = time.perf_counter() - t0
        t0 = time.perf_counter()
        features, _ = extract_audio_features(samples, frame_count(samples.shape[0], config), config, encoder=encoder)
        extract = time.perf_counter() - t0
        print(f"| {extractor} | {features.shape[2]} | {load:.2f} | {extract:.2f} | {extract / minutes:.2f} |")


def _median_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def bench_lpips(threads: int) -> None:
    model = load_lpips()
    print(f"\nLPIPS AlexNet, batch 1, {threads} threads\n")
    print("| size | forward ms | forward + backward ms |")
    print("|---|---|---|")
    for size, repeats in ((128, 30), (512, 10)):
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, 3, size, size, generator=gen)
        y = torch.rand(1, 3, size, size, generator=gen)

        def forward():
            with torch.no_grad():
                model(x, y)

        def backward():
            xg = x.clone().requires_grad_(True)
            model(xg, y).sum().backward()

        print(f"| {size}² | {_median_ms(forward, repeats):.1f} | {_median_ms(backward, repeats):.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--audio", type=Path, default=ROOT.parent / "shared" / "media" / "speech_eng_60s.wav")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bench_extractors(args.audio, args.threads)
    bench_lpips(args.threads)


if __name__ == "__main__":
    main()
