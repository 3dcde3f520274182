//! The control protocol: one JSON object per line each way over the Unix
//! socket an interposer listens on.
//!
//! ```text
//! > {"v":2,"op":"hello"}                  < {"v":2,"ok":true,"hello":{"pid":..,"python":"3.11",..}}
//! > {"v":2,"op":"stats"}                  < {"v":2,"ok":true,"stats":{..}}
//! > {"v":2,"op":"config","config":{..}}   < {"v":2,"ok":true,"config":{..}}
//! > {"v":2,"op":"settings"}               < {"v":2,"ok":true,"config":{..}}
//! anything else                           < {"v":2,"ok":false,"error":".."}
//! ```
//!
//! `config` replaces the settings in force (the reply echoes them with
//! defaults filled in); `settings` only reads them (cheaper than `stats`). A request longer than [`MAX_REQUEST_BYTES`] closes
//! the connection.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::settings::Settings;
use crate::stats::Stats;

/// Version 2: settings nested as in the TieringPolicy API (version 1 had the
/// tracking settings at the top level).
pub const PROTOCOL_VERSION: u64 = 2;
/// Longest request the interposer reads.
pub const MAX_REQUEST_BYTES: usize = 64 << 10;
/// Longest reply a client reads (stats with their top-type lists are a few KiB).
pub const MAX_REPLY_BYTES: usize = 4 << 20;

/// A request, without its version envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Hello,
    Stats,
    Config { config: Settings },
    Settings,
}

/// What the interposer answers, without its envelope.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Answer {
    Hello(Hello),
    Stats(Box<Stats>),
    Config(Settings),
    Error(String),
}

/// Who is on the other end of the socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hello {
    /// The process's pid in its own PID namespace.
    pub pid: u32,
    pub python: String,
    pub protocol: u64,
    /// The pytier release the interposer was built from.
    pub pytier: String,
}

/// Envelope of a request or a reply on the wire.
#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(flatten)]
    body: T,
}

impl Request {
    /// One request line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(&Envelope { v: PROTOCOL_VERSION, ok: None, body: self }).expect("requests serialize")
    }

    /// Parses one request line; the error is what to answer.
    pub fn parse(line: &[u8]) -> Result<Request, String> {
        let value: Value = serde_json::from_slice(line).map_err(|e| format!("not a JSON request: {e}"))?;
        check_version(&value, "request")?;
        let Value::Object(mut fields) = value else { unreachable!("check_version saw an object") };
        fields.remove("v");
        // Settings are checked on their own, so the error names the setting.
        if fields.get("op").and_then(Value::as_str) == Some("config")
            && fields.len() == 2
            && let Some(config) = fields.remove("config")
        {
            return Settings::from_value(config).map(|config| Request::Config { config }).map_err(|e| e.to_string());
        }
        serde_json::from_value(Value::Object(fields)).map_err(|e| format!("bad request: {e}"))
    }
}

impl Answer {
    /// One reply line (without the newline).
    pub fn to_line(&self) -> String {
        let ok = !matches!(self, Answer::Error(_));
        serde_json::to_string(&Envelope { v: PROTOCOL_VERSION, ok: Some(ok), body: self }).expect("replies serialize")
    }

    /// Parses one reply line; an error reply stays an `Answer::Error`, a
    /// reply that is not one of ours is an `Err`.
    pub fn parse(line: &[u8]) -> Result<Answer, String> {
        let value: Value = serde_json::from_slice(line).map_err(|e| format!("reply is not JSON: {e}"))?;
        check_version(&value, "reply")?;
        let Value::Object(mut fields) = value else { unreachable!("check_version saw an object") };
        fields.remove("v");
        fields.remove("ok");
        serde_json::from_value(Value::Object(fields)).map_err(|e| format!("malformed reply: {e}"))
    }
}

fn check_version(value: &Value, what: &str) -> Result<(), String> {
    let Some(fields) = value.as_object() else { return Err(format!("a {what} must be a JSON object")) };
    match fields.get("v").and_then(Value::as_u64) {
        Some(PROTOCOL_VERSION) => Ok(()),
        Some(v) => Err(format!(
            "protocol version {v} is not supported (this side speaks version {PROTOCOL_VERSION}); \
             restart the process with the current pytier shim"
        )),
        None => Err(format!("{what} without a protocol version \"v\"")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_say_why() {
        for request in
            [Request::Hello, Request::Stats, Request::Settings, Request::Config { config: Settings::default() }]
        {
            assert_eq!(Request::parse(request.to_line().as_bytes()).unwrap(), request);
        }
        assert_eq!(Request::parse(br#"{"v":2,"op":"stats"}"#).unwrap(), Request::Stats);
        let old = Request::parse(br#"{"v":1,"op":"stats"}"#).unwrap_err();
        assert!(old.contains("protocol version 1 is not supported"), "{old}");
        assert!(Request::parse(br#"{"op":"stats"}"#).unwrap_err().contains("without a protocol version"));
        assert!(Request::parse(br#"{"v":2,"op":"reboot"}"#).unwrap_err().contains("unknown variant `reboot`"));
        assert!(Request::parse(b"\xff\xfe").unwrap_err().contains("not a JSON request"));
        assert!(Request::parse(b"[1,2]").unwrap_err().contains("must be a JSON object"));
        let bad = Request::parse(br#"{"v":2,"op":"config","config":{"tracking":{"hotThreshold":"x"}}}"#);
        assert!(bad.unwrap_err().contains("hotThreshold"));
    }

    #[test]
    fn replies_round_trip() {
        let hello = Answer::Hello(Hello { pid: 1, python: "3.11".into(), protocol: 2, pytier: "0.1.0".into() });
        for answer in [hello, Answer::Stats(Box::default()), Answer::Error("no".into())] {
            let line = answer.to_line();
            assert_eq!(Answer::parse(line.as_bytes()).unwrap(), answer, "{line}");
        }
        assert!(Answer::Error("x".into()).to_line().contains(r#""ok":false"#));
        let old = Answer::parse(br#"{"v":1,"ok":true,"stats":{}}"#).unwrap_err();
        assert!(old.contains("protocol version 1"), "{old}");
    }
}
