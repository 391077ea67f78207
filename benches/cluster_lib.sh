# Sourced by benches/cluster_calls.sh, cluster_million.sh and cluster_failover.sh: builds
# the release binaries and the load generator, starts a Redis of their own and siprox
# nodes through deploy/cluster.sh (its conf.d, certificates and [cluster] section, on the
# bench's own ports), and stops all of it at exit. Loopback only; never asserts.
#
# Ports: Redis $REDIS_PORT (26390); node N on $BASE_PORT + 10*N (SIP), +1 (TLS), +2
# (management), BASE_PORT 25100: node 1 is 25110/25111/25112.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
redis_port="${REDIS_PORT:-26390}"
base="${BASE_PORT:-25100}"
work="$(mktemp -d -t siprox-bench-cl.XXXXXX)"
# deploy/cluster.sh runs (each stops its own nodes on TERM) and the Redis.
deploys=()
redis_pid=""
cleanup() {
    for p in "${deploys[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${deploys[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ -n "$redis_pid" ]]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
cargo build --release --bin siprox --bin siproxctl >&2
cargo bench --bench loadgen --no-run >&2
loadgen="$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)"
export SIPROX="$repo/target/release/siprox" SIPROXCTL="$repo/target/release/siproxctl"

tls_port() { echo $((base + 10 * $1 + 1)); }
sip_port() { echo $((base + 10 * $1)); }
node_pid() { cat "$1/node$2/siprox.pid"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

# A fresh, empty Redis on $redis_port (a previous one is stopped first).
start_redis() {
    if [[ -n "$redis_pid" ]]; then
        kill -TERM "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$work/redis"
    mkdir -p "$work/redis"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
        --dir "$work/redis" >"$work/redis/log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "cluster bench: redis never answered" >&2
    return 1
}

# start_nodes DIR "1 2 3" [VAR=value ...]: deploy/cluster.sh starts those nodes of DIR
# on the bench's Redis; returns once each answers on management. Sets $last_deploy.
start_nodes() {
    local dir="$1" nodes="$2"
    shift 2
    mkdir -p "$dir"
    # One output file per run: "up" lines of an earlier run must not count.
    starts=$((${starts:-0} + 1))
    local out="$dir/deploy.$starts.out"
    env "$@" REDIS="\"redis://127.0.0.1:$redis_port\"" BASE_PORT="$base" NODES="$nodes" \
        deploy/cluster.sh "$dir" >"$out" 2>&1 &
    last_deploy=$!
    deploys+=("$last_deploy")
    local want
    want="$(wc -w <<<"$nodes")"
    for _ in $(seq 1 600); do
        if [[ "$(grep -c 'up: SIP' "$out" 2>/dev/null || true)" -ge "$want" ]]; then
            return 0
        fi
        if ! kill -0 "$last_deploy" 2>/dev/null; then
            echo "cluster bench: deploy/cluster.sh exited:" >&2
            cat "$out" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "cluster bench: nodes $nodes never came up" >&2
    return 1
}

# stop_nodes PID: stops a deploy/cluster.sh run and its nodes.
stop_nodes() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
