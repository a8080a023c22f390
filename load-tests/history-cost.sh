#!/usr/bin/env bash
# What history costs normal publishing (RESULTS.md, "History"): the fan-out
# ceiling (5,000 readers of 1 destination) and p99 at 10,000 deliveries/s
# (1,000 readers x 10/s), for the memory engine with history-size 100 (the
# default), with history-size 0, and (when BASELINE_BIN names one) a build
# from before history existed; the variants take turns in each run, so they
# share the box's state.
#
#   BASELINE_BIN=/path/to/old/stompede load-tests/history-cost.sh [RUNS]
#
# Loopback only; every run is bounded (the tool's --max-runtime, cluster.sh's MAX_SECONDS).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
L="$root/target/release/stompede-load"
OUT="${OUT:-$here/results/history-$(date -u +%Y%m%dT%H%M%SZ)}"
RUNS="${1:-3}"
mkdir -p "$OUT"
export MAX_SECONDS="${MAX_SECONDS:-600}" ENGINE=memory
# The node listens on BASE_PORT (cluster.sh's default 18100).
port="${BASE_PORT:-18100}"

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/log.txt" >&2; }
# shellcheck source=lib.sh
. "$here/lib.sh"
up() { STOMPEDE_BIN="$1" NODE_ARGS="$2" cluster_up 1; } # bin node-args
down() { cluster_down; sleep 1; }
trap down EXIT
pid() { "$here/cluster.sh" pids | head -1; }

variants=("history100|$root/target/release/stompede|--history-size 100"
          "history0|$root/target/release/stompede|--history-size 0")
[ -n "${BASELINE_BIN:-}" ] && variants+=("before|$BASELINE_BIN|")

for i in $(seq "$RUNS"); do
    for variant in "${variants[@]}"; do
        IFS='|' read -r name bin args <<< "$variant"
        up "$bin" "$args"
        log "run $i $name: load average $(cut -d' ' -f1-3 /proc/loadavg)"
        "$L" --quiet --max-runtime 300 --json "$OUT/fanout-$name-$i.json" \
            --url ws://127.0.0.1:$port/ws --broker-pid "$(pid)" \
            fanout --subscribers 5000 --destinations 1 \
            --rate 16,24,32,48,64,96,128,160,200,240,280,320,400 --duration 5 \
            --stop-on-fail --max-p99-ms 1000 > "$OUT/fanout-$name-$i.txt" 2>&1 || log "fanout $name failed"
        down
        up "$bin" "$args"
        "$L" --quiet --max-runtime 120 --json "$OUT/latency-$name-$i.json" \
            --url ws://127.0.0.1:$port/ws --broker-pid "$(pid)" \
            fanout --subscribers 1000 --destinations 1 --rate 10 --duration 10 \
            > "$OUT/latency-$name-$i.txt" 2>&1 || log "latency $name failed"
        down
    done
done
log "reports in $OUT"
