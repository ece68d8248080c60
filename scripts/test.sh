#!/usr/bin/env bash
# Set up the pinned environments (first run: about 3 minutes) and run the test suite on CPU:
#   1. the main suite in .venv (extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow`);
#   2. the pose tests again in .venv-mediapipe, where the offline MediaPipe backend is installed
#      (skip with DIFFSYNTH_TEST_MEDIAPIPE=0).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
.venv/bin/python -m pytest "$@"
status=$?
[ $status -eq 5 ] && { echo "no tests collected" >&2; status=1; }
if [ "${DIFFSYNTH_TEST_MEDIAPIPE:-1}" != "0" ]; then
  echo "--- pose tests with the MediaPipe backend (.venv-mediapipe) ---"
  if ! bash scripts/setup_mediapipe_env.sh; then
    # mediapipe 0.10.21 has wheels for Python 3.9-3.12 only; elsewhere skip, except in CI where it must work.
    if [ "${CI:-}" = "true" ]; then exit 1; fi
    echo "warning: could not set up .venv-mediapipe; MediaPipe backend tests skipped" >&2
    exit $status
  fi
  # --confcutdir keeps tests/conftest.py (which imports torch) out of this torch-free venv.
  .venv-mediapipe/bin/python -m pytest tests/pose --confcutdir=tests/pose -p no:cacheprovider
  mp_status=$?
  [ $mp_status -ne 0 ] && status=$mp_status
fi
exit $status
