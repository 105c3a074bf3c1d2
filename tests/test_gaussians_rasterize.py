"""Correctness of the pure-PyTorch rasterizer: reference images, analytic footprints, gradients, semantics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from pipeline.gaussians import project_gaussians, quat_to_rotmat, rasterize
from pipeline.gaussians.sh import eval_sh_colors

F64 = torch.float64


def _camera(width: int, height: int, focal: float, n_cams: int = 1, dtype=F64):
    K = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=dtype)
    return torch.eye(4, dtype=dtype).repeat(n_cams, 1, 1), K.repeat(n_cams, 1, 1)


def _dense_reference(means, quats, scales, opacities, feats, viewmats, Ks, width, height):
    """Per-Gaussian loop over full images, straight from the 3DGS kernel's rules. feats [C,N,F].

    Returns features [C,H,W,F], alpha [C,H,W,1], accumulated depth [C,H,W,1].
    """
    proj = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=means.dtype) + 0.5,
                            torch.arange(width, dtype=means.dtype) + 0.5, indexing="ij")
    out, alphas = [], []
    for c in range(viewmats.shape[0]):
        acc = torch.zeros(height, width, feats.shape[-1] + 1, dtype=means.dtype)
        trans = torch.ones(height, width, dtype=means.dtype)
        done = torch.zeros(height, width, dtype=torch.bool)
        for n in torch.argsort(proj.depths[c]).tolist():
            if not proj.visible[c, n]:
                continue
            dx, dy = xs - proj.means2d[c, n, 0], ys - proj.means2d[c, n, 1]
            a, b, cc = proj.conics[c, n]
            alpha = torch.clamp(opacities[n] * torch.exp(-(0.5 * (a * dx * dx + cc * dy * dy) + b * dx * dy)),
                                max=0.99)
            use = (alpha >= 1 / 255) & ~done
            next_t = trans * (1 - alpha)
            stop = use & (next_t < 1e-4)
            done, use = done | stop, use & ~stop
            f = torch.cat((feats[c, n], proj.depths[c, n:n + 1]))
            acc = acc + torch.where(use, alpha * trans, 0.0)[..., None] * f
            trans = torch.where(use, next_t, trans)
        out.append(acc)
        alphas.append(1 - trans)
    out = torch.stack(out)
    return out[..., :-1], torch.stack(alphas)[..., None], out[..., -1:]


def _random_scene(n: int, seed: int, dtype=F64, opacity_max: float = 0.95):
    g = torch.Generator().manual_seed(seed)
    means = (torch.randn(n, 3, generator=g, dtype=dtype) * 0.6 + torch.tensor([0, 0, 4.0], dtype=dtype))
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.2 + 0.03
    opacities = torch.rand(n, generator=g, dtype=dtype) * (opacity_max - 0.05) + 0.05
    return means, quats, scales, opacities, g


def test_matches_dense_reference_with_sh_extra_multi_camera_and_chunks():
    width, height, n, n_cams = 37, 29, 40, 2
    means, quats, scales, opacities, g = _random_scene(n, seed=1)
    sh = torch.randn(n, 9, 3, generator=g, dtype=F64) * 0.3
    extra = torch.rand(n_cams, n, 2, generator=g, dtype=F64)
    bg = torch.tensor([0.2, 0.4, 0.9], dtype=F64)
    viewmats, Ks = _camera(width, height, 40.0, n_cams)
    viewmats[1, :3, :3] = quat_to_rotmat(torch.tensor([0.99, 0.05, -0.08, 0.03], dtype=F64))
    viewmats[1, :3, 3] = torch.tensor([0.3, -0.2, 0.5], dtype=F64)
    inputs = [means, quats, scales, opacities, sh, extra, viewmats, bg]
    for t in inputs:
        t.requires_grad_(True)
    weights = torch.randn(n_cams, height, width, 7, generator=g, dtype=F64)

    # chunk_pairs far below the pair count forces many chunks of tile rows
    res = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, width, height, sh_degree=2,
                    extra=extra, background=bg, backend="torch", chunk_pairs=200)
    ours = torch.cat((res.color, res.alpha, res.depth, res.extra), dim=-1)

    cam_centres = torch.linalg.inv(viewmats)[:, :3, 3]
    rgb = eval_sh_colors(2, sh.expand(n_cams, n, 9, 3), means[None] - cam_centres[:, None])
    feats, alpha, depth_acc = _dense_reference(means, quats, scales, opacities, torch.cat((rgb, extra), -1),
                                               viewmats, Ks, width, height)
    color = feats[..., :3] + bg * (1 - alpha)
    ref = torch.cat((color, alpha, depth_acc / alpha.clamp_min(1e-10), feats[..., 3:]), dim=-1)

    assert res.visible.sum() > 60 and alpha.max() > 0.9
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    grads = torch.autograd.grad((ours * weights).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * weights).sum(), inputs)
    names = ["means", "quats", "scales", "opacities", "sh", "extra", "viewmats", "bg"]
    for name, got, want in zip(names, grads, ref_grads):
        assert want.abs().max() > 0, name
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9 * float(want.abs().max()), msg=name)


def test_opaque_scene_clamps_alpha_and_stops_at_min_transmittance():
    """Many overlapping near-opaque Gaussians: alpha hits the 0.99 clamp and pixels stop compositing
    before their transmittance falls below 1e-4, exactly as the dense reference does."""
    width, height, n = 37, 29, 60
    means, quats, scales, _, g = _random_scene(n, seed=2)
    opacities = 0.9 + 0.1 * torch.rand(n, generator=g, dtype=F64)
    scales = 2 * scales
    colors = torch.rand(n, 3, generator=g, dtype=F64)
    viewmats, Ks = _camera(width, height, 40.0)
    inputs = [means, quats, scales, opacities, colors]
    for t in inputs:
        t.requires_grad_(True)
    res = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, backend="torch")
    ours = torch.cat((res.color, res.alpha, res.depth), dim=-1)
    feats, alpha, depth_acc = _dense_reference(means, quats, scales, opacities, colors[None], viewmats, Ks,
                                               width, height)
    ref = torch.cat((feats, alpha, depth_acc / alpha.clamp_min(1e-10)), dim=-1)

    assert (opacities > 0.99).sum() >= 5  # clamped alphas
    assert ((1 - alpha) < 2e-4).float().mean() > 0.05  # pixels that stopped early
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
    weights = torch.randn(ours.shape, generator=g, dtype=F64)
    grads = torch.autograd.grad((ours * weights).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * weights).sum(), inputs)
    for name, got, want in zip(["means", "quats", "scales", "opacities", "colors"], grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-9 * float(want.abs().max()), msg=name)


def _tiny_scene():
    """3 overlapping Gaussians in a 12x10 image, moderate opacity, nothing near the 0.99 clamp."""
    means = torch.tensor([[0.0, 0.0, 3.0], [0.3, -0.2, 3.5], [-0.25, 0.2, 4.0]], dtype=F64)
    quats = torch.tensor([[1.0, 0.1, -0.2, 0.3], [0.8, -0.3, 0.2, 0.1], [0.9, 0.2, 0.3, -0.4]], dtype=F64)
    scales = torch.tensor([[1.0, 0.6, 0.8], [0.9, 1.2, 0.6], [1.5, 0.9, 0.9]], dtype=F64)
    opacities = torch.tensor([0.7, 0.6, 0.8], dtype=F64)
    viewmats, Ks = _camera(12, 10, 10.0)
    viewmats[0, :3, :3] = quat_to_rotmat(torch.tensor([0.995, 0.03, -0.05, 0.02], dtype=F64))
    viewmats[0, :3, 3] = torch.tensor([0.05, -0.1, 0.2], dtype=F64)
    return means, quats, scales, opacities, viewmats, Ks


@pytest.fixture(autouse=True)
def one_thread():
    """These scenes are tiny: intra-op threads gain nothing, and on a busy machine each parallel region can
    stall for a scheduler time slice."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _projected(image: Tensor, n_out: int = 6) -> Tensor:
    """``n_out`` fixed random linear functionals of a rendered image, so gradcheck checks every input
    element against finite differences along several output directions without one backward per pixel."""
    weights = torch.randn(n_out, *image.shape, generator=torch.Generator().manual_seed(7), dtype=image.dtype)
    return (weights * image).flatten(1).sum(1)


