# Sourced by the runs/ scripts: `serve_in_background LOG [overfill serve args...]` builds the default decoder if
# missing, starts `overfill serve --config deploy/local.yaml` with those args in the background (output to LOG),
# stops it when the script exits, and returns once the service prints that it is ready (or fails with its log).
serve_in_background() {
    local log=$1
    shift
    make decoder >/dev/null
    .venv/bin/overfill serve --config deploy/local.yaml "$@" >"$log" 2>&1 &
    SERVE_PID=$!
    trap 'kill -TERM $SERVE_PID 2>/dev/null; wait $SERVE_PID 2>/dev/null || true' EXIT
    until grep -q "ready on" "$log"; do
        kill -0 "$SERVE_PID" 2>/dev/null || { cat "$log"; exit 1; }
        sleep 2
    done
}
