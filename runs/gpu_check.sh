#!/usr/bin/env bash
# The one-shot GPU check (overfill/bench/gpu_check.py): what a session lent a GPU runs first, in one call. It writes
# one JSON file and prints a table: the CUDA tests, decode TPOT against the roofline (Llama-3.2-3B's geometry and a
# 1.21B decoder of it, eager and CUDA graphs), TTFT, seeded sampling alone and in a batch, KV transfer GPU -> gRPC ->
# GPU, and the decoder's training step. Random-weight models built from configs: no network, no checkpoint.
#
#   bash runs/gpu_check.sh                          # CUDA; JSON at $OUT/gpu_check.json (else ./gpu_check.json)
#   bash runs/gpu_check.sh --cpu-smoke --json X     # tiny models on CPU, seconds: what CI runs (tests/test_gpu_check.py)
#
# Needs a python3 (or $PYTHON) with torch, transformers, grpcio, protobuf and pytest; not Ray. Exit status 1 when a
# section failed (the others still ran and are in the JSON), 2 without CUDA unless --cpu-smoke.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m overfill.bench.gpu_check "$@"