def test_gradcheck_every_input_rgb_extra_background():
    means, quats, scales, opacities, viewmats, Ks = _tiny_scene()
    colors = torch.tensor([[0.9, 0.2, 0.1], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=F64)
    extra = torch.tensor([[0.5], [1.0], [0.2]], dtype=F64)
    bg = torch.tensor([0.3, 0.5, 0.7], dtype=F64)

    def render(means, quats, scales, opacities, colors, extra, viewmats, bg):
        r = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 12, 10, extra=extra,
                      background=bg, backend="torch")
        return torch.cat((r.color, r.alpha, r.depth, r.extra), dim=-1)

    inputs = [t.clone().requires_grad_(True)
              for t in (means, quats, scales, opacities, colors, extra, viewmats, bg)]
    image = render(*inputs)
    assert image[..., 3].min() > 0.01  # every pixel is covered
    # full Jacobian of a 12x10 render w.r.t. every input (720 outputs) against central differences
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_gradcheck_sh_degree_3_view_dependent():
    means, quats, scales, opacities, viewmats, Ks = _tiny_scene()
    sh = torch.randn(3, 16, 3, generator=torch.Generator().manual_seed(3), dtype=F64) * 0.2

    def render(means, quats, scales, opacities, sh, viewmats):
        r = rasterize(means, quats, scales, opacities, sh, viewmats, Ks, 12, 10, sh_degree=3, backend="torch")
        return _projected(torch.cat((r.color, r.alpha), dim=-1))

    inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opacities, sh, viewmats)]
    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("angle", [0.0, 0.6])
