#!/usr/bin/env bash
# Builds the Debian package from the checkout: the release binaries (siprox, siproxctl), the
# man pages and shell completions generated from the code (actors/examples/gen_assets.rs,
# into target/<profile>/assets), then `cargo deb`. Prints the path of the .deb
# (target/debian/siprox_<version>-1_<arch>.deb). Extra arguments go to cargo deb.
# $PROFILE (default release) builds with another cargo profile: tests/run.sh packages the
# dev build it has already made, to check the package's layout without a second build.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/ensure-deps.sh
ensure_deps libssl-dev pkg-config dpkg-dev
# cargo-deb 3.8.0 builds with Rust 1.85 and later (checked with this repository's 1.88+).
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb@3.8.0 >&2
profile="${PROFILE:-release}"
dir="$profile"
[ "$profile" = dev ] && dir=debug
cargo build --profile "$profile" -p siprox-actors --bins >&2
cargo run --profile "$profile" -q -p siprox-actors --example gen_assets -- "target/$dir/assets" >&2
# Man pages compressed, as Debian ships them (-n: no name or time stamp, reproducible).
gzip -9nf "target/$dir/assets/man/"*.[58]
args=(--no-build -p siprox-actors)
if [ "$profile" != release ]; then
    # The assets name target/release/...: cargo deb maps them to the chosen profile.
    args+=(--profile "$profile")
fi
deb=$(cargo deb "${args[@]}" "$@" | tail -1)
echo "$deb"
