//! Helm, built from its pinned Go module by `tests/chart/build.sh`, run
//! against the chart `charts/pytier`.

use std::path::{Path, PathBuf};
use std::process::Command;

pub const CHART: &str = "charts/pytier";

/// The directory with `helm` and `monitoring-crds/` (`$PYTIER_CHART_TOOLS`,
/// else what tests/chart/build.sh prints).
pub fn tools() -> PathBuf {
    crate::built_dir("PYTIER_CHART_TOOLS", "tests/chart/build.sh").expect("tests/chart/build.sh")
}

/// The Prometheus Operator's CRD files for the chart's monitors and alerts.
pub fn monitoring_crds() -> Vec<PathBuf> {
    let dir = tools().join("monitoring-crds");
    ["podmonitors", "servicemonitors", "prometheusrules"]
        .iter()
        .map(|r| dir.join(format!("monitoring.coreos.com_{r}.yaml")))
        .collect()
}

/// Runs helm in the repository with its own config and cache directories;
/// (success, stdout, stderr).
pub fn helm(args: &[&str], kubeconfig: Option<&Path>) -> (bool, String, String) {
    let home = tempfile::tempdir().expect("a temporary directory");
    let mut cmd = Command::new(tools().join("helm"));
    cmd.args(args).current_dir(crate::repo_root());
    for var in ["HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"] {
        cmd.env(var, home.path());
    }
    if let Some(kubeconfig) = kubeconfig {
        cmd.env("KUBECONFIG", kubeconfig);
    }
    let out = cmd.output().expect("helm runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// helm's stdout; panics with its stderr when it fails.
pub fn helm_ok(args: &[&str], kubeconfig: Option<&Path>) -> String {
    let (ok, out, err) = helm(args, kubeconfig);
    assert!(ok, "helm {args:?} failed:\n{err}");
    out
}
