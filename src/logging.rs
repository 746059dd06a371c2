//! Logging: one JSON object per line, through the `log` facade.
//!
//! Our own events are built with `event()` as JSON (every field JSON-encoded,
//! so a newline in user text cannot forge a line). Records from other crates
//! (tiny_http, ureq, rustls) are wrapped into the same shape, capped at
//! `warn` so their debug output (which may print headers) never appears, and
//! passed through `redact_text`. The current request id is kept in a
//! thread-local set by the worker, so every line written while serving a
//! request carries it.
//!
//! simplelog is not used: it has no JSON format, and wrapping it would be
//! more code than this logger.

use std::cell::RefCell;
use std::io::Write;
use std::sync::Mutex;

use serde_json::{Map, Value};

const OUR_TARGET: &str = "portcullis::json";

thread_local! {
    static REQUEST_ID: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Sets (or clears) the request id attached to this thread's log lines.
pub fn set_request_id(id: Option<&str>) {
    REQUEST_ID.with(|r| *r.borrow_mut() = id.map(str::to_string));
}

fn current_request_id() -> Option<String> {
    REQUEST_ID.with(|r| r.borrow().clone())
}

pub struct JsonLogger {
    level: log::LevelFilter,
    out: Mutex<Box<dyn Write + Send>>,
}

impl JsonLogger {
    pub fn new(level: log::LevelFilter, out: Box<dyn Write + Send>) -> JsonLogger {
        JsonLogger {
            level,
            out: Mutex::new(out),
        }
    }
}

/// Installs the JSON logger (once per process; later calls are ignored).
pub fn init(cfg: &crate::config::LoggingConfig) -> std::io::Result<()> {
    let out: Box<dyn Write + Send> = match &cfg.file {
        Some(path) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        ),
        None => Box::new(std::io::stderr()),
    };
    if log::set_boxed_logger(Box::new(JsonLogger::new(cfg.level, out))).is_ok() {
        log::set_max_level(cfg.level);
    }
    Ok(())
}

fn now_rfc3339() -> String {
    crate::time::format_rfc3339_millis(std::time::SystemTime::now())
}

impl log::Log for JsonLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let cap = if metadata.target() == OUR_TARGET || metadata.target().starts_with("portcullis") {
            self.level
        } else {
            // Other crates may log headers or URLs at debug/trace.
            self.level.min(log::LevelFilter::Warn)
        };
        metadata.level() <= cap
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = if record.target() == OUR_TARGET {
            record.args().to_string()
        } else {
            let mut m = Map::new();
            m.insert("time".into(), now_rfc3339().into());
            m.insert("level".into(), record.level().as_str().to_ascii_lowercase().into());
            m.insert("msg".into(), redact_text(&record.args().to_string()).into());
            m.insert("target".into(), record.target().into());
            if let Some(id) = current_request_id() {
                m.insert("request_id".into(), id.into());
            }
            Value::Object(m).to_string()
        };
        line.push('\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }

    fn flush(&self) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.flush();
    }
}

/// Logs one event: `{"time","level","msg","request_id"?, ...fields}`.
/// Field values are JSON values, so user text is escaped by construction.
pub fn event(level: log::Level, msg: &str, fields: &[(&str, Value)]) {
    if !log::log_enabled!(target: OUR_TARGET, level) {
        return;
    }
    let mut m = Map::new();
    m.insert("time".into(), now_rfc3339().into());
    m.insert("level".into(), level.as_str().to_ascii_lowercase().into());
    m.insert("msg".into(), msg.into());
    if let Some(id) = current_request_id() {
        m.insert("request_id".into(), id.into());
    }
    for (k, v) in fields {
        m.insert((*k).to_string(), v.clone());
    }
    log::log!(target: OUR_TARGET, level, "{}", Value::Object(m));
}

pub fn info(msg: &str, fields: &[(&str, Value)]) {
    event(log::Level::Info, msg, fields);
}

pub fn warn(msg: &str, fields: &[(&str, Value)]) {
    event(log::Level::Warn, msg, fields);
}

