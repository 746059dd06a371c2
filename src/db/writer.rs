//! The one writer of the process: writes take turns in memory and the
//! writes that queue up while one commits share the next commit.
//!
//! Why: five pooled connections each running `BEGIN IMMEDIATE` met inside
//! SQLite, whose busy handler sleeps the losers 1, 2, 5 ... 100 ms (a p99
//! near a second at 32 writers), and every write paid its own fsync. Here
//! every write runs on one dedicated connection, one at a time, each inside
//! its own savepoint of an open transaction; the write that finds nobody
//! waiting behind it (or a full batch) commits the whole batch, and each
//! caller returns only once the commit that holds its write is durable
//! (`database.synchronous`). A failed write rolls back its own savepoint
//! only. SQLite's busy timeout is left for other processes (the CLI).
//!
//! Turns are handed over in arrival order, waking only the next caller:
//! with a shared condition variable every release woke every waiter, most
//! of them only to sleep again (at 32 writers, hundreds of wake-ups per
//! batch on two cores, which made batches slow and the tail long).
//!
//! Liveness: a batch is never left open. Whoever finds it open with nobody
//! running a write and nobody queued commits it: the last runner, a waiter
//! giving up, or a member waiting for its commit.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::StoreError;

/// Most writes one commit holds (bounds a batch's latency).
const MAX_BATCH: usize = 64;

pub struct Writer {
    state: Mutex<State>,
    changed: Condvar,
    /// How long a caller waits for its turn (then `PoolExhausted`).
    wait: Duration,
    /// Callers inside `write` (metrics).
    in_flight: std::sync::atomic::AtomicUsize,
}

struct State {
    /// The connection, when nobody is using it.
    conn: Option<Connection>,
    /// Someone holds `conn` (running a write or a commit), or it was
    /// handed to the caller in `handed`, who has not taken it yet.
    busy: bool,
    /// Callers waiting for their turn, first come first served.
    line: VecDeque<Waiter>,
    /// The ticket of the caller the connection was handed to.
    handed: Option<u64>,
    next_ticket: u64,
    /// The open batch's number and how many writes it holds.
    open: Option<(u64, usize)>,
    next_batch: u64,
    /// Highest batch whose commit finished, and the last batch that failed.
    settled: u64,
    failed: Option<(u64, StoreError)>,
}

struct Waiter {
    ticket: u64,
    thread: std::thread::Thread,
}

impl State {
    /// Callers about to run a write (in line, or handed the connection).
    fn queued(&self) -> usize {
        self.line.len() + usize::from(self.handed.is_some())
    }
}

impl Writer {
    pub fn new(conn: Connection, wait: Duration) -> Writer {
        Writer {
            state: Mutex::new(State {
                conn: Some(conn),
                busy: false,
                line: VecDeque::new(),
                handed: None,
                next_ticket: 0,
                open: None,
                next_batch: 1,
                settled: 0,
                failed: None,
            }),
            changed: Condvar::new(),
            wait,
            in_flight: Default::default(),
        }
    }

