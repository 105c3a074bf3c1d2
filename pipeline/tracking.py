"""Stage ``track_head_pose``: rigid head pose per frame and one pinhole camera per video, from landmarks alone.

Model: every frame i sees one rigid canonical landmark shape S [478, 3] through
``x_cam = R_i S + t_i`` and a pinhole camera ``u = fx * x/z + cx, v = fy * y/z + cy`` (fx = fy = f, one
focal for the whole video, principal point at the frame centre). The fit minimises a robust (Huber)
perspective reprojection error of the detected landmarks, with stable points (forehead, temples, nose
bridge, eye corners) weighted most, the rest of the upper face by ``face_weight`` (0 by default: MediaPipe
moves cheek points with an opening mouth, which showed as pitch jitter on the demo subject), and points
that move with speech, blinks, gaze or brows left out. Steps:

1. Closed-form start: generalised Procrustes (Umeyama) of MediaPipe's per-frame 3-D landmarks to a mean
   shape gives weak-perspective poses (scale, rotation, image position); for a focal f they become
   perspective poses with depth f / scale.
2. Focal: a few fields of view, each briefly fitted on evenly spread frames; the best one starts step 3.
3. Shape and focal, the global unknowns, with the poses of up to ``shape_frames`` evenly spread frames
   (shape regularised towards the Procrustes mean shape), by L-BFGS in torch.
4. Every frame's pose with shape and focal fixed, plus a third-difference (jerk) smoothness term on
   rotations and translations: zero-phase, so it removes jitter without delaying real motion, and unlike
   a second-difference term it does not flatten accelerating head turns at the ends of the video.
5. Points left out of the fit get canonical positions by linear triangulation over all frames.

Conventions (written into cameras.json as well):

* Camera: OpenCV, x right, y down, z forward (into the scene); pixel coordinates are continuous with the
  origin at the top-left corner of the frame (MediaPipe's convention), so the principal point is (W/2, H/2).
  ``world_to_camera`` maps canonical head coordinates to camera coordinates.
* Canonical head frame ("world"): origin at the head centre, taken as the midpoint of the two ear-level
  face-oval landmarks (234, 454); x from the subject's right eye to the left eye (image right for a
  frontal face), y down (forehead to chin, orthogonalised), z = x × y pointing from the face towards the
  back of the head. A frontal, upright face has rotation ≈ identity and the face at negative z.
* Units: metres. Gauge: the distance between the two eye centres (midpoints of each eye's corners) of the
  canonical shape is ``eye_distance_m`` (default 0.063, the average adult inter-pupillary distance). The
  absolute scale of a monocular video is unobservable; this only fixes it plausibly.
* Quality figures relative to the inter-ocular distance use the standard face-alignment normaliser: the
  per-frame image distance between the outer eye corners (landmarks 33 and 263).
* Split: test = the last max(1, floor(N / 11)) frames, train = all frames before them (contiguous).

cameras.json (one JSON object): ``width``, ``height`` (pixels); ``intrinsics`` {fx, fy, cx, cy};
``K`` [3][3]; ``convention`` "opencv world-to-camera"; ``units`` "metres"; ``head_frame`` (text);
``eye_distance_m``; ``frame_count`` N; ``world_to_camera`` [N][4][4] (frame i's 4x4 matrix, last row
0 0 0 1); ``split`` {train: [indices], test: [indices]}; ``canonical_landmarks`` [478][3] (metres, head
frame; training initialises Gaussians from it); ``quality`` {reprojection_px: {stable: {mean, p95}, all:
{mean, p95}}, reprojection_rel_iod: {same}, iod_px, jitter: {rotation_deg, translation_mm,
stable_landmarks_px: {detected, reprojected}}} (see :func:`tracking_quality`); ``fit`` {smoothing,
iterations, focal_fitted}. :func:`pose_series` turns it into roll/pitch/yaw and translation curves.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline import cli
from pipeline import landmarks as lmk
from pipeline.split import train_test_split
from pipeline.io import PipelineError, evenly_spaced, list_frames, load_json, load_rgb, save_image, save_json

log = logging.getLogger("pipeline.tracking")

OUTER_EYE_CORNERS = (lmk.RIGHT_EYE_CORNERS[0], lmk.LEFT_EYE_CORNERS[0])  # (33, 263): IOD normaliser
HEAD_CENTRE_POINTS = (lmk.UPPER_OVAL[0], lmk.UPPER_OVAL[-1])  # (234, 454)
FOREHEAD_TOP, CHIN, NOSE_BASE = 10, 152, 2


@dataclass(frozen=True)
class TrackingConfig:
    iterations: int = 150  # L-BFGS iterations of each fit (shape and focal; then all poses)
    smoothing: float = 1.0  # weight of the third-difference (jerk) term on rotation and translation
    shape_regularisation: float = 1e-3  # pull of the learned shape towards the initial mean shape
    huber: float = 0.02  # robust-loss threshold, in inter-ocular distances
    stable_weight: float = 1.0
    face_weight: float = 0.0  # other upper-face points: MediaPipe moves them with the mouth (demo: pitch)
    focal_px: float | None = None  # fix the focal instead of fitting it
    fov_candidates_deg: tuple[float, ...] = (5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0)
    init_frames: int = 120  # frames (evenly spread) used to pick the starting focal
    init_iterations: int = 25
    shape_frames: int = 300  # frames (evenly spread) from which shape and focal are learned
    eye_distance_m: float = 0.063
    min_focal_factor: float = 0.3  # focal bounds as multiples of the frame width (fov 118° .. 1°)
    max_focal_factor: float = 60.0
    threads: int = 1  # torch CPU threads for the fit; more help only on an otherwise idle machine


@dataclass
class HeadTrack:
    """A fitted track. rotations [N,3,3] and translations [N,3] (metres) map canonical head coordinates to
    OpenCV camera coordinates; shape [P,3] is the canonical landmark shape in metres."""

    rotations: np.ndarray
    translations: np.ndarray
    focal: float
    shape: np.ndarray
    width: int
    height: int

    @property
    def intrinsics(self) -> np.ndarray:
        return np.array([[self.focal, 0.0, self.width / 2], [0.0, self.focal, self.height / 2], [0.0, 0.0, 1.0]])

    def project(self, points: np.ndarray | None = None) -> np.ndarray:
        """Image positions [N, P, 2] of the canonical shape (or of ``points`` [P, 3]) in every frame."""
        pts = self.shape if points is None else points
        cam = np.einsum("nij,pj->npi", self.rotations, pts) + self.translations[:, None, :]
        z = np.maximum(cam[..., 2:], 1e-9)
        return self.focal * cam[..., :2] / z + np.array([self.width / 2, self.height / 2])


# ---------------------------------------------------------------------------------------------------------
# Closed-form pieces
# ---------------------------------------------------------------------------------------------------------

def similarity_fit(src: np.ndarray, dst: np.ndarray, weights: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted Umeyama fit, batched over frames: s R src + t ≈ dst.

    src: [P,3] or [N,P,3]; dst: [N,P,3]; weights: [P]. Returns s [N], R [N,3,3] (proper rotations), t [N,3].
    """
    w = (weights / weights.sum())[None, :, None]
    src = np.broadcast_to(src, dst.shape)
    mu_s = (w * src).sum(1)
    mu_d = (w * dst).sum(1)
    xs = src - mu_s[:, None]
    xd = dst - mu_d[:, None]
    cov = np.einsum("npi,npj->nij", w * xd, xs)
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.ones((len(d), 3))
    fix[:, 2] = d
    rot = (u * fix[:, None, :]) @ vt
    var = (w[..., 0] * (xs ** 2).sum(-1)).sum(1)
    scale = (sig * fix).sum(1) / var
    trans = mu_d - scale[:, None] * np.einsum("nij,nj->ni", rot, mu_s)
    return scale, rot, trans


