#!/usr/bin/env bash
# Set up the pinned environment (first run: about 2 minutes) and run the test suite on CPU.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the slow checks.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh || exit 1
.venv/bin/python -m pytest "$@"
status=$?
[ $status -eq 5 ] && { echo "no tests collected" >&2; exit 1; }
exit $status
