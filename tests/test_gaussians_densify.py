"""Adaptive density control: gradient accumulation, clone/split/prune/reset, optimizer-state surgery."""

from __future__ import annotations

import io
import logging
import math

import pytest
import torch
from torch import Tensor

from pipeline.gaussians import GaussianModel, RasterResult, rasterize
from pipeline.gaussians.densify import DensifyConfig, Densifier, DensifyState, PerGaussianGroups
from pipeline.io import PipelineError

LOG = "pipeline.gaussians.densify"


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _model(means, scales, opacities, quats=None, dtype=torch.float32) -> GaussianModel:
    """Leaf GaussianModel (SH degree 0): means [N,3], per-axis linear scales [N,3] or [N], opacities [N]."""
    means = torch.as_tensor(means, dtype=dtype)
    n = means.shape[0]
    scales = torch.as_tensor(scales, dtype=dtype)
    scales = scales[:, None].expand(n, 3) if scales.dim() == 1 else scales
    if quats is None:
        quats = torch.tensor([1.0, 0, 0, 0], dtype=dtype).repeat(n, 1)
    g = torch.Generator().manual_seed(7)
    return GaussianModel(means=means.clone(), quats=torch.as_tensor(quats, dtype=dtype).clone(),
                         log_scales=scales.log().clone(),
                         opacity_logits=torch.logit(torch.as_tensor(opacities, dtype=dtype)).clone(),
                         sh=torch.randn(n, 1, 3, generator=g, dtype=dtype)).requires_grad_()


def _adam(model: GaussianModel, extra: dict[str, Tensor] | None = None) -> torch.optim.Adam:
    groups = [{"params": [t], "name": name, "lr": 1e-2} for name, t in model.tensors().items()]
    groups += [{"params": [t], "name": name, "lr": 1e-2} for name, t in (extra or {}).items()]
    return torch.optim.Adam(groups)


def _init_moments(optimizer: torch.optim.Adam) -> None:
    """Create Adam state with a zero-gradient step (values unchanged), then give every row distinct moments:
    exp_avg row i = i + 1 (+0.5 in exp_avg_sq), so rows can be followed through the surgery."""
    for group in optimizer.param_groups:
        group["params"][0].grad = torch.zeros_like(group["params"][0])
    optimizer.step()
    for group in optimizer.param_groups:
        p = group["params"][0]
        rows = torch.arange(1, p.shape[0] + 1, dtype=p.dtype).reshape(-1, *[1] * (p.dim() - 1))
        optimizer.state[p]["exp_avg"].copy_(rows.expand_as(p))
        optimizer.state[p]["exp_avg_sq"].copy_((rows + 0.5).expand_as(p))
        p.grad = None


def _fake_result(grad: Tensor, radii: Tensor) -> RasterResult:
    """RasterResult with a means2d whose .grad is ``grad`` [C,N,2] (pixels), radii [C,N]."""
    c, n, _ = grad.shape
    means2d = torch.zeros(c, n, 2, dtype=grad.dtype, device=grad.device, requires_grad=True)
    means2d.grad = grad.clone()
    empty = torch.zeros(c, 1, 1, 1, dtype=grad.dtype, device=grad.device)
    radii = radii.to(grad.device, torch.int32)
    return RasterResult(color=empty, alpha=empty, depth=empty, extra=None, means2d=means2d, radii=radii,
                        visible=radii > 0, depths=torch.ones(c, n, device=grad.device), backend="torch")


def _grads(per_gaussian: list[float], width: int = 100, height: int = 100, device: str = "cpu") -> RasterResult:
    """One camera, each Gaussian visible (radius 2 px) with NDC gradient norm ``per_gaussian[i]``."""
    g = torch.tensor(per_gaussian, dtype=torch.float64, device=device)
    pixel = torch.stack((g / (width / 2), torch.zeros_like(g)), dim=-1)[None]
    return _fake_result(pixel, torch.full((1, len(per_gaussian)), 2))


def _densify_once(model, optimizer, grads, iteration=500, scene_scale=1.0, generator=None, **cfg):
    densifier = Densifier(DensifyConfig(**cfg), scene_scale=scene_scale)
    densifier.accumulate(_grads(grads), 100, 100)
    return densifier, *densifier.step(iteration, model, optimizer, generator)


