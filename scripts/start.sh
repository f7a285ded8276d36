#!/usr/bin/env bash
# Set up, build the index from seeds/ if there is none, and serve the chat page and API.
# Extra arguments go to `qa serve`, e.g. scripts/start.sh --port 8080
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/qa serve "$@"
