"""Audio-Plane (DESIGN.md section 3): audio-driven deformation of canonical head Gaussians.

Per frame, the audio windows of the frame and its neighbours become one audio code ``a``
(:class:`AudioEncoder` on each window, then :class:`TemporalAttention` over ±``temporal_radius`` frames).
For every Gaussian centre x (normalised to [-1, 1] in the head box) the multi-resolution
:class:`AudioPlane` gives a feature f(x, a): at each scale s, for the triples (X,Y,Z), (X,Z,Y), (Y,Z,X),
``Interp(P_ij)(x_i, x_j) * L_k(x_k) * f_a`` with ``f_a = softmax(q(a) A^T / sqrt(D)) A`` a cross-attention
read of the audio prototype grid A; the triples are fused (concat by default) and the scales concatenated.
Decoders turn f into an offset ΔG (position, rotation, scale, and optionally colour and opacity) and a
dynamism weight d in [0, 1]; the deformed Gaussians are G' = G + d * ΔG (:func:`deform`).

:class:`TalkingHead` is a trained model as ``fine.pt`` stores it, ready to render any audio.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.audio_ridge import RidgeMouthShape
from pipeline.gaussians import GaussianModel, rasterize
from pipeline.gaussians.lowpass import training_lowpass
from pipeline.io import PipelineError

FUSIONS = ("concat", "add", "multiply")
AUDIO_ENCODERS = ("network", "ridge")
# plane (i, j) pairs with line k: (XY, Z), (XZ, Y), (YZ, X)
_PLANE_AXES = ((0, 1), (0, 2), (1, 2))
_LINE_AXIS = (2, 1, 0)


@dataclass
class AudioPlaneConfig:
    """Network sizes (the paper's: s in {1,2,3,4}, H=64, D=16) and the ablation switches."""

    audio_channels: int = 80  # C of the feature windows (set from the data)
    window: int = 16  # feature steps per frame window
    audio_dim: int = 64  # the audio code a
    temporal_radius: int = 4  # attention over ±4 frames
    resolution: int = 64  # H
    scales: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    feature_dim: int = 16  # D
    fusion: str = "concat"  # concat | add | multiply (of the three plane triples)
    audio_plane: bool = True  # False: plain tri-plane feature concatenated with the audio code (ablation)
    hidden: int = 64  # decoder width
    deform_color: bool = True  # ΔG also shifts the base colour (a mouth interior can darken)
    deform_opacity: bool = True  # ... and opacity (teeth and tongue can appear)
    blink: bool = True  # the decoders see the frame's eye openness
    decoder_audio: bool = True  # D1 also sees the audio code itself, beside f(x, a) (False: the paper's D1)
    # network: the learnt encoder and temporal attention give a 64-channel code; ridge: the code is the mouth
    # shape that a closed-form ridge regression reads off the window and its ±ridge_context neighbours'
    # (pipeline/audio_ridge.py: no seed to the lip sync on unseen audio)
    audio_encoder: str = "network"
    ridge_context: int = 1
    ridge_appearance: int = 0  # the ridge also predicts this many principal components of the mouth box's look
    position_scale: float = 0.01  # metres per unit of the position offset

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise PipelineError(f"fine settings: fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if self.audio_encoder not in AUDIO_ENCODERS:
            raise PipelineError(f"fine settings: audio_encoder must be one of {', '.join(AUDIO_ENCODERS)}, "
                                f"got {self.audio_encoder!r}")
        if not 0 <= self.ridge_context <= self.temporal_radius:
            raise PipelineError(f"fine settings: ridge_context must be in [0, temporal_radius], "
                                f"got {self.ridge_context}")
        if not self.scales or any(s < 1 for s in self.scales):
            raise PipelineError(f"fine settings: scales must be positive integers, got {self.scales}")

    @property
    def audio_reach(self) -> int:
        """Frames either side whose audio a frame's code hears: the window's half (2 steps a frame) and the
        temporal attention's radius."""
        return self.temporal_radius + self.window // 4

    @property
    def code_dim(self) -> int:
        """Channels of the per-frame audio code a: the network's ``audio_dim``, or the ridge's mouth shape (3) and
        appearance scores."""
        return 3 + self.ridge_appearance if self.audio_encoder == "ridge" else self.audio_dim

    @property
    def ridge_dims(self) -> int:
        """Input size of the ridge encoder: 2 ``ridge_context`` + 1 windows of W x C features."""
        return (2 * self.ridge_context + 1) * self.window * self.audio_channels

    @property
    def delta_channels(self) -> int:
        """ΔG layout: position 3, rotation 4 (wxyz, added to the quaternion), log-scale 3, [colour 3], [opacity 1]."""
        return 10 + 3 * self.deform_color + self.deform_opacity

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AudioPlaneConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise PipelineError(f"fine settings: unknown model keys {', '.join(sorted(unknown))}")
        return cls(**data)


class AudioEncoder(nn.Module):
    """One frame's feature window [B, W, C] -> audio code [B, A] (strided 1-D convolutions over time, as
    AD-NeRF's AudioNet)."""

    def __init__(self, channels: int, dim: int):
        super().__init__()
        widths = (channels, 32, 32, 64, 64)
        self.convs = nn.ModuleList(nn.Conv1d(a, b, 3, stride=2, padding=1) for a, b in zip(widths, widths[1:]))
        self.head = nn.Sequential(nn.Linear(64, 64), nn.LeakyReLU(0.02), nn.Linear(64, dim))

    def forward(self, windows: Tensor) -> Tensor:
        x = windows.transpose(1, 2)  # [B, C, W]
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.02)
        return self.head(x.mean(dim=2))


class TemporalAttention(nn.Module):
    """Codes of 2r+1 consecutive frames [B, T, A] -> one smoothed code [B, A]: softmax weights over the
    frames from a small 1-D conv net (AD-NeRF's AudioAttNet), for inter-frame consistency."""

    def __init__(self, dim: int, frames: int):
        super().__init__()
        widths = (dim, 16, 8, 4, 2, 1)
        self.convs = nn.ModuleList(nn.Conv1d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:]))
        self.mix = nn.Linear(frames, frames)

    def forward(self, codes: Tensor) -> Tensor:
        x = codes.transpose(1, 2)  # [B, A, T]
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.02)
        weights = torch.softmax(self.mix(x[:, 0]), dim=1)  # [B, T]
        return torch.einsum("bt,bta->ba", weights, codes)


