#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then formatting, lints and
# every test of the workspace. Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/ensure-deps.sh
ensure_deps libssl-dev pkg-config baresip-core curl python3 openssl

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
