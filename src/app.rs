//! The shared state every request reads: configuration, secrets and the
//! services (rate limiter, database, upstream client, stream slots,
//! metrics). Built once at start-up; handlers get `&App`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::config::Config;
use crate::filters::rate_limit::{Limiter, SweeperHandle};
use crate::secret::Secret;
use crate::streams::StreamSlots;

pub struct App {
    pub cfg: Config,
    pub csrf_secret: Secret,
    pub upstream_key: Option<Secret>,
    pub streams: StreamSlots,
    /// Non-streaming upstream calls in flight (`Body::Deferred`); at most
    /// `max_concurrent_streams`.
    pub relays: crate::relays::Relays,
    /// Shared with stream threads, which count their own upstream failures.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The upstreams, chosen per call by model (`upstreams.rs`; the only
    /// outbound HTTP in the process).
    pub upstreams: std::sync::Arc<crate::upstreams::Upstreams>,
    pub db: crate::db::Db,
    pub audit: crate::audit::Audit,
    /// Token limits and usage rows (`usage.rs`).
    pub usage: std::sync::Arc<crate::usage::Usage>,
    pub limiter: Limiter,
    /// Failed authentications per client address (`filters::auth`), apart
    /// from `limiter` so failing addresses never crowd out request buckets.
    pub auth_failures: Limiter,
    /// In auth mode `none`, the built-in admin `local` every request acts
    /// for (its data is its own, as any user's).
    pub local_user: Option<crate::db::Principal>,
    /// Failed sign-ins per name and per address (`routes::session`).
    pub login_throttle: crate::login_throttle::LoginThrottle,
    /// The sweeper thread of both limiters; `stop_background` ends it.
    sweeper: Mutex<Option<SweeperHandle>>,
    pub started: Instant,
    shutting_down: AtomicBool,
    stats: OnceLock<Box<dyn crate::metrics::ServerGauges>>,
}

impl App {
    /// Builds the state; errors are start-up errors with a readable message.
    pub fn new(cfg: Config) -> Result<App, String> {
        crate::data_files::create_dir(&cfg.server.data_dir)?;
        // Before any of our files is read or written: links refused, loose
        // modes tightened (or start-up stops naming the file).
        for (file, was) in crate::data_files::secure_existing(&cfg)? {
            crate::logging::warn(
                crate::data_files::TIGHTENED_MSG,
                &[
                    ("file", serde_json::json!(file.display().to_string())),
                    ("was", serde_json::json!(format!("{:o}", was))),
                ],
            );
        }
        let csrf_secret = crate::secret::load_csrf_secret(&cfg.server.data_dir).map_err(|e| {
            format!(
                "cannot load or create the CSRF secret in {}: {}",
                cfg.server.data_dir.display(),
                e
            )
        })?;
        if !cfg.database.url.is_empty()
            && std::env::var_os(crate::secret::CSRF_SECRET_ENV).is_none()
        {
            // Each instance would sign with its own generated secret, and a
            // page served by one would be refused by the other.
            crate::logging::warn(
                "a shared database but no shared CSRF secret: every instance on this database needs the same PORTCULLIS_CSRF_SECRET (this one uses its own data_dir/csrf_secret)",
                &[],
            );
        }
        let upstream_key = crate::secret::load_upstream_key(&cfg.upstream.api_key_env);
        warn_if_too_short_to_redact("the CSRF secret", Some(&csrf_secret));
        warn_if_too_short_to_redact(&cfg.upstream.api_key_env, upstream_key.as_ref());
        if cfg.security.csrf_tokens && csrf_secret.len() < crate::filters::csrf::MIN_SECRET_BYTES {
            return Err(format!(
                "csrf_tokens is on but the CSRF secret is {} bytes; at least {} are required ({})",
                csrf_secret.len(),
                crate::filters::csrf::MIN_SECRET_BYTES,
                crate::secret::CSRF_SECRET_ENV
            ));
        }
        let streams = StreamSlots::new(
            cfg.server.max_concurrent_streams,
            cfg.server.max_streams_per_client,
        );
        let upstreams = crate::upstreams::Upstreams::new(&cfg, &|var: &str| {
            if var == cfg.upstream.api_key_env {
                return upstream_key.clone();
            }
            let key = crate::secret::load_upstream_key(var);
            warn_if_too_short_to_redact(var, key.as_ref());
            key
        });
        let db = crate::db::Db::open(&cfg)?;
        if cfg.auth.mode == crate::config::AuthMode::ApiKey {
            ensure_first_key(&db, &cfg.server.data_dir)?;
        }
        let local_user = match cfg.auth.mode {
            crate::config::AuthMode::None => Some(
                db.ensure_user(crate::db::users::LOCAL_USER, crate::db::users::Role::Admin)
                    .map_err(|e| format!("cannot create the built-in user: {}", e))?
                    .principal(),
            ),
            crate::config::AuthMode::ApiKey => None,
        };
        let audit = crate::audit::Audit::start(db.clone());
        let usage = crate::usage::Usage::start(&cfg.limits, db.clone())?;
        let limiter = Limiter::new(&cfg.rate_limit);
        let auth_failures = Limiter::for_auth_failures(
            cfg.auth.max_failures_per_minute,
            cfg.rate_limit.max_tracked_clients,
        );
        let sweeper = Limiter::start_sweeper_for(
            vec![limiter.clone(), auth_failures.clone()],
            cfg.rate_limit.sweep_interval,
        )
        .map_err(|e| format!("cannot start the rate-limit sweeper thread: {}", e))?;
        db.start_shared_sweeper(cfg.rate_limit.sweep_interval)?;
        let relays = crate::relays::Relays::new(cfg.server.max_concurrent_streams);
        relays
            .start_hangup_watch()
            .map_err(|e| format!("cannot start the relay hang-up watch: {}", e))?;
        let login_throttle = crate::login_throttle::LoginThrottle::new(
            cfg.auth.login_max_failures,
            cfg.auth.login_window,
            cfg.rate_limit.max_tracked_clients,
        );
        Ok(App {
            local_user,
            login_throttle,
            streams,
            relays,
            metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
            upstreams,
            db,
            audit,
            usage,
            limiter,
            auth_failures,
            sweeper: Mutex::new(Some(sweeper)),
            cfg,
            csrf_secret,
            upstream_key,
            started: Instant::now(),
            shutting_down: AtomicBool::new(false),
            stats: OnceLock::new(),
        })
    }