def mean_shape(points: np.ndarray, weights: np.ndarray, iterations: int = 3
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generalised Procrustes: a mean shape and per-frame similarity poses.

    points: [N,P,3]; weights: [P]. Returns (shape [P,3], s [N], R [N,3,3], t [N,3]) with
    s R shape + t ≈ points[i]; the shape has the scale of the median frame.
    """
    ref = np.median(points, axis=0)
    for _ in range(iterations):
        s, r, t = similarity_fit(ref, points, weights)
        aligned = np.einsum("nji,npj->npi", r, points - t[:, None]) / s[:, None, None]
        ref = np.median(aligned, axis=0) * np.median(s)
    s, r, t = similarity_fit(ref, points, weights)
    return ref, s, r, t


def head_frame(shape: np.ndarray, eye_distance: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Gauge of the canonical head frame for a 478-point shape [P,3] given in any similarity frame.

    Returns (a, Q, c) such that ``a * (shape - c) @ Q.T`` is the shape in the canonical head frame
    (see the module docstring): scale a, rotation Q [3,3] (rows = canonical axes), origin c [3].
    """
    r_eye = shape[list(lmk.RIGHT_EYE_CORNERS)].mean(0)
    l_eye = shape[list(lmk.LEFT_EYE_CORNERS)].mean(0)
    x = l_eye - r_eye
    a = eye_distance / np.linalg.norm(x)
    x = x / np.linalg.norm(x)
    down = shape[CHIN] - shape[FOREHEAD_TOP]
    y = down - x * (down @ x)
    y /= np.linalg.norm(y)
    q = np.stack([x, y, np.cross(x, y)])
    c = shape[list(HEAD_CENTRE_POINTS)].mean(0)
    return float(a), q, c


def regauge(shape: np.ndarray, rotations: np.ndarray, translations: np.ndarray, a: float, q: np.ndarray,
            c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Express a track in another similarity gauge without changing any projection.

    new shape = a Q (shape - c); R' = R Qᵀ; t' = a (R c + t). Scaling shape and translation together leaves
    perspective projections unchanged."""
    return (a * (shape - c) @ q.T, rotations @ q.T, a * (np.einsum("nij,j->ni", rotations, c) + translations))


def point_weights(canonical: np.ndarray, config: TrackingConfig) -> np.ndarray:
    """Fit weight per landmark [P]: stable points most, other upper-face points less, and 0 for points that
    move with speech, blinks, gaze or brows (mouth, jaw, everything below the nose base, eyelids, irises,
    eyebrows). canonical: [P,3] in the canonical head frame (y down)."""
    w = np.full(len(canonical), config.face_weight)
    moving = set(lmk.MOUTH) | set(lmk.JAW) | set(lmk.RIGHT_IRIS) | set(lmk.LEFT_IRIS)
    moving |= set(lmk.RIGHT_EYE) | set(lmk.LEFT_EYE) | set(lmk.RIGHT_EYEBROW) | set(lmk.LEFT_EYEBROW)
    w[list(moving)] = 0.0
    w[canonical[:, 1] > canonical[NOSE_BASE, 1]] = 0.0
    w[list(lmk.STABLE)] = config.stable_weight
    return w


def _index_weights(config: TrackingConfig) -> np.ndarray:
    """Weights for the first Procrustes pass, before any canonical geometry exists."""
    w = np.zeros(lmk.NUM_MEDIAPIPE_POINTS)
    w[list(lmk.STABLE)] = config.stable_weight
    w[list(lmk.NOSE)] = np.maximum(w[list(lmk.NOSE)], config.face_weight)
    return w


def triangulate(points2d: np.ndarray, rotations: np.ndarray, translations: np.ndarray, focal: float,
                centre: tuple[float, float], prior: np.ndarray, prior_weight: float = 1e-3,
                chunk: int = 2048) -> np.ndarray:
    """Linear least-squares canonical positions [P,3] of points seen at points2d [N,P,2] under known cameras.

    Each frame gives two equations linear in X: (u - cx)(r3·X + tz) = f (r1·X + tx), likewise for v,
    divided by the point's prior depth so they approximate pixel errors. ``prior`` [P,3] regularises
    points that the views barely constrain.
    """
    n, p, _ = points2d.shape
    ata = np.zeros((p, 3, 3))
    atb = np.zeros((p, 3))
    for i0 in range(0, n, chunk):
        r = rotations[i0:i0 + chunk]
        t = translations[i0:i0 + chunk]
        uv = points2d[i0:i0 + chunk] - np.asarray(centre)
        depth = (np.einsum("nj,pj->np", r[:, 2], prior) + t[:, 2:3])[..., None]
        for k in range(2):
            # row: (uv_k r3 - f r_k) · X = f t_k - uv_k tz, scaled by 1 / depth
            a = (uv[..., k:k + 1] * r[:, None, 2] - focal * r[:, None, k]) / depth
            b = (focal * t[:, None, k] - uv[..., k] * t[:, None, 2]) / depth[..., 0]
            ata += np.einsum("npi,npj->pij", a, a)
            atb += np.einsum("npi,np->pi", a, b)
    lam = prior_weight * n * focal ** 2 / np.mean(translations[:, 2]) ** 2
    ata += lam * np.eye(3)
    atb += lam * prior
    return np.linalg.solve(ata, atb[..., None])[..., 0]


# ---------------------------------------------------------------------------------------------------------
# Joint perspective fit (torch)
# ---------------------------------------------------------------------------------------------------------

def _so3_exp(w: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N,3,3] from axis-angle vectors [N,3] (safe at 0)."""
    theta2 = (w * w).sum(-1, keepdim=True)[..., None]
    theta = torch.sqrt(theta2 + 1e-20)
    small = theta2 < 1e-8
    a = torch.where(small, 1 - theta2 / 6, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24, (1 - torch.cos(theta)) / (theta2 + 1e-20))
    zero = torch.zeros_like(w[:, 0])
    k = torch.stack([zero, -w[:, 2], w[:, 1], w[:, 2], zero, -w[:, 0], -w[:, 1], w[:, 0], zero], -1).view(-1, 3, 3)
    return torch.eye(3, dtype=w.dtype) + a * k + b * (k @ k)


class _Fit(torch.nn.Module):
    """Parameters in well-conditioned units: lengths in eye distances, image positions in IODs.

    Per frame: rotation increment w (R = exp(w) R0), image position (u, v) of the head origin and
    q = log(pixels per length unit). Depth follows as Z = f / exp(q), so changing the focal at fixed q
    keeps the image scale and only changes perspective, which decouples f from the per-frame depths.
    """

    def __init__(self, r0: np.ndarray, uv0: np.ndarray, q0: np.ndarray, shape0: np.ndarray, focal: float,
                 centre: np.ndarray, unit_px: float, fit_focal: bool, fit_shape: bool,
                 focal_range: tuple[float, float]):
        super().__init__()
        dt = torch.float32
        self.register_buffer("r0", torch.tensor(r0, dtype=dt))
        self.register_buffer("centre", torch.tensor(centre, dtype=dt))
        self.register_buffer("shape0", torch.tensor(shape0, dtype=dt))
        self.unit_px = unit_px
        self.w = torch.nn.Parameter(torch.zeros(len(r0), 3, dtype=dt))
        self.uv = torch.nn.Parameter(torch.tensor((uv0 - centre) / unit_px, dtype=dt))
        self.q = torch.nn.Parameter(torch.tensor(q0, dtype=dt))
        self.shape = torch.nn.Parameter(torch.tensor(shape0, dtype=dt), requires_grad=fit_shape)
        # log focal = lo + (hi - lo) * sigmoid(z): the focal stays within its bounds while fitted
        self.log_lo, self.log_hi = math.log(focal_range[0]), math.log(focal_range[1])
        frac = min(max((math.log(focal) - self.log_lo) / (self.log_hi - self.log_lo), 1e-4), 1 - 1e-4)
        self.z_f = torch.nn.Parameter(torch.tensor(math.log(frac / (1 - frac)), dtype=dt), requires_grad=fit_focal)

    def pose(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(R [N,3,3], t [N,3] in length units, f)."""
        f = torch.exp(self.log_lo + (self.log_hi - self.log_lo) * torch.sigmoid(self.z_f))
        depth = f / torch.exp(self.q)
        lateral = self.uv * self.unit_px * (depth / f)[:, None]
        return _so3_exp(self.w) @ self.r0, torch.cat([lateral, depth[:, None]], 1), f

    def forward(self, obs: torch.Tensor, inv_iod: torch.Tensor, weights: torch.Tensor, huber: float,
                smoothing: float, shape_reg: float) -> torch.Tensor:
        r, t, f = self.pose()
        cam = torch.einsum("nij,pj->npi", r, self.shape) + t[:, None, :]
        proj = f * cam[..., :2] / cam[..., 2:].clamp_min(1e-6) + self.centre
        err = torch.sqrt(((proj - obs) ** 2).sum(-1) + 1e-12) * inv_iod[:, None]
        rho = torch.where(err < huber, 0.5 * err ** 2, huber * (err - 0.5 * huber))
        loss = (rho * weights).sum() / (len(obs) * weights.sum())
        if smoothing > 0 and len(obs) > 3:
            # third differences (jerk): unlike second differences they let the fit accelerate freely, so
            # turning heads are not flattened, least of all at the ends of the video (natural boundaries)
            d3r = torch.diff(r, n=3, dim=0)
            d3t = torch.diff(t[:, :2], n=3, dim=0)
            d3q = torch.diff(self.q, n=3, dim=0)
            loss = loss + smoothing * (0.5 * (d3r ** 2).sum() + (d3t ** 2).sum() + (d3q ** 2).sum()) / len(obs)
        return loss + shape_reg * ((self.shape - self.shape0) ** 2).sum(-1).mean()


def _lbfgs(model: _Fit, args: tuple, iterations: int) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=iterations, max_eval=int(iterations * 1.5),
                            history_size=20, tolerance_grad=1e-10, tolerance_change=1e-14,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = model(*args)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(model(*args))


def fit_head_pose(landmarks: np.ndarray, width: int, height: int, config: TrackingConfig = TrackingConfig()
                  ) -> HeadTrack:
    """Fit a rigid head track to landmarks [N, 478, 3] (pixels, MediaPipe layout) of one video."""
    previous = torch.get_num_threads()
    # torch's thread count is process-wide: set it for the fit only
    torch.set_num_threads(max(1, config.threads))
    try:
        return _fit_head_pose(landmarks, width, height, config)
    finally:
        torch.set_num_threads(previous)


def _fit_head_pose(landmarks: np.ndarray, width: int, height: int, config: TrackingConfig) -> HeadTrack:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (lmk.NUM_MEDIAPIPE_POINTS, 3):
        raise ValueError(f"need landmarks [N, {lmk.NUM_MEDIAPIPE_POINTS}, 3], got {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError("landmarks contain NaN or inf")
    n = len(lm)
    eye_m = config.eye_distance_m

    # closed-form start: weak-perspective poses of a mean shape, in the canonical gauge (unit = eye distance)
    ref, s, r, b = mean_shape(lm, _index_weights(config))
    a, q_rot, c = head_frame(ref, 1.0)
    # s R ref + b = (s / a) (R Qᵀ) shape0 + (b + s R c)
    shape0 = a * (ref - c) @ q_rot.T
    r0 = r @ q_rot.T
    b0 = b + s[:, None] * np.einsum("nij,j->ni", r, c)
    s0 = s / a  # pixels per eye distance at the head origin
    weights = point_weights(shape0, config)
    fit_idx = np.flatnonzero(weights > 0)

    centre = np.array([width / 2, height / 2])
    iod = np.linalg.norm(lm[:, OUTER_EYE_CORNERS[0], :2] - lm[:, OUTER_EYE_CORNERS[1], :2], axis=1)
    unit_px = float(np.median(s0))
    obs = torch.tensor(lm[:, fit_idx, :2], dtype=torch.float32)
    inv_iod = torch.tensor(1.0 / np.maximum(iod, 1e-6), dtype=torch.float32)
    w_t = torch.tensor(weights[fit_idx], dtype=torch.float32)
    f_lo, f_hi = config.min_focal_factor * width, config.max_focal_factor * width

    def make(f0: float, rows: np.ndarray, shape: np.ndarray, fit_globals: bool) -> _Fit:
        return _Fit(r0[rows], b0[rows, :2], np.log(s0[rows]), shape, f0, centre, unit_px,
                    fit_globals and config.focal_px is None, fit_globals, (f_lo, f_hi))

    if config.focal_px is not None:
        focal = float(config.focal_px)
    else:
        # a few fields of view, each briefly fitted on evenly spread frames (no smoothing: not adjacent)
        rows = np.asarray(evenly_spaced(n, config.init_frames))
        args = (obs[rows], inv_iod[rows], w_t, config.huber, 0.0, config.shape_regularisation)
        best = None
        for fov in config.fov_candidates_deg:
            f0 = width / (2 * math.tan(math.radians(fov) / 2))
            loss = _lbfgs(make(f0, rows, shape0[fit_idx], False), args, config.init_iterations)
            log.info("focal %.0f px (fov %.0f°): loss %.3g", f0, fov, loss)
            if best is None or loss < best[0]:
                best = (loss, f0)
        focal = best[1]

    # 1. shape and focal (global unknowns) with the poses of evenly spread frames: its cost and convergence
    #    do not depend on the video's length
    rows = np.asarray(evenly_spaced(n, config.shape_frames))
    model = make(focal, rows, shape0[fit_idx], True)
    loss = _lbfgs(model, (obs[rows], inv_iod[rows], w_t, config.huber, 0.0, config.shape_regularisation),
                  config.iterations)
    with torch.no_grad():
        focal = float(model.pose()[2])
        fitted = model.shape.double().numpy()
    log.info("shape and focal from %d frames: loss %.4g, focal %.1f px", len(rows), loss, focal)

    # 2. every frame's pose, shape and focal fixed, with temporal smoothing
    model = make(focal, np.arange(n), fitted, False)
    loss = _lbfgs(model, (obs, inv_iod, w_t, config.huber, config.smoothing, 0.0), config.iterations)
    with torch.no_grad():
        r_fit, t_fit, _ = (x.double().numpy() for x in model.pose())
    log.info("poses of %d frames: loss %.4g", n, loss)

    # all points, including those left out of the fit, from the fitted cameras; fitted ones kept as fitted
    shape = triangulate(lm[..., :2], r_fit, t_fit, focal, tuple(centre), prior=shape0)
    shape[fit_idx] = fitted
    a, q_rot, c = head_frame(shape, eye_m)
    shape, r_fit, t_fit = regauge(shape, r_fit, t_fit, a, q_rot, c)
    return HeadTrack(r_fit, t_fit, focal, shape, int(width), int(height))


# ---------------------------------------------------------------------------------------------------------
# Quality, split, pose curves
# ---------------------------------------------------------------------------------------------------------

def _stats(values: np.ndarray, digits: int = 4) -> dict[str, float]:
    return {"mean": round(float(values.mean()), digits), "p95": round(float(np.percentile(values, 95)), digits)}


def tracking_quality(track: HeadTrack, landmarks: np.ndarray) -> dict:
    """Reprojection error of the canonical shape against detected landmarks [N,478,3], and jitter.

    reprojection_px / reprojection_rel_iod: mean and 95th percentile over all (frame, point) pairs, for the
    STABLE set and for all 478 points (the latter includes mouth and jaw, which no rigid model follows).
    jitter: RMS second difference per frame of rotation (degrees), translation (mm) and of the stable
    points' image positions, detected vs reprojected (pixels).
    """
    err = np.linalg.norm(track.project() - landmarks[..., :2], axis=-1)
    iod = np.linalg.norm(landmarks[:, OUTER_EYE_CORNERS[0], :2] - landmarks[:, OUTER_EYE_CORNERS[1], :2], axis=1)
    rel = err / iod[:, None]
    stable = list(lmk.STABLE)
    out = {
        "reprojection_px": {"stable": _stats(err[:, stable], 3), "all": _stats(err, 3)},
        "reprojection_rel_iod": {"stable": _stats(rel[:, stable]), "all": _stats(rel)},
        "iod_px": round(float(iod.mean()), 2),
    }
    if len(landmarks) > 2:
        def rms_d2(x: np.ndarray) -> float:
            d2 = x[:-2] - 2 * x[1:-1] + x[2:]
            return float(np.sqrt((d2 ** 2).reshape(len(d2), -1).sum(1).mean()))

        angles = np.degrees(np.stack([_rotvec(rr) for rr in track.rotations]))
        out["jitter"] = {
            "rotation_deg": round(rms_d2(angles), 4),
            "translation_mm": round(rms_d2(track.translations * 1000), 4),
            "stable_landmarks_px": {
                "detected": round(rms_d2(landmarks[:, stable, :2]) / math.sqrt(len(stable)), 4),
                "reprojected": round(rms_d2(track.project()[:, stable]) / math.sqrt(len(stable)), 4),
            },
        }
    return out


def _rotvec(r: np.ndarray) -> np.ndarray:
    cos = np.clip((np.trace(r) - 1) / 2, -1, 1)
    angle = math.acos(cos)
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    norm = np.linalg.norm(axis)
    return axis * (angle / norm) if norm > 1e-12 else np.zeros(3)


def euler_angles(rotations: np.ndarray) -> np.ndarray:
    """(roll, pitch, yaw) in degrees [N,3] with R = Rz(roll) Ry(yaw) Rx(pitch), about the OpenCV camera axes.

    Positive roll turns the head clockwise in the image; positive pitch tips the face down; positive yaw
    turns the face towards the image's left (the subject's right)."""
    r = np.asarray(rotations).reshape(-1, 3, 3)
    yaw = np.arcsin(np.clip(-r[:, 2, 0], -1, 1))
    roll = np.arctan2(r[:, 1, 0], r[:, 0, 0])
    pitch = np.arctan2(r[:, 2, 1], r[:, 2, 2])
    return np.degrees(np.stack([roll, pitch, yaw], 1))


def pose_series(cameras: dict | str | Path) -> dict[str, np.ndarray]:
    """Per-frame head pose from a cameras.json (dict or path): roll, pitch, yaw in degrees [N] (see
    :func:`euler_angles`) and translation [N,3] in metres (head centre in camera coordinates)."""
    if not isinstance(cameras, dict):
        cameras = load_json(cameras)
    m = np.asarray(cameras["world_to_camera"], dtype=np.float64)
    angles = euler_angles(m[:, :3, :3])
    return {"roll": angles[:, 0], "pitch": angles[:, 1], "yaw": angles[:, 2], "translation": m[:, :3, 3]}


def cameras_document(track: HeadTrack, quality: dict, config: TrackingConfig) -> dict:
    """The cameras.json content (see the module docstring for the conventions)."""
    n = len(track.rotations)
    w2c = np.tile(np.eye(4), (n, 1, 1))
    w2c[:, :3, :3] = track.rotations
    w2c[:, :3, 3] = track.translations
    train, test = train_test_split(n)
    k = track.intrinsics
    return {
        "width": track.width,
        "height": track.height,
        "intrinsics": {"fx": round(track.focal, 4), "fy": round(track.focal, 4), "cx": k[0, 2], "cy": k[1, 2]},
        "K": k.round(4).tolist(),
        "convention": "opencv world-to-camera",
        "units": "metres",
        "head_frame": "origin at the head centre (midpoint of landmarks 234 and 454); x towards the subject's "
                      "left eye, y down, z from the face towards the back of the head",
        "eye_distance_m": config.eye_distance_m,
        "frame_count": n,
        "world_to_camera": np.round(w2c, 7).tolist(),
        "split": {"train": train, "test": test},
        "canonical_landmarks": np.round(track.shape, 6).tolist(),
        "quality": quality,
        "fit": {"smoothing": config.smoothing, "iterations": config.iterations,
                "focal_fitted": config.focal_px is None},
    }


def rotation_matrix(roll_deg: np.ndarray, pitch_deg: np.ndarray, yaw_deg: np.ndarray) -> np.ndarray:
    """Inverse of :func:`euler_angles`: R = Rz(roll) Ry(yaw) Rx(pitch), [N,3,3]."""
    r, p, y = (np.radians(np.asarray(a, dtype=np.float64)) for a in (roll_deg, pitch_deg, yaw_deg))
    one, zero = np.ones_like(r), np.zeros_like(r)
    rz = np.stack([np.cos(r), -np.sin(r), zero, np.sin(r), np.cos(r), zero, zero, zero, one], -1)
    ry = np.stack([np.cos(y), zero, np.sin(y), zero, one, zero, -np.sin(y), zero, np.cos(y)], -1)
    rx = np.stack([one, zero, zero, zero, np.cos(p), -np.sin(p), zero, np.sin(p), np.cos(p)], -1)
    return rz.reshape(-1, 3, 3) @ ry.reshape(-1, 3, 3) @ rx.reshape(-1, 3, 3)


def synthetic_track(n: int, size: int = 512, focal: float = 1200.0, noise_px: float = 0.5, seed: int = 0
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A landmark track with known ground truth, for tests and benchmarks.

    A random face-like shape (478 points on a bumpy half-ellipsoid, 15 x 20 x 12 cm, with the landmarks
    that define the canonical gauge placed where a face has them) moves smoothly (roll ±10°, pitch ±15°,
    yaw ±25°, a few cm of translation at ~0.6 m) in front of a camera of the given focal. Returns
    (landmarks float32 [n, 478, 3] in MediaPipe's format with Gaussian pixel noise, truth) where truth holds
    "shape" [478,3] (metres, canonical frame), "rotations" [n,3,3], "translations" [n,3], "focal",
    "roll"/"pitch"/"yaw" [n] in degrees.
    """
    rng = np.random.default_rng(seed)
    ax, ay, az = 0.075, 0.10, 0.06
    rad = np.sqrt(rng.uniform(0, 0.92, lmk.NUM_MEDIAPIPE_POINTS))
    ang = rng.uniform(0, 2 * np.pi, lmk.NUM_MEDIAPIPE_POINTS)
    xy = np.stack([rad * np.cos(ang), rad * np.sin(ang)], 1)
    anchors = {33: (-0.6, -0.2), 133: (-0.2, -0.2), 362: (0.2, -0.2), 263: (0.6, -0.2), 10: (0.0, -0.9),
               152: (0.0, 0.9), 234: (-1.0, 0.0), 454: (1.0, 0.0), NOSE_BASE: (0.0, 0.3)}
    for k, v in anchors.items():
        xy[k] = v
    depth = np.sqrt(np.clip(1 - (xy ** 2).sum(1), 0, 1)) * az + rng.normal(0, 0.004, len(xy))
    depth[[234, 454]] = 0.0  # the canonical origin is their midpoint
    shape = np.stack([xy[:, 0] * ax, xy[:, 1] * ay, -depth], 1)
    shape *= 0.063 / np.linalg.norm(shape[[263, 362]].mean(0) - shape[[33, 133]].mean(0))
    t = np.arange(n) / 25.0

    def wave(amplitude: float) -> np.ndarray:
        freqs = rng.uniform(0.1, 0.6, 3)
        phases = rng.uniform(0, 2 * np.pi, 3)
        return amplitude * np.sum(np.sin(2 * np.pi * freqs[:, None] * t + phases[:, None]), 0) / 2

    roll, pitch, yaw = wave(10.0), wave(15.0), wave(25.0)
    rot = rotation_matrix(roll, pitch, yaw)
    trans = np.stack([wave(0.03), wave(0.02), 0.6 + wave(0.05)], 1)
    cam = np.einsum("nij,pj->npi", rot, shape) + trans[:, None]
    uv = focal * cam[..., :2] / cam[..., 2:] + size / 2
    rel_depth = (cam[..., 2] - trans[:, None, 2]) * focal / trans[:, None, 2]  # MediaPipe-like z, pixels
    obs = np.concatenate([uv + rng.normal(0, noise_px, uv.shape), rel_depth[..., None]], -1)
    truth = {"shape": shape, "rotations": rot, "translations": trans, "focal": np.float64(focal),
             "roll": roll, "pitch": pitch, "yaw": yaw}
    return obs.astype(np.float32), truth


# ---------------------------------------------------------------------------------------------------------
# QC picture
# ---------------------------------------------------------------------------------------------------------

_TILE = 256
_PLOT_H = 150


def _dots(draw: ImageDraw.ImageDraw, pts: np.ndarray, colour: tuple[int, int, int], r: float = 1.2) -> None:
    for x, y in pts:
        draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)


def _curves(series: Sequence[tuple[str, np.ndarray, tuple[int, int, int]]], width: int, title: str
            ) -> Image.Image:
    img = Image.new("RGB", (width, _PLOT_H), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    values = np.concatenate([s for _, s, _ in series])
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 1, hi + 1
    top, bottom, left = 18, _PLOT_H - 6, 50
    draw.text((left, 2), title, fill=(0, 0, 0))
    draw.text((2, top - 4), f"{hi:.3g}", fill=(90, 90, 90))
    draw.text((2, bottom - 10), f"{lo:.3g}", fill=(90, 90, 90))
    draw.line((left, top, left, bottom), fill=(160, 160, 160))
    x_label = width - sum(8 * len(name) + 10 for name, _, _ in series)
    for name, s, colour in series:
        xs = left + np.arange(len(s)) * (width - left - 10) / max(1, len(s) - 1)
        ys = bottom - (s - lo) / (hi - lo) * (bottom - top)
        draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=1)
        draw.text((x_label, 2), name, fill=colour)
        x_label += 8 * len(name) + 10
    return img


def qc_picture(track: HeadTrack, landmarks: np.ndarray, frames: dict[int, np.ndarray]) -> np.ndarray:
    """QC image uint8 [H,W,3]: frames (or black tiles) with detected landmarks (green) and the reprojected
    canonical shape (red), then roll/pitch/yaw (degrees) and translation (mm, minus its mean) over time.
    frames: {frame index: RGB image}; the shown indices are its keys."""
    proj = track.project()
    tiles = []
    for i, image in sorted(frames.items()):
        tile = Image.fromarray(image).convert("RGB").resize((_TILE, _TILE), Image.BILINEAR)
        draw = ImageDraw.Draw(tile)
        sx, sy = _TILE / track.width, _TILE / track.height
        _dots(draw, landmarks[i, :, :2] * (sx, sy), (0, 220, 0))
        _dots(draw, proj[i] * (sx, sy), (255, 40, 40), 0.8)
        draw.text((4, 4), f"frame {i}", fill=(255, 255, 0))
        tiles.append(tile)
    width = max(_TILE * len(tiles), 4 * _TILE)
    angles = euler_angles(track.rotations)
    trans = (track.translations - track.translations.mean(0)) * 1000
    rgb = ((220, 40, 40), (40, 160, 40), (40, 60, 220))
    plots = [
        _curves([(n, angles[:, k], rgb[k]) for k, n in enumerate(("roll", "pitch", "yaw"))], width,
                "rotation (degrees) over frames"),
        _curves([(n, trans[:, k], rgb[k]) for k, n in enumerate(("x", "y", "z"))], width,
                "translation minus mean (mm) over frames"),
    ]
    canvas = Image.new("RGB", (width, _TILE + _PLOT_H * len(plots)), (255, 255, 255))
    for k, tile in enumerate(tiles):
        canvas.paste(tile, (k * _TILE, 0))
    for k, plot in enumerate(plots):
        canvas.paste(plot, (0, _TILE + k * _PLOT_H))
    return np.asarray(canvas)


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    d = TrackingConfig()
    p = argparse.ArgumentParser(prog="python -m pipeline.tracking", description=__doc__.split("\n")[0])
    p.add_argument("--landmarks", type=Path, required=True, help="landmarks.npy [N,478,3] of detect_landmarks")
    p.add_argument("--video-json", type=Path, required=True, help="video.json (frame size, fps)")
    p.add_argument("--out", type=Path, required=True, help="cameras.json to write")
    p.add_argument("--qc", type=Path, default=None, help="QC picture to write (PNG)")
    p.add_argument("--frames", type=Path, default=None, help="frame directory, to draw the QC picture on frames")
    p.add_argument("--smoothing", type=float, default=d.smoothing, help="temporal smoothness weight (0 = off)")
    p.add_argument("--iterations", type=int, default=d.iterations,
                   help="L-BFGS iterations of each fit (shape and focal, then all poses)")
    p.add_argument("--focal", type=float, default=None, help="fix the focal length (pixels) instead of fitting")
    p.add_argument("--eye-distance", type=float, default=d.eye_distance_m,
                   help="canonical distance between the eye centres, metres (sets the scale)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch CPU threads (more help only on an otherwise idle machine)")
    return p


def _run(args: argparse.Namespace) -> None:
    video = load_json(args.video_json)
    landmarks = lmk.load_landmarks(args.landmarks, video.get("frame_count"))
    n = len(landmarks)
    if n < 2:
        raise PipelineError(f"{args.landmarks}: {n} frame(s); tracking needs at least 2")
    size = video.get("resolution")
    width = int(video.get("width", size or 0))
    height = int(video.get("height", size or 0))
    if width <= 0 or height <= 0:
        raise PipelineError(f"{args.video_json}: no frame size (resolution or width/height)")
    config = TrackingConfig(iterations=args.iterations, smoothing=args.smoothing, focal_px=args.focal,
                            eye_distance_m=args.eye_distance, threads=args.threads)
    track = fit_head_pose(landmarks, width, height, config)
    quality = tracking_quality(track, landmarks)
    save_json(args.out, cameras_document(track, quality, config))
    rel = quality["reprojection_rel_iod"]["stable"]
    log.info("%s: focal %.1f px, stable reprojection %.2f%% IOD mean, %.2f%% p95", args.out, track.focal,
             100 * rel["mean"], 100 * rel["p95"])
    if args.qc is not None:
        indices = evenly_spaced(n, 4)
        if args.frames is not None:
            files = list_frames(args.frames, ext="jpg")
            if len(files) != n:
                raise PipelineError(f"{args.frames}: {len(files)} frames but {n} landmark frames")
            frames = {i: load_rgb(files[i]) for i in indices}
        else:
            frames = {i: np.zeros((height, width, 3), np.uint8) for i in indices}
        save_image(args.qc, qc_picture(track, landmarks, frames))


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
