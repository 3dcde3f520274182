#!/usr/bin/env bash
# Inside the NUMA VM (run by tests/integration/agent_numa.rs through
# tests/numa-vm/run --tiered --net): the real node agent, talking to the
# host's API server over the VM's network, tiers one pod's real Python
# service. DIR (shared with the host) holds the agent's kubeconfig; results
# go back there. The pod's kubelet directory (with its socket emptyDir) is
# made in the guest's own /tmp, as a kubelet would make it.
#   agent-job.sh DIR NODE POD_UID SECONDS
set -euo pipefail
dir=$1 node=$2 uid=$3 seconds=$4
shim_host=/tmp/pytier-shim pods=/tmp/kubelet/pods
socket_dir=$pods/$uid/volumes/kubernetes.io~empty-dir/pytier-run
mkdir -p "$socket_dir" && chmod 777 "$socket_dir"
agent=${PYTIER_AGENT_BIN:?}
export KUBECONFIG=$dir/kubeconfig RUST_LOG=info,node_agent=debug
"$agent" serve --node-name "$node" --shim-host-dir "$shim_host" --kubelet-pods-dir "$pods" \
  --cgroup-root /nonexistent --no-memory-nodes --metrics-addr 127.0.0.1:9478 \
  --observe-every 2 --status-every 2 >"$dir/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 300); do [[ -e $shim_host/current/pytier/_native.so ]] && break; sleep 0.2; done
PYTHONPATH=$shim_host/current PYTIER_SOCKET_DIR=$socket_dir PYTIER_CONTAINER=app \
  python3 "$(dirname "$0")/agent_workload.py" "$seconds" http://127.0.0.1:9478/metrics "$dir/metrics.txt" \
  >"$dir/workload.json"
kill "$agent_pid"
wait "$agent_pid" || true
