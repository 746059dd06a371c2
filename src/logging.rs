//! Logging: one JSON object per line, through the `log` facade.
//!
//! Our own events are built with `event()` as JSON (every field JSON-encoded,
//! so a newline in user text cannot forge a line). Records from other crates
//! (tiny_http, ureq, rustls) are wrapped into the same shape, capped at
//! `warn` so their debug output (which may print headers) never appears, and
//! passed through `redact_text`.
//!
//! Secrets are redacted two ways. By value: the secret values the process
//! holds (upstream keys, the CSRF secret) are registered at start-up
//! (`register_secret`, called by `secret::load_*`), and every occurrence of
//! one, whatever its shape, becomes `[redacted]` in every event line
//! (`event`), foreign record, error detail and panic message (`redact_text`).
//! Values shorter than `MIN_REDACTED_SECRET_BYTES` are not registered: they
//! would redact common words, so start-up warns about them instead. By
//! shape: `redact_text` also masks `Bearer`/`Authorization`/`api_key=`
//! values and `sk-`/`pcs_` keys, and `log_path` masks key-shaped path
//! segments. The per-request access line is not scanned: it holds no secret
//! value by construction (method, route, status, numbers, the client
//! address and the path through `log_path`).
//!
//! The current request id is kept in a
//! thread-local set by the serving thread, so every line written while serving a
//! request carries it.
//!
//! simplelog is not used: it has no JSON format, and wrapping it would be
//! more code than this logger.

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::Write;
use std::sync::{Mutex, RwLock};

use serde_json::{Map, Value};

const OUR_TARGET: &str = "portcullis::json";

