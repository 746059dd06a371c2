//! Settings: the INI file, `PORTCULLIS_<SECTION>_<KEY>` environment
//! overrides, validation with file/line/key in every message, and the
//! production checklist of `check-config --production`.
//!
//! Every setting has a safe default here that equals the committed
//! `config.ini`; a test keeps the two in step. Secrets never come from the
//! INI file: see `secret.rs`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::filters::client_ip::TrustedProxies;

/// Where a setting's value came from, for error messages.
#[derive(Clone, Debug)]
enum Origin {
    Default,
    File { path: PathBuf, line: usize },
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => write!(f, "built-in default"),
            Origin::File { path, line } => write!(f, "{}:{}", path.display(), line),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// A start-up configuration error; the message names where and which key.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub bind: String,
    pub data_dir: PathBuf,
    pub workers: usize,
    pub queue_capacity: usize,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_concurrent_streams: usize,
    /// Concurrent streams of one API key, or of one client address when
    /// unauthenticated.
    pub max_streams_per_client: usize,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
    pub max_request_line_bytes: usize,
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub head_timeout: Duration,
    pub prebuffer_body_bytes: usize,
    pub debug: bool,
    pub ui: bool,
}

#[derive(Clone, Debug)]
pub struct SecurityConfig {
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub trusted_proxies: TrustedProxies,
    pub csrf_tokens: bool,
    pub csrf_token_ttl: Duration,
    pub hsts: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    ApiKey,
    None,
}

#[derive(Clone, Debug)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Failed authentications per client address per minute before the
    /// address is refused (429) ahead of any key lookup.
    pub max_failures_per_minute: u32,
}

#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    pub chat_per_minute: u32,
    pub other_per_minute: u32,
    pub sweep_interval: Duration,
    pub max_tracked_clients: usize,
}

#[derive(Clone, Debug)]
pub struct DatabaseConfig {
    pub path: PathBuf,
    pub pool_size: usize,
    pub checkout_timeout: Duration,
    pub busy_timeout: Duration,
    pub ready_timeout: Duration,
    pub max_connection_age: Duration,
    pub idle_check_after: Duration,
    /// `synchronous = full` (default) or `normal`.
    pub synchronous_full: bool,
}

#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub base_url: String,
    pub model: String,
    pub api_key_env: String,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub ping_interval: Duration,
    /// A stream's whole lifetime, however lively the upstream keeps it.
    pub max_stream: Duration,
    pub max_response_bytes: u64,
    pub history_max_messages: usize,
    pub history_max_chars: usize,
    pub max_idle_connections: usize,
}

#[derive(Clone, Debug)]
pub struct LoggingConfig {
    pub level: log::LevelFilter,
    pub file: Option<PathBuf>,
    pub flush_interval: Duration,
}

/// The whole validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub security: SecurityConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub database: DatabaseConfig,
    pub upstream: UpstreamConfig,
    pub logging: LoggingConfig,
    /// The file the settings were read from, if any.
    pub source: Option<PathBuf>,
}