def test_accumulate_uses_visible_gaussians_and_ndc_units():
    width, height = 40, 20
    grad = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [0.5, 0.5]],
                         [[2.0, 0.0], [9.0, 9.0], [0.0, 4.0]]])  # [C=2,N=3,2] pixel gradients
    radii = torch.tensor([[3, 0, 8], [5, 0, 2]])  # Gaussian 1 is culled in both views
    densifier = Densifier(DensifyConfig(), scene_scale=1.0)
    densifier.accumulate(_fake_result(grad, radii), width, height)
    densifier.accumulate(_fake_result(grad, torch.tensor([[0, 0, 0], [1, 0, 0]])), width, height)
    st = densifier.state

    def ndc(gx, gy):
        return math.hypot(gx * width / 2, gy * height / 2)

    expected = [ndc(1, 2) + ndc(2, 0) + ndc(2, 0), 0.0, ndc(0.5, 0.5) + ndc(0, 4)]
    torch.testing.assert_close(st.grad_sum, torch.tensor(expected))
    assert st.count.tolist() == [3, 0, 2]
    torch.testing.assert_close(st.max_radius, torch.tensor([5, 0, 8]) / 40.0)


def test_accumulate_counts_only_the_model_rendered_first():
    """``count``: a render of the model followed by other Gaussians (fine's mouth interior) feeds only the
    model's first ``count`` rows."""
    with_others = _grads([1.0, 2.0, 5.0, 5.0])
    densifier = Densifier(DensifyConfig(), scene_scale=1.0)
    densifier.accumulate(with_others, 100, 100, count=2)
    alone = Densifier(DensifyConfig(), scene_scale=1.0)
    alone.accumulate(_grads([1.0, 2.0]), 100, 100)
    assert len(densifier.state) == 2
    torch.testing.assert_close(densifier.state.grad_sum, alone.state.grad_sum)
    assert densifier.state.count.tolist() == [1, 1]


def test_accumulate_from_a_rendered_scene_skips_culled_gaussians():
    width, height = 24, 16
    means = torch.tensor([[0.0, 0.0, 3.0], [0.2, 0.1, 4.0], [0.0, 0.0, -2.0]], dtype=torch.float64)
    model = _model(means, [0.1, 0.2, 0.1], [0.8, 0.7, 0.9], dtype=torch.float64)
    a = model.activated()
    K = torch.tensor([[[20.0, 0, width / 2], [0, 20.0, height / 2], [0, 0, 1]]], dtype=torch.float64)
    res = rasterize(a.means, a.quats, a.scales, a.opacities, a.sh[:, 0], torch.eye(4, dtype=torch.float64)[None], K,
                    width, height, backend="torch")
    res.means2d.retain_grad()
    (res.color * torch.linspace(0, 1, width, dtype=torch.float64)[:, None]).sum().backward()
    densifier = Densifier(DensifyConfig(), scene_scale=1.0)
    densifier.accumulate(res, width, height)

    assert res.radii[0].tolist()[2] == 0 and res.radii[0, :2].min() > 0  # behind the camera: culled
    ndc = res.means2d.grad[0] * torch.tensor([width / 2, height / 2], dtype=torch.float64)
    assert ndc[:2].norm(dim=-1).min() > 0
    torch.testing.assert_close(densifier.state.grad_sum[:2], ndc[:2].norm(dim=-1))
    assert densifier.state.grad_sum[2] == 0 and densifier.state.count.tolist() == [1, 1, 0]
    torch.testing.assert_close(densifier.state.max_radius, res.radii[0].double() / width)


def test_accumulate_without_retained_grad_is_an_error():
    result = _fake_result(torch.zeros(1, 2, 2), torch.tensor([[1, 0]]))
    result.means2d.grad = None
    with pytest.raises(RuntimeError, match="retain_grad"):
        Densifier(DensifyConfig(), scene_scale=1.0).accumulate(result, 10, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_high_gradient_gaussians_are_cloned_large_ones_split(dtype):
    quat = [math.cos(math.pi / 8), 0, 0, math.sin(math.pi / 8)]  # 45 degrees about z
    model = _model([[0, 0, 0], [1, 2, 3], [5, 5, 5]], [[0.005, 0.003, 0.004], [0.2, 0.05, 0.1], [0.005] * 3],
                   [0.5, 0.6, 0.7], quats=[[1, 0, 0, 0], quat, [1, 0, 0, 0]], dtype=dtype)
    original = model.map(lambda t: t.detach().clone())
    opt = _adam(model)
    gen = torch.Generator().manual_seed(3)
    densifier, new, counts = _densify_once(model, opt, [0.001, 0.001, 0.0001], scene_scale=2.0, generator=gen)

    assert counts == {"cloned": 1, "split": 1, "pruned": 0, "reset": 0}
    assert len(new) == 5 and len(densifier.state) == 5 and densifier.state.count.sum() == 0
    assert new.means.dtype == dtype
    # survivors in order (0, 2), then the clone of 0, then the two children of 1
    for name, t in new.tensors().items():
        torch.testing.assert_close(t[:2], getattr(original, name)[[0, 2]], msg=name)
        torch.testing.assert_close(t[2], getattr(original, name)[0], msg=name)
    children = slice(3, 5)
    torch.testing.assert_close(new.log_scales[children], (original.log_scales[1] - math.log(1.6)).expand(2, 3))
    for name in ("quats", "opacity_logits", "sh"):
        torch.testing.assert_close(getattr(new, name)[children], getattr(original, name)[[1, 1]])
    # children sampled from the parent's Gaussian: offset = R (scale * z), z ~ N(0, I) from the generator
    z = torch.randn(2, 1, 3, generator=torch.Generator().manual_seed(3), dtype=dtype)[:, 0]
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)
    rot = torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=dtype)
    expected = original.means[1] + (z * torch.tensor([0.2, 0.05, 0.1], dtype=dtype)) @ rot.T
    torch.testing.assert_close(new.means[children], expected)


