#!/usr/bin/env bash
# Retrain the tiny demo model on CPU and write it to diffsynth/assets/demo_model/.
# Every stage uses this project's own code: synthetic data -> VAE -> data_process cache -> full DiT -> LoRA.
# Extra arguments go to `python -m tools.demo_model` (e.g. --work_dir, --out_dir, --full_steps 9000).
# The shipped model (its MODEL_CARD.md has the numbers) was made in two runs, about 2.5 h on 2 threads in all:
# 1. the one-figure demo model of commit 7da87a3, whose VAE fine-tuned the first demo model's (commit 84e026b):
#      git show 84e026b:diffsynth/assets/demo_model/Wan2.1_VAE.safetensors > outputs/first_demo_vae.safetensors
#      bash scripts/train_demo_model.sh --vae_init outputs/first_demo_vae.safetensors --vae_steps 600 --vae_lr 1e-3 \
#          --bystander_every 0 --work_dir outputs/run1 --out_dir outputs/one_figure_demo_model
#    (or take its result from git: mkdir -p outputs/one_figure_demo_model && git archive 7da87a3
#     diffsynth/assets/demo_model | tar -x --strip-components=3 -C outputs/one_figure_demo_model)
# 2. its DiT and pose guider fine-tuned on clips of which every 2nd has a bystander (its VAE, T5, CLIP reused):
#      bash scripts/train_demo_model.sh --init_from outputs/one_figure_demo_model --full_steps 4000 \
#          --work_dir outputs/run2 --out_dir diffsynth/assets/demo_model
# Without --vae_init, --vae_from or --init_from the VAE is trained from scratch (--vae_steps, default 2000: about
# 30 min more).
# A finished stage in --work_dir (default outputs/demo_model_training) is reused when the script is run again, and a
# training stage stopped with Ctrl-C or SIGTERM continues from its resumable checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export DEMO_THREADS=${DEMO_THREADS:-$OMP_NUM_THREADS}
exec "$PY" -m tools.demo_model "$@"