/// Every known setting and its default, in `config.ini` order. The default
/// `config.ini` must hold exactly these values (tested).
pub const DEFAULTS: &[(&str, &str, &str)] = &[
    ("server", "bind", "127.0.0.1:8000"),
    ("server", "data_dir", "data"),
    ("server", "workers", "8"),
    ("server", "queue_capacity", "128"),
    ("server", "max_connections", "1024"),
    ("server", "max_connections_per_ip", "128"),
    ("server", "max_concurrent_streams", "64"),
    ("server", "max_streams_per_client", "8"),
    ("server", "read_timeout_s", "10"),
    ("server", "write_timeout_s", "10"),
    ("server", "shutdown_grace_s", "10"),
    ("server", "max_request_line_bytes", "16384"),
    ("server", "max_head_bytes", "65536"),
    ("server", "max_headers", "100"),
    ("server", "head_timeout_s", "10"),
    ("server", "prebuffer_body_bytes", "16384"),
    ("server", "debug", "false"),
    ("server", "ui", "true"),
    ("security", "max_body_bytes", "10485760"),
    ("security", "body_timeout_s", "30"),
    ("security", "allowed_hosts", "localhost, 127.0.0.1, ::1"),
    (
        "security",
        "allowed_origins",
        "http://localhost:3000, http://127.0.0.1:3000",
    ),
    ("security", "trusted_proxies", "127.0.0.1, ::1"),
    ("security", "csrf_tokens", "false"),
    ("security", "csrf_token_ttl_s", "3600"),
    ("security", "hsts", "false"),
    ("auth", "mode", "api_key"),
    ("auth", "max_failures_per_minute", "20"),
    ("rate_limit", "chat_per_minute", "10"),
    ("rate_limit", "other_per_minute", "60"),
    ("rate_limit", "sweep_interval_s", "300"),
    ("rate_limit", "max_tracked_clients", "100000"),
    ("database", "path", "portcullis.db"),
    ("database", "pool_size", "5"),
    ("database", "checkout_timeout_ms", "2000"),
    ("database", "busy_timeout_ms", "5000"),
    ("database", "ready_timeout_s", "5"),
    ("database", "max_connection_age_s", "3600"),
    ("database", "idle_check_after_s", "30"),
    ("database", "synchronous", "full"),
    ("upstream", "base_url", "http://127.0.0.1:11434/v1"),
    ("upstream", "model", "gpt-oss:20b"),
    ("upstream", "api_key_env", "PORTCULLIS_UPSTREAM_KEY"),
    ("upstream", "connect_timeout_s", "5"),
    ("upstream", "timeout_s", "30"),
    ("upstream", "stream_idle_timeout_s", "60"),
    ("upstream", "ping_interval_s", "15"),
    ("upstream", "max_stream_s", "600"),
    ("upstream", "max_response_bytes", "8388608"),
    ("upstream", "history_max_messages", "50"),
    ("upstream", "history_max_chars", "32000"),
    ("upstream", "max_idle_connections", "64"),
    ("logging", "level", "info"),
    ("logging", "file", ""),
    ("logging", "flush_interval_ms", "100"),
];

const SECTIONS: &[&str] = &[
    "server",
    "security",
    "auth",
    "rate_limit",
    "database",
    "upstream",
    "logging",
];

/// Raw settings: (section, key) -> (value, origin).
type Raw = HashMap<(String, String), (String, Origin)>;

fn is_known(section: &str, key: &str) -> bool {
    DEFAULTS.iter().any(|(s, k, _)| *s == section && *k == key)
}

/// Parses INI text. Unknown sections and keys are errors naming file and line.
pub fn parse_ini(
    text: &str,
    path: &Path,
) -> Result<Vec<(String, String, String, usize)>, ConfigError> {
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    for (i, raw_line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw_line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let at = || format!("{}:{}", path.display(), line_no);
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.strip_suffix(']').ok_or_else(|| {
                ConfigError(format!("{}: malformed section header {:?}", at(), line))
            })?;
            let name = name.trim();
            if !SECTIONS.contains(&name) {
                return Err(ConfigError(format!(
                    "{}: unknown section [{}] (known: {})",
                    at(),
                    name,
                    SECTIONS.join(", ")
                )));
            }
            section = Some(name.to_string());
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "{}: expected `key = value`, found {:?}",
                at(),
                line
            ))
        })?;
        let key = key.trim();
        let value = value.trim();
        let Some(section) = section.as_deref() else {
            return Err(ConfigError(format!(
                "{}: key `{}` appears before any [section]",
                at(),
                key
            )));
        };
        if !is_known(section, key) {
            return Err(ConfigError(format!(
                "{}: unknown key `{}` in [{}]",
                at(),
                key,
                section
            )));
        }
        if out
            .iter()
            .any(|(s, k, _, _): &(String, String, String, usize)| s == section && k == key)
        {
            return Err(ConfigError(format!(
                "{}: key `{}` in [{}] is set twice",
                at(),
                key,
                section
            )));
        }
        out.push((
            section.to_string(),
            key.to_string(),
            value.to_string(),
            line_no,
        ));
    }
    Ok(out)
}

/// The environment variable that overrides (section, key).
pub fn env_name(section: &str, key: &str) -> String {
    format!("PORTCULLIS_{}_{}", section, key).to_ascii_uppercase()
}

