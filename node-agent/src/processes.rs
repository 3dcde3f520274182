//! What `/proc` says about a process: is it Python, has it loaded the
//! interposer, and if not, the environment that explains why.

use std::fs;
use std::path::Path;

/// The facts about one process that decide its state.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProcessFacts {
    pub pid: u32,
    /// The executable's file name when it is a Python interpreter.
    pub python: Option<String>,
    /// The interposer's native library is mapped.
    pub interposer_loaded: bool,
    pub pythonpath: Option<String>,
    pub pythonmalloc: Option<String>,
    pub disabled: bool,
}

/// The library the shim loads; mapped once the interposer started.
const NATIVE: &str = "/pytier/_native.so";

/// Reads one process under `proc` (normally `/proc`); None once it is gone.
pub fn read(proc: &Path, pid: u32) -> Option<ProcessFacts> {
    let dir = proc.join(pid.to_string());
    let exe = fs::read_link(dir.join("exe")).ok()?;
    let name = exe.file_name()?.to_string_lossy().into_owned();
    let mut facts = ProcessFacts { pid, ..Default::default() };
    if !is_python(&name) {
        return Some(facts);
    }
    facts.python = Some(name);
    facts.interposer_loaded = fs::read_to_string(dir.join("maps")).is_ok_and(|m| m.contains(NATIVE));
    let environ = fs::read(dir.join("environ")).unwrap_or_default();
    for var in environ.split(|b| *b == 0) {
        let var = String::from_utf8_lossy(var);
        if let Some(v) = var.strip_prefix("PYTHONPATH=") {
            facts.pythonpath = Some(v.to_string());
        } else if let Some(v) = var.strip_prefix("PYTHONMALLOC=") {
            facts.pythonmalloc = Some(v.to_string());
        } else if var == "PYTIER_DISABLE=1" {
            facts.disabled = true;
        }
    }
    Some(facts)
}

/// `python`, `python3`, `python3.12`, `python3.14t`, ...
pub fn is_python(exe_name: &str) -> bool {
    exe_name.strip_prefix("python").is_some_and(|v| v.bytes().all(|b| b.is_ascii_digit() || b == b'.' || b == b't'))
}

impl ProcessFacts {
    /// Why a Python process runs without the interposer, in words a person
    /// can act on. `shim_entry` is the `PYTHONPATH` entry the webhook adds.
    pub fn why_not_loaded(&self, shim_entry: &str) -> String {
        let python = self.python.as_deref().unwrap_or("python");
        let on_path = self.pythonpath.as_deref().is_some_and(|p| p.split(':').any(|e| e == shim_entry));
        if self.disabled {
            format!("{python} (pid {}) has PYTIER_DISABLE=1", self.pid)
        } else if !on_path {
            format!(
                "{python} (pid {}) runs without {shim_entry} on PYTHONPATH (PYTHONPATH={:?}): the image or \
                 command overrides what the webhook set",
                self.pid,
                self.pythonpath.as_deref().unwrap_or("")
            )
        } else if let Some(malloc) = self.pythonmalloc.as_deref().filter(|m| !m.is_empty() && *m != "pymalloc") {
            format!("{python} (pid {}) has PYTHONMALLOC={malloc}, which pytier does not support", self.pid)
        } else {
            format!(
                "{python} (pid {}) did not start the interposer: an unsupported Python version or a missing \
                 shim; its stderr has a line \"pytier: not active: ...\" saying which",
                self.pid
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_names() {
        for yes in ["python", "python3", "python3.11", "python3.14t"] {
            assert!(is_python(yes), "{yes}");
        }
        for no in ["pythonista", "bash", "uwsgi", "py"] {
            assert!(!is_python(no), "{no}");
        }
    }

    #[test]
    fn reasons_name_the_cause() {
        let base = ProcessFacts { pid: 7, python: Some("python3.12".into()), ..Default::default() };
        let entry = "/opt/pytier/shim/current";
        let overridden = ProcessFacts { pythonpath: Some("/app".into()), ..base.clone() };
        assert!(overridden.why_not_loaded(entry).contains("overrides"), "{}", overridden.why_not_loaded(entry));
        let on_path = ProcessFacts { pythonpath: Some(format!("/app:{entry}")), ..base.clone() };
        let malloc = ProcessFacts { pythonmalloc: Some("malloc".into()), ..on_path.clone() };
        assert!(malloc.why_not_loaded(entry).contains("PYTHONMALLOC=malloc"));
        assert!(on_path.why_not_loaded(entry).contains("pytier: not active"));
        let disabled = ProcessFacts { disabled: true, ..on_path };
        assert!(disabled.why_not_loaded(entry).contains("PYTIER_DISABLE"));
    }

    #[test]
    fn reads_this_test_process() {
        let me = read(Path::new("/proc"), std::process::id()).unwrap();
        assert_eq!(me.python, None, "a Rust test binary is not Python");
        assert!(read(Path::new("/proc"), u32::MAX).is_none());
    }
}
