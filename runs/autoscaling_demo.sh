#!/usr/bin/env bash
# The decode pool autoscaling on the local CPU cluster: start the service from deploy/local.yaml (decode pool 1..2
# replicas on KV demand), drive a step load with `overfill loadtest step`, and keep the JSON and the plot of replicas
# per pool next to latency. About 5 minutes on 2 cores.
#
#   bash runs/autoscaling_demo.sh            # writes $OUT/step-*.json and $OUT/step-*.png (OUT=runs/out-autoscaling)
#
# Knobs: SLOTS (decode slots per replica, default 8: a small KV budget so the local load can fill it), STAGES.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=runs/serve_in_background.sh
source runs/serve_in_background.sh
OUT=${OUT:-runs/out-autoscaling}
SLOTS=${SLOTS:-8}
PORT=${PORT:-9000}
STAGES=${STAGES:-'[{"rate":0.2,"duration":40},{"rate":1.5,"duration":90},{"rate":0,"duration":150}]'}
mkdir -p "$OUT"

serve_in_background "$OUT/serve.log" --port "$PORT" --set decode.num_slots="$SLOTS"

.venv/bin/overfill loadtest step --target "127.0.0.1:$PORT" --stages "$STAGES" --dataset random \
    --random-input-len 128 --random-output-len 64 --random-range-ratio 0.25 --seed 0 \
    --goodput ttft:3000 tpot:500 --save-result --result-dir "$OUT"
