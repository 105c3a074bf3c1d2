"""The embedded demo subject, generated deterministically with no download (DESIGN.md section 6).

A square crop around the face of scikit-image's astronaut photograph (public domain) is animated at 25 fps:

* speech-like audio is synthesised in numpy: a glottal pulse train with drifting pitch through time-varying
  formant resonators, under a syllable-rate envelope with phrase pauses;
* the mouth opens with a known aperture derived from that envelope, by a piecewise-affine warp of the lip
  region (lower lip and chin move down, upper lip slightly up) with the inner mouth painted dark;
* the whole frame undergoes a small known in-plane similarity motion (translation, roll, scale) about the
  face centre.

Artefacts in the output directory:

``video.mp4``
    H.264 frames (``size``², 25 fps) with the audio muxed as AAC.
``audio.wav``
    the synthesised speech, 16 kHz mono.
``drive.wav``
    different synthesised speech (``drive_duration`` s, next seed): a novel driving audio.
``ground_truth.npz``
    ``aperture`` [N] inner-lip gap at the mouth centre in video pixels; ``openness`` [N] in [0, 1];
    ``pose`` [N, 4] per-frame similarity (tx, ty in video pixels, roll in degrees — positive turns the
    image counter-clockwise as displayed — and scale) about ``centre`` [2] (video pixels);
    ``lips_outer`` / ``lips_inner`` [N, 20, 2] lip contours (x, y video pixels) in MediaPipe's
    outer/inner lip order; ``face_width`` (video pixels at scale 1); ``fps``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from scipy import ndimage, signal
from scipy.spatial import Delaunay
from skimage import data as skdata
from skimage import draw, transform

from pipeline import cli
from pipeline.io import atomic_dir, save_npz
from pipeline.media import encode_video, write_wav

# MediaPipe face-mesh lip contours of skimage.data.astronaut() at 512², measured once with
# mediapipe 0.10.21 (indices 61,146,...,185 and 78,95,...,191). Hard-coded so the demo needs no detector.
_LIPS_OUTER = np.array([
    [201.8, 139.2], [203.9, 143.4], [206.7, 147.4], [210.8, 151.1], [216.2, 153.5], [222.7, 154.6],
    [229.2, 154.2], [234.7, 152.2], [239.2, 148.9], [242.5, 145.0], [245.0, 141.0], [242.9, 140.5],
    [240.0, 140.2], [236.1, 140.0], [230.2, 139.7], [223.6, 140.5], [217.1, 139.2], [211.2, 139.1],
    [207.2, 139.0], [204.0, 139.0]])
_LIPS_INNER = np.array([
    [203.3, 139.9], [206.4, 143.2], [209.0, 145.5], [212.6, 147.7], [217.3, 149.3], [223.0, 150.1],
    [228.6, 149.7], [233.3, 148.5], [237.1, 146.6], [239.9, 144.6], [243.4, 141.5], [240.9, 141.6],
    [237.8, 141.8], [234.1, 142.3], [229.4, 142.9], [223.5, 143.2], [217.6, 142.4], [212.9, 141.5],
    [209.1, 140.7], [205.9, 140.1]])
# Points 1..9 of each contour are the lower lip, 11..19 the upper lip, 0 and 10 the corners.
_LOWER = np.arange(1, 10)
_UPPER = np.arange(11, 20)
_CHIN = np.array([[221.3, 177.4], [212.2, 175.7], [205.4, 172.1], [230.4, 176.9], [237.7, 174.1]])
_FACE_CENTRE = (225.0, 125.0)  # between the eyes and the mouth
_FACE_WIDTH = 92.0  # face-oval width at 512², pixels
_CROP = (80, 6, 288)  # x, y, size of the square crop of the photograph
_MOUTH_ROI = (176, 118, 272, 200)  # x0, y0, x1, y1: the region the lip warp touches


@dataclass(frozen=True)
class DemoConfig:
    duration: float = 20.0  # seconds
    fps: int = 25
    size: int = 512  # output frames are size x size
    sample_rate: int = 16000
    max_opening: float = 14.0  # extra inner-lip gap at full openness, photograph pixels
    seed: int = 0
    drive_duration: float = 8.0  # seconds of novel speech for drive.wav


# ---------------------------------------------------------------- audio

_VOWELS = np.array([  # F1, F2, F3 in Hz
    [800, 1200, 2500], [500, 1900, 2500], [320, 2200, 3000], [500, 900, 2400], [350, 800, 2300]])


def syllable_envelope(cfg: DemoConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Speech envelope at audio rate in [0, 1] and each sample's vowel index.

    Phrases of 1.5-3 s of syllables (4-6 per second, hann-shaped, random loudness) separated by pauses.
    """
    n = int(round(cfg.duration * cfg.sample_rate))
    env = np.zeros(n)
    vowel = np.zeros(n, dtype=np.int64)
    t = 0.3
    while t < cfg.duration:
        phrase_end = min(cfg.duration - 0.2, t + rng.uniform(1.5, 3.0))
        while t < phrase_end:
            dur = rng.uniform(0.16, 0.25)
            a, b = int(t * cfg.sample_rate), min(n, int((t + dur) * cfg.sample_rate))
            if b > a:
                env[a:b] = np.maximum(env[a:b], rng.uniform(0.45, 1.0) * np.hanning(b - a))
                vowel[a:b] = rng.integers(len(_VOWELS))
            t += dur * rng.uniform(0.95, 1.1)
        t = phrase_end + rng.uniform(0.35, 0.7)
    return env, vowel


