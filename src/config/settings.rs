//! The settings table: every setting's section, key, default, kind (with its
//! bounds) and one-line doc, in `config.ini` order. It is the only place a
//! setting is described: loading (`config.rs`) checks values against it and
//! fills the typed `Config` from it, and the committed `config.ini` and the
//! README's settings table are rendered from it (`render_ini`,
//! `render_markdown`) and checked by the tests below.

use std::time::Duration;

use serde_json::{json, Value};

use crate::net::TrustedProxies;

/// What a setting's value may be; the bounds are inclusive.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// A whole number (a count).
    Uint { min: u64, max: u64 },
    /// A whole number of bytes; the key ends in `_bytes`.
    Bytes { min: u64, max: u64 },
    /// Whole seconds; the key ends in `_s`, the struct field is a `Duration`.
    Seconds { min: u64, max: u64 },
    /// Whole milliseconds; the key ends in `_ms`, the field is a `Duration`.
    Millis { min: u64, max: u64 },
    /// `true`/`false` (also `yes`/`no`, `on`/`off`, `1`/`0`).
    Bool,
    /// One of these words (any case); the field decodes the word.
    OneOf(&'static [&'static str]),
    /// Free text of a bounded length in characters.
    Text { min_chars: usize, max_chars: usize },
    /// A file or directory path; never empty.
    Path,
    /// A file path, or empty for none (the field is an `Option`).
    OptionalPath,
    /// `IP:PORT`.
    SocketAddr,
    /// An `http://` or `https://` URL; a trailing `/` is dropped.
    HttpUrl,
    /// The name of an environment variable, or empty for none.
    EnvVarName,
    /// A comma-separated list; empty items are dropped.
    List { item: Item, min_items: usize },
}

/// What each item of a `Kind::List` must be.
#[derive(Clone, Copy, Debug)]
pub enum Item {
    /// A host name or address, compared without case (stored lower case).
    Host,
    /// An exact origin, `scheme://host[:port]`; wildcards and `null` refused.
    Origin,
    /// An IP address or a CIDR.
    IpOrCidr,
    /// A model name, or a `prefix*` pattern.
    ModelPattern,
}

/// The `[upstream]` keys an `[upstream.NAME]` section may set (the others
/// hold for every upstream). A named upstream does not inherit `base_url`,
/// `api_key_env`, `models` or `weight` from `[upstream]`; the rest it does.
pub const PER_UPSTREAM: &[&str] = &[
    "base_url",
    "api_key_env",
    "models",
    "weight",
    "context_tokens",
    "connect_timeout_s",
    "timeout_s",
    "stream_idle_timeout_s",
    "max_stream_s",
    "max_response_bytes",
    "max_idle_connections",
];
/// Of `PER_UPSTREAM`, what a named upstream must set itself.
pub const PER_UPSTREAM_OWN: &[&str] = &["base_url", "api_key_env", "models", "weight"];

/// One row of the table.
#[derive(Debug)]
pub struct Setting {
    pub section: &'static str,
    pub key: &'static str,
    /// The value as written in `config.ini`.
    pub default: &'static str,
    pub kind: Kind,
    /// One line for `config.ini` and the README; `code` in backticks.
    pub doc: &'static str,
}

const DAY_S: u64 = 86_400;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

use Item::*;
use Kind::*;

