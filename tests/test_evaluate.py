"""Evaluation metrics agree with independent computations: identical videos, a time-shifted one, lip-sync lags."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from pipeline import evaluate
from pipeline.io import save_image, save_json, save_npy
from pipeline.landmarks import LIPS_INNER, LIPS_OUTER, LandmarkConfig, MediaPipeDetector
from pipeline.media import encode_video, iter_frames, write_wav
from pipeline.paths import frame_name

SIZE = 256


@pytest.fixture(scope="module")
def real(demo_short):
    """40 demo frames at 256² and their face-mesh landmarks (a real face that talks)."""
    frames = [f.copy() for _, f in zip(range(40), iter_frames(demo_short / "video.mp4", size=(SIZE, SIZE)))]
    return frames, mesh(frames)


def mesh(frames):
    detector = MediaPipeDetector(LandmarkConfig(max_faces=1))
    try:
        return np.stack([detector.detect(f)[0] for f in frames])
    finally:
        detector.close()


def ssim_reference(a, b):
    """SSIM as Wang et al. with a 7x7 uniform window and sample covariance, mean over the valid interior."""
    values = []
    for c in range(3):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        mean = lambda v: ndimage.uniform_filter(v, 7)  # noqa: E731
        mx, my = mean(x), mean(y)
        n = 49 / 48
        vx, vy, cxy = n * (mean(x * x) - mx * mx), n * (mean(y * y) - my * my), n * (mean(x * y) - mx * my)
        c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
        values.append(s[3:-3, 3:-3].mean())
    return float(np.mean(values))


def psnr_reference(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 100.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def mouth_mask(lm):
    """bool [SIZE, SIZE]: the lips' bounding box of one frame's landmarks, grown by 6 px (a dilated mouth mask)."""
    lips = lm[sorted(set(LIPS_OUTER)), :2]
    (x0, y0), (x1, y1) = np.floor(lips.min(0)).astype(int) - 6, np.ceil(lips.max(0)).astype(int) + 6
    mask = np.zeros((SIZE, SIZE), bool)
    mask[max(y0, 0):y1, max(x0, 0):x1] = True
    return mask


def reference_metrics(real_frames, render_frames, real_lm):
    """real_lm (the subject's landmarks.npy) places the head boxes and the mouth masks; LMD and aperture use
    fresh face meshes."""
    render_lm, real_mesh = mesh(render_frames), mesh(real_frames)
    psnrs, ssims, psnr_head, ssim_head, psnr_mouth = [], [], [], [], []
    for gt, out, lm in zip(real_frames, render_frames, real_lm):
        m = mouth_mask(lm)
        psnr_mouth.append(psnr_reference(gt[m], out[m]))
        lo, hi = lm[:, :2].min(0), lm[:, :2].max(0)
        x0, y0 = np.maximum(np.floor(lo - 0.1 * (hi - lo)).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(hi + 0.1 * (hi - lo)).astype(int), SIZE)
        psnrs.append(psnr_reference(gt, out))
        ssims.append(ssim_reference(gt, out))
        psnr_head.append(psnr_reference(gt[y0:y1, x0:x1], out[y0:y1, x0:x1]))
        ssim_head.append(ssim_reference(gt[y0:y1, x0:x1], out[y0:y1, x0:x1]))
    mouth = sorted(set(LIPS_OUTER) | set(LIPS_INNER))
    a, b = real_mesh[:, mouth, :2], render_lm[:, mouth, :2]
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    def gap(lm):
        return np.mean([np.linalg.norm(lm[:, LIPS_INNER[i], :2] - lm[:, LIPS_INNER[20 - i], :2], axis=1)
                        for i in (4, 5, 6)], axis=0)

    return {"psnr": np.mean(psnrs), "ssim": np.mean(ssims), "psnr_head": np.mean(psnr_head),
            "ssim_head": np.mean(ssim_head), "psnr_mouth": np.mean(psnr_mouth),
            "lmd": np.linalg.norm(a - b, axis=-1).mean(),
            "aperture_correlation": np.corrcoef(gap(real_mesh), gap(render_lm))[0, 1]}


def test_identical_videos_score_perfectly(real):
    frames, lm = real
    m = evaluate.evaluate_test_split(iter(frames), iter([f.copy() for f in frames]), lm, total=len(frames),
                                     mouth_masks=(mouth_mask(x) for x in lm))
    assert m["frames"] == m["frames_with_face"] == len(frames)
    assert m["psnr"] == m["psnr_head"] == m["psnr_mouth"] == 100.0 and m["ssim"] == m["ssim_head"] == 1.0
    assert m["lmd"] == 0.0 and m["aperture_correlation"] == pytest.approx(1.0)
    assert m["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert m["identity_distance"] == pytest.approx(0.0, abs=1e-6) and m["identity_pairs"] == min(len(frames), 32)


def test_shifted_video_matches_an_independent_computation(real):
    frames, lm = real
    shifted = frames[3:] + frames[-3:]  # render lags... and ends frozen
    m = evaluate.evaluate_test_split(iter(frames), iter(shifted), lm, total=len(frames),
                                     mouth_masks=(mouth_mask(x) for x in lm))
    ref = reference_metrics(frames, shifted, lm)
    for key, value in ref.items():
        assert m[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    assert m["psnr"] < 60 and m["lmd"] > 0.3  # the demo's mouth moves: a shift is noticed
    assert m["lpips"] > 0.001 and 0 < m["identity_distance"] < m["identity_threshold"]  # same person, moved


def test_lipsync_finds_the_lag_of_a_delayed_mouth():
    rng = np.random.default_rng(0)
    envelope = ndimage.gaussian_filter1d(rng.random(200), 2)
    mouth = np.roll(envelope, 3)  # the mouth follows the sound 3 frames later
    mouth[:3] = envelope[0]
    mouth[50] = np.nan  # a frame without a face is bridged
    out = evaluate.lipsync(mouth, envelope)
    assert out["best_lag"] == 3 and out["r_best"] > 0.99 and out["frames_with_face"] == 199
    filled = mouth.copy()
    filled[50] = (mouth[49] + mouth[51]) / 2
    assert out["r_lag0"] == pytest.approx(np.corrcoef(filled, envelope)[0, 1])


def test_cli_writes_metrics_matching_an_independent_computation(demo_short, real, tmp_path):
    frames, lm = real
    n, test = len(frames), list(range(28, 40))
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, f in enumerate(frames):
        save_image(frames_dir / frame_name(i, "jpg"), f, quality=98)
    save_json(tmp_path / "cameras.json", {"split": {"train": list(range(28)), "test": test}, "width": SIZE,
                                          "height": SIZE, "K": np.eye(3).tolist(),
                                          "world_to_camera": np.tile(np.eye(4), (n, 1, 1)).tolist(),
                                          "canonical_landmarks": np.zeros((478, 3)).tolist()})
    save_npy(tmp_path / "landmarks.npy", lm)
    (tmp_path / "mouth_masks").mkdir()
    for i, x in enumerate(lm):
        save_image(tmp_path / "mouth_masks" / frame_name(i, "png"), mouth_mask(x).astype(np.uint8) * 255)
    audio = tmp_path / "test.wav"
    write_wav(audio, np.sin(np.arange(16000 * len(test) // 25) * 0.1) * 0.3, 16000)
    render = tmp_path / "test.mp4"
    encode_video((frames[i - 1] for i in test), render, fps=25, audio=audio)  # one frame late
    # a driven render: the demo itself with its audio starting 2 frames (80 ms) into the speech
    drive_wav = tmp_path / "drive.wav"
    from pipeline.media import decode_audio
    write_wav(drive_wav, decode_audio(demo_short / "audio.wav")[1280:], 16000)
    out = tmp_path / "metrics.json"
    sbs = tmp_path / "side_by_side.mp4"
    assert evaluate.main(["--test-video", str(render), "--frames", str(frames_dir), "--cameras",
                          str(tmp_path / "cameras.json"), "--landmarks", str(tmp_path / "landmarks.npy"),
                          "--mouth-masks", str(tmp_path / "mouth_masks"),
                          "--drive", "demo", str(demo_short / "video.mp4"), str(drive_wav),
                          "--out", str(out), "--side-by-side", str(sbs)]) == 0
    metrics = json.loads(out.read_text())
    from pipeline.io import load_rgb
    real_test = [load_rgb(frames_dir / frame_name(i, "jpg")) for i in test]
    decoded = [f.copy() for f in iter_frames(render)]
    ref = reference_metrics(real_test, decoded, lm[test])
    for key, value in ref.items():
        assert metrics["test"][key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
    drive = metrics["drives"]["demo"]
    assert drive["r_best"] > 0.7 and drive["best_lag"] == 2  # the mouth moves 2 frames after this audio
    assert drive["r_best"] > drive["r_lag0"] + 0.3
    assert drive["identity_distance"] < 0.6  # the demo's own face, against its training frames
    sbs_frames = list(iter_frames(sbs))
    assert len(sbs_frames) == len(test) and sbs_frames[0].shape == (SIZE, 3 * SIZE, 3)
