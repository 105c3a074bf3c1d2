"""Stage ``evaluate`` (DESIGN section 7): ``eval/metrics.json`` and ``eval/side_by_side.mp4``.

Test split (``renders/test.mp4`` against the prepared frames of the test split, at the render's size):

* ``psnr``, ``ssim``: scikit-image, on the full frame (RGB, data range 255, SSIM's default 7x7 window);
  the mean over frames of the per-frame values. Identical frames have infinite PSNR, recorded as 100 dB.
* ``psnr_head``, ``ssim_head``: the same inside the head box, the real frame's face-mesh bounding box
  (``landmarks.npy``) grown by 10% of its size on every side, clipped to the frame.
* ``psnr_mouth``: PSNR over the pixels of the dilated mouth mask (``mouth_masks/``, resized to the render's
  size with nearest-neighbour), where the audio moves the face; absent without the masks.
* ``lmd``: mouth landmark distance, pixels at the render's size: MediaPipe face mesh on the real and the
  rendered frame, the mouth points (both lip contours) each centred on their mean, the mean distance of
  corresponding points, averaged over frames where both faces are found.
* ``aperture_correlation``: Pearson r of the mouth aperture (mean gap of the three central inner-lip point
  pairs, pixels) render vs real over the same frames.

Driven renders (``drives``, per audio id), the lip-sync proxy standing in for SyncNet's LSE-C/D: mouth
aperture on the rendered video vs the speech envelope of the driving audio (RMS over each frame's 40 ms);
``r_lag0`` at lag 0 and ``r_best`` at ``best_lag`` within ±5 frames (positive: the mouth follows the sound
that many frames later).

``side_by_side.mp4``: real | render | error (absolute difference x4) for the test split, with its audio.
``test`` also carries ``lpips`` (AlexNet v0.1, :mod:`pipeline.lpips`) and ``identity_distance`` (dlib face
descriptors, :mod:`pipeline.identity`; same person below ``identity_threshold`` 0.6) over up to 32 frame pairs
spread over the split; each drive carries the ``identity_distance`` of its faces to the subject's mean
descriptor over 8 training frames.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline import cli
from pipeline.dataset import Cameras
from pipeline.lpips import load_lpips
from pipeline.io import PipelineError, evenly_spaced, list_frames, load_image, load_rgb, save_json
from pipeline.identity import IDENTITY_THRESHOLD, face_descriptor, identity_distance
from pipeline.landmarks import MOUTH, LandmarkConfig, MediaPipeDetector, load_landmarks, mouth_aperture
from pipeline.media import VideoWriter, decode_audio, iter_frames

log = logging.getLogger("pipeline.evaluate")

FPS = 25.0
PSNR_CAP = 100.0
HEAD_BOX_MARGIN = 0.1
MAX_LAG = 5
ERROR_GAIN = 4
PERCEPTUAL_PAIRS = 32  # frame pairs kept for LPIPS / identity (memory stays flat in the split's length)


# ---------------------------------------------------------------------------------------------------------
# Pure core
# ---------------------------------------------------------------------------------------------------------

def psnr(real: np.ndarray, render: np.ndarray) -> float:
    """PSNR in dB of uint8 images, infinite (identical) capped at ``PSNR_CAP``."""
    with np.errstate(divide="ignore"):
        value = peak_signal_noise_ratio(real, render, data_range=255)
    return float(min(value, PSNR_CAP))


def masked_psnr(real: np.ndarray, render: np.ndarray, mask: np.ndarray) -> float:
    """:func:`psnr` of uint8 [H,W,3] images over the pixels of bool ``mask`` [H,W]."""
    if not mask.any():
        raise PipelineError("evaluate: an empty mouth mask")
    return psnr(real[mask], render[mask])


def ssim(real: np.ndarray, render: np.ndarray) -> float:
    """SSIM of uint8 RGB images (scikit-image defaults: 7x7 window, sample covariance)."""
    return float(structural_similarity(real, render, channel_axis=2, data_range=255))


def head_box(landmarks: np.ndarray, width: int, height: int, margin: float = HEAD_BOX_MARGIN) -> tuple[int, ...]:
    """(x0, y0, x1, y1) pixel bounds of the face mesh [P, 2+] grown by ``margin`` of its size, clipped."""
    lo, hi = landmarks[:, :2].min(axis=0), landmarks[:, :2].max(axis=0)
    grow = margin * (hi - lo)
    x0, y0 = np.floor(lo - grow).astype(int)
    x1, y1 = np.ceil(hi + grow).astype(int)
    return max(0, x0), max(0, y0), min(width, x1), min(height, y1)


def lmd(real: np.ndarray, render: np.ndarray) -> float:
    """Mean mouth landmark distance (pixels) of [N, 478, 2+] landmark sets, each frame's mouth mean-centred."""
    a = np.asarray(real, np.float64)[:, MOUTH, :2]
    b = np.asarray(render, np.float64)[:, MOUTH, :2]
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return float(np.linalg.norm(a - b, axis=-1).mean())


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson r, None when either signal is constant or shorter than 3."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or x.std() < 1e-12 or y.std() < 1e-12:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def lagged_correlations(mouth: np.ndarray, audio: np.ndarray, max_lag: int = MAX_LAG) -> dict[int, float | None]:
    """{lag: r of mouth[t + lag] with audio[t]} for lag in [-max_lag, max_lag]."""
    n = min(len(mouth), len(audio))
    out = {}
    for lag in range(-max_lag, max_lag + 1):
        lo, hi = max(0, -lag), min(n, n - lag)
        out[lag] = pearson(mouth[lo + lag:hi + lag], audio[lo:hi]) if hi - lo >= 3 else None
    return out


