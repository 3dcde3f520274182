#!/usr/bin/env bash
# Makes the CPython interpreters the interposer is tested on beyond the host's
# own, and prints a directory holding them:
#   sid/        a Debian sid chroot with python3.13, python3.14 and python3.15,
#               their regression test suites and venv modules, pytest and
#               valgrind (their binaries need sid's glibc, so they run in
#               it: see tests/pythons/run);
#   3.14t/python  a free-threaded CPython 3.14 (--disable-gil), built from
#               its source as the Go module proxy serves it (github.com/python/cpython;
#               Debian's mirror here serves no source packages); only the
#               interpreter, run from its build tree. No distribution packages one.
# Cached under $PYTIER_CACHE/pythons, keyed by what goes into each: the first
# build takes about two minutes and 620 MB for sid, ten more for 3.14t.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${PYTIER_CACHE:-/var/cache/pytier}/pythons
mkdir -p "$out"
# One builder at a time: a second caller (tests/pythons/run from another
# shell) waits here rather than deleting the first one's build under it.
# Taken only to build (the NUMA VM sees the cache read-only); whoever gets it
# checks again what is missing.
lock() { [[ -n ${locked:-} ]] || { exec 9>"$out/.lock" && flock 9 && locked=1; }; }
MIRROR=${PYTIER_DEBIAN_MIRROR:-http://deb.debian.org/debian}
VERSIONS="3.13 3.14 3.15"

key() { sha256sum | cut -c1-16; }
sid=$out/sid-$(echo "sid $VERSIONS $MIRROR python3-pytest libpython-testsuite venv valgrind" | key)
[[ -e $sid/.complete ]] || lock
if [[ ! -e $sid/.complete ]]; then
  command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap >&2; }
  echo "pythons/build.sh: building the sid chroot (debootstrap, about two minutes)" >&2
  rm -rf "$sid" "$sid.tmp"
  debootstrap --variant=minbase sid "$sid.tmp" "$MIRROR" >&2
  # venv and valgrind: the overhead benchmark runs in here too.
  packages=(python3-pytest valgrind)
  for v in $VERSIONS; do packages+=("python$v" "libpython$v-testsuite" "python$v-venv"); done
  # The archive's Release files may be past their Valid-Until date.
  chroot "$sid.tmp" apt-get -o Acquire::Check-Valid-Until=false update -qq >&2
  chroot "$sid.tmp" env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
    install -y -qq --no-install-recommends "${packages[@]}" >&2
  rm -rf "$sid.tmp"/var/cache/apt/archives/*.deb "$sid.tmp"/var/lib/apt/lists/*
  touch "$sid.tmp/.complete"
  mv "$sid.tmp" "$sid"
fi
[[ $(readlink "$out/sid") == "$sid" ]] || ln -sfn "$sid" "$out/sid"  # the NUMA VM sees this read-only

FT_VERSION=3.14.5  # the newest 3.14 the Go module proxy serves here
ft=$out/python$FT_VERSION-t-$(echo "$FT_VERSION --disable-gil" | key)
[[ -x $ft/python ]] || lock
if [[ ! -x $ft/python ]]; then
  echo "pythons/build.sh: building a free-threaded CPython $FT_VERSION (about ten minutes)" >&2
  src=$(cd /var/tmp && GOFLAGS=-modcacherw go mod download -json "github.com/python/cpython@v$FT_VERSION+incompatible" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$ft.tmp" && cp -r "$src" "$ft.tmp" && chmod -R u+w "$ft.tmp"
  # Module zips keep no file modes.
  find "$ft.tmp" -name configure -o -name '*.sh' -o -name makesetup -o -name install-sh -o -name 'config.*' | xargs chmod +x
  (cd "$ft.tmp" && ./configure -q --disable-gil --without-ensurepip && make -s -j"$(nproc)" python) >&2
  mv "$ft.tmp" "$ft"
fi
[[ $(readlink "$out/3.14t") == "$ft" ]] || ln -sfn "$ft" "$out/3.14t"
echo "$out"
