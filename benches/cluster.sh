#!/usr/bin/env bash
# REGISTER/s with digest on one siprox node, with the in-memory store and then as a cluster
# node sharing its bindings through a real Redis (docs/cluster.md), driven by the load
# generator (benches/loadgen.rs, --flow register: REGISTER, 401, REGISTER with SHA-256
# digest, 200, over 4 persistent TLS connections). Prints, per run, the loadgen result and
# the CPU per registration of siprox (and of Redis), read from /proc and Redis's INFO.
# Measures and prints; never asserts. Loopback only; everything it starts is stopped at exit.
#
#   benches/cluster.sh            # DURATION (8s), CONCURRENCY (64), REDIS_PORT (26379)
#
# siprox listens on 127.0.0.1:25060/25061 (benches/conf.d) and 25062 (management, for the
# cluster's counters): stop any other siprox bound there first.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
duration="${DURATION:-8s}"
concurrency="${CONCURRENCY:-64}"
redis_port="${REDIS_PORT:-26379}"
work="$(mktemp -d -t siprox-bench-cluster.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --bin siprox >&2
cargo bench --bench loadgen --no-run >&2
tck="$(getconf CLK_TCK)"

wait_port() {
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "cluster.sh: port $1 never opened" >&2
    return 1
}

# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

redis_cpu() {
    redis-cli -p "$redis_port" INFO cpu |
        awk -F: '/^used_cpu_(sys|user):/ {s += $2} END {printf "%.3f", s}'
}

redis_calls() {
    redis-cli -p "$redis_port" INFO commandstats |
        awk -F'[:,=]' -v c="cmdstat_$1" '$1 == c {print $3}'
}

mkdir -p "$work/redis"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no \
    --dir "$work/redis" >"$work/redis/log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

run() {
    local mode="$1" dir="$work/$1"
    mkdir -p "$dir/conf.d"
    sed -e "s#\"\.\./certs/#\"$repo/certs/#" benches/conf.d/00-bench.toml >"$dir/conf.d/00-bench.toml"
    cat >"$dir/conf.d/10-registrar.toml" <<EOF
[script]
file = "route.cfg"
[auth]
users_file = "users.toml"
algorithms = ["SHA-256", "MD5"]
[management]
enabled = true
listen = "127.0.0.1:25062"
certificate = "$repo/certs/server.pem"
private_key = "$repo/certs/server.key"
ca_file = "$repo/certs/ca.pem"
allow = ["admin"]
[location]
snapshot_file = "var/location.json"
EOF
    cat >"$dir/route.cfg" <<'EOF'
route {
    if (method == "REGISTER") {
        if (!www_authorize("", "subscriber")) {
            www_challenge("", "0");
            exit;
        }
        consume_credentials();
        save("location");
        exit;
    }
    sl_send_reply("404", "Not Found");
}
EOF
    cat >"$dir/users.toml" <<'EOF'
realm = "siprox.test"
[[user]]
name = "bob"
password = "bench"
EOF
    if [[ "$mode" == redis ]]; then
        redis-cli -p "$redis_port" FLUSHALL >/dev/null
        redis-cli -p "$redis_port" CONFIG RESETSTAT >/dev/null
        # What [cluster] requires: the flow keys (node tokens) and the nonce secret; one
        # node on loopback, so no [cluster.tls] (clear text between nodes allowed).
        openssl rand -hex 32 >"$dir/flow.key"
        openssl rand -hex 32 >"$dir/nonce.secret"
        cat >"$dir/conf.d/20-cluster.toml" <<EOF
[cluster]
node = "bench1"
advertise = "sip:127.0.0.1:25061;transport=tls"
redis = "redis://127.0.0.1:$redis_port"
insecure_plaintext = true
[auth]
flow_key_file = "$dir/flow.key"
secret_file = "$dir/nonce.secret"
EOF
    fi
    target/release/siprox -c "$dir/conf.d" >"$dir/log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    wait_port 25061
    local c0 r0 out c1 r1 ok
    c0="$(cpu_ticks "$pid")"
    r0="$(redis_cpu)"
    out="$(cargo bench --bench loadgen -- --proxy 127.0.0.1:25061 --transport tls \
        --flow register --digest SHA-256 --duration "$duration" --concurrency "$concurrency" \
        --connections 4 --ca certs/ca.pem 2>/dev/null)"
    c1="$(cpu_ticks "$pid")"
    r1="$(redis_cpu)"
    echo "$out" | grep -E '^(result|latency name=call|failure)' | sed "s/^/$mode: /"
    ok="$(echo "$out" | sed -n 's/^result .* ok=\([0-9]*\) .*/\1/p')"
    awk -v m="$mode" -v c="$((c1 - c0))" -v t="$tck" -v n="${ok:-0}" -v r="$r0" -v s="$r1" 'BEGIN {
        if (n == 0) { print m ": no registration completed"; exit }
        printf "%s: cpu siprox_us_per_register=%.1f", m, c / t / n * 1e6
        if (m == "redis") printf " redis_us_per_register=%.1f", (s - r) / n * 1e6
        printf "\n"
    }'
    if [[ "$mode" == redis ]]; then
        local m
        m="$(curl -sS --max-time 5 --cacert certs/ca.pem --cert certs/admin.pem \
            --key certs/admin.key https://127.0.0.1:25062/metrics || true)"
        echo "$mode: redis writes hset=$(redis_calls hset) xadd=$(redis_calls xadd)" \
            "$(echo "$m" | awk '/^siprox_cluster_(queue_dropped_total|writes_deferred_total|queue_length|changes_announced_total|refreshes_unannounced_total) / {printf "%s=%s ", $1, $2}')"
    fi
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
}

echo "# benches/cluster.sh duration=$duration concurrency=$concurrency"
run memory
run redis
