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
# The redis engine's tests start their own redis-server processes (Debian's, 7.0).
command -v redis-server >/dev/null || missing+=(redis-server)
command -v openssl >/dev/null || missing+=(openssl)
command -v node >/dev/null || missing+=(nodejs npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# Test the build this script makes, nothing else: variables that redirect a
# suite to another binary or broker (STOMPEDE_BIN, COMMENT_API_BIN,
# STOMPEDE_LOAD_SMOKE_URL) or reconfigure every broker the suites spawn
# (STOMPEDE_*, read by stompede itself) are cleared.
for name in $(compgen -e); do
  case "$name" in
    STOMPEDE_* | COMMENT_API_BIN) unset "$name" ;;
  esac
done

# The Rust components the checks below use (a minimal toolchain lacks them).
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

echo "== cargo fmt --check, cargo clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

echo "== cargo test (workspace)"
cargo build --workspace --bins
# Every target compiles, benchmarks included (the README's figures come from
# benches/registry.rs and protocol/benches/codec.rs); the tests then run.
cargo test --workspace --all-targets --no-run
cargo test --workspace

# The fuzz crates are workspaces of their own, which `cargo test --workspace`
# never sees: build their targets (plain stable cargo, without cargo-fuzz;
# the fuzzer is not run). fuzz/corpus/session is replayed by
# tests/session_fuzz_corpus.rs, protocol/tests/fuzz-regressions by
# protocol/tests/fuzz_regressions.rs.
echo "== fuzz targets (build only)"
cargo build --manifest-path protocol/fuzz/Cargo.toml --target-dir target/fuzz
cargo build --manifest-path fuzz/Cargo.toml --target-dir target/fuzz

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
