//! A pod's containers and their processes, found through the cgroups the
//! kubelet makes, and their memory nodes (`cpuset.mems`).
//!
//! Path shapes (cgroup v1 under the cpuset hierarchy, v2 under the unified
//! root; the kubelet's own prefix, if any, is whatever lies above them):
//!
//! ```text
//! cgroupfs driver: kubepods/<qos>/pod<uid>/<container id>
//! systemd driver:  kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid with _>.slice/
//!                  cri-containerd-<id>.scope | crio-<id>.scope | docker-<id>.scope
//! ```
//!
//! Guaranteed pods have no `<qos>` level. Names are parsed by pure functions;
//! reading the tree is a thin walk over the file system.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A pod's cgroup and its containers' cgroups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodCgroup {
    pub dir: PathBuf,
    pub containers: Vec<ContainerCgroup>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// The runtime's container id (64 hex digits), as in the pod's
    /// `containerStatuses[].containerID` after `<runtime>://`.
    pub id: String,
    pub dir: PathBuf,
}

/// The pod UID a cgroup directory name stands for, if it is a pod's.
pub fn pod_uid(name: &str) -> Option<String> {
    let uid = if let Some(rest) = name.strip_suffix(".slice") {
        // kubepods-burstable-pod<uid_with_underscores>.slice, kubepods-pod<uid>.slice
        let (_, uid) = rest.rsplit_once("-pod")?;
        rest.starts_with("kubepods").then_some(uid.replace('_', "-"))?
    } else {
        name.strip_prefix("pod")?.to_string()
    };
    is_uid(&uid).then_some(uid)
}

/// The container id a cgroup directory name stands for, if it is a
/// container's (not a pause sandbox's conmon, not anything else).
pub fn container_id(name: &str) -> Option<String> {
    let id = match name.strip_suffix(".scope") {
        Some(scope) => ["cri-containerd-", "crio-", "docker-"].iter().find_map(|p| scope.strip_prefix(p))?,
        None => name,
    };
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

fn is_uid(s: &str) -> bool {
    s.len() == 36
        && s.bytes()
            .enumerate()
            .all(|(i, b)| if [8, 13, 18, 23].contains(&i) { b == b'-' } else { b.is_ascii_hexdigit() })
}

/// The hierarchy that holds pods' cgroups under a cgroup mount root
/// (normally `/sys/fs/cgroup`): the unified root on cgroup v2, the cpuset
/// controller's on v1 (the one `cpuset.mems` lives in).
pub fn hierarchy(root: &Path) -> PathBuf {
    if root.join("cgroup.controllers").is_file() { root.to_path_buf() } else { root.join("cpuset") }
}

/// Every pod cgroup under `hierarchy`, by pod UID. Descends at most a few
/// levels (the kubelet's prefix, `kubepods`, the QoS class) and not below
/// pods' containers.
pub fn find_pods(hierarchy: &Path) -> BTreeMap<String, PodCgroup> {
    let mut pods = BTreeMap::new();
    walk(hierarchy, 0, &mut pods);
    pods
}

const MAX_DEPTH: usize = 6;

fn walk(dir: &Path, depth: usize, pods: &mut BTreeMap<String, PodCgroup>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if let Some(uid) = pod_uid(&name) {
            pods.insert(uid, PodCgroup { containers: containers(&path), dir: path });
        } else if depth < MAX_DEPTH && container_id(&name).is_none() {
            walk(&path, depth + 1, pods);
        }
    }
}