class AudioPlane(nn.Module):
    """f(x, a): Gaussian centres x [N, 3] in [-1, 1] and one audio code a [A] -> features [N, out_dim]."""

    def __init__(self, config: AudioPlaneConfig):
        super().__init__()
        self.config = config
        d = config.feature_dim
        self.planes = nn.ParameterList()  # per scale [3, D, sH, sH]: XY, XZ, YZ
        self.lines = nn.ParameterList()  # per scale [3, D, 1, sH]: the line of each triple, L_Z, L_Y, L_X
        self.prototypes = nn.ParameterList()  # per scale [sH, D]: the audio prototype grid A
        for s in config.scales:
            r = s * config.resolution
            self.planes.append(nn.Parameter(torch.empty(3, d, r, r).uniform_(0.1, 0.5)))
            self.lines.append(nn.Parameter(torch.empty(3, d, 1, r).uniform_(0.1, 0.5)))
            self.prototypes.append(nn.Parameter(torch.randn(r, d) * 0.5))
        self.query = nn.Linear(config.code_dim, d * len(config.scales)) if config.audio_plane else None

    @property
    def out_dim(self) -> int:
        c = self.config
        per_scale = c.feature_dim * (3 if c.fusion == "concat" else 1)
        return per_scale * len(c.scales) + (0 if c.audio_plane else c.code_dim)

    def audio_features(self, code: Tensor) -> list[Tensor]:
        """f_a per scale, each [D]: cross-attention of q(a) over the prototype grid (K = V = A)."""
        d = self.config.feature_dim
        queries = self.query(code).view(len(self.config.scales), d)
        return [torch.softmax(grid @ q / math.sqrt(d), dim=0) @ grid for q, grid in zip(queries, self.prototypes)]

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        n = x.shape[0]
        plane_xy = torch.stack([x[:, list(axes)] for axes in _PLANE_AXES])[:, None]  # [3, 1, N, 2]
        line_xy = torch.stack([F.pad(x[:, k:k + 1], (0, 1)) for k in _LINE_AXIS])[:, None]  # [3, 1, N, 2] (x_k, 0)
        audio = self.audio_features(code) if self.config.audio_plane else [None] * len(self.config.scales)
        out = []
        for planes, lines, f_a in zip(self.planes, self.lines, audio):
            p = F.grid_sample(planes, plane_xy, align_corners=True, padding_mode="border")[:, :, 0]  # [3, D, N]
            if f_a is not None:
                line = F.grid_sample(lines, line_xy, align_corners=True, padding_mode="border")[:, :, 0]
                p = p * line * f_a[None, :, None]
            p = p.permute(0, 2, 1)  # [3, N, D]
            if self.config.fusion == "concat":
                out.append(p.permute(1, 0, 2).reshape(n, -1))
            elif self.config.fusion == "add":
                out.append(p.sum(dim=0))
            else:
                out.append(p.prod(dim=0))
        if not self.config.audio_plane:
            out.append(code.expand(n, -1))
        return torch.cat(out, dim=1)