/// Every setting, in `config.ini` order.
///
/// To add a setting: add its row here, and a field of the same name to its
/// section's struct in `config.rs` (a `Duration` named without the `_s`/`_ms`
/// suffix for `Seconds`/`Millis`); `Config` is filled from this table by
/// name, so no loading code changes. Then regenerate `config.ini` and the
/// README table: `cargo test --lib regenerate_settings_docs -- --ignored`.
/// A test fails while a row has no field, a field no row, a bound does not
/// fit the field's type, or either snapshot is stale.
#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    // [server]
    Setting { section: "server", key: "bind", default: "127.0.0.1:8000", kind: SocketAddr,
        doc: "Address to listen on. Port 0 picks a free port; the chosen address is logged and written to `<data_dir>/portcullis.addr`. In production, bind to loopback behind the TLS proxy." },
    Setting { section: "server", key: "data_dir", default: "data", kind: Path,
        doc: "Directory for the database, generated secrets and the first API key." },
    Setting { section: "server", key: "workers", default: "8", kind: Uint { min: 1, max: 1024 },
        doc: "Requests served at once (filter chain and handler), each on its connection's own thread. Waiting for a body, on the model or on a client slow to read does not count." },
    Setting { section: "server", key: "queue_capacity", default: "128", kind: Uint { min: 1, max: 100_000 },
        doc: "Requests waiting for their turn while `workers` are served (first come, first served); beyond this, 503 `server_busy` at once." },
    Setting { section: "server", key: "max_connections", default: "1024", kind: Uint { min: 1, max: 1_000_000 },
        doc: "Open connections in total; beyond this, new ones get 503 and are closed." },
    Setting { section: "server", key: "max_connections_per_ip", default: "128", kind: Uint { min: 1, max: 1_000_000 },
        doc: "Open connections from one client address (IPv6: per /64)." },
    Setting { section: "server", key: "max_concurrent_streams", default: "64", kind: Uint { min: 1, max: 100_000 },
        doc: "SSE streams (chat) at once; beyond this, 503 `server_busy`." },
    Setting { section: "server", key: "max_streams_per_client", default: "8", kind: Uint { min: 1, max: 100_000 },
        doc: "SSE streams at once from one API key (or, without a key, one client address); beyond this, 503 `server_busy`." },
    Setting { section: "server", key: "read_timeout_s", default: "10", kind: Seconds { min: 1, max: 3600 },
        doc: "A client silent this long while we wait for its request is disconnected." },
    Setting { section: "server", key: "write_timeout_s", default: "10", kind: Seconds { min: 1, max: 3600 },
        doc: "A client that stops reading our response this long is disconnected. Streams too: an event not taken within this ends the stream (the send buffer is small, so such a client costs little memory meanwhile)." },
    Setting { section: "server", key: "shutdown_grace_s", default: "10", kind: Seconds { min: 0, max: 3600 },
        doc: "On SIGTERM/SIGINT, in-flight requests get this long to finish." },
    Setting { section: "server", key: "max_request_line_bytes", default: "16384", kind: Bytes { min: 256, max: MIB },
        doc: "Longest request line; longer gets 414." },
    Setting { section: "server", key: "max_head_bytes", default: "65536", kind: Bytes { min: 1024, max: 4 * MIB },
        doc: "Largest request head; larger gets 431." },
    Setting { section: "server", key: "max_headers", default: "100", kind: Uint { min: 8, max: 10_000 },
        doc: "Most header lines in a request head; more gets 431." },
    Setting { section: "server", key: "head_timeout_s", default: "10", kind: Seconds { min: 1, max: 3600 },
        doc: "A request head must be complete this long after its first byte (408)." },
    Setting { section: "server", key: "prebuffer_body_bytes", default: "16384", kind: Bytes { min: 0, max: MIB },
        doc: "Bodies declared up to this size are read before the request takes its turn (`workers`). Larger, chunked and `Expect: 100-continue` bodies are received only after every filter (auth included) passed, with the turn given back meanwhile. No body is ever read while holding a turn. Memory before auth: at most this much per open connection." },
    Setting { section: "server", key: "debug", default: "false", kind: Bool,
        doc: "Adds a `detail` field to error bodies. Never in production." },
    Setting { section: "server", key: "ui", default: "true", kind: Bool,
        doc: "Serve the built-in chat page at `/`." },

    // [security]
    Setting { section: "security", key: "max_body_bytes", default: "10485760", kind: Bytes { min: 1, max: 16 * GIB },
        doc: "Bodies over this (10 MiB by default) are refused with 413: a declared length before any byte is read, a chunked body once it passes the cap." },
    Setting { section: "security", key: "body_timeout_s", default: "30", kind: Seconds { min: 1, max: 3600 },
        doc: "A request body must arrive completely within this time (408, connection closed)." },
    Setting { section: "security", key: "allowed_hosts", default: "localhost, 127.0.0.1, ::1", kind: List { item: Host, min_items: 1 },
        doc: "Host header names accepted (port ignored); others get 421 (DNS-rebinding defence). In production, your public host name." },
    Setting { section: "security", key: "allowed_origins", default: "http://localhost:3000, http://127.0.0.1:3000", kind: List { item: Origin, min_items: 0 },
        doc: "Browser origins allowed for unsafe methods and CORS, matched exactly (scheme, host, port). No wildcards." },
    Setting { section: "security", key: "trusted_proxies", default: "127.0.0.1, ::1", kind: List { item: IpOrCidr, min_items: 0 },
        doc: "Peers whose X-Forwarded-For is believed: addresses or CIDRs. Never every address (`0.0.0.0/0`, `::/0`): any client could then forge its address." },
    Setting { section: "security", key: "csrf_tokens", default: "false", kind: Bool,
        doc: "Require `X-CSRF-Token` (from `GET /api/csrf-token`) on unsafe browser requests." },
    Setting { section: "security", key: "csrf_token_ttl_s", default: "3600", kind: Seconds { min: 60, max: DAY_S },
        doc: "Lifetime of a CSRF token." },
    Setting { section: "security", key: "hsts", default: "false", kind: Bool,
        doc: "Send Strict-Transport-Security (only behind TLS)." },
    Setting { section: "security", key: "secure_cookies", default: "false", kind: Bool,
        doc: "Mark the session cookie `Secure` (sent over HTTPS only). Turn on behind TLS." },

    // [auth]
    Setting { section: "auth", key: "mode", default: "api_key", kind: OneOf(&["api_key", "none"]),
        doc: "`api_key`: every API request needs `Authorization: Bearer <key>`. `none`: no authentication (only for a single user on loopback)." },
    Setting { section: "auth", key: "max_failures_per_minute", default: "20", kind: Uint { min: 1, max: 1_000_000 },
        doc: "Failed authentications (missing, malformed, unknown or revoked key, unknown session, failed sign-in) per client address (IPv6 per /64) per minute; past it the address gets 429 `rate_limited` with Retry-After before any key lookup, until its budget refills (one every 60/N s)." },
    Setting { section: "auth", key: "login_max_failures", default: "5", kind: Uint { min: 1, max: 1000 },
        doc: "Failed sign-ins per user name, and per client address, within `login_window_s`; past it, 429 `rate_limited` until the oldest failure leaves the window, before any password is checked." },
    Setting { section: "auth", key: "login_window_s", default: "900", kind: Seconds { min: 1, max: DAY_S },
        doc: "The window of `login_max_failures`." },
    Setting { section: "auth", key: "session_ttl_s", default: "43200", kind: Seconds { min: 60, max: 30 * DAY_S },
        doc: "A browser session ends this long after sign-in, however active." },
    Setting { section: "auth", key: "session_idle_s", default: "3600", kind: Seconds { min: 60, max: 30 * DAY_S },
        doc: "A browser session ends after this long without a request (measured to the minute)." },

    // [rate_limit]
    Setting { section: "rate_limit", key: "chat_per_minute", default: "10", kind: Uint { min: 1, max: 1_000_000 },
        doc: "Chat requests per minute, per API key (else client address, IPv6 per /64)." },
    Setting { section: "rate_limit", key: "other_per_minute", default: "60", kind: Uint { min: 1, max: 1_000_000 },
        doc: "Other requests per minute, per API key (else client address); health checks are exempt." },
    Setting { section: "rate_limit", key: "sweep_interval_s", default: "300", kind: Seconds { min: 1, max: DAY_S },
        doc: "How often idle buckets are dropped." },
    Setting { section: "rate_limit", key: "max_tracked_clients", default: "100000", kind: Uint { min: 16, max: 10_000_000 },
        doc: "Hard cap on tracked clients; memory stays bounded under address churn." },

    // [limits]
    Setting { section: "limits", key: "tokens_per_minute", default: "0", kind: Uint { min: 0, max: 1_000_000_000 },
        doc: "Tokens (prompt + completion) per user per minute, refilled continuously; over it, 429 `rate_limited` with the exact Retry-After. A user's own limit (`PATCH /api/admin/users/{id}` `limits`) replaces it. 0: no limit." },
    Setting { section: "limits", key: "tokens_per_day", default: "0", kind: Uint { min: 0, max: 1_000_000_000_000 },
        doc: "Tokens per user per UTC day; once spent, 429 `budget_exceeded` until midnight UTC. 0: no limit." },
    Setting { section: "limits", key: "tokens_per_month", default: "0", kind: Uint { min: 0, max: 1_000_000_000_000 },
        doc: "Tokens per user per calendar month (UTC); once spent, 429 `budget_exceeded` until the month's end. 0: no limit." },
    Setting { section: "limits", key: "max_streams", default: "0", kind: Uint { min: 0, max: 100_000 },
        doc: "Concurrent streams per user (over it: 429 `rate_limited`); `server.max_streams_per_client` still holds per key and address. 0: no limit." },
    Setting { section: "limits", key: "default_max_tokens", default: "1024", kind: Uint { min: 1, max: 10_000_000 },
        doc: "The answer's tokens a call is admitted for when it names no `max_tokens` (the estimate is settled with the real usage afterwards)." },
    Setting { section: "limits", key: "usage_flush_interval_ms", default: "1000", kind: Millis { min: 10, max: 60_000 },
        doc: "Usage rows are written in one transaction at least this often (a crash loses at most this much accounting; admission is decided in memory)." },
    Setting { section: "limits", key: "usage_queue_rows", default: "50000", kind: Uint { min: 100, max: 10_000_000 },
        doc: "Usage rows held in memory while the database cannot take them; past it the oldest are dropped and counted (`portcullis_usage_rows_dropped_total`)." },

    // [database]
    Setting { section: "database", key: "path", default: "portcullis.db", kind: Path,
        doc: "SQLite file, relative to `data_dir` (or absolute)." },
    Setting { section: "database", key: "pool_size", default: "5", kind: Uint { min: 1, max: 256 },
        doc: "Connections for reads, opened at start (writes have one connection of their own)." },
    Setting { section: "database", key: "checkout_timeout_ms", default: "2000", kind: Millis { min: 1, max: 600_000 },
        doc: "Waiting longer than this for a connection, or for the writer's turn, answers 503 `server_busy`." },
    Setting { section: "database", key: "busy_timeout_ms", default: "5000", kind: Millis { min: 0, max: 600_000 },
        doc: "SQLite waits this long for a lock held by another process (the CLI) before failing." },
    Setting { section: "database", key: "ready_timeout_s", default: "5", kind: Seconds { min: 1, max: 600 },
        doc: "`/health/ready` interrupts its database check after this." },
    Setting { section: "database", key: "max_connection_age_s", default: "3600", kind: Seconds { min: 1, max: 30 * DAY_S },
        doc: "Connections older than this are closed and reopened." },
    Setting { section: "database", key: "idle_check_after_s", default: "30", kind: Seconds { min: 0, max: DAY_S },
        doc: "A connection idle this long is checked (`SELECT 1`) before reuse." },
    Setting { section: "database", key: "synchronous", default: "full", kind: OneOf(&["full", "normal"]),
        doc: "`full`: every acknowledged write survives a power loss (one fsync per write). `normal`: survives a process crash, may lose the last writes on power loss; much higher write throughput on slow disks." },
    Setting { section: "database", key: "url", default: "", kind: Text { min_chars: 0, max_chars: 4096 },
        doc: "Empty: the SQLite file at `path`. `postgres://USER@HOST:PORT/DB?sslmode=require`: PostgreSQL, the whole store, shared by every instance that names it (limits, budgets, revocations and sessions then hold across them). `sslmode` is `disable`, `prefer` (default), `require`, `verify-ca` or `verify-full`. Keep a password out of this file: set `PORTCULLIS_DATABASE_URL` instead." },
    Setting { section: "database", key: "statement_timeout_ms", default: "5000", kind: Millis { min: 1, max: 600_000 },
        doc: "PostgreSQL: a statement running longer is cancelled by the server and the request answered 503 `server_busy` (pool checkouts wait `checkout_timeout_ms`)." },
    Setting { section: "database", key: "limits_fail_open", default: "false", kind: Bool,
        doc: "PostgreSQL: when the database cannot be reached, `false` refuses requests that limits or budgets must check (503 `server_busy`); `true` admits them unchecked. Never a 401 for a valid key either way." },

    // [upstream]
    Setting { section: "upstream", key: "base_url", default: "http://127.0.0.1:11434/v1", kind: HttpUrl,
        doc: "OpenAI-compatible base URL (Ollama, llama.cpp, vLLM or OpenAI)." },
    Setting { section: "upstream", key: "model", default: "gpt-oss:20b", kind: Text { min_chars: 1, max_chars: 200 },
        doc: "Model used when a request names none." },
    Setting { section: "upstream", key: "models", default: "", kind: List { item: ModelPattern, min_items: 0 },
        doc: "Models this upstream serves: names, or `prefix*` patterns. In `[upstream]`, empty means every model that no `[upstream.NAME]` section claims; each `[upstream.NAME]` must name some." },
    Setting { section: "upstream", key: "weight", default: "1", kind: Uint { min: 1, max: 1000 },
        doc: "Share of the load among upstreams serving the same model: a call goes to the one with the fewest calls in flight per unit of weight." },
    Setting { section: "upstream", key: "max_attempts", default: "2", kind: Uint { min: 1, max: 10 },
        doc: "In `[upstream]` only: upstreams one call may try. A refused connection, a 5xx, a 429 or a timeout moves it to the next upstream serving its model, but only before the client received any byte." },
    Setting { section: "upstream", key: "eject_after_failures", default: "5", kind: Uint { min: 0, max: 1000 },
        doc: "In `[upstream]` only: an upstream that failed this many calls in a row is skipped for `eject_for_s` (0: never)." },
    Setting { section: "upstream", key: "eject_for_s", default: "30", kind: Seconds { min: 1, max: 3600 },
        doc: "In `[upstream]` only: how long an ejected upstream is skipped; then one call probes it." },
    Setting { section: "upstream", key: "api_key_env", default: "PORTCULLIS_UPSTREAM_KEY", kind: EnvVarName,
        doc: "Name of the environment variable holding the upstream API key (optional); the key itself never lives in this file." },
    Setting { section: "upstream", key: "connect_timeout_s", default: "5", kind: Seconds { min: 1, max: 600 },
        doc: "Connecting to the upstream." },
    Setting { section: "upstream", key: "timeout_s", default: "30", kind: Seconds { min: 1, max: 3600 },
        doc: "Until the first byte, and for a whole non-streaming answer." },
    Setting { section: "upstream", key: "stream_idle_timeout_s", default: "60", kind: Seconds { min: 1, max: 3600 },
        doc: "Longest silence between streamed chunks." },
    Setting { section: "upstream", key: "ping_interval_s", default: "15", kind: Seconds { min: 1, max: 600 },
        doc: "While the upstream is silent, a comment line (`: ping`) is sent this often on SSE streams." },
    Setting { section: "upstream", key: "max_stream_s", default: "600", kind: Seconds { min: 1, max: DAY_S },
        doc: "A stream's whole lifetime, however often the upstream sends comments or chunks; then an `upstream_timeout` error event ends it, the upstream request is aborted and the answer stored as `partial`." },
    Setting { section: "upstream", key: "max_response_bytes", default: "8388608", kind: Bytes { min: 1024, max: 4 * GIB },
        doc: "Largest non-streaming upstream answer read." },
    Setting { section: "upstream", key: "history_max_messages", default: "50", kind: Uint { min: 1, max: 10_000 },
        doc: "History sent upstream: at most this many messages." },
    Setting { section: "upstream", key: "history_max_chars", default: "32000", kind: Uint { min: 100, max: 10_000_000 },
        doc: "History sent upstream: at most this many characters (an outer cap; `context_tokens` is what normally decides)." },
    Setting { section: "upstream", key: "context_tokens", default: "8192", kind: Uint { min: 256, max: 10_000_000 },
        doc: "The model's context window, in tokens: the history sent upstream is trimmed, oldest turns first (the system prompt and the new turn kept), to fit it minus the answer's `max_tokens` (else a quarter of it, at most 4096) and a tenth for the estimate's error; a turn that cannot fit is refused with 400." },
    Setting { section: "upstream", key: "max_idle_connections", default: "64", kind: Uint { min: 0, max: 1024 },
        doc: "Idle keep-alive connections kept to the upstream (match the concurrency you expect, or busy moments open and close connections per request)." },

    // [logging]
    Setting { section: "logging", key: "level", default: "info", kind: OneOf(&["off", "error", "warn", "info", "debug", "trace"]),
        doc: "Least severe level written." },
    Setting { section: "logging", key: "file", default: "", kind: OptionalPath,
        doc: "Log file, one JSON object per line; empty means standard error." },
    Setting { section: "logging", key: "flush_interval_ms", default: "100", kind: Millis { min: 0, max: 10_000 },
        doc: "Info lines (the access log) are buffered and written at least this often, saving a system call per request; warnings and errors are written at once. 0 writes every line immediately (a SIGKILL then loses no line)." },
];

