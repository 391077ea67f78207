# benches/lib.sh: what benches/stateful.sh and benches/compare.sh share. Sourced after
# `set -euo pipefail`, with `$repo` (the repository) and `$OUT` (a scratch directory for
# logs) set: builds the release siprox and the load generator, starts siprox and Kamailio
# (benches/kamailio/) on loopback, measures the CPU of every process of a proxy from
# /proc, and stops everything it started at exit. Loopback only; it never asserts.

hz="$(getconf CLK_TCK)"
pids_started=()
stop_started() {
    for p in "${pids_started[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids_started[@]}"; do wait "$p" 2>/dev/null || true; done
    pids_started=()
}
trap stop_started EXIT

# The release siprox and the load generator ($siprox, $loadgen).
build_bench() {
    export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
    cargo build --release --bin siprox >&2
    cargo bench --bench loadgen --no-run >&2
    loadgen="$(ls -t target/release/deps/loadgen-* | grep -v '\.d$' | head -1)"
    siprox="$repo/target/release/siprox"
    ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
}

# Kamailio 5.6 and its TLS module, installed when missing (deploy/ensure-deps.sh: apt-get,
# as root or with passwordless sudo; otherwise it says what to install). Sets
# $kamailio_bin, empty when it is still missing or NO_KAMAILIO is set.
ensure_kamailio() {
    kamailio_bin=""
    [[ -n "${NO_KAMAILIO:-}" ]] && return 0
    # shellcheck source=../deploy/ensure-deps.sh
    source "$repo/deploy/ensure-deps.sh"
    ensure_deps kamailio kamailio-tls-modules || true
    kamailio_bin="$(command -v kamailio || ls /usr/sbin/kamailio 2>/dev/null || true)"
}

# Fails when something already listens on TLS port $1 or UDP port $1 - 1.
port_free() {
    local p="$1"
    if ss -Hltn "sport = :$p" | grep -q . || ss -Hlun "sport = :$((p - 1))" | grep -q .; then
        echo "$(basename "$0"): port $p or $((p - 1)) is in use (another bench running?)" >&2
        return 1
    fi
}

wait_listen() {
    local p="$1"
    for _ in $(seq 1 200); do
        ss -Hltn "sport = :$p" | grep -q . && return 0
        sleep 0.1
    done
    echo "$(basename "$0"): nothing listens on $p" >&2
    return 1
}

# Waits until nothing listens on TLS port $1 any more (after a stop).
wait_closed() {
    for _ in $(seq 1 100); do ss -Hltn "sport = :$1" | grep -q . || return 0; sleep 0.1; done
}

# start_siprox NAME CONF_DIR TLS_PORT: sets pids[NAME].
start_siprox() {
    local name="$1" conf="$2" port="$3"
    "$siprox" -c "$conf" >"$OUT/$name.log" 2>&1 &
    local pid=$!
    pids_started+=("$pid")
    wait_listen "$port"
    pids[$name]="$pid"
}

# Kamailio 5.6 + OpenSSL 3 under TLS load: Debian 12's 5.6.3 crashes under a TLS
# handshake load with its default two TCP workers (OpenSSL 3 per-thread state shared by
# the forked workers; Kamailio issues #3791, #3695). The workaround these benches apply is
# in benches/kamailio/common.cfg (TLS_FIX, defined here unless KAMAILIO_TLS_FIX=0).
#
# start_kamailio NAME CFG TLS_PORT: Kamailio in the foreground (-DD: no daemon, children
# forked), logs on stderr (-E); shared memory 1 GiB (-m), private 64 MiB per process (-M).
# Sets pids[NAME] to the main process (the CPU is summed over all its descendants).
# A fourth argument `fix` or `nofix` overrides KAMAILIO_TLS_FIX (see benches/compare.sh).
start_kamailio() {
    local name="$1" cfg="$2" port="$3" want="${4:-}"
    local fix=()
    if [[ -z "$want" && "${KAMAILIO_TLS_FIX:-1}" != 0 ]]; then want=fix; fi
    if [[ "$want" == fix ]]; then fix=(-A TLS_FIX); fi
    "$kamailio_bin" -DD -E -m 1024 -M 64 -f "$repo/benches/kamailio/$cfg" \
        -A "CERT=\"$repo/certs/server.pem\"" -A "KEY=\"$repo/certs/server.key\"" \
        -A "CA=\"$repo/certs/ca.pem\"" -A "CTL=\"unix:$OUT/$name.ctl\"" "${fix[@]}" \
        >"$OUT/$name.log" 2>&1 &
    local pid=$!
    pids_started+=("$pid")
    wait_listen "$port"
    # The children are forked before the listeners accept; give the last ones a moment.
    sleep 1
    pids[$name]="$pid"
}

# A process and all its descendants (Kamailio forks its workers from the main process).
tree() {
    local p c
    for p in "$@"; do
        echo "$p"
        for c in $(cat /proc/"$p"/task/*/children 2>/dev/null); do tree "$c"; done
    done
}

# Sum of utime+stime (clock ticks) of these pids and their descendants: after the command
# name (which may hold spaces), utime and stime are the 12th and 13th fields of
# /proc/PID/stat.
ticks() {
    local p
    for p in $(tree "$@"); do sed 's/^.*) //' "/proc/$p/stat" 2>/dev/null || true; done |
        awk '{ t += $12 + $13 } END { print t + 0 }'
}

# True while process $1 runs (a zombie, exited but not yet waited for, does not count).
alive() {
    local s
    s="$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
    [[ -n "$s" && "$s" != Z ]]
}

load_avg() { cut -d' ' -f1-3 /proc/loadavg; }

# The `result` line of a loadgen output file, and one of its fields.
result_line() { grep '^result ' "$1" || echo 'result ok=0 failed=0 calls_per_s=0'; }
field() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$2"; }

# cpu_per_call T0 T1 OK DECIMALS: microseconds of CPU per completed call from two ticks
# readings (clock ticks, $hz per second), or "-" when no call completed.
cpu_per_call() {
    awk -v d="$(($2 - $1))" -v hz="$hz" -v ok="$3" -v p="$4" \
        'BEGIN { if (ok > 0) printf "%.*f", p, d * 1e6 / hz / ok; else print "-" }'
}
