#!/usr/bin/env bash
# benches/compare.sh: siprox against Kamailio 5.6 (Debian's, benches/kamailio/) under the
# same load generator, interleaved, on TLS: the README's "Figures" comparison (issue 18).
# Unattended, loopback only; it measures and prints, never asserts; everything it starts is
# stopped at exit.
#
# Usage: benches/compare.sh [--stateful] [ROUNDS [DURATION]]     (3 10s)
#   --stateful       siprox with t_relay() (benches/conf.d-stateful) against Kamailio tm
#                    (stateful.cfg), instead of siprox's built-in route (benches/conf.d)
#                    against Kamailio forward() (stateless.cfg).
#   KAMAILIO_TLS_FIX   which flows Kamailio runs with its OpenSSL 3 workaround (one UDP and
#                    one TLS worker, benches/kamailio/common.cfg): `handshake` (default: the
#                    flow that crashes it without; invite and options get two of each, as
#                    an operator would run it on 2 cores), `all`, or 0 (none).
#
# Kamailio and its TLS module are installed when missing (deploy/ensure-deps.sh). Both
# proxies run at once, each on its own ports (siprox 25061 or 25161, Kamailio 25261 or
# 25361, TLS; UDP one below). Each round runs every flow against each proxy in turn
# (siprox, Kamailio, siprox, Kamailio, ...) for DURATION:
#   invite     INVITE-100-180-200-ACK-BYE-200, TLS in over 4 connections, 64 calls in
#              flight, UDP out to loadgen's UAS
#   options    OPTIONS-200 through the proxy to the UAS, same connections
#   handshake  a new TLS 1.3 connection per call (handshake + OPTIONS-200, then closed),
#              64 in flight
# Proxy CPU per call: utime+stime of every process of the proxy (/proc/PID/stat of the
# process and all its descendants: Kamailio forks its workers) over the loadgen run,
# divided by the calls completed. loadgen's own CPU per call is what it prints (its
# `result` line: its UAC and its UAS). The load average (`uptime`) is kept with each run:
# the machine may be shared. Raw loadgen output and proxy logs are kept in $OUT.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
stateful=""
if [[ "${1:-}" == --stateful ]]; then
    stateful=1
    shift
fi
rounds="${1:-3}"
duration="${2:-10s}"
OUT="$(mktemp -d -t siprox-compare.XXXXXX)"
# shellcheck source=lib.sh
source "$repo/benches/lib.sh"
build_bench
ensure_kamailio
if [[ -z "$kamailio_bin" ]]; then
    echo "compare.sh: kamailio is not installed (and could not be): nothing to compare" >&2
    exit 1
fi

declare -A port pids
if [[ -n "$stateful" ]]; then
    mode=stateful
    port[siprox]=25161
    port[kamailio]=25361
else
    mode=stateless
    port[siprox]=25061
    port[kamailio]=25261
fi
names=(siprox kamailio)
for n in "${names[@]}"; do port_free "${port[$n]}"; done
kam_cfg=stateless.cfg
[[ -n "$stateful" ]] && kam_cfg=stateful.cfg
if [[ -n "$stateful" ]]; then
    start_siprox siprox benches/conf.d-stateful "${port[siprox]}"
else
    start_siprox siprox benches/conf.d "${port[siprox]}"
fi
# Kamailio's workers for a flow: the OpenSSL 3 workaround (one UDP and one TLS worker) only
# where it is needed, the handshake flow, unless KAMAILIO_TLS_FIX says otherwise.
: "${KAMAILIO_TLS_FIX:=handshake}"
kam_mode_for() {
    case "$KAMAILIO_TLS_FIX" in
        0) echo nofix ;;
        all | 1) echo fix ;;
        *) if [[ "$1" == handshake ]]; then echo fix; else echo nofix; fi ;;
    esac
}
kam_mode="$(kam_mode_for invite)"
start_kamailio kamailio "$kam_cfg" "${port[kamailio]}" "$kam_mode"
# Kamailio restarted in the mode a flow needs (its log kept as kamailio.log.mode-N).
switches=0
kamailio_for() {
    local want
    want="$(kam_mode_for "$1")"
    [[ "$want" == "$kam_mode" ]] && return 0
    switches=$((switches + 1))
    kill -TERM "${pids[kamailio]}" 2>/dev/null || true
    wait "${pids[kamailio]}" 2>/dev/null || true
    mv "$OUT/kamailio.log" "$OUT/kamailio.log.mode-$switches"
    wait_closed "${port[kamailio]}"
    kam_mode="$want"
    start_kamailio kamailio "$kam_cfg" "${port[kamailio]}" "$kam_mode"
}
# A Kamailio that died in a run (see benches/kamailio/common.cfg) is started again before
# the next one; its log is kept as kamailio.log.N.
restarts=0
revive_kamailio() {
    alive "${pids[kamailio]}" && return 0
    restarts=$((restarts + 1))
    echo "# Kamailio is gone (crashed, see $OUT/kamailio.log.$restarts): started again" >&2
    wait "${pids[kamailio]}" 2>/dev/null || true
    mv "$OUT/kamailio.log" "$OUT/kamailio.log.$restarts"
    wait_closed "${port[kamailio]}"
    start_kamailio kamailio "$kam_cfg" "${port[kamailio]}" "$kam_mode"
}
for n in "${names[@]}"; do
    echo "# $n ($mode): pids $(tree ${pids[$n]} | tr '\n' ' '), TLS port ${port[$n]}" >&2
done

