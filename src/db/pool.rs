//! A fixed-size SQLite connection pool (Mutex + Condvar, no pool crate).
//!
//! `pool_size` connections are opened at start. `get` waits at most
//! `checkout_timeout` for one and then gives up with `PoolExhausted` (503
//! `server_busy` to a client), so a saturated database sheds load instead
//! of piling up workers. The mutex guards only the list of idle
//! connections: no SQL (not even the `SELECT 1` validity check or opening
//! a replacement) runs while it is held.
//!
//! A checked-out connection lives in a `PooledConn` guard whose `Drop`
//! returns it on every path, panics included. A guard dropped while its
//! thread panics, or still inside a transaction that cannot be rolled back,
//! gives back a *vacancy* instead: the broken connection is closed (which
//! rolls back whatever it held) and the next checkout opens a fresh one.

use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::StoreError;

#[derive(Clone, Debug)]
pub struct PoolConfig {
    pub path: PathBuf,
    pub size: usize,
    pub checkout_timeout: Duration,
    pub busy_timeout: Duration,
    /// Connections older than this are closed and reopened at checkout.
    pub max_age: Duration,
    /// Connections idle longer than this get `SELECT 1` before reuse.
    pub idle_check_after: Duration,
    /// `PRAGMA synchronous`: true for FULL (default), false for NORMAL.
    pub sync_full: bool,
}

struct Slot {
    conn: Connection,
    opened: Instant,
    last_used: Instant,
}

struct State {
    idle: Vec<Slot>,
    /// Slots whose connection was discarded; the next checkout reopens one.
    vacant: usize,
}

struct Inner {
    cfg: PoolConfig,
    state: Mutex<State>,
    available: Condvar,
    /// Checkouts that had to wait, and those that gave up (metrics).
    waits: std::sync::atomic::AtomicU64,
    timeouts: std::sync::atomic::AtomicU64,
}

/// Cheap to clone: all clones share one pool.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
}

/// What to do with an idle connection before handing it out.
#[derive(Debug, PartialEq, Eq)]
pub enum Reuse {
    AsIs,
    /// Idle long enough that the file may have moved under it: `SELECT 1`.
    Check,
    /// Past `max_age`: close it and open a new one.
    Recycle,
}

/// Decides, from the connection's age and idle time at `now`, how it may be
/// reused. Pure, so its rules are tested without a clock.
pub fn reuse_decision(
    opened: Instant,
    last_used: Instant,
    now: Instant,
    cfg: &PoolConfig,
) -> Reuse {
    if now.saturating_duration_since(opened) >= cfg.max_age {
        Reuse::Recycle
    } else if now.saturating_duration_since(last_used) >= cfg.idle_check_after {
        Reuse::Check
    } else {
        Reuse::AsIs
    }
}

/// Prepared statements kept per connection (we have a few dozen).
const STATEMENT_CACHE: usize = 64;

