"""How well the fine model's audio path alone predicts the mouth on the test split, over seeds.

    python benchmarks/bench_audio_path.py --subject results/macron [--extractor whisper] [--seeds 0 1 2 3]
        [--steps 3000] [--set '{"model": {"resolution": 32, "audio_encoder": "network"}}']
    python benchmarks/bench_audio_path.py --subject results/macron --models a/fine.pt b/fine.pt

The lip sync of a trained fine model on unseen audio follows how well its audio code predicts the mouth:
the code's mouth-shape readout (train_fine's ``lambda_shape`` term) on the test split. Training mode takes
the stage's audio path (encoder, temporal attention, code norm, readout; :class:`AudioPlaneDeformer`) with
the stage's optimiser and rate schedule (:func:`pipeline.fine.network_optimizer`, the ``cpu`` preset's fine
settings plus ``--set``) and trains it on that readout alone, ``shape_batch`` training frames a step (~1 min
a seed on one core, against ~20 min for the stage), once per seed; with ``model.audio_encoder: ridge`` (the
``cpu`` preset's; ``--set '{"model": {"resolution": 32, "audio_encoder": "network"}}'`` for the learnt one) the
closed-form encoder is fitted once (it has no seed). ``--models`` reads the readout of trained
``fine.pt`` files instead. Either prints, per seed or model, Pearson r of the predicted aperture against the
face mesh's on the test frames, r of frame-to-frame differences, and r on the training frames; then the
mean, min and max over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import landmarks as lmk  # noqa: E402
from pipeline.audio_ridge import fit_ridge  # noqa: E402
from pipeline.audioplane import AudioPlaneDeformer, TalkingHead  # noqa: E402
from pipeline.fine import FineConfig, network_optimizer, rate_decay, standard_mouth_shape  # noqa: E402
from pipeline.paths import SubjectPaths  # noqa: E402
from pipeline.split import audio_safe_train_frames, train_test_split  # noqa: E402

from benchmarks import preset_settings  # noqa: E402


def correlations(predicted: np.ndarray, truth: np.ndarray, test: list[int], train: list[int]) -> dict[str, float]:
    def r(a: np.ndarray, b: np.ndarray) -> float:
        return round(float(np.corrcoef(a, b)[0, 1]), 3)

    return {"test r": r(predicted[test], truth[test]),
            "diff r": r(np.diff(predicted[test]), np.diff(truth[test])),
            "train r": r(predicted[train], truth[train])}


def train_readout(features: torch.Tensor, shape: torch.Tensor, frames: list[int], config: FineConfig,
                  steps: int) -> AudioPlaneDeformer:
    """The audio path trained on the mouth-shape readout alone (z-scored ``shape`` [N, 3]), at the stage's
    rates and their decay over ``steps``."""
    config = replace(config, iterations=steps)
    torch.manual_seed(config.seed)
    model = replace(config.model, audio_channels=features.shape[2], window=features.shape[1])
    deformer = AudioPlaneDeformer(model, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    optimizer = network_optimizer(deformer, config)  # grids and decoders get no gradient here, so stay put
    generator = torch.Generator().manual_seed(config.seed)
    pool = torch.tensor(frames)
    for step in range(1, steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = group["base"] * rate_decay(config, step)
        picks = pool[torch.randint(len(pool), (config.shape_batch,), generator=generator)]
        codes = deformer.code(features[deformer.neighbour_indices(picks, len(features))])
        loss = F.mse_loss(deformer.mouth_shape(codes), shape[picks])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return deformer.eval()


def fit_ridge_readout(features: torch.Tensor, shape: torch.Tensor, frames: list[int], config: FineConfig
                      ) -> AudioPlaneDeformer:
    """The ridge encoder (``model.audio_encoder: ridge``) fitted as train_fine fits it, on the mouth shape alone
    (each output is solved apart, so appearance outputs would not change the shape's)."""
    model = replace(config.model, audio_channels=features.shape[2], window=features.shape[1], ridge_appearance=0)
    deformer = AudioPlaneDeformer(model, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    picked = torch.tensor(frames)
    context = deformer.ridge_inputs(features[deformer.neighbour_indices(picked, len(features))])
    deformer.ridge.load_fit(fit_ridge(context.reshape(len(picked), -1).numpy(), shape[picked].numpy(),
                                      gap=model.audio_reach))
    return deformer.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subject", type=Path, required=True, help="results/{subject}")
    parser.add_argument("--extractor", default="whisper")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--set", default="{}", help="JSON overrides of the cpu preset's fine settings")
    parser.add_argument("--models", type=Path, nargs="*", help="trained fine.pt files: read their readout")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    paths = SubjectPaths(args.subject)
    features = torch.from_numpy(np.load(paths.audio_features(args.extractor)).astype(np.float32))
    n = len(features)
    shape = lmk.mouth_shape(lmk.load_landmarks(paths.landmarks, n))
    train, test = train_test_split(n)
    z = torch.tensor(standard_mouth_shape(shape, train), dtype=torch.float32)
    aperture = shape[:, 0]

    rows = []
    if args.models:
        for path in args.models:
            head = TalkingHead.load(path)
            with torch.no_grad():
                predicted = head.deformer.shape_readout(head.audio_codes(features))[:, 0].numpy()
            rows.append({"model": str(path), **correlations(predicted, aperture, test, train)})
            print(json.dumps(rows[-1]), flush=True)
    else:
        settings = {**preset_settings("cpu", "fine"), **json.loads(args.set)}
        base = FineConfig.from_dict(settings)
        reach = replace(base.model, window=features.shape[1]).audio_reach
        frames = audio_safe_train_frames(train, test, reach)
        ridge = base.model.audio_encoder == "ridge"
        for seed in args.seeds[:1] if ridge else args.seeds:  # the ridge has no seed
            if ridge:
                deformer = fit_ridge_readout(features, z, frames, base)
            else:
                deformer = train_readout(features, z, frames, replace(base, seed=seed), args.steps)
            with torch.no_grad():
                predicted = deformer.shape_readout(deformer.codes(features, torch.arange(n)))[:, 0].numpy()
            rows.append({"seed": seed, **correlations(predicted, aperture, test, train)})
            print(json.dumps(rows[-1]), flush=True)
    r = np.array([row["test r"] for row in rows])
    trained = {} if args.models else {"set": json.loads(args.set), "steps": args.steps}
    print(json.dumps({"subject": args.subject.name, **trained, "test r mean": round(float(r.mean()), 3),
                      "min": float(r.min()), "max": float(r.max()),
                      "diff r mean": round(float(np.mean([row["diff r"] for row in rows])), 3)}))


if __name__ == "__main__":
    main()
