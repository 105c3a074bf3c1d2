"""Report pages for ``snakemake --report report.html``: plotted curves and the renders page.

* ``report/losses.png``: every numeric column but wall-clock seconds of the training logs (coarse
  ``gaussians/train_log.csv`` and fine ``model/train_log.csv``) against the iteration, one panel per column;
* ``report/poses.png``: head pose curves from ``cameras.json`` (roll, pitch, yaw in degrees, translation in
  cm), the test split shaded;
* ``report/renders.html``: the metrics table of ``eval/metrics.json`` and every rendered video playing inline.
  Snakemake's report shows HTML in a frame but offers MP4 files only as downloads, so the page embeds the
  videos as data URIs: it is self-contained.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import cli
from pipeline.io import PipelineError, atomic_path, load_json

# ---------------------------------------------------------------------------------------------------------
# Pure core
# ---------------------------------------------------------------------------------------------------------


def read_log(path: Path) -> dict[str, np.ndarray]:
    """Numeric columns of a training log CSV."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: training log not found") from err
    columns: dict[str, np.ndarray] = {}
    for key in rows[0] if rows else []:
        try:
            columns[key] = np.array([float(r[key]) for r in rows])
        except (TypeError, ValueError):
            continue  # a text column
    if "iteration" not in columns:
        raise PipelineError(f"{path}: no numeric 'iteration' column")
    return columns


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def loss_figure(logs: dict[str, dict[str, np.ndarray]]) -> bytes:
    """PNG bytes: one panel per numeric column, a line per stage ({stage: columns})."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # wall-clock seconds are no training curve (and would make the figure differ between equal runs)
    names = sorted({k for cols in logs.values() for k in cols if k not in ("iteration", "seconds")})
    cols = 3
    rows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        for stage, columns in logs.items():
            if name in columns:
                ax.plot(columns["iteration"], columns[name], label=stage, lw=1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        if name in ("loss", "l1", "perceptual", "mask", "mouth"):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def pose_figure(series: dict[str, np.ndarray], test: Sequence[int], fps: float = 25.0) -> bytes:
    """PNG bytes: rotation (degrees) and translation (cm) curves over time, the test split shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rot, trans) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    for name in ("roll", "pitch", "yaw"):
        t = np.arange(len(series[name])) / fps
        rot.plot(t, series[name], lw=1, label=name)
    translation = 100 * np.asarray(series["translation"])  # cm
    for k, name in enumerate(("x", "y", "z")):
        values = translation[:, k]
        trans.plot(np.arange(len(values)) / fps, values - values.mean(), lw=1, label=f"{name} - mean")
    for ax, unit in ((rot, "degrees"), (trans, "cm")):
        if len(test):
            ax.axvspan(test[0] / fps, (test[-1] + 1) / fps, color="0.85", label="test split")
        ax.set_ylabel(unit)
        ax.legend(fontsize=8, ncol=4)
    trans.set_xlabel("seconds")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def renders_page(subject: str, metrics: dict, videos: Sequence[tuple[str, bytes]]) -> str:
    """Self-contained HTML: the metrics table (test split and per driving audio) and inline videos."""
    test = metrics.get("test", {})
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in test.items())
    drives = metrics.get("drives", {})
    keys = ["frames", "frames_with_face", "r_lag0", "best_lag", "r_best"]
    drive_rows = "".join(
        "<tr><th>" + html.escape(audio_id) + "</th>" + "".join(f"<td>{_fmt(d.get(k))}</td>" for k in keys) + "</tr>"
        for audio_id, d in drives.items())
    players = "".join(
        f'<figure><figcaption>{html.escape(name)}</figcaption><video controls preload="metadata" width="384" '
        f'src="data:video/mp4;base64,{base64.b64encode(data).decode()}"></video></figure>'
        for name, data in videos)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(subject)}: renders and metrics</title>
<style>body{{font-family:sans-serif;margin:1em}}table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:left}}figure{{display:inline-block;margin:0 1em 1em 0}}
</style></head><body>
<h2>{html.escape(subject)}</h2>
<h3>Test split</h3><table>{rows}</table>
<h3>Lip-sync proxy (mouth aperture vs speech envelope)</h3>
<table><tr><th>audio</th>{''.join(f'<th>{k}</th>' for k in keys)}</tr>{drive_rows}</table>
<h3>Videos</h3>{players}
</body></html>
"""


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------

def _write(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.report", description=__doc__.split("\n")[0])
    p.add_argument("--subject", required=True)
    p.add_argument("--log", nargs=2, action="append", default=[], metavar=("STAGE", "CSV"),
                   help="a training log to plot (repeat: coarse, fine)")
    p.add_argument("--cameras", type=Path, required=True, help="cameras.json")
    p.add_argument("--metrics", type=Path, required=True, help="eval/metrics.json")
    p.add_argument("--video", nargs=2, action="append", default=[], metavar=("NAME", "MP4"),
                   help="a video to show inline (repeat)")
    p.add_argument("--losses-out", type=Path, required=True)
    p.add_argument("--poses-out", type=Path, required=True)
    p.add_argument("--renders-out", type=Path, required=True)
    return p


def _run(args: argparse.Namespace) -> None:
    from pipeline.tracking import pose_series

    logs = {stage: read_log(Path(path)) for stage, path in args.log}
    _write(args.losses_out, loss_figure(logs))
    cameras = load_json(args.cameras)
    _write(args.poses_out, pose_figure(pose_series(cameras), cameras["split"]["test"]))
    metrics = load_json(args.metrics)
    videos = [(name, Path(path).read_bytes()) for name, path in args.video]
    _write(args.renders_out, renders_page(args.subject, metrics, videos).encode())


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
