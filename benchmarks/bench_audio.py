"""Benchmark extract_audio_features (mel): decode + features of 5 minutes of speech, per input format.

Run: ``python benchmarks/bench_audio.py [--minutes 5] [--repeats 3] [--cores 2]``. Prints a markdown table.
The speech is /work/shared/media/speech_radio_16k.wav (relative to the repo: ../shared/media) tiled to
length, or synthesised speech-like audio when that file is absent. A short warm-up call (imports, librosa
filter set-up) is excluded. Times are the median of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.audio import AudioFeatureConfig, decode, extract_audio_features, frame_count
from pipeline.media import ffmpeg_binary

SPEECH = Path(__file__).resolve().parents[2] / "shared" / "media" / "speech_radio_16k.wav"
SR = 16000


def speech(seconds: float) -> tuple[np.ndarray, str]:
    n = int(seconds * SR)
    if SPEECH.exists():
        import soundfile as sf

        x, sr = sf.read(SPEECH, dtype="float32", always_2d=True)
        assert sr == SR
        return np.resize(x.mean(axis=1), n), f"{SPEECH.name} tiled"
    # voiced source (120-180 Hz glottal pulses) through three formant resonators, 4 Hz syllable envelope
    from scipy.signal import lfilter

    t = np.arange(n) / SR
    f0 = 150 + 30 * np.sin(2 * np.pi * 0.5 * t)
    source = (np.diff(np.floor(np.cumsum(f0) / SR), prepend=0) > 0).astype(np.float64)
    voice = source
    for formant, bw in ((700, 80), (1200, 90), (2600, 120)):
        r = np.exp(-np.pi * bw / SR)
        voice = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * formant / SR), r * r], voice)
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 2
    x = voice * envelope
    return (0.5 * x / np.abs(x).max()).astype(np.float32), "synthetic speech-like"


def write_inputs(x: np.ndarray, directory: Path) -> list[tuple[str, Path]]:
    import librosa
    import soundfile as sf

    wav16 = directory / "speech_16k_mono.wav"
    sf.write(wav16, x, SR, subtype="PCM_16")
    y = librosa.resample(x, orig_sr=SR, target_sr=44100, res_type="soxr_hq")
    wav44 = directory / "speech_44k_stereo.wav"
    sf.write(wav44, np.stack([y, y], axis=1), 44100, subtype="PCM_16")
    m4a = directory / "speech_48k_stereo.m4a"
    mp3 = directory / "speech_44k_stereo.mp3"
    for out, codec in ((m4a, ["-ar", "48000", "-c:a", "aac", "-b:a", "128k"]), (mp3, ["-c:a", "libmp3lame"])):
        subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-i", str(wav44), *codec, str(out)], check=True)
    return [("wav 16 kHz mono", wav16), ("wav 44.1 kHz stereo", wav44), ("m4a (AAC) 48 kHz stereo", m4a),
            ("mp3 44.1 kHz stereo", mp3)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2, help="pin the process (and ffmpeg) to this many cores")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cores])
    config = AudioFeatureConfig()
    x, source = speech(args.minutes * 60)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = write_inputs(x, Path(tmp))
        extract_audio_features(decode(inputs[0][1], config)[: 2 * SR], 50, config)  # warm-up
        rows = []
        for name, path in inputs:
            decode_s, feat_s = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                samples = decode(path, config)
                t1 = time.perf_counter()
                features, _ = extract_audio_features(samples, frame_count(len(samples), config), config)
                t2 = time.perf_counter()
                decode_s.append(t1 - t0)
                feat_s.append(t2 - t1)
            d, f = statistics.median(decode_s), statistics.median(feat_s)
            rows.append(f"| {name} | {d:.2f} | {f:.2f} | {d + f:.2f} | {features.shape[0]} | "
                        f"{len(samples) / SR / (d + f):.0f}x |")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"extract_audio_features, mel, {args.minutes:g} min of {source}, {cores} cores, "
          f"median of {args.repeats}; features [N, 16, 80] float32\n")
    print("| input | decode s | features s | total s | frames N | real time |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS of the benchmark process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
