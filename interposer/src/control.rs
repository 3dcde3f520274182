//! The control channel: a Unix socket the node agent (or `python -m pytier`)
//! talks to, speaking the protocol of `pytier_contract::protocol`. A request
//! longer than `MAX_REQUEST_BYTES`, or one that does not arrive within 2 s,
//! closes the connection. Nothing a client sends can affect the program.
//! The socket is bound a second after start-up (see `START_DELAY`).

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pytier_contract::protocol::{Answer, Hello, MAX_REQUEST_BYTES, PROTOCOL_VERSION, Request};

use crate::Shared;
use crate::fds::Guarded;

/// Binds the socket at `path`, then serves clients one at a time until
/// `shared.stop` is set (then removes the socket), or until the program
/// closes the socket's descriptor (see `fds`: then it stops, saying why in
/// the stats, and never touches that number again).
pub fn serve(path: &Path, shared: &Shared) {
    let _ = std::fs::remove_file(path); // a stale socket of an earlier process with this pid
    let socket = match bind(path).and_then(|l| Guarded::new(l, "control socket")) {
        Ok(socket) => socket,
        Err(e) => {
            let _ = shared.socket_error.set(format!("cannot listen on {}: {e}", path.display()));
            return;
        }
    };
    // Non-blocking accept after a poll with a timeout: a client is answered
    // at once, and the stop flag is seen within 100 ms.
    if socket.get().and_then(|l| l.set_nonblocking(true)).is_err() {
        return;
    }
    while !shared.stop.load(Ordering::Acquire) {
        // Checked before the poll and again before the accept: the program
        // may reuse the number while the poll waits.
        let Ok(fd) = socket.get().map(|l| l.as_raw_fd()) else { break };
        let mut ready = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut ready, 1, 100) } <= 0 {
            continue;
        }
        let Ok(listener) = socket.get() else { break };
        match listener.accept() {
            Ok((stream, _)) => handle(stream, shared),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    if let Err(why) = socket.get() {
        let _ = shared.socket_error.set(why.to_string());
    }
    let _ = std::fs::remove_file(path);
}

/// Whether a socket could be bound at `path` later: its directory exists
/// and this process may create files in it.
pub fn check_can_bind(path: &Path) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !std::fs::metadata(dir)?.is_dir() {
        return Err(std::io::Error::other(format!("{} is not a directory", dir.display())));
    }
    let dir = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid C string.
    if unsafe { libc::access(dir.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Binds a Unix socket, also at a path longer than a socket address holds
/// (108 bytes): through its directory's descriptor in `/proc/self/fd`.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    match (UnixListener::bind(path), path.parent(), path.file_name()) {
        (Err(e), Some(dir), Some(name)) if e.kind() == std::io::ErrorKind::InvalidInput => {
            let dir = std::fs::File::open(dir)?;
            UnixListener::bind(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
        }
        (result, _, _) => result,
    }
}

fn handle(stream: UnixStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let Ok(write_half) = stream.try_clone() else { return };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream.take(MAX_REQUEST_BYTES as u64 + 1));
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.by_ref().read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // The reader stops one byte past the limit, so a longer line shows.
        let too_long = line.len() > MAX_REQUEST_BYTES;
        let response = if too_long {
            Answer::Error(format!("request longer than {MAX_REQUEST_BYTES} bytes"))
        } else {
            respond(&line, shared)
        };
        if writer.write_all(format!("{}\n", response.to_line()).as_bytes()).is_err() || too_long {
            return;
        }
        // Each connection may send at most MAX_REQUEST_BYTES bytes in all.
        if reader.get_ref().limit() == 0 {
            return;
        }
    }
}

/// The answer to one request line.
pub fn respond(line: &[u8], shared: &Shared) -> Answer {
    match Request::parse(line) {
        Err(why) => Answer::Error(why),
        Ok(Request::Hello) => Answer::Hello(Hello {
            pid: std::process::id(),
            python: shared.python.clone(),
            protocol: PROTOCOL_VERSION,
            pytier: env!("CARGO_PKG_VERSION").into(),
        }),
        Ok(Request::Stats) => Answer::Stats(Box::new(shared.stats())),
        Ok(Request::Settings) => match shared.config.lock() {
            Ok(config) => Answer::Config(config.clone()),
            Err(_) => Answer::Error("settings unavailable".into()),
        },
        // Request::parse has validated the settings.
        Ok(Request::Config { config }) => {
            if let Ok(mut current) = shared.config.lock() {
                *current = config.clone();
            }
            Answer::Config(config)
        }
    }
}
