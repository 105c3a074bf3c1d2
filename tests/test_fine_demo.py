"""The fine stage's done-criteria on the trained demo subject (tests/conftest.py ``trained_demo``: the README's
main command, cpu preset). On the test split -- frames whose audio the model never saw -- the mouth aperture
measured by the face mesh on the renders follows the demo's ground-truth aperture, the same model fed the test
audio shuffled in time does not, and the chin follows the jaw."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import landmarks as lmk
from pipeline.audioplane import TalkingHead
from pipeline.dataset import Cameras, HeadViews
from pipeline.paths import SubjectPaths

pytestmark = pytest.mark.slow


def _renders(head: TalkingHead, views: HeadViews, features: torch.Tensor, frames: list[int], blink: np.ndarray):
    codes = head.audio_codes(features)
    images = []
    for frame in frames:
        rgb, alpha = head.render(codes[frame], views.viewmat(frame), views.K, views.width, views.height,
                                 float(blink[frame]), backend="torch")
        images.append(((rgb + views.background * (1 - alpha)).clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    return images


def _r(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    assert ok.mean() > 0.9, "the face mesh lost the face in renders"
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


@pytest.fixture(scope="module")
def measured(trained_demo):
    paths = SubjectPaths(trained_demo)
    head = TalkingHead.load(paths.fine_pt)
    cameras = Cameras.load(paths.cameras)
    views = HeadViews(paths.head, cameras, paths.background)  # rendered at the frame size, trained at 128²
    features = torch.from_numpy(np.load(paths.audio_features(head.extractor)))
    blink = np.load(paths.blink)
    test = cameras.test
    shuffled = features[torch.randperm(len(features), generator=torch.Generator().manual_seed(0))]
    true_lm = lmk.detect_sequence(_renders(head, views, features, test, blink))
    shuffled_lm = lmk.detect_sequence(_renders(head, views, shuffled, test, blink))
    real_lm = np.load(paths.landmarks)[test]
    truth = np.load(trained_demo.parents[1] / "resources" / "demo" / "ground_truth.npz")["aperture"][test]
    return {"true": true_lm, "shuffled": shuffled_lm, "real": real_lm, "aperture": truth}


def test_rendered_mouth_follows_the_true_aperture_on_unseen_audio(measured):
    assert _r(lmk.mouth_aperture(measured["true"]), measured["aperture"]) >= 0.95


def test_shuffled_audio_does_not_drive_the_mouth(measured):
    assert _r(lmk.mouth_aperture(measured["shuffled"]), measured["aperture"]) <= 0.3


def test_chin_follows_the_jaw(measured):
    assert _r(lmk.chin_drop(measured["true"]), lmk.chin_drop(measured["real"])) >= 0.8
