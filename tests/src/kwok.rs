//! kwok (sigs.k8s.io/kwok), the real upstream binary, run against a test
//! control plane: it plays the kubelet for fake nodes, so thousands of nodes
//! and pods look alive (nodes Ready, pods Running) without any container.

use std::path::PathBuf;
use std::process::{Child, Command};

use anyhow::Result;

use crate::controlplane::{binaries, free_port};
use crate::{ControlPlane, spawn_logged};

/// Annotation that hands a node to kwok; only such nodes are managed.
pub const FAKE_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// A running kwok controller, killed when dropped.
pub struct Kwok {
    child: Child,
    pub log: PathBuf,
}

impl Kwok {
    /// Starts kwok with the stages `tests/controlplane/build.sh` put beside
    /// its binary, managing the nodes annotated with [`FAKE_NODE_ANNOTATION`].
    pub fn start(plane: &ControlPlane) -> Result<Kwok> {
        let bin = binaries()?;
        let log = plane.data_dir().join("kwok.log");
        let (key, value) = FAKE_NODE_ANNOTATION;
        let mut cmd = Command::new(bin.join("kwok"));
        cmd.arg(format!("--kubeconfig={}", plane.kubeconfig().display()))
            .arg(format!("--config={}", bin.join("kwok-stages.yaml").display()))
            .arg(format!("--manage-nodes-with-annotation-selector={key}={value}"))
            .arg(format!("--server-address=127.0.0.1:{}", free_port()?));
        let child = spawn_logged(&mut cmd, &log)?;
        Ok(Kwok { child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Kwok {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
