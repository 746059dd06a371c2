//! Loading settings: the INI file, `PORTCULLIS_<SECTION>_<KEY>` environment
//! overrides, validation with file:line (or variable) and key in every
//! message, the typed `Config` the rest of the code reads, and the
//! production checklist of `check-config --production`.
//!
//! What each setting is (default, bounds, doc) lives only in the settings
//! table, `config/settings.rs`; `config.ini` and the README table are
//! rendered from it. Secrets never come from the INI file: see `secret.rs`.

pub mod settings;

use std::fmt;
use std::net::SocketAddr;
use std::ops::Not;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

use crate::net::TrustedProxies;
use settings::SETTINGS;

/// The shortest CSRF secret the production checklist accepts.
const MIN_CSRF_SECRET_BYTES: usize = 32;

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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    #[serde(deserialize_with = "trusted_proxies")]
    pub trusted_proxies: TrustedProxies,
    pub csrf_tokens: bool,
    pub csrf_token_ttl: Duration,
    pub hsts: bool,
    pub secure_cookies: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    ApiKey,
    None,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Failed authentications per client address per minute before the
    /// address is refused (429) ahead of any key lookup.
    pub max_failures_per_minute: u32,
    pub login_max_failures: u32,
    pub login_window: Duration,
    pub session_ttl: Duration,
    pub session_idle: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub chat_per_minute: u32,
    pub other_per_minute: u32,
    pub sweep_interval: Duration,
    pub max_tracked_clients: usize,
}

/// `[limits]`: token limits and budgets every user has unless the admin
/// gave them their own (`usage::Limits`); 0 is no limit.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub tokens_per_minute: u64,
    pub tokens_per_day: u64,
    pub tokens_per_month: u64,
    pub max_streams: u64,
    pub default_max_tokens: u64,
    pub usage_flush_interval: Duration,
    pub usage_queue_rows: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub path: PathBuf,
    pub pool_size: usize,
    pub checkout_timeout: Duration,
    pub busy_timeout: Duration,
    pub ready_timeout: Duration,
    pub max_connection_age: Duration,
    pub idle_check_after: Duration,
    /// `synchronous = full` (default) or `normal`.
    #[serde(rename = "synchronous", deserialize_with = "is_full")]
    pub synchronous_full: bool,
    /// Empty: SQLite. Else a PostgreSQL URL (holds a password: never logged).
    pub url: String,
    pub statement_timeout: Duration,
    pub limits_fail_open: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
    /// The model's context window in tokens (history trimming, `routes::chat`).
    pub context_tokens: usize,
    pub max_idle_connections: usize,
    /// Models served: names or `prefix*` patterns (see `serves`).
    pub models: Vec<String>,
    pub weight: u64,
    pub max_attempts: usize,
    pub eject_after_failures: u32,
    pub eject_for: Duration,
}

impl UpstreamConfig {
    /// Whether `model` is one this upstream names (exactly, or by a
    /// `prefix*` pattern).
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => model.starts_with(prefix),
            None => p == model,
        })
    }
}

/// An `[upstream.NAME]` section: one more upstream, by name.
#[derive(Clone, Debug)]
pub struct NamedUpstream {
    pub name: String,
    pub cfg: UpstreamConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    #[serde(deserialize_with = "from_word")]
    pub level: log::LevelFilter,
    pub file: Option<PathBuf>,
    pub flush_interval: Duration,
}

/// The whole validated configuration, filled from the settings table by
/// name: a section per struct, a field per key (see `settings::SETTINGS`).
/// `Deserialize` is how `build` fills it, after checking every value
/// against its row; it is not a way to read settings from elsewhere.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub security: SecurityConfig,
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    pub limits: LimitsConfig,
    pub database: DatabaseConfig,
    pub upstream: UpstreamConfig,
    pub logging: LoggingConfig,
    /// The `[upstream.NAME]` sections, in file order (the default
    /// `[upstream]` serves what none of them claims).
    #[serde(skip)]
    pub named_upstreams: Vec<NamedUpstream>,
    /// The file the settings were read from, if any.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// Raw settings in `SETTINGS` order: each value as written, and where from.
