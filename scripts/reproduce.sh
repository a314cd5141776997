#!/usr/bin/env bash
# The whole protocol for one benchmark, on a machine that has its videos and the CLIP weights:
# layout check -> extract -> zero-shot check -> fit seqTransf and CAMoE with InfoNCE and DSL -> vtr table.
# Every step is an ordinary vtr command (printed before it runs); a rerun redoes only what is missing.
#
#   scripts/reproduce.sh DATASET ROOT        e.g. scripts/reproduce.sh msrvtt /data/msrvtt
#
# Overrides (environment):
#   VTR_CLIP=ViT-B/32         --clip for vtr extract (random:tiny for a test that means nothing for retrieval)
#   VTR_WORK=cache/reproduce-DATASET   where the cache, the runs and the table go
#   VTR_EPOCHS, VTR_BATCH_SIZE          vtr fit --epochs / --batch-size (default: vtr fit's own)
#   VTR_DEVICE=auto           --device for extract and fit; VTR_EVAL_DEVICE=cpu for vtr eval and vtr table
#   VTR_EXTRACT_ARGS, VTR_FIT_ARGS      more options for vtr extract / vtr fit (split on spaces)
#   VTR_ALLOW_MISSING=1       go on when some annotated videos are missing (they are left out and counted)
#   VTR_IGNORE_ZERO_SHOT=1    train even when zero-shot is far below the published figure
#   VTR_QUIET=1               no progress bars
set -euo pipefail

usage() {
    echo "usage: $0 DATASET ROOT   (DATASET: msrvtt, msvd, didemo, activitynet, lsmdc;" \
         "see the script's header for the overrides)" >&2
    exit 64
}
[ "$#" -eq 2 ] || usage
DATASET=$1
ROOT=$2

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
if [ -x "$REPO/.venv/bin/vtr" ]; then  # the project's own environment first
    VTR="$REPO/.venv/bin/vtr"
    PY="$REPO/.venv/bin/python"
elif command -v vtr >/dev/null 2>&1; then
    VTR=$(command -v vtr)
    PY=${VTR_PYTHON:-$(sed -n '1s/^#![[:space:]]*//p' "$VTR")}  # the interpreter vtr's own script runs
else
    echo "reproduce: no vtr found (neither $REPO/.venv/bin/vtr nor vtr on PATH); install it first (install.sh)" >&2
    exit 2
fi
if ! "$PY" -c "import vtr" 2>/dev/null; then
    echo "reproduce: $PY cannot import vtr (the layout check runs in vtr's Python): set VTR_PYTHON to it" >&2
    exit 2
fi

CLIP=${VTR_CLIP:-ViT-B/32}
WORK=${VTR_WORK:-cache/reproduce-$DATASET}
DEVICE=${VTR_DEVICE:-auto}
EVAL_DEVICE=${VTR_EVAL_DEVICE:-cpu}
CACHE="$WORK/$DATASET.h5"
read -r -a EXTRACT_ARGS <<< "${VTR_EXTRACT_ARGS:-}"
read -r -a FIT_ARGS <<< "${VTR_FIT_ARGS:-}"
[ -n "${VTR_EPOCHS:-}" ] && FIT_ARGS+=(--epochs "$VTR_EPOCHS")
[ -n "${VTR_BATCH_SIZE:-}" ] && FIT_ARGS+=(--batch-size "$VTR_BATCH_SIZE")
QUIET=()
[ "${VTR_QUIET:-0}" = 1 ] && QUIET=(--quiet)

step() { echo "reproduce: $*" >&2; }
run() { echo "+ $*" >&2; "$@"; }

step "1/5 checking the layout of $ROOT for $DATASET (annotations, videos, CLIP $CLIP)"
CHECK=(layout --dataset "$DATASET" --root "$ROOT" --clip "$CLIP" --vtr "$VTR" --json "$WORK/layout.json")
[ "${VTR_ALLOW_MISSING:-0}" = 1 ] && CHECK+=(--allow-missing)
"$PY" "$HERE/reproduce_checks.py" "${CHECK[@]}"
"$PY" "$HERE/reproduce_checks.py" expect --dataset "$DATASET" --clip "$CLIP"

step "2/5 extracting frames and captions with frozen CLIP into $CACHE"
run "$VTR" extract --dataset "$DATASET" --root "$ROOT" --clip "$CLIP" --out "$CACHE" --device "$DEVICE" \
    "${QUIET[@]}" "${EXTRACT_ARGS[@]}"

step "3/5 zero-shot, before training anything"
run "$VTR" eval --zero-shot --cache "$CACHE" --json "$WORK/zero-shot.json" --device "$EVAL_DEVICE"
"$PY" "$HERE/reproduce_checks.py" zero-shot "$WORK/zero-shot.json"

step "4/5 training seqTransf and CAMoE heads, each with InfoNCE and with DSL"
for model in seqTransf camoe; do
    for loss in infonce dsl; do
        run "$VTR" fit --cache "$CACHE" --model "$model" --loss "$loss" --run "$WORK/runs/$model-$loss" \
            --device "$DEVICE" "${QUIET[@]}" "${FIT_ARGS[@]}"
    done
done

step "5/5 the table: zero-shot and the four runs, raw, QB-Norm and DSL, with the published rows"
run "$VTR" table --cache "$CACHE" --runs "$WORK/runs" --out "$WORK/table" --device "$EVAL_DEVICE"
step "done: $WORK/table/table.md, table.csv, table.json"
