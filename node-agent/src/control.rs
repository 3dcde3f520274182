//! The agent's side of the control protocol (`pytier_contract::protocol`):
//! one request per connection, with timeouts, a bounded reply, and errors
//! that say what went wrong. Blocking; the cluster mode calls it from
//! `spawn_blocking`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pytier_contract::Settings;
use pytier_contract::protocol::{Answer, Hello, MAX_REPLY_BYTES, Request};
use pytier_contract::stats::Stats;

const TIMEOUT: Duration = Duration::from_secs(2);

/// Sends one request and returns the interposer's answer (an error answer
/// becomes an `Err` with the interposer's words).
pub fn ask(socket: &Path, request: &Request) -> Result<Answer> {
    let mut stream = UnixStream::connect(socket).with_context(|| format!("cannot connect to {}", socket.display()))?;
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

pub fn hello(socket: &Path) -> Result<Hello> {
    match ask(socket, &Request::Hello)? {
        Answer::Hello(hello) => Ok(hello),
        other => bail!("unexpected reply to hello: {other:?}"),
    }
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
