#!/usr/bin/env bash
# Runs every check and test: format, lints, native tests (CPU backend and wgpu on whatever
# Vulkan adapter exists, lavapipe here), and the wasm build of the app.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ORFEAS_ROOT"

step() { echo; echo "=== $* ($(date +%T))"; }

step "cargo fmt"
cargo fmt --all --check

step "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "native tests (CPU backend + wgpu)"
cargo test --workspace --locked -- --test-threads=2

step "wasm build of the app (trunk)"
trunk build --release

echo; echo "=== all checks passed ($(date +%T))"
