"""Stage ``render``: the trained head speaking any audio, composited into a playable video.

Per output frame ``t``: the fine model's audio code of frame ``t`` (from the driving audio's features,
normalised with the subject's statistics), head pose, blink and torso of training frame ``schedule[t]``
(training frames in ping-pong order, so any audio length works), the head rendered at the output size
(intrinsics scaled, whatever the training resolution), then :mod:`pipeline.composite` over the torso and
the background plate. Frames stream to ffmpeg (:class:`pipeline.media.VideoWriter`): memory does not grow
with the audio's length. ``renders/test.mp4`` is the test split with its own poses, torsos and audio.

Users with a trained subject render a new audio file with no sheet editing::

    python -m pipeline.render --subject alice --audio speech.wav --out speech.mp4

Optional paste-back (``render.paste_back``): driven renders are placed back into the full-size source frames
(``video.json``'s crop box, feathered border), for inputs wider than the head crop. ``test.mp4`` always
stays at the crop, as evaluation compares it with the prepared frames.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from pipeline import cli
from pipeline.audio import AudioFeatureConfig, AudioStats, check_length, extract_audio_features, frame_count
from pipeline.composite import SeamConfig, composite, outline_layer, outline_pixels
from pipeline.dataset import Cameras, training_size
from pipeline.io import PipelineError, list_frames, load_image, load_json, load_rgb, map_threaded
from pipeline.media import VideoWriter, decode_audio, run_ffmpeg, write_wav
from pipeline.parsing import load_labels
from pipeline.paths import SubjectPaths, frame_name

log = logging.getLogger("pipeline.render")

FPS = 25.0
SILENCE_DBFS = -60.0  # driving audio whose RMS is below this has nothing to lip-sync


class HeadModel(Protocol):
    """What rendering needs of a trained fine model (``pipeline.audioplane.TalkingHead``)."""

    extractor: str

    def audio_codes(self, features: Tensor | np.ndarray) -> Tensor:
        """features [T, window, C] normalised (a tensor, or an array read a chunk at a time) -> per-frame
        codes [T, A] (temporally filtered)."""

    def render(self, code: Tensor, viewmat: Tensor, K: Tensor, width: int, height: int, blink: float | None = None,
               backend: str = "auto") -> tuple[Tensor, Tensor]:
        """code [A], viewmat [4,4], K [3,3] -> (premultiplied rgb [H,W,3], alpha [H,W,1]) in [0,1]."""


def load_model(path: str | Path, device: torch.device) -> HeadModel:
    """The fine model of ``train_fine`` (``model/fine.pt``)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: trained model not found; run the train_fine stage for this subject first")
    from pipeline.audioplane import TalkingHead

    return TalkingHead.load(path, device=device)


@dataclass(frozen=True)
class RenderConfig:
    resolution: int | None = None  # output side; None = the prepared frames' size
    paste_back: bool = False  # driven renders back into the full-size source frames
    paste_feather: float = 0.03  # paste-back border ramp, fraction of the crop side
    blink: bool = True  # eyes follow the training frames' blinks (when the model is blink-conditioned)
    backend: str = "auto"  # rasterizer: auto | torch | gsplat
    crf: int = 18  # H.264 quality (lower is better)
    seam_reach: float = SeamConfig.reach
    seam_overlap: float = SeamConfig.overlap
    outline: float = SeamConfig.outline

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RenderConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise PipelineError(f"render settings: unknown keys {', '.join(sorted(unknown))}")
        config = cls(**data)
        if config.backend not in ("auto", "torch", "gsplat"):
            raise PipelineError(f"render settings: backend must be auto, torch or gsplat, got {config.backend!r}")
        return config

    @property
    def seam(self) -> SeamConfig:
        return SeamConfig(reach=self.seam_reach, overlap=self.seam_overlap, outline=self.outline)


# ---------------------------------------------------------------------------------------------------------
# Pure core
# ---------------------------------------------------------------------------------------------------------

