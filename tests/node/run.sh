#!/usr/bin/env bash
# @stomp/stompjs (npm) over the ws package against a stompede binary.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund --loglevel=error
node --test
