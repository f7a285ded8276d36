#!/usr/bin/env bash
# Create .venv beside the project and install qa into it.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh test     runtime, test tools, and Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# The CPU build of torch, installed before anything that depends on torch: an unpinned torch
# resolves to a CUDA build several gigabytes large.
torch_spec=${QA_TORCH_SPEC:-torch==2.13.0}

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "setup: installing $torch_spec, the CPU build (a download of about 200 MB; a minute or two)"
    pip install "$torch_spec"
fi
# pip install -e is skipped when pyproject.toml is as it was at the last install (of this kind or the
# fuller "test" kind): it takes several seconds even when there is nothing to do.
kind=${1:-runtime}
stamp=.venv/.qa-installed
digest=$(cksum < pyproject.toml)
if [ -f "$stamp" ] && { [ "$(cat "$stamp")" = "$digest $kind" ] || [ "$(cat "$stamp")" = "$digest test" ]; }; then
    echo "setup: qa is installed and up to date"
    exit 0
fi
rm -f "$stamp"
if [ "$kind" = "test" ]; then
    echo "setup: installing qa with its test tools"
    pip install -e ".[test]"
    if ! command -v chromium >/dev/null 2>&1; then
        echo "setup: installing Chromium for the browser tests"
        if [ "$(id -u)" = 0 ]; then sudo=""; else sudo="sudo"; fi
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
    fi
else
    echo "setup: installing qa"
    pip install -e .
fi
echo "$digest $kind" > "$stamp"
