//! The interposer's own file descriptors, kept out of the program's way.
//!
//! A program may close every descriptor it did not open (daemons and some
//! servers do) and then get the same numbers for its own files and sockets.
//! Through such a number pytier must never poll, accept, ioctl or close. So
//! each descriptor moves to a high number when pytier opens it, and is
//! checked to be the same open file before every use; one that is not is
//! given up, never closed.

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, RawFd};

/// Where pytier's descriptors go: far above the numbers a program gets first,
/// below the usual 1024 limit on open files.
const HIGH_FLOOR: libc::rlim_t = 768;

/// A descriptor of pytier's, with what identifies its open file.
pub struct Guarded<T: AsRawFd> {
    inner: ManuallyDrop<T>,
    identity: Identity,
    what: &'static str,
}

/// The open file behind a descriptor: its inode, and the name
/// `/proc/self/fd` gives (which tells anonymous inodes, such as a
/// userfaultfd and an epoll, apart; they share one inode).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    name: std::path::PathBuf,
}

impl<T: AsRawFd + IntoRawFd + FromRawFd> Guarded<T> {
    /// Moves `inner`'s descriptor to a high number (close-on-exec) and
    /// remembers its open file. `what` names it in errors.
    pub fn new(inner: T, what: &'static str) -> io::Result<Guarded<T>> {
        let fd = move_high(inner.into_raw_fd());
        // SAFETY: `fd` is the descriptor `inner` owned, or its duplicate.
        let inner = ManuallyDrop::new(unsafe { T::from_raw_fd(fd) });
        let identity = identity(fd)?;
        Ok(Guarded { inner, identity, what })
    }
}

impl<T: AsRawFd> Guarded<T> {
    /// The descriptor, if it is still the open file pytier opened.
    pub fn get(&self) -> io::Result<&T> {
        let fd = self.inner.as_raw_fd();
        if identity(fd).ok().as_ref() == Some(&self.identity) {
            Ok(&self.inner)
        } else {
            Err(io::Error::other(format!(
                "the program closed pytier's {} (descriptor {fd}) or reused its number",
                self.what
            )))
        }
    }
}

impl<T: AsRawFd> Drop for Guarded<T> {
    fn drop(&mut self) {
        if self.get().is_ok() {
            // SAFETY: dropped once, here; still pytier's open file.
            unsafe { ManuallyDrop::drop(&mut self.inner) };
        }
    }
}

/// The whole of a small file (`/proc`, `/sys`), read through a guarded
/// descriptor: if the program closes it and reuses the number meanwhile, the
/// read fails and the program's file is left open.
pub fn read_to_string(path: impl AsRef<std::path::Path>) -> io::Result<String> {
    use std::io::Read;
    let file = Guarded::new(std::fs::File::open(path)?, "file")?;
    let mut text = String::new();
    file.get()?.read_to_string(&mut text)?;
    Ok(text)
}

/// A duplicate of `fd` at or above `HIGH_FLOOR` (closing `fd`), or `fd`
/// itself where the limit on open files leaves no room up there.
fn move_high(fd: RawFd) -> RawFd {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes the struct it is given.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 { limit.rlim_cur } else { 0 };
    if soft <= HIGH_FLOOR + 64 {
        return fd;
    }
    // SAFETY: plain fcntl on a descriptor we own; the result is checked.
    let high = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, HIGH_FLOOR as libc::c_int) };
    if high < 0 {
        return fd;
    }
    // SAFETY: `fd` is ours and replaced by `high`.
    unsafe { libc::close(fd) };
    high
}

fn identity(fd: RawFd) -> io::Result<Identity> {
    // SAFETY: fstat writes the struct it is given; a bad descriptor fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let name = std::fs::read_link(format!("/proc/self/fd/{fd}"))?;
    Ok(Identity { dev: st.st_dev, ino: st.st_ino, name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;

    #[test]
    fn a_descriptor_moves_high_and_is_given_up_when_its_number_is_reused() {
        let dir = tempfile_dir();
        let ours = Guarded::new(File::create(dir.join("ours")).unwrap(), "test file").unwrap();
        let fd = ours.get().unwrap().as_raw_fd();
        assert!(fd >= HIGH_FLOOR as RawFd, "descriptor {fd}");
        // The "program" closes it and gets the number for a file of its own.
        let theirs = File::create(dir.join("theirs")).unwrap();
        // SAFETY: test: replace the number with the program's file.
        assert_eq!(unsafe { libc::dup2(theirs.as_raw_fd(), fd) }, fd);
        let err = ours.get().unwrap_err().to_string();
        assert!(err.contains("test file") && err.contains("reused"), "{err}");
        drop(ours);
        // Not closed: the number still holds the program's file.
        let name = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        assert!(name.ends_with("theirs"), "{}", name.display());
        // SAFETY: test cleanup of the duplicate made above.
        unsafe { libc::close(fd) };
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("pytier-fds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
