#!/usr/bin/env bash
# The SmolLM2 two-sums teacher and student (recipes/smollm2.mk), trained on a lent GPU machine
# with Python 3.12, a CUDA torch and transformers but no vLLM and no network. Needs
# `make -f recipes/smollm2.mk gpu-train-pack` done beforehand and every part of .gpu-train/
# carried to one warm machine, one part a call (docs/training.md, "On a lent GPU").
#
#   OUT=/some/folder bash loadtests/gpu_train.sh
#
# It runs the commands the pack recorded from the recipe (fetch, data, teacher, student, with the
# pack's GPU flags; or, for a pack built with GPU_FROM, the continuation of that artifact's
# student) in a work folder outside the tree, then writes to $OUT:
#   train.log                    every command and its output
#   two-sums-student/            the adapter artifact: `breadcrumbs adapter assemble` takes it here
#                                (a continuation's holds only its new layer: the machine returns
#                                8 files at most, and the layers below are in the artifact it
#                                was packed from; copy it over that one, docs/training.md)
#   teacher-log.jsonl, student-log.jsonl   the training logs (no teacher's when continuing)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PACK=${BREADCRUMBS_GPU_TRAIN_PACK:-$ROOT/.gpu-train}
OUT=${OUT:-$ROOT/gpu-out}
WORK=${WORK:-$(mktemp -d)}
mkdir -p "$OUT" "$WORK"
LOG=$OUT/train.log

PYTHONPATH=$(python3 "$ROOT/loadtests/gpu/train_pack.py" unpack "$WORK")${PYTHONPATH:+:$PYTHONPATH}
# fetch finds the joined base in this cache and downloads nothing.
export PYTHONPATH XDG_CACHE_HOME=$WORK/cache PYTHONUNBUFFERED=1
# The recipe's relative paths resolve under $WORK: recipes/ and the pack (`pack/from`, an artifact
# to continue) are linked, runs/ stays out of the tree. run.env names the student's run folder.
ln -sfn "$ROOT/recipes" "$WORK/recipes"
ln -sfn "$PACK" "$WORK/pack"
source "$PACK/run.env"
cd "$WORK"
python3 -c 'import torch; print("torch", torch.__version__, "on",
    torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU")' 2>&1 | tee "$LOG"
bash "$PACK/commands.sh" 2>&1 | tee -a "$LOG"
python3 -m breadcrumbs_vllm.cli adapter export --run "$STUDENT_RUN" \
    --out "$WORK/artifact" 2>&1 | tee -a "$LOG"
shopt -s nullglob
for below in pack/from/*/; do
    rm -r "$WORK/artifact/$(basename "$below")"
done
cp -r "$WORK/artifact" "$OUT/two-sums-student"
if [[ -d runs/two-sums-teacher ]]; then
    cp runs/two-sums-teacher/training_log.jsonl "$OUT/teacher-log.jsonl"
fi
cp "$STUDENT_RUN/training_log.jsonl" "$OUT/student-log.jsonl"
echo "done in $SECONDS s" | tee -a "$LOG"