def test_split_children_follow_the_parent_covariance():
    n = 1500
    quat = [math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]  # 90 degrees about z: long axis x -> y
    model = _model(torch.zeros(n, 3), torch.tensor([[0.2, 0.02, 0.05]]).expand(n, 3), torch.full((n,), 0.5),
                   quats=torch.tensor([quat]).expand(n, 4))
    _, new, counts = _densify_once(model, _adam(model), [1.0] * n, generator=torch.Generator().manual_seed(0))
    assert counts["split"] == n and len(new) == 2 * n
    std = new.means.detach().std(dim=0)
    torch.testing.assert_close(std, torch.tensor([0.02, 0.2, 0.05]), rtol=0.06, atol=0)
    assert new.means[:n].sub(new.means[n:]).abs().amin() > 0  # the two children of a parent differ


def test_low_opacity_gaussians_are_pruned():
    model = _model(torch.arange(12.0).reshape(4, 3), [0.005] * 4, [0.001, 0.5, 0.004, 0.9])
    _, new, counts = _densify_once(model, _adam(model), [0.0] * 4)
    assert counts == {"cloned": 0, "split": 0, "pruned": 2, "reset": 0}
    torch.testing.assert_close(new.means, torch.tensor([[3.0, 4, 5], [9, 10, 11]]))


@pytest.mark.parametrize("iteration, pruned", [(1000, 0), (3000, 0), (3100, 2)])
def test_oversized_gaussians_are_pruned_only_after_the_first_reset(iteration, pruned):
    # 0: too big in 3D (0.5 > 0.1 * scene_scale 2); 1: fine in 3D but 20 px of a 100 px image > 0.15; 2: fine
    model = _model(torch.zeros(3, 3), [0.5, 0.1, 0.1], [0.5, 0.5, 0.5])
    densifier = Densifier(DensifyConfig(), scene_scale=2.0)
    densifier.accumulate(_fake_result(torch.zeros(1, 3, 2), torch.tensor([[5, 20, 10]])), 100, 50)
    new, counts = densifier.step(iteration, model, _adam(model))
    assert counts["pruned"] == pruned and len(new) == 3 - pruned
    if pruned:
        torch.testing.assert_close(new.log_scales, model.log_scales[2:].detach())


def test_never_prunes_every_gaussian(caplog):
    model = _model(torch.zeros(3, 3), [0.005] * 3, [0.001, 0.003, 0.002])
    with caplog.at_level(logging.WARNING, logger=LOG):
        _, new, counts = _densify_once(model, _adam(model), [0.0] * 3)
    assert len(new) == 1 and counts["pruned"] == 2
    torch.testing.assert_close(new.opacity_logits, model.opacity_logits[1:2].detach())
    assert "every Gaussian" in caplog.text


def test_optimizer_moments_follow_their_gaussians_and_new_rows_start_at_zero():
    # 0: pruned; 1: cloned; 2: kept; 3: split
    model = _model(torch.arange(12.0).reshape(4, 3), [0.005, 0.005, 0.005, 0.5], [0.001, 0.5, 0.5, 0.5])
    opt = _adam(model)
    _init_moments(opt)
    steps = {g["name"]: opt.state[g["params"][0]]["step"].clone() for g in opt.param_groups}
    _, new, counts = _densify_once(model, opt, [0.0, 1.0, 0.0, 1.0], generator=torch.Generator().manual_seed(0))
    assert counts == {"cloned": 1, "split": 1, "pruned": 1, "reset": 0}
    assert len(new) == 5  # originals 1, 2; clone of 1; two children of 3
    for group in opt.param_groups:
        p = group["params"][0]
        assert p is getattr(new, group["name"])
        state = opt.state[p]
        view = (-1,) + (1,) * (p.dim() - 1)
        expected = torch.tensor([2.0, 3, 0, 0, 0]).reshape(view).expand_as(p)
        torch.testing.assert_close(state["exp_avg"], expected)
        torch.testing.assert_close(state["exp_avg_sq"], torch.where(expected > 0, expected + 0.5, 0.0))
        assert torch.equal(state["step"], steps[group["name"]])
    assert len(opt.state) == len(opt.param_groups)  # no state left behind for the old tensors


