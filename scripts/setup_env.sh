#!/usr/bin/env bash
# Create (or reuse) the project venv with the pinned CPU dependency set, the offline pose backend included
# (requirements/pose-offline.txt: MediaPipe with its bundled models, so poses need no download). Idempotent:
# reinstalls only when a requirements file changes. torch is installed first and pinned everywhere: an unpinned torch
# (or deepspeed, open_clip, timm) would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
stamp="$VENV/.requirements.sha256"
want="$(cat requirements/core.txt requirements/test.txt requirements/train.txt requirements/app.txt requirements/pose-offline.txt setup.py \
  | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  quiet() { "$@" 2>&1 | { grep -v -e "is ignored: it is neither" -e "^$" || true; }; }
  quiet "$VENV/bin/python" -m pip install -q torch==2.13.0
  quiet "$VENV/bin/python" -m pip install -q -r requirements/core.txt -r requirements/test.txt -r requirements/train.txt \
    -r requirements/app.txt -r requirements/pose-offline.txt
  quiet "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
  if "$VENV/bin/python" -m pip list 2>/dev/null | grep -q -i -e "^nvidia-" -e "^torch .*2\.14"; then
    echo "setup_env: a CUDA torch build slipped in; check the pins in requirements/" >&2; exit 1
  fi
  # opencv-python-headless and mediapipe's opencv-contrib-python (same version) share the cv2 folder: an upgrade of
  # one can remove files the other wrote, so check cv2 and rewrite it when it is broken.
  if ! "$VENV/bin/python" -c "import cv2; cv2.imencode('.png', __import__('numpy').zeros((2, 2), 'uint8'))" 2>/dev/null; then
    quiet "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps \
      "$(grep -i '^opencv-python-headless==' requirements/core.txt)"
  fi
  "$VENV/bin/python" -m pip check >/dev/null || { "$VENV/bin/python" -m pip check >&2; exit 1; }
  echo "$want" > "$stamp"
fi