/// The opening comment of the rendered `config.ini`.
const INI_HEADER: &str = "\
portcullis configuration. Every setting is listed with its secure default \
and the values it accepts. Any setting can be overridden from the \
environment as PORTCULLIS_<SECTION>_<KEY>, e.g. \
PORTCULLIS_SERVER_BIND=127.0.0.1:0. Secrets never live here: the CSRF secret \
comes from PORTCULLIS_CSRF_SECRET or is generated into <data_dir>/csrf_secret \
(mode 0600); the upstream key comes from the environment variable named by \
[upstream] api_key_env. Unknown keys and bad values stop start-up with file, \
line and key. This file is generated from the settings table in \
src/config/settings.rs.";

/// Width of the comment lines in the rendered `config.ini`.
const INI_WIDTH: usize = 78;

/// The sections, in table order.
pub fn sections() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for s in SETTINGS {
        if !out.contains(&s.section) {
            out.push(s.section);
        }
    }
    out
}

/// The row of (section, key), if it is a setting.
pub fn find(section: &str, key: &str) -> Option<&'static Setting> {
    SETTINGS
        .iter()
        .find(|s| s.section == section && s.key == key)
}

impl Setting {
    /// The name of the `Config` field this setting fills: the key, without
    /// the unit suffix of a duration (`read_timeout_s` fills `read_timeout`).
    pub fn field(&self) -> &'static str {
        let suffix = match self.kind {
            Seconds { .. } => "_s",
            Millis { .. } => "_ms",
            _ => "",
        };
        self.key.strip_suffix(suffix).unwrap_or(self.key)
    }
}