def speech_envelope(samples: np.ndarray, n_frames: int, sample_rate: int = 16000, fps: float = FPS) -> np.ndarray:
    """RMS of the audio over each video frame's interval [i/fps, (i+1)/fps): float [n_frames]."""
    per = int(round(sample_rate / fps))
    padded = np.zeros(n_frames * per, np.float64)
    keep = min(len(padded), len(samples))
    padded[:keep] = samples[:keep]
    return np.sqrt(np.mean(padded.reshape(n_frames, per) ** 2, axis=1))


def lipsync(mouth: np.ndarray, envelope: np.ndarray, max_lag: int = MAX_LAG) -> dict:
    """The lip-sync proxy of mouth aperture [N] (NaN where no face) vs speech envelope [N]."""
    found = np.isfinite(mouth)
    mouth = np.where(found, mouth, np.interp(np.arange(len(mouth)), np.flatnonzero(found), mouth[found])
                     if found.any() else 0.0)
    corr = lagged_correlations(mouth, envelope, max_lag)
    scored = {lag: r for lag, r in corr.items() if r is not None}
    best = max(scored, key=lambda lag: scored[lag]) if scored else None
    return {"frames": int(len(mouth)), "frames_with_face": int(found.sum()), "r_lag0": corr.get(0),
            "best_lag": best, "r_best": scored.get(best) if best is not None else None}


