#!/usr/bin/env bash
# The main job: install what is missing, build the CLI and the web app, convert the background-
# removal weights, and serve the app with its models (`orfeas serve`, as a kiosk would).
# Each step says what it does, how long it usually takes, and how long it took.
set -euo pipefail
started=$SECONDS
step_started=$SECONDS
step() {
  step_started=$SECONDS
  echo
  echo "==> $1"
  echo "    ($2)"
}
took() {
  local s=$((SECONDS - step_started))
  printf '    done in %d min %02d s\n' $((s / 60)) $((s % 60))
}

step "[1/4] Installing what is missing: system packages, the wasm target, trunk, wasm-bindgen, wasm-opt, the ISNet package" \
  "first run on a 2-core machine: about 13 min, most of it compiling trunk and wasm-bindgen; later runs: 1 s"
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
took
cd "$ORFEAS_ROOT"
port=${ORFEAS_PORT:-8080}
models=${ORFEAS_MODELS:-$(dirname "$ORFEAS_ISNET")}

step "[2/4] Building the orfeas CLI and server (cargo build -p orfeas --bin orfeas)" \
  "first run: about 17 min (burn, wgpu, axum and their dependencies); later runs: seconds"
# Only the `orfeas` binary: the package's benchmark binaries are built when they are run.
cargo build -p orfeas --bin orfeas --locked
took

step "[3/4] Building the web app (trunk build --release: the UI, the engine worker, the 3D viewer)" \
  "first run: about 12 min; later runs: under a minute"
trunk build --release
took

step "[4/4] Converting the background-removal weights (orfeas convert-isnet)" \
  "about 5 s; skipped when already converted and verified"
"$CARGO_TARGET_DIR/debug/orfeas" convert-isnet "$ORFEAS_ISNET_DIST" -o "$ORFEAS_ISNET"
took

if [ ! -d "$models/hunyuan3d" ]; then
  echo
  echo "No shape model at $models/hunyuan3d (the app shows it as not installed). Convert a"
  echo "Hunyuan3D checkpoint with"
  echo "  $CARGO_TARGET_DIR/debug/orfeas convert model.fp16.ckpt --config config.yaml -o $models/hunyuan3d"
  echo "and start this again; background removal and the instant preview work without it."
fi
total=$((SECONDS - started))
echo
printf 'Ready after %d min %02d s.\n' $((total / 60)) $((total % 60))
echo "CLI: $CARGO_TARGET_DIR/debug/orfeas (--help lists every command)"
echo "Open http://127.0.0.1:$port/ in Chrome (Ctrl-C stops the server)."
exec "$CARGO_TARGET_DIR/debug/orfeas" serve --bind "127.0.0.1:$port" --models "$models" --web dist