def synthesize_speech(cfg: DemoConfig, env: np.ndarray, vowel: np.ndarray,
                      rng: np.random.Generator) -> np.ndarray:
    """Voiced source with formants under ``env``: float32 [n] in [-1, 1]."""
    n = len(env)
    sr = cfg.sample_rate
    t = np.arange(n) / sr
    f0 = 140 + 25 * np.sin(2 * np.pi * 0.35 * t) + 10 * np.sin(2 * np.pi * 1.3 * t + 1.0)
    phase = np.cumsum(f0 / sr)
    pulses = np.diff(np.floor(phase), prepend=0.0)  # one impulse per glottal period
    source = signal.lfilter([1.0], [1.0, -0.96], pulses)  # glottal roll-off
    source += 0.02 * rng.standard_normal(n)  # aspiration
    out = np.zeros(n)
    block = sr // 100  # formants change every 10 ms, filter state carried across blocks
    for k, bw in zip(range(3), (90.0, 110.0, 160.0)):
        zi = np.zeros(2)
        for start in range(0, n, block):
            seg = slice(start, min(n, start + block))
            freq = _VOWELS[vowel[start], k]
            r = np.exp(-np.pi * bw / sr)
            a = [1.0, -2 * r * np.cos(2 * np.pi * freq / sr), r * r]
            y, zi = signal.lfilter([1.0 - r], a, source[seg], zi=zi)
            out[seg] += y / (k + 1)
    out *= env
    return (0.8 * out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def frame_openness(env: np.ndarray, cfg: DemoConfig) -> np.ndarray:
    """Mouth openness per video frame in [0, 1]: the speech envelope at each frame's centre time."""
    n_frames = int(round(cfg.duration * cfg.fps))
    centres = ((np.arange(n_frames) + 0.5) / cfg.fps * cfg.sample_rate).astype(np.int64)
    smoothed = ndimage.uniform_filter1d(env, size=cfg.sample_rate // cfg.fps)
    return np.clip(smoothed[np.minimum(centres, len(env) - 1)], 0.0, 1.0)


# ---------------------------------------------------------------- geometry

def head_motion(n_frames: int, fps: int) -> np.ndarray:
    """Known similarity motion per frame: [N, 4] (tx px at 512², ty, roll degrees, scale)."""
    t = np.arange(n_frames) / fps
    tx = 10.0 * np.sin(2 * np.pi * t / 5.3)
    ty = 6.0 * np.sin(2 * np.pi * t / 4.1 + 1.0)
    roll = 4.0 * np.sin(2 * np.pi * t / 7.0) + 1.0 * np.sin(2 * np.pi * t / 2.3)
    scale = 1.0 + 0.04 * np.sin(2 * np.pi * t / 9.0 + 0.5)
    return np.stack([tx, ty, roll, scale], axis=1)


def similarity_matrix(pose: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """3x3 map p -> s R (p - c) + c + t in image coordinates (y down); roll > 0 turns counter-clockwise."""
    tx, ty, roll, s = pose
    th = np.deg2rad(roll)
    # y points down, so a counter-clockwise turn on screen is a negative angle in (x, y) coordinates
    rot = np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]]) * s
    c = np.asarray(centre)
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = c + np.array([tx, ty]) - rot @ c
    return m