def error_image(real: np.ndarray, render: np.ndarray, gain: int = ERROR_GAIN) -> np.ndarray:
    """uint8 [H,W,3] grey: |real - render| averaged over channels, times ``gain``."""
    diff = np.abs(real.astype(np.int16) - render.astype(np.int16)).mean(axis=2) * gain
    return np.repeat(np.clip(diff, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


@dataclass
class TestSplitMetrics:
    """Per-frame accumulators of the test split; :meth:`summary` gives the metrics.json block."""

    psnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)
    psnr_head: list[float] = field(default_factory=list)
    ssim_head: list[float] = field(default_factory=list)
    psnr_mouth: list[float] = field(default_factory=list)
    real_landmarks: list[np.ndarray] = field(default_factory=list)  # [478, 3] or NaN
    render_landmarks: list[np.ndarray] = field(default_factory=list)

    def add(self, real: np.ndarray, render: np.ndarray, box: Sequence[int], real_lm: np.ndarray | None,
            render_lm: np.ndarray | None, mouth: np.ndarray | None = None) -> None:
        x0, y0, x1, y1 = box
        if mouth is not None:
            self.psnr_mouth.append(masked_psnr(real, render, mouth))
        self.psnr.append(psnr(real, render))
        self.ssim.append(ssim(real, render))
        self.psnr_head.append(psnr(real[y0:y1, x0:x1], render[y0:y1, x0:x1]))
        self.ssim_head.append(ssim(real[y0:y1, x0:x1], render[y0:y1, x0:x1]))
        nan = np.full((478, 3), np.nan, np.float32)
        self.real_landmarks.append(nan if real_lm is None else real_lm)
        self.render_landmarks.append(nan if render_lm is None else render_lm)

    def summary(self) -> dict:
        real, render = np.stack(self.real_landmarks), np.stack(self.render_landmarks)
        both = np.isfinite(real).all(axis=(1, 2)) & np.isfinite(render).all(axis=(1, 2))
        return {
            "frames": len(self.psnr),
            "psnr": float(np.mean(self.psnr)), "ssim": float(np.mean(self.ssim)),
            "psnr_head": float(np.mean(self.psnr_head)), "ssim_head": float(np.mean(self.ssim_head)),
            **({"psnr_mouth": float(np.mean(self.psnr_mouth))} if self.psnr_mouth else {}),
            "frames_with_face": int(both.sum()),
            "lmd": lmd(real[both], render[both]) if both.any() else None,
            "aperture_correlation": pearson(mouth_aperture(real[both]), mouth_aperture(render[both])),
        }


def perceptual_metrics(pairs: Sequence[tuple[np.ndarray, np.ndarray]], chunk: int = 8) -> dict:
    """LPIPS (AlexNet v0.1) and dlib identity distance of (real, render) uint8 [H,W,3] pairs, averaged.

    ``identity_distance`` is over the pairs where dlib finds a face in both (``identity_pairs`` of them)."""
    import torch

    model = load_lpips()
    scores = []
    for start in range(0, len(pairs), chunk):
        part = pairs[start:start + chunk]
        x = torch.stack([torch.from_numpy(np.ascontiguousarray(r)).permute(2, 0, 1) for r, _ in part]).float() / 255
        y = torch.stack([torch.from_numpy(np.ascontiguousarray(g)).permute(2, 0, 1) for _, g in part]).float() / 255
        with torch.no_grad():
            scores.append(model(x, y))
    out: dict = {"lpips": float(torch.cat(scores).mean()) if scores else None}
    found = [(face_descriptor(r), face_descriptor(g)) for r, g in pairs]
    dists = [identity_distance(a, b) for a, b in found if a is not None and b is not None]
    out.update(identity_distance=float(np.mean(dists)) if dists else None, identity_pairs=len(dists),
               identity_threshold=IDENTITY_THRESHOLD)
    return out


def identity_to_subject(frames: Sequence[np.ndarray], reference: np.ndarray | None) -> float | None:
    """Mean dlib distance of the faces in ``frames`` to the subject's mean descriptor ``reference``."""
    if reference is None:
        return None
    dists = [identity_distance(d, reference) for d in map(face_descriptor, frames) if d is not None]
    return float(np.mean(dists)) if dists else None


def subject_descriptor(frames: Sequence[np.ndarray]) -> np.ndarray | None:
    """Mean dlib descriptor of the faces in a few training frames (None when none has a face)."""
    found = [d for d in map(face_descriptor, frames) if d is not None]
    return np.mean(found, axis=0) if found else None


# ---------------------------------------------------------------------------------------------------------
# Videos and files
# ---------------------------------------------------------------------------------------------------------

def _detect(detector: MediaPipeDetector, frame: np.ndarray) -> np.ndarray | None:
    faces = detector.detect(frame)
    if not faces:
        return None
    return max(faces, key=lambda f: float(np.ptp(f[:, 0]) * np.ptp(f[:, 1])))


def _resized(image: np.ndarray, width: int, height: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BOX))


def evaluate_test_split(real: Iterable[np.ndarray], render: Iterable[np.ndarray], landmarks: np.ndarray,
                        side_by_side: Path | None = None, audio: Path | None = None,
                        total: int | None = None, mouth_masks: Iterable[np.ndarray] | None = None) -> dict:
    """Metrics of rendered frames against real ones (uint8 [H,W,3] streams of equal length; real frames are
    resized to the render's size) with the real frames' landmarks [N, 478, 3] in real-frame pixels and,
    optionally, their mouth masks (bool [H,W] at the real frames' size, a stream of the same length).
    Optionally writes the side-by-side video with ``audio``."""
    metrics = TestSplitMetrics()
    keep = set(evenly_spaced(total or len(landmarks), PERCEPTUAL_PAIRS))
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    config = LandmarkConfig(max_faces=1)
    with contextlib.ExitStack() as stack:
        real_det, render_det = MediaPipeDetector(config), MediaPipeDetector(config)
        stack.callback(real_det.close)
        stack.callback(render_det.close)
        writer = None
        masks = iter(mouth_masks) if mouth_masks is not None else None
        for k, (gt, out) in enumerate(cli.progress(zip(real, render, strict=True), total=total, desc="evaluate")):
            h, w = out.shape[:2]
            scale = np.array([w / gt.shape[1], h / gt.shape[0]])
            gt = _resized(gt, w, h)
            box = head_box(landmarks[k, :, :2] * scale, w, h)
            mouth = None if masks is None else _resized_mask(next(masks), w, h)
            metrics.add(gt, out, box, _detect(real_det, gt), _detect(render_det, out), mouth)
            if k in keep:
                pairs.append((gt.copy(), out.copy()))
            if side_by_side is not None:
                if writer is None:
                    writer = stack.enter_context(VideoWriter(side_by_side, 3 * w, h, FPS, audio=audio))
                writer.write(np.concatenate([gt, out, error_image(gt, out)], axis=1))
    if not metrics.psnr:
        raise PipelineError("evaluate: no test frames")
    return {**metrics.summary(), **perceptual_metrics(pairs)}


