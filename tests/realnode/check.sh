#!/usr/bin/env bash
# Says whether this machine can run a real node; exits 1 with the reason on
# stdout when it cannot. tests/run skips the real-node tier on that reason,
# and the harness refuses to start a node with it.
[ "$(id -u)" = 0 ] || { echo "not root (the kubelet, containerd and runc need root)"; exit 1; }
[ -e /sys/fs/cgroup/cpuset/cpuset.mems ] ||
  { echo "no cgroup v1 cpuset hierarchy at /sys/fs/cgroup/cpuset (the harness configures the kubelet for cgroup v1)"; exit 1; }
grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null ||
  { echo "no overlay filesystem (containerd's snapshotter needs it)"; exit 1; }
host=$(tr 'A-Z' 'a-z' </proc/sys/kernel/hostname)
getent ahostsv4 "$host" | grep -q '^127\.' ||
  { echo "the host name $host does not resolve to 127.0.0.1 (the API server reaches the loopback-only kubelet by host name)"; exit 1; }
# cleanup.sh removes every kubepods cgroup and container: never on a real node.
for pid in $(pgrep -x kubelet); do
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q /tmp/pytier-realnode- ||
    { echo "a kubelet of this machine's own runs (pid $pid): the harness would disturb its pods"; exit 1; }
done
command -v ip >/dev/null || { echo "no ip command (iproute2) to find the node's address"; exit 1; }
exit 0