def pingpong(length: int, pool: Sequence[int]) -> np.ndarray:
    """int64 [length]: ``pool`` forward, backward, forward, ... (turning points not repeated)."""
    pool = np.asarray(pool, dtype=np.int64)
    if pool.size == 0:
        raise ValueError("ping-pong over no frames")
    if pool.size == 1 or length <= 0:
        return np.full(max(length, 0), pool[0] if pool.size else 0, dtype=np.int64)
    period = 2 * (pool.size - 1)
    phase = np.arange(length) % period
    return pool[np.where(phase < pool.size, phase, period - phase)]


def speech_level_dbfs(samples: np.ndarray) -> float:
    """RMS level of float samples in dB full scale (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    return 20 * np.log10(rms) if rms > 0 else float("-inf")


class Scene:
    """What a render takes from the subject's training frames, at the output size on ``device``:
    cameras (K scaled), torso frames and outlines (decoded on demand), blink, the background plate."""

    def __init__(self, paths: SubjectPaths, resolution: int | None, device: torch.device):
        self.cameras = Cameras.load(paths.cameras)
        n = len(self.cameras)
        self.torso_files = list_frames(paths.torso, ext="png")
        self.frame_files = list_frames(paths.frames, ext="jpg")
        self.parsing_files = list_frames(paths.parsing, ext="png")
        for folder, files in ((paths.torso, self.torso_files), (paths.frames, self.frame_files),
                              (paths.parsing, self.parsing_files)):
            if len(files) != n:
                raise PipelineError(f"{folder}: {len(files)} frames but {paths.cameras} has {n}")
        self.blink = np.load(paths.blink) if paths.blink.is_file() else None
        if self.blink is not None and self.blink.shape != (n,):
            raise PipelineError(f"{paths.blink}: shape {self.blink.shape}, expected [{n}]")
        self.width, self.height = training_size(self.cameras.width, self.cameras.height, resolution)
        self.device = device
        self.K = torch.tensor(self.cameras.scaled_K(self.width, self.height), dtype=torch.float32, device=device)
        self.viewmats = torch.tensor(self.cameras.world_to_camera, dtype=torch.float32, device=device)
        plate = self._resized(load_rgb(paths.background), Image.Resampling.BOX)
        self.plate = torch.from_numpy(plate.copy()).to(device, torch.float32) / 255

    def _resized(self, image: np.ndarray, method: Image.Resampling) -> np.ndarray:
        if image.shape[:2] == (self.height, self.width):
            return np.ascontiguousarray(image)
        if image.shape[:2] != (self.cameras.height, self.cameras.width):
            raise PipelineError(f"image of {image.shape[1]}x{image.shape[0]} pixels, cameras.json says "
                                f"{self.cameras.width}x{self.cameras.height}")
        return np.asarray(Image.fromarray(image).resize((self.width, self.height), method))

    def torso(self, index: int) -> np.ndarray:
        """uint8 [H,W,4] straight alpha at the output size (Pillow resizes RGBA premultiplied)."""
        rgba = load_image(self.torso_files[index])
        if rgba.ndim != 3 or rgba.shape[2] != 4:
            raise PipelineError(f"{self.torso_files[index]}: not an RGBA torso frame")
        rgba = self._resized(rgba, Image.Resampling.BICUBIC)
        return rgba if rgba.flags.writeable else rgba.copy()  # torch wants writable memory

    def outline(self, index: int, seam: SeamConfig) -> np.ndarray | None:
        """uint8 [H,W,4]: the source frame's silhouette ring at the output size (composite.outline_layer),
        or None where ``seam`` has no outline."""
        width = outline_pixels(self.height, seam)
        if width == 0:
            return None
        frame = self._resized(load_rgb(self.frame_files[index]), Image.Resampling.BOX)
        labels = load_labels(self.parsing_files[index], (self.cameras.height, self.cameras.width))
        return outline_layer(frame, self._resized(labels, Image.Resampling.NEAREST), width)

    def layers(self, index: int, seam: SeamConfig) -> tuple[np.ndarray, np.ndarray | None]:
        """(torso, outline) of training frame ``index`` (see :meth:`torso`, :meth:`outline`)."""
        return self.torso(index), self.outline(index, seam)


@dataclass
class RenderStats:
    frames: int = 0
    render_seconds: float = 0.0  # head + composite (device-synchronised), excluding decoding and encoding
    total_seconds: float = 0.0

    @property
    def render_fps(self) -> float:
        return self.frames / self.render_seconds if self.render_seconds > 0 else 0.0

    @property
    def total_fps(self) -> float:
        return self.frames / self.total_seconds if self.total_seconds > 0 else 0.0


def render_frames(model: HeadModel, codes: Tensor, schedule: Sequence[int], scene: Scene, config: RenderConfig,
                  stats: RenderStats | None = None, threads: int = 2) -> Iterator[np.ndarray]:
    """Composited frames uint8 [H,W,3]: ``codes[t]`` [T,A] on training frame ``schedule[t]``'s pose, blink and
    torso. Torso frames are decoded ahead on ``threads`` threads; ``stats`` accumulates timings."""
    if len(codes) != len(schedule):
        raise ValueError(f"{len(codes)} audio codes for {len(schedule)} frames")
    stats = stats if stats is not None else RenderStats()
    seam = config.seam
    with torch.inference_mode():
        for t, (torso, outline) in enumerate(map_threaded(lambda i: scene.layers(i, seam), schedule, threads)):
            start = time.perf_counter()
            i = int(schedule[t])
            blink = float(scene.blink[i]) if config.blink and scene.blink is not None else None
            rgb, alpha = model.render(codes[t], scene.viewmats[i], scene.K, scene.width, scene.height, blink=blink,
                                      backend=config.backend)
            outline_t = None if outline is None else torch.from_numpy(outline).to(scene.device)
            image = composite(rgb, alpha, torch.from_numpy(torso).to(scene.device), scene.plate, seam,
                              outline_t).image.cpu().numpy()
            stats.render_seconds += time.perf_counter() - start
            stats.frames += 1
            yield image


# ---------------------------------------------------------------------------------------------------------
# Paste-back into the full-size source frames
# ---------------------------------------------------------------------------------------------------------

class PasteBack:
    """Full-size source frames (25 fps, as prepare_video cut them) with the composited crop placed back.

    The frames a render needs are decoded once into ``scratch`` (JPEG, by ffmpeg, streaming).
    """

    def __init__(self, video_json: Path, frames: int, scratch: Path, feather: float):
        meta = load_json(video_json)
        try:
            self.source = Path(meta["source"])
            self.crop = tuple(int(v) for v in meta["crop"][:3])
            self.width, self.height = (int(v) for v in meta["source_size"])
        except (KeyError, TypeError, ValueError) as err:
            raise PipelineError(f"{video_json}: no source/crop/source_size for paste-back ({err!r})") from err
        if not self.source.is_file():
            raise PipelineError(f"{self.source}: source video of {video_json} not found; paste-back needs it")
        run_ffmpeg(self.source, "decode full-size frames for paste-back", "-i", str(self.source), "-map", "0:v:0",
                   "-an", "-vf", f"fps={FPS:g}", "-frames:v", str(frames), "-q:v", "2", "-start_number", "0",
                   "-f", "image2", str(scratch / "%06d.jpg"))
        self.scratch = scratch
        side = self.crop[2]
        ramp = max(1, round(feather * side))
        edge = np.minimum(np.arange(side), np.arange(side)[::-1]) + 0.5
        profile = np.clip(edge / ramp, 0, 1).astype(np.float32)
        self.mask = np.minimum(profile[:, None], profile[None, :])[..., None]  # [side, side, 1]

    def paste(self, crop_image: np.ndarray, index: int) -> np.ndarray:
        """uint8 [H,W,3] full frame ``index`` with ``crop_image`` (any size, resized to the crop) placed back."""
        path = self.scratch / frame_name(index, "jpg")
        full = load_rgb(path) if path.is_file() else np.zeros((self.height, self.width, 3), np.uint8)
        x, y, side = self.crop
        patch = np.asarray(Image.fromarray(crop_image).resize((side, side), Image.Resampling.LANCZOS), np.float32)
        region = full[y:y + side, x:x + side].astype(np.float32)
        mask = self.mask[:region.shape[0], :region.shape[1]]
        blended = region + mask * (patch[:region.shape[0], :region.shape[1]] - region)
        full = full.copy()
        full[y:y + side, x:x + side] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
        return full


# ---------------------------------------------------------------------------------------------------------
# Renders
# ---------------------------------------------------------------------------------------------------------

def encode(frames: Iterator[np.ndarray], out: Path, width: int, height: int, audio: Path, total: int,
           crf: int, desc: str) -> None:
    with VideoWriter(out, width, height, FPS, audio=audio, crf=crf) as writer:
        for frame in cli.progress(frames, total=total, desc=desc):
            writer.write(frame)


def _log_stats(out: Path, stats: RenderStats, scene: Scene) -> None:
    log.info("%s: %d frames at %dx%d; head + composite %.1f frames/s, overall %.1f frames/s (with decoding "
             "and encoding)", out, stats.frames, scene.width, scene.height, stats.render_fps, stats.total_fps)


def render_drive(model: HeadModel, features: np.ndarray, audio: Path, scene: Scene, out: Path,
                 config: RenderConfig, video_json: Path | None = None, threads: int = 2) -> RenderStats:
    """Render ``features`` [T, window, C] (driving audio ``audio``) over the training frames in ping-pong order."""
    start = time.perf_counter()
    codes = model.audio_codes(features)
    schedule = pingpong(len(codes), scene.cameras.train)
    stats = RenderStats()
    frames = render_frames(model, codes, schedule, scene, config, stats, threads)
    if not config.paste_back:
        encode(frames, out, scene.width, scene.height, audio, len(schedule), config.crf, f"render {out.name}")
    else:
        if video_json is None:
            raise PipelineError("render.paste_back needs the subject's video.json")
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-scratch.") as scratch:
            paste = PasteBack(video_json, int(schedule.max()) + 1, Path(scratch), config.paste_feather)
            full = (paste.paste(frame, int(i)) for frame, i in zip(frames, schedule))
            encode(full, out, paste.width, paste.height, audio, len(schedule), config.crf, f"render {out.name}")
    stats.total_seconds = time.perf_counter() - start
    _log_stats(out, stats, scene)
    return stats


def render_test(model: HeadModel, features: np.ndarray, audio_wav: Path, scene: Scene, out: Path,
                config: RenderConfig, threads: int = 2) -> RenderStats:
    """The test split (its own poses, torsos and audio): ``features`` are the subject's [N, window, C]."""
    start = time.perf_counter()
    test = np.asarray(scene.cameras.test, dtype=np.int64)
    if len(features) != len(scene.cameras):
        raise PipelineError(f"audio features have {len(features)} frames, cameras.json {len(scene.cameras)}")
    samples = decode_audio(audio_wav, 16000)
    per_frame = int(16000 / FPS)
    clip = samples[test[0] * per_frame:(test[-1] + 1) * per_frame]
    codes = model.audio_codes(features)[test]
    stats = RenderStats()
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}-scratch.") as scratch:
        wav = Path(scratch) / "test.wav"
        write_wav(wav, clip, 16000)
        frames = render_frames(model, codes, test, scene, config, stats, threads)
        encode(frames, out, scene.width, scene.height, wav, len(test), config.crf, f"render {out.name}")
    stats.total_seconds = time.perf_counter() - start
    _log_stats(out, stats, scene)
    return stats


