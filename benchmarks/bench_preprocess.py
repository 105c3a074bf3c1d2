"""All preprocessing (every stage before training) through Snakemake: frames/s and peak memory per stage.

Run: python benchmarks/bench_preprocess.py [--seconds 60] [--resolution 512] [--cores 2]
Target (DESIGN section 8): >= 25 video frames/s on 2 cores at 512², <= 2 GB peak in any stage.
The input is the generated demo video looped to the requested length.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.demo import DemoConfig, generate  # noqa: E402
from pipeline.media import ffmpeg_binary  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "demo", DemoConfig(duration=20.0))
        clip = tmp / "clip.mp4"
        subprocess.run([ffmpeg_binary(), "-v", "error", "-y", "-stream_loop", str(args.seconds // 20 - 1), "-i",
                        str(tmp / "demo" / "video.mp4"), "-c", "copy", str(clip)], check=True)
        (tmp / "subjects.tsv").write_text(f"subject\tvideo\tresolution\nbench\t{clip}\t{args.resolution}\n")
        (tmp / "drives.tsv").write_text("subject\taudio_id\taudio\n")
        cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp),
               "--configfile", str(REPO / "config" / "config.yaml"),
               "--workflow-profile", "none", "--cores", str(args.cores), "--quiet",
               "--config", f"subjects={tmp / 'subjects.tsv'}", f"drives={tmp / 'drives.tsv'}"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        frames = len(list((tmp / "results" / "bench" / "frames").glob("*.jpg")))
        print(f"{frames} frames at {args.resolution}², {args.cores} cores: {wall:.1f} s wall, "
              f"{frames / wall:.1f} frames/s\n")
        print("| stage | wall s | max RSS MB |")
        print("|---|---|---|")
        for tsv in sorted((tmp / "results" / "bench" / "logs").glob("*.benchmark.tsv")):
            row = next(csv.DictReader(tsv.open(), delimiter="\t"))
            stage = tsv.name.removesuffix(".benchmark.tsv")
            print(f"| {stage} | {float(row['s']):.1f} | {float(row['max_rss']):.0f} |")


if __name__ == "__main__":
    main()