impl Config {
    /// Loads settings: defaults, then the file (`path`, else `./config.ini`
    /// when it exists), then `PORTCULLIS_*` environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with_env(path, &env)
    }

    /// As `load`, with an explicit environment (tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut raw: Raw = DEFAULTS
            .iter()
            .map(|(s, k, v)| {
                (
                    (s.to_string(), k.to_string()),
                    (v.to_string(), Origin::Default),
                )
            })
            .collect();
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from("config.ini");
                p.exists().then_some(p)
            }
        };
        if let Some(file) = &file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {}", file.display(), e))
            })?;
            for (s, k, v, line) in parse_ini(&text, file)? {
                raw.insert(
                    (s, k),
                    (
                        v,
                        Origin::File {
                            path: file.clone(),
                            line,
                        },
                    ),
                );
            }
        }
        apply_env(&mut raw, env)?;
        let mut cfg = build(&raw)?;
        cfg.source = file;
        Ok(cfg)
    }

    /// The database file's full path.
    pub fn database_path(&self) -> PathBuf {
        if self.database.path.is_absolute() {
            self.database.path.clone()
        } else {
            self.server.data_dir.join(&self.database.path)
        }
    }

    /// The deployment checklist; an empty list means every item passes.
    pub fn production_problems(&self, csrf_secret_len: Option<usize>) -> Vec<String> {
        let mut problems = Vec::new();
        if self.server.debug {
            problems.push("[server] debug must be false in production".to_string());
        }
        if self.auth.mode == AuthMode::None {
            problems.push("[auth] mode must be api_key in production (auth is off)".to_string());
        }
        if let Some(len) = csrf_secret_len {
            if len < 32 {
                problems.push(format!(
                    "CSRF secret is {} bytes; at least 32 are required (PORTCULLIS_CSRF_SECRET)",
                    len
                ));
            }
        }
        if self
            .security
            .allowed_origins
            .iter()
            .any(|o| o.contains('*') || o == "null")
        {
            problems.push("[security] allowed_origins must not hold wildcards or null".to_string());
        }
        if self.security.trusted_proxies.is_catch_all() {
            problems.push(
                "[security] trusted_proxies must not trust every address (0.0.0.0/0 or ::/0): any client could forge X-Forwarded-For"
                    .to_string(),
            );
        }
        if let Ok(addr) = self.server.bind.parse::<SocketAddr>() {
            if addr.ip().is_unspecified() {
                problems.push(format!(
                    "[server] bind {} listens on every interface with plain HTTP; bind to loopback behind the TLS proxy (contrib/nginx.conf)",
                    self.server.bind
                ));
            }
            if addr.port() == 0 {
                problems
                    .push("[server] bind uses port 0 (a random port) in production".to_string());
            }
        }
        if self.security.allowed_hosts.is_empty() {
            problems.push("[security] allowed_hosts is empty".to_string());
        }
        problems
    }
}

fn apply_env(raw: &mut Raw, env: &[(String, String)]) -> Result<(), ConfigError> {
    // The variable that holds the upstream key is a secret, not a setting.
    let key_var = env
        .iter()
        .find(|(k, _)| k == &env_name("upstream", "api_key_env"))
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| {
            raw[&("upstream".to_string(), "api_key_env".to_string())]
                .0
                .clone()
        });
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("PORTCULLIS_") else {
            continue;
        };
        if *name == key_var {
            continue;
        }
        // Longest section name first, so RATE_LIMIT_* is not read as RATE.
        let mut sections: Vec<&str> = SECTIONS.to_vec();
        sections.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let hit = sections.iter().find_map(|s| {
            let prefix = format!("{}_", s.to_ascii_uppercase());
            rest.strip_prefix(&prefix)
                .map(|k| (*s, k.to_ascii_lowercase()))
        });
        let Some((section, key)) = hit else {
            // PORTCULLIS_CSRF_SECRET and friends are secrets, read elsewhere.
            continue;
        };
        if !is_known(section, &key) {
            return Err(ConfigError(format!(
                "environment variable {}: unknown key `{}` in [{}]",
                name, key, section
            )));
        }
        raw.insert(
            (section.to_string(), key),
            (value.trim().to_string(), Origin::Env(name.clone())),
        );
    }
    Ok(())
}

/// Reads typed values out of the raw map; every error names origin and key.
struct Reader<'a> {
    raw: &'a Raw,
}

