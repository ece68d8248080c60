#!/usr/bin/env bash
# Set up the pinned environment and run the tiny end-to-end demo on CPU (random weights, writes an mp4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m diffsynth.demo "$@"
