#!/usr/bin/env bash
# Makes the container images the real-node tests run, without a registry or a
# Docker engine, and prints the directory holding them as OCI archives
# (`ctr -n k8s.io images import` loads them; pods use imagePullPolicy: Never):
#   pause.tar    pytier.test/pause:1          the pod sandbox (a static binary)
#   python-<suite>.tar  pytier.test/python:<suite>  a Debian rootfs with python3
#   operator.tar, node-agent.tar  pytier's own images (deploy/images.sh)
# Cached under $PYTIER_CACHE/images, keyed by what goes into each image.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${PYTIER_CACHE:-/var/cache/pytier}/images
mkdir -p "$out"
# Debian suites whose python3 the tests run in pods (bookworm: CPython 3.11).
PYTHON_SUITES=${PYTIER_PYTHON_SUITES:-bookworm}
MIRROR=${PYTIER_DEBIAN_MIRROR:-http://deb.debian.org/debian}

oci_archive=$here/../../deploy/oci-archive.py
key() { cat "$oci_archive" "$here/images.sh" "$@" | sha256sum | cut -c1-16; }

# pause: one static binary, nothing else.
pause=$out/pause-$(key "$here/pause.c").tar
if [ ! -e "$pause" ]; then
  rootfs=$(mktemp -d)
  gcc -static -Os -o "$rootfs/pause" "$here/pause.c"
  strip "$rootfs/pause"
  python3 "$oci_archive" "$rootfs" "$pause" pytier.test/pause:1 --entrypoint /pause
  rm -rf "$rootfs"
fi
ln -sfn "$pause" "$out/pause.tar"

for suite in $PYTHON_SUITES; do
  image=$out/python-$suite-$(echo "$suite $MIRROR" | key -).tar
  if [ ! -e "$image" ]; then
    command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >&2; }
    echo "images.sh: building the $suite python image (debootstrap, a few minutes)" >&2
    rootfs=$(mktemp -d /var/tmp/pytier-rootfs-XXXXXX)
    debootstrap --variant=minbase --include=python3 "$suite" "$rootfs" "$MIRROR" >&2
    # What a container never uses: package caches, docs, locales, man pages.
    rm -rf "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/{doc,man,info,locale}/* \
      "$rootfs"/var/log/* "$rootfs"/dev/*
    python3 "$oci_archive" "$rootfs" "$image" "pytier.test/python:$suite" \
      --entrypoint python3 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env PYTHONUNBUFFERED=1
    rm -rf "$rootfs"
  fi
  ln -sfn "$image" "$out/python-$suite.tar"
done

# pytier's images, from this checkout's release build (deploy/images.sh).
ours=$("$here/../../deploy/images.sh" "$out/pytier")
ln -sfn "$ours/operator.tar" "$out/operator.tar"
ln -sfn "$ours/node-agent.tar" "$out/node-agent.tar"
echo "$out"