def test_optimizer_steps_the_new_tensors_after_densification():
    model = _model(torch.arange(12.0).reshape(4, 3), [0.005, 0.005, 0.005, 0.5], [0.001, 0.5, 0.5, 0.5])
    opt = _adam(model)
    _init_moments(opt)
    _, new, _ = _densify_once(model, opt, [0.0, 1.0, 0.0, 1.0], generator=torch.Generator().manual_seed(0))
    before = new.map(lambda t: t.detach().clone())
    sum(t.square().sum() for t in new.tensors().values()).backward()
    opt.step()
    for name, t in new.tensors().items():
        assert t.is_leaf and t.requires_grad
        assert (t != getattr(before, name)).any(), name
        assert opt.state[t]["exp_avg"].shape == t.shape
    # new rows start from zero moments under the group's step count (now 2): |update| = lr * m_hat / sqrt(v_hat)
    step = 2
    expected = 1e-2 * (0.1 / (1 - 0.9**step)) / math.sqrt(0.001 / (1 - 0.999**step))
    torch.testing.assert_close((before.means[2:] - new.means[2:]).abs(), torch.full((3, 3), expected), rtol=1e-4,
                               atol=0)


def test_opacity_reset_clamps_to_twice_the_prune_threshold():
    model = _model(torch.zeros(3, 3), [0.005] * 3, [0.008, 0.5, 0.95])
    opt = _adam(model)
    _init_moments(opt)
    densifier = Densifier(DensifyConfig(start=10_000), scene_scale=1.0)  # reset only, no densification
    new, counts = densifier.step(3000, model, opt)
    assert counts == {"cloned": 0, "split": 0, "pruned": 0, "reset": 1}
    torch.testing.assert_close(torch.sigmoid(new.opacity_logits.detach()), torch.tensor([0.008, 0.01, 0.01]))
    assert not opt.state[new.opacity_logits]["exp_avg"].any()
    assert opt.state[new.means]["exp_avg"].all()  # other groups keep their moments


def test_schedule():
    cfg = DensifyConfig(start=500, stop=1000, every=100, reset_every=700)
    model = _model(torch.zeros(2, 3), [0.005] * 2, [0.001, 0.5])
    opt = _adam(model)
    densifier = Densifier(cfg, scene_scale=1.0)
    ran = []
    for iteration in range(0, 1400, 50):
        new, counts = densifier.step(iteration, model, opt)
        if new is not model:
            ran.append((iteration, counts["pruned"], counts["reset"]))
        model = new
    # densify at 500..1000 every 100 (only 500 had something to prune), reset at 700; nothing after stop
    assert ran == [(500, 1, 0), (600, 0, 0), (700, 0, 1), (800, 0, 0), (900, 0, 0), (1000, 0, 0)]
    assert len(model) == 1


def test_stale_model_is_rejected():
    model = _model(torch.zeros(2, 3), [0.005] * 2, [0.5, 0.5])
    opt = _adam(model)
    _, new, _ = _densify_once(model, opt, [1.0, 1.0])
    with pytest.raises(ValueError, match="not the optimizer's"):
        Densifier(DensifyConfig(), scene_scale=1.0).step(500, model, opt)


def test_state_dict_round_trip_reproduces_the_step_exactly():
    g = torch.Generator().manual_seed(1)
    n = 40
    model = _model(torch.randn(n, 3, generator=g), torch.rand(n, 3, generator=g) * 0.02,
                   torch.rand(n, generator=g) * 0.9 + 0.001, quats=torch.randn(n, 4, generator=g))
    copy = model.map(lambda t: t.detach().clone()).requires_grad_()
    opt, opt_copy = _adam(model), _adam(copy)
    _init_moments(opt)
    _init_moments(opt_copy)
    densifier = Densifier(DensifyConfig(), scene_scale=1.0)
    for _ in range(3):
        grad = torch.randn(2, n, 2, generator=g) * 0.02
        densifier.accumulate(_fake_result(grad, torch.randint(0, 11, (2, n), generator=g)), 64, 48)

    buffer = io.BytesIO()
    torch.save(densifier.state_dict(), buffer)
    buffer.seek(0)
    restored = Densifier(DensifyConfig(), scene_scale=1.0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))

    a, counts_a = densifier.step(3100, model, opt, torch.Generator().manual_seed(5))
    b, counts_b = restored.step(3100, copy, opt_copy, torch.Generator().manual_seed(5))
    assert counts_a == counts_b and counts_a["cloned"] and counts_a["split"] and counts_a["pruned"]
    for name in a.tensors():
        assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert torch.equal(opt.state[getattr(a, name)]["exp_avg"], opt_copy.state[getattr(b, name)]["exp_avg"])


