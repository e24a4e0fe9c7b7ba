#!/usr/bin/env bash
# Set up (with test extras) and run the whole test suite. pytest's exit code 5
# ("no tests collected") is turned into a failure: an empty run must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests: failing" >&2
  exit 1
fi
exit $rc