    pub fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    pub fn active_streams(&self) -> usize {
        self.streams.active()
    }

    /// The server's gauges (connections, queue depth), once it runs.
    pub fn set_stats(&self, stats: Box<dyn crate::metrics::ServerGauges>) {
        let _ = self.stats.set(stats);
    }

    pub fn stats(&self) -> Option<&dyn crate::metrics::ServerGauges> {
        self.stats.get().map(|s| s.as_ref())
    }

    /// Stops background threads (rate-limit sweeper, audit flusher) at
    /// shutdown; returns once they have ended. Safe to call more than once.
    pub fn stop_background(&self) {
        let sweeper = self
            .sweeper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(s) = sweeper {
            s.stop();
        }
        self.audit.stop();
        self.usage.stop();
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
}

/// Secrets are redacted from logs by value only from
/// `logging::MIN_REDACTED_SECRET_BYTES` on; a shorter one is reported (by
/// name, never value) so the operator can lengthen it.
fn warn_if_too_short_to_redact(what: &str, secret: Option<&Secret>) {
    if let Some(s) = secret.filter(|s| s.len() < crate::logging::MIN_REDACTED_SECRET_BYTES) {
        crate::logging::warn(
            "secret too short to be redacted from logs by value; use a longer one",
            &[
                ("secret", serde_json::json!(what)),
                ("bytes", serde_json::json!(s.len())),
                (
                    "min_bytes",
                    serde_json::json!(crate::logging::MIN_REDACTED_SECRET_BYTES),
                ),
            ],
        );
    }
}

/// Name of the file the first API key is written to (mode 0600).
pub const FIRST_KEY_FILE: &str = crate::data_files::FIRST_KEY_FILE;

/// In `api_key` mode with no key at all, creates one into
/// `<data_dir>/first_api_key` and logs the file's path (never the key).
fn ensure_first_key(db: &crate::db::Db, data_dir: &std::path::Path) -> Result<(), String> {
    let file = data_dir.join(FIRST_KEY_FILE);
    if db.ensure_first_key(&file)? {
        crate::logging::warn(
            "no API key existed: created one; read it from this file, then delete the file",
            &[("file", serde_json::json!(file.display().to_string()))],
        );
    }
    Ok(())
}
