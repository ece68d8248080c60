#!/usr/bin/env bash
# Retrain the tiny demo model on CPU and write it to diffsynth/assets/demo_model/ (about 40 minutes on one thread).
# Every stage uses this project's own code: synthetic data -> VAE -> data_process cache -> full DiT -> LoRA.
# Extra arguments go to `python -m diffsynth.demo_model` (e.g. --work_dir, --out_dir, --full_steps 1400).
# A finished stage in --work_dir (default outputs/demo_model_training) is reused when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec "$PY" -m diffsynth.demo_model "$@"
