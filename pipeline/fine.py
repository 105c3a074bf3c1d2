"""Stage train_fine (DESIGN.md section 3): the Audio-Plane talking head, trained from the coarse Gaussians.

Each iteration takes one training frame: its audio windows and those of ±r neighbours give the audio
code, the deformer moves the canonical Gaussians (G' = G + d ΔG), and three renders are supervised:
- the whole head at the training size over the background plate: L1 + λ·perceptual (D-SSIM or LPIPS);
- dynamic splatting: the dynamism d rasterized as one channel with the geometry detached, against the
  dilated mouth mask m: mean(max(0, |m - g| - margin)), weight ``lambda_mask``; with
  ``mask_trains_dynamism`` (default) this is the only term that trains d (the others see it as a fixed
  gate): trained jointly, the image terms pushed d below 0.5 everywhere once the landmark term was on, and
  the mouth's motion lived in ΔG alone (d IoU 0.00 on the demo; with the gate 0.90, and better lip sync);
- the mouth (and chin) box at ``mouth_resolution``, where a lip gap is several pixels wide even when the
  training size makes it one: L1 + λ·perceptual, weight ``lambda_mouth``.
With ``random_background`` the head and mouth renders are composited over a random colour drawn each
iteration, and the targets have the plate outside the parsing's head mask replaced by that colour: over
the plate, Gaussians that take the plate's colour (under a chin that rose with the audio, around the
hair) and holes inside the head cost nothing, and both show in the composite over the torso as a light
band under the jaw and see-through patches. The rendered alpha is also held to the head mask (L1, weight
``lambda_alpha``).
The face mesh also supervises the geometry: the canonical mouth landmarks (lips and chin), moved by the same
deformation field (G' = G + d ΔG at those points) and projected with the frame's camera, match the frame's
detected ones up to a shift (mean-centred L1 in training-size pixels, weight ``lambda_landmarks``),
so the field opens the lips and drops the jaw where the video's mouth did.
Beside the renders, a linear readout of the audio code predicts the mouth shape the face mesh measured on
the frame (aperture, width, chin drop; z-scored over the training frames), MSE over ``shape_batch`` random
training frames, weight ``lambda_shape``. On real footage the image loss alone lets the code collapse to a
constant (the mouth then ignores the audio); this term keeps the code about the mouth.
With ``model.audio_encoder: ridge`` (the ``cpu`` preset's) there is no learnt audio path: before the first step
a ridge regression (:mod:`pipeline.audio_ridge`) is fitted from the training frames' audio context to that
mouth shape (and, with ``model.ridge_appearance``, to principal components of the mouth box's look), and its
prediction is the code; the readout term is then moot and off. With ``measured_codes`` the training frames
are driven by the ridge's targets themselves (their measured mouth code) and only unseen audio by its
prediction: the prediction is the mean of the mouths whose audio resembles the frame's, and rendering a
frame from it teaches the head that blurred mouth (two-stage talking heads train their renderer the same way).
The perceptual term is LPIPS (weight 0.05, the paper's) or D-SSIM (0.2). The canonical Gaussians keep
training at ``gaussian_lr_scale`` times the coarse rates, with 3DGS densification; ``mouth_seed`` extra
faint Gaussians behind the lips give the mouth interior something to show when it opens. ``mouth_interior`` Gaussians
of the mouth's inside, trained apart at the coarse rates, show when the lips part; in the mouth box, the head's
share of the frame's inner-mouth pixels and the interior's share of the others cost ``lambda_interior``
(:mod:`pipeline.mouth_interior`).

Honest split: training frames whose audio input (window and temporal attention) reaches into the test
split are never trained on (:func:`pipeline.split.audio_safe_train_frames`).

Artefacts: ``model/fine.pt`` (``head``: :meth:`TalkingHead.state`; ``config``; ``train_size``;
``iterations``; ``test``: PSNR, mouth-mask PSNR and dynamism IoU of the test split), ``model/train_log.csv``,
``qc/fine.png`` (test frames: target | render | 4x error | splatted d over the mouth mask).
Resume: see :mod:`pipeline.checkpoint`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pipeline import cli
from pipeline import landmarks as lmk
from pipeline.audio import AudioStats
from pipeline.audio_ridge import MAX_FIT_FRAMES, fit_ridge, principal_scores
from pipeline.audioplane import (AudioPlaneConfig, AudioPlaneDeformer, TalkingHead, deform, displace,
                                  render_deformed)
from pipeline.background import head_mask
from pipeline.checkpoint import Checkpointer, StopFlag, end_of_iteration, fingerprint, save_torch
from pipeline.dataset import Cameras, FrameStore, HeadViews, training_size
from pipeline.gaussians import GaussianModel, gaussians_from_points, rasterize
from pipeline.gaussians.densify import DensifyConfig, Densifier
from pipeline.io import PipelineError, evenly_spaced, list_frames, save_image
from pipeline.losses import check_perceptual, l1, perceptual_loss, psnr
from pipeline.mouth_interior import face_flags, interior_gaussians, interior_loss
from pipeline.parsing import inner_mouth_image
from pipeline.split import audio_safe_train_frames
from pipeline.train import (LearningRates, make_optimizer, optimizer_step, pick_device, qc_sheet,
                            render_view, to_uint8, write_log_csv)

log = logging.getLogger(__name__)

MOUTH_POINTS = (*lmk.MOUTH, lmk.CHIN)  # face-mesh points of the landmark loss
LOSS_COLUMNS = ("loss", "l1", "perceptual", "mask", "mouth", "interior", "alpha", "landmarks", "shape")
LOG_COLUMNS = ("iteration", *LOSS_COLUMNS, "psnr", "gaussians", "seconds")


@dataclass
class FineConfig:
    iterations: int = 100_000
    resolution: int | None = None  # training image side; None = the frame resolution
    mouth_resolution: int | None = None  # frame side at which the mouth box is supervised; None = frames'
    mouth_box: float = 2.0  # mouth box side, times the widest mouth of the video
    model: AudioPlaneConfig = field(default_factory=AudioPlaneConfig)
    perceptual: str = "lpips"  # lpips | dssim: the image term next to L1
    lambda_lpips: float = 0.05
    lambda_dssim: float = 0.2
    lambda_mask: float = 0.1
    mask_margin: float = 0.2
    lambda_mouth: float = 1.0
    lambda_alpha: float = 0.1  # rendered alpha vs the parsing's head mask (0: off)
    random_background: bool = True  # render over a random colour per iteration instead of the plate
    lambda_landmarks: float = 1.0  # deformed, projected mouth landmarks vs the face mesh's (0: off)
    lambda_shape: float = 1.0  # mouth-shape readout of the audio code (0: off)
    shape_batch: int = 16  # training frames per iteration for that readout
    dynamic_splatting: bool = True
    mask_trains_dynamism: bool = True  # d learns from the mask term alone; image and landmark terms see it fixed
    mouth_seed: int = 300  # faint Gaussians behind the lips, among the head's (0: none)
    mouth_interior: int = 0  # Gaussians of the mouth's inside, apart from the head's (pipeline/mouth_interior.py)
    interior_opacity: float = 0.7  # their opacity (fixed; the field's ΔG shows and hides them)
    lambda_interior: float = 1.0  # head in the inner mouth, interior outside it, in the mouth box
    lr_grids: float = 5e-3  # planes, lines and prototype grids
    lr_networks: float = 5e-4  # audio encoder, attention, decoders
    lr_final_ratio: float = 0.1  # network rates decay exponentially to this fraction
    audio_weight_decay: float = 0.0  # decoupled weight decay of the audio path: steadier lip sync on unseen audio
    measured_codes: bool = False  # ridge encoder: training frames driven by their measured code, not its prediction
    gaussian_lr_scale: float = 0.1  # canonical Gaussians keep training at this fraction of the coarse rates
    densify: DensifyConfig = field(default_factory=lambda: DensifyConfig(start=1000, stop=50_000, every=500,
                                                                       reset_every=0))
    checkpoint_every: int = 1000
    log_every: int = 50
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FineConfig:
        """From the config file's ``fine`` section (nested ``model`` and ``densify`` dicts)."""
        data = dict(data)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise PipelineError(f"fine settings: unknown keys {', '.join(sorted(unknown))}")
        base = cls()
        model = AudioPlaneConfig.from_dict(data.pop("model", {}))
        densify = replace(base.densify, **data.pop("densify", {}))
        config = replace(base, **data, model=model, densify=densify)
        check_perceptual(config.perceptual, "fine")
        if config.measured_codes and config.model.audio_encoder != "ridge":
            raise PipelineError("fine settings: measured_codes needs model.audio_encoder: ridge (the learnt encoder "
                                "has no measured code to train on)")
        return config

    @property
    def lambda_perceptual(self) -> float:
        return self.lambda_lpips if self.perceptual == "lpips" else self.lambda_dssim


