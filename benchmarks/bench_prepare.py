"""prepare_video: throughput and peak memory (process tree, ffmpeg included) against video length.

Run: python benchmarks/bench_prepare.py [--lengths 20 80 320] [--resolution 512]
Target (issue 2): peak memory < 500 MB whatever the length, for a 512² 25 fps video.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.memory import run_measured  # noqa: E402
from pipeline.demo import DemoConfig, generate  # noqa: E402
from pipeline.media import ffmpeg_binary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=float, nargs="+", default=[20, 80, 320], help="seconds")
    ap.add_argument("--resolution", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "demo", DemoConfig(duration=20.0))
        print("| video length (s) | frames | wall (s) | frames/s | peak RSS, tree (MB) |")
        print("|---|---|---|---|---|")
        for length in args.lengths:
            clip = tmp / f"clip_{int(length)}.mp4"
            loops = int(length // 20) - 1
            subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-stream_loop", str(loops), "-i",
                            str(tmp / "demo" / "video.mp4"), "-c", "copy", str(clip)], check=True)
            out = tmp / f"out_{int(length)}"
            wall, peak, status = run_measured(
                [sys.executable, "-m", "pipeline.video", "--video", str(clip), "--frames", str(out / "frames"),
                 "--audio", str(out / "audio.wav"), "--json", str(out / "video.json"),
                 "--resolution", str(args.resolution)],
                stderr=subprocess.DEVNULL)
            assert status == 0, f"prepare_video failed on {clip}"
            frames = len(list((out / "frames").iterdir()))
            print(f"| {length:g} | {frames} | {wall:.1f} | {frames / wall:.0f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
