#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then formatting, lints and
# every test of the workspace. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# A run from a clean clone gains nothing from incremental caches, which were a third of
# target/ (2.2 of 6.6 GB); set CARGO_INCREMENTAL=1 to keep them between local runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
. deploy/ensure-deps.sh
# redis-server also brings redis-cli (the cluster tests build a Redis Cluster with it);
# kamailio and kamailio-tls-modules: Debian's Kamailio 5.6, the peer of the differential
# test (actors/tests/kamailio_diff.rs), the carrier of actors/tests/interop_kamailio_tls.rs
# and the stock configuration siprox import is tested on (actors/tests/import_kamailio.rs).
ensure_deps libssl-dev pkg-config baresip-core curl python3 openssl redis-server \
    kamailio kamailio-tls-modules
# promtool (the alert rules), dpkg-dev (cargo deb), systemd (systemd-analyze verify).
ensure_deps prometheus dpkg-dev systemd
# g++: libFuzzer, which the fuzz targets' lint below builds (libfuzzer-sys).
ensure_deps g++

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== the fuzz targets build and lint (fuzz/ is outside the workspace, see fuzz/README.md)"
(cd fuzz && cargo fmt -- --check && cargo clippy --all-targets -- -D warnings)
echo "== the core's dependencies hold no runtime"
# The core (package siprox) is sans-IO: no async runtime may enter its normal dependency
# tree, even through a transitive crate. Dev-dependencies (the test kit, and tokio and
# openssl for benches/loadgen.rs's own endpoints) are not part of it; the tests that start
# the runtime live in actors/tests/.
runtime_deps=$(cargo tree -p siprox -e normal --prefix none |
    grep -E '^(tokio|actix|actix-[a-z0-9-]+|mio) v' | sort -u || true)
if [ -n "$runtime_deps" ]; then
    echo "the core depends on a runtime crate:" >&2
    echo "$runtime_deps" >&2
    exit 1
fi
echo "== cargo test"
cargo test --workspace
echo "== the loadgen's self-test"
# benches/loadgen.rs has no test harness: its lean engine compares itself with the engine
# it replaced (benches/lean/oracle.rs) and exits 1 on a difference.
cargo test --bench loadgen -- --self-test
echo "== operations: alert rules, Debian package, systemd unit"
promtool check rules deploy/prometheus/alerts.yml
# The package of the dev build cargo test just made (its layout, not its speed, is checked
# here): deploy/package.sh builds a release one for real use.
deb=$(PROFILE=dev deploy/package.sh)
bash tests/package.sh "$deb"
