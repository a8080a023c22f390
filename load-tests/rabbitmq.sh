#!/usr/bin/env bash
# Start, stop or locate a private RabbitMQ with Web-STOMP on loopback only,
# as ../shared/DESIGN.md §4 describes (as root, without Debian's wrapper).
#
#   load-tests/rabbitmq.sh start   # installs rabbitmq-server if missing; waits until :15674 answers
#   load-tests/rabbitmq.sh pid     # the beam.smp pid (for --broker-pid)
#   load-tests/rabbitmq.sh stop
#
# State lives in $RABBIT_DIR (default load-tests/.rabbitmq, git-ignored).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${RABBIT_DIR:-$here/.rabbitmq}"
port="${RABBIT_WS_PORT:-15674}"
bin=/usr/lib/rabbitmq/bin

env_setup() {
    mkdir -p "$dir/mnesia" "$dir/log" "$dir/home"
    export HOME="$dir/home"
    export RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$dir/mnesia"
    export RABBITMQ_LOG_BASE="$dir/log"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_NODENAME="${RABBITMQ_NODENAME:-stompede-load@localhost}"
    export RABBITMQ_PID_FILE="$dir/rabbit.pid"
}

install() {
    if [ ! -x "$bin/rabbitmq-server" ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server >/dev/null
    fi
}

write_config() {
    cat > "$dir/rabbitmq.conf" <<CONF
log.file = false
log.console = false
loopback_users = none
listeners.tcp.default = 127.0.0.1:${RABBIT_AMQP_PORT:-5672}
management.tcp.ip = 127.0.0.1
stomp.listeners.tcp.1 = 127.0.0.1:${RABBIT_STOMP_PORT:-61613}
web_stomp.tcp.ip = 127.0.0.1
web_stomp.tcp.port = $port
web_stomp.ws_frame = binary
web_stomp.ws_opts.compress = false
CONF
    echo '[rabbitmq_stomp,rabbitmq_web_stomp].' > "$dir/enabled_plugins"
}

pid() {
    env_setup
    "$bin/rabbitmqctl" eval 'list_to_integer(os:getpid()).' 2>/dev/null | tr -d '"'
}

case "${1:-}" in
start)
    install
    env_setup
    write_config
    if pid >/dev/null 2>&1 && [ -n "$(pid)" ]; then
        echo "rabbitmq already running (pid $(pid))"
        exit 0
    fi
    nohup "$bin/rabbitmq-server" > "$dir/log/stdout.log" 2>&1 &
    for _ in $(seq 1 120); do
        if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
            echo "rabbitmq Web-STOMP on ws://127.0.0.1:$port/ws (pid $(pid))"
            exit 0
        fi
        sleep 1
    done
    echo "rabbitmq did not open :$port in 120 s; see $dir/log/stdout.log" >&2
    exit 1
    ;;
stop)
    env_setup
    "$bin/rabbitmqctl" stop >/dev/null 2>&1 || true
    # epmd was started for this node on loopback; stop it if no node is left.
    if command -v epmd >/dev/null; then epmd -kill >/dev/null 2>&1 || true; fi
    ;;
pid)
    pid
    ;;
*)
    echo "usage: $0 start|stop|pid" >&2
    exit 2
    ;;
esac
