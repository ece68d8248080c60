#!/usr/bin/env bash
# Set up the pinned environment (first run: about 3 minutes) and run the test suite on CPU in .venv; extra arguments
# go to pytest, e.g. `bash scripts/test.sh -m slow`. The offline MediaPipe backend (requirements/pose-offline.txt) is
# part of that environment, so its tests run in the same suite.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
.venv/bin/python -m pytest "$@"
status=$?
[ $status -eq 5 ] && { echo "no tests collected" >&2; status=1; }
exit $status
