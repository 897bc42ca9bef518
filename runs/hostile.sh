#!/usr/bin/env bash
# Hostile clients against the live service (issue 15): malformed 8 MiB frames (and the same against a bare grpcio
# server, for reference) and a Health flood without a key (at the TLS front, then at Ray Serve's proxy port), the
# tokenizer's worst cases, one key flooding past auth.max_requests_per_key, a cancel storm of 500 streams at
# their first token, and a grep of every Ray log for the secrets, each while one healthy stream is served.
# Prints one table and writes docs/bench/hostile.json. About 5 minutes on 2 CPU cores.
#
#   bash runs/hostile.sh            # the service from deploy/local.yaml, API keys and the TLS front on (files it writes)
#   bash runs/hostile.sh --storm-streams 100      # any option of runs/hostile.py (--help)
#
# Exit status 0 only when every attack that ran met its criterion.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" runs/hostile.py "$@"
