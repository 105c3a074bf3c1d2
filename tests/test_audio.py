"""extract_audio_features: frame alignment, length contract, normalisation reuse, resampling, bad input, CLI.

The hubert/wav2vec2 success path needs real weights and transformers (neither is available here): it is
covered up to the model call with a stand-in encoder that has the same 400/320-sample framing; the
error paths (no/incomplete model directory, wrong model type, transformers missing) are tested directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf

from pipeline import audio
from pipeline.audio import (
    AudioFeatureConfig,
    AudioStats,
    SpeechEncoder,
    drive_features,
    extract_audio_features,
    frame_count,
    subject_features,
)
from pipeline.io import PipelineError
from pipeline.media import ffmpeg_binary

MEDIA = Path(__file__).parents[2] / "shared" / "media"
SPEECH = MEDIA / "speech_radio_16k.wav"
SR = 16000
SPF = 640  # samples per 25 fps frame at 16 kHz
CFG = AudioFeatureConfig()
CLICK_FRAMES = [4, 11, 23, 37, 52]


def click_track(n_frames: int, frames: list[int], offset_s: float, sr: int = SR) -> np.ndarray:
    """Faint noise with a 0.25 ms click ``offset_s`` into the interval of each frame in ``frames``."""
    rng = np.random.default_rng(0)
    x = (1e-3 * rng.standard_normal(int(n_frames / 25 * sr))).astype(np.float32)
    for f in frames:
        start = round((f / 25 + offset_s) * sr)
        x[start:start + sr // 4000] = 0.8
    return x


def centre_energy(features: np.ndarray) -> np.ndarray:
    """Mean of each window's two centre steps (the frame's own steps): [N]."""
    w = features.shape[1]
    return features[:, w // 2 - 1:w // 2 + 1].mean(axis=(1, 2))


def assert_peaks_at(energy: np.ndarray, frames: list[int]) -> None:
    top = np.sort(np.argsort(energy)[-len(frames):])
    assert top.tolist() == frames
    for f in frames:
        assert energy[f] > energy[f - 1] and energy[f] > energy[f + 1]


def speech_16k() -> np.ndarray:
    if not SPEECH.exists():
        pytest.skip(f"{SPEECH} not present")
    return audio.decode(SPEECH, CFG)


@pytest.mark.parametrize("offset_ms", [1.0, 20.0, 38.75])
def test_click_alignment_is_exact(offset_ms):
    # any instant inside [i/25, (i+1)/25) belongs to frame i, up to 1 ms from either edge
    x = click_track(60, CLICK_FRAMES, offset_ms / 1000)
    features, _ = extract_audio_features(x, 60, CFG)
    assert features.shape == (60, 16, 80) and features.dtype == np.float32
    assert_peaks_at(centre_energy(features), CLICK_FRAMES)


def test_click_alignment_survives_decode_and_resampling(tmp_path):
    path = tmp_path / "clicks_44k.wav"
    sf.write(path, click_track(60, CLICK_FRAMES, 0.02, sr=44100), 44100, subtype="PCM_16")
    features, _, _ = subject_features(path, 60, CFG)
    assert_peaks_at(centre_energy(features), CLICK_FRAMES)


def test_windows_are_centred_and_padded_with_silence():
    x = click_track(30, [10], 0.02)
    features, stats = extract_audio_features(x, 30, CFG)
    # consecutive frames' windows are the same step sequence shifted by 2 steps (one frame)
    np.testing.assert_array_equal(features[1:, :-2], features[:-1, 2:])
    # the click (frame 10) sits in the centre steps 7, 8 of frame 10 and 2 steps earlier per later frame
    hot = features.mean(axis=2).argmax(axis=1)
    assert hot[10] in (7, 8) and hot[11] in (5, 6) and hot[9] in (9, 10)
    # frame 0's window starts with 7 steps of context before the audio, silence at the -80 dB floor (the
    # 7th, centred 10 ms before the start, has 2.5 ms of audio under its 25 ms analysis window)
    floor = (10 * np.log10(1e-8) - stats.mean) / stats.std
    np.testing.assert_allclose(features[0, :6], np.broadcast_to(floor, (6, 80)), atol=1e-4)
    assert not np.allclose(features[0, 7], floor, atol=1e-2)


def test_length_is_padded_or_trimmed_to_the_frame_count():
    x = speech_16k()[: 40 * SPF]
    long, stats = extract_audio_features(x, 50, CFG)
    short, _ = extract_audio_features(x, 30, CFG, stats)
    assert long.shape[0] == 50 and short.shape[0] == 30
    # trimming only changes the windows whose right context reaches past frame 29 (frames >= 26)
    np.testing.assert_allclose(short[:26], long[:26], atol=1e-5)
    assert not np.allclose(short[29], long[29], atol=1e-2)
    # frames 40.. of the padded one have only silence at their centre
    np.testing.assert_allclose(long[45], long[46], atol=1e-5)


def test_drive_frame_count_is_ceil_of_duration():
    assert frame_count(10 * SPF, CFG) == 10
    assert frame_count(10 * SPF + 1, CFG) == 11
    assert frame_count(SPF - 1, CFG) == 1


def test_drive_reuses_subject_statistics(tmp_path):
    x = speech_16k()
    subject, stats = extract_audio_features(x, frame_count(len(x), CFG), CFG)
    loud = tmp_path / "loud.wav"
    sf.write(loud, 0.5 * np.stack([x, x], axis=1), SR, subtype="FLOAT")  # stereo, -6 dB
    stats_path = tmp_path / "stats.npz"
    stats.save(stats_path)
    driven, samples = drive_features(loud, AudioStats.load(stats_path), CFG)
    assert driven.shape == subject.shape and len(samples) == len(x)
    # same normalisation: -6 dB is a constant shift of 6.02 dB / std per band, not re-standardised away
    shift = (driven - subject).mean(axis=(0, 1))
    np.testing.assert_allclose(shift, -6.02 / stats.std, rtol=0.05, atol=0.02)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampled_speech_matches_16k(tmp_path, rate):
    """Mean abs diff of normalised features vs 16 kHz: <= 0.05 over all bands (measured 0.013; the band
    next to 8 kHz differs most, ~0.7, from the resamplers' cut-offs); at 8 kHz nothing above 4 kHz is
    left, so only bands with upper edge < 3.8 kHz are compared, <= 0.02 (measured 0.002)."""
    x = speech_16k()
    ref, stats = extract_audio_features(x, frame_count(len(x), CFG), CFG)
    y = librosa.resample(x, orig_sr=SR, target_sr=rate, res_type="soxr_hq")
    path = tmp_path / f"speech_{rate}.wav"
    sf.write(path, np.stack([y, y], axis=1) if rate == 48000 else y, rate, subtype="PCM_16")
    driven, _ = drive_features(path, stats, CFG)
    assert abs(driven.shape[0] - ref.shape[0]) <= 1
    n = min(len(ref), len(driven)) - 4  # the last frames' right context may differ by a resampled sample
    diff = np.abs(driven[:n] - ref[:n])
    if rate == 8000:
        upper_edges = librosa.mel_frequencies(n_mels=CFG.n_mels + 2, fmin=20.0, fmax=SR / 2)[2:]
        assert diff[..., upper_edges < 3800].mean() < 0.02
    else:
        assert diff.mean() < 0.05


def test_low_passed_subject_does_not_blow_up_full_band_driving_audio():
    x = speech_16k()
    telephone = librosa.resample(librosa.resample(x, orig_sr=SR, target_sr=8000), orig_sr=8000, target_sr=SR)
    n = frame_count(len(x), CFG)
    _, stats = extract_audio_features(telephone, n, CFG)
    # bands above 4 kHz barely vary in the subject: their std is floored at a tenth of the median std
    np.testing.assert_allclose(stats.std[-10:], 0.1 * np.median(stats.std[:64]), rtol=0.05)
    driven, _ = extract_audio_features(x, n, CFG, stats)
    assert np.abs(driven).max() < 100


def test_drive_from_a_video_audio_track(tmp_path):
    path = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-f", "lavfi", "-i", "color=c=gray:s=32x32:d=1:r=25",
                    "-f", "lavfi", "-i", "sine=f=440:d=1:sample_rate=44100", "-c:v", "mpeg4", "-c:a", "aac",
                    "-ac", "2", str(path)], check=True)
    _, stats = extract_audio_features(click_track(25, [5], 0.02), 25, CFG)
    features, samples = drive_features(path, stats, CFG)
    assert features.shape == (frame_count(len(samples), CFG), 16, 80)
    assert abs(len(samples) - SR) < 0.05 * SR and features.shape[0] in (25, 26)
    # the tone is there: its mel band is the loudest of frame 12's centre steps
    assert features[12, 7:9].mean(axis=0).argmax() == np.abs(
        librosa.mel_frequencies(n_mels=CFG.n_mels + 2, fmin=20.0, fmax=SR / 2)[1:-1] - 440).argmin()


def test_silent_audio_gives_finite_features(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(SR, dtype=np.float32), SR, subtype="PCM_16")
    features, stats, _ = subject_features(path, 25, CFG)
    assert np.isfinite(features).all() and np.isfinite(stats.std).all() and (stats.std > 0).all()
    # silence driven with a real subject's statistics
    _, speech_stats = extract_audio_features(click_track(25, [5], 0.02), 25, CFG)
    driven, _ = drive_features(path, speech_stats, CFG)
    assert driven.shape == (25, 16, 80) and np.isfinite(driven).all()


def test_audio_shorter_than_one_frame_is_an_error(tmp_path):
    path = tmp_path / "blip.wav"
    sf.write(path, np.full(SR * 30 // 1000, 0.1, dtype=np.float32), SR)
    stats = AudioStats(np.zeros(80, np.float32), np.ones(80, np.float32), "mel", 16, 25.0, SR)
    with pytest.raises(PipelineError, match=r"blip\.wav: audio is 30\.0 ms long, shorter than one video"):
        drive_features(path, stats, CFG)
    with pytest.raises(PipelineError, match="shorter than one video frame"):
        extract_audio_features(np.zeros(SPF - 1, np.float32), 1, CFG)


def test_file_without_audio_stream_is_an_error(tmp_path):
    path = tmp_path / "mute.mp4"
    subprocess.run([ffmpeg_binary(), "-v", "error", "-f", "lavfi", "-i", "color=c=black:s=32x32:d=0.2:r=25",
                    "-c:v", "mpeg4", str(path)], check=True)
    with pytest.raises(PipelineError, match=r"mute\.mp4: has no audio stream"):
        subject_features(path, 5, CFG)


def test_corrupt_or_missing_file_is_an_error(tmp_path):
    path = tmp_path / "broken.wav"
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    with pytest.raises(PipelineError, match=r"broken\.wav: not a readable media file"):
        subject_features(path, 5, CFG)
    with pytest.raises(PipelineError, match=r"nothing\.m4a: file not found"):
        subject_features(tmp_path / "nothing.m4a", 5, CFG)


def test_config_rejects_bad_settings():
    with pytest.raises(PipelineError, match="unknown audio extractor"):
        AudioFeatureConfig(extractor="deepspeech")
    with pytest.raises(PipelineError, match="even number"):
        AudioFeatureConfig(window=15)
    with pytest.raises(PipelineError, match="320-sample steps"):
        AudioFeatureConfig(extractor="hubert", sample_rate=32000)


# --- hubert / wav2vec2 ---------------------------------------------------------------------------------


def fake_encoder(samples: np.ndarray) -> np.ndarray:
    """Stand-in with wav2vec2's framing: state k = log energy of samples [320k, 320k + 400), 3 channels."""
    frames = librosa.util.frame(samples, frame_length=400, hop_length=320, axis=0)
    assert frames.shape[0] == (len(samples) - 400) // 320 + 1
    energy = np.log((frames**2 * np.hanning(400)).sum(axis=1) + 1e-8)
    return np.stack([energy, 2 * energy, -energy], axis=1)


@pytest.mark.parametrize("offset_ms", [1.0, 38.75])
def test_speech_extractor_framing_and_chunking_with_stand_in_encoder(offset_ms):
    # 50 s = 2514 steps: three 1000-step chunks, clicks next to the chunk seams (steps 1000, 2000)
    n = 1250
    clicks = [3, 499, 500, 501, 998, 1001, 1246]
    x = click_track(n, clicks, offset_ms / 1000)
    cfg = AudioFeatureConfig(extractor="hubert")
    encoder = SpeechEncoder(fake_encoder, channels=3, normalize_input=True)
    features, stats = extract_audio_features(x, n, cfg, encoder=encoder)
    assert features.shape == (n, 16, 3) and stats.channels == 3
    energy = features[:, 7:9, 0].mean(axis=1)
    assert np.sort(np.argsort(energy)[-len(clicks):]).tolist() == clicks
    np.testing.assert_array_equal(features[1:, :-2], features[:-1, 2:])  # seamless across chunks


def test_speech_extractor_needs_model_path():
    with pytest.raises(PipelineError, match="needs --model-path: put a Hugging Face hubert checkpoint"):
        audio.load_speech_encoder(AudioFeatureConfig(extractor="hubert"))


def test_speech_extractor_missing_directory_names_it(tmp_path):
    missing = tmp_path / "hubert-large"
    with pytest.raises(PipelineError, match=rf"{missing}: model directory not found .*config\.json"):
        audio.load_speech_encoder(AudioFeatureConfig(extractor="hubert", model_path=str(missing)))


def test_speech_extractor_incomplete_or_wrong_model(tmp_path):
    cfg = AudioFeatureConfig(extractor="wav2vec2", model_path=str(tmp_path))
    with pytest.raises(PipelineError, match=r"missing config\.json, model\.safetensors or pytorch_model"):
        audio.load_speech_encoder(cfg)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(PipelineError, match="model_type is 'hubert', extractor wav2vec2 needs 'wav2vec2'"):
        audio.load_speech_encoder(cfg)


def test_speech_extractor_without_transformers(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails even where it is installed
    with pytest.raises(PipelineError, match="needs the optional package transformers"):
        audio.load_speech_encoder(AudioFeatureConfig(extractor="hubert", model_path=str(tmp_path)))


# --- CLI -----------------------------------------------------------------------------------------------


def test_cli_subject_then_drive(tmp_path):
    subject_wav = tmp_path / "s" / "audio.wav"
    subject_wav.parent.mkdir()
    sf.write(subject_wav, click_track(50, [7, 30], 0.02), SR, subtype="PCM_16")
    (tmp_path / "s" / "video.json").write_text(json.dumps({"frame_count": 48}))
    out, stats = tmp_path / "s/audio_features/mel.npy", tmp_path / "s/audio_features/mel_stats.npz"
    assert audio.main(["--audio", str(subject_wav), "--video-json", str(tmp_path / "s" / "video.json"),
                       "--extractor", "mel", "--out", str(out), "--stats-out", str(stats)]) == 0
    assert np.load(out).shape == (48, 16, 80)
    with np.load(stats) as data:
        assert set(data.files) == {"mean", "std", "config"} and data["mean"].shape == (80,)

    drive_src = tmp_path / "drive.flac"
    sf.write(drive_src, click_track(13, [5], 0.02, sr=22050)[: int(0.5 * 22050)], 22050)  # 0.5 s
    drive_out, wav_out = tmp_path / "s/drives/d1/mel.npy", tmp_path / "s/drives/d1/audio.wav"
    assert audio.main(["--audio", str(drive_src), "--stats-in", str(stats), "--out", str(drive_out),
                       "--wav-out", str(wav_out)]) == 0
    assert np.load(drive_out).shape == (13, 16, 80)  # ceil(0.5 s * 25) = 13
    info = sf.info(wav_out)
    assert (info.samplerate, info.channels, info.frames) == (SR, 1, SR // 2)


def test_cli_errors_are_one_line(tmp_path, capsys):
    stats = tmp_path / "stats.npz"
    AudioStats(np.zeros(80, np.float32), np.ones(80, np.float32), "mel", 16, 25.0, SR).save(stats)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(SR, np.float32), SR)
    out = str(tmp_path / "f.npy")
    assert audio.main(["--audio", str(wav), "--stats-in", str(stats), "--out", out, "--window", "8"]) == 1
    assert f"{stats}: audio statistics do not match this extraction (window: 16 in stats, 8 requested)" in (
        capsys.readouterr().err)
    assert audio.main(["--audio", str(wav), "--stats-in", str(stats), "--out", out, "--frames", "5"]) == 1
    assert "drop --frames" in capsys.readouterr().err
    assert audio.main(["--audio", str(wav), "--stats-out", str(stats), "--out", out]) == 1
    assert "needs --frames N or --video-json PATH" in capsys.readouterr().err
    assert audio.main(["--audio", str(wav), "--stats-out", str(stats), "--out", out, "--frames", "25",
                       "--extractor", "hubert", "--model-path", str(tmp_path / "nope")]) == 1
    assert f"{tmp_path / 'nope'}: model directory not found" in capsys.readouterr().err
    assert not Path(out).exists()


def test_subject_statistics_come_from_training_frames_only():
    """Test-split audio never shapes the normalisation the model trains with (an honest split)."""
    from pipeline.split import train_test_split

    config = AudioFeatureConfig()
    n = 110
    rng = np.random.default_rng(0)
    samples = rng.normal(0, 0.1, n * config.samples_per_frame).astype(np.float32)
    _, stats = extract_audio_features(samples, n, config)
    first_test = train_test_split(n)[1][0]
    louder_test = samples.copy()
    louder_test[first_test * config.samples_per_frame:] *= 8
    _, same = extract_audio_features(louder_test, n, config)
    np.testing.assert_array_equal(same.mean, stats.mean)
    np.testing.assert_array_equal(same.std, stats.std)
    louder_train = samples.copy()
    louder_train[: first_test * config.samples_per_frame] *= 8
    _, changed = extract_audio_features(louder_train, n, config)
    assert not np.allclose(changed.mean, stats.mean)
