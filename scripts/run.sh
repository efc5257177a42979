#!/usr/bin/env bash
# The main job: install what is missing, build the CLI and the web app, convert the background-
# removal weights, and serve the app with its models (`orfeas serve`, as a kiosk would).
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ORFEAS_ROOT"
port=${ORFEAS_PORT:-8080}
models=${ORFEAS_MODELS:-$(dirname "$ORFEAS_ISNET")}
echo "Orfeas: building the orfeas CLI..."
cargo build -p orfeas --locked
echo "Orfeas: building the web app..."
trunk build --release
echo "Orfeas: background-removal weights..."
"$CARGO_TARGET_DIR/debug/orfeas" convert-isnet "$ORFEAS_ISNET_DIST" -o "$ORFEAS_ISNET"
if [ ! -d "$models/hunyuan3d" ]; then
  echo "No shape model at $models/hunyuan3d: convert a Hunyuan3D checkpoint with"
  echo "  $CARGO_TARGET_DIR/debug/orfeas convert model.fp16.ckpt --config config.yaml -o $models/hunyuan3d"
  echo "(background removal and the instant preview work without it)."
fi
echo
echo "CLI: $CARGO_TARGET_DIR/debug/orfeas (--help lists every command)"
echo "Open http://127.0.0.1:$port/ in Chrome (Ctrl-C stops the server)."
exec "$CARGO_TARGET_DIR/debug/orfeas" serve --bind "127.0.0.1:$port" --models "$models" --web dist