impl Reader<'_> {
    fn get(&self, section: &str, key: &str) -> (&str, &Origin) {
        let (v, o) = &self.raw[&(section.to_string(), key.to_string())];
        (v.as_str(), o)
    }

    fn err(&self, section: &str, key: &str, what: &str) -> ConfigError {
        let (v, o) = self.get(section, key);
        ConfigError(format!("{}: [{}] {} = {:?}: {}", o, section, key, v, what))
    }

    fn string(&self, section: &str, key: &str) -> String {
        self.get(section, key).0.to_string()
    }

    fn uint(&self, section: &str, key: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
        let v = self.get(section, key).0;
        match v.parse::<u64>() {
            Ok(n) if n >= min && n <= max => Ok(n),
            _ => Err(self.err(
                section,
                key,
                &format!("must be a whole number from {} to {}", min, max),
            )),
        }
    }

    fn usize(&self, section: &str, key: &str, min: u64, max: u64) -> Result<usize, ConfigError> {
        self.uint(section, key, min, max).map(|n| n as usize)
    }

    fn secs(&self, section: &str, key: &str, min: u64, max: u64) -> Result<Duration, ConfigError> {
        self.uint(section, key, min, max).map(Duration::from_secs)
    }

    fn millis(
        &self,
        section: &str,
        key: &str,
        min: u64,
        max: u64,
    ) -> Result<Duration, ConfigError> {
        self.uint(section, key, min, max).map(Duration::from_millis)
    }

    fn boolean(&self, section: &str, key: &str) -> Result<bool, ConfigError> {
        match self.get(section, key).0.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(self.err(section, key, "must be true or false")),
        }
    }

    fn list(&self, section: &str, key: &str) -> Vec<String> {
        split_list(self.get(section, key).0)
    }
}

