"""Adaptive density control of 3D Gaussian Splatting (Kerbl et al. 2023), as gsplat's DefaultStrategy does it.

During training, :meth:`Densifier.accumulate` collects each Gaussian's mean screen-space positional gradient
(NDC units) and largest screen radius; every ``every`` iterations :meth:`Densifier.step` clones small
high-gradient Gaussians, splits large ones into two smaller children, prunes transparent (and, after the first
opacity reset, oversized) ones, and periodically clamps all opacities down.

The model's tensors must be leaf parameters of a ``torch.optim.Adam`` with one param group per field, each
group's ``"name"`` equal to the GaussianModel field name. Extra per-Gaussian groups (e.g. a fine stage's
``"dynamism"`` [N,1]) are kept in sync when their names are in ``per_gaussian``: :class:`PerGaussianGroups`
does the optimizer surgery generically (rows of the parameter and of every Adam moment shaped like it).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, fields

import torch
from torch import Tensor

from pipeline.gaussians.model import GaussianModel
from pipeline.gaussians.projection import quat_to_rotmat
from pipeline.gaussians.rasterize import RasterResult
from pipeline.io import PipelineError

log = logging.getLogger(__name__)

GAUSSIAN_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(GaussianModel))
SPLIT_SCALE_DIVISOR = 1.6  # 3DGS: each of the 2 children is 1/(0.8*2) the parent's size


@dataclass
class DensifyConfig:
    """Schedule and thresholds (3DGS / gsplat defaults). Iterations are the trainer's step numbers.

    Densify/prune runs at iterations start, start+every, ... up to stop; the opacity reset at every positive
    multiple of ``reset_every`` up to stop, after that iteration's densification. A reset clamps opacities to
    at most ``2 * prune_opacity`` (0.01 by default, as 3DGS). With resets disabled, oversized Gaussians are
    never pruned. ``prune_screen_radius <= 0`` disables the screen-radius test.
    """

    start: int = 500             # first iteration that densifies
    stop: int = 15_000           # no densification after this iteration
    every: int = 100             # densify/prune every `every` iterations in [start, stop]
    reset_every: int = 3_000     # opacity reset period (0 disables)
    grad_threshold: float = 0.0002  # mean screen-space positional gradient norm, NDC units (pixel grad * size/2)
    clone_scale: float = 0.01    # Gaussians with max scale <= clone_scale * scene_scale are cloned, larger split
    prune_opacity: float = 0.005
    prune_scale: float = 0.1     # after the first reset, prune Gaussians larger than this * scene_scale
    prune_screen_radius: float = 0.15  # ... or whose 2D radius exceeded this fraction of max(width,height)
    max_gaussians: int = 1_000_000  # growth stops at this count (a clear log line says so once)

    def __post_init__(self) -> None:
        if self.every <= 0:
            raise ValueError(f"DensifyConfig.every must be positive, got {self.every}")
        if self.reset_every < 0:
            raise ValueError(f"DensifyConfig.reset_every must be >= 0 (0 disables), got {self.reset_every}")
        if not 0 < self.prune_opacity < 0.5:
            raise ValueError(f"DensifyConfig.prune_opacity must be in (0, 0.5), got {self.prune_opacity}")
        if self.max_gaussians < 1:
            raise ValueError(f"DensifyConfig.max_gaussians must be >= 1, got {self.max_gaussians}")

    @property
    def reset_opacity(self) -> float:
        """The opacity a reset clamps to."""
        return 2 * self.prune_opacity


class DensifyState:
    """Per-Gaussian accumulators since the last densification, all [N]: grad_sum (sum of NDC gradient norms),
    count (number of views in which the Gaussian was visible, int64), max_radius (largest screen radius as a
    fraction of max(width, height)). Empty (N=0) until the first accumulation."""

    def __init__(self) -> None:
        self.grad_sum = torch.zeros(0)
        self.count = torch.zeros(0, dtype=torch.int64)
        self.max_radius = torch.zeros(0)

    def __len__(self) -> int:
        return self.grad_sum.shape[0]

    def ensure(self, n: int, device: torch.device, dtype: torch.dtype) -> None:
        """Start empty accumulators at N zeros (or move existing ones to ``device``); N must match."""
        if len(self) == 0 and n > 0:
            self.reset(n, device, dtype)
        elif len(self) != n:
            raise ValueError(f"densification state tracks {len(self)} Gaussians but the model has {n}; the "
                             "model was changed outside the Densifier (or its state was not restored with it)")
        elif self.grad_sum.device != device:
            self.grad_sum, self.count, self.max_radius = (t.to(device) for t in self.tensors())

    def reset(self, n: int, device: torch.device, dtype: torch.dtype) -> None:
        self.grad_sum = torch.zeros(n, device=device, dtype=dtype)
        self.count = torch.zeros(n, device=device, dtype=torch.int64)
        self.max_radius = torch.zeros(n, device=device, dtype=dtype)

    def tensors(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.grad_sum, self.count, self.max_radius

    def state_dict(self) -> dict[str, Tensor]:
        return {"grad_sum": self.grad_sum.clone(), "count": self.count.clone(), "max_radius": self.max_radius.clone()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        try:
            tensors = [torch.as_tensor(state[k]).clone() for k in ("grad_sum", "count", "max_radius")]
        except KeyError as err:
            raise PipelineError(f"densification state is missing {err}; not a DensifyState.state_dict()") from err
        if any(t.dim() != 1 or t.shape != tensors[0].shape for t in tensors):
            raise PipelineError("densification state tensors must all have shape [N], got "
                                f"{[tuple(t.shape) for t in tensors]}")
        self.grad_sum, self.count, self.max_radius = tensors[0], tensors[1].long(), tensors[2]


class PerGaussianGroups:
    """Row surgery on an optimizer's per-Gaussian param groups (those whose ``"name"`` is in ``names``).

    Every param of such a group has N rows (dim 0). Adam state tensors shaped like their param (exp_avg,
    exp_avg_sq, max_exp_avg_sq) follow the rows; others (step) are left as they are. Params are replaced by
    new leaf tensors and their state is moved to them, since the optimizer's state is keyed by tensor object.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, names: Collection[str]) -> None:
        self.optimizer = optimizer
        self.names = frozenset(names)

    def groups(self) -> dict[str, dict]:
        found: dict[str, dict] = {}
        for group in self.optimizer.param_groups:
            name = group.get("name")
            if name in self.names:
                if name in found:
                    raise ValueError(f"optimizer has two param groups named {name!r}")
                found[name] = group
        return found

    def params(self) -> dict[str, Tensor]:
        """The (single) parameter of each per-Gaussian group, by group name."""
        out = {}
        for name, group in self.groups().items():
            if len(group["params"]) != 1:
                raise ValueError(f"per-Gaussian param group {name!r} must hold exactly one tensor, "
                                 f"got {len(group['params'])}")
            out[name] = group["params"][0]
        return out

    def __len__(self) -> int:
        lengths = {name: p.shape[0] for name, p in self.params().items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"per-Gaussian param groups disagree on the number of Gaussians: {lengths}")
        return next(iter(lengths.values()), 0)

    def model(self) -> GaussianModel:
        """A GaussianModel over the optimizer's current parameters."""
        params = self.params()
        missing = [name for name in GAUSSIAN_FIELDS if name not in params]
        if missing:
            raise ValueError(f"optimizer has no param group named {', '.join(map(repr, missing))}")
        return GaussianModel(**{name: params[name] for name in GAUSSIAN_FIELDS})

    def _replace(self, group: dict, old: Tensor, values: Tensor, moment_fn) -> None:
        """Put a new leaf holding ``values`` in place of ``old``; moment_fn(moment) gives each moved moment."""
        new: Tensor = (torch.nn.Parameter(values, requires_grad=old.requires_grad)
                       if isinstance(old, torch.nn.Parameter) else values.requires_grad_(old.requires_grad))
        state = self.optimizer.state.pop(old, None)
        if state is not None:
            self.optimizer.state[new] = {k: moment_fn(v) if _is_moment(v, old) else v for k, v in state.items()}
        group["params"][0] = new

    def keep(self, mask: Tensor) -> None:
        """Keep the rows where ``mask`` [N] bool is True, in every per-Gaussian param and its Adam moments."""
        n = len(self)
        if mask.shape != (n,) or mask.dtype != torch.bool:
            raise ValueError(f"keep mask must be bool [{n}], got {mask.dtype} {tuple(mask.shape)}")
        groups = self.groups()
        with torch.no_grad():
            for name, old in self.params().items():
                sel = mask.to(old.device)
                self._replace(groups[name], old, old[sel].clone(), lambda v, sel=sel: v[sel].clone())

    def append(self, new_rows: Mapping[str, Tensor]) -> None:
        """Concatenate ``new_rows[name]`` [M, ...] to each per-Gaussian param; their Adam moments start at 0."""
        params = self.params()
        if set(new_rows) != set(params):
            raise ValueError(f"append needs new rows for exactly the per-Gaussian groups {sorted(params)}, "
                             f"got {sorted(new_rows)}")
        counts = {name: rows.shape[0] for name, rows in new_rows.items()}
        if len(set(counts.values())) > 1:
            raise ValueError(f"append got different numbers of new rows per group: {counts}")
        groups = self.groups()
        with torch.no_grad():
            for name, old in params.items():
                rows = new_rows[name].detach().to(old.device, old.dtype)
                if rows.shape[1:] != old.shape[1:]:
                    raise ValueError(f"new rows for {name!r} must have shape [M, {', '.join(map(str, old.shape[1:]))}]"
                                     f", got {tuple(rows.shape)}")
                self._replace(groups[name], old, torch.cat((old.detach(), rows)),
                              lambda v, m=rows.shape[0]: torch.cat((v, v.new_zeros((m, *v.shape[1:])))))

    def zero_moments(self, name: str) -> None:
        """Zero the Adam moments of one group's parameter (after its values were reset)."""
        param = self.params()[name]
        for v in self.optimizer.state.get(param, {}).values():
            if _is_moment(v, param):
                v.zero_()


