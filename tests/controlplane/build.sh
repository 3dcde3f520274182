#!/usr/bin/env bash
# Builds kube-apiserver, etcd and kwok from their published Go modules at the
# versions pinned in */go.mod, and prints the directory holding the binaries.
# Cached outside the repository (see gobuild.sh); cache root $PYTIER_CACHE
# (default /var/cache/pytier). tests/realnode/build.sh adds a node's binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${PYTIER_CACHE:-/var/cache/pytier}/controlplane
mkdir -p "$out"
. "$here/gobuild.sh"

go_build etcd "$here/etcd" . -ldflags "-s -w"
kube=$here/kubernetes
go_build kube-apiserver "$kube" ./cmd/kube-apiserver -ldflags "$(kube_version_ldflags "$kube")"
go_build kwok "$here/kwok" sigs.k8s.io/kwok/cmd/kwok -ldflags "-s -w"
# kwok moves no fake node or pod without stages: take the module's own "fast"
# ones (nodes become Ready, pods Running) from the same pinned version.
kwok_src=$(cd "$here/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
{
  cat "$kwok_src/kustomize/stage/node/fast/node-initialize.yaml"
  echo ---
  cat "$kwok_src/kustomize/stage/pod/fast/pod-ready.yaml"
} >"$out/kwok-stages.yaml"
echo "$out"