pub fn error(msg: &str, fields: &[(&str, Value)]) {
    event(log::Level::Error, msg, fields);
}

pub fn debug(msg: &str, fields: &[(&str, Value)]) {
    event(log::Level::Debug, msg, fields);
}

/// Masks credentials in free text from other crates and error chains:
/// `Bearer <x>`, `Authorization: <x>`, `api_key=<x>`-style pairs, anything
/// shaped like an OpenAI (`sk-`) or portcullis (`pcs_`) key, and URL query
/// values.
pub fn redact_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    'outer: while !rest.is_empty() {
        let lower = rest.to_ascii_lowercase();
        for marker in ["bearer ", "authorization:", "authorization=", "api_key=", "api-key:", "token="] {
            if lower.starts_with(marker) {
                out.push_str(&rest[..marker.len()]);
                rest = &rest[marker.len()..];
                let trimmed = rest.trim_start();
                out.push_str(&rest[..rest.len() - trimmed.len()]);
                let end = trimmed
                    .find(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '&')
                    .unwrap_or(trimmed.len());
                out.push_str("[redacted]");
                rest = &trimmed[end..];
                continue 'outer;
            }
        }
        for prefix in ["sk-", "pcs_"] {
            let at_word_start = out.chars().last().is_none_or(|c| !c.is_ascii_alphanumeric());
            if at_word_start && lower.starts_with(prefix) {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
                    .unwrap_or(rest.len());
                out.push_str("[redacted]");
                rest = &rest[end..];
                continue 'outer;
            }
        }
        if rest.starts_with('?') && out.contains("://") {
            let end = rest
                .find(|c: char| c.is_whitespace() || c == '"' || c == ')')
                .unwrap_or(rest.len());
            out.push_str("?[redacted]");
            rest = &rest[end..];
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A path with query values removed: `/a?x=1&y=2` -> `/a?x&y`.
pub fn path_for_log(path_and_query: &str) -> String {
    match path_and_query.split_once('?') {
        None => path_and_query.to_string(),
        Some((p, q)) => {
            let keys: Vec<&str> = q
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| kv.split('=').next().unwrap_or(""))
                .collect();
            format!("{}?{}", p, keys.join("&"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_table() {
        let cases = [
            ("Authorization: Bearer sk-abc123", "[redacted]"),
            ("failed with token=abcd&x=1", "token=[redacted]"),
            ("key pcs_0123456789abcdef used", "key [redacted] used"),
            ("GET http://h/x?api_key=1 failed", "?[redacted] failed"),
        ];
        for (input, want) in cases {
            let got = redact_text(input);
            assert!(got.contains(want), "{:?} -> {:?}", input, got);
            assert!(!got.contains("abc123") && !got.contains("abcd&") && !got.contains("0123456789"), "{}", got);
        }
        assert_eq!(redact_text("plain words"), "plain words");
        assert_eq!(redact_text("desk-top"), "desk-top");
    }

    #[test]
    fn query_values_are_dropped_from_logged_paths() {
        assert_eq!(path_for_log("/a?cursor=SECRET&limit=5"), "/a?cursor&limit");
        assert_eq!(path_for_log("/a"), "/a");
    }

    #[test]
    fn foreign_records_become_one_json_line() {
        use log::Log;
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let logger = JsonLogger::new(log::LevelFilter::Trace, Box::new(buf.clone()));
        logger.log(
            &log::Record::builder()
                .target("tiny_http")
                .level(log::Level::Warn)
                .args(format_args!("bad\nline Bearer sk-xyz"))
                .build(),
        );
        logger.log(
            &log::Record::builder()
                .target("ureq")
                .level(log::Level::Debug)
                .args(format_args!("Authorization: sk-hidden"))
                .build(),
        );
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{}", text);
        let v: Value = serde_json::from_str(text.trim()).unwrap();
        assert_eq!(v["level"], "warn");
        assert!(!text.contains("sk-xyz") && !text.contains("sk-hidden"));
    }
}