def _is_moment(value: object, param: Tensor) -> bool:
    return isinstance(value, Tensor) and value.shape == param.shape


class Densifier:
    """Adaptive density control for one GaussianModel trained with Adam (see the module docstring).

    ``scene_scale`` is the scene extent (3DGS: camera-centre radius * 1.1) that the 3D scale thresholds are
    relative to; ``per_gaussian`` names the optimizer groups whose rows follow the Gaussians (must include the
    GaussianModel fields; names without a group are ignored).
    """

    def __init__(self, config: DensifyConfig, scene_scale: float,
                 per_gaussian: Collection[str] = GAUSSIAN_FIELDS) -> None:
        missing = [name for name in GAUSSIAN_FIELDS if name not in per_gaussian]
        if missing:
            raise ValueError(f"per_gaussian must include every GaussianModel field; missing {missing}")
        if not scene_scale > 0:
            raise ValueError(f"scene_scale must be positive, got {scene_scale}")
        self.config = config
        self.scene_scale = float(scene_scale)
        self.per_gaussian = frozenset(per_gaussian)
        self.state = DensifyState()
        self._cap_logged = False

    def accumulate(self, result: RasterResult, width: int, height: int, count: int | None = None) -> None:
        """After loss.backward(): add the NDC-normalised norm of result.means2d.grad for Gaussians visible
        (radii>0) in each camera, count them, track max radius. Call only while iteration <= stop.
        ``count``: the densified model is the first ``count`` Gaussians of the render (others follow it).

        Gradients are taken as they are (gsplat also multiplies by the number of cameras to undo a loss
        averaged over a batch of views; sum per-view losses instead when rendering several cameras at once).
        """
        radii = result.radii[:, :count]  # [C,N]
        visible = radii > 0
        grad = None if result.means2d.grad is None else result.means2d.grad[:, :count]  # [C,N,2] pixels
        if grad is None:
            if not bool(visible.any()):
                return  # nothing on screen, so nothing reached means2d
            raise RuntimeError("result.means2d.grad is None: call result.means2d.retain_grad() before "
                               "loss.backward(), then Densifier.accumulate()")
        self.state.ensure(radii.shape[1], grad.device, grad.dtype)
        st = self.state
        with torch.no_grad():
            ndc = grad.to(st.grad_sum.dtype) * grad.new_tensor([width / 2, height / 2], dtype=st.grad_sum.dtype)
            norms = torch.where(visible, ndc.norm(dim=-1), 0)
            st.grad_sum += norms.sum(dim=0)
            st.count += visible.sum(dim=0)
            frac = (radii * visible).amax(dim=0).to(st.max_radius.dtype) / max(width, height)
            torch.maximum(st.max_radius, frac, out=st.max_radius)

    def step(self, iteration: int, model: GaussianModel, optimizer: torch.optim.Adam,
             generator: torch.Generator | None = None) -> tuple[GaussianModel, dict[str, int]]:
        """Densify/prune/reset when the schedule says so; return the (possibly new) model whose tensors are the
        optimizer's new parameters, and counts {"cloned", "split", "pruned", "reset": 0/1}.

        Accumulators are reset after each densification and resized with the model. Split: 2 children sampled
        from the parent's Gaussian (using ``generator``, on any device, for determinism), scales / 1.6, parent
        removed; clone: copy. Never prunes every Gaussian (keeps the most opaque one and logs a warning).
        """
        cfg = self.config
        counts = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
        if iteration > cfg.stop:
            return model, counts
        densify = iteration >= cfg.start and (iteration - cfg.start) % cfg.every == 0
        reset = cfg.reset_every > 0 and iteration > 0 and iteration % cfg.reset_every == 0
        if not (densify or reset):
            return model, counts

        groups = PerGaussianGroups(optimizer, self.per_gaussian)
        params = groups.params()
        for name, tensor in model.tensors().items():
            if params.get(name) is not tensor:
                raise ValueError(f"model.{name} is not the optimizer's {name!r} parameter; pass the model "
                                 "returned by the previous Densifier.step")
        if densify:
            counts.update(self._densify(iteration, model, groups, generator))
        if reset:
            opacity = groups.params()["opacity_logits"]
            with torch.no_grad():
                opacity.clamp_(max=math.log(cfg.reset_opacity / (1 - cfg.reset_opacity)))
            groups.zero_moments("opacity_logits")  # 3DGS restarts the opacities' Adam moments too
            counts["reset"] = 1
            log.info("opacity reset at iteration %d: opacities clamped to <= %g", iteration, cfg.reset_opacity)
        return groups.model(), counts

    def _densify(self, iteration: int, model: GaussianModel, groups: PerGaussianGroups,
                 generator: torch.Generator | None) -> dict[str, int]:
        cfg, n = self.config, len(model)
        device, dtype = model.means.device, model.means.dtype
        self.state.ensure(n, device, dtype)
        st = self.state
        with torch.no_grad():
            grads = st.grad_sum / st.count.clamp_min(1)
            high = grads > cfg.grad_threshold
            small = model.log_scales.amax(dim=1).exp() <= cfg.clone_scale * self.scene_scale
            high = self._cap_growth(high, grads, n)
            clone, split = high & small, high & ~small
            n_clone, n_split = int(clone.sum()), int(split.sum())

            # Clones are appended first, then split children; parents are dropped in the final keep().
            if n_clone:
                groups.append({name: p[clone] for name, p in groups.params().items()})
                self._append_state(clone, 1)
            split = torch.cat((split, split.new_zeros(n_clone)))  # clones are never split parents
            if n_split:
                groups.append(self._split_children(groups.params(), split, generator))
                self._append_state(split, 2)
            grown = n + n_clone + 2 * n_split
            parent = torch.cat((split, split.new_zeros(2 * n_split)))

            params = groups.params()
            prune = torch.sigmoid(params["opacity_logits"]) < cfg.prune_opacity
            if cfg.reset_every > 0 and iteration > cfg.reset_every:
                prune |= params["log_scales"].amax(dim=1).exp() > cfg.prune_scale * self.scene_scale
                if cfg.prune_screen_radius > 0:
                    prune |= st.max_radius > cfg.prune_screen_radius
            remove = prune | parent
            if grown and bool(remove.all()):
                survivor = int(torch.where(parent, -math.inf, params["opacity_logits"]).argmax())
                remove[survivor] = prune[survivor] = False
                log.warning("densification at iteration %d would prune every Gaussian; keeping the most opaque one",
                            iteration)
            n_pruned = int((prune & ~parent).sum())
            if bool(remove.any()):
                groups.keep(~remove)
        st.reset(grown - int(remove.sum()), device, dtype)
        log.info("densify at iteration %d: cloned %d, split %d, pruned %d -> %d Gaussians",
                 iteration, n_clone, n_split, n_pruned, len(st))
        return {"cloned": n_clone, "split": n_split, "pruned": n_pruned}

    def _cap_growth(self, high: Tensor, grads: Tensor, n: int) -> Tensor:
        """Limit the candidates so that N + (each clone or split adds one) <= max_gaussians; the highest
        gradients win."""
        budget = max(self.config.max_gaussians - n, 0)
        wanted = int(high.sum())
        if wanted <= budget:
            return high
        if not self._cap_logged:
            log.info("Gaussian count reached max_gaussians=%d: densification stops growing (%d Gaussians now, "
                     "%d wanted to grow)", self.config.max_gaussians, n, wanted)
            self._cap_logged = True
        candidates = high.nonzero().squeeze(1)
        order = torch.argsort(grads[candidates], descending=True, stable=True)
        capped = torch.zeros_like(high)
        capped[candidates[order[:budget]]] = True
        return capped

    def _split_children(self, params: dict[str, Tensor], split: Tensor,
                        generator: torch.Generator | None) -> dict[str, Tensor]:
        """Two children per parent [2M, ...]: means sampled from the parent's Gaussian, scales / 1.6, every
        other per-Gaussian row copied."""
        means, quats, log_scales = params["means"][split], params["quats"][split], params["log_scales"][split]
        m = means.shape[0]
        noise_device = generator.device if generator is not None else means.device
        noise = torch.randn((2, m, 3), generator=generator, device=noise_device, dtype=means.dtype).to(means.device)
        offsets = torch.einsum("mij,bmj->bmi", quat_to_rotmat(quats), noise * log_scales.exp())
        children = {name: p[split].repeat(2, *([1] * (p.dim() - 1))) for name, p in params.items()}
        children["means"] = (means + offsets).reshape(2 * m, 3)
        children["log_scales"] = (log_scales - math.log(SPLIT_SCALE_DIVISOR)).repeat(2, 1)
        return children

    def _append_state(self, sel: Tensor, copies: int) -> None:
        """Children inherit their parent's accumulators (the screen-radius prune looks at them)."""
        st = self.state
        st.grad_sum, st.count, st.max_radius = (torch.cat((t, t[sel].repeat(copies))) for t in st.tensors())

    def state_dict(self) -> dict[str, object]:
        return {"state": self.state.state_dict(), "cap_logged": self._cap_logged}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        if "state" not in state:
            raise PipelineError("densifier checkpoint has no 'state'; not a Densifier.state_dict()")
        self.state.load_state_dict(state["state"])  # type: ignore[arg-type]
        self._cap_logged = bool(state.get("cap_logged", False))
