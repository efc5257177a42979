#!/usr/bin/env bash
# Runs every check and test: format, lints (native and wasm32), native tests (CPU backend and
# wgpu on whatever Vulkan adapter exists, lavapipe here), and the wasm build of the app.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ORFEAS_ROOT"

step() { echo; echo "=== $* ($(date +%T))"; }

step "cargo fmt"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo clippy, engine for wasm32 (the browser build of the loader)"
cargo clippy -p orfeas-engine --target wasm32-unknown-unknown --locked -- -D warnings

step "native tests (CPU backend + wgpu)"
# setup.sh installed lavapipe: the wgpu tests must run, not skip.
ORFEAS_REQUIRE_GPU=1 cargo test --workspace --locked -- --test-threads=2

step "wasm build of the app (trunk)"
trunk build --release

echo; echo "=== all checks passed ($(date +%T))"