class AudioPlaneDeformer(nn.Module):
    """Audio windows -> per-frame codes, and (Gaussian centres, code, blink) -> (ΔG [N, K], d [N]).

    ``box`` [2, 3] is the head box (metres) that maps centres to the planes' [-1, 1].
    """

    def __init__(self, config: AudioPlaneConfig, box: Tensor):
        super().__init__()
        self.config = config
        self.register_buffer("box", torch.as_tensor(box, dtype=torch.float32).reshape(2, 3).clone())
        if config.audio_encoder == "ridge":
            self.ridge = RidgeMouthShape(config.ridge_dims, config.code_dim)  # fitted by train_fine before step 1
        else:
            self.encoder = AudioEncoder(config.audio_channels, config.audio_dim)
            self.attention = TemporalAttention(config.audio_dim, 2 * config.temporal_radius + 1)
            # unit-scale codes: a large q saturates the prototype softmax, and then no gradient reaches the audio
            self.norm = nn.LayerNorm(config.audio_dim)
            # a linear readout of the mouth shape (aperture, width, chin drop: landmarks.mouth_shape) from the
            # code, used in training only: its loss keeps the code about the mouth on real footage, where the
            # image loss alone lets the code collapse to a constant
            self.mouth_shape = nn.Linear(config.audio_dim, 3)
        self.plane = AudioPlane(config)
        width = self.plane.out_dim + config.decoder_audio * config.code_dim + config.blink
        self.delta = nn.Sequential(nn.Linear(width, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.hidden),
                                   nn.ReLU(), nn.Linear(config.hidden, config.delta_channels))
        self.dynamism = nn.Sequential(nn.Linear(self.plane.out_dim, 32), nn.ReLU(), nn.Linear(32, 1))
        nn.init.zeros_(self.delta[-1].weight)  # G' = G at the start: fine training begins at the coarse head
        nn.init.zeros_(self.delta[-1].bias)

    def neighbour_indices(self, frames: Tensor, count: int) -> Tensor:
        """[B] frame indices -> [B, 2r+1] indices of their neighbours, clamped to [0, count)."""
        r = self.config.temporal_radius
        offsets = torch.arange(-r, r + 1, device=frames.device)
        return (frames[:, None] + offsets).clamp(0, count - 1)

    def code(self, windows: Tensor) -> Tensor:
        """Windows of B frames and their neighbours [B, 2r+1, W, C] -> smoothed audio codes [B, A] (the ridge
        encoder: mouth shape and appearance scores [B, 3 + ridge_appearance] from the middle 2 ``ridge_context``
        + 1 windows)."""
        if self.config.audio_encoder == "ridge":
            return self.ridge(self.ridge_inputs(windows))
        raw = self.encoder(windows.reshape(-1, *windows.shape[2:]).float()).view(*windows.shape[:2], -1)
        return self.norm(self.attention(raw))

    def ridge_inputs(self, windows: Tensor) -> Tensor:
        """[B, 2r+1, W, C] windows of frames and their neighbours -> the middle [B, 2 ``ridge_context`` + 1, W, C]
        that the ridge encoder reads."""
        r, c = self.config.temporal_radius, self.config.ridge_context
        return windows[:, r - c:r + c + 1]

    def shape_readout(self, codes: Tensor) -> Tensor:
        """Audio codes [B, A] -> the mouth shape [B, 3] they predict (the ridge's codes are that shape)."""
        return codes[:, :3] if self.config.audio_encoder == "ridge" else self.mouth_shape(codes)

    def codes(self, features: Tensor | np.ndarray, frames: Tensor, chunk: int = 256) -> Tensor:
        """Smoothed audio codes [B, A] of ``frames`` [B] of a clip's features [T, W, C]: a tensor, or an array
        (a memory map or overlapping window view), of which only ``chunk`` frames' windows are read at a time."""
        out = []
        for start in range(0, len(frames), chunk):
            idx = self.neighbour_indices(frames[start:start + chunk], features.shape[0])  # [b, 2r+1]
            if isinstance(features, Tensor):
                windows = features[idx]
            else:
                windows = torch.from_numpy(np.ascontiguousarray(features[idx.cpu().numpy()], dtype=np.float32))
            out.append(self.code(windows.to(self.box.device)))
        return torch.cat(out)

    def forward(self, means: Tensor, code: Tensor, blink: float | Tensor | None = None) -> tuple[Tensor, Tensor]:
        lo, hi = self.box[0], self.box[1]
        x = (2 * (means - lo) / (hi - lo) - 1).clamp(-1, 1)
        f = self.plane(x, code)
        d = torch.sigmoid(self.dynamism(f))[:, 0]
        inputs = [f]
        if self.config.decoder_audio:
            inputs.append(code.expand(f.shape[0], -1))
        if self.config.blink:
            b = torch.as_tensor(1.0 if blink is None else blink, dtype=f.dtype, device=f.device)
            inputs.append(b.expand(f.shape[0], 1))
        return self.delta(torch.cat(inputs, dim=1)), d