def video_aperture(path: Path, keep_every: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """Mouth aperture [N] of every frame of a video (NaN where MediaPipe finds no face), and every
    ``keep_every``-th frame (none when 0)."""
    detector = MediaPipeDetector(LandmarkConfig(max_faces=1))
    values, kept = [], []
    try:
        for k, frame in enumerate(cli.progress(iter_frames(path), desc=f"face mesh {path.name}")):
            lm = _detect(detector, frame)
            values.append(np.nan if lm is None else float(mouth_aperture(lm[None])[0]))
            if keep_every and k % keep_every == 0:
                kept.append(frame)
    finally:
        detector.close()
    return np.asarray(values, np.float64), kept


def evaluate_drive(render: Path, audio: Path, subject: np.ndarray | None = None) -> dict:
    """Lip-sync proxy of one driven render against its driving audio file, and the identity distance of its
    faces to the subject's mean descriptor ``subject`` (:func:`subject_descriptor`)."""
    mouth, kept = video_aperture(render, keep_every=25)
    if len(mouth) == 0:
        raise PipelineError(f"{render}: no frames")
    envelope = speech_envelope(decode_audio(audio, 16000), len(mouth))
    return {**lipsync(mouth, envelope), "identity_distance": identity_to_subject(kept[:16], subject)}


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _resized_mask(mask: np.ndarray, width: int, height: int) -> np.ndarray:
    if mask.shape != (height, width):
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 127
    return mask


def evaluate_subject(test_video: Path, frames_dir: Path, cameras: Path, landmarks_path: Path,
                     drives: Sequence[tuple[str, Path, Path]], metrics_out: Path,
                     side_by_side: Path | None, mouth_masks_dir: Path | None = None) -> dict:
    """Write metrics.json (and the side-by-side video) of one subject; returns the metrics."""
    frames = list_frames(frames_dir, ext="jpg")
    test = Cameras.load(cameras).test
    if not test or max(test) >= len(frames):
        raise PipelineError(f"{cameras}: test split {test[:1]}..{test[-1:]} does not fit {len(frames)} frames")
    landmarks = load_landmarks(landmarks_path, len(frames))[test]
    real = (load_rgb(frames[i]) for i in test)
    masks = None
    if mouth_masks_dir is not None:
        mask_files = list_frames(mouth_masks_dir, ext="png")
        if len(mask_files) != len(frames):
            raise PipelineError(f"{mouth_masks_dir}: {len(mask_files)} mouth masks for {len(frames)} frames")
        masks = (load_image(mask_files[i]) > 127 for i in test)
    test_metrics = evaluate_test_split(real, iter_frames(test_video), landmarks, side_by_side, test_video, len(test),
                                       masks)
    result = {"test": test_metrics, "drives": {}}
    train = Cameras.load(cameras).train
    subject = subject_descriptor([load_rgb(frames[train[i]]) for i in evenly_spaced(len(train), 8)]) if drives else None
    for audio_id, video, audio in drives:
        result["drives"][audio_id] = evaluate_drive(video, audio, subject)
        log.info("%s: lip-sync r %.3f at lag 0, %.3f at lag %s", audio_id, result["drives"][audio_id]["r_lag0"] or 0,
                 result["drives"][audio_id]["r_best"] or 0, result["drives"][audio_id]["best_lag"])
    result = _json_safe(result)
    save_json(metrics_out, result)
    log.info("%s: test PSNR %.2f dB, SSIM %.4f, head PSNR %.2f dB, LMD %s px", metrics_out, test_metrics["psnr"],
             test_metrics["ssim"], test_metrics["psnr_head"], test_metrics["lmd"])
    return result


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--test-video", type=Path, required=True, help="renders/test.mp4")
    p.add_argument("--frames", type=Path, required=True, help="prepared frames (000000.jpg ...)")
    p.add_argument("--cameras", type=Path, required=True, help="cameras.json (its test split)")
    p.add_argument("--landmarks", type=Path, required=True, help="landmarks.npy of the prepared frames")
    p.add_argument("--mouth-masks", type=Path, default=None, help="mouth_masks/ of the prepared frames (psnr_mouth)")
    p.add_argument("--drive", nargs=3, action="append", default=[], metavar=("AUDIO_ID", "RENDER", "AUDIO"),
                   help="a driven render and its driving audio (repeat for each)")
    p.add_argument("--out", type=Path, required=True, help="metrics.json to write")
    p.add_argument("--side-by-side", type=Path, default=None, help="side_by_side.mp4 to write")
    return p


def _run(args: argparse.Namespace) -> None:
    drives = [(audio_id, Path(video), Path(audio)) for audio_id, video, audio in args.drive]
    evaluate_subject(args.test_video, args.frames, args.cameras, args.landmarks, drives, args.out, args.side_by_side,
                     args.mouth_masks)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