/// Opens one connection with the settings every pooled connection shares.
pub fn open_connection(cfg: &PoolConfig) -> rusqlite::Result<Connection> {
    let conn = Connection::open(&cfg.path)?;
    // Room for every distinct statement we run, so none is re-parsed.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Before anything that takes a lock, so even switching the journal mode
    // waits for a concurrent writer instead of failing at once.
    conn.busy_timeout(cfg.busy_timeout)?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(format!(
                "the database refused WAL journal mode (got {})",
                mode
            )),
        ));
    }
    // synchronous=FULL (the default): a write we acknowledged with 201 must
    // survive a power loss, not only a process crash. In WAL mode, NORMAL
    // skips the fsync at each commit and can lose the last transactions when
    // the machine (not just the process) goes down, though never on a
    // process crash; FULL syncs the WAL on every commit. The cost is one
    // fsync per write transaction: small next to an LLM call, but it bounds
    // write throughput on slow disks (BENCHMARKS.md), hence the setting.
    conn.execute_batch(if cfg.sync_full {
        "PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL;"
    } else {
        "PRAGMA foreign_keys=ON; PRAGMA synchronous=NORMAL;"
    })?;
    Ok(conn)
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state is a plain list that no panic can leave half-updated.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// Opens all `cfg.size` connections; an error names the file.
    /// The settings every connection of this pool was opened with.
    pub fn config(&self) -> PoolConfig {
        self.inner.cfg.clone()
    }

    pub fn open(cfg: PoolConfig) -> Result<Pool, String> {
        let mut idle = Vec::with_capacity(cfg.size);
        for _ in 0..cfg.size.max(1) {
            let conn = open_connection(&cfg)
                .map_err(|e| format!("cannot open database {}: {}", cfg.path.display(), e))?;
            let now = Instant::now();
            idle.push(Slot {
                conn,
                opened: now,
                last_used: now,
            });
        }
        Ok(Pool {
            inner: Arc::new(Inner {
                cfg,
                state: Mutex::new(State { idle, vacant: 0 }),
                available: Condvar::new(),
                waits: Default::default(),
                timeouts: Default::default(),
            }),
        })
    }

    /// Checks out a connection, waiting at most `checkout_timeout`.
    /// Exhausted: `PoolExhausted`. A connection that fails its validity check,
    /// or is too old, is replaced transparently.
    pub fn get(&self) -> Result<PooledConn, StoreError> {
        self.get_within(self.inner.cfg.checkout_timeout)
    }

    /// As `get` with an explicit wait bound (readiness uses its own).
    pub fn get_within(&self, wait: Duration) -> Result<PooledConn, StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let deadline = Instant::now() + wait;
        let taken = {
            let mut st = lock(&self.inner.state);
            let mut waited = false;
            loop {
                if let Some(slot) = st.idle.pop() {
                    break Some(slot);
                }
                if st.vacant > 0 {
                    st.vacant -= 1;
                    break None;
                }
                if !waited {
                    waited = true;
                    self.inner.waits.fetch_add(1, Relaxed);
                }
                let now = Instant::now();
                if now >= deadline {
                    self.inner.timeouts.fetch_add(1, Relaxed);
                    return Err(StoreError::PoolExhausted);
                }
                st = self
                    .inner
                    .available
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        };
        // From here on the slot is ours: every exit must hand it back
        // (as a connection or a vacancy), which the guard's Drop does.
        let mut guard = PooledConn {
            inner: self.inner.clone(),
            slot: None,
            discard: false,
        };
        let cfg = &self.inner.cfg;
        let reusable = taken.filter(|slot| {
            match reuse_decision(slot.opened, slot.last_used, Instant::now(), cfg) {
                Reuse::AsIs => true,
                Reuse::Check => slot
                    .conn
                    .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                    .is_ok(),
                Reuse::Recycle => false,
            }
        });
        let slot = match reusable {
            Some(slot) => slot,
            None => {
                // Dropping `guard` with no slot returns the vacancy.
                let conn = open_connection(cfg)?;
                let now = Instant::now();
                Slot {
                    conn,
                    opened: now,
                    last_used: now,
                }
            }
        };
        guard.slot = Some(slot);
        Ok(guard)
    }

    pub fn checkout_timeout(&self) -> Duration {
        self.inner.cfg.checkout_timeout
    }

    /// (checkouts that waited, checkouts that timed out), for metrics.
    pub fn wait_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.waits.load(Relaxed),
            self.inner.timeouts.load(Relaxed),
        )
    }

    /// (idle connections, pool size), for metrics and tests.
    pub fn idle_count(&self) -> (usize, usize) {
        let st = lock(&self.inner.state);
        (st.idle.len(), self.inner.cfg.size)
    }
}

/// A checked-out connection; dereferences to `rusqlite::Connection`.
pub struct PooledConn {
    inner: Arc<Inner>,
    slot: Option<Slot>,
    discard: bool,
}

impl PooledConn {
    /// Closes this connection instead of returning it (e.g. after it was
    /// interrupted); the pool opens a replacement on demand.
    pub fn discard(mut self) {
        self.discard = true;
    }
}

impl Deref for PooledConn {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        // Invariant: `slot` is Some from the end of `get` until Drop.
        &self.slot.as_ref().expect("pooled connection present").conn
    }
}

