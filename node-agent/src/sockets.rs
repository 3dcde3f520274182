//! The interposers' control sockets of a pod. Each injected pod has an
//! emptyDir of its own mounted at `/run/pytier` (see the webhook); the
//! kubelet keeps it on the host under its pod directory, so a socket's path
//! says which pod it belongs to, and its name (`<container>.<pid>.sock`)
//! which container. Nothing is guessed, and no pod sees another's sockets.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use pytier_crds::injection::RUN_VOLUME;

/// One socket file as found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketFile {
    pub container: String,
    /// The pid inside the container's PID namespace.
    pub pid: u32,
    pub path: PathBuf,
    /// Inode and change time: a process that restarts binds a new socket, so
    /// this tells a new interposer from one already configured.
    pub identity: (u64, i64),
}

/// The host directory holding a pod's sockets.
pub fn pod_dir(kubelet_pods: &Path, uid: &str) -> PathBuf {
    kubelet_pods.join(uid).join("volumes/kubernetes.io~empty-dir").join(RUN_VOLUME)
}

/// Every socket of a pod, sorted by path.
pub fn pod_sockets(kubelet_pods: &Path, uid: &str) -> Vec<SocketFile> {
    let mut found: Vec<SocketFile> = fs::read_dir(pod_dir(kubelet_pods, uid))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let (container, pid) = parse_name(&entry.file_name().to_string_lossy())?;
            let meta = entry.metadata().ok()?;
            meta.file_type().is_socket().then(|| SocketFile {
                container,
                pid,
                path: entry.path(),
                identity: (meta.ino(), meta.ctime()),
            })
        })
        .collect();
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

/// `<container>.<pid>.sock` (container names are DNS labels: no dots).
pub fn parse_name(name: &str) -> Option<(String, u32)> {
    let (container, pid) = name.strip_suffix(".sock")?.split_once('.')?;
    let valid = !container.is_empty() && container.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    valid.then_some(())?;
    Some((container.to_string(), pid.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_names() {
        assert_eq!(parse_name("app.1.sock"), Some(("app".into(), 1)));
        assert_eq!(parse_name("my-worker.4242.sock"), Some(("my-worker".into(), 4242)));
        for bad in ["app.sock", "app.x.sock", ".1.sock", "a.b.1.sock", "app.1", "../x.1.sock"] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn finds_only_sockets_of_the_pod() {
        let root = tempfile::tempdir().unwrap();
        let dir = pod_dir(root.path(), "uid-a");
        fs::create_dir_all(&dir).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(dir.join("app.1.sock")).unwrap();
        fs::write(dir.join("fake.2.sock"), b"").unwrap(); // not a socket
        let found = pod_sockets(root.path(), "uid-a");
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].container.as_str(), found[0].pid), ("app", 1));
        assert!(pod_sockets(root.path(), "uid-b").is_empty());
    }
}
