//! Writes the CRD YAML of every pytier API type into a directory
//! (default: the `crds/` directory of this repository).
//!
//! `crdgen [DIR]` writes the files; `crdgen --check [DIR]` writes nothing and
//! exits 1 when a committed file differs from what the types generate.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" => check = true,
            "-h" | "--help" => {
                println!("usage: crdgen [--check] [DIR]  (DIR defaults to {})", dir.display());
                return ExitCode::SUCCESS;
            }
            _ => dir = PathBuf::from(arg),
        }
    }
    let mut stale = false;
    for crd in pytier_crds::crds() {
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