impl Kind {
    /// Checks a value (already trimmed) and returns it in the shape its
    /// `Config` field decodes; the error says what the value must be.
    pub fn check(&self, v: &str) -> Result<Value, String> {
        match *self {
            Uint { min, max } => uint(v, min, max, "").map(Value::from),
            Bytes { min, max } => uint(v, min, max, " of bytes").map(Value::from),
            Seconds { min, max } => {
                uint(v, min, max, " of seconds").map(|n| duration(Duration::from_secs(n)))
            }
            Millis { min, max } => {
                uint(v, min, max, " of milliseconds").map(|n| duration(Duration::from_millis(n)))
            }
            Bool => match v.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "1" => Ok(Value::Bool(true)),
                "false" | "no" | "off" | "0" => Ok(Value::Bool(false)),
                _ => Err("must be true or false".into()),
            },
            OneOf(words) => words
                .iter()
                .find(|w| w.eq_ignore_ascii_case(v))
                .map(|w| Value::from(*w))
                .ok_or_else(|| format!("must be {}", either(words, false))),
            Text {
                min_chars,
                max_chars,
            } => {
                let n = v.chars().count();
                if n < min_chars || n > max_chars {
                    return Err(format!("must be {min_chars} to {max_chars} characters"));
                }
                Ok(Value::from(v))
            }
            Path if v.is_empty() => Err("must not be empty".into()),
            Path => Ok(Value::from(v)),
            OptionalPath if v.is_empty() => Ok(Value::Null),
            OptionalPath => Ok(Value::from(v)),
            SocketAddr => match v.parse::<std::net::SocketAddr>() {
                Ok(_) => Ok(Value::from(v)),
                Err(_) => Err("must be IP:PORT, e.g. 127.0.0.1:8000 or [::1]:8000".into()),
            },
            HttpUrl if v.starts_with("http://") || v.starts_with("https://") => {
                Ok(Value::from(v.trim_end_matches('/')))
            }
            HttpUrl => Err("must start with http:// or https://".into()),
            EnvVarName if v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Ok(Value::from(v))
            }
            EnvVarName => Err("must be an environment variable name".into()),
            List { item, min_items } => {
                let items = crate::config::split_list(v);
                if items.len() < min_items {
                    return Err(format!("must name at least {}", item.counted(min_items)));
                }
                item.check(items).map(Value::from)
            }
        }
    }

    /// What the values may be, for the README and `config.ini`.
    pub fn describe(&self) -> String {
        match *self {
            Uint { min, max } => format!("{min} to {max}"),
            Bytes { min, max } => format!("{} to {}", binary_size(min), binary_size(max)),
            Seconds { min, max } => format!("{min} to {max} s"),
            Millis { min, max } => format!("{min} to {max} ms"),
            Bool => "`true` or `false`".into(),
            OneOf(words) => either(words, true),
            Text {
                min_chars,
                max_chars,
            } => format!("{min_chars} to {max_chars} characters"),
            Path => "a path".into(),
            OptionalPath => "a path, or empty".into(),
            SocketAddr => "IP:PORT".into(),
            HttpUrl => "an `http://` or `https://` URL".into(),
            EnvVarName => "a variable name (letters, digits, `_`), or empty".into(),
            List { item, min_items } => {
                let list = format!("a comma-separated list of {}", item.noun());
                match min_items {
                    0 => list,
                    n => format!("{list}, at least {}", item.counted(n)),
                }
            }
        }
    }
}