def read_driving_audio(path: Path, config: AudioFeatureConfig) -> np.ndarray:
    """Mono samples of a user's audio or video file, refused when it has no audio stream, is shorter than one
    frame or silent (nothing to lip-sync)."""
    samples = decode_audio(path, config.sample_rate)
    check_length(samples.shape[0], config, f"{path}: audio")
    level = speech_level_dbfs(samples)
    if level < SILENCE_DBFS:
        raise PipelineError(f"{path}: audio is silent (RMS {level:.0f} dBFS, below {SILENCE_DBFS:.0f} dBFS); "
                            "nothing to lip-sync")
    return samples


def features_for(samples: np.ndarray, stats: AudioStats, model_path: str | None) -> np.ndarray:
    """Driving features [ceil(duration * fps), window, C] normalised with the subject's statistics."""
    from pipeline.audio import load_speech_encoder

    config = AudioFeatureConfig(extractor=stats.extractor, window=stats.window,
                                n_mels=stats.channels if stats.extractor == "mel" else AudioFeatureConfig.n_mels,
                                fps=stats.fps, sample_rate=stats.sample_rate, model_path=model_path)
    encoder = None if config.extractor == "mel" else load_speech_encoder(config)
    features, _ = extract_audio_features(samples, frame_count(samples.shape[0], config), config, stats, encoder)
    return features


