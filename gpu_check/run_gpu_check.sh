#!/usr/bin/env bash
# The GPU check on a machine that reaches no package registry (docs/gpu-check.md):
#   bash gpu_check/run_gpu_check.sh OUT_DIR [TIME_LIMIT_SECONDS]
# Installs .gpu_bundle (python gpu_check/prepare_gpu_bundle.py made it) beside the image's packages, offline, then
# runs gpu_check/gpu_check.py, which writes gpu_check.json and gpu_check.md to OUT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bash gpu_check/run_gpu_check.sh OUT_DIR [TIME_LIMIT_SECONDS]}
site=$(mktemp -d)
python3 -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --target "$site" .gpu_bundle/*.whl
export PYTHONPATH="$site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 WANDB_MODE=disabled
python3 gpu_check/gpu_check.py --device cuda --output-dir "$out" --time-limit "${2:-480}"
