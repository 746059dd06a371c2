//! PostgreSQL, the shared store (`database.url = postgres://...`): the same
//! `store` traits as SQLite, for teams that run several instances on one
//! database. Module map: `conn` (the URL, TLS, the pool, errors), `schema`
//! (migrations), `content` (projects, conversations, messages), `access`
//! (users, keys, sessions, audit), `usage` (usage rows and reports),
//! `limits` (the request limiter and token accounts every instance shares),
//! `copy` (`migrate-to-postgres`).
//!
//! What differs from SQLite, and why:
//! - No cache in front of keys or sessions: every request looks its key or
//!   session up (one indexed query), so a key revoked, a user disabled or a
//!   session ended through any instance is refused by every instance on its
//!   next request. A cache with a TTL would let a revoked key live on.
//! - Writes run in their own transactions on pooled connections (no single
//!   writer). Inserts that order a list (`(created_at, seq)`, `db::page`)
//!   take a transaction-scoped advisory lock per table, so `seq` and
//!   `created_at` still grow in commit order across instances and a page
//!   walk never skips a row that committed behind it.
//! - Every wait is bounded: a checkout waits `checkout_timeout_ms`,
//!   connecting waits as long, and every statement is cancelled by the
//!   server after `statement_timeout_ms`; all of these are 503
//!   `server_busy`, never a 401 for a valid key.

pub mod access;
pub mod conn;
pub mod content;
pub mod copy;
pub mod limits;
pub mod schema;
pub mod usage;

use std::time::{Duration, Instant};

use crate::config::Config;
use crate::db::ready::ReadyFailure;
use crate::db::StoreError;

pub use conn::{PgConn, PgPool};

/// The PostgreSQL store: a pool of connections to one database.
pub struct Postgres {
    pool: PgPool,
    fail_open: bool,
}

impl Postgres {
    /// Connects (`size` connections at most), brings the schema up to date
    /// and checks that one connection works. Start-up only.
    pub fn open(cfg: &Config, size: usize) -> Result<Postgres, String> {
        let pool = PgPool::open(&cfg.database, size)?;
        {
            let mut c = pool
                .get()
                .map_err(|e| format!("cannot use the PostgreSQL database: {}", e))?;
            schema::migrate(&mut c, true)?;
        }
        Ok(Postgres {
            pool,
            fail_open: cfg.database.limits_fail_open,
        })
    }

    /// A connection from the pool (bounded wait).
    pub fn conn(&self) -> Result<PgConn, StoreError> {
        self.pool.get()
    }

    /// Runs `f` in one transaction, committed before returning; rolled back
    /// (nothing kept) when `f` fails.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>, &mut conn::Statements) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        crate::seats::give_back_for_io();
        let mut c = self.conn()?;
        c.transaction(f)
    }
}

impl crate::db::store::Readiness for Postgres {
    fn check_ready(&self, limit: Duration) -> Result<Duration, (ReadyFailure, Duration)> {
        let started = Instant::now();
        let mut c = match self.pool.get_within(limit) {
            Ok(c) => c,
            Err(StoreError::PoolExhausted) => {
                return Err((ReadyFailure::PoolExhausted, started.elapsed()))
            }
            Err(e) => return Err((ReadyFailure::Error(e.to_string()), started.elapsed())),
        };
        // Bounded by the server's statement timeout, and by `limit` here.
        let ms = limit.as_millis().clamp(1, i32::MAX as u128) as i32;
        let r = c
            .client()
            .batch_execute(&format!(
                "BEGIN; SET LOCAL statement_timeout = {}; SELECT 1; COMMIT",
                ms
            ))
            .map_err(conn::store_error);
        match r {
            Ok(()) => Ok(started.elapsed()),
            // The batch stopped inside its transaction: not reusable.
            Err(StoreError::Busy) => {
                c.discard();
                Err((ReadyFailure::Timeout, started.elapsed()))
            }
            Err(e) => {
                c.discard();
                Err((ReadyFailure::Error(e.to_string()), started.elapsed()))
            }
        }
    }

    fn pool_wait_counts(&self) -> (u64, u64) {
        self.pool.wait_counts()
    }

    fn writes_in_flight(&self) -> usize {
        self.pool.in_use()
    }
}

impl crate::db::Store for Postgres {
    fn backend(&self) -> &'static str {
        "postgresql"
    }

    fn shared(&self) -> Option<&dyn crate::db::shared::SharedLimits> {
        Some(self)
    }

    fn limits_fail_open(&self) -> bool {
        self.fail_open
    }
}