# ---------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.render", description=__doc__.split("\n")[0],
        epilog="example: python -m pipeline.render --subject alice --audio speech.wav --out speech.mp4")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--subject", help="trained subject (its artefacts under RESULTS/SUBJECT)")
    who.add_argument("--subject-dir", type=Path, help="the subject's artefact directory (instead of --subject)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results directory (default: results)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--audio", type=Path, help="driving audio or video file (anything ffmpeg reads)")
    what.add_argument("--test", action="store_true", help="render the test split with its own audio")
    p.add_argument("--features", type=Path, default=None,
                   help="precomputed driving features (drives/{audio_id}/{extractor}.npy); default: from --audio")
    p.add_argument("--out", type=Path, required=True, help="MP4 to write")
    p.add_argument("--settings", default="{}", help="JSON of the config's `render` section")
    p.add_argument("--audio-model-path", default=None, help="local checkpoint of a hubert/wav2vec2 extractor")
    p.add_argument("--device", default="auto", help="auto (CUDA when available) | cpu | cuda[:k]")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    return p


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PipelineError(f"--device {name}: CUDA is not available here; use --device cpu or auto")
    return torch.device(name)


def _run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    try:
        config = RenderConfig.from_dict(json.loads(args.settings))
    except (json.JSONDecodeError, TypeError) as err:
        raise PipelineError(f"--settings: not valid render settings ({err})") from err
    paths = SubjectPaths(args.subject_dir) if args.subject_dir else SubjectPaths.of(args.results, args.subject)
    samples = None
    if args.audio is not None and args.features is None:  # a user's file: refuse bad audio before anything else
        samples = read_driving_audio(args.audio, AudioFeatureConfig())
    if not paths.root.is_dir():
        raise PipelineError(f"{paths.root}: no such subject; train it first (snakemake --cores all)")
    device = _device(args.device)
    model = load_model(paths.fine_pt, device)
    scene = Scene(paths, config.resolution, device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.test:
        features = np.load(paths.audio_features(model.extractor), mmap_mode="r")
        render_test(model, features, paths.audio_wav, scene, args.out, config, args.threads)
        return
    if args.features is not None:
        features = np.load(args.features, mmap_mode="r")
    else:
        stats = AudioStats.load(paths.audio_stats(model.extractor))
        features = features_for(samples, stats, args.audio_model_path)
    render_drive(model, features, args.audio, scene, args.out, config, paths.video_json, args.threads)


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