# ---------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------

def widest_mouth(xy: np.ndarray) -> float:
    """The widest outer-lip span over face meshes ``xy`` [F, 478, 2]."""
    lips = xy[:, list(lmk.LIPS_OUTER), 0]
    return float((lips.max(axis=1) - lips.min(axis=1)).max())


def mouth_box_centres(xy: np.ndarray, side: float) -> np.ndarray:
    """[F, 2] centres of mouth boxes of ``side`` on face meshes ``xy`` [F, 478, 2] (y down): a little below
    each mouth, so the chin is inside."""
    return xy[:, list(lmk.MOUTH)].mean(axis=1) + np.array([0.0, 0.2 * side])


def mouth_boxes(landmarks: np.ndarray, size: tuple[int, int], scale: float, size_factor: float) -> np.ndarray:
    """Square mouth-and-chin boxes [N, 3] (x0, y0, side) inside an image of ``size`` (W, H) that is ``scale``
    times the landmarks' frame size: one side for the whole video, ``size_factor`` x its widest mouth,
    centred by :func:`mouth_box_centres`."""
    xy = landmarks[:, :, :2] * scale
    side = min(max(32, int(round(size_factor * widest_mouth(xy)))), *size)  # LPIPS needs 31 px
    corner = np.clip(np.round(mouth_box_centres(xy, side) - side / 2), 0, np.array(size) - side).astype(np.int64)
    return np.concatenate([corner, np.full((len(corner), 1), side)], axis=1)


def mouth_box_members(canonical: np.ndarray, means: Tensor, size_factor: float) -> Tensor:
    """bool [N]: the Gaussians whose canonical (x, y) falls in the mouth box of :func:`mouth_boxes` drawn on the
    canonical face mesh [478, 3] (x right, y down, like the image): those the mouth box supervises."""
    xy = canonical[None, :, :2]
    side = size_factor * widest_mouth(xy)
    centre = torch.as_tensor(mouth_box_centres(xy, side)[0], dtype=means.dtype, device=means.device)
    return ((means[:, :2] - centre).abs() <= side / 2).all(dim=1)


