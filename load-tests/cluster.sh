#!/usr/bin/env bash
# A local stompede cluster on loopback: one private Redis and N stompede
# nodes (the release binary, `--engine redis`), in one command.
#
#   load-tests/cluster.sh start [N]   # N nodes (default 2, at most 8); prints their URLs,
#                                     # then runs in the foreground until Ctrl-C (which stops
#                                     # everything), `cluster.sh stop`, or MAX_SECONDS
#   load-tests/cluster.sh stop        # stops a cluster started elsewhere (its Redis and nodes)
#   load-tests/cluster.sh status      # URLs and pids of the running one (`pids`: nodes' pids only)
#
# Environment:
#   ENGINE=memory      start N memory-engine nodes and no Redis (each is its own broker: for
#                      single-node comparisons in the same sitting)
#   BASE_PORT=18100    node i listens on 127.0.0.1:BASE_PORT+i, Redis on BASE_PORT+99
#                      (each must be free; the script refuses a port in use)
#   MAX_SECONDS=3600   the cluster stops itself after this long
#   NODE_ARGS="..."    extra flags for every node (e.g. "--interest-linger 1")
#   MAX_CONNECTIONS=19500  each node's --max-connections
#   CLUSTER_DIR        state and logs (default load-tests/.cluster, git-ignored)
#
# Everything listens on 127.0.0.1 only. Redis runs without persistence.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
dir="${CLUSTER_DIR:-$here/.cluster}"
engine="${ENGINE:-redis}"
base="${BASE_PORT:-18100}"
max_seconds="${MAX_SECONDS:-3600}"
max_connections="${MAX_CONNECTIONS:-19500}"
bin="${STOMPEDE_BIN:-$root/target/release/stompede}"
state="$dir/state"

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Kills the pids in the state file (ours only), Redis last.
stop_all() {
    [ -f "$state" ] || return 0
    local pids
    pids="$(awk '$1 == "node" {print $3}' "$state")"
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    local redis_pid
    redis_pid="$(awk '$1 == "redis" {print $3}' "$state")"
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        for _ in $(seq 25); do kill -0 "$redis_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$redis_pid" 2>/dev/null || true
    fi
    rm -f "$state"
    echo "cluster stopped"
}

wait_ready() { # url pid what
    for _ in $(seq 100); do
        if ! kill -0 "$2" 2>/dev/null; then
            echo "$3 exited; see $dir/" >&2
            return 1
        fi
        # Ready, and the engine up (Redis linked).
        curl -fsS --max-time 1 "$1" 2>/dev/null | grep -q '"up":true' && return 0
        sleep 0.1
    done
    echo "$3 did not answer $1 within 10 s" >&2
    return 1
}

start() {
    local n="${1:-2}"
    if ! [[ "$n" =~ ^[1-8]$ ]]; then
        echo "N must be 1..8" >&2
        exit 2
    fi
    if [ -f "$state" ]; then
        echo "a cluster is already running (see '$0 status'; '$0 stop' stops it)" >&2
        exit 1
    fi
    if [ ! -x "$bin" ]; then
        (cd "$root" && cargo build --release --bin stompede)
    fi
    mkdir -p "$dir"
    echo "engine $engine - -" > "$state"
    trap 'stop_all; exit 0' INT TERM
    trap 'stop_all' EXIT
    local redis_url=""
    if [ "$engine" = redis ]; then
        local redis_port=$((base + 99))
        port_free "$redis_port" || { echo "port $redis_port is in use" >&2; exit 1; }
        command -v redis-server >/dev/null || {
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
        }
        redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
            --dir "$dir" --logfile "$dir/redis.log" --daemonize no &
        local redis_pid=$!
        echo "redis 127.0.0.1:$redis_port $redis_pid" >> "$state"
        redis_url="redis://127.0.0.1:$redis_port"
        for _ in $(seq 50); do
            redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
            sleep 0.1
        done
        redis-cli -p "$redis_port" ping >/dev/null || { echo "redis did not start" >&2; exit 1; }
    elif [ "$engine" != memory ]; then
        echo "ENGINE must be redis or memory" >&2
        exit 2
    fi
    for i in $(seq 0 $((n - 1))); do
        local port=$((base + i))
        port_free "$port" || { echo "port $port is in use" >&2; exit 1; }
        local args=(--listen "127.0.0.1:$port" --max-connections "$max_connections" --engine "$engine"
            --node-id "node$i")
        [ -n "$redis_url" ] && args+=(--redis-url "$redis_url")
        # shellcheck disable=SC2206 # NODE_ARGS is split on purpose
        args+=(${NODE_ARGS:-})
        "$bin" "${args[@]}" > "$dir/node$i.log" 2>&1 &
        echo "node 127.0.0.1:$port $! node$i" >> "$state"
    done
    while read -r kind addr pid _; do
        if [ "$kind" = node ]; then
            wait_ready "http://$addr/readyz" "$pid" "node at $addr"
        fi
    done < "$state"
    status
    echo "running for at most ${max_seconds} s; Ctrl-C or '$0 stop' stops it"
    local deadline=$((SECONDS + max_seconds))
    while [ $SECONDS -lt $deadline ] && [ -f "$state" ]; do
        sleep 1
    done
}

status() {
    [ -f "$state" ] || { echo "no cluster running" >&2; exit 1; }
    local running
    running="$(awk '$1 == "engine" {print $2}' "$state")"
    while read -r kind addr pid name; do
        case "$kind" in
        redis) echo "redis  redis://$addr  pid $pid" ;;
        node) echo "$name  ws://$addr/ws  http://$addr  pid $pid  ($running engine)" ;;
        esac
    done < "$state"
}

case "${1:-}" in
start) start "${2:-2}" ;;
stop) stop_all ;;
status) status ;;
pids) awk '$1 == "node" {print $3}' "$state" ;;
*)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
