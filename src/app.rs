//! The shared state every worker reads: configuration, secrets and the
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
    /// Threads for non-streaming upstream calls (`Body::Deferred`), so a
    /// slow model never holds a worker; at most `max_concurrent_streams`.
    pub relays: crate::relay_pool::RelayPool,
    /// Shared with stream threads, which count their own upstream failures.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The upstream client (the only outbound HTTP in the process).
    pub upstream: std::sync::Arc<crate::upstream::Upstream>,
    pub db: crate::db::Db,
    pub audit: crate::audit::Audit,
    pub limiter: Limiter,
    /// The rate limiter's sweeper thread; `stop_background` ends it.
    sweeper: Mutex<Option<SweeperHandle>>,
    pub started: Instant,
    shutting_down: AtomicBool,
    stats: OnceLock<crate::server::ServerStats>,
}

impl App {
    /// Builds the state; errors are start-up errors with a readable message.
    pub fn new(cfg: Config) -> Result<App, String> {
        std::fs::create_dir_all(&cfg.server.data_dir).map_err(|e| {
            format!(
                "cannot create data_dir {}: {}",
                cfg.server.data_dir.display(),
                e
            )
        })?;
        let csrf_secret = crate::secret::load_csrf_secret(&cfg.server.data_dir).map_err(|e| {
            format!(
                "cannot load or create the CSRF secret in {}: {}",
                cfg.server.data_dir.display(),
                e
            )
        })?;
        let upstream_key = crate::secret::load_upstream_key(&cfg.upstream.api_key_env);
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
        let upstream = std::sync::Arc::new(crate::upstream::Upstream::new(
            &cfg.upstream,
            upstream_key.clone(),
        ));
        let db = crate::db::Db::open(&cfg)?;
        if cfg.auth.mode == crate::config::AuthMode::ApiKey {
            ensure_first_key(&db, &cfg.server.data_dir)?;
        }
        let audit = crate::audit::Audit::start(db.clone());
        let limiter = Limiter::new(&cfg.rate_limit);
        let sweeper = limiter
            .start_sweeper(cfg.rate_limit.sweep_interval)
            .map_err(|e| format!("cannot start the rate-limit sweeper thread: {}", e))?;
        let relays = crate::relay_pool::RelayPool::new(
            cfg.server.max_concurrent_streams,
            crate::server::THREAD_STACK_BYTES,
        );
        Ok(App {
            streams,
            relays,
            metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
            upstream,
            db,
            audit,
            limiter,
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
    pub fn set_stats(&self, stats: crate::server::ServerStats) {
        let _ = self.stats.set(stats);
    }

    pub fn stats(&self) -> Option<&crate::server::ServerStats> {
        self.stats.get()
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
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
}

/// Name of the file the first API key is written to (mode 0600).
pub const FIRST_KEY_FILE: &str = "first_api_key";

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