def displace(points: Tensor, delta: Tensor, d: Tensor, config: AudioPlaneConfig) -> Tensor:
    """Points [N, 3] moved by the position part of d * ΔG (metres via ``position_scale``)."""
    return points + d[:, None] * delta[:, :3] * config.position_scale


def deform(gaussians: GaussianModel, delta: Tensor, d: Tensor, config: AudioPlaneConfig) -> GaussianModel:
    """G' = G + d * ΔG on the unconstrained parameters (positions in metres via ``position_scale``)."""
    w = d[:, None]
    sh = gaussians.sh
    if config.deform_color:
        dc = sh[:, :1] + (w * delta[:, 10:13])[:, None]
        sh = torch.cat([dc, sh[:, 1:]], dim=1)
    opacity = gaussians.opacity_logits
    if config.deform_opacity:
        opacity = opacity + d * delta[:, -1]
    return GaussianModel(means=displace(gaussians.means, delta, d, config),
                         quats=gaussians.quats + w * delta[:, 3:7],
                         log_scales=gaussians.log_scales + w * delta[:, 7:10],
                         opacity_logits=opacity, sh=sh)


def render_deformed(gaussians: GaussianModel, viewmat: Tensor, K: Tensor, width: int, height: int,
                    sh_degree: int, backend: str = "auto", background: Tensor | None = None,
                    extra: Tensor | None = None):
    """RasterResult of one camera (viewmat [4,4], K [3,3]) for already deformed Gaussians; ``extra`` [N, E]:
    further channels composited like the colour."""
    g = gaussians.activated()
    return rasterize(g.means, g.quats, g.scales, g.opacities, g.sh, viewmat[None], K[None], width, height,
                     sh_degree=sh_degree, extra=extra, background=background, backend=backend)


