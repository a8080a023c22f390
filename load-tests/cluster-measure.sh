#!/usr/bin/env bash
# The cluster measurements of RESULTS.md's "Cluster (redis engine)" section:
# each starts fresh nodes with cluster.sh, runs stompede-load, writes the
# JSON reports, the tables and the side figures (load average, Redis
# commandstats, engine counters, RSS) into $OUT, and stops the nodes.
#
#   load-tests/cluster-measure.sh fanout|latency|storm|steady|wide [RUNS]
#
# fanout   a: fan-out ceiling, 5,000 readers of 1 destination, redis (1 node) vs memory
#          (RAMP=r1,r2,... overrides the publish rates)
# latency  b: 10,000 deliveries/s, readers on node1, publishing on node0, vs memory (1 node)
# storm    c: 20,000 readers onto one new destination over 2 nodes (vs memory, 19,000 on 1 node)
# steady   d: 100,000 destinations, 36,000 readers over 2 nodes, 1,000 publishes/s: Redis commands/s
# wide     e: 4 nodes x 18,000 readers of one destination (72,000 connections)
#
# Every run is bounded (the tool's --max-runtime, cluster.sh's MAX_SECONDS)
# and on loopback only.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
L="$root/target/release/stompede-load"
OUT="${OUT:-$here/results/cluster-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$OUT"
export MAX_SECONDS="${MAX_SECONDS:-1200}"
redis_port=18199

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$OUT/log.txt" >&2; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# shellcheck source=lib.sh
. "$here/lib.sh"
up() { ENGINE="$1" NODE_ARGS="${3:-}" cluster_up "$2"; } # engine nodes [node args]
down() { cluster_down; sleep 1; }
trap down EXIT
pid_of() { "$here/cluster.sh" pids | sed -n "$(( $1 + 1 ))p"; }
metric() { curl -s "http://127.0.0.1:$((18100 + $1))/metrics" | awk -v n="$2" '$1 == n {print $2}'; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
commands() { redis-cli -p $redis_port INFO stats | awk -F: '/total_commands_processed/ {print $2}' | tr -d '\r'; }

run() { # name args...
    local name="$1"
    shift
    log "$name: load average $(loadavg)"
    echo "$name loadavg $(loadavg)" >> "$OUT/loadavg.txt"
    "$L" --quiet --max-runtime 900 --json "$OUT/$name.json" "$@" > "$OUT/$name.txt" 2>&1 || {
        log "$name: stompede-load failed"
        tail -5 "$OUT/$name.txt" >&2
    }
}

fanout() {
    # From where both engines still pass to past memory's ceiling. "redis-api0"
    # is the redis engine with the HTTP API on the sessions' runtime
    # (`--api-threads 0`, the default before the API runtime), for comparison.
    local ramp="${RAMP:-240,320,360,400,440,480,520,560,640}"
    for i in $(seq "$1"); do
        for variant in memory redis redis-api0; do
            local engine="${variant%-api0}" args=""
            [ "$variant" = redis-api0 ] && args="--api-threads 0"
            up "$engine" 1 "$args"
            run "fanout-$variant-$i" --url ws://127.0.0.1:18100/ws --broker-pid "$(pid_of 0)" \
                fanout --subscribers 5000 --destinations 1 --rate "$ramp" --duration 5 \
                --stop-on-fail --max-p99-ms 1000
            down
        done
    done
}

latency() {
    for i in $(seq "$1"); do
        up memory 1
        run "latency-memory-$i" --url ws://127.0.0.1:18100/ws --broker-pid "$(pid_of 0)" \
            fanout --subscribers 1000 --destinations 1 --rate 10 --duration 10
        down
        up redis 2
        run "latency-redis-$i" --url ws://127.0.0.1:18101/ws \
            --publish http://127.0.0.1:18100/api/v1/publish --broker-pid "$(pid_of 1)" \
            fanout --subscribers 1000 --destinations 1 --rate 10 --duration 10
        down
    done
}

storm() {
    for i in $(seq "$1"); do
        up memory 1
        run "storm-memory-19000-$i" --url ws://127.0.0.1:18100/ws --broker-pid "$(pid_of 0)" \
            storm --connections 19000 --rate 10000 --concurrency 1000 --storm-destinations 1 --timeout 120
        down
        up redis 2
        local before0 before1
        before0="$(metric 0 stompede_engine_subscribe_commands_total)"
        before1="$(metric 1 stompede_engine_subscribe_commands_total)"
        run "storm-redis-$i" --url ws://127.0.0.1:18100/ws --url ws://127.0.0.1:18101/ws \
            --broker-pid "$(pid_of 0)" \
            storm --connections 20000 --rate 10000 --concurrency 1000 --storm-destinations 1 --timeout 120
        echo "storm-redis-$i subscribe_commands node0 $before0 -> $(metric 0 stompede_engine_subscribe_commands_total)" \
            "node1 $before1 -> $(metric 1 stompede_engine_subscribe_commands_total)" \
            "interest_subscribes node0 $(metric 0 stompede_engine_interest_subscribes_total)" \
            "node1 $(metric 1 stompede_engine_interest_subscribes_total)" | tee -a "$OUT/counters.txt"
        down
    done
}

steady() {
    for i in $(seq "$1"); do
        up redis 2
        # Sample Redis while the step publishes: from 30 s after the start of
        # publishing (the setup is done then) for 20 s.
        run "steady-redis-$i" --url ws://127.0.0.1:18100/ws --url ws://127.0.0.1:18101/ws \
            --setup-timeout 60 --broker-pid "$(pid_of 0)" \
            fanout --subscribers 36000 --destinations 100000 --rate 1000 --duration 60 &
        local tool=$!
        # Wait for the subscribers (the step starts when the tool's log says so).
        for _ in $(seq 600); do
            [ "$(metric 0 stompede_messages_published_total)" != "" ] &&
                [ "$(( $(metric 0 stompede_engine_publishes_total) ))" -gt 2000 ] && break
            sleep 0.5
        done
        sleep 10
        redis-cli -p $redis_port INFO commandstats > "$OUT/steady-$i-commandstats-before.txt"
        local c0 t0 r0 r1
        c0="$(commands)"; t0="$(date +%s.%N)"
        r0="$(metric 0 stompede_engine_messages_received_total)"
        r1="$(metric 1 stompede_engine_messages_received_total)"
        local p0; p0="$(metric 0 stompede_engine_publishes_total)"
        sleep 20
        local c1 t1
        c1="$(commands)"; t1="$(date +%s.%N)"
        redis-cli -p $redis_port INFO commandstats > "$OUT/steady-$i-commandstats-after.txt"
        echo "steady-$i window $(echo "$t1 - $t0" | bc) s: commands $c0 -> $c1;" \
            "publishes node0 $p0 -> $(metric 0 stompede_engine_publishes_total);" \
            "received node0 $r0 -> $(metric 0 stompede_engine_messages_received_total)," \
            "node1 $r1 -> $(metric 1 stompede_engine_messages_received_total);" \
            "channels $(redis-cli -p $redis_port PUBSUB NUMPAT) patterns," \
            "$(redis-cli -p $redis_port PUBSUB CHANNELS 'stompede:*' | wc -l) channels" | tee -a "$OUT/counters.txt"
        wait $tool || true
        down
    done
}

wide() {
    up redis 4
    local pids empty=0
    pids="$("$here/cluster.sh" pids)"
    for pid in $pids; do empty=$((empty + $(rss_kb "$pid"))); done
    echo "wide rss_empty_kb $empty ($pids)" | tee -a "$OUT/counters.txt"
    (
        while sleep 2; do
            sum=0
            for pid in $pids; do sum=$((sum + $(rss_kb "$pid" 2>/dev/null || echo 0))); done
            echo "$(date +%s) $sum $(metric 0 stompede_connections) $(metric 1 stompede_connections) $(metric 2 stompede_connections) $(metric 3 stompede_connections)"
        done
    ) > "$OUT/wide-rss.txt" &
    local sampler=$!
    run "wide-redis" --url ws://127.0.0.1:18100/ws --url ws://127.0.0.1:18101/ws \
        --url ws://127.0.0.1:18102/ws --url ws://127.0.0.1:18103/ws \
        --per-worker 18000 --setup-timeout 120 --setup-concurrency 128 --broker-pid "$(pid_of 0)" \
        fanout --subscribers 72000 --destinations 1 --rate 1,2 --duration 10 --drain 60 --drain-idle 10
    kill "$sampler" 2>/dev/null || true
    down
}

what="${1:-}"
runs="${2:-3}"
case "$what" in
fanout | latency | storm | steady | wide) "$what" "$runs" ;;
*)
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
log "done: $OUT"