flows=(invite options handshake)
flow_args() {
    case "$1" in
        invite) echo "--flow invite --concurrency 64 --connections 4" ;;
        options) echo "--flow options --concurrency 64 --connections 4" ;;
        handshake) echo "--flow options --new-conn-per-call --tls-version 1.3 --concurrency 64" ;;
    esac
}

# Lines of the Kamailio logs that say a worker crashed or its memory was corrupted.
# (Not "receive_fd(): EOF": the TCP main process says that when it is stopped, as at a
# switch of mode.)
kam_errors() {
    cat "$OUT"/kamailio.log* | grep -E 'BUG|exited by a signal|CRITICAL|ALERT' |
        grep -c -v 'receive_fd(): EOF' || true
}

results="$OUT/runs.tsv"
printf 'round\tflow\tproxy\tcalls_per_s\tok\tfailed\tcpu_us_per_call\tp50_ms\tp99_ms\tloadgen_cpu_us_per_call\tload\n' >"$results"
for r in $(seq 1 "$rounds"); do
    for f in "${flows[@]}"; do
        for n in "${names[@]}"; do
            out="$OUT/$r-$f-$n.txt"
            if [[ "$n" == kamailio ]]; then
                kamailio_for "$f"
                revive_kamailio
            fi
            load="$(load_avg)"
            # shellcheck disable=SC2086
            t0="$(ticks ${pids[$n]})"
            # shellcheck disable=SC2046
            "$loadgen" --proxy "127.0.0.1:${port[$n]}" --transport tls --uas-transport udp \
                $(flow_args "$f") --duration "$duration" --ca certs/ca.pem >"$out" 2>&1 || true
            # shellcheck disable=SC2086
            t1="$(ticks ${pids[$n]})"
            line="$(result_line "$out")"
            ok="$(field ok "$line")"
            failed="$(field failed "$line")"
            cps="$(field calls_per_s "$line")"
            lg="$(field cpu_us_per_call "$line")"
            lat="$(grep '^latency name=call ' "$out" || true)"
            p50="$(field p50 "$lat")"
            p99="$(field p99 "$lat")"
            cpu="$(cpu_per_call "$t0" "$t1" "$ok" 1)"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$f" "$n" "$cps" "$ok" \
                "$failed" "$cpu" "${p50:--}" "${p99:--}" "${lg:--}" "$load" >>"$results"
            printf 'round %s %-9s %-8s %9s calls/s  ok %7s  failed %4s  %6s us CPU/call  p50 %s p99 %s ms  loadgen %s us/call  load %s\n' \
                "$r" "$f" "$n" "$cps" "$ok" "$failed" "$cpu" "${p50:--}" "${p99:--}" "${lg:--}" "$load" >&2
        done
    done
done

echo
echo "# siprox $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src actors benches || echo '+changes') ($mode) vs $("$kamailio_bin" -v | head -1 | cut -d' ' -f2-3) (OpenSSL 3 workaround, one UDP and one TLS worker, for: $KAMAILIO_TLS_FIX; else two of each), $(nproc) CPUs, $rounds rounds of $duration, load average before each run: $(cut -f11 "$results" | tail -n +2 | cut -d' ' -f1 | tr '\n' ' ')"
echo "# Kamailio log lines with BUG/CRITICAL/ALERT/signal: $(kam_errors); restarted after a crash: $restarts times; running at the end: $(alive "${pids[kamailio]}" && echo yes || echo NO)"
echo "# medians over the rounds; CPU in us per completed call (proxy: all its processes; loadgen: its UAC and UAS)"
awk -F'\t' '
    NR == 1 { next }
    { k = $2 SUBSEP $3; c[k]++; i = c[k]
      cps[k, i] = $4; cpu[k, i] = $7; p50[k, i] = $8; p99[k, i] = $9; lg[k, i] = $10; fail[k] += $6
      if (!($2 in seenf)) { seenf[$2] = 1; fo[++nf] = $2 }
      if (!($3 in seenp)) { seenp[$3] = 1; po[++np] = $3 } }
    function median(a, k, n,   i, j, t, v) {
        for (i = 1; i <= n; i++) v[i] = a[k, i]
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] + 0 < v[i] + 0) { t = v[i]; v[i] = v[j]; v[j] = t }
        return (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
    }
    END {
        printf "%-9s %-8s | %9s | %12s | %8s | %8s | %6s | %15s\n", "flow", "proxy", "calls/s", "CPU us/call", "p50 ms", "p99 ms", "failed", "loadgen us/call"
        for (a = 1; a <= nf; a++) for (b = 1; b <= np; b++) {
            k = fo[a] SUBSEP po[b]; n = c[k]
            mc[k] = median(cps, k, n); mu[k] = median(cpu, k, n)
            printf "%-9s %-8s | %9.0f | %12.1f | %8.3f | %8.3f | %6d | %15.1f\n", fo[a], po[b], mc[k], mu[k], median(p50, k, n), median(p99, k, n), fail[k], median(lg, k, n)
        }
        print ""
        for (a = 1; a <= nf; a++) {
            s = fo[a] SUBSEP "siprox"; m = fo[a] SUBSEP "kamailio"
            printf "%-9s siprox/Kamailio: calls/s %.2fx, CPU per call %.2fx (Kamailio spends %.1fx siprox'"'"'s CPU per call)\n", fo[a],
                (mc[m] > 0 ? mc[s] / mc[m] : 0), (mu[m] > 0 ? mu[s] / mu[m] : 0), (mu[s] > 0 ? mu[m] / mu[s] : 0)
        }
    }' "$results"
echo "# raw output: $OUT"