def train_widths(gaussians: GaussianModel, views: HeadViews, mouth_width: int, config: FineConfig) -> Tensor:
    """[N] width of the images each Gaussian was trained on: the mouth box's frames inside it, else the head's."""
    means = gaussians.means.detach().cpu()
    widths = torch.full((len(means),), float(views.width))
    if config.lambda_mouth > 0:
        widths[mouth_box_members(views.cameras.canonical_landmarks, means, config.mouth_box)] = float(mouth_width)
    return widths


def standard_mouth_shape(shape: np.ndarray, train: Sequence[int]) -> np.ndarray:
    """Mouth shapes [N, 3] z-scored with the ``train`` frames' statistics (the test frames' stay unseen); a floor
    of 0.1 px on the spread: a shape that never changes stays at 0 rather than amplifying landmark jitter."""
    seen = shape[list(train)]
    return (shape - seen.mean(axis=0)) / np.maximum(seen.std(axis=0), 0.1)


class FineData:
    """What fine training reads per frame: the head views, the mouth views and boxes, the mouth masks and
    head masks (from the parsing) at the training size, head masks and (with the interior term) inner-mouth
    masks at the mouth views' size,
    the audio features [N, W, C] (memory-mapped), blink [N] and the mouth shape [N, 3] the face mesh measured."""

    def __init__(self, views: HeadViews, mouth_views: HeadViews, masks_dir: str | Path, parsing_dir: str | Path,
                 features: str | Path, blink: str | Path, landmarks: str | Path, config: FineConfig):
        n = len(views)
        self.views, self.mouth_views = views, mouth_views
        mask_files = list_frames(masks_dir, ext="png")
        if len(mask_files) != n:
            raise PipelineError(f"{masks_dir}: {len(mask_files)} mouth masks for {n} frames")
        cams = views.cameras
        self.masks = FrameStore(mask_files, (cams.width, cams.height), (views.width, views.height), grey=True)
        label_files = list_frames(parsing_dir, ext="png")
        if len(label_files) != n:
            raise PipelineError(f"{parsing_dir}: {len(label_files)} parsing maps for {n} frames")
        def head(labels: np.ndarray) -> np.ndarray:
            return head_mask(labels).view(np.uint8) * 255

        self.head_masks = FrameStore(label_files, (cams.width, cams.height), (views.width, views.height),
                                     grey=True, transform=head)
        mouth_size = (mouth_views.width, mouth_views.height)
        self.mouth_head_masks = FrameStore(label_files, (cams.width, cams.height), mouth_size, grey=True,
                                           transform=head)
        # the label maps decoded a second time: only when the interior term reads them
        self.inner_mouths = (FrameStore(label_files, (cams.width, cams.height), mouth_size, grey=True,
                                        transform=inner_mouth_image)
                             if config.mouth_interior and config.lambda_interior > 0 else None)
        self.features = np.load(features, mmap_mode="r")
        if self.features.ndim != 3 or len(self.features) != n:
            raise PipelineError(f"{features}: audio features of shape {self.features.shape}, expected [{n}, W, C]")
        self.blink = np.load(blink).astype(np.float32)
        if self.blink.shape != (n,):
            raise PipelineError(f"{blink}: blink of shape {self.blink.shape}, expected [{n}]")
        marks = lmk.load_landmarks(Path(landmarks), n)
        self.boxes = mouth_boxes(marks, (mouth_views.width, mouth_views.height), mouth_views.width / cams.width,
                                 config.mouth_box)
        # mouth landmarks (lips and chin): canonical [P, 3] and detected at the training size [N, P, 2]
        self.canonical_mouth = torch.tensor(cams.canonical_landmarks[list(MOUTH_POINTS)], dtype=torch.float32,
                                            device=views.device)
        self.mouth_points = torch.tensor(marks[:, list(MOUTH_POINTS), :2] * (views.width / cams.width),
                                         dtype=torch.float32, device=views.device)
        self.mouth_shape = torch.tensor(standard_mouth_shape(lmk.mouth_shape(marks), cams.train),
                                        dtype=torch.float32, device=views.device)

    def __len__(self) -> int:
        return len(self.views)

    def feature_tensor(self) -> Tensor:
        """All audio features [N, W, C] (for evaluation; training reads :meth:`windows`)."""
        return torch.from_numpy(np.array(self.features, dtype=np.float32)).to(self.views.device)

    def windows(self, frames: Tensor) -> Tensor:
        """Features of the given frame indices (any shape), read from the memory map: [..., W, C]."""
        rows = np.asarray(self.features[frames.reshape(-1).cpu().numpy()], dtype=np.float32)
        return torch.from_numpy(rows).to(self.views.device).view(*frames.shape, *rows.shape[1:])

    def mask(self, index: int) -> Tensor:
        """The dilated mouth mask [H, W] in [0, 1]."""
        return _unit(self.masks.pixels(index), self.views.device)

    def head_mask(self, index: int) -> Tensor:
        """The head's share of each pixel [H, W] in [0, 1] (parsing head labels, box-filtered)."""
        return _unit(self.head_masks.pixels(index), self.views.device)

    def _mouth_box(self, index: int) -> tuple[slice, slice]:
        x0, y0, s = (int(v) for v in self.boxes[index])
        return slice(y0, y0 + s), slice(x0, x0 + s)

    def mouth_image(self, index: int) -> Tensor:
        """The frame's mouth box [s, s, 3] at the mouth views' size (no masks decoded)."""
        return self.mouth_views.image(index)[self._mouth_box(index)]

    def mouth_crop(self, index: int) -> MouthCrop:
        """The frame's mouth box at the mouth views' size."""
        x0, y0, s = (int(v) for v in self.boxes[index])
        mv = self.mouth_views
        box = self._mouth_box(index)
        K = mv.K.clone()
        K[0, 2] -= x0
        K[1, 2] -= y0
        head = _unit(self.mouth_head_masks.pixels(index), mv.device)[box]
        inner = None if self.inner_mouths is None else _unit(self.inner_mouths.pixels(index), mv.device)[box]
        return MouthCrop(target=self.mouth_image(index), plate=mv.background[box], head=head, inner=inner, K=K,
                         side=s)


