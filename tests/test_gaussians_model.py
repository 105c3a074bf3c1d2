"""Gaussian container: .ply layout and round trip, initialisers, activation; SH constants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from pipeline.gaussians import GaussianModel, gaussians_from_points, random_gaussians
from pipeline.gaussians.sh import eval_sh_colors, rgb_to_sh, sh_basis, sh_to_rgb
from pipeline.io import PipelineError


def _model(n: int = 50, degree: int = 3) -> GaussianModel:
    g = torch.Generator().manual_seed(0)
    k = (degree + 1) ** 2
    return GaussianModel(means=torch.randn(n, 3, generator=g), quats=torch.randn(n, 4, generator=g),
                         log_scales=torch.randn(n, 3, generator=g) - 3,
                         opacity_logits=torch.randn(n, generator=g), sh=torch.randn(n, k, 3, generator=g))


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_round_trip_is_exact(tmp_path, degree):
    model = _model(degree=degree)
    path = tmp_path / "g.ply"
    model.save_ply(path)
    loaded = GaussianModel.load_ply(path)
    assert loaded.sh_degree == degree
    for name, tensor in model.tensors().items():
        assert torch.equal(getattr(loaded, name), tensor), name
    assert [p.name for p in tmp_path.iterdir()] == ["g.ply"]  # no temporary left behind


def test_ply_uses_the_3dgs_layout(tmp_path):
    model = _model(n=7, degree=3)
    model.save_ply(tmp_path / "g.ply")
    vertex = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    names = [p.name for p in vertex.properties]
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(45)] + ["opacity", "scale_0", "scale_1", "scale_2"]
                     + ["rot_0", "rot_1", "rot_2", "rot_3"])
    assert all(p.val_dtype in ("f4", "float32") for p in vertex.properties)
    sh = model.sh
    # channel-major f_rest: the 15 red coefficients of bands 1..3, then green, then blue
    np.testing.assert_array_equal(vertex["f_rest_0"], sh[:, 1, 0].numpy())
    np.testing.assert_array_equal(vertex["f_rest_14"], sh[:, 15, 0].numpy())
    np.testing.assert_array_equal(vertex["f_rest_15"], sh[:, 1, 1].numpy())
    np.testing.assert_array_equal(vertex["f_rest_44"], sh[:, 15, 2].numpy())
    np.testing.assert_array_equal(vertex["f_dc_2"], sh[:, 0, 2].numpy())
    np.testing.assert_array_equal(vertex["rot_0"], model.quats[:, 0].numpy())  # w first
    np.testing.assert_array_equal(vertex["scale_1"], model.log_scales[:, 1].numpy())
    np.testing.assert_array_equal(vertex["opacity"], model.opacity_logits.numpy())
    np.testing.assert_array_equal(vertex["nx"], np.zeros(7, np.float32))


def test_ply_errors_name_the_file(tmp_path):
    with pytest.raises(PipelineError, match="missing.ply"):
        GaussianModel.load_ply(tmp_path / "missing.ply")
    vertex = np.zeros(3, dtype=[(n, "f4") for n in ("x", "y", "z", "opacity")])
    path = tmp_path / "points.ply"
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(path))
    with pytest.raises(PipelineError, match=r"points\.ply.*missing vertex properties f_dc_0"):
        GaussianModel.load_ply(path)
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all")
    with pytest.raises(PipelineError, match="junk.ply"):
        GaussianModel.load_ply(tmp_path / "junk.ply")


def test_container_validates_shapes_and_activates():
    model = _model(n=5, degree=1)
    act = model.activated()
    torch.testing.assert_close(act.quats.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(act.scales, model.log_scales.exp())
    assert ((act.opacities > 0) & (act.opacities < 1)).all()
    with pytest.raises(ValueError, match="sh"):
        GaussianModel(model.means, model.quats, model.log_scales, model.opacity_logits, torch.zeros(5, 5, 3))
    with pytest.raises(ValueError, match="quats"):
        GaussianModel(model.means, model.quats[:, :3], model.log_scales, model.opacity_logits, model.sh)


def test_initialisers():
    g = torch.Generator().manual_seed(1)
    model = random_gaussians(300, (-1, -2, 3), (1, 2, 5), sh_degree=2, opacity=0.1, generator=g)
    act = model.activated()
    assert len(model) == 300 and model.sh.shape == (300, 9, 3)
    assert (act.means.min(0).values >= torch.tensor([-1, -2, 3])).all()
    assert (act.means.max(0).values <= torch.tensor([1, 2, 5])).all()
    torch.testing.assert_close(act.opacities, torch.full((300,), 0.1))
    assert (model.sh[:, 1:] == 0).all()
    rgb = sh_to_rgb(model.sh[:, 0])
    assert rgb.min() >= 0 and rgb.max() <= 1 and rgb.std() > 0.2  # random colours in the DC band
    # 3DGS scale init: RMS distance to the 3 nearest neighbours, isotropic
    points = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [10, 10, 10]])
    grey = gaussians_from_points(points)
    torch.testing.assert_close(grey.log_scales[0].exp(), torch.full((3,), math.sqrt((1 + 4 + 9) / 3)))
    torch.testing.assert_close(sh_to_rgb(grey.sh[:, 0]), torch.full((5, 3), 0.5))
    assert torch.equal(grey.quats[:, 0], torch.ones(5))


def test_sh_bands_satisfy_the_addition_theorem_and_3dgs_signs():
    dirs = torch.randn(100, 3, dtype=torch.float64)
    basis = sh_basis(3, dirs)
    for band in range(4):
        # sum_m Y_lm(d)^2 = (2l+1) / (4 pi) for any direction: checks every constant's magnitude
        torch.testing.assert_close((basis[:, band ** 2:(band + 1) ** 2] ** 2).sum(1),
                                   torch.full((100,), (2 * band + 1) / (4 * math.pi), dtype=torch.float64))
    # signs as in 3DGS: -C1 y, +C1 z, -C1 x along +x
    along_x = sh_basis(1, torch.tensor([[2.0, 0, 0]], dtype=torch.float64))[0]
    torch.testing.assert_close(along_x, torch.tensor([0.28209479177387814, 0, 0, -0.4886025119029199],
                                                     dtype=torch.float64))
    coeffs = torch.zeros(1, 4, 3)
    coeffs[0, 0] = rgb_to_sh(torch.tensor([0.2, 0.4, 0.6]))
    coeffs[0, 3, 0] = 1.0  # the x-band coefficient of red: red drops looking along +x
    torch.testing.assert_close(eval_sh_colors(1, coeffs, torch.tensor([[0.0, 0, 1]]))[0],
                               torch.tensor([0.2, 0.4, 0.6]))
    torch.testing.assert_close(eval_sh_colors(1, coeffs, torch.tensor([[1.0, 0, 0]]))[0],
                               torch.tensor([0.0, 0.4, 0.6]))  # 0.2 - 0.4886 clamped at 0
