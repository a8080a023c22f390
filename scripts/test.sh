#!/usr/bin/env bash
# The one test command (README: "Run the tests"). On a fresh machine of this
# kind (Debian, root, Rust, Node 20) it installs what the tests need, then
# runs every test: the Rust workspace, then each tests/*/run.sh suite
# (Node + @stomp/stompjs, stomp.py, headless Chromium, nginx), and prints a summary.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

# System packages the suites need, installed only when missing.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v openssl >/dev/null || missing+=(openssl)
command -v node >/dev/null || missing+=(nodejs npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The Rust components the checks below use (a minimal toolchain lacks them).
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

echo "== cargo fmt --check, cargo clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test (workspace)"
cargo build --workspace --bins
cargo test --workspace

passed=0
failed=0
failures=()
for suite in tests/*/run.sh; do
  echo "== $suite"
  if bash "$suite"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1))
    failures+=("$suite")
  fi
done

echo
[ ${#failures[@]} -eq 0 ] || echo "failed suites: ${failures[*]}"
echo "suites: $((passed + 1)) passed, $failed failed"
[ "$failed" -eq 0 ]