type Raw = Vec<(String, Origin)>;

/// Every setting at its default.
fn defaults() -> Raw {
    SETTINGS
        .iter()
        .map(|s| (s.default.to_string(), Origin::Default))
        .collect()
}

/// The position of (section, key) in `SETTINGS`, if it is a setting.
fn index_of(section: &str, key: &str) -> Option<usize> {
    SETTINGS
        .iter()
        .position(|s| s.section == section && s.key == key)
}

/// Parses INI text. Unknown sections and keys are errors naming file and line.
pub fn parse_ini(
    text: &str,
    path: &Path,
) -> Result<Vec<(String, String, String, usize)>, ConfigError> {
    let sections = settings::sections();
    let mut out = Vec::new();
    let mut section: Option<String> = None;
    let mut named: Vec<String> = Vec::new();
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
            if let Some(upstream) = name.strip_prefix("upstream.") {
                if !valid_upstream_name(upstream) {
                    return Err(ConfigError(format!(
                        "{}: [{}]: an upstream's name is 1 to 32 of a-z, 0-9, `_` and `-` (and not `default`)",
                        at(),
                        name
                    )));
                }
                if named.contains(&name.to_string()) {
                    return Err(ConfigError(format!(
                        "{}: [{}] is defined twice",
                        at(),
                        name
                    )));
                }
                named.push(name.to_string());
                out.push((name.to_string(), String::new(), String::new(), line_no));
                section = Some(name.to_string());
                continue;
            }
            if !sections.contains(&name) {
                return Err(ConfigError(format!(
                    "{}: unknown section [{}] (known: {})",
                    at(),
                    name,
                    sections.join(", ")
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
        if section.starts_with("upstream.") {
            if !settings::PER_UPSTREAM.contains(&key) {
                let why = if settings::find("upstream", key).is_some() {
                    "holds for every upstream: set it in [upstream]"
                } else {
                    "is not an upstream setting"
                };
                return Err(ConfigError(format!(
                    "{}: key `{}` in [{}] {} (per upstream: {})",
                    at(),
                    key,
                    section,
                    why,
                    settings::PER_UPSTREAM.join(", ")
                )));
            }
        } else if settings::find(section, key).is_none() {
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

/// 1 to 32 of `a-z0-9_-`, and not `default` (the name `[upstream]` goes by).
fn valid_upstream_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name != "default"
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The `[upstream.NAME]` sections (`entries`: header rows with an empty
/// key, then their keys) as upstreams: each starts from `[upstream]`'s
/// values (as finally set, environment included) except the keys of
/// `PER_UPSTREAM_OWN`, which start at their defaults; its own keys are
/// checked against the same rows. Errors name file, line and key.
fn named_upstreams(
    raw: &Raw,
    entries: &[(String, String, String, usize)],
    file: &Path,
) -> Result<Vec<NamedUpstream>, ConfigError> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let (section, _, _, header_line) = &entries[i];
        let mut own: Vec<&(String, String, String, usize)> = Vec::new();
        i += 1;
        while i < entries.len() && entries[i].1.is_empty().not() {
            own.push(&entries[i]);
            i += 1;
        }
        let at = |line: usize| format!("{}:{}", file.display(), line);
        for required in ["base_url", "models"] {
            if !own.iter().any(|(_, k, _, _)| k == required) {
                return Err(ConfigError(format!(
                    "{}: [{}] needs `{}`",
                    at(*header_line),
                    section,
                    required
                )));
            }
        }
        let mut fields = serde_json::Map::new();
        for (s, (value, origin)) in SETTINGS.iter().zip(raw) {
            if s.section != "upstream" {
                continue;
            }
            let mine = own.iter().find(|(_, k, _, _)| k == s.key);
            let (value, origin) = match mine {
                Some((_, _, v, line)) => (v.as_str(), at(*line)),
                // No key unless the section names its variable.
                None if s.key == "api_key_env" => ("", "built-in default".to_string()),
                None if settings::PER_UPSTREAM_OWN.contains(&s.key) => {
                    (s.default, "built-in default".to_string())
                }
                None => (value.as_str(), origin.to_string()),
            };
            let checked = s.kind.check(value).map_err(|what| {
                ConfigError(format!(
                    "{}: [{}] {} = {:?}: {}",
                    origin, section, s.key, value, what
                ))
            })?;
            fields.insert(s.field().to_string(), checked);
        }
        let cfg: UpstreamConfig = serde_json::from_value(serde_json::Value::Object(fields))
            .map_err(|e| ConfigError(format!("{}: [{}]: {}", at(*header_line), section, e)))?;
        if cfg.models.is_empty() {
            return Err(ConfigError(format!(
                "{}: [{}] models is empty: name the models it serves",
                at(*header_line),
                section
            )));
        }
        out.push(NamedUpstream {
            name: section["upstream.".len()..].to_string(),
            cfg,
        });
    }
    Ok(out)
}

/// Refuses upstreams that overlap: two sections for the same server
/// (the same `base_url` and key variable), or one model name listed twice
/// in one section.
fn check_upstreams(cfg: &Config, file: Option<&Path>) -> Result<(), ConfigError> {
    let place = file.map_or("the configuration".to_string(), |f| f.display().to_string());
    let mut all: Vec<(&str, &UpstreamConfig)> = vec![("upstream", &cfg.upstream)];
    all.extend(
        cfg.named_upstreams
            .iter()
            .map(|n| (n.name.as_str(), &n.cfg)),
    );
    for (i, (a, ca)) in all.iter().enumerate() {
        for (b, cb) in &all[i + 1..] {
            if ca.base_url == cb.base_url && ca.api_key_env == cb.api_key_env {
                return Err(ConfigError(format!(
                    "{}: upstreams `{}` and `{}` are the same server ({}): list its models in one section",
                    place, a, b, ca.base_url
                )));
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for m in &ca.models {
            if !seen.insert(m) {
                return Err(ConfigError(format!(
                    "{}: [{}] models lists {:?} twice",
                    place,
                    if *a == "upstream" {
                        "upstream".to_string()
                    } else {
                        format!("upstream.{}", a)
                    },
                    m
                )));
            }
        }
    }
    Ok(())
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
        let mut raw = defaults();
        let mut named = Vec::new();
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
                if s.starts_with("upstream.") {
                    named.push((s, k, v, line));
                    continue;
                }
                let i = index_of(&s, &k).expect("parse_ini returns known keys only");
                let origin = Origin::File {
                    path: file.clone(),
                    line,
                };
                raw[i] = (v, origin);
            }
        }
        apply_env(&mut raw, env)?;
        let mut cfg = build(&raw)?;
        if let Some(file) = &file {
            cfg.named_upstreams = named_upstreams(&raw, &named, file)?;
        }
        check_upstreams(&cfg, file.as_deref())?;
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
    ///
    /// Only what a valid configuration may still get wrong for production
    /// is here: what `build` refuses (wildcard origins, an empty
    /// `allowed_hosts`, bad values) never reaches this list.
    pub fn production_problems(&self, csrf_secret_len: Option<usize>) -> Vec<String> {
        let mut problems = Vec::new();
        if self.server.debug {
            problems.push("[server] debug must be false in production".to_string());
        }
        if self.auth.mode == AuthMode::None {
            problems.push("[auth] mode must be api_key in production (auth is off)".to_string());
        }
        if let Some(len) = csrf_secret_len {
            if len < MIN_CSRF_SECRET_BYTES {
                problems.push(format!(
                    "CSRF secret is {} bytes; at least {} are required ({})",
                    len,
                    MIN_CSRF_SECRET_BYTES,
                    crate::secret::CSRF_SECRET_ENV
                ));
            }
        }
        if self.security.trusted_proxies.is_catch_all() {
            problems.push(
                "[security] trusted_proxies must not trust every address (0.0.0.0/0 or ::/0): any client could forge X-Forwarded-For"
                    .to_string(),
            );
        }
        // `build` refuses a bind that is not IP:PORT; a `Config` changed by
        // hand afterwards is the caller's business.
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
            let i = index_of("upstream", "api_key_env").expect("api_key_env is a setting");
            raw[i].0.clone()
        });
    // Longest section name first, so RATE_LIMIT_* is not read as RATE.
    let mut sections = settings::sections();
    sections.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("PORTCULLIS_") else {
            continue;
        };
        if *name == key_var {
            continue;
        }
        let hit = sections.iter().find_map(|s| {
            let prefix = format!("{}_", s.to_ascii_uppercase());
            rest.strip_prefix(&prefix)
                .map(|k| (*s, k.to_ascii_lowercase()))
        });
        let Some((section, key)) = hit else {
            // PORTCULLIS_CSRF_SECRET and friends are secrets, read elsewhere.
            continue;
        };
        let Some(i) = index_of(section, &key) else {
            return Err(ConfigError(format!(
                "environment variable {}: unknown key `{}` in [{}]",
                name, key, section
            )));
        };
        raw[i] = (value.trim().to_string(), Origin::Env(name.clone()));
    }
    Ok(())
}

/// Splits a comma-separated list, dropping empty items.
pub fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Checks every raw value against its row's kind, then fills `Config` by
/// name. Every value error names its origin (file:line or variable) and key.
fn build(raw: &Raw) -> Result<Config, ConfigError> {
    decode(checked_tree(raw)?)
}

/// `{section: {field: value}}`, each value checked and in the shape its
/// field decodes.
fn checked_tree(raw: &Raw) -> Result<serde_json::Value, ConfigError> {
    let mut tree = serde_json::Map::new();
    for (s, (value, origin)) in SETTINGS.iter().zip(raw) {
        let checked = s.kind.check(value).map_err(|what| {
            ConfigError(format!(
                "{}: [{}] {} = {:?}: {}",
                origin, s.section, s.key, value, what
            ))
        })?;
        let section = tree
            .entry(s.section)
            .or_insert_with(|| serde_json::Value::Object(Default::default()));
        section
            .as_object_mut()
            .expect("sections are objects")
            .insert(s.field().to_string(), checked);
    }
    Ok(serde_json::Value::Object(tree))
}

/// Fills the structs from a checked tree. Only a table row without its
/// field (or a field without its row, or a bound its type cannot hold)
/// fails here; the tests load the defaults and every bound, so this never
/// reaches a user.
fn decode(tree: serde_json::Value) -> Result<Config, ConfigError> {
    serde_json::from_value(tree).map_err(|e| {
        ConfigError(format!(
            "the settings table (src/config/settings.rs) and the Config structs disagree: {e}"
        ))
    })
}

/// Decodes a `FromStr` type from a checked word (`log::LevelFilter`).
fn from_word<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    String::deserialize(d)?.parse().map_err(de::Error::custom)
}

/// `[database] synchronous`: `full` is true.
fn is_full<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    Ok(String::deserialize(d)? == "full")
}

fn trusted_proxies<'de, D: Deserializer<'de>>(d: D) -> Result<TrustedProxies, D::Error> {
    TrustedProxies::parse(&Vec::<String>::deserialize(d)?)
        .map_err(|bad| de::Error::custom(format!("{bad:?} is not an IP address or CIDR")))
}

impl Default for Config {
    /// Every setting at its default from the settings table; reads no file
    /// and no environment.
    fn default() -> Config {
        build(&defaults()).expect("built-in defaults are valid")
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
    fn named_upstreams_inherit_timeouts_and_name_their_own_server() {
        let cfg = load_text(
            "[upstream]\nbase_url = http://127.0.0.1:11434/v1\ntimeout_s = 45\n\n\
             [upstream.big]\nbase_url = http://10.0.0.2:8000/v1\nmodels = openai/gpt-oss-120b, qwen*\nweight = 3\napi_key_env = VLLM_KEY\n\n\
             [upstream.hosted]\nbase_url = https://api.openai.com/v1\nmodels = gpt-4o*\ntimeout_s = 90\n",
            &[("PORTCULLIS_UPSTREAM_CONNECT_TIMEOUT_S", "7")],
        )
        .unwrap();
        let names: Vec<&str> = cfg
            .named_upstreams
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(names, ["big", "hosted"]);
        let big = &cfg.named_upstreams[0].cfg;
        assert_eq!(big.base_url, "http://10.0.0.2:8000/v1");
        assert_eq!(big.weight, 3);
        assert_eq!(big.api_key_env, "VLLM_KEY");
        assert_eq!(
            big.timeout,
            Duration::from_secs(45),
            "inherited from [upstream]"
        );
        assert_eq!(
            big.connect_timeout,
            Duration::from_secs(7),
            "environment included"
        );
        assert!(big.serves("qwen2.5:7b") && big.serves("openai/gpt-oss-120b"));
        assert!(!big.serves("openai/gpt-oss-20b"));
        let hosted = &cfg.named_upstreams[1].cfg;
        assert_eq!(hosted.timeout, Duration::from_secs(90));
        assert_eq!(hosted.api_key_env, "", "a key variable is not inherited");
        assert_eq!(hosted.weight, 1);
        assert!(
            cfg.upstream.models.is_empty(),
            "the default serves the rest"
        );
    }

    #[test]
    fn bad_named_upstreams_are_refused_with_file_line_and_key() {
        let cases = [
            ("[upstream.a]\nmodels = x\n", ":1: [upstream.a] needs `base_url`"),
            ("[upstream.a]\nbase_url = http://h/v1\n", ":1: [upstream.a] needs `models`"),
            ("[upstream.a]\nbase_url = http://h/v1\nmodels = ,\n", ":1: [upstream.a] models is empty"),
            ("[upstream.a]\nbase_url = http://h/v1\nmodels = x\nmodel = y\n", ":4: key `model` in [upstream.a] holds for every upstream"),
            ("[upstream.a]\nbase_url = http://h/v1\nmodels = x\nmax_attempts = 3\n", ":4: key `max_attempts` in [upstream.a] holds for every upstream"),
            ("[upstream.a]\nbase_url = http://h/v1\nmodels = x\nweight = 0\n", ":4: [upstream.a] weight = \"0\""),
            ("[upstream.a]\nbase_url = ftp://h\nmodels = x\n", ":2: [upstream.a] base_url"),
            ("[upstream.a]\nbase_url = http://h/v1\nmodels = a*b\n", ":3: [upstream.a] models"),
            ("[upstream.A]\n", ":1: [upstream.A]: an upstream's name"),
            ("[upstream.default]\n", ":1: [upstream.default]: an upstream's name"),
            ("[upstream.a]\nbase_url = http://h/v1\nmodels = x\n[upstream.a]\n", ":4: [upstream.a] is defined twice"),
            ("[upstream.a]\nbase_url = http://h/v1\nmodels = x\n[upstream.b]\nbase_url = http://h/v1\nmodels = y\n", "upstreams `a` and `b` are the same server"),
            ("[upstream.a]\nbase_url = http://127.0.0.1:11434/v1\nmodels = x\napi_key_env = PORTCULLIS_UPSTREAM_KEY\n", "upstreams `upstream` and `a` are the same server"),
            ("[upstream.a]\nbase_url = http://h/v1\nmodels = x, x\n", "[upstream.a] models lists \"x\" twice"),
        ];
        for (text, want) in cases {
            let err = load_text(text, &[])
                .err()
                .unwrap_or_else(|| panic!("accepted: {}", text));
            assert!(
                err.0.contains(want),
                "{:?}\n  got: {}\n  want: {}",
                text,
                err.0,
                want
            );
        }
    }

    #[test]
    fn committed_config_ini_holds_every_default() {
        let text = include_str!("../config.ini");
        let parsed = parse_ini(text, Path::new("config.ini")).expect("config.ini parses");
        let found: Vec<(&str, &str, &str)> = parsed
            .iter()
            .map(|(s, k, v, _)| (s.as_str(), k.as_str(), v.as_str()))
            .collect();
        let want: Vec<(&str, &str, &str)> = SETTINGS
            .iter()
            .map(|s| (s.section, s.key, s.default))
            .collect();
        assert_eq!(found, want);
    }

    /// Every row's bounds fit its field's type, and every row has a field.
    #[test]
    fn every_setting_at_its_bounds_fills_config() {
        use settings::Kind::*;
        for at_max in [false, true] {
            let env: Vec<(String, String)> = SETTINGS
                .iter()
                .filter_map(|s| {
                    let (min, max) = match s.kind {
                        Uint { min, max }
                        | Bytes { min, max }
                        | Seconds { min, max }
                        | Millis { min, max } => (min, max),
                        _ => return None,
                    };
                    let v = if at_max { max } else { min };
                    Some((env_name(s.section, s.key), v.to_string()))
                })
                .collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (&k[..], &v[..])).collect();
            let c = load_text("", &env).unwrap_or_else(|e| panic!("at_max {at_max}: {e}"));
            let want = if at_max { 1024 } else { 1 };
            assert_eq!(c.server.workers, want);
        }
    }

    /// The safety net for a newcomer: a row without its field, or a field
    /// without its row, is an error that says which.
    #[test]
    fn table_and_structs_must_match_field_for_field() {
        let mut tree = checked_tree(&defaults()).unwrap();
        tree["server"]["bogus"] = serde_json::json!(1);
        let e = decode(tree).unwrap_err();
        assert!(e.0.contains("unknown field `bogus`"), "{e}");

        let mut tree = checked_tree(&defaults()).unwrap();
        tree["database"]
            .as_object_mut()
            .unwrap()
            .remove("synchronous");
        let e = decode(tree).unwrap_err();
        assert!(e.0.contains("missing field `synchronous`"), "{e}");
    }

    #[test]
    fn defaults_fill_config_without_reading_a_file() {
        let c = Config::default();
        assert_eq!(c.server.bind, "127.0.0.1:8000");
        assert_eq!(c.server.read_timeout, Duration::from_secs(10));
        assert_eq!(c.database.checkout_timeout, Duration::from_millis(2000));
        assert!(c.database.synchronous_full);
        assert_eq!(c.auth.mode, AuthMode::ApiKey);
        assert_eq!(c.logging.level, log::LevelFilter::Info);
        assert_eq!(c.logging.file, None);
        assert_eq!(c.security.allowed_hosts, ["localhost", "127.0.0.1", "::1"]);
        assert!(c.security.trusted_proxies.contains("::1".parse().unwrap()));
        assert!(c.source.is_none());
    }

    #[test]
    fn decoded_words_and_normalised_values() {
        let c = load_text(
            "[database]\nsynchronous = NORMAL\n[logging]\nlevel = Warn\nfile = x.log\n\
             [auth]\nmode = none\n[upstream]\nbase_url = https://api.example/v1/\n\
             [security]\nallowed_hosts = Example.COM\n",
            &[],
        )
        .unwrap();
        assert!(!c.database.synchronous_full);
        assert_eq!(c.logging.level, log::LevelFilter::Warn);
        assert_eq!(c.logging.file, Some(PathBuf::from("x.log")));
        assert_eq!(c.auth.mode, AuthMode::None);
        assert_eq!(c.upstream.base_url, "https://api.example/v1");
        assert_eq!(c.security.allowed_hosts, ["example.com"]);
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

    /// Each checklist item fires on its own, and the defaults pass.
    #[test]
    fn production_checklist_items_each_fire() {
        let cases: &[(&str, Option<usize>, &str)] = &[
            ("[server]\ndebug = true\n", Some(32), "debug"),
            ("[auth]\nmode = none\n", Some(32), "[auth] mode"),
            ("", Some(31), "CSRF secret is 31 bytes"),
            (
                "[security]\ntrusted_proxies = 10.0.0.1, ::/0\n",
                None,
                "trusted_proxies",
            ),
            ("[server]\nbind = [::]:8000\n", None, "every interface"),
            ("[server]\nbind = 127.0.0.1:0\n", None, "port 0"),
        ];
        for (ini, secret_len, want) in cases {
            let p = load_text(ini, &[])
                .unwrap()
                .production_problems(*secret_len);
            assert_eq!(p.len(), 1, "{ini:?}: {p:?}");
            assert!(p[0].contains(want), "{ini:?}: {p:?}");
        }
        assert_eq!(
            Config::default().production_problems(Some(32)),
            Vec::<String>::new()
        );
        assert_eq!(
            Config::default().production_problems(None),
            Vec::<String>::new()
        );
    }
}
