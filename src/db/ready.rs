//! The readiness query, bounded in time. A timer thread calls the
//! connection's interrupt handle when the bound passes; the timer is
//! cancelled and joined before the connection can go back to the pool, and
//! a connection that was interrupted is discarded rather than returned, so
//! a late interrupt can never hit the next user's query.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::{Sqlite, StoreError};

/// Why the database check failed (a short code, never internals).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadyFailure {
    /// No pooled connection came free within the bound.
    PoolExhausted,
    /// The query ran past the bound and was interrupted.
    Timeout,
    /// The query failed; the detail is for the log only.
    Error(String),
}

impl ReadyFailure {
    pub fn code(&self) -> &'static str {
        match self {
            ReadyFailure::PoolExhausted => "pool_exhausted",
            ReadyFailure::Timeout => "timeout",
            ReadyFailure::Error(_) => "error",
        }
    }
}

/// Runs `f` on `conn`, interrupting it if it runs longer than `limit`.
/// Returns its result and whether the interrupt fired. The timer thread is
/// joined before this returns.
pub fn run_bounded<T>(
    conn: &Connection,
    limit: Duration,
    f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
) -> (rusqlite::Result<T>, bool) {
    let handle = conn.get_interrupt_handle();
    let (cancel, cancelled) = mpsc::channel::<()>();
    let timer = std::thread::Builder::new()
        .name("ready-timer".into())
        .stack_size(64 * 1024)
        .spawn(move || match cancelled.recv_timeout(limit) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                handle.interrupt();
                true
            }
            _ => false,
        });
    let out = f(conn);
    drop(cancel);
    let fired = match timer {
        Ok(t) => t.join().unwrap_or(true),
        // No thread, no bound: report it rather than run unbounded next time.
        Err(_) => false,
    };
    (out, fired)
}

impl super::store::Readiness for Sqlite {
    /// Checks that the database answers a cheap query within `limit`
    /// (checkout included, itself bounded by the pool's checkout timeout:
    /// a pool that would refuse requests is not ready). Returns the latency.
    fn check_ready(&self, limit: Duration) -> Result<Duration, (ReadyFailure, Duration)> {
        let started = Instant::now();
        let conn = match self
            .pool()
            .get_within(limit.min(self.pool().checkout_timeout()))
        {
            Ok(c) => c,
            // Busy and full come from opening a replacement connection:
            // like the exhausted pool, a request would get 503 `server_busy`.
            Err(StoreError::PoolExhausted | StoreError::Busy | StoreError::DiskFull) => {
                return Err((ReadyFailure::PoolExhausted, started.elapsed()))
            }
            Err(e) => return Err((ReadyFailure::Error(e.to_string()), started.elapsed())),
        };
        let left = limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        let (result, fired) = run_bounded(&conn, left, |c| {
            c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })
        });
        if fired {
            conn.discard();
        } else {
            drop(conn);
        }
        match (result, fired) {
            (Ok(_), _) => Ok(started.elapsed()),
            (Err(_), true) => Err((ReadyFailure::Timeout, started.elapsed())),
            (Err(e), false) => Err((ReadyFailure::Error(e.to_string()), started.elapsed())),
        }
    }

    fn pool_wait_counts(&self) -> (u64, u64) {
        self.pool.wait_counts()
    }

    fn writes_in_flight(&self) -> usize {
        self.writer.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts to a billion: seconds of work for SQLite.
    const SLOW: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000000) SELECT count(*) FROM n";

    #[test]
    fn a_slow_query_is_interrupted_at_the_bound_and_the_connection_still_works() {
        let conn = Connection::open_in_memory().unwrap();
        let t = Instant::now();
        let (r, fired) = run_bounded(&conn, Duration::from_millis(50), |c| {
            c.query_row(SLOW, [], |r| r.get::<_, i64>(0))
        });
        assert!(fired);
        let e = r.unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::OperationInterrupted),
            "{}",
            e
        );
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        let one: i64 = conn.query_row("SELECT 1", [], |r| r.get(0)).unwrap();
        assert_eq!(one, 1);
    }

    #[test]
    fn a_fast_query_cancels_the_timer_so_later_queries_are_not_interrupted() {
        let conn = Connection::open_in_memory().unwrap();
        let (r, fired) = run_bounded(&conn, Duration::from_millis(30), |c| {
            c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
        });
        assert_eq!((r.unwrap(), fired), (1, false));
        // Past the old deadline, a query of 100 ms must run to its end.
        let n: i64 = conn
            .query_row(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 300000) SELECT count(*) FROM n",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 300000);
    }

    #[test]
    fn ready_check_reports_latency_and_pool_exhaustion() {
        let db = crate::db::testing::temp_db();
        assert!(db.check_ready(Duration::from_secs(1)).is_ok());
        let _a = db.sqlite().unwrap().conn().unwrap();
        let _b = db.sqlite().unwrap().conn().unwrap();
        let (why, took) = db.check_ready(Duration::from_millis(50)).unwrap_err();
        assert_eq!(why, ReadyFailure::PoolExhausted);
        assert!(took < Duration::from_secs(1));
    }
}