def test_centred_gaussian_renders_closed_form_footprint(angle):
    size, focal, z, opacity = 33, 40.0, 5.0, 0.8
    viewmats, Ks = _camera(size, size, focal)
    s = torch.tensor([0.3, 0.12, 0.2], dtype=F64)
    quat = torch.tensor([[math.cos(angle / 2), 0, 0, math.sin(angle / 2)]], dtype=F64)  # roll about the axis
    res = rasterize(torch.tensor([[0, 0, z]], dtype=F64), quat, s[None], torch.tensor([opacity], dtype=F64),
                    torch.ones(1, 3, dtype=F64), viewmats, Ks, size, size, backend="torch")
    # At the optical axis the EWA Jacobian is diag(f/z, f/z): cov2d = (f/z)^2 R S^2 R^T (xy block) + 0.3 I.
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]], dtype=F64)
    cov = (focal / z) ** 2 * rot @ torch.diag(s[:2] ** 2) @ rot.T + 0.3 * torch.eye(2, dtype=F64)
    centres = torch.arange(size, dtype=F64) + 0.5
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    d = torch.stack((xs - size / 2, ys - size / 2), -1)
    power = 0.5 * torch.einsum("hwi,ij,hwj->hw", d, torch.linalg.inv(cov), d)
    expected = torch.clamp(opacity * torch.exp(-power), max=0.99)
    expected = torch.where(expected >= 1 / 255, expected, 0.0)
    torch.testing.assert_close(res.alpha[0, ..., 0], expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(res.color[0], expected[..., None].expand(-1, -1, 3), rtol=0, atol=1e-12)
    torch.testing.assert_close(res.depth[0][expected > 0], torch.full_like(res.depth[0][expected > 0], z))
    extent = math.sqrt(2 * math.log(255 * opacity))  # standard deviations to alpha = 1/255
    assert res.radii[0, 0] == math.ceil(extent * math.sqrt(cov.diagonal().max()))


def test_footprint_sigma_for_a_known_camera():
    """Axis-aligned Gaussian, std s, depth z, focal f: the row profile's sigma is sqrt((f s/z)^2 + 0.3)."""
    size, focal, z, s = 41, 60.0, 4.0, 0.15
    viewmats, Ks = _camera(size, size, focal)
    res = rasterize(torch.tensor([[0, 0, z]], dtype=F64), torch.tensor([[1.0, 0, 0, 0]], dtype=F64),
                    torch.tensor([[s, s, s]], dtype=F64), torch.tensor([0.5], dtype=F64),
                    torch.ones(1, 3, dtype=F64), viewmats, Ks, size, size, backend="torch")
    row = res.alpha[0, size // 2, :, 0]  # the centre row; pixel size//2 sits on the mean
    dx = torch.arange(size, dtype=F64) - size // 2
    use = row > 0
    # log alpha = log o - dx^2 / (2 sigma^2): fit the parabola's curvature
    design = torch.stack((torch.ones_like(dx[use]), dx[use] ** 2), 1)
    slope = torch.linalg.lstsq(design, row[use].log()[:, None])
    sigma = math.sqrt(-0.5 / float(slope.solution[1]))
    assert sigma == pytest.approx(math.sqrt((focal * s / z) ** 2 + 0.3), rel=1e-9)
    assert float(row.max()) == pytest.approx(0.5)


def _two_gaussians(z_red: float, z_blue: float):
    """A red and a blue flat Gaussian, nearly on top of each other, at the given depths."""
    means = torch.tensor([[0.0, 0.0, z_red], [0.05, 0.0, z_blue]], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]], dtype=F64)
    scales = torch.tensor([[0.3, 0.3, 0.01], [0.3, 0.3, 0.01]], dtype=F64)
    opacities = torch.tensor([0.9, 0.9], dtype=F64)
    colors = torch.tensor([[1.0, 0, 0], [0, 0, 1.0]], dtype=F64)
    viewmats, Ks = _camera(16, 16, 20.0)
    res = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 16, 16, backend="torch")
    return res, project_gaussians(means, quats, scales, opacities, viewmats, Ks, 16, 16)


