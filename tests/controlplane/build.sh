#!/usr/bin/env bash
# Builds kube-apiserver and etcd from their published Go modules at the versions
# pinned in */go.mod, and prints the directory holding the binaries.
#
# Binaries are cached outside the repository, keyed by a hash of each wrapper
# module (go.mod, go.sum, main.go), so a warm run builds nothing. Cache root:
# $PYTIER_CACHE (default /var/cache/pytier).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${PYTIER_CACHE:-/var/cache/pytier}
out=$cache/controlplane
mkdir -p "$out"

command -v go >/dev/null || { echo "build.sh: Go toolchain not found; install Go >= 1.26" >&2; exit 1; }

# build NAME: builds $here/NAME into $out/NAME-<hash> and links $out/NAME to it.
build() {
  local name=$1 dir=$here/$1
  local key
  key=$(cat "$dir/go.mod" "$dir/go.sum" "$dir/main.go" | sha256sum | cut -c1-16)
  local bin=$out/$name-$key
  if [ ! -x "$bin" ]; then
    local ldflags=""
    if [ "$name" = kube-apiserver ]; then
      # Stamp the upstream version so `--version` and the log say what runs.
      local v
      v=$(cd "$dir" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
      local pkg=k8s.io/component-base/version
      ldflags="-X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $pkg.gitTreeState=clean"
    fi
    echo "build.sh: building $name (cache miss, key $key); a cold build takes minutes" >&2
    (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin.tmp" .)
    mv "$bin.tmp" "$bin"
  fi
  ln -sfn "$bin" "$out/$name"
}

build etcd
build kube-apiserver
echo "$out"