    /// Runs `f` on the writer's connection while nobody writes (start-up
    /// settings); None when a write holds it.
    pub fn with_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> Option<T> {
        let st = self.lock();
        if st.busy {
            return None;
        }
        st.conn.as_ref().map(f)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` as one write (see the module doc) and returns once it is
    /// committed durably, or with its error (nothing of it kept).
    pub fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        use std::sync::atomic::Ordering::AcqRel;
        struct Counted<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Counted<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, AcqRel);
            }
        }
        self.in_flight.fetch_add(1, AcqRel);
        let _counted = Counted(&self.in_flight);
        self.write_counted(f)
    }

    /// Callers inside `write`: waiting for their turn, running, or waiting
    /// for their commit.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    fn write_counted<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let deadline = Instant::now() + self.wait;
        // 1. Wait for the connection: take it when nobody holds it, else
        // line up and sleep until it is handed over (or the wait is over).
        let mut st = self.lock();
        if st.busy {
            let ticket = st.next_ticket;
            st.next_ticket += 1;
            st.line.push_back(Waiter {
                ticket,
                thread: std::thread::current(),
            });
            loop {
                if st.handed == Some(ticket) {
                    st.handed = None;
                    break;
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    st.line.retain(|w| w.ticket != ticket);
                    self.finish_orphan(st);
                    return Err(StoreError::PoolExhausted);
                }
                drop(st);
                std::thread::park_timeout(left);
                st = self.lock();
            }
        }
        st.busy = true;
        let conn = st
            .conn
            .take()
            .expect("the connection is home when it is handed over or free");
        let (batch, begin) = match st.open {
            Some((b, n)) => {
                st.open = Some((b, n + 1));
                (b, false)
            }
            None => {
                let b = st.next_batch;
                st.next_batch += 1;
                st.open = Some((b, 1));
                (b, true)
            }
        };
        drop(st);

        // 2. Run the write in its own savepoint, without the lock.
        let ran = run(&conn, begin, f);
        let mut st = self.lock();
        let result = match ran {
            Ok(r) => r,
            Err(fatal) => {
                // BEGIN or a savepoint failed: the batch is lost as a whole.
                let _ = conn.execute_batch("ROLLBACK");
                st.open = None;
                st.failed = Some((batch, fatal.clone()));
                st.settled = st.settled.max(batch);
                self.release(st, conn, true);
                return Err(fatal);
            }
        };

        // 3. Commit now unless someone is queued to join this batch.
        let full = st.open.is_some_and(|(_, n)| n >= MAX_BATCH);
        if st.queued() == 0 || full {
            drop(st);
            let committed = commit(&conn);
            let mut st = self.lock();
            settle(&mut st, batch, &committed);
            self.release(st, conn, true);
            return committed.and(result);
        }
        self.release(st, conn, false);
        // Failed: rolled back to its savepoint, nothing of it awaits a commit.
        let result = Ok(result?);

        // 4. Wait for the commit that holds this write.
        let mut st = self.lock();
        let settle_deadline = deadline.max(Instant::now() + self.wait);
        loop {
            if st.settled >= batch {
                return match &st.failed {
                    Some((b, e)) if *b == batch => Err(e.clone()),
                    _ => result,
                };
            }
            if st.open.is_some() && !st.busy && st.queued() == 0 {
                // Nobody else will commit it: this member does.
                st = self.commit_open(st);
                continue;
            }
            let left = settle_deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Still queued behind other writes: unknown, not acknowledged.
                return Err(StoreError::PoolExhausted);
            }
            st = self
                .changed
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Puts the connection back and hands it to the next caller in line,
    /// waking just that one. Members waiting for their commit are woken
    /// when a batch settled (`settled`) or when nobody holds the connection
    /// any more (one of them may have to commit an orphaned batch).
    fn release(&self, mut st: MutexGuard<'_, State>, conn: Connection, settled: bool) {
        st.conn = Some(conn);
        match st.line.pop_front() {
            Some(next) => {
                st.handed = Some(next.ticket);
                next.thread.unpark();
            }
            None => st.busy = false,
        }
        let wake_members = settled || !st.busy;
        drop(st);
        if wake_members {
            self.changed.notify_all();
        }
    }

    /// Commits the open batch when nobody else is about to (a waiter that
    /// gives up must not leave its predecessors' writes uncommitted).
    fn finish_orphan(&self, st: MutexGuard<'_, State>) {
        if st.open.is_some() && !st.busy && st.queued() == 0 {
            drop(self.commit_open(st));
        } else {
            drop(st);
            self.changed.notify_all();
        }
    }

    /// Commits the open batch; `st` shows it open, nobody busy.
    fn commit_open<'a>(&'a self, mut st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let Some((batch, _)) = st.open else { return st };
        st.busy = true;
        let conn = st
            .conn
            .take()
            .expect("the connection is home when nobody is busy");
        drop(st);
        let committed = commit(&conn);
        let mut st = self.lock();
        settle(&mut st, batch, &committed);
        self.release(st, conn, true);
        self.lock()
    }
}

/// BEGIN when the batch is new, then `f` inside a savepoint: released when
/// `f` succeeds, rolled back when it fails or panics. The outer error is
/// for failures of the transaction itself (the batch is lost).
fn run<T>(
    conn: &Connection,
    begin: bool,
    f: impl FnOnce(&Connection) -> Result<T, StoreError>,
) -> Result<Result<T, StoreError>, StoreError> {
    if begin {
        conn.execute_batch("BEGIN IMMEDIATE")?;
    }
    conn.execute_batch("SAVEPOINT write")?;
    let out = match catch_unwind(AssertUnwindSafe(|| f(conn))) {
        Ok(out) => out,
        Err(_) => Err(StoreError::internal("a write panicked")),
    };
    if out.is_err() {
        conn.execute_batch("ROLLBACK TO write")?;
    }
    conn.execute_batch("RELEASE write")?;
    Ok(out)
}

fn commit(conn: &Connection) -> Result<(), StoreError> {
    match conn.execute_batch("COMMIT") {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e.into())
        }
    }
}

fn settle(st: &mut State, batch: u64, committed: &Result<(), StoreError>) {
    st.open = None;
    st.settled = st.settled.max(batch);
    if let Err(e) = committed {
        st.failed = Some((batch, e.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn writer() -> (Arc<Writer>, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!(
            "portcullis-writer-{}.db",
            crate::ids::random_hex(6)
        ));
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t (v INTEGER NOT NULL UNIQUE);")
            .unwrap();
        (Arc::new(Writer::new(conn, Duration::from_secs(5))), path)
    }

    /// One write of one row.
    fn insert(w: &Writer, v: i64) -> Result<(), StoreError> {
        w.write(|c| {
            c.execute("INSERT INTO t VALUES (?1)", [v])?;
            Ok(())
        })
    }

    fn count(path: &std::path::Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn concurrent_writes_all_commit_and_a_failed_one_keeps_nothing() {
        let (w, path) = writer();
        let threads: Vec<_> = (0..32)
            .map(|i| {
                let w = w.clone();
                std::thread::spawn(move || {
                    w.write(|c| {
                        c.execute("INSERT INTO t VALUES (?1)", [i])?;
                        Ok(i)
                    })
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().unwrap().is_ok());
        }
        // A duplicate fails alone; a later write still commits.
        assert!(w
            .write(|c| {
                c.execute("INSERT INTO t VALUES (1000)", [])?;
                c.execute("INSERT INTO t VALUES (1)", [])?;
                Ok(())
            })
            .is_err());
        assert!(insert(&w, 2000).is_ok());
        // Every acknowledged write is visible to another connection.
        assert_eq!(count(&path), 33);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_panicking_write_rolls_back_and_the_writer_lives_on() {
        let (w, path) = writer();
        let r: Result<(), StoreError> = w.write(|c| {
            c.execute("INSERT INTO t VALUES (7)", [])?;
            panic!("boom")
        });
        assert!(r.is_err());
        assert!(insert(&w, 8).is_ok());
        assert_eq!(count(&path), 1);
        let _ = std::fs::remove_file(&path);
    }
}
