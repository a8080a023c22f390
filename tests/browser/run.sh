#!/usr/bin/env bash
# The browser test of the comment page (tests/browser/comment-page.test.mjs).
#
# Installs what it needs on a fresh Debian machine: Chromium from Debian's
# packages (never a browser download), the npm packages of this directory and
# of examples/comment-page; then runs `node --test`, which builds stompede and
# the comment_api example with cargo (CARGO_TARGET_DIR or target/), starts
# them on free loopback ports and drives two headless Chromium pages.
# Artifacts (screenshots, service logs): tests/browser/artifacts/.
#
# Env: STOMPEDE_TEST_PROFILE=release to test release builds;
#      BROWSER_TEST_TIMEOUT (seconds, default 1500) bounds the whole run.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 # playwright-core downloads nothing; be sure
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

need=()
[ -x /usr/bin/chromium ] || need+=(chromium chromium-driver)
# The screenshot needs at least one font (chromium only recommends one).
compgen -G "/usr/share/fonts/truetype/*/*.ttf" >/dev/null || need+=(fonts-dejavu-core)
if [ ${#need[@]} -gt 0 ]; then
  echo "browser test: installing ${need[*]} from Debian" >&2
  as_root apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}"
fi

npm_install() {
  if [ -f package-lock.json ]; then npm ci --no-progress; else npm install --no-progress; fi
}
(cd "$repo/examples/comment-page" && npm_install)
(cd "$here" && npm_install)

rm -rf "$here/artifacts"
mkdir -p "$here/artifacts"
cd "$here"
timeout --kill-after=30 "${BROWSER_TEST_TIMEOUT:-1500}" node --test --test-concurrency=1 comment-page.test.mjs
echo "browser test: screenshots in $here/artifacts/" >&2
