#!/usr/bin/env bash
# Builds and runs siprox on the embedded default configuration (conf.d/ on 127.0.0.1,
# development certificates generated into certs/ on first run). Extra arguments go to siprox.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/ensure-deps.sh
ensure_deps libssl-dev pkg-config
# siproxctl and `siprox check` come from the same release build: target/release/.
cargo build --release --bin siprox --bin siproxctl
exec target/release/siprox "$@"