@dataclass
class MouthCrop:
    """target, plate [s,s,3]; head, inner [s,s]: the head and inner-mouth masks (inner None without the
    interior term); K [3,3]: the crop camera; side: s."""

    target: Tensor
    plate: Tensor
    head: Tensor
    inner: Tensor | None
    K: Tensor
    side: int


def over_background(color: Tensor, alpha: Tensor, target: Tensor, plate: Tensor, head: Tensor,
                    background: Tensor | None) -> tuple[Tensor, Tensor]:
    """(image, target) [H,W,3] to compare: the render (premultiplied ``color`` [H,W,3], ``alpha`` [H,W,1])
    over the plate [H,W,3] (``background`` None) or over the colour ``background`` [3], in which case the
    target (head over the plate) gets that colour outside the ``head`` mask [H,W] as well."""
    if background is None:
        return color + plate * (1 - alpha), target
    return color + background * (1 - alpha), target + (1 - head[..., None]) * (background - plate)


def _unit(pixels: np.ndarray, device: torch.device) -> Tensor:
    return torch.from_numpy(np.array(pixels)).to(device, torch.float32) / 255


def mouth_seed_gaussians(canonical: np.ndarray, count: int, sh_degree: int, generator: torch.Generator
                         ) -> GaussianModel:
    """``count`` faint, dark Gaussians in the canonical mouth, 2-12 mm behind the lips (z points back)."""
    lips = torch.tensor(canonical[list(lmk.LIPS_OUTER)], dtype=torch.float32)
    centre = lips.mean(dim=0)
    # random points in the lip polygon (fan triangles from the centre), pushed back into the mouth
    k = torch.randint(len(lips), (count,), generator=generator)
    u, v = torch.rand(count, 1, generator=generator), torch.rand(count, 1, generator=generator)
    flip = (u + v) > 1
    u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
    points = centre + u * (lips[k] - centre) + v * (lips[(k + 1) % len(lips)] - centre)
    points[:, 2] += 0.002 + 0.010 * torch.rand(count, generator=generator)
    colours = torch.tensor([0.35, 0.15, 0.15]).expand(count, 3)
    return gaussians_from_points(points, colours, sh_degree=sh_degree, opacity=0.05, scale=0.0015)


def concat_gaussians(a: GaussianModel, b: GaussianModel) -> GaussianModel:
    return GaussianModel(**{k: torch.cat([a.tensors()[k], b.tensors()[k]]) for k in a.tensors()})


