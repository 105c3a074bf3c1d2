"""extract_background and split_head_torso: plate recovery on synthetic sequences, head/torso compositing."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from pipeline import background
from pipeline.background import (
    PlateAccumulator,
    PlateConfig,
    far_from_person,
    sample_indices,
    split_frame,
    torso_alpha,
)
from pipeline.io import PipelineError, load_image, save_image
from pipeline.parsing import BACKGROUND, BODY_LABELS, FACE, HAIR, HEAD_LABELS, INNER_MOUTH, LIPS, NECK, TORSO
from tests.face_synthetic import ellipse_mask, synthetic_face

H = W = 96


def _backdrop() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    r = 120 + 60 * np.sin(xx / 9.0)
    g = 60 + 1.5 * yy
    b = 100 + 50 * np.cos((xx + yy) / 13.0)
    return np.clip(np.stack([r, g, b], -1), 0, 255).astype(np.uint8)


def _sequence(n: int = 24):
    """A blob sliding left to right over a static backdrop, and a static block always covering the bottom
    corner. Yields (frame, labels) with the blob labelled torso; pixels within 2 px of the blob get a false
    colour but background labels (a segmentation halo)."""
    bg = _backdrop()
    for t in range(n):
        cx = 15 + 66 * t / (n - 1)
        blob = ellipse_mask((H, W), cx, 45, 14, 20)
        halo = ndimage.binary_dilation(blob, iterations=2) & ~blob
        labels = np.zeros((H, W), np.uint8)
        labels[blob] = TORSO
        labels[80:, 80:] = NECK
        frame = bg.copy()
        frame[blob] = (250, 20, 250)
        frame[halo] = (0, 255, 0)
        frame[80:, 80:] = (10, 10, 10)
        yield frame, labels


def test_plate_recovers_background_uncovered_in_some_frames_and_fills_holes():
    bg = _backdrop()
    acc = PlateAccumulator((H, W), margin_px=4.0, min_seen=0.2)
    covered = np.zeros((H, W), int)
    for frame, labels in _sequence():
        acc.add(frame, labels)
        covered += labels != BACKGROUND
    plate = acc.plate()
    assert plate.shape == (H, W, 3) and plate.dtype == np.uint8
    known = acc.known()
    sometimes = (covered > 0) & (covered < 12) & (np.arange(W)[None, :] < 78)
    assert sometimes.sum() > 500  # the blob's path: background there in at least half of the frames
    assert known[sometimes].all()
    err = np.abs(plate.astype(int) - bg.astype(int)).max(axis=-1)
    assert err[known].max() <= 1  # the halo's false colour never enters the plate
    # the always-covered corner is inpainted from the surrounding background: no dark block remains
    hole = np.zeros((H, W), bool)
    hole[82:, 82:] = True
    assert not known[hole].any()
    assert plate[hole].min() > 40
    # the backdrop's 57-px-period stripes cannot be predicted inside the hole; its colours can
    assert np.abs(plate[hole].astype(int) - bg[hole].astype(int)).mean() < 35


def test_halo_within_the_margin_of_a_static_person_is_inpainted_not_averaged():
    # the segmentation halo (2 px of person colour labelled background) lies within the 6 px margin in every
    # frame: it is never trusted, and the ring is filled from the backdrop beyond it
    bg = np.full((H, W, 3), (90, 140, 200), np.uint8)
    labels = np.zeros((H, W), np.uint8)
    labels[ellipse_mask((H, W), 48, 48, 20, 20)] = FACE
    frame = bg.copy()
    frame[ndimage.binary_dilation(labels != BACKGROUND, iterations=2)] = (250, 20, 250)
    acc = PlateAccumulator((H, W), margin_px=6.0)
    for _ in range(5):
        acc.add(frame, labels)
    plate = acc.plate()
    assert not acc.known()[ndimage.binary_dilation(labels != BACKGROUND, iterations=6)].any()
    assert np.abs(plate.astype(int) - bg.astype(int)).max() <= 1


def _person_sequence(n: int, sway: float, miss_every: int = 20):
    """A person (skin-coloured head, dark jacket) swaying ``sway`` px sideways over the backdrop; its mask
    misses it entirely in one frame out of ``miss_every`` (5%): those frames label the person background."""
    bg = _backdrop()
    yy, xx = np.mgrid[0:H, 0:W]
    for t in range(n):
        cx = 48 + sway * np.sin(2 * np.pi * t / 17)
        head = ellipse_mask((H, W), cx, 38, 14, 18)
        jacket = (yy > 60) & (np.abs(xx + 0.5 - cx) < 14 + 0.9 * (yy - 60))
        frame = bg.copy()
        frame[head] = SKIN
        frame[jacket] = JACKET
        labels = np.zeros((H, W), np.uint8)
        if t % miss_every:
            labels[head] = FACE
            labels[jacket] = TORSO
        yield frame, labels


SKIN, JACKET = (250, 110, 250), (0, 255, 0)  # outside the backdrop's colours (>= 50 from every one)


def _distance_to(plate: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    return np.abs(plate.astype(int) - np.array(colour)).max(axis=-1)


@pytest.mark.parametrize("sway", [0.0, 10.0])
def test_plate_holds_no_person_colour_when_the_mask_misses_the_person_in_5_percent_of_frames(sway):
    bg = _backdrop()
    acc = PlateAccumulator((H, W), margin_px=3.0)
    sequence = list(_person_sequence(100, sway))
    for frame, labels in sequence:
        acc.add(frame, labels)
    plate = acc.plate()
    # every pixel the person ever covers got its colour in the 5 missed frames, labelled background
    seen_person = np.zeros((H, W), bool)
    for frame, _ in sequence:
        seen_person |= np.any(frame != bg, axis=-1)
    assert seen_person.sum() > 0.2 * H * W
    for colour in (SKIN, JACKET):
        assert _distance_to(bg, colour).min() >= 50
        assert _distance_to(plate, colour).min() > 40, colour
    known = acc.known()
    err = np.abs(plate.astype(int) - bg.astype(int)).max(axis=-1)
    assert err[known].max() <= 1
    if sway:  # pixels the swaying person uncovers in some frames: true background outvotes the misses
        assert (known & seen_person).sum() > 300
    # where the person always stands, its only "background" samples are the misses: inpainted, not averaged
    always = np.logical_and.reduce([np.any(f != bg, axis=-1) for f, _ in sequence])
    assert always.sum() > 300 and not known[always].any()


def test_plate_stage_on_a_clip_whose_mask_misses_the_person(tmp_path):
    """extract_plate end to end (JPEG frames, PNG label maps, sampling) on the 5%-miss clip."""
    for i, (frame, labels) in enumerate(_person_sequence(160, 8.0)):
        save_image(tmp_path / "frames" / f"{i:06d}.jpg", frame, quality=95)
        save_image(tmp_path / "parsing" / f"{i:06d}.png", labels)
    known = background.extract_plate(tmp_path / "frames", tmp_path / "parsing", tmp_path / "background.png",
                                      PlateConfig(max_samples=80, min_stride=2))
    plate = load_image(tmp_path / "background.png")
    assert 0.3 < known < 0.9
    for colour in (SKIN, JACKET):
        assert _distance_to(plate, colour).min() > 40, colour


def test_masked_median_and_robust_mean_ignore_invalid_samples_and_a_minority_of_outliers():
    rng = np.random.default_rng(1)
    values = rng.integers(0, 256, (9, 500), dtype=np.uint8)
    valid = rng.random((9, 500)) > 0.4
    median = background.masked_median(values, valid)
    for j in range(500):
        v = np.sort(values[valid[:, j], j])
        assert median[j] == (v[(len(v) - 1) // 2] if len(v) else 0)
    samples = np.full((10, 1, 3), 100, np.uint8)
    samples[:, 0, 0] += np.arange(10, dtype=np.uint8)  # noise within the tolerance
    samples[:4] = (250, 20, 250)  # 4 outliers among 10 samples
    assert np.allclose(background.robust_mean(samples, np.ones((10, 1), bool), 24), [[106.5, 100, 100]])


def test_inpaint_keeps_known_pixels_and_fills_smoothly():
    yy, xx = np.mgrid[0:64, 0:80].astype(np.float32)
    image = np.stack([2 * xx, yy + 50, np.full_like(xx, 30)], -1)
    known = ~ellipse_mask((64, 80), 40, 32, 15, 12)
    filled = background.inpaint(np.where(known[..., None], image, 999), known)
    assert np.array_equal(filled[known], image[known])
    assert np.abs(filled - image)[~known].max() < 20  # a smooth ramp is continued, roughly
    assert np.abs(np.diff(filled, axis=1)).max() < 8  # no seams or streaks


def test_far_from_person_never_underestimates_the_margin():
    rng = np.random.default_rng(3)
    labels = np.zeros((200, 260), np.uint8)
    labels[rng.random((200, 260)) > 0.9995] = HAIR
    labels[150:, 100:180] = TORSO
    far = far_from_person(labels, 12.0)
    exact = ndimage.distance_transform_edt(labels == BACKGROUND)
    assert (exact[far] > 12.0).all()
    assert far.sum() > 0.5 * (exact > 24.0).sum()  # conservative by about a grid cell, not more


def test_sample_indices_are_even_bounded_and_cover_both_ends():
    idx = sample_indices(1000, PlateConfig(max_samples=100, min_stride=4))
    assert len(idx) == 100 and idx[0] == 0 and idx[-1] == 999
    idx = sample_indices(200, PlateConfig(max_samples=100, min_stride=4))
    assert len(idx) == 50 and np.diff(idx).min() >= 4
    assert sample_indices(1, PlateConfig()).tolist() == [0]
    with pytest.raises(ValueError):
        PlateConfig(max_samples=1000)


def _frame_labels_plate():
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    plate = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    labels = np.zeros((H, W), np.uint8)
    labels[ellipse_mask((H, W), 48, 35, 22, 28)] = HAIR
    labels[ellipse_mask((H, W), 48, 40, 16, 20)] = FACE
    labels[ellipse_mask((H, W), 48, 50, 6, 3)] = LIPS
    labels[ellipse_mask((H, W), 48, 50, 3, 1.5)] = INNER_MOUTH
    labels[62:75, 38:58] = NECK
    labels[75:, 10:86] = TORSO
    return frame, labels, plate


def test_head_and_body_masks_follow_the_label_sets():
    labels = np.arange(7, dtype=np.uint8).repeat(3).reshape(7, 3)
    assert np.array_equal(background.head_mask(labels), np.isin(labels, HEAD_LABELS))
    assert np.array_equal(background.body_mask(labels), np.isin(labels, BODY_LABELS))


def test_head_is_frame_on_head_pixels_and_plate_elsewhere():
    frame, labels, plate = _frame_labels_plate()
    head, _ = split_frame(frame, labels, plate, feather_px=3)
    on_head = np.isin(labels, (FACE, HAIR, LIPS, INNER_MOUTH))
    assert head.shape == (H, W, 3) and head.dtype == np.uint8
    assert np.array_equal(head[on_head], frame[on_head])
    assert np.array_equal(head[~on_head], plate[~on_head])


def test_torso_alpha_is_zero_off_body_and_feathered_only_against_background():
    frame, labels, plate = _frame_labels_plate()
    _, torso = split_frame(frame, labels, plate, feather_px=3)
    alpha = torso[..., 3]
    body = np.isin(labels, (NECK, TORSO))
    assert torso.shape == (H, W, 4)
    assert (alpha[~body] == 0).all() and (torso[..., :3][~body] == 0).all()
    assert (alpha[body] > 0).all()
    assert np.array_equal(torso[..., :3][body], frame[body])
    deep = ndimage.binary_erosion(body, np.ones((3, 3)), iterations=3, border_value=1)
    assert (alpha[deep] == 255).all()
    edge = body & ndimage.binary_dilation(labels == BACKGROUND)
    assert (alpha[edge] < 255).all()  # feathered towards the background
    seam = body & ndimage.binary_dilation(np.isin(labels, (FACE, HAIR)), iterations=1)
    seam &= ~ndimage.binary_dilation(labels == BACKGROUND, iterations=4)
    assert seam.any() and (alpha[seam] == 255).all()  # no ramp at the neck/head seam
    assert np.array_equal(torso_alpha(labels, 0) > 0, body)


# ---------------------------------------------------------------------------------------------------------
# CLIs on a small synthetic subject
# ---------------------------------------------------------------------------------------------------------

@pytest.fixture()
def subject(tmp_path):
    frames, parsing, masks = tmp_path / "frames", tmp_path / "parsing", tmp_path / "mouth_masks"
    lms = []
    for i, (frame, labels) in enumerate(_sequence(12)):
        save_image(frames / f"{i:06d}.jpg", frame, quality=95)
        save_image(parsing / f"{i:06d}.png", labels)
        save_image(masks / f"{i:06d}.png", (labels == TORSO).astype(np.uint8) * 255)
        lms.append(synthetic_face(scale=0.3, centre=(48.0, 40.0)))
    np.save(tmp_path / "landmarks.npy", np.stack(lms))
    return tmp_path


def test_plate_and_split_clis_write_every_artefact(subject):
    s = subject
    assert background.main(["plate", "--frames", str(s / "frames"), "--parsing", str(s / "parsing"),
                            "--out", str(s / "background.png"), "--margin", "0.04", "--min-stride", "1"]) == 0
    plate = load_image(s / "background.png")
    assert plate.shape == (H, W, 3)
    seen = np.zeros((H, W), bool)
    seen[:, :78] = True
    seen[80:] = False
    # JPEG (quality 95) loses a little; the blob and its halo are gone from the plate
    assert np.abs(plate[seen].astype(int) - _backdrop()[seen].astype(int)).mean() < 3
    args = ["split", "--frames", str(s / "frames"), "--parsing", str(s / "parsing"), "--background",
            str(s / "background.png"), "--landmarks", str(s / "landmarks.npy"), "--head-out", str(s / "head"),
            "--torso-out", str(s / "torso"), "--blink-out", str(s / "blink.npy"),
            "--mouth-masks", str(s / "mouth_masks"), "--qc", str(s / "qc" / "face_analysis.png"),
            "--threads", "2"]
    assert background.main(args) == 0
    assert len(list((s / "head").glob("*.png"))) == 12 and len(list((s / "torso").glob("*.png"))) == 12
    torso = load_image(s / "torso" / "000003.png")
    labels = load_image(s / "parsing" / "000003.png")
    assert torso.shape == (H, W, 4) and (torso[..., 3][labels == BACKGROUND] == 0).all()
    head = load_image(s / "head" / "000003.png")
    assert np.array_equal(head[labels != FACE], plate[labels != FACE])  # no head labels in this sequence
    blink = np.load(s / "blink.npy")
    assert blink.shape == (12,) and blink.dtype == np.float32
    sheet = load_image(s / "qc" / "face_analysis.png")
    assert sheet.ndim == 3 and sheet.shape[1] == 3 * 256 and sheet.std() > 10


def test_split_errors_are_clear(subject, capsys):
    s = subject
    save_image(s / "background.png", np.zeros((H, W, 3), np.uint8))
    base = ["split", "--frames", str(s / "frames"), "--parsing", str(s / "parsing"), "--background",
            str(s / "background.png"), "--landmarks", str(s / "landmarks.npy"), "--head-out", str(s / "head"),
            "--torso-out", str(s / "torso"), "--blink-out", str(s / "blink.npy")]
    assert background.main(base + ["--qc", str(s / "qc.png")]) == 1
    assert "--mouth-masks" in capsys.readouterr().err
    (s / "parsing" / "000011.png").unlink()
    assert background.main(base) == 1
    assert "parsing: 11 label maps but 12 frames" in capsys.readouterr().err
    assert not (s / "head").exists() and not (s / "blink.npy").exists()
    save_image(s / "parsing" / "000011.png", np.zeros((H, W, 3), np.uint8))
    assert background.main(base) == 1
    assert "000011.png: label map of shape [96, 96, 3], expected [96, 96]" in capsys.readouterr().err


def test_plate_error_without_background(subject, capsys):
    s = subject
    for p in (s / "parsing").iterdir():
        save_image(p, np.full((H, W), TORSO, np.uint8))
    assert background.main(["plate", "--frames", str(s / "frames"), "--parsing", str(s / "parsing"),
                            "--out", str(s / "background.png")]) == 1
    assert "no background visible" in capsys.readouterr().err
    with pytest.raises(PipelineError):
        background.extract_plate(s / "frames", s / "nope", s / "b.png")


# ---------------------------------------------------------------------------------------------------------
# Shared helpers added to pipeline.io for these stages
# ---------------------------------------------------------------------------------------------------------

def test_encode_png_round_trips_grey_rgb_and_rgba():
    import io as _io

    from PIL import Image

    from pipeline.io import encode_png

    rng = np.random.default_rng(7)
    for shape, mode in (((5, 7), "L"), ((33, 20, 3), "RGB"), ((1, 9, 4), "RGBA"), ((12, 1), "L")):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        with Image.open(_io.BytesIO(encode_png(image))) as im:
            assert im.mode == mode
            assert np.array_equal(np.asarray(im), image)
    with pytest.raises(TypeError):
        encode_png(np.zeros((4, 4), np.float32))


def test_map_threaded_keeps_order_bounds_work_in_flight_and_raises():
    import threading
    import time

    from pipeline.io import map_threaded

    active, most = 0, 0
    lock = threading.Lock()

    def work(i: int) -> int:
        nonlocal active, most
        with lock:
            active += 1
            most = max(most, active)
        time.sleep(0.002 * (i % 3))
        with lock:
            active -= 1
        return i * i

    consumed = []
    for value in map_threaded(work, range(40), threads=2, lookahead=4):
        consumed.append(value)
    assert consumed == [i * i for i in range(40)]
    assert most <= 2

    def fail(i: int) -> int:
        if i == 5:
            raise PipelineError("frame 5: broken")
        return i

    with pytest.raises(PipelineError, match="frame 5"):
        list(map_threaded(fail, range(20), threads=2))


def test_schema_defaults_equal_the_dataclass_defaults():
    from dataclasses import asdict

    import yaml

    from tests.conftest import REPO

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    props = schema["properties"]["background"]["properties"]
    defaults = {**asdict(PlateConfig()), **asdict(background.SplitConfig())}
    for key, spec in props.items():
        assert spec["default"] == defaults[key], f"background.{key}"
    # the rest are CLI-only (not in the workflow config)
    assert set(defaults) - set(props) == {"min_stride", "qc_frames"}