/// Splits a comma-separated list, dropping empty items.
pub fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn build(raw: &Raw) -> Result<Config, ConfigError> {
    let r = Reader { raw };
    const DAY_S: u64 = 86_400;

    let bind = r.string("server", "bind");
    if bind.parse::<SocketAddr>().is_err() {
        return Err(r.err(
            "server",
            "bind",
            "must be IP:PORT, e.g. 127.0.0.1:8000 or [::1]:8000",
        ));
    }
    let data_dir = r.string("server", "data_dir");
    if data_dir.is_empty() {
        return Err(r.err("server", "data_dir", "must not be empty"));
    }
    let server = ServerConfig {
        bind,
        data_dir: PathBuf::from(data_dir),
        workers: r.usize("server", "workers", 1, 1024)?,
        queue_capacity: r.usize("server", "queue_capacity", 1, 100_000)?,
        max_connections: r.usize("server", "max_connections", 1, 1_000_000)?,
        max_connections_per_ip: r.usize("server", "max_connections_per_ip", 1, 1_000_000)?,
        max_concurrent_streams: r.usize("server", "max_concurrent_streams", 1, 100_000)?,
        max_streams_per_client: r.usize("server", "max_streams_per_client", 1, 100_000)?,
        read_timeout: r.secs("server", "read_timeout_s", 1, 3600)?,
        write_timeout: r.secs("server", "write_timeout_s", 1, 3600)?,
        shutdown_grace: r.secs("server", "shutdown_grace_s", 0, 3600)?,
        max_request_line_bytes: r.usize("server", "max_request_line_bytes", 256, 1 << 20)?,
        max_head_bytes: r.usize("server", "max_head_bytes", 1024, 1 << 22)?,
        max_headers: r.usize("server", "max_headers", 8, 10_000)?,
        head_timeout: r.secs("server", "head_timeout_s", 1, 3600)?,
        prebuffer_body_bytes: r.usize("server", "prebuffer_body_bytes", 0, 1 << 20)?,
        debug: r.boolean("server", "debug")?,
        ui: r.boolean("server", "ui")?,
    };

    let allowed_origins = r.list("security", "allowed_origins");
    for o in &allowed_origins {
        if o.contains('*') || o == "null" {
            return Err(r.err(
                "security",
                "allowed_origins",
                "wildcards and `null` are refused: list each origin exactly",
            ));
        }
        if crate::filters::origin::parse_origin(o).is_none() {
            return Err(r.err(
                "security",
                "allowed_origins",
                &format!("{:?} is not an origin (scheme://host[:port], no path)", o),
            ));
        }
    }
    let allowed_hosts: Vec<String> = r
        .list("security", "allowed_hosts")
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    if allowed_hosts.is_empty() {
        return Err(r.err("security", "allowed_hosts", "must name at least one host"));
    }
    let trusted_proxies =
        TrustedProxies::parse(&r.list("security", "trusted_proxies")).map_err(|bad| {
            r.err(
                "security",
                "trusted_proxies",
                &format!("{:?} is not an IP address or CIDR", bad),
            )
        })?;
    let security = SecurityConfig {
        max_body_bytes: r.uint("security", "max_body_bytes", 1, 1 << 34)?,
        body_timeout: r.secs("security", "body_timeout_s", 1, 3600)?,
        allowed_hosts,
        allowed_origins,
        trusted_proxies,
        csrf_tokens: r.boolean("security", "csrf_tokens")?,
        csrf_token_ttl: r.secs("security", "csrf_token_ttl_s", 60, DAY_S)?,
        hsts: r.boolean("security", "hsts")?,
    };

    let auth = AuthConfig {
        mode: match r.get("auth", "mode").0 {
            "api_key" => AuthMode::ApiKey,
            "none" => AuthMode::None,
            _ => return Err(r.err("auth", "mode", "must be api_key or none")),
        },
        max_failures_per_minute: r.uint("auth", "max_failures_per_minute", 1, 1_000_000)? as u32,
    };

    let rate_limit = RateLimitConfig {
        chat_per_minute: r.uint("rate_limit", "chat_per_minute", 1, 1_000_000)? as u32,
        other_per_minute: r.uint("rate_limit", "other_per_minute", 1, 1_000_000)? as u32,
        sweep_interval: r.secs("rate_limit", "sweep_interval_s", 1, DAY_S)?,
        max_tracked_clients: r.usize("rate_limit", "max_tracked_clients", 16, 10_000_000)?,
    };

    let db_path = r.string("database", "path");
    if db_path.is_empty() {
        return Err(r.err("database", "path", "must not be empty"));
    }
    let database = DatabaseConfig {
        path: PathBuf::from(db_path),
        pool_size: r.usize("database", "pool_size", 1, 256)?,
        checkout_timeout: r.millis("database", "checkout_timeout_ms", 1, 600_000)?,
        busy_timeout: r.millis("database", "busy_timeout_ms", 0, 600_000)?,
        ready_timeout: r.secs("database", "ready_timeout_s", 1, 600)?,
        max_connection_age: r.secs("database", "max_connection_age_s", 1, 30 * DAY_S)?,
        idle_check_after: r.secs("database", "idle_check_after_s", 0, DAY_S)?,
        synchronous_full: match r
            .get("database", "synchronous")
            .0
            .to_ascii_lowercase()
            .as_str()
        {
            "full" => true,
            "normal" => false,
            _ => return Err(r.err("database", "synchronous", "must be full or normal")),
        },
    };

    let base_url = r.string("upstream", "base_url");
    if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
        return Err(r.err(
            "upstream",
            "base_url",
            "must start with http:// or https://",
        ));
    }
    let model = r.string("upstream", "model");
    if model.is_empty() || model.len() > 200 {
        return Err(r.err("upstream", "model", "must be 1..200 characters"));
    }
    let api_key_env = r.string("upstream", "api_key_env");
    if !api_key_env
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(r.err(
            "upstream",
            "api_key_env",
            "must be an environment variable name",
        ));
    }
    let upstream = UpstreamConfig {
        base_url: base_url.trim_end_matches('/').to_string(),
        model,
        api_key_env,
        connect_timeout: r.secs("upstream", "connect_timeout_s", 1, 600)?,
        timeout: r.secs("upstream", "timeout_s", 1, 3600)?,
        stream_idle_timeout: r.secs("upstream", "stream_idle_timeout_s", 1, 3600)?,
        ping_interval: r.secs("upstream", "ping_interval_s", 1, 600)?,
        max_stream: r.secs("upstream", "max_stream_s", 1, 86_400)?,
        max_response_bytes: r.uint("upstream", "max_response_bytes", 1024, 1 << 32)?,
        history_max_messages: r.usize("upstream", "history_max_messages", 1, 10_000)?,
        history_max_chars: r.usize("upstream", "history_max_chars", 100, 10_000_000)?,
        max_idle_connections: r.usize("upstream", "max_idle_connections", 0, 1024)?,
    };

    let level = match r.get("logging", "level").0.to_ascii_lowercase().as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        _ => {
            return Err(r.err(
                "logging",
                "level",
                "must be off, error, warn, info, debug or trace",
            ))
        }
    };
    let file = r.string("logging", "file");
    let logging = LoggingConfig {
        level,
        file: (!file.is_empty()).then(|| PathBuf::from(file)),
        flush_interval: r.millis("logging", "flush_interval_ms", 0, 10_000)?,
    };

    Ok(Config {
        server,
        security,
        auth,
        rate_limit,
        database,
        upstream,
        logging,
        source: None,
    })
}

