"""The training image's low-pass carried into 3D (pipeline/gaussians/lowpass.py)."""

import math

import torch

from pipeline.gaussians import GaussianModel, random_gaussians, rasterize
from pipeline.gaussians.lowpass import training_lowpass


def needle(opacity: float = 0.5) -> GaussianModel:
    """One Gaussian 1 m in front of the camera: 0.1 m long in x, a hundred-thousandth of that across."""
    return GaussianModel(means=torch.tensor([[0.0, 0.0, 1.0]]), quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
                         log_scales=torch.log(torch.tensor([[0.1, 1e-6, 1e-6]])),
                         opacity_logits=torch.logit(torch.tensor([opacity])), sh=torch.full((1, 1, 3), 1.0))


def camera(side: int, focal: float) -> torch.Tensor:
    return torch.tensor([[focal, 0, side / 2], [0, focal, side / 2], [0, 0, 1]])


def lowpass(g: GaussianModel, side: int, focal: float, train_focal: torch.Tensor | float) -> GaussianModel:
    return training_lowpass(g, torch.eye(4), camera(side, focal), side, side, train_focal)


def coverage(g: GaussianModel, side: int, focal: float) -> float:
    """Rendered alpha summed over the image, in pixels of a ``side``-px image."""
    a = g.activated()
    K = camera(side, focal)
    out = rasterize(a.means, a.quats, a.scales, a.opacities, a.sh, torch.eye(4)[None], K[None], side, side,
                    sh_degree=0, backend="torch")
    return float(out.alpha.sum())


def test_nothing_changes_at_the_training_size_and_only_opacity_below_it():
    g = random_gaussians(50, (-0.1, -0.1, 0.5), (0.1, 0.1, 0.7), sh_degree=0)
    same = lowpass(g, 100, 100.0, torch.full((50,), 100.0))
    torch.testing.assert_close(same.log_scales, g.log_scales)
    torch.testing.assert_close(same.opacity_logits, g.opacity_logits)
    smaller = lowpass(g, 60, 60.0, 100.0)
    torch.testing.assert_close(smaller.log_scales, g.log_scales)
    assert bool((smaller.opacity_logits <= g.opacity_logits).all())
    assert bool((smaller.opacity_logits < g.opacity_logits - 1e-3).any())
    grown = lowpass(g, 400, 400.0, 100.0)
    assert bool((grown.log_scales > g.log_scales).all())
    # isotropic: the variance added is the same on every axis, sqrt(0.3) training px at the Gaussian's depth
    added = torch.exp(2 * grown.log_scales) - torch.exp(2 * g.log_scales)
    expected = 0.3 * g.means[:, 2] ** 2 * (1 / 100.0**2 - 1 / 400.0**2)
    torch.testing.assert_close(added, expected[:, None].expand(-1, 3), rtol=1e-3, atol=1e-9)


def test_a_needle_keeps_its_trained_footprint_at_four_times_the_size():
    g = needle()
    trained = coverage(g, 32, 32.0)  # training image: 32 px, focal 32 px
    plain = coverage(g, 128, 128.0) / 16  # rendered at 4x, in training pixels
    filtered = coverage(lowpass(g, 128, 128.0, 32.0), 128, 128.0) / 16
    assert plain < 0.35 * trained  # without the filter the needle thins to a quarter of its trained area
    assert math.isclose(filtered, trained, rel_tol=0.1)


def test_each_gaussian_keeps_its_own_training_size():
    g = GaussianModel(**{k: t.repeat(2, *([1] * (t.dim() - 1))) for k, t in needle().tensors().items()})
    grown = lowpass(g, 512, 512.0, torch.tensor([128.0, 512.0]))
    assert grown.log_scales[0, 1] > g.log_scales[0, 1]  # trained at 128: grown
    torch.testing.assert_close(grown.log_scales[1], g.log_scales[1])  # trained at 512: as trained


def test_a_needle_keeps_its_trained_mass_at_a_quarter_of_the_size():
    g = needle(0.8)
    trained = coverage(g, 128, 128.0)  # training image: 128 px, focal 128 px
    plain = coverage(g, 32, 32.0) * 16  # rendered at a quarter, in training pixels
    filtered = coverage(lowpass(g, 32, 32.0, 128.0), 32, 32.0) * 16
    assert plain > 1.5 * trained  # the render's own, wider dilation makes the needle heavier
    assert math.isclose(filtered, trained, rel_tol=0.15)
