#!/usr/bin/env bash
# Makes the CPython interpreters the interposer is tested on beyond the host's
# own, and prints a directory holding them:
#   sid/        a Debian sid chroot with python3.13, python3.14 and python3.15,
#               their regression test suites and pytest (their binaries need
#               sid's glibc, so they run in it: see tests/pythons/run);
# Cached under $PYTIER_CACHE/pythons, keyed by this script: the first build
# takes about two minutes and 700 MB.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${PYTIER_CACHE:-/var/cache/pytier}/pythons
mkdir -p "$out"
MIRROR=${PYTIER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VERSIONS="3.13 3.14 3.15"

key=$(cat "$here/build.sh" | sha256sum | cut -c1-16)
sid=$out/sid-$key
if [[ ! -e $sid/.complete ]]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >&2; }
  echo "pythons/build.sh: building the sid chroot (debootstrap, about two minutes)" >&2
  rm -rf "$sid" "$sid.tmp"
  debootstrap --variant=minbase sid "$sid.tmp" "$MIRROR" >&2
  packages=(python3-pytest)
  for v in $VERSIONS; do packages+=("python$v" "libpython$v-testsuite"); done
  # The archive's Release files may be past their Valid-Until date.
  chroot "$sid.tmp" apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
  chroot "$sid.tmp" env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
    install -y -qq --no-install-recommends "${packages[@]}" >&2
  rm -rf "$sid.tmp"/var/cache/apt/archives/*.deb "$sid.tmp"/var/lib/apt/lists/*
  touch "$sid.tmp/.complete"
  mv "$sid.tmp" "$sid"
fi
ln -sfn "$sid" "$out/sid"
echo "$out"
