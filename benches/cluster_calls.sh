#!/usr/bin/env bash
# Call setup latency for a phone on the same node vs on another node (docs/cluster.md,
# "Measured: calls across nodes"). A Redis and 2 nodes started by deploy/cluster.sh (the
# shipped conf.d and default script); the load generator registers a phone (user bob of
# conf.d/auth/users.toml, digest) over TLS on node 1, which answers the INVITEs that reach
# it over that connection; callers send INVITE-180-200-ACK-BYE-200 for sip:bob@<node> over
# 4 TLS connections into node 1 (same node) or node 2 (looked up in node 2's replica and
# routed to node 1 over the node-to-node TLS). Each case at $RATE calls/s and flat out,
# $RUNS times; prints the loadgen lines with the load average. Measures; never asserts.
#
#   benches/cluster_calls.sh      # DURATION (8s), RATE (200), CONCURRENCY (32), RUNS (2)
source "$(dirname "$0")/cluster_lib.sh"
duration="${DURATION:-8s}"
rate="${RATE:-200}"
concurrency="${CONCURRENCY:-32}"
runs="${RUNS:-2}"

start_redis
dir="$work/calls"
start_nodes "$dir" "1 2"
node1="127.0.0.1:$(tls_port 1)"
echo "# benches/cluster_calls.sh duration=$duration rate=$rate concurrency=$concurrency runs=$runs"
for run in $(seq 1 "$runs"); do
    for case in same other; do
        if [[ "$case" == same ]]; then via="$node1"; else via="127.0.0.1:$(tls_port 2)"; fi
        for r in "$rate" max; do
            rate_arg=()
            [[ "$r" == max ]] || rate_arg=(--rate "$r")
            out="$("$loadgen" --proxy "$via" --transport tls --flow invite \
                --phone "$node1" --password bob-dev-password --ruri "sip:bob@$via" \
                --duration "$duration" --concurrency "$concurrency" --connections 4 \
                "${rate_arg[@]}")" || true
            echo "$out" | grep -E '^(phone|result|latency|failure)' |
                sed "s/^/run=$run case=$case rate=$r: /"
            echo "run=$run case=$case rate=$r: load $(load_avg)"
        done
    done
done