class TalkingHead:
    """A trained fine model (``fine.pt``): canonical Gaussians and the deformer, ready to render; CPU or CUDA.

    ``extractor``: the audio extractor it was trained with (features ``{extractor}.npy``);
    ``audio_stats``: the normalisation those features carry (mean, std [C]);
    ``train_widths``: [N] width of the images each Gaussian was trained on (the mouth box's frames or the
    head's): renders wider than that keep its low-pass (gaussians/lowpass.py); None: none.
    """

    def __init__(self, gaussians: GaussianModel, deformer: AudioPlaneDeformer, extractor: str,
                 audio_stats: dict[str, np.ndarray], sh_degree: int, train_widths: Tensor | None = None):
        self.gaussians = gaussians
        self.deformer = deformer.eval()
        self.extractor = extractor
        self.audio_stats = audio_stats
        self.sh_degree = sh_degree
        self.train_widths = train_widths

    @property
    def device(self) -> torch.device:
        return self.gaussians.means.device

    def state(self) -> dict[str, Any]:
        """The payload :meth:`load` reads (fine.pt's model part)."""
        return {"gaussians": {k: t.detach().cpu() for k, t in self.gaussians.tensors().items()},
                "deformer": {k: t.detach().cpu() for k, t in self.deformer.state_dict().items()},
                "model_config": asdict(self.deformer.config), "extractor": self.extractor,
                "audio_stats": self.audio_stats, "sh_degree": self.sh_degree,
                "train_widths": None if self.train_widths is None else self.train_widths.cpu()}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> TalkingHead:
        config = AudioPlaneConfig(**state["model_config"])
        deformer = AudioPlaneDeformer(config, state["deformer"]["box"])
        deformer.load_state_dict(state["deformer"])
        gaussians = GaussianModel(**state["gaussians"]).map(lambda t: t.to(device))
        widths = state.get("train_widths")  # absent from models trained before the low-pass: no filter
        return cls(gaussians, deformer.to(device), state["extractor"], state["audio_stats"], state["sh_degree"],
                   None if widths is None else widths.to(device))

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> TalkingHead:
        path = Path(path)
        if not path.is_file():
            raise PipelineError(f"{path}: fine model not found; run the train_fine stage first")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
            return cls.from_state(payload["head"], device)
        except (KeyError, TypeError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
            raise PipelineError(f"{path}: not a fine.pt written by train_fine ({err!r}); rerun train_fine") from err

    @torch.no_grad()
    def audio_codes(self, features: Tensor | np.ndarray) -> Tensor:
        """Normalised features [T, W, C] -> per-frame codes [T, A] (temporal attention applied). An array is
        read a chunk at a time (see :meth:`AudioPlaneDeformer.codes`): memory stays flat in its length."""
        if isinstance(features, Tensor):
            features = features.to(self.device, torch.float32)
        want = (self.deformer.config.window, self.deformer.config.audio_channels)
        if features.ndim != 3 or tuple(features.shape[1:]) != want:
            raise PipelineError(f"audio features of shape {tuple(features.shape)} do not fit this model "
                                f"([T, {want[0]}, {want[1]}], extractor {self.extractor})")
        return self.deformer.codes(features, torch.arange(features.shape[0], device=self.device))

    @torch.no_grad()
    def deformed(self, code: Tensor, blink: float | None = None) -> tuple[GaussianModel, Tensor]:
        """(G', the dynamism d [N]) for one frame's code."""
        delta, d = self.deformer(self.gaussians.means, code, blink)
        return deform(self.gaussians, delta, d, self.deformer.config), d

    @torch.no_grad()
    def render(self, code: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int, blink: float | None = None,
               backend: str = "auto") -> tuple[Tensor, Tensor]:
        """One frame: (premultiplied head colour [H, W, 3] without background, alpha [H, W, 1])."""
        viewmat, K = viewmat.to(self.device).float(), K.to(self.device).float()
        moved = self.deformed(code, blink)[0]
        if self.train_widths is not None:
            focal = float(K[0, 0])
            moved = training_lowpass(moved, viewmat, K, width, height, focal / width * self.train_widths)
        result = render_deformed(moved, viewmat, K, width, height, self.sh_degree, backend)
        return result.color[0].clamp(0, 1), result.alpha[0]
