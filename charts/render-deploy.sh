#!/usr/bin/env bash
# Renders the chart into deploy/ as plain manifests, for clusters without Helm
# (release "pytier" in namespace pytier-system, default values, monitors and
# alerts on), and copies the dashboards to deploy/dashboards/.
#
#   charts/render-deploy.sh           rewrite deploy/
#   charts/render-deploy.sh --check   exit 1 if deploy/ is stale (tests/run)
#
# Helm comes from $HELM, else tests/chart/build.sh (its pinned Go module).
set -euo pipefail
cd "$(dirname "$0")/.."
helm=${HELM:-$(tests/chart/build.sh)/helm}
check=false
[ "${1:-}" = --check ] && check=true

# deploy/<file> <- charts/pytier/templates/<template>
renders=(
  operator/rbac.yaml:operator-rbac.yaml
  operator/operator.yaml:operator.yaml
  operator/webhook.yaml:webhook.yaml
  node-agent/rbac.yaml:node-agent-rbac.yaml
  node-agent/daemonset.yaml:node-agent.yaml
  monitoring/monitors.yaml:monitors.yaml
  monitoring/prometheusrule.yaml:prometheusrule.yaml
  monitoring/dashboards.yaml:dashboards.yaml
)
stale=0
emit() {  # emit FILE: stdin is its wanted content
  local file=deploy/$1 want
  want=$(cat)
  if $check; then
    if [ "$want" != "$(cat "$file" 2>/dev/null)" ]; then
      echo "$file is stale: run charts/render-deploy.sh" >&2
      stale=1
    fi
  else
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$want" >"$file"
  fi
}
for pair in "${renders[@]}"; do
  file=${pair%%:*} template=${pair#*:}
  rendered=$(
    echo "# Rendered from charts/pytier/templates/$template by charts/render-deploy.sh; do not edit."
    "$helm" template pytier charts/pytier --namespace pytier-system \
      --set metrics.podMonitor.enabled=true,metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true \
      --show-only "templates/$template"
  )
  emit "$file" <<<"$rendered" # not through a pipe: emit must set $stale in this shell
done
for dashboard in charts/pytier/dashboards/*.json; do
  emit "dashboards/$(basename "$dashboard")" <"$dashboard"
done
exit $stale
