#!/usr/bin/env bash
# Set up everything the tests need, then run the whole suite (fast, real-model and browser tests).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not browser"
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh test
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
