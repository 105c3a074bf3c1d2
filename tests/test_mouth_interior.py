"""The mouth interior's Gaussians and the head's share of the inner mouth (pipeline/mouth_interior.py)."""

import numpy as np
import torch
from skimage.measure import points_in_poly

from pipeline import landmarks as lmk
from pipeline.gaussians import GaussianModel, rasterize
from pipeline.mouth_interior import face_flags, interior_gaussians, interior_loss


def lip_ring() -> np.ndarray:
    """A canonical mesh [478, 3] whose outer lips are an ellipse 5 cm wide, the corners 1 cm further back."""
    canonical = np.zeros((lmk.NUM_MEDIAPIPE_POINTS, 3))
    t = np.linspace(0, 2 * np.pi, len(lmk.LIPS_OUTER), endpoint=False)
    canonical[list(lmk.LIPS_OUTER)] = np.stack([0.025 * np.cos(t), 0.012 * np.sin(t), 0.01 * np.abs(np.cos(t))], 1)
    return canonical


def test_interior_gaussians_fill_the_mouth_behind_the_lips():
    canonical = lip_ring()
    g = interior_gaussians(canonical, 400, sh_degree=1, generator=torch.Generator().manual_seed(0), opacity=0.7)
    assert len(g) == 400 and g.sh_degree == 1
    lips = canonical[list(lmk.LIPS_OUTER)]
    means = g.means.numpy()
    assert points_in_poly(means[:, :2], lips[:, :2]).all()
    # z points back: every one at least 3 mm behind the lips' front, none further than the lips' back plus 15 mm
    assert (means[:, 2] >= lips[:, 2].min() + 0.003).all() and (means[:, 2] <= lips[:, 2].max() + 0.015).all()
    # spread over the mouth, not bunched at its centre: they reach most of the way to the corners
    width = np.ptp(lips[:, 0])
    assert np.ptp(means[:, 0]) > 0.7 * width
    torch.testing.assert_close(g.activated().opacities, torch.full((400,), 0.7))


def test_interior_loss_clears_the_inner_mouth_of_the_head():
    """A head Gaussian over the mouth, interior Gaussians behind it: descending the loss leaves the inner-mouth
    pixels to the interior, and the head keeps the pixels outside them."""
    side = 32
    K = torch.tensor([[40.0, 0, side / 2], [0, 40.0, side / 2], [0, 0, 1]])
    face = GaussianModel(means=torch.tensor([[0.0, 0.0, 1.0]]), quats=torch.tensor([[1.0, 0, 0, 0]]),
                         log_scales=torch.log(torch.tensor([[0.5, 0.5, 0.01]])),
                         opacity_logits=torch.logit(torch.tensor([0.95])), sh=torch.zeros(1, 1, 3))
    grid = torch.linspace(-0.05, 0.05, 5)
    xy = torch.cartesian_prod(grid, grid)
    interior = GaussianModel(means=torch.cat([xy, torch.full((25, 1), 1.02)], dim=1),
                             quats=torch.eye(4)[:1].repeat(25, 1), log_scales=torch.log(torch.full((25, 3), 0.02)),
                             opacity_logits=torch.logit(torch.full((25,), 0.9)), sh=torch.zeros(25, 1, 3))
    inner = torch.zeros(side, side)
    inner[12:20, 10:22] = 1.0  # the open mouth
    flags = face_flags(1, 25)
    opacity = face.opacity_logits.clone().requires_grad_()
    log_scales = face.log_scales.clone().requires_grad_()
    optimizer = torch.optim.Adam([opacity, log_scales], lr=0.05)

    def shares():
        means = torch.cat([face.means, interior.means])
        quats = torch.cat([face.quats, interior.quats])
        scales = torch.exp(torch.cat([log_scales, interior.log_scales]))
        opacities = torch.sigmoid(torch.cat([opacity, interior.opacity_logits]))
        out = rasterize(means, quats, scales, opacities, torch.zeros(26, 3), torch.eye(4)[None], K[None], side,
                        side, extra=flags, backend="torch")
        return out.extra[0, ..., 0], out.alpha[0, ..., 0]

    with torch.no_grad():
        before, _ = shares()
    for _ in range(60):
        optimizer.zero_grad()
        interior_loss(*shares(), inner).backward()
        optimizer.step()
    with torch.no_grad():
        after, alpha = shares()
    inside = inner > 0
    assert float(before[inside].mean()) > 0.9
    assert float(after[inside].mean()) < 0.5 * float(before[inside].mean())
    assert float((alpha - after)[inside].mean()) > 0.3  # the interior shows there now
    assert float(after[0, 0]) < float(before[0, 0])  # (shrinking is how this head can leave: corners go too)


def test_interior_loss_charges_the_interior_outside_the_inner_mouth():
    """Interior Gaussians in front of the lips of a closed mouth (no inner-mouth pixel) cost their share."""
    side = 16
    K = torch.tensor([[20.0, 0, side / 2], [0, 20.0, side / 2], [0, 0, 1]])
    means = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 0.9]])  # head behind, interior in front
    opacity = torch.tensor([0.9, 0.6], requires_grad=True)
    out = rasterize(means, torch.tensor([[1.0, 0, 0, 0]] * 2), torch.full((2, 3), 0.2), opacity, torch.zeros(2, 3),
                    torch.eye(4)[None], K[None], side, side, extra=face_flags(1, 1), backend="torch")
    share, alpha = out.extra[0, ..., 0], out.alpha[0, ..., 0]
    closed = torch.zeros(side, side)
    loss = interior_loss(share, alpha, closed)
    torch.testing.assert_close(loss, (alpha - share).mean())
    assert float(loss.detach()) > 0.1
    grad = torch.autograd.grad(loss, opacity)[0]
    assert grad[1] > 0  # a more opaque interior costs more
