#!/usr/bin/env bash
# Installs what Orfeas needs to build, test and serve on Debian/Ubuntu. Idempotent: it
# installs only what is missing. Source it (`. scripts/setup.sh`) to get the environment.
set -euo pipefail

ORFEAS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ORFEAS_ROOT
# One shared target directory outside the clone: CI and repeated runs reuse every build.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/orfeas/target}
# wgpu/Vulkan loaders want a private runtime dir; without one they print noise.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$HOME/.cache/orfeas/xdg}
mkdir -p "$CARGO_TARGET_DIR" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

sudo_if_needed() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: Vulkan on the CPU (lavapipe) for native GPU tests, Chromium + driver and
# Firefox ESR (WebGPU on lavapipe with shader-f16, driven over Marionette) for the browser
# tests, a C toolchain for -sys crates, node/npm for wasm-opt, nats-server for the fleet's tests
# (JetStream; the tests start their own on a free port, never the packaged service).
apt_packages=(mesa-vulkan-drivers libvulkan1 chromium chromium-driver firefox-esr pkg-config gcc libc6-dev nats-server)
# The machine's own Node.js (NodeSource) provides npm; Debian's only where there is none.
command -v npm >/dev/null || apt_packages+=(nodejs npm)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo_if_needed apt-get update -qq
  sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "setup: no Rust toolchain found; install rustup (stable >= 1.95) first" >&2
  exit 1
fi
rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown \
  || rustup target add wasm32-unknown-unknown

# Build tools, built from crates.io (Trunk must never download binaries itself).
install_target="$HOME/.cache/orfeas/install-target"
wbg_version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ORFEAS_ROOT/Cargo.lock")
if ! wasm-bindgen --version 2>/dev/null | grep -q " $wbg_version\$"; then
  echo "setup: installing wasm-bindgen-cli $wbg_version"
  CARGO_TARGET_DIR="$install_target" cargo install wasm-bindgen-cli --version "$wbg_version" --force --quiet
fi
if ! trunk --version 2>/dev/null | grep -q " 0.22.1"; then
  echo "setup: installing trunk 0.22.1"
  # Default features: trunk refuses to build without a TLS backend (tried: compile_error).
  CARGO_TARGET_DIR="$install_target" cargo install trunk --locked --version 0.22.1 \
    --ignore-rust-version --force --quiet
fi

# wasm-opt for the UI bundle: npm's binaryen 132 (Debian's binaryen 108 produces broken wasm).
node_dir="$HOME/.cache/orfeas/node"
if ! "$node_dir/node_modules/.bin/wasm-opt" --version 2>/dev/null | grep -q "version 132"; then
  echo "setup: installing binaryen 132 (wasm-opt) from npm"
  mkdir -p "$node_dir"
  (cd "$node_dir" && npm install --no-audit --no-fund --silent binaryen@132.0.0 >/dev/null)
fi
export PATH="$node_dir/node_modules/.bin:$PATH"

# ISNet background-removal weights: the npm package @imgly/background-removal-data@1.4.5 (AGPL;
# the model inside is MIT). npm checks the tarball's integrity; `orfeas convert-isnet` checks
# every chunk's sha256 and the reassembled model's, and converts it (scripts/test.sh runs it
# after the build). Neither the package nor the weights are ever committed.
isnet_npm="$HOME/.cache/orfeas/isnet-npm"
export ORFEAS_ISNET_DIST="$isnet_npm/node_modules/@imgly/background-removal-data/dist"
export ORFEAS_ISNET="${ORFEAS_ISNET:-$HOME/.cache/orfeas/models/isnet-medium}"
if [ ! -f "$ORFEAS_ISNET_DIST/resources.json" ]; then
  echo "setup: fetching @imgly/background-removal-data@1.4.5 from npm (136 MB)"
  mkdir -p "$isnet_npm"
  (cd "$isnet_npm" && npm install --no-audit --no-fund --silent --ignore-scripts \
    @imgly/background-removal-data@1.4.5 >/dev/null)
fi
