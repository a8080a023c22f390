# Shared by the load-test scripts that start local clusters with cluster.sh
# (source it; it needs $here, this directory, and $OUT, where cluster.out goes).

# Starts `cluster.sh start NODES` in the background (ENGINE, NODE_ARGS,
# STOMPEDE_BIN, BASE_PORT, ... from the environment) and waits until it runs.
cluster_up() {
    # Emptied first: the last cluster's "running for at most" must not count
    # (it did once: the tool then got no --broker-pid).
    : > "$OUT/cluster.out"
    "$here/cluster.sh" start "$1" > "$OUT/cluster.out" 2>&1 &
    cluster_pid=$!
    for _ in $(seq 150); do
        grep -q "running for at most" "$OUT/cluster.out" 2>/dev/null && return 0
        sleep 0.2
    done
    cat "$OUT/cluster.out" >&2
    return 1
}

# Stops it, and waits for cluster_up's `cluster.sh start` to exit too: it
# polls its state file once a second and, exiting after the next cluster has
# written its own, would stop that one instead.
cluster_down() {
    "$here/cluster.sh" stop > /dev/null 2>&1 || true
    [ -n "${cluster_pid:-}" ] && wait "$cluster_pid" 2>/dev/null || true
    cluster_pid=
}