def load_coarse(path: str | Path) -> dict[str, Any]:
    try:
        coarse = torch.load(path, map_location="cpu", weights_only=False)
        GaussianModel(**coarse["model"])
        return coarse
    except FileNotFoundError as err:
        raise PipelineError(f"{path}: coarse model not found; run train_coarse first") from err
    except (KeyError, TypeError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise PipelineError(f"{path}: not a coarse.pt written by train_coarse ({err!r})") from err


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------

def rate_decay(config: FineConfig, iteration: int) -> float:
    """The fraction of the base learning rates at ``iteration`` (1 .. ``config.iterations``): exponential, down
    to ``lr_final_ratio`` at the last."""
    return config.lr_final_ratio ** (iteration / config.iterations)


def network_optimizer(deformer: AudioPlaneDeformer, config: FineConfig) -> torch.optim.AdamW:
    """Adam over three groups: the grids, the audio path (encoder, temporal attention, code norm, mouth-shape
    readout; decoupled weight decay ``audio_weight_decay``) and the decoders."""
    grids = [p for name, p in deformer.named_parameters() if name.startswith(("plane.planes", "plane.lines",
                                                                              "plane.prototypes"))]
    audio = [p for name, p in deformer.named_parameters() if name.startswith(("encoder.", "attention.", "norm.",
                                                                              "mouth_shape."))]
    ids = {id(p) for p in grids + audio}
    rest = [p for p in deformer.parameters() if id(p) not in ids]
    return torch.optim.AdamW([
        {"name": "grids", "params": grids, "lr": config.lr_grids, "base": config.lr_grids, "weight_decay": 0.0},
        {"name": "audio", "params": audio, "lr": config.lr_networks, "base": config.lr_networks,
         "weight_decay": config.audio_weight_decay},
        {"name": "networks", "params": rest, "lr": config.lr_networks, "base": config.lr_networks,
         "weight_decay": 0.0}])


def measured_codes(data: FineData, frames: Sequence[int], appearance: int) -> np.ndarray:
    """The ridge encoder's targets [len(frames), 3 + appearance] on ``frames``: the mouth shape the face mesh
    measured and the first ``appearance`` principal components of their mouth boxes (32² RGB)."""
    shape = data.mouth_shape[torch.tensor(frames)].cpu().numpy()
    if not appearance:
        return shape
    looks = np.stack([F.interpolate(data.mouth_image(int(f)).permute(2, 0, 1)[None], size=(32, 32),
                                    mode="area").reshape(-1).cpu().numpy() for f in frames])
    return np.concatenate([shape, principal_scores(looks, appearance)], axis=1)


def fit_audio_ridge(deformer: AudioPlaneDeformer, data: FineData, frames: Sequence[int],
                    codes: np.ndarray) -> None:
    """Fit the deformer's ridge encoder (:mod:`pipeline.audio_ridge`) on training ``frames`` (at most
    ``MAX_FIT_FRAMES``, evenly spaced): their audio context against their ``codes`` [len(frames), K]
    (:func:`measured_codes`)."""
    rows = evenly_spaced(len(frames), MAX_FIT_FRAMES)
    picked = torch.tensor(frames)[rows]
    config = deformer.config
    context = deformer.ridge_inputs(data.windows(deformer.neighbour_indices(picked, len(data))))
    fit = fit_ridge(context.reshape(len(picked), -1).cpu().numpy(), codes[rows], gap=config.audio_reach)
    deformer.ridge.load_fit(fit)
    log.info("audio ridge: %d frames; aperture, width, chin drop[, appearance]: penalties %s, cross-validated r %s",
             len(picked), fit.penalty.tolist(), np.round(fit.cv_r, 3).tolist())


def scaled_rates(lr: LearningRates, factor: float) -> LearningRates:
    return LearningRates(**{f.name: getattr(lr, f.name) * factor for f in fields(lr)})


@dataclass
class FineStep:
    """One frame's renders and losses (tensors in the autograd graph)."""

    image: Tensor
    target: Tensor
    raster: Any
    splat: Tensor | None
    losses: dict[str, Tensor]


def fine_step(gaussians: GaussianModel, deformer: AudioPlaneDeformer, data: FineData, frame: int, config: FineConfig,
              sh_degree: int, backend: str, perceptual: Callable[[Tensor, Tensor], Tensor],
              shape_frames: Tensor | None = None, background: Tensor | None = None,
              interior: GaussianModel | None = None, measured_code: Tensor | None = None) -> FineStep:
    """Deform for ``frame``'s audio and compute the fine loss (see the module docstring); ``perceptual`` is
    :func:`pipeline.losses.perceptual_loss` of ``config.perceptual``; ``shape_frames`` [B]: further training
    frames of the mouth-shape readout (which always reads ``frame``); ``background`` [3]: the colour the
    renders are composited over (None: the plate); ``interior``: the mouth interior's Gaussians, rendered
    after the head's (``gaussians``); ``measured_code`` [K]: drive the frame with it instead of its audio's
    code (``measured_codes``)."""
    views = data.views
    frames = torch.tensor([frame]) if shape_frames is None else torch.cat([torch.tensor([frame]), shape_frames])
    if measured_code is None:
        codes = deformer.code(data.windows(deformer.neighbour_indices(frames, len(data))))  # one encoder pass
        code = codes[0]
    else:  # measured codes come with the ridge encoder, whose codes have no readout term to feed
        code = measured_code
    fixed_gate = config.dynamic_splatting and config.mask_trains_dynamism  # only the mask term trains d
    everything = gaussians if interior is None else concat_gaussians(gaussians, interior)
    delta, d = deformer(everything.means, code, float(data.blink[frame]))
    moved = deform(everything, delta, d.detach() if fixed_gate else d, config.model)
    raster = render_deformed(moved, views.viewmat(frame), views.K, views.width, views.height, sh_degree, backend)
    head = data.head_mask(frame)
    image, target = over_background(raster.color[0], raster.alpha[0], views.image(frame), views.background, head,
                                    background)
    losses = {"l1": l1(image, target), "perceptual": perceptual(image, target)}
    loss = losses["l1"] + config.lambda_perceptual * losses["perceptual"]
    if config.lambda_alpha > 0:
        losses["alpha"] = (raster.alpha[0, ..., 0] - head).abs().mean()
        loss = loss + config.lambda_alpha * losses["alpha"]
    splat = None
    if config.dynamic_splatting:
        g = moved.activated()
        splat = render_dynamism(g.means.detach(), g.quats.detach(), g.scales.detach(), g.opacities.detach(), d,
                                views.viewmat(frame), views.K, views.width, views.height, backend)
        losses["mask"] = (torch.abs(data.mask(frame) - splat) - config.mask_margin).clamp_min(0).mean()
        loss = loss + config.lambda_mask * losses["mask"]
    if config.lambda_mouth > 0:
        crop = data.mouth_crop(frame)
        share = interior is not None and config.lambda_interior > 0
        flags = face_flags(len(gaussians), len(interior), views.device) if share else None
        mouth = render_deformed(moved, data.mouth_views.viewmat(frame), crop.K, crop.side, crop.side, sh_degree,
                                backend, extra=flags)
        mouth_image, mouth_target = over_background(mouth.color[0], mouth.alpha[0], crop.target, crop.plate,
                                                    crop.head, background)
        losses["mouth"] = (l1(mouth_image, mouth_target)
                           + config.lambda_perceptual * perceptual(mouth_image, mouth_target))
        loss = loss + config.lambda_mouth * losses["mouth"]
        if share:
            losses["interior"] = interior_loss(mouth.extra[0, ..., 0], mouth.alpha[0, ..., 0], crop.inner)
            loss = loss + config.lambda_interior * losses["interior"]
    if config.lambda_landmarks > 0:
        points = data.canonical_mouth
        point_delta, point_d = deformer(points, code, float(data.blink[frame]))
        moved_points = displace(points, point_delta, point_d.detach() if fixed_gate else point_d, config.model)
        predicted, detected = project(moved_points, views.viewmat(frame), views.K), data.mouth_points[frame]
        offset = (predicted - predicted.mean(dim=0)) - (detected - detected.mean(dim=0))
        losses["landmarks"] = offset.abs().mean()
        loss = loss + config.lambda_landmarks * losses["landmarks"]
    if config.lambda_shape > 0 and config.model.audio_encoder == "network":
        losses["shape"] = (deformer.mouth_shape(codes) - data.mouth_shape[frames]).square().mean()
        loss = loss + config.lambda_shape * losses["shape"]
    losses["loss"] = loss
    return FineStep(image=image, target=target, raster=raster, splat=splat, losses=losses)


def project(points: Tensor, viewmat: Tensor, K: Tensor) -> Tensor:
    """Head-frame points [P, 3] -> pixels [P, 2] (world-to-camera ``viewmat`` [4, 4], intrinsics K [3, 3])."""
    uvw = (points @ viewmat[:3, :3].T + viewmat[:3, 3]) @ K.T
    return uvw[:, :2] / uvw[:, 2:3]


def render_dynamism(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, d: Tensor, viewmat: Tensor,
                    K: Tensor, width: int, height: int, backend: str) -> Tensor:
    """Dynamic splatting: d [N] composited like colour into g [H, W] (no background)."""
    out = rasterize(means, quats, scales, opacities, d[:, None], viewmat[None], K[None], width, height,
                    backend=backend)
    return out.color[0, ..., 0]


@dataclass
class FineResult:
    gaussians: GaussianModel
    deformer: AudioPlaneDeformer
    log_rows: list[dict[str, float]]
    resumed_from: int


def train_fine(data: FineData, coarse: dict[str, Any], config: FineConfig, checkpointer: Checkpointer | None = None,
               stop: StopFlag | None = None, backend: str = "auto", stop_after: int | None = None) -> FineResult:
    """Train the deformer and keep training the canonical Gaussians (see the module docstring).

    Checkpoints, SIGTERM and ``stop_after`` behave as in :func:`pipeline.train.train_coarse`.
    """
    views, device = data.views, data.views.device
    reach = config.model.audio_reach
    frames = audio_safe_train_frames(views.cameras.train, views.cameras.test, reach)
    if not frames:
        raise PipelineError("no training frame is far enough from the test split for its audio context; "
                            "the video is too short")
    config = replace(config, model=replace(config.model, audio_channels=int(data.features.shape[2]),
                                           window=int(data.features.shape[1])))
    generator = torch.Generator().manual_seed(config.seed)
    sh_degree = int(coarse["config"]["sh_degree"])
    scene_scale = float(coarse["scene_scale"])
    box = torch.tensor(coarse["head_box"], dtype=torch.float32)
    torch.manual_seed(config.seed)
    deformer = AudioPlaneDeformer(config.model, box).to(device)
    densifier = Densifier(config.densify, scene_scale)
    saved = checkpointer.load(device) if checkpointer is not None else None
    if saved is None:
        gaussians = GaussianModel(**coarse["model"])
        if config.mouth_seed:
            seed = mouth_seed_gaussians(views.cameras.canonical_landmarks, config.mouth_seed, gaussians.sh_degree,
                                        generator)
            gaussians = concat_gaussians(gaussians, seed)
        interior = (interior_gaussians(views.cameras.canonical_landmarks, config.mouth_interior,
                                       gaussians.sh_degree, generator, config.interior_opacity)
                    if config.mouth_interior else None)
        start, rows, elapsed = 0, [], 0.0
    else:
        gaussians = GaussianModel(**saved["gaussians"])
        interior = GaussianModel(**saved["interior"]) if saved["interior"] is not None else None
        deformer.load_state_dict(saved["deformer"])
        start, rows, elapsed = saved["iteration"], saved["log"], saved["seconds"]
        log.info("resuming fine training from iteration %d (%d Gaussians)", start, len(gaussians))
    teacher = None
    if config.model.audio_encoder == "ridge" and (saved is None or config.measured_codes):
        codes = measured_codes(data, frames, config.model.ridge_appearance)
        if saved is None:
            fit_audio_ridge(deformer, data, frames, codes)
        if config.measured_codes:
            teacher = torch.full((len(data), codes.shape[1]), float("nan"), device=device)
            teacher[torch.tensor(frames)] = torch.from_numpy(codes).float().to(device)
    gaussians = gaussians.map(lambda t: t.detach().clone().to(device)).requires_grad_()
    rates = scaled_rates(coarse_rates(coarse), config.gaussian_lr_scale)
    g_optimizer = make_optimizer(gaussians, rates, scene_scale)
    n_optimizer = network_optimizer(deformer, config)
    i_optimizer, i_rates = None, interior_rates(coarse)
    if interior is not None:
        interior = interior.map(lambda t: t.detach().clone().to(device)).requires_grad_()
        i_optimizer = make_optimizer(interior, i_rates, scene_scale)
    if saved is not None:
        g_optimizer.load_state_dict(saved["g_optimizer"])
        n_optimizer.load_state_dict(saved["n_optimizer"])
        if i_optimizer is not None:
            i_optimizer.load_state_dict(saved["i_optimizer"])
        densifier.load_state_dict(saved["densify"])
        generator.set_state(saved["generator"])

    def save(iteration: int) -> None:
        if checkpointer is not None:
            checkpointer.save({"iteration": iteration,
                               "gaussians": {k: t.detach() for k, t in gaussians.tensors().items()},
                               "interior": None if interior is None else
                               {k: t.detach() for k, t in interior.tensors().items()},
                               "i_optimizer": None if i_optimizer is None else i_optimizer.state_dict(),
                               "deformer": deformer.state_dict(), "g_optimizer": g_optimizer.state_dict(),
                               "n_optimizer": n_optimizer.state_dict(), "densify": densifier.state_dict(),
                               "generator": generator.get_state(), "log": rows,
                               "seconds": elapsed + time.perf_counter() - t0})

    perceptual = perceptual_loss(config.perceptual, device)
    pool = torch.tensor(frames)
    t0 = time.perf_counter()
    bar = cli.progress(range(start + 1, config.iterations + 1), total=config.iterations, desc="fine")
    bar.update(start)
    for it in bar:
        decay = rate_decay(config, it)
        for group in n_optimizer.param_groups:
            group["lr"] = group["base"] * decay
        g_optimizer.param_groups[0]["lr"] = rates.means * scene_scale * decay
        if i_optimizer is not None:
            i_optimizer.param_groups[0]["lr"] = i_rates.means * scene_scale * decay
        picks = pool[torch.randint(len(pool), (1 + config.shape_batch,), generator=generator)]
        background = torch.rand(3, generator=generator).to(device) if config.random_background else None
        step = fine_step(gaussians, deformer, data, int(picks[0]), config, sh_degree, backend, perceptual, picks[1:],
                         background, interior, None if teacher is None else teacher[picks[0]])
        step.raster.means2d.retain_grad()
        step.losses["loss"].backward()
        if it <= config.densify.stop:
            densifier.accumulate(step.raster, views.width, views.height, count=len(gaussians))
        optimizer_step(g_optimizer, gaussians, rates)
        n_optimizer.step()
        g_optimizer.zero_grad(set_to_none=True)
        n_optimizer.zero_grad(set_to_none=True)
        if i_optimizer is not None:
            optimizer_step(i_optimizer, interior, i_rates)
            i_optimizer.zero_grad(set_to_none=True)
        gaussians, _ = densifier.step(it, gaussians, g_optimizer, generator)

        if it % config.log_every == 0 or it == config.iterations:
            row = {"iteration": it, **{k: round(float(step.losses[k].detach()), 6) if k in step.losses else 0.0
                                       for k in LOSS_COLUMNS},
                   "psnr": round(float(psnr(step.image.detach(), step.target)), 4), "gaussians": len(gaussians),
                   "seconds": round(elapsed + time.perf_counter() - t0, 2)}
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.1f}", n=len(gaussians), refresh=False)
        if end_of_iteration(it, save, stop, checkpointer.path if checkpointer else None, config.checkpoint_every,
                            stop_after):
            break
    if interior is not None:
        gaussians = concat_gaussians(gaussians, interior)
    return FineResult(gaussians=gaussians.map(lambda t: t.detach()), deformer=deformer.eval(), log_rows=rows,
                      resumed_from=start)


