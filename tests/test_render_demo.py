"""Done-criteria of rendering on the trained demo subject (tests/conftest.py ``trained_demo``: the README's main
command, cpu preset).

* a driven render of resources/demo/drive.wav lasts as long as the audio ± 40 ms, has an audio stream, and its
  mouth aperture (face mesh on the video) follows the aperture the demo generator derives from that audio;
* no background between head and torso: on the test split, person pixels of the real frame that the
  composite fills with the plate are < 0.5%.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline.composite import composite
from pipeline.demo import DemoConfig, frame_openness, syllable_envelope
from pipeline.evaluate import video_aperture
from pipeline.io import list_frames
from pipeline.media import decode_audio, probe
from pipeline.parsing import BACKGROUND, load_labels
from pipeline.paths import SubjectPaths
from pipeline.render import RenderConfig, Scene, load_model

pytestmark = pytest.mark.slow


def drive_openness(cfg: DemoConfig) -> np.ndarray:
    """The aperture signal the demo generator derives from drive.wav (see pipeline.demo.generate)."""
    drive_cfg = replace(cfg, duration=cfg.drive_duration, seed=cfg.seed + 1)
    env, _ = syllable_envelope(drive_cfg, np.random.default_rng(drive_cfg.seed))
    return frame_openness(env, drive_cfg)


def test_driven_demo_render_lip_syncs_with_the_generator_aperture(trained_demo, tmp_path):
    from pipeline import render

    demo = SubjectPaths(trained_demo)
    drive = trained_demo.parents[1] / "resources" / "demo" / "drive.wav"
    out = tmp_path / "drive.mp4"
    assert render.main(["--subject-dir", str(demo.root), "--audio", str(drive), "--out", str(out)]) == 0
    info = probe(out)
    duration = len(decode_audio(drive)) / 16000
    assert info.has_audio and abs(info.duration - duration) <= 0.04
    mouth, _ = video_aperture(out)
    truth = drive_openness(DemoConfig())  # the shipped config's demo settings
    n = min(len(mouth), len(truth))
    found = np.isfinite(mouth[:n])
    assert found.mean() > 0.95
    assert np.corrcoef(mouth[:n][found], truth[:n][found])[0, 1] >= 0.85


def test_no_plate_between_head_and_torso_on_the_test_split(trained_demo):
    demo = SubjectPaths(trained_demo)
    device = torch.device("cpu")
    model = load_model(demo.fine_pt, device)
    scene = Scene(demo, None, device)
    features = torch.from_numpy(np.load(demo.audio_features(model.extractor)))
    codes = model.audio_codes(features)
    maps = list_frames(demo.parsing, ext="png")
    seam = RenderConfig().seam
    leaked = person = 0
    with torch.inference_mode():
        for i in scene.cameras.test:
            rgb, alpha = model.render(codes[i], scene.viewmats[i], scene.K, scene.width, scene.height,
                                      blink=float(scene.blink[i]))
            result = composite(rgb, alpha, torch.from_numpy(scene.torso(i)), scene.plate, seam)
            labels = load_labels(maps[i], (scene.height, scene.width))
            inside = torch.from_numpy(labels != BACKGROUND)
            leaked += int((result.plate_weight[inside] > 0.5).sum())
            person += int(inside.sum())
    assert leaked / person < 0.005