def test_depth_order_decides_which_colour_is_in_front():
    front_red, proj = _two_gaussians(3.0, 4.0)
    front_blue, _ = _two_gaussians(4.0, 3.0)
    assert front_red.color[0, 8, 8, 0] > 0.8 and front_red.color[0, 8, 8, 2] < 0.15
    assert front_blue.color[0, 8, 8, 2] > 0.8 and front_blue.color[0, 8, 8, 0] < 0.15
    # exact front-to-back composition at the centre pixel: C = a_red red + (1 - a_red) a_blue blue
    d = torch.tensor([8.5, 8.5], dtype=F64) - proj.means2d[0]
    a, b, c = proj.conics[0].unbind(-1)
    alpha = 0.9 * torch.exp(-(0.5 * (a * d[:, 0] ** 2 + c * d[:, 1] ** 2) + b * d[:, 0] * d[:, 1]))
    expected = torch.stack((alpha[0], torch.zeros_like(alpha[0]), (1 - alpha[0]) * alpha[1]))
    torch.testing.assert_close(front_red.color[0, 8, 8], expected, rtol=0, atol=1e-14)


def test_extra_channels_are_composited_like_colour_and_background_is_alpha_blended():
    means, quats, scales, opacities, g = _random_scene(30, seed=5)
    colors = torch.rand(30, 3, generator=g, dtype=F64)
    viewmats, Ks = _camera(24, 20, 25.0)
    bg = torch.tensor([0.1, 0.6, 0.3], dtype=F64)
    plain = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 24, 20, backend="torch")
    res = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 24, 20,
                    extra=torch.cat((colors, opacities[:, None]), 1), background=bg, backend="torch")
    assert ((plain.alpha > 0.05) & (plain.alpha < 0.95)).float().mean() > 0.3  # partial coverage: bg matters
    torch.testing.assert_close(res.extra[..., :3], plain.color, rtol=0, atol=1e-14)
    torch.testing.assert_close(res.color, plain.color + bg * (1 - plain.alpha), rtol=0, atol=1e-14)
    torch.testing.assert_close(res.alpha, plain.alpha)
    # a constant extra channel renders as constant * alpha
    const = rasterize(means, quats, scales, opacities, colors, viewmats, Ks, 24, 20,
                      extra=torch.full((30, 1), 0.25, dtype=F64), backend="torch")
    torch.testing.assert_close(const.extra, 0.25 * const.alpha, rtol=0, atol=1e-14)


