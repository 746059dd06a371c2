//! Storage: SQLite behind a small connection pool. `Db` is the one handle
//! handlers, the auth filter and the CLI use; it owns every SQL statement
//! (all parameterised) and sorts `rusqlite::Error` into `StoreError`
//! (busy/locked, disk full, anything else with the detail kept for logs).
//!
//! Storage never imports the HTTP layer (`http`, `error`): callers get
//! `StoreError`, and the request path converts it to the contract's
//! `ApiError` in one place, `impl From<StoreError> for ApiError` in
//! `src/error.rs`.
//!
//! Module map: `pool` (connections), `schema` (migrations), `page` (keyset
//! cursors), `projects`, `conversations`, `messages`, `keys`, `audit_log`,
//! `reads` (every `SELECT`, listed for the query-plan test), `ready`
//! (bounded health query), `error` (`StoreError`).
//!
//! Invariant: a write that depends on a read (existence checks, monotonic
//! `created_at`) runs in one `BEGIN IMMEDIATE` transaction, so it takes the
//! write lock up front and the busy timeout applies; a deferred transaction
//! upgrading from read to write could fail at once with SQLITE_BUSY.

/// The text edges of an enum stored as text (`Role`, `Status`,
/// `AuditEvent`): `FromStr`, and `ToSql`/`FromSql` for its column, all
/// through its `as_str` names; a name not in its `ALL` is refused. Defined
/// before the modules so that each can use it.
macro_rules! text_enum {
    ($t:ty) => {
        impl std::str::FromStr for $t {
            type Err = ();
            fn from_str(s: &str) -> Result<$t, ()> {
                <$t>::ALL.into_iter().find(|v| v.as_str() == s).ok_or(())
            }
        }

        impl rusqlite::types::ToSql for $t {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $t {
            fn column_result(
                v: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<$t> {
                v.as_str()?
                    .parse()
                    .map_err(|()| rusqlite::types::FromSqlError::InvalidType)
            }
        }
    };
}

pub mod audit_log;
pub mod conversations;
pub mod error;
pub mod keys;
pub mod messages;
pub mod page;
pub mod pg;
pub mod pool;
pub mod projects;
pub mod reads;
pub mod ready;
pub mod schema;
pub mod sessions;
pub mod shared;
pub mod store;
pub mod usage;
pub mod users;
pub mod writer;

use rusqlite::OptionalExtension;

use crate::config::Config;

pub use audit_log::{Actor, AuditEvent};
pub use conversations::Conversation;
pub use error::StoreError;
pub use messages::{Message, NewMessage, Role, Status};
pub use page::{Page, PageReq};
pub use pool::PooledConn;
pub use projects::Project;
pub use store::Store;
pub use users::{Owner, Principal};

/// The database handle every worker, filter and command uses: cheap to
/// clone, one store behind it (SQLite, or PostgreSQL when `database.url`
/// is set). Its methods are the `store` traits.
#[derive(Clone)]
pub struct Db(std::sync::Arc<dyn Store>);

impl std::ops::Deref for Db {
    type Target = dyn Store;
    fn deref(&self) -> &(dyn Store + 'static) {
        &*self.0
    }
}

impl Db {
    /// Opens the configured store (`database.url`: PostgreSQL; else the
    /// SQLite file) with `pool_size` connections and brings its schema up
    /// to date. Start-up only; errors are readable.
    pub fn open(cfg: &Config) -> Result<Db, String> {
        Self::open_sized(cfg, cfg.database.pool_size, true)
    }

    /// As `open` with a one-connection pool: the command line's needs.
    pub fn open_for_cli(cfg: &Config) -> Result<Db, String> {
        Self::open_sized(cfg, 1, false)
    }

    fn open_sized(cfg: &Config, size: usize, serving: bool) -> Result<Db, String> {
        if !cfg.database.url.is_empty() {
            return Ok(Db(std::sync::Arc::new(pg::Postgres::open(cfg, size)?)));
        }
        let db = Sqlite::open_sized(cfg, size)?;
        if serving {
            db.start_checkpointer()?;
        }
        Ok(Db(std::sync::Arc::new(db)))
    }

    /// With a shared store, starts the `limits-sweep` thread: every
    /// `every`, limiter rows that are full again are deleted (they carry
    /// nothing), so the table holds the clients of the last minute only.
    /// The thread ends with the last `Db`.
    pub fn start_shared_sweeper(&self, every: std::time::Duration) -> Result<(), String> {
        if self.shared().is_none() {
            return Ok(());
        }
        let weak = std::sync::Arc::downgrade(&self.0);
        crate::threads::spawn("limits-sweep", move || loop {
            std::thread::sleep(every);
            let Some(store) = weak.upgrade() else { return };
            if let Some(Err(e)) = store.shared().map(|s| s.sweep_requests()) {
                crate::logging::warn(
                    "rate limits: cannot sweep the shared buckets",
                    &[("error", serde_json::json!(e.to_string()))],
                );
            }
        })
        .map(|_| ())
        .map_err(|e| format!("cannot start the limits sweeper thread: {}", e))
    }

    /// The SQLite store, for tests and tools that read its file directly.
    pub fn sqlite(&self) -> Option<&Sqlite> {
        self.0.as_sqlite()
    }
}

/// The SQLite store: a pool of readers and one writer on the file.
pub struct Sqlite {
    pool: pool::Pool,
    /// The process's one writer (see `writer.rs`).
    writer: std::sync::Arc<writer::Writer>,
    /// Valid API keys recently seen (see `keys::KeyCache`).
    key_cache: std::sync::Arc<keys::KeyCache>,
}

impl Store for Sqlite {
    fn backend(&self) -> &'static str {
        "sqlite"
    }
    fn as_sqlite(&self) -> Option<&Sqlite> {
        Some(self)
    }
}

/// Statements through each connection's prepared-statement cache: the hot
/// queries (the key lookup on every authenticated request, inserts, gets)
/// are parsed once per connection instead of once per call.
pub(crate) trait Cached {
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
}

impl Cached for rusqlite::Connection {
    fn query_row_cached<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }

    fn execute_cached<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }
}

