"""Synthetic MediaPipe-layout landmarks for the face-analysis tests: elliptic face oval and lips."""

from __future__ import annotations

import numpy as np

from pipeline.landmarks import FACE_OVAL, LIPS_INNER, LIPS_OUTER, NUM_MEDIAPIPE_POINTS


def _ellipse(indices, lm, cx, cy, a, b, start_deg):
    # the index sets run clockwise on screen (x right, y down): FACE_OVAL from the top, the lips from the
    # subject's right mouth corner (image left) over the upper lip
    for k, idx in enumerate(indices):
        t = np.deg2rad(start_deg + 360.0 * k / len(indices))
        lm[idx, 0] = cx + a * np.cos(t)
        lm[idx, 1] = cy + b * np.sin(t)


def synthetic_face(scale: float = 1.0, mouth_open: float = 6.0,
                   centre: tuple[float, float] = (128.0, 110.0)) -> np.ndarray:
    """float32 [478, 3]: face oval (semi-axes 50x65 * scale) centred at ``centre``, lips centred 35 * scale
    below it (outer 22 x (8 + mouth_open), inner 15 x mouth_open, times scale); other points at the centre."""
    cx, cy = centre
    lm = np.zeros((NUM_MEDIAPIPE_POINTS, 3), dtype=np.float32)
    lm[:, 0], lm[:, 1] = cx, cy
    _ellipse(FACE_OVAL, lm, cx, cy, 50 * scale, 65 * scale, -90.0)
    my = cy + 35 * scale
    _ellipse(LIPS_OUTER, lm, cx, my, 22 * scale, (8 + mouth_open) * scale, 180.0)
    _ellipse(LIPS_INNER, lm, cx, my, 15 * scale, max(mouth_open, 0.2) * scale, 180.0)
    return lm


def ellipse_mask(shape, cx, cy, a, b) -> np.ndarray:
    """bool mask of pixel centres (x + 0.5, y + 0.5) inside the ellipse."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return ((xx + 0.5 - cx) / a) ** 2 + ((yy + 0.5 - cy) / b) ** 2 < 1.0
