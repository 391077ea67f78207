#!/usr/bin/env bash
# Starts a Redis and 3 siprox nodes on 127.0.0.1 that share their registrations through it
# (docs/cluster.md), for trying the cluster on one machine. Each node has its own tree in
# DIR (default: a new temp dir): nodeN/conf.d (the repository's conf.d with its own ports
# and a [cluster] section), nodeN/certs (its development certificates), nodeN/siprox.log,
# and cluster/ (what the nodes share: a cluster CA and a certificate per node for TLS
# between nodes, the flow key file and the digest nonce secret).
# Ctrl-C (or SIGTERM) stops the nodes and Redis. A DIR given again is reused as it is, so
# edits to its conf.d trees survive a restart. Never listens on anything but 127.0.0.1.
# Each node's pid is in nodeN/siprox.pid while it runs (benches/cluster_*.sh kill one).
#
#   deploy/cluster.sh [DIR]
#
# Ports: Redis on $REDIS_PORT (default 6390); node N (1..3) on $BASE_PORT + 10*N for SIP
# UDP/TCP, +1 for SIP TLS, +2 for management (default BASE_PORT 5100: node 1 is 5110,
# 5111, 5112). $SIPROX and $SIPROXCTL name the binaries (default: built with cargo
# --release). $REDIS, when set, is the `[cluster] redis` value to use instead of starting a
# Redis: a URL in quotes, or a TOML list of Redis Cluster seeds. Then, for example:
#   siproxctl --url https://127.0.0.1:5112 --conf-dir DIR/node1/conf.d cluster
# $NODES (default "1 2 3") names the nodes to start: another run with the same DIR and
# $REDIS can start the others later.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-$(mktemp -d -t siprox-cluster.XXXXXX)}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
redis_port="${REDIS_PORT:-6390}"
base="${BASE_PORT:-5100}"
nodes="${NODES:-1 2 3}"

if [[ -z "${SIPROX:-}" || -z "${SIPROXCTL:-}" ]]; then
    (cd "$repo" && cargo build --release --bin siprox --bin siproxctl)
    SIPROX="${SIPROX:-$repo/target/release/siprox}"
    SIPROXCTL="${SIPROXCTL:-$repo/target/release/siproxctl}"
fi
[[ -n "${REDIS:-}" ]] || command -v redis-server >/dev/null || {
    echo "cluster.sh: redis-server is needed (Debian: apt-get install redis-server)" >&2
    exit 1
}

pids=()
stop() {
    trap - INT TERM EXIT
    echo "cluster.sh: stopping" >&2
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    exit 0
}
trap stop INT TERM EXIT

# Waits until "$@" succeeds, at most 30 s.
wait_for() {
    for _ in $(seq 1 300); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "cluster.sh: timed out waiting for: $*" >&2
    return 1
}

redis="${REDIS:-}"
if [[ -z "$redis" ]]; then
    mkdir -p "$dir/redis"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$dir/redis" >"$dir/redis/redis.log" 2>&1 &
    pids+=($!)
    wait_for redis-cli -p "$redis_port" ping
    redis="\"redis://127.0.0.1:$redis_port\""
fi

# What the nodes share: a cluster CA and a certificate per node (TLS between nodes,
# `[cluster.tls]`), the flow key file (node tokens) and the digest nonce secret.
shared="$dir/cluster"
if [[ ! -f "$shared/ca.pem" ]]; then
    mkdir -p "$shared"
    (
        umask 077
        openssl rand -hex 32 >"$shared/flow.key"
        openssl rand -hex 32 >"$shared/nonce.secret"
    )
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
        -keyout "$shared/ca.key" -out "$shared/ca.pem" \
        -subj "/CN=siprox cluster CA for deploy-cluster.sh" 2>/dev/null
    for n in 1 2 3; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
            -keyout "$shared/node$n.key" -out "$shared/node$n.csr" -subj "/CN=node$n" 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' \
            >"$shared/node$n.ext"
        openssl x509 -req -in "$shared/node$n.csr" -CA "$shared/ca.pem" -CAkey "$shared/ca.key" \
            -CAcreateserial -days 30 -extfile "$shared/node$n.ext" \
            -out "$shared/node$n.pem" 2>/dev/null
    done
fi

for n in $nodes; do
    sip=$((base + 10 * n)) tls=$((base + 10 * n + 1)) mgmt=$((base + 10 * n + 2))
    node="$dir/node$n"
    if [[ ! -d "$node/conf.d" ]]; then
        mkdir -p "$node"
        cp -r "$repo/conf.d" "$node/conf.d"
        sed -i -e "s/127\.0\.0\.1:5060/127.0.0.1:$sip/g" -e "s/127\.0\.0\.1:5061/127.0.0.1:$tls/g" \
            -e "s/127\.0\.0\.1:5062/127.0.0.1:$mgmt/g" "$node/conf.d/00-core.toml"
        cat >"$node/conf.d/50-cluster.toml" <<EOF
# Written by deploy/cluster.sh: this node in the cluster of three.
[cluster]
node = "node$n"
advertise = "sip:127.0.0.1:$tls;transport=tls"
redis = $redis
key_prefix = "siprox"

[cluster.tls]
certificate = "$shared/node$n.pem"
private_key = "$shared/node$n.key"
ca_file = "$shared/ca.pem"

[auth]
flow_key_file = "$shared/flow.key"
secret_file = "$shared/nonce.secret"
EOF
    fi
    "$SIPROX" -c "$node/conf.d" >"$node/siprox.log" 2>&1 &
    pids+=($!)
    echo $! >"$node/siprox.pid"
    wait_for "$SIPROXCTL" --url "https://127.0.0.1:$mgmt" --conf-dir "$node/conf.d" \
        --timeout 2 version
    echo "cluster.sh: node$n up: SIP 127.0.0.1:$sip (udp, tcp), TLS 127.0.0.1:$tls," \
        "management https://127.0.0.1:$mgmt, log $node/siprox.log"
done
echo "cluster.sh: Redis $redis; the nodes as node1 sees them:"
echo "  $SIPROXCTL --url https://127.0.0.1:$((base + 12)) --conf-dir $dir/node1/conf.d cluster"
echo "cluster.sh: Ctrl-C stops everything"
# Until a signal. A node that is stopped (`siproxctl ... kill`, to watch the others mark
# it dead) leaves the rest running.
wait || true
stop