impl Sqlite {
    /// Moves WAL checkpoints off the write path. SQLite's automatic
    /// checkpoint runs inside the commit that crosses 1,000 WAL pages, so
    /// every write queued behind that commit waited for the database file
    /// to be copied into and fsynced (tens of milliseconds on a busy disk:
    /// the creates' p99 at 32 connections went from ~16 ms to 45-110 ms in
    /// such runs). Here a `db-checkpoint` thread with its own connection
    /// runs a PASSIVE checkpoint (never blocks the writer or readers) every
    /// `CHECKPOINT_EVERY`, and the writer's own checkpoint waits for a WAL
    /// of `BACKSTOP_PAGES` (32 MiB): by then the passive rounds have copied
    /// almost every page, so it is short, and it lets the WAL start over
    /// (under steady writes a passive checkpoint never catches the WAL's
    /// end, so the file would only grow). Measured: 15 s of creates at 32
    /// connections, p99 19.8-20.6 ms in three runs (without: runs of 16 ms
    /// and of 91-113 ms), the WAL at most 32 MiB. The thread ends with the
    /// `Db`.
    fn start_checkpointer(&self) -> Result<(), String> {
        const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);
        const BACKSTOP_PAGES: u32 = 8_192;
        self.writer
            .with_connection(|c| c.pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES))
            .unwrap_or(Ok(()))
            .map_err(|e| format!("cannot configure the writer: {}", e))?;
        let conn = pool::open_connection(&self.pool.config())
            .map_err(|e| format!("cannot open the checkpoint connection: {}", e))?;
        let alive = std::sync::Arc::downgrade(&self.writer);
        crate::threads::spawn("db-checkpoint", move || loop {
            std::thread::sleep(CHECKPOINT_EVERY);
            if alive.upgrade().is_none() {
                return;
            }
            // Busy (another checkpoint, the CLI's) is fine: next round.
            let _ = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        })
        .map_err(|e| format!("cannot start the checkpoint thread: {}", e))?;
        Ok(())
    }

    fn open_sized(cfg: &Config, size: usize) -> Result<Sqlite, String> {
        let path = cfg.database_path();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {}", dir.display(), e))?;
        }
        create_private(&path)
            .map_err(|e| format!("cannot create database {}: {}", path.display(), e))?;
        let pool_cfg = pool::PoolConfig {
            path: path.clone(),
            size,
            checkout_timeout: cfg.database.checkout_timeout,
            busy_timeout: cfg.database.busy_timeout,
            max_age: cfg.database.max_connection_age,
            idle_check_after: cfg.database.idle_check_after,
            sync_full: cfg.database.synchronous_full,
        };
        let pool = pool::Pool::open(pool_cfg.clone())?;
        {
            let mut conn = pool
                .get()
                .map_err(|e| format!("cannot use database {}: {}", path.display(), e))?;
            schema::migrate(&mut conn).map_err(|e| format!("{} ({})", e, path.display()))?;
        }
        let writer_conn = pool::open_connection(&pool_cfg)
            .map_err(|e| format!("cannot use database {}: {}", path.display(), e))?;
        Ok(Sqlite {
            writer: std::sync::Arc::new(writer::Writer::new(
                writer_conn,
                cfg.database.checkout_timeout,
            )),
            pool,
            key_cache: std::sync::Arc::new(keys::KeyCache::new(&path)),
        })
    }

    /// Checks out a connection (`PoolExhausted` when the pool stays empty
    /// for `checkout_timeout_ms`).
    pub fn conn(&self) -> Result<PooledConn, StoreError> {
        self.pool.get()
    }

    /// Runs `f` as one write: in its own savepoint of the writer's
    /// transaction, on the process's one writer connection, returning once
    /// the commit that holds it is durable; rolled back alone when it
    /// fails (see `writer.rs`: writers queue in memory and share commits).
    pub fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // Waiting for the writer and its fsync is I/O: the request gives
        // its seat back (more writes then share each commit).
        crate::seats::give_back_for_io();
        self.writer.write(f)
    }

    pub fn pool(&self) -> &pool::Pool {
        &self.pool
    }
}

