#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for MINUTES each, one after the other, starting
# from the committed seeds (fuzz/seeds/<target>, only read) with a fresh working corpus per
# target (fuzz/corpus/run-<UTC time>/<target>, ignored by git). Stable toolchain, no
# sanitizer (-s none, see fuzz/README.md). Prints per target the executions and whether it
# found anything; exits 1 when any target crashed, timed out or ran out of memory (the
# inputs are in fuzz/artifacts/<target>/), 2 on a usage or build error.
#
# Usage: fuzz/run-all.sh MINUTES [TARGET...]     (from anywhere; nice it on a shared box)
# FUZZ_FLAGS: more libFuzzer flags for every target (e.g. FUZZ_FLAGS=-max_len=65536).
set -uo pipefail

usage() { echo "usage: $0 MINUTES [TARGET...]" >&2; exit 2; }
[[ $# -ge 1 && $1 =~ ^[0-9]+([.][0-9]+)?$ ]] || usage
minutes=$1
shift
seconds=$(awk -v m="$minutes" 'BEGIN { s = int(m * 60); print (s < 1 ? 1 : s) }')

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz   (tested with 0.13.2)" >&2
    exit 2
fi

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
[[ ${#targets[@]} -gt 0 ]] || { echo "no fuzz targets" >&2; exit 2; }

echo "building ${targets[*]} (release, debug assertions, -s none)"
if ! cargo fuzz build -s none >/dev/null; then
    echo "build failed" >&2
    exit 2
fi

stamp=$(date -u +%Y%m%dT%H%M%SZ)
runs="fuzz/corpus/run-$stamp"
logs="$runs/logs"
mkdir -p "$logs"
marker="$logs/.start"
: >"$marker"

found=0
printf '%-16s %8s %14s %10s  %s\n' target seconds executions exec/s result
for t in "${targets[@]}"; do
    corpus="$runs/$t"
    mkdir -p "$corpus" "fuzz/artifacts/$t"
    seeds=()
    [[ -d fuzz/seeds/$t ]] && seeds=("fuzz/seeds/$t")
    log="$logs/$t.log"
    # -timeout: an input that takes 10 s is a hang, and a finding.
    cargo fuzz run -s none "$t" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 ${FUZZ_FLAGS:-} >"$log" 2>&1
    rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
    artifacts=$(find "fuzz/artifacts/$t" -type f -newer "$marker" 2>/dev/null)
    if [[ $rc -eq 0 && -z $artifacts ]]; then
        result="nothing found"
    else
        found=1
        kind=$(grep -m1 -oE 'deadly signal|panicked at [^ ]+|ERROR: libFuzzer: [a-z-]+' "$log")
        result="FOUND (exit $rc${kind:+, $kind}): ${artifacts:-see $log}"
    fi
    printf '%-16s %8s %14s %10s  %s\n' "$t" "$seconds" "${execs:-?}" "${rate:-?}" "$result"
done
echo "logs and corpora: $runs"
exit "$found"