impl Item {
    /// `one host name`, `2 host names`.
    fn counted(&self, n: usize) -> String {
        let one = match self {
            Host => "host name",
            Origin => "origin",
            IpOrCidr => "IP address or CIDR",
            ModelPattern => "model name or pattern",
        };
        match n {
            1 => format!("one {one}"),
            n => format!("{n} {}", self.noun()),
        }
    }

    fn noun(&self) -> &'static str {
        match self {
            Host => "host names",
            Origin => "origins (`scheme://host[:port]`)",
            IpOrCidr => "IP addresses or CIDRs",
            ModelPattern => "model names or `prefix*` patterns",
        }
    }

    /// Checks every item; hosts come back in lower case.
    fn check(&self, items: Vec<String>) -> Result<Vec<String>, String> {
        match self {
            Host => Ok(items.iter().map(|h| h.to_ascii_lowercase()).collect()),
            Origin => {
                for o in &items {
                    if o.contains('*') || o == "null" {
                        return Err(
                            "wildcards and `null` are refused: list each origin exactly".into()
                        );
                    }
                    if crate::net::parse_origin(o).is_none() {
                        return Err(format!(
                            "{o:?} is not an origin (scheme://host[:port], no path)"
                        ));
                    }
                }
                Ok(items)
            }
            IpOrCidr => match TrustedProxies::parse(&items) {
                Ok(_) => Ok(items),
                Err(bad) => Err(format!("{bad:?} is not an IP address or CIDR")),
            },
            ModelPattern => {
                for m in &items {
                    let body = m.strip_suffix('*').unwrap_or(m);
                    if m.chars().count() > 200
                        || body.contains('*')
                        || m.chars().any(|c| c.is_whitespace() || c.is_control())
                    {
                        return Err(format!(
                            "{m:?} is not a model name or a `prefix*` pattern (no spaces, `*` only at the end)"
                        ));
                    }
                }
                Ok(items)
            }
        }
    }
}

