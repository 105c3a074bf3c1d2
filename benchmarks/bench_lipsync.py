"""Lip-sync and image figures of a trained subject on its test split (frames whose audio training never saw).

    python benchmarks/bench_lipsync.py [--subject results/demo] [--truth resources/demo/ground_truth.npz]
        [--model other/fine.pt] [--size 256] [--split train]

Renders the test split at the frame size (or ``--size``) with the fine model (its own audio, and the same
audio shuffled in time) and with the coarse model, runs the face mesh on every render, and prints one markdown row:
- mouth aperture of the renders vs the real frames (face mesh on both): Pearson r, r of frame-to-frame
  differences, and r with the audio shuffled; with ``--truth`` (the demo) r against the generator's aperture;
- chin drop (nose tip to chin) of the renders vs the real frames;
- PSNR (dB) inside the dilated mouth masks and over the whole head image, fine and coarse;
- the open mouth's inside (teeth show light, a wide-open mouth dark): mean luminance inside each real frame's
  inner-lip polygon (the parsing's inner-mouth label) on the render vs on the real frame, Pearson r over the
  frames where it covers at least 10 pixels, and both means.
``--split train`` measures as many evenly spaced training frames instead (how well the model fits what it saw).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import landmarks as lmk  # noqa: E402
from pipeline.audioplane import TalkingHead  # noqa: E402
from pipeline.dataset import Cameras, FrameStore, HeadViews  # noqa: E402
from pipeline.gaussians import GaussianModel  # noqa: E402
from pipeline.gaussians.lowpass import training_lowpass  # noqa: E402
from pipeline.io import evenly_spaced, list_frames  # noqa: E402
from pipeline.parsing import inner_mouth_image  # noqa: E402
from pipeline.paths import SubjectPaths  # noqa: E402
from pipeline.train import render_view, to_uint8  # noqa: E402


def fine_renders(head: TalkingHead, views: HeadViews, features: torch.Tensor, frames: list[int],
                 blink: np.ndarray) -> list[np.ndarray]:
    codes = head.audio_codes(features)
    out = []
    for f in frames:
        rgb, alpha = head.render(codes[f], views.viewmat(f), views.K, views.width, views.height, float(blink[f]),
                                 backend="torch")
        out.append(to_uint8(rgb + views.background * (1 - alpha)))
    return out


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) / 255
    mse = np.square(d[mask] if mask is not None else d).mean()
    return float(-10 * np.log10(max(mse, 1e-12)))


def inner_mouth_luminance(image: np.ndarray, inner: np.ndarray) -> float:
    """Mean luminance (0..255) of ``image`` [H, W, 3] inside the boolean mask ``inner`` [H, W]."""
    return float((image[inner].astype(np.float64) @ np.array([0.299, 0.587, 0.114])).mean())


def corr(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def measure(subject: Path, truth_file: Path | None = None, model: Path | None = None,
            size: int | None = None, split: str = "test") -> dict:
    """The row of one trained subject (see the module docstring); ``truth_file``: the demo's ground truth;
    ``model``: a fine.pt other than the subject's own; ``size``: the side of renders and real frames
    (None: the frame size); ``split``: test, or as many evenly spaced training frames."""
    paths = SubjectPaths(subject)
    head = TalkingHead.load(model or paths.fine_pt)
    cameras = Cameras.load(paths.cameras)
    views = HeadViews(paths.head, cameras, paths.background, size)
    masks = FrameStore(list_frames(paths.mouth_masks, ext="png"), (cameras.width, cameras.height),
                       (views.width, views.height), grey=True)
    features = torch.from_numpy(np.load(paths.audio_features(head.extractor)))
    blink = np.load(paths.blink)
    test = cameras.test
    if split == "train":
        test = [cameras.train[i] for i in evenly_spaced(len(cameras.train), len(test))]
    shuffled = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))]
    renders = fine_renders(head, views, features, test, blink)
    renders_shuffled = fine_renders(head, views, shuffled, test, blink)
    saved = torch.load(paths.coarse_pt, weights_only=False)
    coarse = GaussianModel(**saved["model"])
    # the coarse model with its training image's low-pass too, as the fine head renders (gaussians/lowpass.py)
    focal = float(views.K[0, 0])
    coarse_focal = focal * saved["train_size"][0] / views.width
    with torch.no_grad():
        coarse_renders = [to_uint8(render_view(training_lowpass(coarse, views.viewmat(f), views.K, views.width,
                                                                       views.height, coarse_focal),
                                               views, f, coarse.sh_degree, "torch")[0]) for f in test]
    real = [views.pixels(f) for f in test]
    lm_real = lmk.detect_sequence(real)
    lm_fine, lm_shuffled = lmk.detect_sequence(renders), lmk.detect_sequence(renders_shuffled)
    ap_real, ap_fine = lmk.mouth_aperture(lm_real), lmk.mouth_aperture(lm_fine)
    mouth = [masks.pixels(f) > 127 for f in test]
    inner_masks = FrameStore(list_frames(paths.parsing, ext="png"), (cameras.width, cameras.height),
                             (views.width, views.height), grey=True,
                             transform=inner_mouth_image)
    inner = [(i, m) for i, m in enumerate(inner_masks.pixels(f) > 127 for f in test) if m.sum() >= 10]
    inner_fine = np.array([inner_mouth_luminance(renders[i], m) for i, m in inner])
    inner_real = np.array([inner_mouth_luminance(real[i], m) for i, m in inner])
    row = {
        "subject": subject.name, f"{split} frames": len(test), "size": views.width,
        "aperture r": corr(ap_fine, ap_real), "diff r": corr(np.diff(ap_fine), np.diff(ap_real)),
        "shuffled r": corr(lmk.mouth_aperture(lm_shuffled), ap_real),
        "chin r": corr(lmk.chin_drop(lm_fine), lmk.chin_drop(lm_real)),
        "mouth PSNR fine": np.mean([psnr(a, b, m) for a, b, m in zip(renders, real, mouth)]),
        "mouth PSNR coarse": np.mean([psnr(a, b, m) for a, b, m in zip(coarse_renders, real, mouth)]),
        "head PSNR fine": np.mean([psnr(a, b) for a, b in zip(renders, real)]),
        "head PSNR coarse": np.mean([psnr(a, b) for a, b in zip(coarse_renders, real)]),
        "inner frames": len(inner), "inner r": corr(inner_fine, inner_real),
        "inner lum fine": float(inner_fine.mean()), "inner lum real": float(inner_real.mean()),
    }
    if truth_file is not None:
        truth = np.load(truth_file)["aperture"][test]
        row["aperture r (truth)"] = corr(ap_fine, truth)
        row["shuffled r (truth)"] = corr(lmk.mouth_aperture(lm_shuffled), truth)
    return row


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--subject", type=Path, default=ROOT / "results" / "demo")
    p.add_argument("--truth", type=Path, default=None, help="the demo's ground_truth.npz")
    p.add_argument("--model", type=Path, default=None, help="a fine.pt other than the subject's model/fine.pt")
    p.add_argument("--size", type=int, default=None, help="measure at this side (default: the frame size)")
    p.add_argument("--split", choices=("test", "train"), default="test")
    args = p.parse_args()
    torch.set_num_threads(1)
    row = measure(args.subject, args.truth, args.model, args.size, args.split)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}))
    print("| " + " | ".join(row) + " |")
    print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")


if __name__ == "__main__":
    main()
