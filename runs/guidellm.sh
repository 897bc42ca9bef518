#!/usr/bin/env bash
# guidellm against the OpenAI-compatible HTTP API, next to `overfill loadtest --backend openai` at the same load
# shapes (issue 14: "guidellm completes a short sweep against the HTTP API, and its figures agree with
# `overfill loadtest`'s within noise"). Not part of CI; about 10 minutes on 2 CPU cores (plus a first install).
#
#   bash runs/guidellm.sh                  # writes $OUT (default runs/out-guidellm) and $RESULT_JSON
#   REQUESTS=12 bash runs/guidellm.sh      # a shorter rehearsal
#
# 1) guidellm (pinned) in its own venv, $GUIDELLM_VENV (default .venv-guidellm), never in .venv: CI does not
#    install it. It depends on torch; the pin of pyproject.toml is installed first so that pip takes the CPU wheel
#    where this machine provides one (pip's find-links here) instead of resolving torch itself. Elsewhere pass
#    TORCH_PIP_ARGS (e.g. --index-url of a CPU wheel index).
# 2) The served model's tokenizer exported to $OUT/tokenizer (there is no model hub): guidellm builds its synthetic
#    prompts to exact token counts with it, and `overfill loadtest` builds its random ones with the same directory.
# 3) The service from deploy/local.yaml in the background; a short warm-up that neither tool measures.
# 4) guidellm's sweep: synchronous, throughput at $CONCURRENCY requests in flight, then constant rates between the
#    two, $REQUESTS requests each, $PROMPT_TOKENS-token prompts, max_tokens $OUTPUT_TOKENS, raw text on
#    /v1/completions, streamed.
# 5) `overfill loadtest --backend openai` at each guidellm benchmark's load shape (the flags come from
#    loadtest/guidellm_report.py: concurrency 1; concurrency N back to back; a fixed-gap rate under concurrency N),
#    $LOADTEST_PASSES passes over all shapes: how far two runs of one tool drift apart is part of the noise.
# 6) One table of both tools' figures with ratios and the gap in standard errors, printed and saved ($RESULT_JSON).
#
# Both tools send the same request: {model, prompt, max_tokens, stream, stream_options: {include_usage}}, guidellm
# with vLLM's stream_options.continuous_usage_stats as well (every chunk then carries the usage so far).
#  - max_tokens goes through the backend's `max_tokens`, not the data's output_tokens: the latter also sends vLLM's
#    ignore_eos, which `overfill loadtest` does not send, so an early EOS would end one tool's requests and not the
#    other's.
#  - GUIDELLM_WORKERS=1 worker process: on 2 cores guidellm's default of 10 processes competes with the service
#    for CPU; one asyncio process holds 12 streams, as `overfill loadtest` does.
#
# Outputs in $OUT: serve.log, tokenizer/, guidellm.json (its report), guidellm.txt (its tables), shapes.tsv,
# loadtest-INDEX-PASS.json (guidellm benchmark INDEX, loadtest pass PASS), loadtest.txt, comparison.txt.
# Knobs: REQUESTS (24 per benchmark), CONCURRENCY (12), SWEEP_SIZE (4), PROMPT_TOKENS (128), OUTPUT_TOKENS (64),
# LOADTEST_PASSES (2), GUIDELLM_VERSION (0.8.1), GUIDELLM_WORKERS (1), RESULT_JSON
# (docs/bench/guidellm-vs-loadtest.json).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=runs/serve_in_background.sh
source runs/serve_in_background.sh
OUT=${OUT:-runs/out-guidellm}
GUIDELLM_VENV=${GUIDELLM_VENV:-.venv-guidellm}
GUIDELLM_VERSION=${GUIDELLM_VERSION:-0.8.1}
TORCH_PIP_ARGS=${TORCH_PIP_ARGS:-}
GUIDELLM_WORKERS=${GUIDELLM_WORKERS:-1}
REQUESTS=${REQUESTS:-24}
CONCURRENCY=${CONCURRENCY:-12}
SWEEP_SIZE=${SWEEP_SIZE:-4}
PROMPT_TOKENS=${PROMPT_TOKENS:-128}
OUTPUT_TOKENS=${OUTPUT_TOKENS:-64}
LOADTEST_PASSES=${LOADTEST_PASSES:-2}
RESULT_JSON=${RESULT_JSON:-docs/bench/guidellm-vs-loadtest.json}
HTTP=127.0.0.1:8000   # deploy/local.yaml: http_options.port
mkdir -p "$OUT"
OUT_ABS=$(cd "$OUT" && pwd)

