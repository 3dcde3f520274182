//! Installs the interposer shim into the host directory the webhook mounts
//! into pods (`/var/lib/pytier/shim` by default):
//!
//! ```text
//! versions/<digest>/          one directory per shim content, never changed once there
//!   sitecustomize.py  pytier/...  SHA256SUMS
//! current -> versions/<digest>
//! ```
//!
//! A version is copied into a temporary directory, checked against its
//! digest and renamed into place whole; `current` is replaced by renaming a
//! new link over it. A starting Python sees the old version or the new one,
//! never a half-written file (its `sitecustomize` pins the version it
//! resolved), and a running one keeps the files it loaded. An upgrade or a
//! downgrade of the agent just points `current` elsewhere; the newest few
//! versions are kept for processes that are starting.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const MANIFEST: &str = "SHA256SUMS";
/// Versions kept besides the current one.
const KEEP_OLD: usize = 2;

/// What `install` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    pub version: String,
    pub dir: PathBuf,
    /// `current` pointed elsewhere before.
    pub switched: bool,
}

/// Installs the shim at `source` into `host` and makes it current.
pub fn install(source: &Path, host: &Path) -> Result<Installed> {
    let files = list(source).with_context(|| format!("cannot read the shim at {}", source.display()))?;
    if !files.iter().any(|(p, _)| p == "pytier/_native.so") {
        bail!("{} holds no pytier/_native.so: not a shim", source.display());
    }
    let manifest = manifest(&files);
    let version = hex(&Sha256::digest(manifest.as_bytes()))[..16].to_string();
    let versions = host.join("versions");
    fs::create_dir_all(&versions).with_context(|| format!("cannot create {}", versions.display()))?;
    let dir = versions.join(&version);
    if verify(&dir).is_err() {
        let tmp = versions.join(format!(".tmp-{version}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        for (path, bytes) in &files {
            write_synced(&tmp.join(path), bytes)?;
        }
        write_synced(&tmp.join(MANIFEST), manifest.as_bytes())?;
        verify(&tmp).context("the copied shim does not match its own checksums")?;
        if dir.exists() {
            // A damaged copy (disk trouble, someone's edit): set it aside.
            let _ = fs::rename(&dir, versions.join(format!(".bad-{version}-{}", std::process::id())));
        }
        fs::rename(&tmp, &dir).with_context(|| format!("cannot move the shim into {}", dir.display()))?;
    }
    let current = host.join("current");
    let target = Path::new("versions").join(&version);
    let switched = fs::read_link(&current).ok().as_deref() != Some(target.as_path());
    if switched {
        let link = host.join(format!(".current-{}", std::process::id()));
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).with_context(|| format!("cannot create {}", link.display()))?;
        fs::rename(&link, &current).with_context(|| format!("cannot replace {}", current.display()))?;
    }
    prune(&versions, &version);
    Ok(Installed { version, dir, switched })
}

/// Checks a version directory against its `SHA256SUMS`.
pub fn verify(dir: &Path) -> Result<()> {
    let manifest =
        fs::read_to_string(dir.join(MANIFEST)).with_context(|| format!("no {MANIFEST} in {}", dir.display()))?;
    for line in manifest.lines() {
        let (sum, path) = line.split_once("  ").with_context(|| format!("bad {MANIFEST} line {line:?}"))?;
        let bytes = fs::read(dir.join(path)).with_context(|| format!("{path} is missing"))?;
        if hex(&Sha256::digest(&bytes)) != sum {
            bail!("{} does not match its checksum", dir.join(path).display());
        }
    }
    Ok(())
}

/// Every file under `root` as (relative path, contents), sorted. Compiled
/// Python caches are part of the shim: pods mount it read-only, and
/// without them every interpreter start compiles pytier's Python again.
fn list(root: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            if name == MANIFEST {
                continue;
            }
            if entry.file_type()?.is_dir() {
                walk(root, &path, out)?;
            } else {
                let relative = path.strip_prefix(root)?.to_string_lossy().into_owned();
                out.push((relative, fs::read(&path)?));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

fn manifest(files: &[(String, Vec<u8>)]) -> String {
    files.iter().map(|(path, bytes)| format!("{}  {path}\n", hex(&Sha256::digest(bytes)))).collect()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut file = fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// Removes all but the newest `KEEP_OLD` versions besides `current`, and
/// leftovers of interrupted installs.
fn prune(versions: &Path, current: &str) {
    let Ok(entries) = fs::read_dir(versions) else { return };
    let mut old = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == current {
            continue;
        }
        let own = name.ends_with(&format!("-{}", std::process::id()));
        if name.starts_with('.') && !own {
            let _ = fs::remove_dir_all(entry.path());
        } else if !name.starts_with('.') {
            let modified = entry.metadata().and_then(|m| m.modified()).ok();
            old.push((modified, entry.path()));
        }
    }
    old.sort();
    let excess = old.len().saturating_sub(KEEP_OLD);
    for (_, path) in old.into_iter().take(excess) {
        let _ = fs::remove_dir_all(path);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shim(dir: &Path, native: &[u8]) {
        write_synced(&dir.join("sitecustomize.py"), b"# shim\n").unwrap();
        write_synced(&dir.join("pytier/_native.so"), native).unwrap();
        write_synced(&dir.join("pytier/__pycache__/x.pyc"), b"cache").unwrap();
    }

    #[test]
    fn installs_switches_and_comes_back() {
        let (src, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        shim(src.path(), b"v1");
        let first = install(src.path(), host.path()).unwrap();
        assert!(first.switched);
        assert_eq!(fs::read(host.path().join("current/pytier/_native.so")).unwrap(), b"v1");
        assert_eq!(fs::read(host.path().join("current/pytier/__pycache__/x.pyc")).unwrap(), b"cache");
        assert!(!install(src.path(), host.path()).unwrap().switched, "same content: nothing to do");

        shim(src.path(), b"v2");
        let second = install(src.path(), host.path()).unwrap();
        assert!(second.switched && second.version != first.version);
        assert_eq!(fs::read(host.path().join("current/pytier/_native.so")).unwrap(), b"v2");
        assert!(first.dir.exists(), "the old version stays for processes that loaded it");

        shim(src.path(), b"v1"); // a downgrade
        assert_eq!(install(src.path(), host.path()).unwrap(), Installed { switched: true, ..first.clone() });
        assert_eq!(fs::read(host.path().join("current/pytier/_native.so")).unwrap(), b"v1");
    }

    #[test]
    fn a_damaged_version_is_replaced_and_verify_says_what() {
        let (src, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        shim(src.path(), b"good");
        let installed = install(src.path(), host.path()).unwrap();
        fs::write(installed.dir.join("pytier/_native.so"), b"bad").unwrap();
        assert!(verify(&installed.dir).unwrap_err().to_string().contains("does not match"));
        install(src.path(), host.path()).unwrap();
        verify(&installed.dir).unwrap();
        assert_eq!(fs::read(host.path().join("current/pytier/_native.so")).unwrap(), b"good");
    }

    #[test]
    fn old_versions_are_pruned() {
        let (src, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for i in 0..5 {
            shim(src.path(), format!("v{i}").as_bytes());
            install(src.path(), host.path()).unwrap();
        }
        let kept = fs::read_dir(host.path().join("versions")).unwrap().count();
        assert_eq!(kept, 1 + KEEP_OLD);
    }

    #[test]
    fn a_directory_without_the_library_is_refused() {
        let (src, host) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        write_synced(&src.path().join("sitecustomize.py"), b"").unwrap();
        assert!(install(src.path(), host.path()).unwrap_err().to_string().contains("not a shim"));
    }
}