def test_state_dict_is_a_copy_and_bad_state_is_rejected():
    st = DensifyState()
    st.reset(3, torch.device("cpu"), torch.float32)
    saved = st.state_dict()
    st.grad_sum += 1
    assert not saved["grad_sum"].any()
    with pytest.raises(PipelineError):
        DensifyState().load_state_dict({"grad_sum": torch.zeros(3), "count": torch.zeros(2)})


def test_growth_stops_at_max_gaussians(caplog):
    n = 10
    model = _model(torch.arange(3.0 * n).reshape(n, 3), [0.005] * n, [0.5] * n)
    opt = _adam(model)
    densifier = Densifier(DensifyConfig(max_gaussians=14), scene_scale=1.0)
    with caplog.at_level(logging.INFO, logger=LOG):
        densifier.accumulate(_grads([0.01 * (i + 1) for i in range(n)]), 100, 100)
        new, counts = densifier.step(500, model, opt)
        densifier.accumulate(_grads([1.0] * 14), 100, 100)
        new, counts2 = densifier.step(600, new, opt)
    assert counts["cloned"] == 4 and counts2["cloned"] == 0 and len(new) == 14
    torch.testing.assert_close(new.means[10:], model.means[6:].detach())  # the highest gradients won
    assert sum("max_gaussians=14" in r.getMessage() for r in caplog.records) == 1


def test_extra_per_gaussian_group_is_kept_in_sync():
    # 0: pruned; 1: cloned; 2: kept; 3: split
    model = _model(torch.arange(12.0).reshape(4, 3), [0.005, 0.005, 0.005, 0.5], [0.001, 0.5, 0.5, 0.5])
    dynamism = torch.tensor([[10.0], [11.0], [12.0], [13.0]], requires_grad=True)
    opt = _adam(model, {"dynamism": dynamism})
    _init_moments(opt)
    densifier = Densifier(DensifyConfig(), scene_scale=1.0, per_gaussian={*model.tensors(), "dynamism"})
    densifier.accumulate(_grads([0.0, 1.0, 0.0, 1.0]), 100, 100)
    new, _ = densifier.step(500, model, opt, torch.Generator().manual_seed(0))
    groups = PerGaussianGroups(opt, {"dynamism"})
    dyn = groups.params()["dynamism"]
    assert dyn is not dynamism and dyn.is_leaf and dyn.requires_grad
    assert dyn.detach()[:, 0].tolist() == [11.0, 12.0, 11.0, 13.0, 13.0]
    assert opt.state[dyn]["exp_avg"][:, 0].tolist() == [2.0, 3.0, 0.0, 0.0, 0.0]
    # a group not named per-Gaussian is left alone
    other = torch.zeros(4, requires_grad=True)
    opt2 = _adam(model.map(lambda t: t.detach().clone()).requires_grad_(), {"global": other})
    m2 = PerGaussianGroups(opt2, densifier.per_gaussian).model()
    Densifier(DensifyConfig(), scene_scale=1.0).step(500, m2, opt2)
    assert opt2.param_groups[-1]["params"][0] is other


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_with_a_cpu_generator():
    model = _model([[0, 0, 0], [1, 2, 3]], [0.005, 0.5], [0.5, 0.001]).map(lambda t: t.detach().cuda())
    opt = _adam(model.requires_grad_())
    _init_moments(opt)
    densifier = Densifier(DensifyConfig(), scene_scale=1.0)
    densifier.accumulate(_grads([1.0, 1.0], device="cuda"), 100, 100)
    new, counts = densifier.step(500, model, opt, torch.Generator().manual_seed(0))
    assert counts == {"cloned": 1, "split": 1, "pruned": 2, "reset": 0}  # the split children keep opacity 0.001
    assert new.means.is_cuda and len(new) == 2
    sum(t.square().sum() for t in new.tensors().values()).backward()
    opt.step()
