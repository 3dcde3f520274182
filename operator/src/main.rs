//! pytier operator.
//!
//! `operator crds` prints the CustomResourceDefinitions (for `kubectl apply -f -`).
//! The controller and the injection webhook are not built yet.

use std::process::ExitCode;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("crds") => {
            for crd in pytier_crds::crds() {
                print!("---\n{}", pytier_crds::to_yaml(&crd));
            }
            ExitCode::SUCCESS
        }
        Some("-V" | "--version") => {
            println!("pytier operator {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!(
                "usage: operator crds\n\
                 operator: the controller and the injection webhook are not implemented yet"
            );
            ExitCode::from(2)
        }
    }
}