def crop_matrix(size: int) -> np.ndarray:
    """3x3 map from photograph pixels to output pixels of the square crop."""
    x0, y0, side = _CROP
    k = size / side
    return np.array([[k, 0, -x0 * k], [0, k, -y0 * k], [0, 0, 1.0]])


def apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ m[:2, :2].T + m[:2, 2]


def lip_contours(opening: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Outer, inner lip contours and chin points (photograph pixels) for an extra gap ``opening`` px."""
    def moved(contour: np.ndarray) -> np.ndarray:
        out = contour.copy()
        cx, half = (contour[0, 0] + contour[10, 0]) / 2, (contour[10, 0] - contour[0, 0]) / 2
        bump = np.cos(np.clip((contour[:, 0] - cx) / half, -1, 1) * np.pi / 2) ** 0.7
        out[_LOWER, 1] += opening * bump[_LOWER]
        out[_UPPER, 1] -= 0.2 * opening * bump[_UPPER]
        out[[0, 10], 1] += 0.25 * opening
        return out

    chin = _CHIN.copy()
    chin[:, 1] += 0.8 * opening
    return moved(_LIPS_OUTER), moved(_LIPS_INNER), chin


def _roi_frame() -> np.ndarray:
    x0, y0, x1, y1 = _MOUTH_ROI
    xs = np.linspace(x0, x1, 5)
    ys = np.linspace(y0, y1, 5)
    return np.array([[x, y] for x in xs for y in ys if x in (x0, x1) or y in (y0, y1)])


def piecewise_affine_warp(image: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Warp ``image`` [H,W,C] so that control points ``src`` [K,2] (x, y) move to ``dst``.

    Triangulates ``dst`` and maps every output pixel back through its triangle's affine map (barycentric
    coordinates), then samples bilinearly. Pixels outside the triangulation keep their value.
    """
    h, w = image.shape[:2]
    tri = Delaunay(dst)
    yy, xx = np.mgrid[0:h, 0:w]
    pix = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float64)
    simplex = tri.find_simplex(pix)
    inside = simplex >= 0
    t = tri.transform[simplex[inside]]  # [P, 3, 2]: inverse affine to barycentric coordinates
    b = np.einsum("pij,pj->pi", t[:, :2], pix[inside] - t[:, 2])
    bary = np.concatenate([b, 1 - b.sum(axis=1, keepdims=True)], axis=1)
    coords = pix.copy()
    coords[inside] = np.einsum("pk,pkd->pd", bary, src[tri.simplices[simplex[inside]]])
    sample = [coords[:, 1].reshape(h, w), coords[:, 0].reshape(h, w)]
    return np.stack([ndimage.map_coordinates(image[..., c], sample, order=1, mode="nearest")
                     for c in range(image.shape[2])], axis=-1)


