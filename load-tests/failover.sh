#!/usr/bin/env bash
# The failover measurement of RESULTS.md ("History and resume"): a fresh
# redis-engine cluster (cluster.sh), readers on every node over a few
# destinations, comments published at a steady rate to the nodes that stay
# up, then one node is killed with SIGKILL and its readers resume on the
# others (`stompede-load failover`). One cluster per run; the JSON and the
# table of each run, the load average and the killed node's pid go to $OUT.
#
#   load-tests/failover.sh [RUNS]            # default 3 runs
#
# Environment (defaults: the issue's scenario):
#   NODES=3  READERS_PER_NODE=12000  DESTINATIONS=10  RATE=100  BEFORE=5  AFTER=3
#   PER_WORKER=12000  (readers per worker process)   BASE_PORT=18500 (Redis on +99)
#   TOOL_ARGS="..."   (more stompede-load flags, e.g. "--setup-concurrency 128")
#
# Loopback only; every run is bounded (the tool's --max-runtime, cluster.sh's
# MAX_SECONDS), and stops the cluster it started.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
L="$root/target/release/stompede-load"
OUT="${OUT:-$here/results/failover-$(date -u +%Y%m%dT%H%M%SZ)}"
RUNS="${1:-3}"
NODES="${NODES:-3}"
READERS_PER_NODE="${READERS_PER_NODE:-12000}"
base="${BASE_PORT:-18500}"
mkdir -p "$OUT"
export ENGINE=redis BASE_PORT="$base" MAX_SECONDS="${MAX_SECONDS:-600}"
export CLUSTER_DIR="${CLUSTER_DIR:-$OUT/cluster}" MAX_CONNECTIONS="${MAX_CONNECTIONS:-19500}"

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/log.txt" >&2; }
up() {
    "$here/cluster.sh" start "$NODES" > "$OUT/cluster.out" 2>&1 &
    for _ in $(seq 150); do
        grep -q "running for at most" "$OUT/cluster.out" 2>/dev/null && return 0
        sleep 0.2
    done
    cat "$OUT/cluster.out" >&2
    return 1
}
down() { "$here/cluster.sh" stop > /dev/null 2>&1 || true; sleep 1; }
trap down EXIT

urls=()
for n in $(seq 0 $((NODES - 1))); do urls+=(--url "ws://127.0.0.1:$((base + n))/ws"); done
name="${NAME:-${NODES}x${READERS_PER_NODE}}"
for i in $(seq "$RUNS"); do
    up
    kill_pid="$("$here/cluster.sh" pids | tail -1)"
    log "run $i $name: load average $(cut -d' ' -f1-3 /proc/loadavg); killing pid $kill_pid"
    # shellcheck disable=SC2086 # TOOL_ARGS is split on purpose
    "$L" --quiet --max-runtime 400 --json "$OUT/$name-$i.json" "${urls[@]}" \
        --per-worker "${PER_WORKER:-12000}" --setup-timeout 8 ${TOOL_ARGS:-} \
        failover --readers-per-node "$READERS_PER_NODE" --destinations "${DESTINATIONS:-10}" \
        --rate "${RATE:-100}" --before "${BEFORE:-5}" --after "${AFTER:-3}" \
        --kill-pid "$kill_pid" --redis "127.0.0.1:$((base + 99))" \
        > "$OUT/$name-$i.txt" 2>&1 || log "run $i failed: $(tail -1 "$OUT/$name-$i.txt")"
    log "run $i done: load average $(cut -d' ' -f1-3 /proc/loadavg)"
    down
done
log "reports in $OUT"