impl DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.slot.as_mut().expect("pooled connection present").conn
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        let keep = match self.slot.take() {
            None => None,
            // A panic may have cut a unit of work in half: do not trust the
            // connection; closing it rolls back whatever it held.
            Some(_) if self.discard || std::thread::panicking() => None,
            Some(mut slot) => {
                if !slot.conn.is_autocommit() {
                    let _ = slot.conn.execute_batch("ROLLBACK");
                }
                if slot.conn.is_autocommit() {
                    slot.last_used = Instant::now();
                    Some(slot)
                } else {
                    None
                }
            }
        };
        // The dropped connection (if any) closes here, outside the lock.
        let mut st = lock(&self.inner.state);
        match keep {
            Some(slot) => st.idle.push(slot),
            None => st.vacant += 1,
        }
        drop(st);
        self.inner.available.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn temp_cfg(size: usize, checkout_ms: u64) -> PoolConfig {
        let dir =
            std::env::temp_dir().join(format!("portcullis-pool-{}", crate::ids::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        PoolConfig {
            path: dir.join("t.db"),
            size,
            checkout_timeout: Duration::from_millis(checkout_ms),
            busy_timeout: Duration::from_millis(2000),
            max_age: Duration::from_secs(3600),
            idle_check_after: Duration::from_secs(30),
            sync_full: true,
        }
    }

    #[test]
    fn reuse_rules_table() {
        let cfg = temp_cfg(1, 10);
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let rows = [
            // (opened ago, idle for, expected)
            (s(0), s(0), Reuse::AsIs),
            (s(100), s(29), Reuse::AsIs),
            (s(100), s(30), Reuse::Check),
            (s(3600), s(0), Reuse::Recycle),
            (s(4000), s(100), Reuse::Recycle),
        ];
        for (age, idle, want) in rows {
            let now = t0 + s(5000);
            assert_eq!(
                reuse_decision(now - age, now - idle, now, &cfg),
                want,
                "age {:?} idle {:?}",
                age,
                idle
            );
        }
    }

    #[test]
    fn every_connection_has_wal_full_sync_and_foreign_keys() {
        let pool = Pool::open(temp_cfg(2, 100)).unwrap();
        let c = pool.get().unwrap();
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        let fk: i64 = c
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!((mode.as_str(), sync, fk), ("wal", 2, 1));
    }

    #[test]
    fn exhausted_pool_answers_busy_quickly_then_recovers() {
        let pool = Pool::open(temp_cfg(1, 50)).unwrap();
        let held = pool.get().unwrap();
        let t = Instant::now();
        let second = pool.get();
        // 503 `server_busy` with `Retry-After: 1` to a client (tests/storage.rs).
        assert!(matches!(second, Err(StoreError::PoolExhausted)));
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
        assert!(t.elapsed() >= Duration::from_millis(50));
        drop(held);
        assert!(pool.get().is_ok());
    }

    #[test]
    fn a_waiter_gets_the_connection_when_it_is_returned() {
        let mut cfg = temp_cfg(1, 5000);
        cfg.size = 1;
        let pool = Pool::open(cfg).unwrap();
        let held = pool.get().unwrap();
        let p2 = pool.clone();
        let waiter = std::thread::spawn(move || p2.get().map(|_| ()).is_ok());
        std::thread::sleep(Duration::from_millis(20));
        drop(held);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn a_panic_mid_transaction_rolls_back_and_the_pool_stays_full() {
        let pool = Pool::open(temp_cfg(1, 200)).unwrap();
        pool.get()
            .unwrap()
            .execute_batch("CREATE TABLE t(x)")
            .unwrap();
        let p2 = pool.clone();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let c = p2.get().unwrap();
            c.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (1);")
                .unwrap();
            panic!("handler bug");
        }));
        assert!(r.is_err());
        let c = pool
            .get()
            .expect("the slot came back as a fresh connection");
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        assert!(c.is_autocommit());
    }

    #[test]
    fn an_open_transaction_is_rolled_back_on_return() {
        let pool = Pool::open(temp_cfg(1, 200)).unwrap();
        {
            let c = pool.get().unwrap();
            c.execute_batch("CREATE TABLE t(x); BEGIN; INSERT INTO t VALUES (1);")
                .unwrap();
        }
        let c = pool.get().unwrap();
        assert!(c.is_autocommit());
        let n: i64 = c
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
        assert_eq!(pool.idle_count(), (0, 1));
    }

    #[test]
    fn old_connections_are_recycled_and_idle_ones_checked() {
        let mut cfg = temp_cfg(1, 200);
        cfg.max_age = Duration::ZERO;
        let pool = Pool::open(cfg).unwrap();
        {
            let c = pool.get().unwrap();
            c.execute_batch("CREATE TEMP TABLE marker(x)").unwrap();
        }
        // A temp table lives only as long as its connection: gone = reopened.
        let c = pool.get().unwrap();
        assert!(c.execute_batch("SELECT * FROM marker").is_err());
        drop(c);
        let mut cfg = temp_cfg(1, 200);
        cfg.idle_check_after = Duration::ZERO;
        let pool = Pool::open(cfg).unwrap();
        pool.get()
            .unwrap()
            .execute_batch("CREATE TEMP TABLE marker(x)")
            .unwrap();
        // Checked (SELECT 1 passes) and therefore kept.
        assert!(pool
            .get()
            .unwrap()
            .execute_batch("SELECT * FROM marker")
            .is_ok());
    }
}