def open_mouth(photo: np.ndarray, opening: float) -> np.ndarray:
    """Photograph with the mouth opened by ``opening`` px: piecewise-affine warp of the lip region."""
    if opening <= 1e-3:
        return photo
    x0, y0, x1, y1 = _MOUTH_ROI
    fixed = _roi_frame()
    outer, inner, chin = lip_contours(opening)
    src = np.concatenate([_LIPS_OUTER, _LIPS_INNER, _CHIN, fixed]) - (x0, y0)
    dst = np.concatenate([outer, inner, chin, fixed]) - (x0, y0)
    roi = photo[y0:y1 + 1, x0:x1 + 1].astype(np.float64) / 255.0
    warped = piecewise_affine_warp(roi, src, dst)
    # the inner mouth: dark cavity with a strip of upper teeth, soft-edged
    h, w = roi.shape[:2]
    mask = np.zeros((h, w))
    rr, cc = draw.polygon(inner[:, 1] - y0, inner[:, 0] - x0, (h, w))
    mask[rr, cc] = 1.0
    mask = ndimage.gaussian_filter(mask, 0.6)
    upper_y = np.interp(np.arange(w) + x0, inner[_UPPER][::-1, 0], inner[_UPPER][::-1, 1])
    rows = np.arange(h)[:, None] + y0
    teeth = ((rows - upper_y[None, :]) < min(3.5, 0.3 * (opening + 7))).astype(np.float64)
    cavity = np.array([0.22, 0.06, 0.08])
    teeth_rgb = np.array([0.88, 0.85, 0.8])
    fill = teeth[..., None] * teeth_rgb + (1 - teeth[..., None]) * cavity
    warped = warped * (1 - mask[..., None]) + fill * mask[..., None]
    out = photo.copy()
    out[y0:y1 + 1, x0:x1 + 1] = np.clip(warped * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return out


def render_frame(photo: np.ndarray, opening: float, pose: np.ndarray, cfg: DemoConfig) -> np.ndarray:
    crop = crop_matrix(cfg.size)
    centre = apply(crop, np.array([_FACE_CENTRE]))[0]
    m = similarity_matrix(_pose_in_output(pose, cfg), tuple(centre)) @ crop
    out = transform.warp(open_mouth(photo, opening), transform.AffineTransform(matrix=m).inverse,
                         output_shape=(cfg.size, cfg.size), order=1, mode="reflect", preserve_range=True)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _pose_in_output(pose: np.ndarray, cfg: DemoConfig) -> np.ndarray:
    """head_motion's translation is in 512² output pixels; rescale for other output sizes."""
    return np.array([pose[0] * cfg.size / 512, pose[1] * cfg.size / 512, pose[2], pose[3]])


# ---------------------------------------------------------------- generation

def generate(out_dir: str | Path, cfg: DemoConfig) -> None:
    out_dir = Path(out_dir)
    rng = np.random.default_rng(cfg.seed)
    env, vowel = syllable_envelope(cfg, rng)
    speech = synthesize_speech(cfg, env, vowel, rng)
    openness = frame_openness(env, cfg)
    n = len(openness)
    poses = head_motion(n, cfg.fps)
    photo = skdata.astronaut()
    crop = crop_matrix(cfg.size)
    centre = apply(crop, np.array([_FACE_CENTRE]))[0]

    lips_outer = np.zeros((n, 20, 2))
    lips_inner = np.zeros((n, 20, 2))
    aperture = np.zeros(n)
    out_poses = np.zeros((n, 4))
    for i in range(n):
        outer, inner, _ = lip_contours(cfg.max_opening * openness[i])
        out_poses[i] = _pose_in_output(poses[i], cfg)
        m = similarity_matrix(out_poses[i], tuple(centre)) @ crop
        lips_outer[i], lips_inner[i] = apply(m, outer), apply(m, inner)
        # inner-lip gap at the mouth centre (points 5 and 15 of the inner contour)
        aperture[i] = np.linalg.norm(lips_inner[i, 5] - lips_inner[i, 15])

    drive_cfg = replace(cfg, duration=cfg.drive_duration, seed=cfg.seed + 1)
    drive_rng = np.random.default_rng(drive_cfg.seed)
    drive = synthesize_speech(drive_cfg, *syllable_envelope(drive_cfg, drive_rng), drive_rng)

    with atomic_dir(out_dir) as tmp:
        write_wav(tmp / "audio.wav", speech, cfg.sample_rate)
        write_wav(tmp / "drive.wav", drive, cfg.sample_rate)
        frames = (render_frame(photo, cfg.max_opening * openness[i], poses[i], cfg)
                  for i in cli.progress(range(n), total=n, desc="demo frames"))
        encode_video(frames, tmp / "video.mp4", fps=cfg.fps, audio=tmp / "audio.wav")
        save_npz(tmp / "ground_truth.npz", aperture=aperture, openness=openness, pose=out_poses,
                 centre=centre, lips_outer=lips_outer, lips_inner=lips_inner,
                 face_width=np.array(_FACE_WIDTH * crop[0, 0]), fps=np.array(cfg.fps))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="output directory (replaced atomically)")
    p.add_argument("--duration", type=float, default=DemoConfig.duration, help="seconds")
    p.add_argument("--size", type=int, default=DemoConfig.size, help="frame side in pixels")
    p.add_argument("--seed", type=int, default=DemoConfig.seed)
    p.add_argument("--drive-duration", type=float, default=DemoConfig.drive_duration, help="seconds")
    return p


def _run(args: argparse.Namespace) -> None:
    generate(args.out, DemoConfig(duration=args.duration, size=args.size, seed=args.seed,
                                  drive_duration=args.drive_duration))


def main(argv: list[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
