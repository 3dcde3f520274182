//! Writes the CRD YAML of every pytier API type into a directory (default:
//! both places the repository keeps them, `crds/` and the Helm chart's
//! `charts/pytier/crds/`).
//!
//! `crdgen [DIR]` writes the files; `crdgen --check [DIR]` writes nothing and
//! exits 1 when a committed file differs from what the types generate.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let crds = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![crds.clone(), crds.join("../charts/pytier/crds")];
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [DIR]  (DIR defaults to {} and the chart's crds/)", crds.display());
                return ExitCode::SUCCESS;
            }
            _ => dirs = vec![PathBuf::from(arg)],
        }
    }
    let mut stale = false;
    for (dir, crd) in dirs.iter().flat_map(|d| pytier_crds::crds().into_iter().map(move |c| (d, c))) {
        let path = dir.join(pytier_crds::file_name(&crd));
        let want = pytier_crds::to_yaml(&crd);
        if check {
            if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
                eprintln!("{} is stale: run `cargo run -p pytier-crds --bin crdgen`", path.display());
                stale = true;
            }
        } else if let Err(e) = std::fs::write(&path, want) {
            eprintln!("cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        } else {
            println!("wrote {}", path.display());
        }
    }
    if stale { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}
