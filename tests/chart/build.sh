#!/usr/bin/env bash
# Builds what the chart's tests need, at the versions the wrapper modules here
# pin, and prints the directory holding them:
#   helm                  Helm (tests/chart/helm/go.mod)
#   monitoring-crds/      the Prometheus Operator's CRDs (PodMonitor,
#                         ServiceMonitor, PrometheusRule, ...), made by
#                         controller-gen from its API types as upstream does
#                         (tests/chart/monitoring/go.mod)
# Cached outside the repository (see gobuild.sh); cache root $PYTIER_CACHE.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${PYTIER_CACHE:-/var/cache/pytier}/chart-tools
mkdir -p "$out"
. "$here/../controlplane/gobuild.sh"

version=$(cd "$here/helm" && go list -m -f '{{.Version}}' helm.sh/helm/v4)
go_build helm "$here/helm" helm.sh/helm/v4/cmd/helm \
  -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version"

go_build controller-gen "$here/monitoring" sigs.k8s.io/controller-tools/cmd/controller-gen -ldflags "-s -w"
key=$(cat "$here"/monitoring/go.mod "$here"/monitoring/go.sum | sha256sum | cut -c1-16)
crds=$out/monitoring-crds-$key
if [ ! -d "$crds" ]; then
  (cd "$here/monitoring" && "$out/controller-gen" crd:allowDangerousTypes=true,maxDescLen=0 \
    paths=github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1 output:crd:dir="$crds.tmp")
  mv "$crds.tmp" "$crds"
fi
ln -sfn "$crds" "$out/monitoring-crds"
echo "$out"
