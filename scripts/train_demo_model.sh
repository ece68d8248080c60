#!/usr/bin/env bash
# Retrain the tiny demo model on CPU and write it to diffsynth/assets/demo_model/ (the shipped one: about 1.5 h on
# 2 threads, counting its VAE's first training).
# Every stage uses this project's own code: synthetic data -> VAE -> data_process cache -> full DiT -> LoRA.
# Extra arguments go to `python -m diffsynth.demo_model` (e.g. --work_dir, --out_dir, --full_steps 9000).
# The shipped model fine-tuned the first demo model's VAE (commit 84e026b); to reproduce it:
#   git show 84e026b:diffsynth/assets/demo_model/Wan2.1_VAE.safetensors > outputs/first_demo_vae.safetensors
#   bash scripts/train_demo_model.sh --vae_init outputs/first_demo_vae.safetensors --vae_steps 600 --vae_lr 1e-3 \
#       --out_dir outputs/demo_model
# Without --vae_init (or --vae_from) the VAE is trained from scratch (--vae_steps, default 2000: about 30 min more).
# A finished stage in --work_dir (default outputs/demo_model_training) is reused when the script is run again, and a
# training stage stopped with Ctrl-C or SIGTERM continues from its resumable checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export DEMO_THREADS=${DEMO_THREADS:-$OMP_NUM_THREADS}
exec "$PY" -m diffsynth.demo_model "$@"