thread_local! {
    // Reused buffer: setting the id allocates only the first time.
    static REQUEST_ID: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Secrets shorter than this are not redacted by value: a short value
/// (`admin`, `test`) would blank out common words in every line. Start-up
/// warns when a configured secret is this short (`App::new`).
pub const MIN_REDACTED_SECRET_BYTES: usize = 8;
/// A text that ends with this much (or more) of the start of a secret has
/// that tail redacted too: free text is often cut to a length (an upstream
/// error body), which can split a secret. Shorter tails are kept for the
/// reason short secrets are not registered: `llama` at the end of a
/// message must not vanish because a key starts with `llama-`.
const MIN_SECRET_TAIL_BYTES: usize = MIN_REDACTED_SECRET_BYTES;
/// The registered secret values, each also in its JSON-escaped form when
/// that differs (it is how a value appears inside a logged JSON string).
/// Written a few times at start-up, read on every redaction.
static SECRET_VALUES: RwLock<Vec<Box<str>>> = RwLock::new(Vec::new());

/// Registers a secret value for redaction by value in every later log line,
/// error detail and panic message. Returns false (and registers nothing)
/// when the value is shorter than `MIN_REDACTED_SECRET_BYTES` or not UTF-8
/// (then it cannot appear in text as itself). Registering twice is harmless.
pub fn register_secret(value: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(value) else {
        return false;
    };
    if text.len() < MIN_REDACTED_SECRET_BYTES {
        return false;
    }
    let mut escaped = String::with_capacity(text.len() + 2);
    push_json_str(&mut escaped, text);
    let escaped = &escaped[1..escaped.len() - 1];
    let mut values = SECRET_VALUES.write().unwrap_or_else(|e| e.into_inner());
    for form in [text, escaped] {
        if !values.iter().any(|v| &**v == form) {
            values.push(form.into());
        }
    }
    // Longest first, so a secret containing another is replaced whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    true
}

/// `s` with every registered secret value replaced by `[redacted]`;
/// borrowed (no copy) when none occurs. With `tails`, a trailing start of a
/// secret (text cut inside it) is redacted too.
fn redact_values(s: &str, tails: bool) -> Cow<'_, str> {
    let values = SECRET_VALUES.read().unwrap_or_else(|e| e.into_inner());
    let mut out = Cow::Borrowed(s);
    for v in values.iter() {
        if out.contains(&**v) {
            out = Cow::Owned(out.replace(&**v, "[redacted]"));
        }
        if tails {
            let cut = (MIN_SECRET_TAIL_BYTES..v.len())
                .rev()
                .filter(|n| v.is_char_boundary(*n))
                .find(|n| out.ends_with(&v[..*n]));
            if let Some(n) = cut {
                let keep = out.len() - n;
                out = Cow::Owned(format!("{}[redacted]", &out[..keep]));
            }
        }
    }
    out
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
/// A log file inside `data_dir` is never opened through a link and is
/// created with mode 0600 (`data_files::open_log`).
pub fn init(cfg: &crate::config::LoggingConfig, data_dir: &std::path::Path) -> std::io::Result<()> {
    let out: Box<dyn Write + Send> = match &cfg.file {
        Some(path) => Box::new(crate::data_files::open_log(path, data_dir)?),
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
    let line = Value::Object(m).to_string();
    log::log!(target: OUR_TARGET, level, "{}", redact_values(&line, false));
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

/// Masks credentials in free text from other crates, error chains, upstream
/// messages and panics: every registered secret value (`register_secret`),
/// whatever its shape, and a trailing start of one; then `Bearer <x>`,
/// `Authorization: <x>`, `api_key=<x>`-style pairs, anything shaped like an
/// OpenAI (`sk-`) or portcullis (`pcs_`) key, and URL query values.
pub fn redact_text(s: &str) -> String {
    let s = &*redact_values(s, true);
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

/// The path as logged: query values dropped (`/a?x=1&y=2` -> `/a?x&y`),
/// and every path segment or query name that looks like a key or token
/// (`looks_like_secret`) replaced by `[redacted]`. Borrows the path when
/// there is nothing to change (the common case: no allocation per request).
pub fn log_path<'a>(path: &'a str, query: &str) -> Cow<'a, str> {
    let secret_segment = path.split('/').any(looks_like_secret);
    if query.is_empty() && !secret_segment {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(path.len() + query.len());
    if secret_segment {
        push_redacted(&mut out, path.split('/'), '/');
    } else {
        out.push_str(path);
    }
    if !query.is_empty() {
        out.push('?');
        let names = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| kv.split('=').next().unwrap_or(""));
        push_redacted(&mut out, names, '&');
    }
    Cow::Owned(out)
}

/// Appends `parts` joined by `sep`, each key-shaped one as `[redacted]`.
fn push_redacted<'a>(out: &mut String, parts: impl Iterator<Item = &'a str>, sep: char) {
    for (i, part) in parts.enumerate() {
        if i > 0 {
            out.push(sep);
        }
        out.push_str(if looks_like_secret(part) {
            "[redacted]"
        } else {
            part
        });
    }
}

/// As `log_path`, from a path with its query.
pub fn path_for_log(path_and_query: &str) -> String {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    log_path(path, query).into_owned()
}

/// Prefixes of well-known credential formats (compared in lower case).
const KEY_PREFIXES: &[&str] = &[
    "pcs_",
    "sk-",
    "sk_",
    "rk_",
    "pk_live_",
    "ghp_",
    "gho_",
    "ghs_",
    "ghu_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xapp-",
    "hf_",
    "akia",
    "aiza",
];
/// Names inside a segment (`token=...`, `;api_key=...`) whose value is a secret.
const SECRET_NAMES: &[&str] = &["key", "token", "secret", "password", "auth", "bearer"];
/// A run of letters and digits at least this long, holding both, is taken
/// for random key material (ids of our own excepted).
const MIN_RANDOM_RUN: usize = 20;

/// Whether one path segment (or query name) looks like a key or token:
/// a well-known key prefix with at least 8 characters after it, a
/// `Bearer`-ish string, a `name=value` whose name says secret, a JWT, or a
/// long run (>= 20) of letters and digits that holds both (high entropy),
/// unless it is exactly our own id shape (`ids::new_id`: 24 lower-case hex)
/// so resource ids stay readable. Percent-escapes are decoded first. Model
/// names (`llama3.1:8b-instruct-q4_K_M`, `gpt-4o-mini-2024-07-18`) are
/// words between separators and stay readable.
pub fn looks_like_secret(segment: &str) -> bool {
    if segment.len() < 8 {
        return false;
    }
    // No allocation unless the segment has escapes: this runs on every
    // path segment of 8 bytes or more of every access line.
    let decoded = percent_decode(segment);
    let d: &str = &decoded;
    let starts =
        |p: &str| d.len() >= p.len() && d.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes());
    if KEY_PREFIXES
        .iter()
        .any(|p| starts(p) && d.len() >= p.len() + 8)
    {
        return true;
    }
    if starts("bearer") || starts("basic ") {
        return true;
    }
    if let Some((name, value)) = d.split_once('=') {
        let named = |n: &str| {
            name.as_bytes()
                .windows(n.len())
                .any(|w| w.eq_ignore_ascii_case(n.as_bytes()))
        };
        if !value.is_empty() && SECRET_NAMES.iter().any(|n| named(n)) {
            return true;
        }
    }
    if starts("eyj") && d.contains('.') && d.len() >= 20 {
        return true;
    }
    d.split(|c: char| !c.is_ascii_alphanumeric()).any(|run| {
        run.len() >= MIN_RANDOM_RUN
            && run.bytes().any(|b| b.is_ascii_digit())
            && run.bytes().any(|b| b.is_ascii_alphabetic())
            && !is_our_id(run)
    })
}

