#!/usr/bin/env bash
# Set up the pinned environment and run the tiny end-to-end demo on CPU: the shipped demo model (trained on synthetic
# mannequins) animates a held-out clip -> outputs/demo.mp4 [reference | pose | generated]. --weights random: random models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m diffsynth.demo "$@"
