#!/usr/bin/env bash
# The GPU figures of bench/RESULTS.md in one run: the LMM prompt ensemble (bench/lmm.py, a LLaVA-1.5-7B-shaped
# random model in bfloat16) and image encoding (bench/encode.py, a ViT-L/14-shaped aligner), each log
# written to $OUT as it runs. Run from the repository root on a GPU machine whose Python has torch and
# transformers; g3's other needs can come as wheels in .whl/ (installed into /tmp/site, no network used).
#
#   bash bench/gpu_check.sh                                   # on the GPU machine
#   python bench/lmm.py --save-prompts .gpu_data/ensemble.json   # here first, if that machine lacks llama-index
#   DEVICE=cpu SHAPE=smoke CLIP=tiny WHEELS=0 bash bench/gpu_check.sh   # the same steps in seconds on a CPU
#
# Photos: $G3_SHARED_DATA (default .gpu_data when present, else ../shared/data).
set -uo pipefail

OUT=${OUT:-$(mktemp -d)}
DEVICE=${DEVICE:-cuda}
SHAPE=${SHAPE:-llava-1.5-7b}
CLIP=${CLIP:-vit-l14}
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-lmm encode}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 TRANSFORMERS_VERBOSITY=error
[[ -d .gpu_data && -z ${G3_SHARED_DATA:-} ]] && export G3_SHARED_DATA=$PWD/.gpu_data

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
    nproc
    "$PYTHON" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"
    echo "CUDA 12 libraries (faiss-gpu-cu12 needs libcublas.so.12):"
    timeout 20 find /usr /opt -name 'libcublas.so.12*' 2>/dev/null | head -3
} 2>&1 | tee "$OUT/env.txt"

if [[ ${WHEELS:-1} == 1 && -d .whl ]]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi

# Where llama-index is missing, the prompts come rendered beforehand, here: python bench/lmm.py --save-prompts FILE
PROMPTS=${PROMPTS:-$PWD/.gpu_data/ensemble.json}
prompts=()
if ! "$PYTHON" -c "import llama_index.core" 2>/dev/null; then
    [[ -f $PROMPTS ]] || { echo "no llama-index and no rendered prompts at $PROMPTS" >&2; exit 1; }
    prompts=(--prompts "$PROMPTS")
fi
cd bench || exit 1
lmm=skipped encode=skipped
if [[ " $STEPS " == *" lmm "* ]]; then
    timeout "${LMM_TIMEOUT:-300}" "$PYTHON" lmm.py --no-tiny --shape "$SHAPE" --device "$DEVICE" --repeats 2 \
        --images 4 --batch-size 8 "${prompts[@]}" 2>&1 | tee "$OUT/lmm.txt"
    lmm=${PIPESTATUS[0]}
fi
if [[ " $STEPS " == *" encode "* ]]; then
    timeout "${ENCODE_TIMEOUT:-150}" "$PYTHON" encode.py --model "$CLIP" --device "$DEVICE" --images 4800 \
        --batch-size 64 --loader-workers "$(($(nproc) > 15 ? 15 : $(nproc)))" 2>&1 | tee "$OUT/encode.txt"
    encode=${PIPESTATUS[0]}
fi
echo "exit codes: lmm $lmm, encode $encode" | tee -a "$OUT/env.txt"
[[ $lmm =~ ^(0|skipped)$ && $encode =~ ^(0|skipped)$ ]]
