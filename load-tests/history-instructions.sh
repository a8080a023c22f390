#!/usr/bin/env bash
# What history costs in instructions (RESULTS.md, "History and resume"):
# runs the broker under valgrind's callgrind (it counts instructions, so
# other load on the box matters far less than for a timing), drives 1,000
# readers of one destination and 100 publishes (20/s for 5 s) with the load
# tool, stops the broker and prints callgrind's total. Compare variants
# (e.g. --history-size 100 vs 0, or an older build) over several runs each:
# the total still varies by several percent between runs (timers, batching).
#
#   load-tests/history-instructions.sh NAME BROKER_BINARY [broker flags]
#   load-tests/history-instructions.sh h100 target/release/stompede --history-size 100
#
# Loopback only (port 18320); bounded by the tool's --max-runtime.
set -u
name=$1; bin=$2; shift 2
here="$(cd "$(dirname "$0")" && pwd)"
L="$here/../target/release/stompede-load"
out="${OUT:-/tmp}/callgrind-$name.out"
rm -f "$out"
valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --listen 127.0.0.1:18320 "$@" \
    > "${OUT:-/tmp}/callgrind-$name.log" 2>&1 &
broker=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:18320/healthz && break; sleep 0.5; done
"$L" --url ws://127.0.0.1:18320/ws --quiet --max-runtime 300 fanout --subscribers 1000 \
    --destinations 1 --rate 20 --duration 5 --setup-timeout 60 --max-p99-ms 100000 \
    | grep -E "delivered|lost" || true
kill -INT "$broker"
wait "$broker"
echo "$name: $(grep '^totals:' "$out")"