def coarse_rates(coarse: dict[str, Any]) -> LearningRates:
    """The coarse run's learning rates (its saved config), the base of the fine stage's Gaussian rates."""
    return LearningRates(**coarse["config"]["lr"])


def interior_rates(coarse: dict[str, Any]) -> LearningRates:
    """The mouth interior's: new Gaussians, so the coarse run's own rates, but a fixed opacity (the deformation
    field shows and hides them): learnt, the interior term drove them transparent (median 0.01 on macron)."""
    return replace(coarse_rates(coarse), opacity=0.0)


# ---------------------------------------------------------------------------------------------------------
# Evaluation, artefacts and CLI
# ---------------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_fine(head: TalkingHead, data: FineData, frames: Sequence[int], backend: str = "auto",
                  features: Tensor | None = None) -> dict[str, Any]:
    """Test PSNR, mouth-mask PSNR (dB, training size) and the IoU of the splatted dynamism (> 0.5) with the
    mouth mask over ``frames``, with renders for the QC sheet.

    ``features`` [N, W, C] replaces the clip's own (e.g. shuffled audio)."""
    views = data.views
    features = data.feature_tensor() if features is None else features
    codes = head.deformer.codes(features, torch.tensor(list(frames)))
    scores, mouth_scores, ious, tiles = [], [], [], []
    for code, frame in zip(codes, frames):
        moved, d = head.deformed(code, float(data.blink[frame]))  # once per frame: the render and the splat
        image = render_view(moved, views, frame, head.sh_degree, backend)[0].clamp(0, 1)
        target, soft_mask = views.image(frame), data.mask(frame)
        mask = soft_mask > 0.5
        scores.append(float(psnr(image, target)))
        g = moved.activated()
        splat = render_dynamism(g.means, g.quats, g.scales, g.opacities, d, views.viewmat(frame), views.K,
                                views.width, views.height, backend)
        if mask.any():
            mse = (image[mask] - target[mask]).square().mean().clamp_min(1e-12)
            mouth_scores.append(float(-10 * torch.log10(mse)))
            ious.append(float(((splat > 0.5) & mask).sum() / ((splat > 0.5) | mask).sum()))
        tiles.append((views.pixels(frame), to_uint8(image), _dynamism_tile(splat, soft_mask)))
    return {"psnr": float(np.mean(scores)), "mouth_psnr": float(np.mean(mouth_scores)) if mouth_scores else None,
            "dynamism_iou": float(np.mean(ious)) if ious else None, "tiles": tiles}