/// Creates the database file readable by the owner only (it holds chats
/// and key hashes), never through a link. SQLite gives its -wal and -shm
/// files the same mode and opens them all with `O_NOFOLLOW`.
fn create_private(path: &std::path::Path) -> std::io::Result<()> {
    match crate::data_files::create_new(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The `created_at` for a new row: now, but never before the newest row's
/// (`newest_sql` selects it), so `(created_at, seq)` grows with commit
/// order even when clocks of concurrent requests disagree by a millisecond
/// or the wall clock steps back. Call inside the write transaction.
fn monotonic_now(tx: &rusqlite::Connection, newest_sql: &'static str) -> Result<i64, StoreError> {
    let newest: Option<i64> = tx
        .query_row_cached(newest_sql, [], |r| r.get(0))
        .optional()?;
    Ok(crate::time::now_millis().max(newest.unwrap_or(i64::MIN)))
}

/// Whether `sql` (a `SELECT 1 ... WHERE id = ?1`) finds a row.
/// Whether the row `id` exists and belongs to `owner` (`sql` takes both).
fn owned(
    tx: &rusqlite::Connection,
    sql: &'static str,
    owner: users::Owner,
    id: &str,
) -> Result<bool, StoreError> {
    Ok(tx
        .query_row_cached(sql, [id, owner.id()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Optional strings as JSON: `null` when absent.
fn opt_json(v: &Option<String>) -> serde_json::Value {
    v.as_deref().map_or(serde_json::Value::Null, |s| s.into())
}

#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A fresh database in its own temp directory.
    pub fn temp_db() -> Db {
        let dir = std::env::temp_dir().join(format!("portcullis-db-{}", crate::ids::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = Config::default();
        cfg.server.data_dir = dir;
        cfg.database.pool_size = 2;
        Db::open(&cfg).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("portcullis-db-{}", crate::ids::random_hex(6)));
        let mut cfg = Config::default();
        cfg.server.data_dir = dir.clone();
        Db::open(&cfg).unwrap();
        let mode = std::fs::metadata(cfg.database_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
