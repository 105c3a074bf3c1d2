"""Stage train_coarse (DESIGN.md section 3): static head Gaussians in the tracker's canonical head frame.

Coarse training fits 3D Gaussians to the head frames (the head over the background plate): each iteration
renders one training frame from its tracked camera, composites over the plate and minimises
L1 + 0.05 LPIPS (AlexNet, :mod:`pipeline.lpips`; ``perceptual: dssim`` switches to L1 + 0.2 D-SSIM), with
3DGS's adaptive density control and its SH schedule (one more band every ``sh_increase_every`` iterations).

Artefacts: ``gaussians/coarse.ply`` (3DGS layout, any splat viewer opens it), ``gaussians/coarse.pt``
(``model``: GaussianModel tensors; ``config``; ``head_box`` [2,3] metres; ``scene_scale``; ``train_size``
[W,H]; ``iterations``; ``test_psnr`` dB), ``gaussians/train_log.csv`` (iteration, loss, l1,
perceptual: the unweighted LPIPS or D-SSIM term, psnr, gaussians, seconds) and ``qc/coarse.png`` (test
frames: target, render, error x4).
Resume: see :mod:`pipeline.checkpoint`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pipeline import cli
from pipeline.checkpoint import Checkpointer, StopFlag, end_of_iteration, fingerprint, save_torch
from pipeline.dataset import Cameras, HeadViews
from pipeline.gaussians import GaussianModel, gaussians_from_points, random_gaussians, rasterize
from pipeline.gaussians.densify import DensifyConfig, Densifier
from pipeline.io import PipelineError, atomic_path, evenly_spaced, save_image
from pipeline.losses import check_perceptual, l1, perceptual_loss, psnr

log = logging.getLogger(__name__)

LOG_COLUMNS = ("iteration", "loss", "l1", "perceptual", "psnr", "gaussians", "seconds")


@dataclass
class LearningRates:
    """Adam step sizes per parameter (3DGS's); positions are relative to the scene scale and decay
    exponentially from ``means`` to ``means_final`` over the run."""

    means: float = 1.6e-4
    means_final: float = 1.6e-6
    sh_dc: float = 2.5e-3
    sh_rest: float = 2.5e-3 / 20
    opacity: float = 0.05
    scales: float = 5e-3
    quats: float = 1e-3


@dataclass
class CoarseConfig:
    iterations: int = 3000
    resolution: int | None = None  # training image side; None = the frame resolution
    init: str = "random"  # random: init_points uniform in the head box | landmarks: the canonical face mesh
    init_points: int = 1000
    sh_degree: int = 3
    sh_increase_every: int = 1000
    perceptual: str = "lpips"  # lpips | dssim: the image term next to L1
    lambda_lpips: float = 0.05
    lambda_dssim: float = 0.2
    lr: LearningRates = field(default_factory=LearningRates)
    densify: DensifyConfig = field(default_factory=lambda: DensifyConfig(start=300, stop=2000, every=100,
                                                                       reset_every=1000))
    checkpoint_every: int = 250
    log_every: int = 25
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CoarseConfig:
        """From the config file's ``coarse`` section (nested ``lr`` and ``densify`` dicts)."""
        data = dict(data)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise PipelineError(f"coarse settings: unknown keys {', '.join(sorted(unknown))}")
        base = cls()
        lr = replace(base.lr, **data.pop("lr", {}))
        densify = replace(base.densify, **data.pop("densify", {}))
        config = replace(base, **data, lr=lr, densify=densify)
        if config.init not in ("random", "landmarks"):
            raise PipelineError(f"coarse settings: init must be 'random' or 'landmarks', got {config.init!r}")
        check_perceptual(config.perceptual, "coarse")
        return config

    @property
    def lambda_perceptual(self) -> float:
        return self.lambda_lpips if self.perceptual == "lpips" else self.lambda_dssim


def head_box(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned box [lo, hi] (metres) around the whole head, from the canonical face mesh [L,3].

    The mesh covers the face only; the head frame has y down and z towards the back of the head, so the
    box grows up for the hair and back to the skull, with room for hair at the sides.
    """
    lo, hi = landmarks.min(axis=0), landmarks.max(axis=0)
    width = hi[0] - lo[0]
    centre_x = (lo[0] + hi[0]) / 2
    box_lo = np.array([centre_x - 0.65 * width, lo[1] - 0.45 * width, lo[2] - 0.05 * width])
    box_hi = np.array([centre_x + 0.65 * width, hi[1] + 0.1 * width, max(hi[2], 0.0) + 0.75 * width])
    return box_lo, box_hi


def initial_gaussians(config: CoarseConfig, views: HeadViews, box: tuple[np.ndarray, np.ndarray],
                      generator: torch.Generator) -> GaussianModel:
    """``config.init_points`` random Gaussians in ``box`` (:func:`head_box`), or the coloured face mesh."""
    lo, hi = box
    if config.init == "random":
        return random_gaussians(config.init_points, tuple(lo), tuple(hi), sh_degree=config.sh_degree,
                                generator=generator)
    points = torch.tensor(views.cameras.canonical_landmarks, dtype=torch.float32)
    colours = _landmark_colours(points, views, views.cameras.train[0])
    return gaussians_from_points(points, colours, sh_degree=config.sh_degree)


def _landmark_colours(points: Tensor, views: HeadViews, frame: int) -> Tensor:
    """Colour of each canonical point where it projects in ``frame`` (nearest pixel)."""
    w2c = views.viewmat(frame).cpu()
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ views.K.cpu().T
    uv = uv[:, :2] / uv[:, 2:].clamp_min(1e-6)
    x = uv[:, 0].floor().long().clamp(0, views.width - 1)
    y = uv[:, 1].floor().long().clamp(0, views.height - 1)
    return views.image(frame).cpu()[y, x]


def make_optimizer(model: GaussianModel, lr: LearningRates, scene_scale: float) -> torch.optim.Adam:
    """Adam with one named group per field (densification resizes groups by name)."""
    groups = [
        {"name": "means", "params": [model.means], "lr": lr.means * scene_scale},
        {"name": "quats", "params": [model.quats], "lr": lr.quats},
        {"name": "log_scales", "params": [model.log_scales], "lr": lr.scales},
        {"name": "opacity_logits", "params": [model.opacity_logits], "lr": lr.opacity},
        {"name": "sh", "params": [model.sh], "lr": lr.sh_dc},
    ]
    return torch.optim.Adam(groups, eps=1e-15)


def means_lr(lr: LearningRates, scene_scale: float, iteration: int, total: int) -> float:
    """Log-linear decay from ``lr.means`` to ``lr.means_final`` (times the scene scale)."""
    t = min(max(iteration / max(total, 1), 0.0), 1.0)
    return scene_scale * math.exp((1 - t) * math.log(lr.means) + t * math.log(lr.means_final))


def render_view(model: GaussianModel, views: HeadViews, frame: int, sh_degree: int, backend: str
                ) -> tuple[Tensor, Any]:
    """(image [H,W,3] over the background plate, RasterResult) of ``frame``."""
    g = model.activated()
    result = rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, views.viewmat(frame)[None], views.K[None],
                       views.width, views.height, sh_degree=sh_degree, backend=backend)
    image = result.color[0] + views.background * (1 - result.alpha[0])
    return image, result


@dataclass
class CoarseResult:
    model: GaussianModel
    log_rows: list[dict[str, float]]
    scene_scale: float
    head_box: tuple[np.ndarray, np.ndarray]
    resumed_from: int


def train_coarse(views: HeadViews, config: CoarseConfig, checkpointer: Checkpointer | None = None,
                 stop: StopFlag | None = None, backend: str = "auto", stop_after: int | None = None
                 ) -> CoarseResult:
    """Fit static Gaussians to the training frames of ``views``.

    With a ``checkpointer``, the state is saved every ``config.checkpoint_every`` iterations and when
    ``stop`` is raised (then PipelineError), and a matching saved state is resumed. ``stop_after`` ends the
    run early after that iteration, with a checkpoint, as a kill would (tests use it).
    """
    if not views.cameras.train:
        raise PipelineError("cameras.json: no training frames in the split")
    generator = torch.Generator().manual_seed(config.seed)
    lo, hi = head_box(views.cameras.canonical_landmarks)
    scene_scale = float(np.linalg.norm(hi - lo) / 2)
    densifier = Densifier(config.densify, scene_scale)
    saved = checkpointer.load(views.device) if checkpointer is not None else None
    if saved is None:
        model = initial_gaussians(config, views, (lo, hi), generator).map(lambda t: t.to(views.device))
        start, rows, elapsed = 0, [], 0.0
    else:
        model = GaussianModel(**saved["model"])
        start, rows, elapsed = saved["iteration"], saved["log"], saved["seconds"]
        log.info("resuming coarse training from iteration %d (%d Gaussians)", start, len(model))
    model = model.map(lambda t: t.detach().clone()).requires_grad_()
    optimizer = make_optimizer(model, config.lr, scene_scale)
    if saved is not None:
        optimizer.load_state_dict(saved["optimizer"])
        densifier.load_state_dict(saved["densify"])
        generator.set_state(saved["generator"])

    def save(iteration: int) -> None:
        if checkpointer is not None:
            checkpointer.save({"iteration": iteration, "model": {k: t.detach() for k, t in model.tensors().items()},
                               "optimizer": optimizer.state_dict(), "densify": densifier.state_dict(),
                               "generator": generator.get_state(), "log": rows,
                               "seconds": elapsed + time.perf_counter() - t0})

    perceptual = perceptual_loss(config.perceptual, views.device)
    train = torch.tensor(views.cameras.train)
    t0 = time.perf_counter()
    bar = cli.progress(range(start + 1, config.iterations + 1), total=config.iterations, desc="coarse")
    bar.update(start)
    for it in bar:
        optimizer.param_groups[0]["lr"] = means_lr(config.lr, scene_scale, it, config.iterations)
        frame = int(train[torch.randint(len(train), (1,), generator=generator)])
        sh_degree = min(config.sh_degree, (it - 1) // config.sh_increase_every)
        image, result = render_view(model, views, frame, sh_degree, backend)
        target = views.image(frame)
        loss_l1 = l1(image, target)
        loss_perceptual = perceptual(image, target)
        loss = loss_l1 + config.lambda_perceptual * loss_perceptual
        result.means2d.retain_grad()
        loss.backward()
        if it <= config.densify.stop:
            densifier.accumulate(result, views.width, views.height)
        optimizer_step(optimizer, model, config.lr)
        optimizer.zero_grad(set_to_none=True)
        model, _ = densifier.step(it, model, optimizer, generator)

        if it % config.log_every == 0 or it == config.iterations:
            row = {"iteration": it, "loss": loss.item(), "l1": loss_l1.item(), "perceptual": loss_perceptual.item(),
                   "psnr": psnr(image.detach(), target).item(), "gaussians": len(model),
                   "seconds": round(elapsed + time.perf_counter() - t0, 2)}
            rows.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", psnr=f"{row['psnr']:.1f}", n=len(model), refresh=False)
        if end_of_iteration(it, save, stop, checkpointer.path if checkpointer else None, config.checkpoint_every,
                            stop_after):
            break
    return CoarseResult(model=model.map(lambda t: t.detach()), log_rows=rows, scene_scale=scene_scale,
                        head_box=(lo, hi), resumed_from=start)


def optimizer_step(optimizer: torch.optim.Adam, model: GaussianModel, lr: LearningRates) -> None:
    """Adam step in which the higher SH bands move ``sh_rest / sh_dc`` as far as Adam says (3DGS learns them
    20x slower than DC); one tensor holds all bands, in the .ply layout, so the update is scaled after."""
    ratio = lr.sh_rest / lr.sh_dc
    before = model.sh.detach()[:, 1:].clone() if ratio != 1 and model.sh.shape[1] > 1 else None
    optimizer.step()
    if before is not None:
        with torch.no_grad():
            rest = model.sh[:, 1:]
            rest.copy_(before + ratio * (rest - before))


# ---------------------------------------------------------------------------------------------------------
# Evaluation, artefacts and CLI
# ---------------------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_views(model: GaussianModel, views: HeadViews, frames: Sequence[int], backend: str = "auto"
                   ) -> tuple[float, list[tuple[np.ndarray, np.ndarray]]]:
    """(mean PSNR in dB, [(target, render) uint8 [H,W,3]]) over ``frames``."""
    scores, pairs = [], []
    for frame in frames:
        image, _ = render_view(model, views, frame, model.sh_degree, backend)
        target = views.image(frame)
        scores.append(float(psnr(image.clamp(0, 1), target)))
        pairs.append((views.pixels(frame), to_uint8(image)))
    return float(np.mean(scores)) if scores else float("nan"), pairs


def to_uint8(image: Tensor) -> np.ndarray:
    """Float image in [0, 1] -> uint8, rounded."""
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


def qc_sheet(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Rows of target | render | 4x absolute error."""
    rows = []
    for target, render in pairs:
        error = np.clip(4 * np.abs(target.astype(np.int16) - render.astype(np.int16)), 0, 255).astype(np.uint8)
        rows.append(np.concatenate([target, render, error], axis=1))
    return np.concatenate(rows, axis=0)


def write_log_csv(path: str | Path, rows: Sequence[dict[str, float]], columns: Sequence[str] = LOG_COLUMNS) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buffer.getvalue())


def save_coarse(path: str | Path, result: CoarseResult, config: CoarseConfig, views: HeadViews,
                test_psnr: float) -> None:
    """coarse.pt: what the fine stage starts from (see the module docstring)."""
    payload = {"model": {k: t.cpu() for k, t in result.model.tensors().items()}, "config": asdict(config),
               "head_box": np.stack(result.head_box), "scene_scale": result.scene_scale,
               "train_size": [views.width, views.height], "iterations": config.iterations,
               "test_psnr": test_psnr}
    save_torch(path, payload)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline.train", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="stage", required=True)
    coarse = sub.add_parser("coarse", help="stage train_coarse: static head Gaussians")
    coarse.add_argument("--head", type=Path, required=True, help="head/ frames of split_head_torso")
    coarse.add_argument("--background", type=Path, required=True, help="background.png plate")
    coarse.add_argument("--cameras", type=Path, required=True, help="cameras.json of track_head_pose")
    coarse.add_argument("--settings", default="{}",
                        help="JSON of the config's `coarse` section (iterations, resolution, lr, densify, ...)")
    coarse.add_argument("--out-ply", type=Path, required=True)
    coarse.add_argument("--out-pt", type=Path, required=True)
    coarse.add_argument("--log-csv", type=Path, required=True)
    coarse.add_argument("--qc", type=Path, default=None, help="QC picture of test frames to write (PNG)")
    coarse.add_argument("--checkpoint", type=Path, default=None, help="resume file (kept until success)")
    coarse.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda[:k]")
    coarse.add_argument("--backend", default="auto", choices=("auto", "torch", "gsplat"))
    coarse.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p


def _run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    try:
        settings = json.loads(args.settings)
    except json.JSONDecodeError as err:
        raise PipelineError(f"--settings: not valid JSON ({err})") from err
    config = CoarseConfig.from_dict(settings)
    device = pick_device(args.device)
    cameras = Cameras.load(args.cameras)
    views = HeadViews(args.head, cameras, args.background, config.resolution, device)
    log.info("coarse: %d training frames at %dx%d on %s, %d iterations", len(cameras.train), views.width,
             views.height, device, config.iterations)
    checkpointer = None
    if args.checkpoint is not None:
        key = fingerprint(asdict(config), files=[args.cameras, args.background], directories=[args.head])
        checkpointer = Checkpointer(args.checkpoint, key)
    with StopFlag().installed() as stop:
        result = train_coarse(views, config, checkpointer, stop, backend=args.backend)
    test_frames = [cameras.test[i] for i in evenly_spaced(len(cameras.test), 16)]
    test_psnr, pairs = evaluate_views(result.model, views, test_frames, args.backend)
    log.info("coarse: %d Gaussians, test PSNR %.2f dB over %d frames", len(result.model), test_psnr,
             len(pairs))
    result.model.save_ply(args.out_ply)
    save_coarse(args.out_pt, result, config, views, test_psnr)
    write_log_csv(args.log_csv, result.log_rows)
    if args.qc is not None:
        save_image(args.qc, qc_sheet(pairs[:: max(1, len(pairs) // 3)][:3]))
    if checkpointer is not None:
        checkpointer.clear()


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
