#!/usr/bin/env bash
# stompede behind nginx: the configuration in docs/deploy.md, run for real.
#
# Installs nginx and openssl from Debian if missing, makes a self-signed
# certificate, starts stompede (built by cargo; CARGO_TARGET_DIR or target/,
# or STOMPEDE_BIN) and nginx (as root, own prefix and config in a temporary
# directory, loopback ports only), then passes one STOMP session through
# wss:// with @stomp/stompjs (stomp-through-nginx.mjs). Stops everything it
# started on exit. Bounded: NGINX_TEST_TIMEOUT seconds for the session (default 60).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false

# Root runs nginx and apt-get directly; anyone else through sudo (a prefix,
# not a function, so that `$!` of a background nginx is nginx itself).
if [ "$(id -u)" -eq 0 ]; then as_root=(); else as_root=(sudo); fi

# ---- what it needs ----------------------------------------------------------
need=()
[ -x /usr/sbin/nginx ] || need+=(nginx)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "nginx test: installing ${need[*]} from Debian" >&2
  # Don't let the package start a system nginx on port 80: policy-rc.d says no
  # (only while installing, and only if the machine has no policy of its own).
  policy_added=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${as_root[@]}" chmod +x /usr/sbin/policy-rc.d
    policy_added=1
  fi
  "${as_root[@]}" apt-get update -q
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
  [ -z "$policy_added" ] || "${as_root[@]}" rm -f /usr/sbin/policy-rc.d
fi
(cd "$here" && if [ -f package-lock.json ]; then npm ci --no-progress; else npm install --no-progress; fi)

if [ -n "${STOMPEDE_BIN:-}" ]; then
  stompede="$STOMPEDE_BIN"
else
  (cd "$repo" && cargo build --bin stompede)
  target_dir="$(cd "$repo" && cargo metadata --format-version 1 --no-deps | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')"
  stompede="$target_dir/debug/stompede"
fi

# ---- scratch space and cleanup -----------------------------------------------
work="$(mktemp -d /tmp/stompede-nginx.XXXXXX)"
stompede_pid=
nginx_pid=
cleanup() {
  local status=$?
  [ -z "$nginx_pid" ] || kill "$nginx_pid" 2>/dev/null || true
  [ -z "$stompede_pid" ] || kill "$stompede_pid" 2>/dev/null || true
  for pid in $nginx_pid $stompede_pid; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ "$status" -ne 0 ]; then
    echo "--- stompede log" >&2; tail -n 30 "$work/stompede.log" >&2 || true
    echo "--- nginx error log" >&2; tail -n 30 "$work/logs/error.log" >&2 || true
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
}
wait_for() { # URL [curl options]
  local url=$1; shift
  for _ in $(seq 100); do
    curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nginx test: $url did not answer" >&2
  return 1
}

broker_port="$(free_port)"
tls_port="$(free_port)"
http_port="$(free_port)"
token="nginx-test-$RANDOM$RANDOM"

# ---- certificate ------------------------------------------------------------
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null

# ---- stompede ---------------------------------------------------------------
"$stompede" --listen "127.0.0.1:$broker_port" --api-token "$token" --trusted-proxy 127.0.0.1 --heartbeat 1000,1000 \
  >"$work/stompede.log" 2>&1 &
stompede_pid=$!
wait_for "http://127.0.0.1:$broker_port/healthz"

# ---- nginx: docs/deploy.md's configuration, on the test's ports and files ----
mkdir -p "$work/logs" "$work/temp"
# The block between the nginx-config markers, without the ``` fences.
awk '/<!-- nginx-config:begin -->/{on=1; next} /<!-- nginx-config:end -->/{on=0} on && !/^```/' \
  "$repo/docs/deploy.md" >"$work/stompede.conf"
grep -q 'location = /ws' "$work/stompede.conf" || { echo "nginx test: no config found in docs/deploy.md" >&2; exit 1; }
# A read timeout shorter than the idle wait below: only heart-beats keep the session up.
sed -i \
  -e "s|listen 443 ssl;|listen 127.0.0.1:$tls_port ssl;|" \
  -e "s|listen 80;|listen 127.0.0.1:$http_port;|" \
  -e "s|server 127.0.0.1:8080;|server 127.0.0.1:$broker_port;|" \
  -e "s|server_name comments.example.com;|server_name localhost 127.0.0.1;|" \
  -e "s|ssl_certificate     /etc/ssl/certs/comments.example.com.pem;|ssl_certificate $work/cert.pem;|" \
  -e "s|ssl_certificate_key /etc/ssl/private/comments.example.com.key;|ssl_certificate_key $work/key.pem;|" \
  -e "s|proxy_read_timeout  75s;|proxy_read_timeout 3s;|" \
  "$work/stompede.conf"
for expected in "127.0.0.1:$tls_port ssl" "127.0.0.1:$broker_port" "$work/cert.pem" "$work/key.pem" "proxy_read_timeout 3s"; do
  grep -qF "$expected" "$work/stompede.conf" || { echo "nginx test: could not adapt the config ($expected)" >&2; exit 1; }
done
cat >"$work/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $work/nginx.pid;
error_log $work/logs/error.log info;
events { worker_connections 256; }
http {
    access_log $work/logs/access.log;
    client_body_temp_path $work/temp/body;
    proxy_temp_path $work/temp/proxy;
    fastcgi_temp_path $work/temp/fastcgi;
    uwsgi_temp_path $work/temp/uwsgi;
    scgi_temp_path $work/temp/scgi;
    include $work/stompede.conf;
}
EOF
"${as_root[@]}" /usr/sbin/nginx -t -p "$work" -c "$work/nginx.conf" -e "$work/logs/error.log" 2>&1 | sed 's/^/nginx -t: /' >&2
"${as_root[@]}" /usr/sbin/nginx -p "$work" -c "$work/nginx.conf" -e "$work/logs/error.log" -g 'daemon off;' &
nginx_pid=$!
wait_for "https://127.0.0.1:$tls_port/readyz" -k

# ---- checks -----------------------------------------------------------------
ready="$(curl -fsSk "https://127.0.0.1:$tls_port/readyz")"
echo "ok - /readyz through TLS: $ready"
redirect="$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "http://127.0.0.1:$http_port/ws")"
case "$redirect" in 301\ https://*) echo "ok - plain HTTP redirects to HTTPS ($redirect)" ;; *) echo "nginx test: FAIL: no redirect ($redirect)" >&2; exit 1 ;; esac
api_status="$(curl -sk -o /dev/null -w '%{http_code}' -X POST "https://127.0.0.1:$tls_port/api/v1/publish")"
[ "$api_status" = 404 ] || { echo "nginx test: FAIL: /api/v1 is reachable through the proxy ($api_status)" >&2; exit 1; }
echo "ok - /api/v1 is not exposed through the proxy"

cd "$here"
timeout --kill-after=5 "${NGINX_TEST_TIMEOUT:-60}" \
  node stomp-through-nginx.mjs "wss://127.0.0.1:$tls_port/ws" "http://127.0.0.1:$broker_port" "$token" 5000
grep -q '"GET /ws HTTP/1.1" 101' "$work/logs/access.log" || { echo "nginx test: FAIL: nginx logged no WebSocket upgrade" >&2; exit 1; }
echo "ok - nginx logged the WebSocket upgrade (101)"
