"""Benchmark detect_landmarks at 512x512: frames per second of MediaPipe face mesh (478 points, refined irises).

    python benchmarks/bench_landmarks.py [--media ../shared/media] [--repeat 2]

The development clips are decoded once to JPEG frame folders (not timed), as prepare_video leaves them; then
the stage's own path (prefetching JPEG decode + face mesh in video mode) is timed, and face mesh alone on
frames already in memory, for max_faces 2 (the default) and 1. Prints a markdown table.
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

from pipeline import landmarks
from pipeline.io import list_frames, save_image
from pipeline.media import iter_frames


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--media", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "media")
    parser.add_argument("--repeat", type=int, default=2, help="passes over the clips (first pass warms caches)")
    args = parser.parse_args()
    clips = sorted(args.media.glob("*.mp4"))
    if not clips:
        sys.exit(f"no clips in {args.media}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = []
        for clip in clips:
            folder = Path(tmp) / clip.stem
            for i, frame in enumerate(iter_frames(clip)):
                save_image(folder / f"{i:06d}.jpg", frame, quality=95)
            folders.append(folder)
        total = sum(len(list_frames(f)) for f in folders)
        for max_faces in (2, 1):
            config = landmarks.LandmarkConfig(max_faces=max_faces)
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                for folder in folders:
                    landmarks.detect_landmarks(list_frames(folder), config, source=str(folder))
                files_time = time.perf_counter() - t0
            frames = [np.asarray(f) for folder in folders for f in landmarks.read_frames(list_frames(folder))]
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                detector = landmarks.open_detector(config)
                # frames of different clips in one stream: the tracker re-detects at each cut, as in a real video
                landmarks.detect_frames(frames, detector)
                detector.close()
                memory_time = time.perf_counter() - t0
            rows.append((max_faces, files_time, memory_time))
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"detect_landmarks, {total} frames of {len(clips)} clips at 512x512, MediaPipe face mesh 478 points; "
          f"peak RSS {peak_mb:.0f} MB (includes the in-memory frames)")
    print()
    print("| max_faces | JPEG files -> landmarks (frames/s) | face mesh on decoded frames (frames/s) |")
    print("|---|---|---|")
    for max_faces, files_time, memory_time in rows:
        print(f"| {max_faces} | {total / files_time:.0f} | {total / memory_time:.0f} |")


if __name__ == "__main__":
    main()
