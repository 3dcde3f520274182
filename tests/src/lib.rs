//! Real parts for pytier's tests. Nothing here is a mock: `ControlPlane` runs
//! the upstream etcd and kube-apiserver binaries built from their Go modules.

pub mod controlplane;
pub mod kwok;
pub mod operator;
pub mod pki;

pub use controlplane::ControlPlane;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}
