//! The agent's side of the control protocol (`pytier_contract::protocol`):
//! one request per connection, with timeouts, a bounded reply, and errors
//! that say what went wrong. Blocking; the cluster mode calls it from
//! `spawn_blocking`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pytier_contract::Settings;
use pytier_contract::protocol::{Answer, MAX_REPLY_BYTES, Request};
use pytier_contract::stats::Stats;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Sends one request and returns the interposer's answer (an error answer
/// becomes an `Err` with the interposer's words).
pub fn ask(socket: &Path, request: &Request) -> Result<Answer> {
    let mut stream = connect(socket).with_context(|| format!("cannot connect to {}", socket.display()))?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    stream.write_all(format!("{}\n", request.to_line()).as_bytes())?;
    let mut line = Vec::new();
    BufReader::new(stream.take(MAX_REPLY_BYTES as u64 + 1))
        .read_until(b'\n', &mut line)
        .with_context(|| format!("no reply from {}", socket.display()))?;
    if line.len() > MAX_REPLY_BYTES {
        bail!("reply from {} is longer than {MAX_REPLY_BYTES} bytes", socket.display());
    }
    if line.is_empty() {
        bail!("{} closed the connection without replying", socket.display());
    }
    match Answer::parse(&line).map_err(anyhow::Error::msg)? {
        Answer::Error(why) => bail!("the interposer refused: {why}"),
        answer => Ok(answer),
    }
}

/// Connects to a socket, also one whose path is longer than a socket
/// address holds (108 bytes; paths under the kubelet's pod directory often
/// are): through the directory's file descriptor in `/proc/self/fd`.
fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    if socket.as_os_str().len() < 100 {
        return UnixStream::connect(socket);
    }
    let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else { return UnixStream::connect(socket) };
    let dir = std::fs::File::open(dir)?;
    UnixStream::connect(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
}

pub fn stats(socket: &Path) -> Result<Stats> {
    match ask(socket, &Request::Stats)? {
        Answer::Stats(stats) => Ok(*stats),
        other => bail!("unexpected reply to stats: {other:?}"),
    }
}

/// Replaces the interposer's settings; returns them as it now holds them.
pub fn configure(socket: &Path, settings: &Settings) -> Result<Settings> {
    match ask(socket, &Request::Config { config: settings.clone() })? {
        Answer::Config(config) => Ok(config),
        other => bail!("unexpected reply to config: {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A stand-in interposer answering one connection with `reply`.
    fn answering(path: &Path, reply: &'static [u8]) -> std::thread::JoinHandle<()> {
        // Bound through the directory's descriptor, as long paths must be.
        let dir = std::fs::File::open(path.parent().unwrap()).unwrap();
        let short = format!("/proc/self/fd/{}/{}", dir.as_raw_fd(), path.file_name().unwrap().to_str().unwrap());
        let listener = UnixListener::bind(short).unwrap();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(stream.try_clone().unwrap()).read_line(&mut line).unwrap();
            let _ = stream.write_all(reply);
        })
    }

    #[test]
    fn long_paths_garbage_and_old_protocols_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let deep = dir.path().join("x".repeat(60)).join("y".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let socket = deep.join("app.1.sock");
        assert!(socket.as_os_str().len() > 108);
        let t = answering(&socket, b"{\"v\":2,\"ok\":true,\"stats\":{}}\n");
        assert_eq!(stats(&socket).unwrap(), Stats::default());
        t.join().unwrap();

        for (reply, expected) in [
            (&b"\x00\xffgarbage\n"[..], "reply is not JSON"),
            (b"{\"v\":1,\"ok\":true,\"stats\":{}}\n", "protocol version 1 is not supported"),
            (b"{\"v\":2,\"ok\":false,\"error\":\"nope\"}\n", "the interposer refused: nope"),
            (b"", "closed the connection without replying"),
        ] {
            let path = dir.path().join("s.sock");
            let _ = std::fs::remove_file(&path);
            let t = answering(&path, reply);
            let err = format!("{:#}", stats(&path).unwrap_err());
            assert!(err.contains(expected), "{err}");
            t.join().unwrap();
        }
    }

    #[test]
    fn an_oversized_reply_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let _ = stream.write_all(&vec![b'x'; MAX_REPLY_BYTES + 10]);
        });
        assert!(format!("{:#}", stats(&path).unwrap_err()).contains("longer than"));
        t.join().unwrap();
    }
}
