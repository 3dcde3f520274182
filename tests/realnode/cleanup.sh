#!/usr/bin/env bash
# Removes everything a real-node run put on this machine, even after a test
# process was killed before it could clean up:
#   tests/realnode/cleanup.sh RUN_DIR   one run (the harness calls it on drop)
#   tests/realnode/cleanup.sh --stale   every run dir left behind (called
#                                       before a node starts, and by tests/run)
# What goes: the node's processes (kubelet, containerd, shims, containers),
# mounts under the run dir, the kubepods cgroups, the bridge, the fixed host
# paths the kubelet and CNI use, the run dir; kernel settings the kubelet
# changed (saved in RUN_DIR/sysctl.saved at start) are restored.
set -uo pipefail
BRIDGE=pytier0
# Paths the kubelet, containerd and CNI use whatever they are told.
FIXED_PATHS=(/var/lib/kubelet/device-plugins /var/lib/kubelet/plugins_registry /var/lib/kubelet/pod-resources
  /var/lib/kubelet/plugins /var/lib/cni /run/containerd /etc/cni)

clean_run() {
  local dir=$1
  [ -d "$dir" ] || return 0
  # Containers first (whatever is in a kubepods cgroup), then every process
  # that names the run dir: kubelet, containerd, shims.
  local pids
  pids=$(cat /sys/fs/cgroup/pids/kubepods/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/cgroup.procs \
    /sys/fs/cgroup/pids/kubepods/*/*/cgroup.procs /sys/fs/cgroup/pids/kubepods/*/*/*/cgroup.procs 2>/dev/null)
  for p in /proc/[0-9]*; do
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF "$dir/"; then pids+=" ${p#/proc/}"; fi
  done
  [ -n "${pids// /}" ] && kill -9 $pids 2>/dev/null
  sleep 0.2
  # Mounts under the run dir (rootfs overlays, netns, volumes), deepest first.
  awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  if [ -f "$dir/sysctl.saved" ]; then
    while read -r key value; do echo "$value" >"/proc/sys/$key" 2>/dev/null; done <"$dir/sysctl.saved"
  fi
  rm -rf "$dir"
}

clean_host() {
  for c in /sys/fs/cgroup/*/kubepods; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  ip link del "$BRIDGE" 2>/dev/null
  for path in "${FIXED_PATHS[@]}"; do rm -rf "$path"; done
  rmdir /var/lib/kubelet 2>/dev/null
  return 0
}

case ${1:-} in
  --stale)
    for dir in /tmp/pytier-realnode-*; do [ -d "$dir" ] && clean_run "$dir"; done
    clean_host ;;
  /*) clean_run "$1"; clean_host ;;
  *) echo "usage: $0 RUN_DIR | --stale" >&2; exit 2 ;;
esac
exit 0
