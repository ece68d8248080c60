#!/usr/bin/env bash
# The optional offline pose backend (mediapipe 0.10.21) pins numpy<2 and protobuf<5, so it lives in its own venv,
# .venv-mediapipe, without torch (diffsynth.pose does not need it). Idempotent, like setup_env.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${MEDIAPIPE_VENV:-.venv-mediapipe}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
stamp="$VENV/.requirements.sha256"
want="$(sha256sum requirements/pose-offline.txt | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$VENV/bin/python" -m pip install -q -r requirements/pose-offline.txt 2>&1 \
    | { grep -v -e "is ignored: it is neither" -e "^$" || true; }
  if "$VENV/bin/python" -m pip list 2>/dev/null | grep -q -i -e "^torch " -e "^nvidia-"; then
    echo "setup_mediapipe_env: torch slipped into $VENV; check requirements/pose-offline.txt" >&2; exit 1
  fi
  echo "$want" > "$stamp"
fi