fn uint(v: &str, min: u64, max: u64, unit: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(format!("must be a whole number{unit} from {min} to {max}")),
    }
}

/// `n` in the largest binary unit that divides it: `16 GiB`, `1 KiB`, `100`.
fn binary_size(n: u64) -> String {
    for (unit, size) in [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if n >= size && n % size == 0 {
            return format!("{} {unit}", n / size);
        }
    }
    n.to_string()
}

/// A `Duration` in serde's own shape, which a `Duration` field decodes.
fn duration(d: Duration) -> Value {
    json!({ "secs": d.as_secs(), "nanos": d.subsec_nanos() })
}

/// `a`, `a or b`, `a, b or c`; in backticks when `code`.
fn either(words: &[&str], code: bool) -> String {
    let quoted: Vec<String> = words
        .iter()
        .map(|w| {
            if code {
                format!("`{w}`")
            } else {
                w.to_string()
            }
        })
        .collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {}", rest.join(", "), last),
        None => String::new(),
    }
}

/// The committed `config.ini`: every section and key with its default, each
/// preceded by its doc and its allowed values as comments.
pub fn render_ini() -> String {
    let mut out = comment(INI_HEADER);
    for section in sections() {
        out.push_str(&format!("\n[{section}]\n"));
        for s in SETTINGS.iter().filter(|s| s.section == section) {
            out.push_str(&comment(&s.doc.replace('`', "")));
            let allowed = format!("Allowed: {}.", s.kind.describe());
            out.push_str(&comment(&allowed.replace('`', "")));
            if s.default.is_empty() {
                out.push_str(&format!("{} =\n", s.key));
            } else {
                out.push_str(&format!("{} = {}\n", s.key, s.default));
            }
        }
    }
    out
}