impl Default for Config {
    fn default() -> Config {
        Config::load_with_env(None, &[]).expect("built-in defaults are valid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "portcullis-cfg-{}-{}",
            std::process::id(),
            crate::ids::random_hex(6)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.ini");
        std::fs::write(&path, text).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = Config::load_with_env(Some(&path), &env);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    #[test]
    fn committed_config_ini_equals_builtin_defaults() {
        let text = include_str!("../config.ini");
        let parsed = parse_ini(text, Path::new("config.ini")).expect("config.ini parses");
        for (s, k, v) in DEFAULTS {
            let found = parsed
                .iter()
                .find(|(ps, pk, _, _)| ps == s && pk == k)
                .unwrap_or_else(|| panic!("config.ini lacks [{}] {}", s, k));
            assert_eq!(
                &found.2, v,
                "config.ini [{}] {} differs from the default",
                s, k
            );
        }
        assert_eq!(parsed.len(), DEFAULTS.len(), "config.ini has extra keys");
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = load_text("[server]\nworkers = 4\nwokers = 5\n", &[]).unwrap_err();
        assert!(e.0.contains("c.ini:3"), "{}", e);
        assert!(e.0.contains("wokers"), "{}", e);
    }

    #[test]
    fn bad_value_names_line_key_and_rule() {
        let e = load_text("[server]\n\nworkers = many\n", &[]).unwrap_err();
        assert!(e.0.contains("c.ini:3") && e.0.contains("workers"), "{}", e);
        assert!(e.0.contains("whole number"), "{}", e);
    }

    #[test]
    fn unknown_section_and_key_outside_section_are_errors() {
        assert!(load_text("[sever]\n", &[])
            .unwrap_err()
            .0
            .contains("unknown section"));
        assert!(load_text("workers = 1\n", &[])
            .unwrap_err()
            .0
            .contains("before any"));
        assert!(load_text("[server]\nworkers = 1\nworkers = 2\n", &[])
            .unwrap_err()
            .0
            .contains("twice"));
    }

    #[test]
    fn env_overrides_file_and_bad_env_names_the_variable() {
        let c = load_text(
            "[server]\nworkers = 4\n",
            &[
                ("PORTCULLIS_SERVER_WORKERS", "3"),
                ("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "7"),
            ],
        )
        .unwrap();
        assert_eq!(c.server.workers, 3);
        assert_eq!(c.rate_limit.chat_per_minute, 7);
        let e = load_text("", &[("PORTCULLIS_SERVER_WORKERZ", "3")]).unwrap_err();
        assert!(e.0.contains("PORTCULLIS_SERVER_WORKERZ"), "{}", e);
        let e = load_text("", &[("PORTCULLIS_SERVER_WORKERS", "0")]).unwrap_err();
        assert!(
            e.0.contains("environment variable PORTCULLIS_SERVER_WORKERS"),
            "{}",
            e
        );
    }

    #[test]
    fn upstream_key_variable_is_not_read_as_a_setting() {
        let c = load_text("", &[("PORTCULLIS_UPSTREAM_KEY", "sk-secret")]).unwrap();
        assert_eq!(c.upstream.api_key_env, "PORTCULLIS_UPSTREAM_KEY");
    }

    #[test]
    fn wildcard_origin_is_refused_at_start() {
        let e = load_text("[security]\nallowed_origins = *\n", &[]).unwrap_err();
        assert!(e.0.contains("allowed_origins"), "{}", e);
    }

    #[test]
    fn production_checklist_lists_every_failure() {
        let c = load_text(
            "[server]\ndebug = true\nbind = 0.0.0.0:8000\n[auth]\nmode = none\n[security]\ntrusted_proxies = 0.0.0.0/0\n",
            &[],
        )
        .unwrap();
        let p = c.production_problems(Some(8));
        assert!(p.len() >= 5, "{:?}", p);
        let defaults = Config::default();
        assert!(
            defaults.production_problems(Some(32)).is_empty(),
            "{:?}",
            defaults.production_problems(Some(32))
        );
    }
}