/// `ids::new_id`'s shape: 24 lower-case hex characters.
fn is_our_id(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `%XX` escapes decoded (invalid ones kept as they are), `+` as a space.
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
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
    fn key_shaped_path_segments_are_redacted_table() {
        let our_key = format!("pcs_{}", "0f".repeat(24));
        let cases: Vec<(&str, String, String)> = vec![
            // (case, path with query, logged)
            (
                "plain_route_unchanged",
                "/api/projects".into(),
                "/api/projects".into(),
            ),
            (
                "our_resource_id_stays_readable",
                "/api/conversations/0123456789abcdef01234567/messages".into(),
                "/api/conversations/0123456789abcdef01234567/messages".into(),
            ),
            (
                "model_names_stay_readable",
                "/v1/models/llama3.1:8b-instruct-q4_K_M".into(),
                "/v1/models/llama3.1:8b-instruct-q4_K_M".into(),
            ),
            (
                "dated_model_name_stays_readable",
                "/v1/models/gpt-4o-mini-2024-07-18".into(),
                "/v1/models/gpt-4o-mini-2024-07-18".into(),
            ),
            (
                "our_key_format",
                format!("/api/projects/{}", our_key),
                "/api/projects/[redacted]".into(),
            ),
            (
                "openai_key",
                "/v1/sk-proj-abcDEF123456/models".into(),
                "/v1/[redacted]/models".into(),
            ),
            (
                "bearer_ish_segment",
                "/x/Bearer%20abcdef123/y".into(),
                "/x/[redacted]/y".into(),
            ),
            (
                "token_pair_in_a_segment",
                "/x;token=hunter2hunter2".into(),
                "/[redacted]".into(),
            ),
            (
                "jwt",
                "/cb/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig".into(),
                "/cb/[redacted]".into(),
            ),
            (
                "long_high_entropy_run",
                "/files/Zx8Qw2Lm9Rt4Yp7Kd3Vb6Nc1".into(),
                "/files/[redacted]".into(),
            ),
            (
                "long_hex_that_is_not_our_id",
                "/h/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b".into(),
                "/h/[redacted]".into(),
            ),
            (
                "percent_encoded_key",
                "/k/sk%2Dlive%2D1234567890".into(),
                "/k/[redacted]".into(),
            ),
            (
                "key_shaped_query_name_and_dropped_values",
                format!("/a?{}&limit=5&cursor=xyz", our_key),
                "/a?[redacted]&limit&cursor".into(),
            ),
            ("short_words_unchanged", "/api/me".into(), "/api/me".into()),
        ];
        for (name, input, want) in &cases {
            assert_eq!(&path_for_log(input), want, "{}", name);
            let (p, q) = input.split_once('?').unwrap_or((input, ""));
            assert_eq!(&log_path(p, q), want, "{} (log_path)", name);
        }
        assert!(matches!(log_path("/api/projects", ""), Cow::Borrowed(_)));
    }

    #[test]
    fn registered_secret_values_are_redacted_whatever_their_shape() {
        // Unique per run: the registry is process-wide.
        let upstream = format!("llama-canary-{}", crate::ids::random_hex(3));
        let quoted = format!("quo\"te{}", crate::ids::random_hex(4));
        let short = "abc1234";
        assert!(register_secret(upstream.as_bytes()));
        assert!(register_secret(quoted.as_bytes()));
        assert!(register_secret(upstream.as_bytes()), "twice is harmless");
        assert!(!register_secret(short.as_bytes()), "shorter than 8 bytes");
        assert!(!register_secret(&[0xff; 16]), "not UTF-8");
        let body = format!(
            "upstream status 401: {{\"error\":\"invalid key {}\"}}",
            upstream
        );
        let cases: Vec<(&str, String, String)> = vec![
            (
                "echoed_in_an_upstream_error",
                body.clone(),
                "upstream status 401: {\"error\":\"invalid key [redacted]\"}".into(),
            ),
            (
                "twice_in_one_text",
                format!("{} and {}", upstream, upstream),
                "[redacted] and [redacted]".into(),
            ),
            (
                "cut_inside_the_secret",
                format!("body: {}", &upstream[..10]),
                "body: [redacted]".into(),
            ),
            (
                "a_cut_shorter_than_8_bytes_is_kept",
                format!("model not found: {}", &upstream[..5]),
                "model not found: llama".into(),
            ),
            (
                "json_escaped_form",
                serde_json::json!({ "v": quoted }).to_string(),
                "{\"v\":\"[redacted]\"}".into(),
            ),
            (
                "short_values_are_not_registered",
                format!("pin {}", short),
                format!("pin {}", short),
            ),
        ];
        for (name, input, want) in &cases {
            assert_eq!(&redact_text(input), want, "{}", name);
        }
        // Event lines: the value inside a JSON field, escaped or not.
        assert_eq!(
            redact_values(&serde_json::json!({ "a": body, "b": quoted }).to_string(), false),
            "{\"a\":\"upstream status 401: {\\\"error\\\":\\\"invalid key [redacted]\\\"}\",\"b\":\"[redacted]\"}"
        );
    }

    #[test]
    fn debug_error_details_are_redacted_by_value() {
        let secret = format!("csrf-like-{}", crate::ids::random_hex(8));
        assert!(register_secret(secret.as_bytes()));
        let err = crate::error::ApiError::internal(format!("boom {}", secret));
        let body = String::from_utf8(err.to_body("rid", true)).unwrap();
        assert!(body.contains("boom [redacted]"), "{}", body);
        assert!(!body.contains(&secret), "{}", body);
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
