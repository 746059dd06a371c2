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
    // Reused buffer: setting the id allocates only the first time.
    static REQUEST_ID: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Sets (or clears) the request id attached to this thread's log lines.
pub fn set_request_id(id: Option<&str>) {
    REQUEST_ID.with(|r| {
        let mut r = r.borrow_mut();
        r.clear();
        if let Some(id) = id {
            r.push_str(id);
        }
    });
}

fn current_request_id() -> Option<String> {
    REQUEST_ID.with(|r| {
        let r = r.borrow();
        (!r.is_empty()).then(|| r.clone())
    })
}

/// Where lines go: a buffer in front of the file or standard error.
/// With `flush_interval_ms > 0`, info and debug lines wait in the buffer
/// (at most 64 KiB, at most that long: a background thread flushes),
/// saving a system call per request; warnings and errors are written at
/// once. With 0 every line is written as it is logged.
pub struct Sink {
    out: Mutex<std::io::BufWriter<Box<dyn Write + Send>>>,
    buffered: bool,
}

impl Sink {
    fn write_line(&self, level: log::Level, line: &[u8]) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = out.write_all(line);
        if !self.buffered || level <= log::Level::Warn {
            let _ = out.flush();
        }
    }

    fn flush(&self) {
        let _ = self.out.lock().unwrap_or_else(|e| e.into_inner()).flush();
    }
}

const LOG_BUFFER_BYTES: usize = 64 * 1024;

static SINK: std::sync::OnceLock<std::sync::Arc<Sink>> = std::sync::OnceLock::new();

pub struct JsonLogger {
    level: log::LevelFilter,
    sink: std::sync::Arc<Sink>,
}

impl JsonLogger {
    pub fn new(level: log::LevelFilter, out: Box<dyn Write + Send>) -> JsonLogger {
        JsonLogger {
            level,
            sink: std::sync::Arc::new(Sink {
                out: Mutex::new(std::io::BufWriter::with_capacity(LOG_BUFFER_BYTES, out)),
                buffered: false,
            }),
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
    let sink = std::sync::Arc::new(Sink {
        out: Mutex::new(std::io::BufWriter::with_capacity(LOG_BUFFER_BYTES, out)),
        buffered: !cfg.flush_interval.is_zero(),
    });
    if SINK.set(sink.clone()).is_err() {
        return Ok(());
    }
    let logger = JsonLogger {
        level: cfg.level,
        sink: sink.clone(),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(cfg.level);
    }
    if sink.buffered {
        let every = cfg.flush_interval;
        std::thread::Builder::new()
            .name("log-flush".into())
            .stack_size(64 * 1024)
            .spawn(move || loop {
                std::thread::sleep(every);
                sink.flush();
            })?;
    }
    Ok(())
}

/// Writes out buffered lines (shutdown, and after a panic).
pub fn flush() {
    if let Some(s) = SINK.get() {
        s.flush();
    }
}

fn now_rfc3339() -> String {
    crate::time::format_rfc3339_millis(std::time::SystemTime::now())
}

impl log::Log for JsonLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        let cap = if metadata.target() == OUR_TARGET || metadata.target().starts_with("portcullis")
        {
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
            m.insert(
                "level".into(),
                record.level().as_str().to_ascii_lowercase().into(),
            );
            m.insert("msg".into(), redact_text(&record.args().to_string()).into());
            m.insert("target".into(), record.target().into());
            if let Some(id) = current_request_id() {
                m.insert("request_id".into(), id.into());
            }
            Value::Object(m).to_string()
        };
        line.push('\n');
        self.sink.write_line(record.level(), line.as_bytes());
    }

    fn flush(&self) {
        self.sink.flush();
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

/// Appends `s` as a JSON string literal (quotes and escapes included).
pub fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{2028}' || c == '\u{2029}' => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes an already-built JSON object line (without newline) straight to
/// the sink, when `level` is enabled: the per-request access line, which
/// needs no formatting through the `log` facade.
pub fn write_line(level: log::Level, mut line: String) {
    if level > log::max_level() {
        return;
    }
    line.push('\n');
    match SINK.get() {
        Some(sink) => sink.write_line(level, line.as_bytes()),
        None => log::log!(target: OUR_TARGET, level, "{}", line.trim_end()),
    }
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
        for marker in [
            "bearer ",
            "authorization:",
            "authorization=",
            "api_key=",
            "api-key:",
            "token=",
        ] {
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
            let at_word_start = out
                .chars()
                .last()
                .is_none_or(|c| !c.is_ascii_alphanumeric());
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
            assert!(
                !got.contains("abc123") && !got.contains("abcd&") && !got.contains("0123456789"),
                "{}",
                got
            );
        }
        assert_eq!(redact_text("plain words"), "plain words");
        assert_eq!(redact_text("desk-top"), "desk-top");
    }

    #[test]
    fn json_strings_are_escaped_like_serde_json() {
        for s in [
            "plain",
            "quote\" back\\slash",
            "new\nline\r\t",
            "\u{1}ctl",
            "ünï\u{2028}",
        ] {
            let mut out = String::new();
            push_json_str(&mut out, s);
            let back: String = serde_json::from_str(&out).unwrap();
            assert_eq!(back, s);
            assert!(!out.contains('\n'));
        }
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
