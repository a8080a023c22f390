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
#   NODES=3  READERS_PER_NODE=12000  RATE=100   (or VARIANTS="3x12000@100 3x12000@10 3x4000@100":
#                                              nodes x readers per node @ comments/s, in turn)
#   DESTINATIONS=10  BEFORE=5  AFTER=3
#   PER_WORKER=12000  (readers per worker process)   BASE_PORT=18500 (Redis on +99)
#   FIRST_RUN=1  (the first run's number in the file names)
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
NODES="${NODES:-3}" READERS_PER_NODE="${READERS_PER_NODE:-12000}"
base="${BASE_PORT:-18500}"
mkdir -p "$OUT"
export ENGINE=redis BASE_PORT="$base" MAX_SECONDS="${MAX_SECONDS:-600}"
[ -n "${CLUSTER_DIR:-}" ] && KEEP_CLUSTER_DIR=1
export CLUSTER_DIR="${CLUSTER_DIR:-$OUT/cluster}" MAX_CONNECTIONS="${MAX_CONNECTIONS:-19500}"

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/log.txt" >&2; }
# shellcheck source=lib.sh
. "$here/lib.sh"
up() { cluster_up "${NODES:-3}"; }
down() { cluster_down; }
trap down EXIT

# The variants take turns in each run, so that they share the box's state.
first="${FIRST_RUN:-1}"
for i in $(seq "$first" $((first + RUNS - 1))); do
    for variant in ${VARIANTS:-"${NODES}x${READERS_PER_NODE}@${RATE:-100}"}; do
        # NODESxREADERS@RATE
        nodes="${variant%%x*}"
        rest="${variant#*x}"
        readers="${rest%@*}"
        rate="${rest#*@}"
        urls=()
        for n in $(seq 0 $((nodes - 1))); do urls+=(--url "ws://127.0.0.1:$((base + n))/ws"); done
        # Each run's Redis and node logs are kept apart.
        [ -n "${KEEP_CLUSTER_DIR:-}" ] || export CLUSTER_DIR="$OUT/cluster-$variant-$i"
        NODES="$nodes" up
        kill_pid="$("$here/cluster.sh" pids | tail -1)"
        log "run $i $variant: load average $(cut -d' ' -f1-3 /proc/loadavg); killing pid $kill_pid"
        # shellcheck disable=SC2086 # TOOL_ARGS is split on purpose
        "$L" --quiet --max-runtime 400 --json "$OUT/$variant-$i.json" "${urls[@]}" \
            --per-worker "${PER_WORKER:-12000}" --setup-timeout 8 ${TOOL_ARGS:-} \
            failover --readers-per-node "$readers" --destinations "${DESTINATIONS:-10}" \
            --rate "$rate" --before "${BEFORE:-5}" --after "${AFTER:-3}" \
            --kill-pid "$kill_pid" --redis "127.0.0.1:$((base + 99))" \
            > "$OUT/$variant-$i.txt" 2>&1 || log "run $i $variant failed: $(tail -1 "$OUT/$variant-$i.txt")"
        log "run $i $variant done: load average $(cut -d' ' -f1-3 /proc/loadavg)"
        down
    done
done
log "reports in $OUT"
