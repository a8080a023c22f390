#!/usr/bin/env bash
# @stomp/stompjs (npm) over the ws package against stompede binaries: one
# node, and three nodes on a redis-server this suite starts itself.
#
# The test files are named, and a run in which a file ran no test fails: a
# renamed file or an emptied one must not turn into a green run. (Node 20
# reports a file without tests as one passing test named after the file.)
set -euo pipefail
cd "$(dirname "$0")"
files=(stompjs.test.mjs cluster.test.mjs failover.test.mjs)
for file in "${files[@]}"; do
  [ -f "$file" ] || { echo "node tests: $file is missing" >&2; exit 1; }
done
npm ci --no-audit --no-fund --loglevel=error
report="$(mktemp)"
trap 'rm -f "$report"' EXIT
status=0
node --test --test-reporter=tap "${files[@]}" | tee "$report" || status=$?
tests="$(sed -n 's/^# tests \([0-9][0-9]*\)$/\1/p' "$report" | tail -n 1)"
if [ "${tests:-0}" -eq 0 ]; then
  echo "node tests: no test ran" >&2
  exit 1
fi
for file in "${files[@]}"; do
  if grep -Eq "^(not )?ok [0-9]+ - $(pwd)/$file\$" "$report"; then
    echo "node tests: $file ran no test" >&2
    exit 1
  fi
done
exit "$status"
