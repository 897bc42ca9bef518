#!/usr/bin/env bash
# OverFill vs Pruned on the embedded SmolLM2-135M, on CPU: prune to ~50%, train the same decoder in both modes with
# the same data, steps and hyper-parameters, then evaluate. Results: docs/results.md. Every step is resumable.
#   STEPS=150 BATCH=8 DATA=overfill/data/distill-smollm2-135m.jsonl bash runs/cpu_smollm2_overfill_vs_pruned.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/out}
STEPS=${STEPS:-150}
BATCH=${BATCH:-8}
DATA=${DATA:-overfill/data/distill-smollm2-135m.jsonl}
BIN=.venv/bin/overfill
mkdir -p "$OUT"

# 1) The untrained decoder: 50% of the parameters (hidden 576 -> 360, MLP 1536 -> 1024).
[ -f "$OUT/half/overfill.json" ] || $BIN prune --model smollm2-135m --hidden-size 360 --intermediate-size 1024 \
    --output "$OUT/half"

# 2) Self-distillation data: the full model answers the shipped prompts (resumable; skip if DATA exists).
[ -f "$DATA" ] || $BIN make-data --prompts overfill/data/prompts.jsonl --output "$DATA" --max-new-tokens 160 \
    --batch-size 16

# 3) The same decoder trained both ways, same everything else.
for mode in overfill pruned; do
  $BIN train --decoder "$OUT/half" --data "$DATA" --mode $mode --output "$OUT/$mode" --steps "$STEPS" \
      --batch-size "$BATCH" --lr 2e-4 --save-every 10 --resume
done

# 4) Accuracy, agreement with the full model, TTFT/TPOT; the Pareto plot.
$BIN eval --decoder "$OUT/half,$OUT/overfill,$OUT/pruned" --modes full,pruned,overfill --max-new-tokens 32 \
    --json "$OUT/eval.json" --plot docs/overfill-vs-pruned.png
