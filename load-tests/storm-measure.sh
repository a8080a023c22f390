#!/usr/bin/env bash
# The issue-13 stampede, measured with its side figures: one fresh stompede
# with --max-connections 19500 serving 2,000 background readers at 10
# messages/s, then 17,000 more readers at once (--retry-refused 60).
#
#   load-tests/storm-measure.sh NAME [extra stompede-load storm args...]
#
# Environment: BROKER (path of the stompede binary; default the workspace's
# release build), LOAD (stompede-load), BROKER_ARGS (extra broker flags),
# BROKER_PREFIX (a command to start it under, e.g. "nice -n -10"),
# OUT (results directory), PORT (18080), CONNECTIONS (17000), BACKGROUND
# (2000), PER_WORKER (9000).
#
# Writes into $OUT: NAME.txt (the tool's table), NAME.json, NAME.cpu.tsv
# (per-process CPU every 100 ms, and the whole box's), NAME.metrics (the
# broker's delivery_latency buckets and connection count every 250 ms),
# NAME.broker.log. Loopback only; the tool's --max-runtime bounds the run,
# and the broker is stopped at the end (or on exit).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
name="$1"
shift
BROKER="${BROKER:-$root/target/release/stompede}"
LOAD="${LOAD:-$root/target/release/stompede-load}"
OUT="${OUT:-$here/results/storm-$(date -u +%Y%m%dT%H%M%SZ)}"
PORT="${PORT:-18080}"
CONNECTIONS="${CONNECTIONS:-17000}"
BACKGROUND="${BACKGROUND:-2000}"
PER_WORKER="${PER_WORKER:-9000}"
mkdir -p "$OUT"

broker_pid=""
sampler_pid=""
scraper_pid=""
stop_all() {
    for pid in $scraper_pid $sampler_pid; do kill "$pid" 2>/dev/null || true; done
    if [ -n "$broker_pid" ]; then
        kill "$broker_pid" 2>/dev/null || true
        wait "$broker_pid" 2>/dev/null || true
    fi
    broker_pid=""
}
trap stop_all EXIT

# shellcheck disable=SC2086
${BROKER_PREFIX:-} "$BROKER" --listen "127.0.0.1:$PORT" --max-connections 19500 ${BROKER_ARGS:-} \
    > "$OUT/$name.broker.out" 2> "$OUT/$name.broker.log" &
broker_pid=$!
for _ in $(seq 100); do
    grep -q "listening" "$OUT/$name.broker.out" 2>/dev/null && break
    sleep 0.1
done

python3 "$here/cpu-sample.py" --pid "$broker_pid" --comm stompede-load \
    --interval 0.1 --duration 300 > "$OUT/$name.cpu.tsv" &
sampler_pid=$!
(
    start=$(date +%s.%N)
    while kill -0 "$broker_pid" 2>/dev/null; do
        now=$(date +%s.%N)
        curl -s --max-time 2 "http://127.0.0.1:$PORT/metrics" |
            awk -v t="$(echo "$now - $start" | bc)" \
                '/^stompede_delivery_latency_seconds_bucket|^stompede_connections |^stompede_sessions/ {print t, $0}'
        sleep 0.25
    done
) > "$OUT/$name.metrics" 2>/dev/null &
scraper_pid=$!

echo "$name loadavg $(cut -d' ' -f1-3 /proc/loadavg) $(date -u +%H:%M:%S)" >> "$OUT/loadavg.txt"
"$LOAD" --url "ws://127.0.0.1:$PORT/ws" --broker-pid "$broker_pid" --quiet \
    --max-runtime 300 --json "$OUT/$name.json" --per-worker "$PER_WORKER" \
    storm --connections "$CONNECTIONS" --rate 1000000 --concurrency "$CONNECTIONS" \
    --background-subscribers "$BACKGROUND" --background-rate 10 --baseline 5 \
    --retry-refused 60 --timeout 120 --metrics-url "http://127.0.0.1:$PORT/metrics" "$@" > "$OUT/$name.txt" 2>&1 || echo "$name: stompede-load failed" >&2
stop_all
