"""Benchmark track_head_pose on a synthetic 5-minute (7,500-frame, 25 fps) landmark track.

    python benchmarks/bench_tracking.py [--frames 7500] [--threads 1 2]

Prints a markdown table: wall time of the fit (closed-form start, focal search, joint L-BFGS fit,
triangulation), of the quality figures and of writing cameras.json, plus the accuracy against the known
ground truth and the process's peak memory.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import tracking
from pipeline.io import save_json


def relative_rotation_error_deg(fit: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Angle between fitted and true rotations relative to frame 0 (independent of the head-frame gauge)."""
    rel_fit = fit @ fit[0].T
    rel_true = truth @ truth[0].T
    d = np.einsum("nij,nkj->nik", rel_true, rel_fit)
    return np.degrees(np.arccos(np.clip((np.trace(d, axis1=1, axis2=2) - 1) / 2, -1, 1)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=7500)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    landmarks, truth = tracking.synthetic_track(args.frames, seed=1)
    rows = []
    for threads in args.threads:
        t0 = time.perf_counter()
        track = tracking.fit_head_pose(landmarks, 512, 512, tracking.TrackingConfig(threads=threads))
        t1 = time.perf_counter()
        quality = tracking.tracking_quality(track, landmarks)
        t2 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            save_json(Path(tmp) / "cameras.json", tracking.cameras_document(track, quality, tracking.TrackingConfig()))
        t3 = time.perf_counter()
        err = relative_rotation_error_deg(track.rotations, truth["rotations"])
        rows.append((threads, t1 - t0, t2 - t1, t3 - t2, t3 - t0, err.max(), abs(track.focal / truth["focal"] - 1)))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"track_head_pose, synthetic track of {args.frames} frames ({args.frames / 25 / 60:.1f} min at 25 fps), "
          f"478 landmarks, 512x512; peak RSS {peak_mb:.0f} MB")
    print()
    print("| torch threads | fit (s) | quality (s) | write json (s) | total (s) | frames/s | max rotation error (deg) "
          "| focal error |")
    print("|---|---|---|---|---|---|---|---|")
    for threads, fit, qual, write, total, rot, foc in rows:
        print(f"| {threads} | {fit:.1f} | {qual:.1f} | {write:.1f} | {total:.1f} | {args.frames / total:.0f} | "
              f"{rot:.2f} | {100 * foc:.1f}% |")


if __name__ == "__main__":
    main()