/// `text` as `# ` comment lines of at most `INI_WIDTH` characters.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > INI_WIDTH {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// The README's settings table (Markdown), one row per setting.
pub fn render_markdown() -> String {
    let mut out =
        String::from("| section | key | default | allowed | meaning |\n|---|---|---|---|---|\n");
    for s in SETTINGS {
        let default = if s.default.is_empty() {
            "(empty)".to_string()
        } else {
            format!("`{}`", s.default)
        };
        out.push_str(&format!(
            "| {} | `{}` | {} | {} | {} |\n",
            s.section,
            s.key,
            default,
            s.kind.describe().replace('|', "\\|"),
            s.doc.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const REGENERATE: &str = "cargo test --lib regenerate_settings_docs -- --ignored";

    /// The markers around the generated table in README.md.
    const README_BEGIN: &str = "<!-- settings:begin -->";
    const README_END: &str = "<!-- settings:end -->";

    /// `readme` with the text between the markers replaced by `table`; `None`
    /// when the markers are missing.
    fn splice_readme(readme: &str, table: &str) -> Option<String> {
        let start = readme.find(README_BEGIN)? + README_BEGIN.len();
        let end = start + readme[start..].find(README_END)?;
        Some(format!("{}\n{}{}", &readme[..start], table, &readme[end..]))
    }

    fn repo_file(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(name)
    }

    #[test]
    fn committed_config_ini_is_the_rendered_table() {
        let committed = std::fs::read_to_string(repo_file("config.ini")).unwrap();
        assert!(
            committed == render_ini(),
            "config.ini differs from the settings table (src/config/settings.rs); \
             edit the table, then run `{REGENERATE}`"
        );
    }

    #[test]
    fn readme_settings_table_is_the_rendered_table() {
        let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
        let spliced = splice_readme(&readme, &render_markdown()).unwrap_or_else(|| {
            panic!("README.md lacks the markers {README_BEGIN} ... {README_END}")
        });
        assert!(
            readme == spliced,
            "README.md's settings table differs from the settings table \
             (src/config/settings.rs); edit the table, then run `{REGENERATE}`"
        );
    }

    /// Rewrites `config.ini` and the README table from the settings table.
    #[test]
    #[ignore = "writes config.ini and README.md; run on purpose"]
    fn regenerate_settings_docs() {
        std::fs::write(repo_file("config.ini"), render_ini()).unwrap();
        let readme = std::fs::read_to_string(repo_file("README.md")).unwrap();
        let spliced = splice_readme(&readme, &render_markdown()).expect("README markers");
        std::fs::write(repo_file("README.md"), spliced).unwrap();
    }

    #[test]
    fn every_default_is_allowed_by_its_kind() {
        for s in SETTINGS {
            if let Err(e) = s.kind.check(s.default) {
                panic!("[{}] {} default {:?}: {}", s.section, s.key, s.default, e);
            }
        }
    }

    #[test]
    fn keys_are_unique_and_durations_name_their_unit() {
        for (i, s) in SETTINGS.iter().enumerate() {
            assert!(
                !SETTINGS[..i]
                    .iter()
                    .any(|t| t.section == s.section && t.key == s.key),
                "[{}] {} is listed twice",
                s.section,
                s.key
            );
            if matches!(s.kind, Seconds { .. } | Millis { .. }) {
                assert_ne!(s.field(), s.key, "{} must end in its unit", s.key);
            }
            assert_eq!(
                matches!(s.kind, Bytes { .. }),
                s.key.ends_with("_bytes"),
                "{}: a size in bytes is Kind::Bytes and its key ends in _bytes",
                s.key
            );
            assert!(
                s.doc.split('`').step_by(2).all(|t| !t.contains('<')),
                "{}: put <...> in backticks, or Markdown hides it",
                s.key
            );
        }
    }

    #[test]
    fn sections_are_contiguous() {
        let mut seen: Vec<&str> = Vec::new();
        for s in SETTINGS {
            if seen.last() != Some(&s.section) {
                assert!(!seen.contains(&s.section), "[{}] is split", s.section);
                seen.push(s.section);
            }
        }
    }

    #[test]
    fn values_are_checked_against_their_kind() {
        let cases: &[(Kind, &str, Result<Value, &str>)] = &[
            (Uint { min: 1, max: 8 }, "8", Ok(json!(8))),
            (
                Uint { min: 1, max: 8 },
                "9",
                Err("whole number from 1 to 8"),
            ),
            (
                Uint { min: 1, max: 8 },
                "0",
                Err("whole number from 1 to 8"),
            ),
            (Uint { min: 1, max: 8 }, "-1", Err("whole number")),
            (
                Bytes {
                    min: 1024,
                    max: 2048,
                },
                "1023",
                Err("whole number of bytes from 1024 to 2048"),
            ),
            (
                Seconds { min: 0, max: 5 },
                "2",
                Ok(json!({"secs": 2, "nanos": 0})),
            ),
            (
                Millis { min: 0, max: 5000 },
                "1500",
                Ok(json!({"secs": 1, "nanos": 500_000_000})),
            ),
            (
                Millis { min: 0, max: 5 },
                "soon",
                Err("milliseconds from 0 to 5"),
            ),
            (Bool, "Yes", Ok(json!(true))),
            (Bool, "0", Ok(json!(false))),
            (Bool, "maybe", Err("true or false")),
            (OneOf(&["full", "normal"]), "FULL", Ok(json!("full"))),
            (OneOf(&["a", "b", "c"]), "d", Err("must be a, b or c")),
            (
                Text {
                    min_chars: 1,
                    max_chars: 3,
                },
                "",
                Err("1 to 3 characters"),
            ),
            (
                Text {
                    min_chars: 1,
                    max_chars: 3,
                },
                "ééé",
                Ok(json!("ééé")),
            ),
            (Path, "", Err("must not be empty")),
            (OptionalPath, "", Ok(Value::Null)),
            (SocketAddr, "[::1]:0", Ok(json!("[::1]:0"))),
            (SocketAddr, "localhost:80", Err("IP:PORT")),
            (HttpUrl, "https://h/v1/", Ok(json!("https://h/v1"))),
            (HttpUrl, "ftp://h", Err("http://")),
            (EnvVarName, "", Ok(json!(""))),
            (EnvVarName, "A-B", Err("environment variable name")),
            (
                List {
                    item: Host,
                    min_items: 1,
                },
                "Example.COM, ,",
                Ok(json!(["example.com"])),
            ),
            (
                List {
                    item: Host,
                    min_items: 1,
                },
                " , ",
                Err("at least one host name"),
            ),
            (
                List {
                    item: Origin,
                    min_items: 0,
                },
                "",
                Ok(json!([])),
            ),
            (
                List {
                    item: Origin,
                    min_items: 0,
                },
                "https://*.example.com",
                Err("wildcards"),
            ),
            (
                List {
                    item: Origin,
                    min_items: 0,
                },
                "null",
                Err("wildcards"),
            ),
            (
                List {
                    item: Origin,
                    min_items: 0,
                },
                "https://a/path",
                Err("not an origin"),
            ),
            (
                List {
                    item: IpOrCidr,
                    min_items: 0,
                },
                "10.0.0.0/8, ::1",
                Ok(json!(["10.0.0.0/8", "::1"])),
            ),
            (
                List {
                    item: IpOrCidr,
                    min_items: 0,
                },
                "10.0.0.0/33",
                Err("not an IP address or CIDR"),
            ),
        ];
        for (kind, input, want) in cases {
            match (kind.check(input), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{kind:?} {input:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{kind:?} {input:?}: {got}"),
                (got, want) => panic!("{kind:?} {input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn rendered_ini_names_bounds_and_wraps_comments() {
        let ini = render_ini();
        assert!(
            ini.contains("\n# Requests served at once (filter chain and handler), each on its connection's\n"),
            "{ini}"
        );
        assert!(ini.contains("\nfile =\n"));
        assert!(ini
            .lines()
            .all(|l| !l.starts_with('#') || l.len() <= INI_WIDTH));
        assert!(!ini.contains('`'));
    }

    #[test]
    fn sizes_are_described_in_binary_units() {
        assert_eq!(Bytes { min: 0, max: MIB }.describe(), "0 to 1 MiB");
        assert_eq!(
            Bytes {
                min: 1024,
                max: 4 * GIB
            }
            .describe(),
            "1 KiB to 4 GiB"
        );
        assert_eq!(
            Bytes {
                min: 1000,
                max: 1536
            }
            .describe(),
            "1000 to 1536"
        );
    }

    #[test]
    fn readme_splice_replaces_only_between_the_markers() {
        let doc = format!("intro\n{README_BEGIN}\nold\n{README_END}\nrest\n");
        assert_eq!(
            splice_readme(&doc, "new\n").unwrap(),
            format!("intro\n{README_BEGIN}\nnew\n{README_END}\nrest\n")
        );
        assert!(splice_readme("no markers", "x").is_none());
    }
}
