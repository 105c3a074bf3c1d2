"""Compositing core: head over torso over plate, and the neck bridge that keeps the plate out of the seam."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from pipeline.composite import SeamConfig, composite, outline_layer
from pipeline.parsing import BACKGROUND, FACE, HAIR, TORSO

H = W = 100
PLATE = (0.1, 0.2, 0.9)
NECK = (200, 150, 120)
SHIRT = (40, 120, 40)
HEAD = (0.8, 0.6, 0.5)


def scene(chin: int, neck_top: int = 60, shoulders: int = 80):
    """Plate, a torso layer (neck columns 40..59 from ``neck_top``, shoulders from ``shoulders``) and an
    elliptic head whose lowest row is ``chin`` (columns 25..74)."""
    plate = torch.tensor(PLATE).expand(H, W, 3).clone()
    torso = np.zeros((H, W, 4), np.uint8)
    torso[neck_top:, 40:60] = (*NECK, 255)
    torso[shoulders:, :] = (*SHIRT, 255)
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    cy = chin - 29.5
    alpha = (((xx - 50) / 25) ** 2 + ((yy - cy) / 30) ** 2 <= 1).astype(np.float32)
    alpha = torch.from_numpy(alpha)[..., None]
    head = torch.tensor(HEAD) * alpha
    return head, alpha, torch.from_numpy(torso), plate


def test_layers_stack_head_over_torso_over_plate():
    head, alpha, torso, plate = scene(chin=60)
    out = composite(head, alpha, torso, plate).image.numpy()
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    assert tuple(out[40, 50]) == tuple(round(c * 255) for c in HEAD)  # head
    assert tuple(out[90, 5]) == SHIRT  # torso
    assert tuple(out[70, 50]) == NECK
    assert tuple(out[5, 5]) == tuple(round(c * 255) for c in PLATE)  # background


def test_semi_transparent_head_blends_premultiplied():
    head, alpha, torso, plate = scene(chin=60)
    half = alpha * 0.5
    out = composite(head * 0.5, half, torso, plate).image.numpy().astype(float)
    expected = 255 * (0.5 * np.array(HEAD) + 0.5 * np.array(PLATE))
    np.testing.assert_allclose(out[20, 50], expected, atol=1)


def test_gap_between_chin_and_neck_is_filled_with_neck_not_plate():
    # the rendered chin ends 6 rows above the source frame's neck: without the bridge the plate shows there
    head, alpha, torso, plate = scene(chin=54, neck_top=60)
    result = composite(head, alpha, torso, plate, SeamConfig(reach=0.08))
    gap = (slice(54, 60), slice(42, 58))
    assert result.plate_weight[gap].max() == 0
    np.testing.assert_allclose(result.image.numpy()[gap].reshape(-1, 3), np.tile(NECK, (6 * 16, 1)), atol=1)
    unbridged = composite(head, alpha, torso, plate, SeamConfig(reach=0.0))
    assert unbridged.plate_weight[gap].min() == 1  # the same scene without the bridge shows the plate


def test_bridge_keeps_real_background_beside_the_neck_and_beyond_reach():
    head, alpha, torso, plate = scene(chin=54, neck_top=60)
    result = composite(head, alpha, torso, plate, SeamConfig(reach=0.08))
    # under the jaw beside the neck the shoulders are 26+ rows below the head: background stays background
    assert result.plate_weight[70, 30] == 1 and result.plate_weight[45, 20] == 1
    # a chin 20 rows above the neck is farther than reach: no bridge anywhere
    head, alpha, torso, plate = scene(chin=40, neck_top=60)
    far = composite(head, alpha, torso, plate, SeamConfig(reach=0.08))
    assert far.plate_weight[45:60, 42:58].min() == 1


def test_bridge_lies_under_the_head_edge_so_the_chin_is_not_doubled():
    # a soft chin edge (alpha 0.5) over the bridge blends head with neck colour, never with the plate
    head, alpha, torso, plate = scene(chin=54, neck_top=60)
    soft = alpha.clone()
    soft[52:54] *= 0.5
    out = composite(torch.tensor(HEAD) * soft, soft, torso, plate, SeamConfig(reach=0.08, overlap=0.03))
    expected = 0.5 * np.array(HEAD) * 255 + 0.5 * np.array(NECK)
    np.testing.assert_allclose(out.image.numpy()[53, 45:55].astype(float), np.tile(expected, (10, 1)), atol=1)
    assert out.plate_weight[53, 45:55].max() == 0


def test_chin_over_the_neck_covers_it():
    head, alpha, torso, plate = scene(chin=66, neck_top=60)  # open rendered mouth: chin lower than the source
    out = composite(head, alpha, torso, plate).image.numpy()
    assert tuple(out[64, 50]) == tuple(round(c * 255) for c in HEAD)
    assert tuple(out[70, 50]) == NECK


def test_mismatched_sizes_are_an_error():
    head, alpha, torso, plate = scene(chin=60)
    with pytest.raises(ValueError, match="differ in size"):
        composite(head, alpha, torso[:50], plate)


def silhouette():
    """A 40x40 parsing map: hair disc (radius 12) with a face inside its lower half, torso from row 34;
    and a frame whose colour encodes the pixel position (so the test can tell which pixel shows)."""
    yy, xx = np.mgrid[0:40, 0:40]
    labels = np.full((40, 40), BACKGROUND, np.uint8)
    labels[(yy - 18) ** 2 + (xx - 20) ** 2 <= 144] = HAIR
    labels[((yy - 22) ** 2 + (xx - 20) ** 2 <= 64) & (yy > 17)] = FACE
    labels[34:] = TORSO
    frame = np.stack([yy * 6, xx * 6, np.full_like(yy, 77)], axis=-1).astype(np.uint8)
    return labels, frame


def test_outline_layer_is_the_source_silhouette_ring_fading_outwards():
    labels, frame = silhouette()
    layer = outline_layer(frame, labels, width=2)
    alpha = layer[..., 3]
    np.testing.assert_array_equal(layer[..., :3], frame)  # the source frame's own pixels
    assert alpha[6, 20] == 255 and alpha[7, 20] == 255  # hair within 2 px of the background above the head
    assert alpha[8, 20] == 0 and alpha[18, 20] == 0  # deeper in the hair: the rendered head's business
    assert alpha[34, 5] == 255 and alpha[35, 5] == 255  # the torso's top 2 rows border the background
    assert alpha[36, 5] == 0 and alpha[39, 5] == 0  # the image border is not background
    # outside the silhouette: linear fall-off over width // 4 + 1 = 1 px (+1), then nothing
    assert 0 < alpha[5, 20] < 255 and alpha[3, 20] == 0
    # the face never enters the ring (the jaw moves with the audio), even where it borders the background
    face_edge = (labels == FACE) & ndimage.binary_dilation(labels == BACKGROUND)
    assert face_edge.any() and alpha[labels == FACE].max() == 0
    assert not outline_layer(frame, labels, width=0)[..., 3].any()


def test_outline_fills_the_silhouette_where_the_head_is_transparent():
    labels, frame = silhouette()
    layer = torch.from_numpy(outline_layer(frame, labels, width=2))
    plate = torch.full((40, 40, 3), 0.5)
    torso = torch.zeros(40, 40, 4, dtype=torch.uint8)
    alpha = torch.zeros(40, 40, 1)  # a head that renders nothing at all
    result = composite(torch.zeros(40, 40, 3), alpha, torso, plate, SeamConfig(reach=0), layer)
    assert tuple(result.image[6, 20].tolist()) == tuple(frame[6, 20])
    assert result.plate_weight[6, 20] == 0 and result.plate_weight[18, 20] == 1
    bare = composite(torch.zeros(40, 40, 3), alpha, torso, plate, SeamConfig(reach=0))
    assert bare.plate_weight[6, 20] == 1  # without the layer the plate shows there
    opaque = composite(torch.full((40, 40, 3), 0.2), torch.ones(40, 40, 1), torso, plate, SeamConfig(reach=0),
                       layer)
    assert tuple(opaque.image[6, 20].tolist()) == (51, 51, 51)  # an opaque head covers the ring
    with pytest.raises(ValueError, match="differ in size"):
        composite(torch.zeros(40, 40, 3), alpha, torso, plate, SeamConfig(reach=0), layer[:20])