fn containers(pod_dir: &Path) -> Vec<ContainerCgroup> {
    let mut found: Vec<ContainerCgroup> = fs::read_dir(pod_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some(ContainerCgroup { id: container_id(&e.file_name().to_string_lossy())?, dir: e.path() }))
        .collect();
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

/// The processes in a cgroup (not its children).
pub fn procs(dir: &Path) -> Vec<u32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

/// Sets a cgroup's `cpuset.mems` to `nodes` (kernel list format) unless it
/// already holds them. Returns whether it wrote. A cgroup without the file
/// (cpuset not enabled for it) is an error that says so.
pub fn set_mems(dir: &Path, nodes: &str) -> Result<bool> {
    let file = dir.join("cpuset.mems");
    let current = fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    if current.trim() == nodes {
        return Ok(false);
    }
    fs::write(&file, nodes).with_context(|| format!("cannot write {nodes:?} to {}", file.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "7d1c5a1e-0000-4000-8000-000000000001";
    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn pod_and_container_names_of_both_drivers() {
        assert_eq!(pod_uid(&format!("pod{UID}")).as_deref(), Some(UID));
        let systemd = format!("kubepods-burstable-pod{}.slice", UID.replace('-', "_"));
        assert_eq!(pod_uid(&systemd).as_deref(), Some(UID));
        let guaranteed = format!("kubepods-pod{}.slice", UID.replace('-', "_"));
        assert_eq!(pod_uid(&guaranteed).as_deref(), Some(UID));
        for not_a_pod in ["kubepods", "burstable", "kubepods-burstable.slice", "podnope", "system.slice"] {
            assert_eq!(pod_uid(not_a_pod), None, "{not_a_pod}");
        }
        for name in [
            ID.to_string(),
            format!("cri-containerd-{ID}.scope"),
            format!("crio-{ID}.scope"),
            format!("docker-{ID}.scope"),
        ] {
            assert_eq!(container_id(&name).as_deref(), Some(ID), "{name}");
        }
        for not_a_container in [format!("crio-conmon-{ID}.scope"), "init.scope".into(), "abc".into()] {
            assert_eq!(container_id(&not_a_container), None, "{not_a_container}");
        }
    }

    /// Recorded tree shapes: a cgroupfs v1 cpuset hierarchy and a systemd
    /// v2 unified one, each with a prefix above kubepods.
    #[test]
    fn finds_pods_and_containers_in_both_tree_shapes() {
        let root = tempfile::tempdir().unwrap();
        let cgroupfs = root.path().join("v1/cpuset/kubepods/burstable").join(format!("pod{UID}"));
        fs::create_dir_all(cgroupfs.join(ID)).unwrap();
        fs::write(cgroupfs.join(ID).join("cgroup.procs"), "12\n34\n").unwrap();
        let slice = format!("kubepods-besteffort-pod{}.slice", UID.replace('-', "_"));
        let systemd = root.path().join("v2/kubelet.slice/kubepods.slice/kubepods-besteffort.slice").join(slice);
        fs::create_dir_all(systemd.join(format!("cri-containerd-{ID}.scope"))).unwrap();
        fs::create_dir_all(systemd.join(format!("crio-conmon-{ID}.scope"))).unwrap();
        fs::write(root.path().join("v2/cgroup.controllers"), "cpuset memory").unwrap();

        let v1 = find_pods(&hierarchy(&root.path().join("v1")));
        assert_eq!(v1[UID].dir, cgroupfs);
        assert_eq!(v1[UID].containers, vec![ContainerCgroup { id: ID.into(), dir: cgroupfs.join(ID) }]);
        assert_eq!(procs(&v1[UID].containers[0].dir), vec![12, 34]);

        let v2 = find_pods(&hierarchy(&root.path().join("v2")));
        assert_eq!(v2[UID].dir, systemd);
        assert_eq!(v2[UID].containers.len(), 1, "conmon is not a container");
        assert_eq!(v2[UID].containers[0].id, ID);
    }

    #[test]
    fn mems_are_written_only_when_they_differ() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("cpuset.mems"), "0\n").unwrap();
        assert!(set_mems(dir.path(), "0-1").unwrap());
        assert!(!set_mems(dir.path(), "0-1").unwrap());
        assert!(set_mems(&dir.path().join("gone"), "0").unwrap_err().to_string().contains("cannot read"));
    }
}
