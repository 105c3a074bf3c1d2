"""Rasterizer speed: forward and forward+backward, printed as a markdown table.

CPU: the torch backend at 128x128 with 20k Gaussians on ``--threads`` threads (2 by default, the DESIGN
target is <= 0.3 s for forward+backward). CUDA (when present): the torch and gsplat backends at 512x512
with 100k Gaussians.

The scene: Gaussians uniform in a box filling the camera's view (depth 3..5), log-uniform scales giving
footprints of about 0.5-3.5 px standard deviation at 128 px, opacities sigmoid(N(0,1)), SH degree 3
colours; the "pairs/px" column is the mean number of Gaussians composited per pixel (alpha >= 1/255).

    python benchmarks/bench_rasterizer.py [--runs 7] [--threads 2] [--no-cuda]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from pipeline.gaussians import rasterize, resolve_backend
from pipeline.gaussians.torch_backend import count_pairs
from pipeline.io import PipelineError


def make_scene(n: int, size: int, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    focal = 200.0 * size / 128
    scene = {
        "means": torch.rand(n, 3, generator=g) * torch.tensor([2.6, 2.6, 2.0])
        + torch.tensor([-1.3, -1.3, 3.0]),
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.exp(torch.rand(n, 3, generator=g) * math.log(5.0) + math.log(0.01 * 128 / size)),
        "opacities": torch.sigmoid(torch.randn(n, generator=g)),
        "colors": torch.randn(n, 16, 3, generator=g) * 0.2,
        "viewmats": torch.eye(4)[None],
        "Ks": torch.tensor([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1.0]])[None],
    }
    return {k: v.to(device) for k, v in scene.items()}


def timed(fn: Callable[[], None], runs: int, cuda: bool) -> list[float]:
    for _ in range(2):  # warm-up: allocator, kernels, lazy initialisation
        fn()
    times = []
    for _ in range(runs):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def bench(backend: str, scene: dict, size: int, runs: int, cuda: bool) -> tuple[list[float], list[float]]:
    params = {k: v.clone().requires_grad_(k in ("means", "quats", "scales", "opacities", "colors"))
              for k, v in scene.items()}

    def render():
        return rasterize(params["means"], params["quats"], params["scales"], params["opacities"],
                         params["colors"], params["viewmats"], params["Ks"], size, size, sh_degree=3,
                         backend=backend)

    def forward():
        with torch.no_grad():
            render()

    def forward_backward():
        res = render()
        (res.color.sum() + res.alpha.sum()).backward()

    return timed(forward, runs, cuda), timed(forward_backward, runs, cuda)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per figure (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--no-cuda", action="store_true", help="skip the GPU part even if CUDA is present")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    cases = [("torch", "cpu", 128, 20_000)]
    if torch.cuda.is_available() and not args.no_cuda:
        cases.append(("torch", "cuda", 512, 100_000))
        try:
            resolve_backend("gsplat", torch.device("cuda"))
            cases.append(("gsplat", "cuda", 512, 100_000))
        except PipelineError as err:
            print(f"(gsplat skipped: {err})\n")

    print("| backend | device | image | Gaussians | pairs/px | forward ms (median) | fwd+bwd ms (median) "
          "| fwd+bwd ms (min) |")
    print("|---|---|---|---|---|---|---|---|")
    for backend, device, size, n in cases:
        scene = make_scene(n, size, device)
        fwd, fwd_bwd = bench(backend, scene, size, args.runs, device == "cuda")
        where = f"{device} ({args.threads} threads)" if device == "cpu" else torch.cuda.get_device_name()
        pairs = count_pairs(*(scene[k] for k in ("means", "quats", "scales", "opacities", "viewmats", "Ks")),
                            size, size) / size ** 2
        print(f"| {backend} | {where} | {size}x{size} | {n} | {pairs:.1f} "
              f"| {1e3 * statistics.median(fwd):.1f} | {1e3 * statistics.median(fwd_bwd):.1f} "
              f"| {1e3 * min(fwd_bwd):.1f} |", flush=True)


if __name__ == "__main__":
    main()
