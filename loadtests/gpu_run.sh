#!/usr/bin/env bash
# The plugin on a GPU machine that has Python 3.12, a CUDA torch and Triton but no vLLM and no
# network, in one run of at most 9 minutes. Needs `make gpu-pack` done beforehand and `.gpu/`
# carried with the working tree (docs/plugin.md, "Running the GPU check").
#
#   OUT=/some/folder bash loadtests/gpu_run.sh
#
# Stages, each under its own `timeout`, each logged to $OUT/<stage>.log, outcomes in
# $OUT/stages.txt (and gpu_check's JSON in $OUT/<stage>.json):
#   setup      unpack the pack, print versions, run the pre-flight for real (imports, configs)
#   layouts    the engine-free check: compaction and Triton attention on CUDA caches
#   eager      gpu_check --no-compile, TRITON_ATTN eager, plus stock vs plugin at c=8
#   full       the same checks under FULL CUDA graphs
#   piecewise  the same checks under breakable PIECEWISE graphs
#   flex       FLEX_ATTENTION eager, if time is left
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
BUDGET_S=${BUDGET_S:-530}  # the whole run, under one 9-minute call
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT"
: > "$OUT/stages.txt"

# stage NAME SECONDS COMMAND...: run it under timeout (cut to the time left), log, record.
stage() {
    local name=$1 limit=$2 left=$((BUDGET_S - SECONDS)) start=$SECONDS rc
    shift 2
    ((limit > left)) && limit=$left
    if ((limit < 45)); then
        echo "$name: skipped, ${left} s left" | tee -a "$OUT/stages.txt"
        return 1
    fi
    timeout "$limit" bash -c '"$@"' "$name" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name: exit $rc after $((SECONDS - start)) s (limit $limit s): $(tail -n 1 "$OUT/$name.log")" \
        | tee -a "$OUT/stages.txt"
    return $rc
}

setup() {
    python3 -c 'import sys, torch, triton; print(sys.version); print("torch", torch.__version__,
        "cuda", torch.version.cuda, torch.cuda.get_device_name()); print("triton", triton.__version__)'
    python3 - "$WORK/ckpt" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "loadtests")
import gpu_check
from breadcrumbs_vllm.checkpoint import init_model, save_checkpoint
model, tokenizer, bc = init_model(**gpu_check.MODEL_SHAPE, init_std=0.5, seed=1)
print("checkpoint", save_checkpoint(model, tokenizer, bc, Path(sys.argv[1])))
PY
    python3 loadtests/gpu/preflight.py "$WORK/ckpt"
}

check() {  # check NAME ARGS...: gpu_check.py --no-compile, its JSON to $OUT/NAME.json
    local name=$1
    shift
    python3 loadtests/gpu_check.py --no-compile --max-tokens 200 "$@" > "$OUT/$name.json"
}

PYTHONPATH=$(python3 loadtests/gpu/pack.py unpack "$WORK/pack") || exit 1
export PYTHONPATH OUT WORK VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_USE_FLASHINFER_SAMPLER=0
export -f setup check  # stages run them under `timeout bash -c`
# every stage below needs a working setup: stop here otherwise
stage setup 120 setup || exit 1
stage layouts 120 python3 -m pytest -q -rs -p no:cacheprovider tests/test_plugin_layouts_gpu.py
stage eager 150 check eager --backends TRITON_ATTN --modes eager --bench-ratios 8 \
    --bench-requests 32 --bench-tokens 512 --bench-pool 64
stage full 100 check full --backends TRITON_ATTN --modes FULL --skip-bench
stage piecewise 100 check piecewise --backends TRITON_ATTN --modes PIECEWISE --skip-bench
stage flex 90 check flex --backends FLEX_ATTENTION --modes eager --skip-bench
echo "done in $SECONDS s" | tee -a "$OUT/stages.txt"
