#!/usr/bin/env bash
# Our q8 ISNet against imgly's quint8 ISNet under onnxruntime (a measurement, not a CI step):
# a venv with onnxruntime outside the repository, the q8 set written from the set-up's f16 one.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh >/dev/null
venv="$HOME/.cache/orfeas/ortvenv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q onnxruntime pillow numpy safetensors
orfeas="$CARGO_TARGET_DIR/debug/orfeas"
# Built by scripts/test.sh (or `cargo test --workspace --no-run`), with the tests' features.
[ -x "$orfeas" ] || cargo test --workspace --all-targets --locked --no-run -q
q8="$HOME/.cache/orfeas/models/isnet-medium-q8"
"$orfeas" convert-isnet "$ORFEAS_ISNET_DIST" -o "$q8" --quant q8
"$venv/bin/python" scripts/compare_isnet_quint8.py "$ORFEAS_ISNET_DIST" \
  "$(dirname "$PWD")/shared/fixtures/public" "$orfeas" "$ORFEAS_ISNET" "$q8"
