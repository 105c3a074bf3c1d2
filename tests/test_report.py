"""Report pages: plotted curves are real PNG plots of the data, the renders page embeds playable videos."""

from __future__ import annotations

import base64
import re

import numpy as np
from PIL import Image

from pipeline import report
from pipeline.io import save_json
from pipeline.media import encode_video, probe


def test_report_pages(tmp_path):
    coarse = tmp_path / "coarse.csv"
    coarse.write_text("iteration,loss,psnr,gaussians\n" + "".join(f"{i},{1 / (i + 1)},{20 + i / 10},{1000 + i}\n"
                                                                    for i in range(0, 300, 25)))
    fine = tmp_path / "fine.csv"
    fine.write_text("iteration,loss,mask,note\n0,0.5,0.2,x\n100,0.2,0.1,y\n")
    n = 50
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, 0, 3] = 0.01 * np.sin(np.arange(n) / 5)
    save_json(tmp_path / "cameras.json", {"world_to_camera": w2c.tolist(), "split": {"train": list(range(45)),
                                                                                   "test": list(range(45, 50))}})
    save_json(tmp_path / "metrics.json", {"test": {"psnr": 30.5, "lmd": None},
                                          "drives": {"speech": {"r_lag0": 0.7, "best_lag": 1, "r_best": 0.8}}})
    video = tmp_path / "speech.mp4"
    encode_video((np.full((32, 32, 3), i * 20, np.uint8) for i in range(10)), video, fps=25)
    out = {k: tmp_path / f"{k}.{ext}" for k, ext in (("losses", "png"), ("poses", "png"), ("renders", "html"))}
    assert report.main(["--subject", "alice", "--log", "coarse", str(coarse), "--log", "fine", str(fine),
                        "--cameras", str(tmp_path / "cameras.json"), "--metrics", str(tmp_path / "metrics.json"),
                        "--video", "speech", str(video), "--losses-out", str(out["losses"]),
                        "--poses-out", str(out["poses"]), "--renders-out", str(out["renders"])]) == 0
    for key in ("losses", "poses"):
        image = np.asarray(Image.open(out[key]).convert("RGB"))
        assert image.shape[0] > 200 and image.std() > 10  # a drawn figure, not a blank canvas
    page = out["renders"].read_text()
    assert "<td>30.5</td>" in page and "<th>speech</th>" in page
    embedded = re.search(r'<video[^>]*src="data:video/mp4;base64,([^"]+)"', page)
    (tmp_path / "back.mp4").write_bytes(base64.b64decode(embedded[1]))
    assert probe(tmp_path / "back.mp4").has_video  # the embedded bytes are the video itself
