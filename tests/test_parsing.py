"""parse_faces: polygon rasterisation, label geometry on synthetic landmarks, input errors."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import draw

from pipeline import parsing
from pipeline.parsing import (
    BACKGROUND,
    FACE,
    HAIR,
    INNER_MOUTH,
    LIPS,
    NECK,
    TORSO,
    FaceFrame,
    ParsingConfig,
    fill_polygon,
    neck_polygon,
    parse_frame,
    person_mask,
    polygon_mask,
)
from tests.face_synthetic import ellipse_mask, synthetic_face


def test_polygon_fill_matches_skimage_on_random_polygons():
    rng = np.random.default_rng(0)
    for k in range(150):
        n = int(rng.integers(3, 25))
        if k % 3 == 0:  # self-intersecting, reaching outside the image
            pts = rng.uniform(-15, 110, (n, 2))
        else:  # star-shaped, partly outside for some centres
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            rad = rng.uniform(3, 50, n)
            c = rng.uniform(-10, 100, 2)
            pts = np.stack([c[0] + rad * np.cos(ang), c[1] + rad * np.sin(ang)], 1)
        ours = polygon_mask(pts + 0.5, (90, 80))  # landmark convention: pixel (0, 0) centred at (0.5, 0.5)
        ref = np.zeros((90, 80), bool)
        rr, cc = draw.polygon(pts[:, 1], pts[:, 0], (90, 80))
        ref[rr, cc] = True
        assert np.array_equal(ours, ref), f"polygon {k}"


def test_fill_polygon_writes_value_only_inside():
    target = np.full((20, 20), 7, np.uint8)
    fill_polygon(target, np.array([[5.0, 5.0], [15.0, 5.0], [15.0, 15.0], [5.0, 15.0]]), 2)
    assert (target[5:15, 5:15] == 2).all()
    assert (target == 2).sum() == 100


def test_synthetic_open_mouth_labels():
    lm = synthetic_face(mouth_open=6.0)  # oval centre (128, 110), 50 x 65; lips centre (128, 145)
    labels = parse_frame(lm, np.ones((320, 256), bool))
    assert labels.dtype == np.uint8 and labels.shape == (320, 256)

    def at(x: float, y: float) -> int:
        return int(labels[int(y), int(x)])

    assert at(128, 145) == INNER_MOUTH  # inside the inner lip polygon
    assert at(140, 145) == INNER_MOUTH
    assert at(128, 155) == LIPS  # lower lip: between inner (6) and outer (14) semi-axes
    assert at(128, 134) == LIPS  # upper lip
    assert at(128, 80) == FACE
    assert at(128, 30) == HAIR  # above the forehead
    assert at(198, 100) == HAIR  # beside the face, within the head box
    assert at(128, 195) == NECK  # under the chin (175)
    assert at(128, 300) == TORSO  # below the neck band (chin + 0.6 face heights = 253)
    assert at(10, 260) == TORSO
    # every inner-mouth pixel lies inside the inner lip ellipse, every lip pixel inside the outer one
    inner = ellipse_mask(labels.shape, 128, 145, 15.5, 6.5)
    outer = ellipse_mask(labels.shape, 128, 145, 22.5, 14.5)
    assert inner[labels == INNER_MOUTH].all()
    assert outer[labels == LIPS].all()
    assert (labels == INNER_MOUTH).sum() > 0.8 * np.pi * 15 * 6


def test_closed_mouth_has_almost_no_inner_mouth():
    open_ = parse_frame(synthetic_face(mouth_open=6.0), np.ones((256, 256), bool))
    closed = parse_frame(synthetic_face(mouth_open=0.2), np.ones((256, 256), bool))
    assert (closed == INNER_MOUTH).sum() < 0.1 * (open_ == INNER_MOUTH).sum()
    assert (closed == LIPS).sum() > 0


def test_person_mask_gates_everything_but_the_face_mesh():
    lm = synthetic_face()
    person = ellipse_mask((256, 256), 128, 110, 70, 90)
    labels = parse_frame(lm, person)
    oval = ellipse_mask((256, 256), 128, 110, 49, 64)
    assert (labels[~person & ~oval] == BACKGROUND).all()
    assert (labels[oval] != BACKGROUND).all()  # face polygons do not depend on the segmentation
    assert (labels[person & ~oval] != BACKGROUND).all()
    assert set(np.unique(labels)) <= set(range(7))


def test_labels_follow_head_roll():
    lm = synthetic_face()
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([128.0, 110.0])
    lm[:, :2] = (lm[:, :2] - centre) @ rot.T + centre
    labels = parse_frame(lm, np.ones((256, 256), bool))
    frame = FaceFrame.of(lm)
    down = np.array([-np.sin(angle), np.cos(angle)])  # the face's "down" after rotating by +30 degrees
    assert np.allclose(frame.ey, down, atol=1e-6)
    ys, xs = np.nonzero(labels == NECK)
    offsets = np.stack([xs + 0.5, ys + 0.5], 1) - lm[152, :2]
    assert (offsets @ down).mean() > 10  # the neck hangs below the chin along the rotated face axis
    assert abs((offsets @ frame.ex).mean()) < 10


def test_neck_band_lies_below_the_jaw_line():
    lm = synthetic_face()
    frame = FaceFrame.of(lm)
    neck = frame.to_face(neck_polygon(lm))
    jaw_v = frame.to_face(lm[list(parsing.JAW_LINE), :2])[:, 1]
    assert neck[:, 1].min() >= jaw_v.min() - 1e-6
    assert neck[:, 1].max() > frame.to_face(lm[152, :2])[1] + 0.5 * frame.height


def test_nothing_below_the_jaw_angles_outside_the_face_is_head():
    """Beside the jaw lie neck, collar and jacket: with a person everywhere, every pixel outside the face oval
    below the line through the jaw angles is neck or torso, and above it (in the head box) hair/head."""
    lm = synthetic_face()
    labels = parse_frame(lm, np.ones((320, 256), bool))
    frame = FaceFrame.of(lm)
    yy, xx = np.mgrid[0:320, 0:256]
    uv = frame.to_face(np.stack([xx + 0.5, yy + 0.5], -1))
    angles = frame.to_face(lm[[parsing.JAW_LINE[0], parsing.JAW_LINE[-1]], :2])
    assert abs(angles[0, 1] - angles[1, 1]) < 1e-3  # symmetric synthetic face: one angle height
    oval = polygon_mask(lm[list(parsing.FACE_OVAL), :2], labels.shape)
    below = (uv[..., 1] > angles[0, 1] + 1) & ~oval
    above = (uv[..., 1] < angles[0, 1] - 1) & ~oval & (np.abs(uv[..., 0]) < 2 * frame.half_width)
    assert below.sum() > 10000 and np.isin(labels[below], (NECK, TORSO)).all()
    assert (labels[above] == HAIR).all()


def test_person_mask_upsamples_and_thresholds():
    prob = np.zeros((4, 4), np.float32)
    prob[:, 2:] = 1.0
    mask = person_mask(prob, (8, 8), 0.5)
    assert mask.shape == (8, 8)
    assert mask[:, 5:].all() and not mask[:, :3].any()


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        ParsingConfig(selfie_model=2)
    with pytest.raises(ValueError):
        ParsingConfig(person_threshold=1.5)
    with pytest.raises(ValueError):
        ParsingConfig(neck_height=-1)


def test_cli_reports_missing_frames_directory(tmp_path, capsys):
    np.save(tmp_path / "lm.npy", np.zeros((1, 478, 3), np.float32))
    status = parsing.main(["--frames", str(tmp_path / "nope"), "--landmarks", str(tmp_path / "lm.npy"),
                           "--out", str(tmp_path / "parsing")])
    assert status == 1
    assert "nope: frame directory not found" in capsys.readouterr().err
    assert not (tmp_path / "parsing").exists()
