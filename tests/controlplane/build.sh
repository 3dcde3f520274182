#!/usr/bin/env bash
# Builds kube-apiserver, etcd and kwok from their published Go modules at the
# versions pinned in */go.mod, and prints the directory holding the binaries.
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

# build NAME [PACKAGE]: builds PACKAGE (default: the wrapper's own main.go) of
# the wrapper module $here/NAME into $out/NAME-<hash> and links $out/NAME to it.
build() {
  local name=$1 dir=$here/$1 pkg=${2:-.}
  local key
  key=$(find "$dir" -maxdepth 1 -type f -name '*go*' | sort | xargs cat | sha256sum | cut -c1-16)
  local bin=$out/$name-$key
  if [ ! -x "$bin" ]; then
    local ldflags=""
    if [ "$name" = kube-apiserver ]; then
      # Stamp the upstream version so `--version` and the log say what runs.
      local v
      v=$(cd "$dir" && go list -m -f '{{.Version}}' k8s.io/kubernetes)
      local vpkg=k8s.io/component-base/version
      ldflags="-X $vpkg.gitVersion=$v -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$(echo "$v" | cut -d. -f2) -X $vpkg.gitTreeState=clean"
    fi
    echo "build.sh: building $name (cache miss, key $key); a cold build takes minutes" >&2
    (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin.tmp" "$pkg")
    mv "$bin.tmp" "$bin"
  fi
  ln -sfn "$bin" "$out/$name"
}

build etcd
build kube-apiserver
build kwok sigs.k8s.io/kwok/cmd/kwok
# kwok moves no fake node or pod without stages: take the module's own "fast"
# ones (nodes become Ready, pods Running) from the same pinned version.
kwok_src=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
{
  cat "$kwok_src/kustomize/stage/node/fast/node-initialize.yaml"
  echo ---
  cat "$kwok_src/kustomize/stage/pod/fast/pod-ready.yaml"
} >"$out/kwok-stages.yaml"
echo "$out"
