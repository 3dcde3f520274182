//! The control channel: a Unix socket the node agent (or `python -m pytier`)
//! talks to. Protocol version 1, one JSON object per line each way:
//!
//! ```text
//! > {"v":1,"op":"hello"}                   < {"v":1,"ok":true,"pid":..,"python":"3.11",..}
//! > {"v":1,"op":"stats"}                   < {"v":1,"ok":true,"stats":{..}}
//! > {"v":1,"op":"config","config":{..}}    < {"v":1,"ok":true,"config":{..}}
//! anything else                            < {"v":1,"ok":false,"error":".."}
//! ```
//!
//! A request longer than 64 KiB, or one that does not arrive within 2 s,
//! closes the connection. Nothing a client sends can affect the program.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use crate::Shared;
use crate::config::Config;

pub const PROTOCOL_VERSION: u64 = 1;
pub const MAX_REQUEST: usize = 64 << 10;

/// Serves clients one at a time until `shared.stop` is set.
pub fn serve(listener: UnixListener, shared: Arc<Shared>) {
    // Non-blocking accept so the stop flag is seen within 100 ms.
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !shared.stop.load(Ordering::Acquire) {
        match listener.accept() {
            Ok((stream, _)) => handle(stream, &shared),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(100)),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn handle(stream: UnixStream, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    let Ok(write_half) = stream.try_clone() else { return };
    let mut writer = write_half;
    let mut reader = BufReader::new(stream.take(MAX_REQUEST as u64 + 1));
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.by_ref().read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // The reader stops one byte past the limit, so a longer line shows.
        let too_long = line.len() > MAX_REQUEST;
        let response =
            if too_long { error(format!("request longer than {MAX_REQUEST} bytes")) } else { respond(&line, shared) };
        if writer.write_all(format!("{response}\n").as_bytes()).is_err() || too_long {
            return;
        }
        // Each connection may send at most MAX_REQUEST bytes in all.
        if reader.get_ref().limit() == 0 {
            return;
        }
    }
}

/// The answer to one request line.
pub fn respond(line: &[u8], shared: &Shared) -> Value {
    let request: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return error(format!("not a JSON request: {e}")),
    };
    match request.get("v").and_then(Value::as_u64) {
        Some(PROTOCOL_VERSION) => {}
        Some(v) => return error(format!("protocol version {v} is not supported (this is version {PROTOCOL_VERSION})")),
        None => return error("missing protocol version \"v\"".into()),
    }
    match request.get("op").and_then(Value::as_str) {
        Some("hello") => {
            ok(json!({ "pid": std::process::id(), "python": shared.python.clone(), "protocol": PROTOCOL_VERSION }))
        }
        Some("stats") => ok(json!({ "stats": shared.stats_json() })),
        Some("config") => {
            let Some(config) = request.get("config") else { return error("config request without \"config\"".into()) };
            match Config::from_json(&config.to_string()) {
                Ok(config) => {
                    if let Ok(mut current) = shared.config.lock() {
                        *current = config.clone();
                    }
                    ok(json!({ "config": config }))
                }
                Err(e) => error(e),
            }
        }
        Some(op) => error(format!("unknown op {op:?} (known: hello, stats, config)")),
        None => error("missing \"op\"".into()),
    }
}

fn ok(mut body: Value) -> Value {
    body["v"] = json!(PROTOCOL_VERSION);
    body["ok"] = json!(true);
    body
}

fn error(message: String) -> Value {
    json!({ "v": PROTOCOL_VERSION, "ok": false, "error": message })
}
