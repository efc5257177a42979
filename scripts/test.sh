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

# Clippy lints every workspace crate while it is compiled for real (clippy-driver as the
# workspace's compiler wrapper, warnings denied), instead of in separate `cargo clippy` runs:
# those built every dependency a second time, in check mode, for 14 of a cold run's minutes.
# The wasm build below lints the three browser bundles (UI, engine worker, 3D viewer) with the
# features each is built with; the test build lints the native workspace with all its targets.
RUSTC_WORKSPACE_WRAPPER=$(rustup which clippy-driver)
export RUSTC_WORKSPACE_WRAPPER
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"

step "wasm build of the app (trunk), linted by clippy: the browser tests run against it"
trunk build --release

step "build the tests (the orfeas binary among them), every target linted by clippy"
cargo test --workspace --all-targets --locked --no-run

step "ISNet weights: convert the npm package's model (skipped when already converted and verified)"
"$CARGO_TARGET_DIR/debug/orfeas" convert-isnet "$ORFEAS_ISNET_DIST" -o "$ORFEAS_ISNET"

step "tests: native (CPU backend + wgpu on lavapipe) and end-to-end in headless Chromium"
# setup.sh installed lavapipe and ISNet: a test missing either fails (ORFEAS_ALLOW_SKIP unset).
cargo test --workspace --locked -- --test-threads=2

echo; echo "=== all checks passed ($(date +%T))"
