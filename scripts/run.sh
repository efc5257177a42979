#!/usr/bin/env bash
# The main job: install what is missing, build the CLI and the web app, and serve the app.
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$ORFEAS_ROOT"
port=${ORFEAS_PORT:-8080}
echo "Orfeas: building the orfeas CLI..."
cargo build -p orfeas --locked
echo "Orfeas: building the web app..."
trunk build --release
echo
echo "CLI: $CARGO_TARGET_DIR/debug/orfeas (pack, verify, load; --help)"
echo "Open http://127.0.0.1:$port/ in Chrome (Ctrl-C stops the server)."
exec trunk serve --release --port "$port" --no-autoreload
