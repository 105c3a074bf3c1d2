"""A closed-form audio encoder: ridge regression from a frame's audio context to its mouth.

On a subject's few minutes of speech the learnt audio path (pipeline/audioplane.py's encoder and temporal
attention) fits its training frames exactly and predicts unseen audio's mouth by an amount that depends on
its random start (macron_50s, test-split aperture r 0.77-0.91 over eight seeds). Ridge regression on the
same features is one convex problem: no seed, and it predicts unseen audio better (macron 0.88, the demo
0.98; BENCHMARKS.md). Its input is the frame's feature window and those of ±``context`` neighbours,
flattened and standardised over the training frames; its outputs the mouth shape (aperture, width, chin
drop, z-scored over the training frames; :func:`pipeline.fine.standard_mouth_shape`) and optionally scores
of the mouth box's principal components (:func:`principal_scores`). Each output's penalty is chosen by
blocked cross-validation on the training frames (contiguous folds, a gap of ``gap`` frames either side so
that no held-out frame's audio overlaps a fitting frame's).

The fit solves the dual (an n x n system): features have thousands of dimensions, subjects ~10^3 frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

PENALTIES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # per input dimension (the Gram matrix is / D)
MAX_FIT_FRAMES = 3000  # evenly spaced training frames the fit reads at most (memory: frames x dimensions)


@dataclass
class RidgeFit:
    """weight [D, K], bias [K], mean and std [D] of the standardised inputs; per output [K] the chosen
    penalty and its cross-validated Pearson r."""

    weight: np.ndarray
    bias: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    penalty: np.ndarray
    cv_r: np.ndarray


def _solve(gram: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    return np.linalg.solve(gram + penalty * np.eye(len(gram)), y)


def cross_validated(gram: np.ndarray, y: np.ndarray, penalty: float, folds: int, gap: int) -> np.ndarray:
    """Held-out predictions [n, K] of ``y`` [n, K]: ``folds`` contiguous folds, each predicted by a fit on the
    rows more than ``gap`` rows away from it (``gram`` [n, n])."""
    n = len(y)
    predicted = np.zeros_like(y)
    for fold in np.array_split(np.arange(n), folds):
        keep = np.r_[0:max(0, fold[0] - gap), min(n, fold[-1] + gap + 1):n]
        centre = y[keep].mean(axis=0)
        alpha = _solve(gram[np.ix_(keep, keep)], y[keep] - centre, penalty)
        predicted[fold] = gram[np.ix_(fold, keep)] @ alpha + centre
    return predicted


def fit_ridge(x: np.ndarray, y: np.ndarray, folds: int = 5, gap: int = 12,
              penalties: tuple[float, ...] = PENALTIES) -> RidgeFit:
    """Ridge regression ``x`` [n, D] -> ``y`` [n, K] (rows in time order), each output with the penalty of
    least cross-validated squared error (:func:`cross_validated`): the aperture wants less than the noisier
    width and chin drop, and an output the audio does not predict gets the largest (its mean, nearly)."""
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    dims = z.shape[1]
    gram = (z @ z.T).astype(np.float64) / dims  # per-dimension scale: the penalties mean the same for any D
    held_out = [cross_validated(gram, y, p, folds, gap) for p in penalties]
    errors = np.stack([np.square(h - y).mean(axis=0) for h in held_out])  # [penalties, K]
    best = errors.argmin(axis=0)
    centre = y.mean(axis=0)
    alpha = np.stack([_solve(gram, y[:, k] - centre[k], penalties[b]) for k, b in enumerate(best)], axis=1)
    weight = (z.T.astype(np.float64) @ alpha) / dims
    cv_r = np.array([np.corrcoef(held_out[b][:, k], y[:, k])[0, 1] for k, b in enumerate(best)])
    return RidgeFit(weight=weight.astype(np.float32), bias=centre.astype(np.float32), mean=mean, std=std,
                    penalty=np.array([penalties[b] for b in best]), cv_r=cv_r)


def principal_scores(x: np.ndarray, count: int) -> np.ndarray:
    """Scores [n, count] of rows ``x`` [n, P] on their first ``count`` principal components, each z-scored."""
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    scores = centred @ vt[:count].T
    return scores / np.maximum(scores.std(axis=0), 1e-8)


class RidgeMouthShape(nn.Module):
    """Frames' audio context [B, 2c+1, W, C] -> [B, outputs]: the mouth shape (3) and any appearance scores,
    by a fitted :class:`RidgeFit` (buffers, so fine.pt carries it; zeros until :meth:`load_fit`)."""

    def __init__(self, dims: int, outputs: int = 3):
        super().__init__()
        self.register_buffer("weight", torch.zeros(dims, outputs))
        self.register_buffer("bias", torch.zeros(outputs))
        self.register_buffer("mean", torch.zeros(dims))
        self.register_buffer("std", torch.ones(dims))

    def load_fit(self, fit: RidgeFit) -> None:
        for name in ("weight", "bias", "mean", "std"):
            getattr(self, name).copy_(torch.from_numpy(np.asarray(getattr(fit, name), dtype=np.float32)))

    def forward(self, context: Tensor) -> Tensor:
        x = context.reshape(len(context), -1).float()
        return ((x - self.mean) / self.std) @ self.weight + self.bias
