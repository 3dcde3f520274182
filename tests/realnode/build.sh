#!/usr/bin/env bash
# Builds what a real Kubernetes node needs, from published Go modules at the
# versions pinned in this directory's wrapper modules and in
# tests/controlplane/kubernetes (the kubelet, scheduler and controller manager
# of the same release as the test API server), and prints the directory that
# holds them. Cached like the control plane (see ../controlplane/gobuild.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${PYTIER_CACHE:-/var/cache/pytier}/realnode
mkdir -p "$out/cni"
. "$here/../controlplane/gobuild.sh"

# runc links libseccomp (cgo) so containers get the kubelet's seccomp profiles.
if ! [ -e /usr/include/seccomp.h ]; then
  echo "build.sh: installing libseccomp-dev (runc links it)" >&2
  apt-get update -qq && apt-get install -y -qq --no-install-recommends libseccomp-dev >&2
fi

ctrd=$(cd "$here/containerd" && go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)
ctrd_ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$ctrd"
for cmd in containerd ctr containerd-shim-runc-v2; do
  go_build "$cmd" "$here/containerd" "github.com/containerd/containerd/v2/cmd/$cmd" -ldflags "$ctrd_ldflags"
done

runc=$(cd "$here/runc" && go list -m -f '{{.Version}}' github.com/opencontainers/runc)
CGO_ENABLED=1 go_build runc "$here/runc" github.com/opencontainers/runc \
  -tags seccomp -ldflags "-s -w -X main.version=${runc#v}"

# The node network: a bridge with host-local addresses (no iptables here, so no portmap).
for plugin in ipam/host-local main/bridge main/loopback; do
  out=$out/cni go_build "${plugin#*/}" "$here/cni-plugins" "github.com/containernetworking/plugins/plugins/$plugin" \
    -ldflags "-s -w"
done
kube=$here/../controlplane/kubernetes
kube_ldflags=$(kube_version_ldflags "$kube")
for cmd in kubelet kube-scheduler kube-controller-manager; do
  go_build "$cmd" "$kube" "./cmd/$cmd" -ldflags "$kube_ldflags"
done

echo "$out"