def test_culled_gaussians_get_zero_radii_and_finite_gradients():
    means = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, -2.0], [50.0, 0.0, 3.0], [0.0, 0.0, 0.001]], dtype=F64,
                         requires_grad=True)
    quats = torch.tensor([[1.0, 0, 0, 0]] * 4, dtype=F64)
    scales = torch.full((4, 3), 0.2, dtype=F64, requires_grad=True)
    opacities = torch.full((4,), 0.5, dtype=F64)
    viewmats, Ks = _camera(16, 16, 20.0)
    res = rasterize(means, quats, scales, opacities, torch.ones(4, 3, dtype=F64), viewmats, Ks, 16, 16,
                    backend="torch")
    assert res.visible[0].tolist() == [True, False, False, False]
    assert res.radii[0, 0] > 0 and (res.radii[0, 1:] == 0).all()
    res.means2d.retain_grad()
    (res.color.sum() + res.depth.sum()).backward()
    assert torch.isfinite(means.grad).all() and torch.isfinite(scales.grad).all()
    assert (means.grad[1:] == 0).all() and means.grad[0].abs().sum() > 0
    # the screen-space positional gradient is exposed for densification
    assert res.means2d.grad.shape == (1, 4, 2) and res.means2d.grad[0, 0].abs().sum() > 0
    assert (res.means2d.grad[0, 1:] == 0).all()


def test_nothing_visible_renders_background_with_zero_gradients():
    means = torch.tensor([[0.0, 0.0, -3.0], [0.2, 0.0, -2.0]], dtype=F64, requires_grad=True)  # behind
    colors = torch.rand(2, 3, dtype=F64, requires_grad=True)
    viewmats, Ks = _camera(16, 12, 20.0, n_cams=2)
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=F64)
    res = rasterize(means, torch.tensor([[1.0, 0, 0, 0]] * 2, dtype=F64), torch.full((2, 3), 0.3, dtype=F64),
                    torch.full((2,), 0.5, dtype=F64), colors, viewmats, Ks, 16, 12, background=bg,
                    backend="torch", chunk_pairs=1)
    assert not res.visible.any()
    torch.testing.assert_close(res.color, bg.expand(2, 12, 16, 3))
    assert (res.alpha == 0).all() and (res.depth == 0).all()
    (res.color.sum() + res.depth.sum()).backward()
    assert (means.grad == 0).all() and (colors.grad == 0).all()


def test_means2d_gradient_is_the_image_space_gradient():
    """Moving a Gaussian so its centre shifts by d pixels changes the loss by means2d.grad . d (1st order)."""
    size, focal, z = 21, 30.0, 4.0
    viewmats, Ks = _camera(size, size, focal)
    target = torch.zeros(1, size, size, 3, dtype=F64)
    target[0, :, 12:] = 1.0

    def loss_for(x: float):
        means = torch.tensor([[x, 0.0, z]], dtype=F64, requires_grad=True)
        res = rasterize(means, torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.full((1, 3), 0.3, dtype=F64),
                        torch.tensor([0.7], dtype=F64), torch.ones(1, 3, dtype=F64), viewmats, Ks, size, size,
                        backend="torch")
        return ((res.color - target) ** 2).sum(), res

    loss, res = loss_for(0.0)
    res.means2d.retain_grad()
    loss.backward()
    h = 1e-6  # world units; at the optical axis a shift dx moves the centre f/z dx pixels
    numeric = (loss_for(h)[0] - loss_for(-h)[0]) / (2 * h) / (focal / z)
    # the covariance also depends on x through the Jacobian, but only at second order on the axis
    assert float(res.means2d.grad[0, 0, 0]) == pytest.approx(float(numeric.detach()), rel=1e-6)
