#!/usr/bin/env bash
# Retrain the tiny demo model on CPU and write it to diffsynth/assets/demo_model/ (about an hour on 2 threads).
# Every stage uses this project's own code: synthetic data -> VAE -> data_process cache -> full DiT -> LoRA.
# Extra arguments go to `python -m diffsynth.demo_model` (e.g. --work_dir, --out_dir, --full_steps 9000).
# The shipped model reused the first demo model's VAE; to reproduce it, pass that file:
#   bash scripts/train_demo_model.sh --vae_from diffsynth/assets/demo_model/Wan2.1_VAE.safetensors --out_dir outputs/demo_model
# A finished stage in --work_dir (default outputs/demo_model_training) is reused when the script is run again, and a
# training stage stopped with Ctrl-C continues from its resumable checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export DEMO_THREADS=${DEMO_THREADS:-$OMP_NUM_THREADS}
exec "$PY" -m diffsynth.demo_model "$@"
