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
find "$out.tmp" -name __pycache__ -prune -exec rm -rf {} +  # stale caches of a run from the source tree
cp "$target/release/libpytier_interposer.so" "$out.tmp/pytier/_native.so"
# Compiled once here, not at every interpreter start: a pod mounts the shim
# read-only, so without these each start would parse and compile
# sitecustomize and the pytier package again (about 10 M instructions on
# 3.11). Checked-hash caches stay right even if a file is edited later. One
# set per interpreter found here; another version compiles for itself.
for python in python3 python3.11 python3.12 python3.13 python3.14 python3.15; do
  command -v "$python" >/dev/null &&
    "$python" -m compileall -q --invalidation-mode checked-hash "$out.tmp" >/dev/null 2>&1 || true
done
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out"
