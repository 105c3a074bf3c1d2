"""Build the Snakemake report and open it in headless Chromium: screenshots under docs/, videos checked.

    apt-get install chromium        # once
    python benchmarks/report_screenshot.py [--workdir .] [--out docs]

Runs ``snakemake --report report.html`` in the work directory (after a finished ``snakemake --cores all``),
checks that every subject's renders page is inside the report with its videos (MP4 data), then lets
Chromium render the report (JavaScript app: ``--dump-dom`` must show the Renders category) and take two
screenshots: the report's landing page (docs/report.png) and the first subject's renders page as the
report shows it in its frame (docs/report_renders.png).
"""

from __future__ import annotations

import argparse
import base64
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise SystemExit("no Chromium on PATH: apt-get install chromium")


def headless(*args: str) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           "--virtual-time-budget=8000", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", type=Path, default=ROOT)
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args()
    report = args.workdir / "report.html"
    subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(args.workdir),
                    "--report", str(report)], check=True)
    text = report.read_text()
    pages = [base64.b64decode(m) for m in re.findall(r"data:text/html;(?:[^;,]+;)*base64,([A-Za-z0-9+/=]+)",
                                                      text)]
    renders = [page for page in pages if b"<video" in page]
    if not renders or not all(b"data:video/mp4;base64," in page for page in renders):
        raise SystemExit(f"{report}: no renders page with embedded videos")
    dom = headless("--dump-dom", report.resolve().as_uri()).stdout
    if "Renders" not in dom:
        raise SystemExit(f"{report}: Chromium did not render the report app (no 'Renders' in the DOM)")
    args.out.mkdir(parents=True, exist_ok=True)
    headless(f"--screenshot={args.out / 'report.png'}", "--window-size=1400,900", report.resolve().as_uri())
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "renders.html"
        page.write_bytes(renders[0])
        headless(f"--screenshot={args.out / 'report_renders.png'}", "--window-size=1400,1100", page.as_uri())
        videos = headless("--dump-dom", page.as_uri()).stdout.count("<video")
    print(f"{report}: {len(renders)} renders page(s), {videos} videos in the first; screenshots in {args.out}")


if __name__ == "__main__":
    main()
