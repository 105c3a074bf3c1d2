"""Compositing core: head over torso over plate, and the neck bridge that keeps the plate out of the seam."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.composite import SeamConfig, composite

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