# 1) guidellm in its own venv (once; again when the pin changes).
if [[ "$("$GUIDELLM_VENV/bin/guidellm" --version 2>/dev/null || true)" != *"$GUIDELLM_VERSION"* ]]; then
    TORCH_PIN=$(grep -o '"torch==[^"]*"' pyproject.toml | tr -d '"')
    python3 -m venv "$GUIDELLM_VENV"
    # shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of pip flags
    "$GUIDELLM_VENV/bin/pip" install --quiet $TORCH_PIP_ARGS "$TORCH_PIN"
    "$GUIDELLM_VENV/bin/pip" install --quiet "guidellm==$GUIDELLM_VERSION"
fi
"$GUIDELLM_VENV/bin/guidellm" --version

# 2) The tokenizer the service serves with, as a plain directory.
.venv/bin/python - "$OUT/tokenizer" <<'PY'
import sys
from transformers import AutoTokenizer
from overfill.model_loading import EMBEDDED_ALIAS, resolve_model
AutoTokenizer.from_pretrained(resolve_model(EMBEDDED_ALIAS)).save_pretrained(sys.argv[1])
PY

# 3) The service, then a warm-up (first batches of each shape, the oneDNN kernels) that neither tool measures.
serve_in_background "$OUT/serve.log"
DATA=(--dataset random --random-input-len "$PROMPT_TOKENS" --random-output-len "$OUTPUT_TOKENS"
      --random-range-ratio 0 --tokenizer "$OUT/tokenizer" --seed 0)
.venv/bin/overfill loadtest --backend openai --target "$HTTP" --num-prompts "$CONCURRENCY" \
    --max-concurrency "$CONCURRENCY" "${DATA[@]}" --disable-tqdm >/dev/null

# 4) guidellm's sweep.
rm -f "$OUT"/loadtest-*.json
BACKEND="kind=openai_http,target=http://$HTTP,request_format=/v1/completions,max_tokens=$OUTPUT_TOKENS"
GUIDELLM__MAX_WORKER_PROCESSES=$GUIDELLM_WORKERS "$GUIDELLM_VENV/bin/guidellm" run \
    --backend "$BACKEND" \
    --profile "kind=sweep,sweep_size=$SWEEP_SIZE,max_concurrency=$CONCURRENCY" \
    --constraint "kind=max_requests,count=$REQUESTS" \
    --data "kind=synthetic_text,prompt_tokens=$PROMPT_TOKENS" \
    --tokenizer "kind=huggingface_auto,model=$OUT_ABS/tokenizer" \
    --seed kind=static,value=0 \
    --output "kind=json,path=$OUT_ABS/guidellm.json" --output kind=console \
    --disable-progress 2>&1 | tee "$OUT/guidellm.txt"

# 5) overfill loadtest at each benchmark's load shape, every shape once per pass.
.venv/bin/python -m loadtest.guidellm_report shapes "$OUT/guidellm.json" >"$OUT/shapes.tsv"
mapfile -t SHAPES <"$OUT/shapes.tsv"
: >"$OUT/loadtest.txt"
for pass in $(seq "$LOADTEST_PASSES"); do
    for line in "${SHAPES[@]}"; do
        index=${line%%$'\t'*}
        read -r -a shape_args <<<"${line#*$'\t'}"
        .venv/bin/overfill loadtest --backend openai --target "$HTTP" "${shape_args[@]}" "${DATA[@]}" \
            --save-result --save-detailed --result-dir "$OUT" --result-filename "loadtest-$index-$pass.json" \
            --disable-tqdm \
            | tee -a "$OUT/loadtest.txt"
    done
done

# 6) The comparison; the service stops on exit.
.venv/bin/python -m loadtest.guidellm_report compare "$OUT/guidellm.json" --loadtest-dir "$OUT" \
    --out "$RESULT_JSON" | tee "$OUT/comparison.txt"
echo "saved $RESULT_JSON"
