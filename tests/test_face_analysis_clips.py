"""The four face-analysis stages (parse_faces, dilate_mouth_masks, extract_background, split_head_torso) on
12 frames of every real development clip, through their CLIs, checked by geometric invariants."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.morphology import convex_hull_image

from pipeline import background, masks, parsing
from pipeline import landmarks as L
from pipeline.io import list_frames, load_image, save_image
from pipeline.parsing import BACKGROUND, FACE, HAIR, INNER_MOUTH, LIPS, NECK, TORSO, FaceFrame, polygon_mask

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
CLIPS = sorted(MEDIA.glob("*.mp4")) if MEDIA.is_dir() else []
FRAMES = range(0, 120, 10)

pytestmark = pytest.mark.skipif(not CLIPS, reason="../shared/media is not present")


@pytest.fixture(scope="module", params=[c.name for c in CLIPS] or ["none"])
def subject(request, tmp_path_factory) -> Path:
    """results/{subject}-like directory with every face-analysis artefact of 12 frames of one clip."""
    from pipeline.media import iter_frames

    root = tmp_path_factory.mktemp(Path(request.param).stem)
    wanted = set(FRAMES)
    k = 0
    for i, frame in enumerate(iter_frames(MEDIA / request.param)):
        if i in wanted:
            save_image(root / "frames" / f"{k:06d}.jpg", frame, quality=95)
            k += 1
    frames = list_frames(root / "frames")
    lm, found = L.detect_landmarks(frames, L.LandmarkConfig(), source=request.param)
    assert found.all()
    np.save(root / "landmarks.npy", lm)
    assert parsing.main(["--frames", str(root / "frames"), "--landmarks", str(root / "landmarks.npy"),
                         "--out", str(root / "parsing")]) == 0
    assert masks.main(["--parsing", str(root / "parsing"), "--landmarks", str(root / "landmarks.npy"),
                       "--out", str(root / "mouth_masks")]) == 0
    assert background.main(["plate", "--frames", str(root / "frames"), "--parsing", str(root / "parsing"),
                            "--out", str(root / "background.png"), "--min-stride", "1"]) == 0
    assert background.main(["split", "--frames", str(root / "frames"), "--parsing", str(root / "parsing"),
                            "--background", str(root / "background.png"), "--landmarks",
                            str(root / "landmarks.npy"), "--head-out", str(root / "head"), "--torso-out",
                            str(root / "torso"), "--blink-out", str(root / "blink.npy"), "--mouth-masks",
                            str(root / "mouth_masks"), "--qc", str(root / "qc" / "face_analysis.png")]) == 0
    return root


def _each(subject: Path):
    lm = np.load(subject / "landmarks.npy")
    for i in range(len(lm)):
        name = f"{i:06d}"
        yield i, lm[i], load_image(subject / "parsing" / f"{name}.png")


def test_every_artefact_has_one_file_per_frame(subject):
    n = len(FRAMES)
    for folder in ("parsing", "mouth_masks", "head", "torso"):
        assert [p.name for p in list_frames(subject / folder)] == [f"{i:06d}.png" for i in range(n)]
    assert np.load(subject / "blink.npy").shape == (n,)
    assert load_image(subject / "background.png").shape == (512, 512, 3)
    assert load_image(subject / "qc" / "face_analysis.png").shape[1] == 3 * 256


def test_face_lips_and_mouth_geometry(subject):
    for i, lm, labels in _each(subject):
        assert labels.shape == (512, 512) and labels.dtype == np.uint8 and labels.max() <= 6
        oval = polygon_mask(lm[list(L.FACE_OVAL), :2], labels.shape)
        mouth = (labels == LIPS) | (labels == INNER_MOUTH)
        assert (labels == FACE).sum() > 0.5 * oval.sum(), i
        assert oval[mouth].all(), i  # lips inside the face
        # lips + inner mouth are exactly MediaPipe's outer lip polygon
        assert np.array_equal(mouth, polygon_mask(lm[list(L.LIPS_OUTER), :2], labels.shape)), i
        inner = labels == INNER_MOUTH
        if inner.any():
            assert convex_hull_image(labels == LIPS)[inner].all(), i  # inner mouth inside the lips' hull


def test_neck_below_chin_and_torso_below_neck(subject):
    config = parsing.ParsingConfig()
    for i, lm, labels in _each(subject):
        frame = FaceFrame.of(lm)

        def uv(label: int) -> np.ndarray:
            ys, xs = np.nonzero(labels == label)
            return frame.to_face(np.stack([xs + 0.5, ys + 0.5], 1))

        neck, torso = uv(NECK), uv(TORSO)
        jaw = frame.to_face(lm[list(parsing.JAW_LINE), :2])
        chin_v = frame.to_face(lm[152, :2])[1]
        assert len(neck) > 500, i
        assert neck[:, 1].min() >= jaw[:, 1].min() - 1.5, i  # nothing of the neck above the jaw line
        assert neck[:, 1].mean() > chin_v, i
        # torso: nowhere above the jaw angles in the head box, and under the neck band below the chin
        in_box = np.abs(torso[:, 0]) <= config.head_width * frame.half_width
        assert (torso[in_box, 1] >= min(jaw[0, 1], jaw[-1, 1]) - 1.5).all(), i
        under_chin = (torso[:, 0] > neck[:, 0].min() + 2) & (torso[:, 0] < neck[:, 0].max() - 2)
        assert (torso[under_chin, 1] >= chin_v + config.neck_height * frame.height - 1.5).all(), i


def test_above_the_eyes_outside_the_face_is_hair_or_background(subject):
    for i, lm, labels in _each(subject):
        eye_y = int(min(lm[33, 1], lm[263, 1]))
        oval = polygon_mask(lm[list(L.FACE_OVAL), :2], labels.shape)
        above = labels[:eye_y][~oval[:eye_y]]
        assert np.isin(above, (BACKGROUND, HAIR)).all(), i
        assert (above == HAIR).sum() > 2000, i  # the hair is found...
        assert labels[0, 0] == BACKGROUND and labels[0, -1] == BACKGROUND, i  # ...and the corners are not


def test_head_takes_nothing_below_the_jaw_outside_the_face(subject):
    """Beside and under the jaw lie neck, collar and jacket, which the torso image already has: no head label
    outside the face oval below the jaw line (extended flat beyond the jaw angles)."""
    for i, lm, labels in _each(subject):
        frame = FaceFrame.of(lm)
        jaw = frame.to_face(lm[list(parsing.JAW_LINE), :2])
        order = np.argsort(jaw[:, 0])
        ys, xs = np.nonzero(np.isin(labels, parsing.HEAD_LABELS))
        uv = frame.to_face(np.stack([xs + 0.5, ys + 0.5], 1))
        below = uv[:, 1] > np.interp(uv[:, 0], jaw[order, 0], jaw[order, 1]) + 1.5
        oval = polygon_mask(lm[list(L.FACE_OVAL), :2], labels.shape)
        stray = below & ~oval[ys, xs]
        assert stray.sum() <= 0.001 * len(ys), (i, int(stray.sum()))


def test_mouth_masks_contain_the_mouth(subject):
    for i, lm, labels in _each(subject):
        mask = load_image(subject / "mouth_masks" / f"{i:06d}.png")
        assert set(np.unique(mask)) <= {0, 255}
        mouth = (labels == LIPS) | (labels == INNER_MOUTH)
        assert (mask[mouth] == 255).all(), i
        assert (mask == 255).sum() > 2 * mouth.sum(), i


def test_plate_matches_visible_background_and_split_composites(subject):
    plate = load_image(subject / "background.png").astype(int)
    for i, lm, labels in _each(subject):
        frame = load_image(subject / "frames" / f"{i:06d}.jpg")
        far = background.far_from_person(labels, 15.0)
        assert np.abs(plate[far] - frame[far]).mean() < 8, i  # static camera: the plate is the backdrop
        head = load_image(subject / "head" / f"{i:06d}.png")
        torso = load_image(subject / "torso" / f"{i:06d}.png")
        on_head = np.isin(labels, (FACE, HAIR, LIPS, INNER_MOUTH))
        assert np.array_equal(head[on_head], frame[on_head])
        assert np.array_equal(head[~on_head], plate[~on_head].astype(np.uint8))
        assert (torso[..., 3][on_head | (labels == BACKGROUND)] == 0).all()
        assert (torso[..., 3][np.isin(labels, (NECK, TORSO))] > 0).all()