def _dynamism_tile(splat: Tensor, mask: Tensor) -> np.ndarray:
    """Splatted d in red and green, the mouth mask in blue: where they agree the tile is magenta-white."""
    return to_uint8(torch.stack([splat, splat, mask], dim=-1))


def qc_fine(tiles: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    rows = [np.concatenate([qc_sheet([(target, render)]), dyn], axis=1) for target, render, dyn in tiles]
    return np.concatenate(rows, axis=0)


def save_fine(path: str | Path, head: TalkingHead, config: FineConfig, views: HeadViews, test: dict[str, Any]) -> None:
    """fine.pt: what rendering needs (see the module docstring)."""
    save_torch(path, {"head": head.state(), "config": asdict(config), "train_size": [views.width, views.height],
                      "iterations": config.iterations, "test": {k: v for k, v in test.items() if k != "tiles"}})


def read_stats(path: str | Path) -> dict[str, np.ndarray]:
    """The subject's audio normalisation (:class:`pipeline.audio.AudioStats`) as fine.pt stores it."""
    stats = AudioStats.load(path)
    return {"mean": stats.mean, "std": stats.std, "config": json.dumps(stats.describe())}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.fine", description=__doc__.split("\n")[0])
    p.add_argument("--coarse", type=Path, required=True, help="gaussians/coarse.pt of train_coarse")
    p.add_argument("--head", type=Path, required=True, help="head/ frames of split_head_torso")
    p.add_argument("--background", type=Path, required=True, help="background.png plate")
    p.add_argument("--cameras", type=Path, required=True, help="cameras.json of track_head_pose")
    p.add_argument("--masks", type=Path, required=True, help="mouth_masks/ of dilate_mouth_masks")
    p.add_argument("--parsing", type=Path, required=True, help="parsing/ label maps of parse_faces (head masks)")
    p.add_argument("--landmarks", type=Path, required=True, help="landmarks.npy (mouth boxes)")
    p.add_argument("--blink", type=Path, required=True, help="blink.npy of split_head_torso")
    p.add_argument("--features", type=Path, required=True, help="audio_features/{extractor}.npy")
    p.add_argument("--stats", type=Path, required=True, help="audio_features/{extractor}_stats.npz")
    p.add_argument("--extractor", required=True, help="the audio extractor of --features")
    p.add_argument("--settings", default="{}", help="JSON of the config's `fine` section")
    p.add_argument("--out", type=Path, required=True, help="model/fine.pt to write")
    p.add_argument("--log-csv", type=Path, required=True)
    p.add_argument("--qc", type=Path, default=None, help="QC picture of test frames to write (PNG)")
    p.add_argument("--checkpoint", type=Path, default=None, help="resume file (kept until success)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda[:k]")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "gsplat"))
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p


