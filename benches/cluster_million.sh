#!/usr/bin/env bash
# 1 million registrations (docs/cluster.md, "Measured: ... 1 million registrations"): a
# Redis and node 1 started by deploy/cluster.sh; $COUNT bindings (one per AoR
# sip:u<i>@127.0.0.1) written straight into Redis in the format node 1's writer uses
# (actors/src/cluster/wire.rs: hash {prefix}:loc:{<aor>}, field node1|<contact>, JSON value,
# EXPIREAT) through `redis-cli --pipe`, owned by node 1 (alive, so other replicas keep
# them). Each binding came through an edge proxy (a Path), the load generator's UDP UAS on
# $UAS_PORT, so a lookup on another node forwards the request there and the UAS answers.
# Prints Redis used_memory before and after, node 2's VmRSS with an empty replica and after
# its resync of the $COUNT bindings (a restart: the time from its start to the log line
# "replica synced from Redis"), then OPTIONS to random AoRs through node 2 at $RATE/s and
# flat out, $RUNS times: the latency of the 200 includes node 2's lookup in its replica,
# the forward to the UAS over UDP and the 200 back (TLS from the caller).
# Measures; never asserts.
#
#   benches/cluster_million.sh    # COUNT (1000000), RATE (500), DURATION (8s), RUNS (2)
source "$(dirname "$0")/cluster_lib.sh"
count="${COUNT:-1000000}"
rate="${RATE:-500}"
duration="${DURATION:-8s}"
runs="${RUNS:-2}"
uas_port="${UAS_PORT:-25190}"
redis() { redis-cli -p "$redis_port" "$@"; }
used_memory() { redis INFO memory | awk -F: '/^used_memory:/ {print $2+0}'; }
now_s() { date +%s.%N; }

# Waits for node N's "replica synced" log line (at most 600 s); prints its bindings=.
wait_synced() {
    local log="$1/node$2/siprox.log"
    for _ in $(seq 1 12000); do
        if grep -q 'replica synced from Redis' "$log" 2>/dev/null; then
            grep 'replica synced from Redis' "$log" | tail -1 | sed -n 's/.*bindings=\([0-9]*\).*/\1/p'
            return 0
        fi
        sleep 0.05
    done
    echo "cluster_million.sh: node $2 never synced" >&2
    return 1
}

echo "# benches/cluster_million.sh count=$count rate=$rate duration=$duration runs=$runs"
start_redis
dir="$work/million"
start_nodes "$dir" "1"
wait_synced "$dir" 1 >/dev/null

start_nodes "$dir" "2"
wait_synced "$dir" 2 >/dev/null
sleep 2
rss_empty="$(rss_kib "$(node_pid "$dir" 2)")"
stop_nodes "$last_deploy"
mv "$dir/node2/siprox.log" "$dir/node2/siprox.empty.log"
echo "node2 empty replica: rss_kib=$rss_empty node1 rss_kib=$(rss_kib "$(node_pid "$dir" 1)")"

mem0="$(used_memory)"
t0="$(now_s)"
python3 - "$count" "$uas_port" "$(tls_port 1)" <<'EOF' | redis --pipe >"$work/pipe.out"
import sys, time, json
count, uas, node1_tls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
now = int(time.time())
exp = now + 7200
out = sys.stdout.buffer
def cmd(*args):
    b = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        b.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(b)
buf = []
for i in range(count):
    contact = "sip:u%d@198.51.100.7:40123;transport=tls" % i
    value = json.dumps({
        "advertise": "sip:127.0.0.1:%d;transport=tls" % node1_tls,
        "binding": {
            "contact": contact, "expires": exp, "call_id": "reg-%d@phone" % i, "cseq": 1,
            "path": ["<sip:127.0.0.1:%d;lr>" % uas], "transport": "tls",
            "source": "198.51.100.7:40123", "local": "127.0.0.1:%d" % node1_tls,
            "node": "node1", "instance": "<urn:uuid:00000000-0000-4000-8000-%012d>" % i,
            "reg_id": 1, "user_agent": "Phone/1.0", "updated": now,
        },
    }, separators=(",", ":"))
    key = "siprox:loc:{sip:u%d@127.0.0.1}" % i
    buf.append(cmd("HSET", key, "node1|" + contact, value))
    buf.append(cmd("EXPIREAT", key, exp))
    if len(buf) >= 20000:
        out.write(b"".join(buf))
        buf = []
out.write(b"".join(buf))
EOF
t1="$(now_s)"
mem1="$(used_memory)"
echo "redis fill: $(tail -1 "$work/pipe.out") seconds=$(echo "$t1 - $t0" | bc) dbsize=$(redis DBSIZE)"
echo "redis used_memory before=$mem0 after=$mem1 per_binding_bytes=$(( (mem1 - mem0) / count ))" \
    "load $(load_avg)"

t0="$(now_s)"
start_nodes "$dir" "2"
synced="$(wait_synced "$dir" 2)"
t1="$(now_s)"
pid2="$(node_pid "$dir" 2)"
sleep 2
rss_full="$(rss_kib "$pid2")"
echo "node2 resync: bindings=$synced start_to_synced_s=$(echo "$t1 - $t0" | bc) load $(load_avg)"
echo "node2 rss_kib empty=$rss_empty full=$rss_full per_binding_bytes=$(( (rss_full - rss_empty) * 1024 / count ))"

via="127.0.0.1:$(tls_port 2)"
for run in $(seq 1 "$runs"); do
    for r in "$rate" max; do
        rate_arg=()
        [[ "$r" == max ]] || rate_arg=(--rate "$r")
        out="$("$loadgen" --proxy "$via" --transport tls --flow options \
            --uas-bind "127.0.0.1:$uas_port" --uas-transport udp \
            --ruri "sip:u{n}@$via" --ruri-n "$count" --duration "$duration" \
            --concurrency 32 --connections 4 "${rate_arg[@]}")" || true
        # The five most frequent failures (each reason names its AoR).
        echo "$out" | grep -E '^(result|latency name=setup)' |
            sed "s/^/lookup run=$run rate=$r: /"
        { echo "$out" | grep -E '^failure' || true; } | head -5 |
            sed "s/^/lookup run=$run rate=$r: /"
        echo "lookup run=$run rate=$r: load $(load_avg) node2 rss_kib=$(rss_kib "$pid2")"
    done
done
