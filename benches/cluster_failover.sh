#!/usr/bin/env bash
# Failover times (docs/cluster.md, "Measured: ... failover"): a Redis and 3 nodes started
# by deploy/cluster.sh; the load generator (--failover-kill) registers a phone (bob, digest)
# over TLS on node 1, polls it with an OPTIONS every $INTERVAL through node 2 and node 3
# (one TLS caller each), sends SIGKILL to node 1 once both reach it, reports the time from
# the kill to the first 480 on each, registers the phone again through node 2 and reports
# the time from that 200 OK to the first OPTIONS answered 200 on each. Once with the
# shipped heartbeat/node_timeout (2s/5s) and once with $SHORT_HEARTBEAT/$SHORT_TIMEOUT
# (200ms/1s), $RUNS times each, fresh nodes and Redis every run. Measures; never asserts.
#
#   benches/cluster_failover.sh   # RUNS (2), INTERVAL (5ms), SHORT_HEARTBEAT, SHORT_TIMEOUT
source "$(dirname "$0")/cluster_lib.sh"
runs="${RUNS:-2}"
interval="${INTERVAL:-5ms}"
short_hb="${SHORT_HEARTBEAT:-200ms}"
short_to="${SHORT_TIMEOUT:-1s}"

echo "# benches/cluster_failover.sh runs=$runs interval=$interval short=$short_hb/$short_to"
for run in $(seq 1 "$runs"); do
    for timing in default short; do
        start_redis
        dir="$work/failover-$timing-$run"
        if [[ "$timing" == default ]]; then
            start_nodes "$dir" "1 2 3"
        else
            start_nodes "$dir" "1 2 3" SIPROX_CLUSTER__HEARTBEAT="$short_hb" \
                SIPROX_CLUSTER__NODE_TIMEOUT="$short_to"
        fi
        out="$("$loadgen" --failover-kill "$(node_pid "$dir" 1)" \
            --phone "127.0.0.1:$(tls_port 1)" --reregister "127.0.0.1:$(tls_port 2)" \
            --proxy "127.0.0.1:$(tls_port 2)" --poll-also "127.0.0.1:$(tls_port 3)" \
            --password bob-dev-password --interval "$interval" --timeout 2s)" || true
        echo "$out" | grep -E '^(config|phone|failover)' | sed "s/^/run=$run timing=$timing: /"
        echo "run=$run timing=$timing: load $(load_avg)"
        stop_nodes "$last_deploy"
    done
done
