#!/usr/bin/env bash
# Builds the interposer and assembles the directory that goes first on
# PYTHONPATH: sitecustomize.py, the pytier package and its native library.
#   interposer/build-shim.sh [OUT]   (default: $CARGO_TARGET_DIR/pytier-shim)
# Prints OUT.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=${CARGO_TARGET_DIR:-$here/../target}
out=${1:-$target/pytier-shim}
cargo build -q --release --locked -p pytier-interposer >&2
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
cp -r "$here/python/." "$out.tmp/"
find "$out.tmp" -name __pycache__ -prune -exec rm -rf {} +
cp "$target/release/libpytier_interposer.so" "$out.tmp/pytier/_native.so"
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out"
