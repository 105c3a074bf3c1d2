"""dilate_mouth_masks: exact disk dilation, containment, radius relative to the face, CLI."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import morphology

from pipeline import masks
from pipeline.io import load_image, save_image
from pipeline.masks import MouthMaskConfig, dilate, mouth_mask, mouth_radius, mouth_region
from pipeline.parsing import face_width, parse_frame
from tests.face_synthetic import synthetic_face


def test_dilate_equals_full_disk_dilation_including_image_borders():
    rng = np.random.default_rng(1)
    for radius in (1, 4, 9, 17):
        mask = rng.random((70, 90)) > 0.995
        mask[0, 3] = mask[69, 88] = True  # pixels on the border: the disk is clipped, not shifted
        ref = morphology.dilation(mask, morphology.disk(radius))
        assert np.array_equal(dilate(mask, radius), ref), radius


def test_dilate_contains_input_and_keeps_empty_masks_empty():
    mask = np.zeros((40, 40), bool)
    assert not dilate(mask, 5).any()
    mask[10:14, 20:30] = True
    grown = dilate(mask, 3)
    assert grown[mask].all() and grown.sum() > mask.sum()
    assert np.array_equal(dilate(mask, 0), mask)


def test_mouth_mask_contains_lips_and_inner_mouth():
    lm = synthetic_face(mouth_open=6.0)
    labels = parse_frame(lm, np.ones((256, 256), bool))
    region = mouth_region(labels)
    assert region.sum() == np.isin(labels, (5, 6)).sum() > 0
    mask = mouth_mask(labels, float(face_width(lm)))
    assert mask[region].all()
    assert mask.sum() > 2 * region.sum()


def _extent_below_lips(scale: float) -> tuple[int, int]:
    size = int(256 * scale)
    lm = synthetic_face(scale=scale, centre=(128.0 * scale, 110.0 * scale))
    labels = parse_frame(lm, np.ones((size, size), bool))
    width = float(face_width(lm))
    mask = mouth_mask(labels, width, MouthMaskConfig(dilation=0.1))
    column = int(128 * scale)
    lips_bottom = np.flatnonzero(mouth_region(labels)[:, column]).max()
    mask_bottom = np.flatnonzero(mask[:, column]).max()
    return int(mask_bottom - lips_bottom), mouth_radius(width, 0.1)


def test_dilation_radius_scales_with_face_size():
    extent1, radius1 = _extent_below_lips(1.0)
    extent2, radius2 = _extent_below_lips(2.0)
    assert radius1 == 10 and radius2 == 20  # 0.1 x ear-to-ear width (98.5 px at scale 1)
    assert extent1 == radius1 and extent2 == radius2


def test_mouth_radius_and_config():
    assert mouth_radius(250.0, 0.08) == 20
    assert mouth_radius(250.0, 0.0) == 0
    with pytest.raises(ValueError):
        MouthMaskConfig(dilation=-0.1)


def test_cli_writes_binary_masks_per_label_map(tmp_path):
    parsing_dir = tmp_path / "parsing"
    lms = []
    for i, opening in enumerate((1.0, 6.0, 10.0)):
        lm = synthetic_face(mouth_open=opening)
        lms.append(lm)
        save_image(parsing_dir / f"{i:06d}.png", parse_frame(lm, np.ones((256, 256), bool)))
    np.save(tmp_path / "landmarks.npy", np.stack(lms))
    out = tmp_path / "mouth_masks"
    assert masks.main(["--parsing", str(parsing_dir), "--landmarks", str(tmp_path / "landmarks.npy"),
                       "--out", str(out), "--dilation", "0.05", "--threads", "2"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["000000.png", "000001.png", "000002.png"]
    for i in range(3):
        mask = load_image(out / f"{i:06d}.png")
        labels = load_image(parsing_dir / f"{i:06d}.png")
        assert mask.dtype == np.uint8 and mask.shape == (256, 256)
        assert set(np.unique(mask)) == {0, 255}
        assert np.array_equal(mask > 0, mouth_mask(labels, float(face_width(lms[i])), MouthMaskConfig(0.05)))


def test_cli_rejects_landmark_count_mismatch(tmp_path, capsys):
    save_image(tmp_path / "parsing" / "000000.png", np.zeros((8, 8), np.uint8))
    np.save(tmp_path / "landmarks.npy", np.zeros((2, 478, 3), np.float32))
    assert masks.main(["--parsing", str(tmp_path / "parsing"), "--landmarks", str(tmp_path / "landmarks.npy"),
                       "--out", str(tmp_path / "out")]) == 1
    assert "landmarks.npy: 2 landmark frames but 1 video frames" in capsys.readouterr().err