def load_data(args: argparse.Namespace, config: FineConfig, device: torch.device) -> FineData:
    cameras = Cameras.load(args.cameras)
    views = HeadViews(args.head, cameras, args.background, config.resolution, device)
    mouth_size = training_size(cameras.width, cameras.height, config.mouth_resolution)
    mouth_views = HeadViews(args.head, cameras, args.background, max(mouth_size), device)
    return FineData(views, mouth_views, args.masks, args.parsing, args.features, args.blink, args.landmarks, config)


def _run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as err:
        raise PipelineError(f"--settings: not valid JSON ({err})") from err
    config = FineConfig.from_dict(settings)
    device = pick_device(args.device)
    coarse = load_coarse(args.coarse)
    data = load_data(args, config, device)
    views = data.views
    log.info("fine: %d frames at %dx%d (mouth box %d px at %d²) on %s, %d iterations", len(views.cameras.train),
             views.width, views.height, int(data.boxes[0, 2]), data.mouth_views.width, device, config.iterations)
    checkpointer = None
    if args.checkpoint is not None:
        key = fingerprint(asdict(config), files=[args.coarse, args.cameras, args.features, args.blink,
                                                 args.landmarks, args.background],
                          directories=[args.head, args.masks, args.parsing])
        checkpointer = Checkpointer(args.checkpoint, key)
    with StopFlag().installed() as stop:
        result = train_fine(data, coarse, config, checkpointer, stop, backend=args.backend)
    stats = read_stats(args.stats)
    head = TalkingHead(result.gaussians, result.deformer, args.extractor, stats, int(coarse["config"]["sh_degree"]),
                       train_widths(result.gaussians, views, data.mouth_views.width, config))
    test_frames = [views.cameras.test[i] for i in evenly_spaced(len(views.cameras.test), 16)]
    test = evaluate_fine(head, data, test_frames, args.backend)
    log.info("fine: %d Gaussians, test PSNR %.2f dB, mouth-mask PSNR %.2f dB", len(result.gaussians), test["psnr"],
             test["mouth_psnr"] if test["mouth_psnr"] is not None else math.nan)
    save_fine(args.out, head, config, views, test)
    write_log_csv(args.log_csv, result.log_rows, LOG_COLUMNS)
    if args.qc is not None:
        save_image(args.qc, qc_fine(test["tiles"][:: max(1, len(test["tiles"]) // 3)][:3]))
    if checkpointer is not None:
        checkpointer.clear()


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
