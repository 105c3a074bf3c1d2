"""Face analysis: throughput and peak memory of detect_landmarks, parse_faces, dilate_mouth_masks,
extract_background and split_head_torso, each run through its CLI as Snakemake runs it.

Run: python benchmarks/bench_face_analysis.py [--clip PATH] [--lengths 100 200 400] [--threads 2]

Frames are a real 512² clip (../shared/media/hdtf_aoc_8s.mp4 by default), played forward and backward to
reach each length, written as JPEG like prepare_video. Per stage and length: wall time of the process
(interpreter start, imports and model loading included), frames/s, CPU time and peak RSS. The
marginal cost per frame is the slope between the shortest and the longest length, so start-up cancels out.
On a shared machine the CPU slope is the steadier figure: with 2 threads on 2 cores a stage cannot beat
CPU / 2. Targets: all five stages together >= 40 frames/s on 2 cores (marginal <= 25 ms/frame); peak
memory flat in video length and <= 2 GB.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.io import save_image, save_json  # noqa: E402
from pipeline.media import iter_frames  # noqa: E402

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
STAGES = ("detect_landmarks", "parse_faces", "dilate_mouth_masks", "extract_background", "split_head_torso")


def make_frames(clip: Path, out: Path, n: int) -> None:
    """``n`` frames of ``clip`` in ping-pong order as out/frames/%06d.jpg, and out/video.json."""
    frames = list(iter_frames(clip))  # a short development clip: a few hundred frames at most
    order = frames + frames[::-1]
    for i in range(n):
        save_image(out / "frames" / f"{i:06d}.jpg", order[i % len(order)], quality=95)
    save_json(out / "video.json", {"frame_count": n, "fps": 25.0, "resolution": frames[0].shape[0]})


def commands(d: Path, threads: int) -> dict[str, list[str]]:
    py = [sys.executable, "-m"]
    t = ["--threads", str(threads)]
    return {
        "detect_landmarks": py + ["pipeline.landmarks", "--frames", f"{d}/frames", "--video-json",
                                  f"{d}/video.json", "--out", f"{d}/landmarks.npy", "--face-found",
                                  f"{d}/face_found.npy"],
        "parse_faces": py + ["pipeline.parsing", "--frames", f"{d}/frames", "--landmarks",
                             f"{d}/landmarks.npy", "--out", f"{d}/parsing"] + t,
        "dilate_mouth_masks": py + ["pipeline.masks", "--parsing", f"{d}/parsing", "--landmarks",
                                    f"{d}/landmarks.npy", "--out", f"{d}/mouth_masks"] + t,
        "extract_background": py + ["pipeline.background", "plate", "--frames", f"{d}/frames", "--parsing",
                                    f"{d}/parsing", "--out", f"{d}/background.png"] + t,
        "split_head_torso": py + ["pipeline.background", "split", "--frames", f"{d}/frames", "--parsing",
                                  f"{d}/parsing", "--background", f"{d}/background.png", "--landmarks",
                                  f"{d}/landmarks.npy", "--head-out", f"{d}/head", "--torso-out",
                                  f"{d}/torso", "--blink-out", f"{d}/blink.npy", "--mouth-masks",
                                  f"{d}/mouth_masks", "--qc", f"{d}/qc/face_analysis.png"] + t,
    }


# Runs one stage as its only child, then reports the kernel's accounting of that child: wall seconds, CPU
# seconds (all threads) and peak RSS (high-water mark, exact where sampling could miss a short peak).
_WRAPPER = """
import resource, subprocess, sys, time
start = time.perf_counter()
status = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(status, time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024)
"""


def run_stage(cmd: list[str]) -> tuple[int, float, float, float]:
    """(exit status, wall s, CPU s, peak RSS MB) of ``cmd``."""
    out = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True, text=True, check=True)
    status, wall, cpu, peak = out.stdout.split()
    return int(status), float(wall), float(cpu), float(peak)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clip", type=Path, default=MEDIA / "hdtf_aoc_8s.mp4")
    ap.add_argument("--lengths", type=int, nargs="+", default=[100, 200, 400], help="frames")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not args.clip.is_file():
        sys.exit(f"{args.clip}: clip not found (pass --clip PATH to a 512x512 talking-head video)")
    lengths = sorted(args.lengths)
    if len(lengths) < 2:
        sys.exit("give at least two lengths (the marginal cost is a slope)")
    wall: dict[tuple[str, int], float] = {}
    cpu: dict[tuple[str, int], float] = {}
    peak: dict[tuple[str, int], float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in lengths:
            d = Path(tmp) / f"n{n}"
            make_frames(args.clip, d, n)
            for stage, cmd in commands(d, args.threads).items():
                status, wall[stage, n], cpu[stage, n], peak[stage, n] = run_stage(cmd)
                if status != 0:
                    sys.exit(f"{stage} failed on {n} frames: {' '.join(cmd)}")

    short, long_ = lengths[0], lengths[-1]

    def slope(table: dict[tuple[str, int], float], stage: str) -> float:
        return (table[stage, long_] - table[stage, short]) / (long_ - short) * 1000

    print(f"clip {args.clip.name}, {args.threads} threads per stage, {os.cpu_count()} CPUs\n")
    print("Per length: process wall time (start-up included) / frames per second / CPU seconds / "
          "peak RSS MB.")
    print(f"Marginal: slope from {short} to {long_} frames (start-up cancels), wall and CPU ms per frame.\n")
    print("| stage | " + " | ".join(f"{n} frames" for n in lengths)
          + " | marginal wall ms/fr | marginal CPU ms/fr | frames/s (marginal wall) |")
    print("|---|" + "---|" * (len(lengths) + 3))
    rows = list(STAGES) + ["all five", "four after landmarks"]
    groups = {"all five": STAGES, "four after landmarks": STAGES[1:]}
    for row in rows:
        members = groups.get(row, (row,))
        cells = []
        for n in lengths:
            w = sum(wall[s, n] for s in members)
            c = sum(cpu[s, n] for s in members)
            p = max(peak[s, n] for s in members)
            cells.append(f"{w:.2f} s / {n / w:.0f} / {c:.2f} s / {p:.0f}")
        mw = sum(slope(wall, s) for s in members)
        mc = sum(slope(cpu, s) for s in members)
        name = f"**{row}**" if row in groups else row
        print(f"| {name} | {' | '.join(cells)} | {mw:.1f} | {mc:.1f} | {1000 / mw:.0f} |")
    print(f"\npeak RSS growth {short} -> {long_} frames (MB): "
          + ", ".join(f"{s} {peak[s, long_] - peak[s, short]:+.0f}" for s in STAGES))


if __name__ == "__main__":
    main()
