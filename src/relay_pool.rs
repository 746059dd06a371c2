//! Threads for work that waits on the upstream without holding a worker:
//! non-streaming relays (`Body::Deferred`). The pool grows on demand up to
//! its maximum and keeps idle threads for reuse (a thread start per relay
//! cost ~40 µs), ending them after `IDLE_EXIT` so an idle server stays
//! small. A caller first reserves a thread (`try_reserve`); when every
//! thread is busy there is none and it answers 503 `server_busy` at once:
//! memory never grows with load.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Idle threads end after this.
const IDLE_EXIT: Duration = Duration::from_secs(30);

struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
    /// Tickets promised an idle thread but not yet run.
    reserved: usize,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    max: usize,
    stack: usize,
    /// Jobs handed over and not finished (shutdown waits for them).
    in_flight: std::sync::atomic::AtomicUsize,
}

#[derive(Clone)]
pub struct RelayPool {
    shared: Arc<Shared>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RelayPool {
    pub fn new(max: usize, stack: usize) -> RelayPool {
        RelayPool {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    queue: VecDeque::new(),
                    threads: 0,
                    idle: 0,
                    reserved: 0,
                }),
                wake: Condvar::new(),
                max,
                stack,
                in_flight: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// Reserves a thread for one job: an idle one, or the right to start a
    /// new one below the maximum. None when all `max` threads are busy.
    pub fn try_reserve(&self) -> Option<Ticket> {
        let mut st = lock(&self.shared.state);
        if st.queue.len() + st.reserved < st.idle {
            st.reserved += 1;
            return Some(Ticket {
                pool: self.clone(),
                spawn: false,
                used: false,
            });
        }
        if st.threads >= self.shared.max {
            return None;
        }
        st.threads += 1;
        Some(Ticket {
            pool: self.clone(),
            spawn: true,
            used: false,
        })
    }

    /// Jobs handed over and not yet finished.
    pub fn in_flight(&self) -> usize {
        self.shared
            .in_flight
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Threads running or idle (metrics, tests).
    pub fn threads(&self) -> usize {
        lock(&self.shared.state).threads
    }
}

/// A reserved thread; `run` hands it the job. Dropped unused, the
/// reservation is released.
pub struct Ticket {
    pool: RelayPool,
    spawn: bool,
    used: bool,
}

impl Ticket {
    pub fn run(mut self, job: Job) {
        self.used = true;
        let shared = self.pool.shared.clone();
        // Counted until the job ends, also by panic (the guard's Drop).
        struct Done(Arc<Shared>);
        impl Drop for Done {
            fn drop(&mut self) {
                self.0
                    .in_flight
                    .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            }
        }
        shared
            .in_flight
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let done = Done(shared.clone());
        let job: Job = Box::new(move || {
            let _done = done;
            job()
        });
        if !self.spawn {
            let mut st = lock(&shared.state);
            st.reserved -= 1;
            st.queue.push_back(job);
            drop(st);
            shared.wake.notify_one();
            return;
        }
        let for_thread = shared.clone();
        let job = Arc::new(Mutex::new(Some(job)));
        let for_spawn = job.clone();
        let spawned = std::thread::Builder::new()
            .name("relay".into())
            .stack_size(shared.stack)
            .spawn(move || {
                let first = for_spawn.lock().unwrap_or_else(|e| e.into_inner()).take();
                run(for_thread, first)
            });
        if spawned.is_err() {
            // No thread could be started: run it here rather than lose it.
            lock(&shared.state).threads -= 1;
            if let Some(j) = job.lock().unwrap_or_else(|e| e.into_inner()).take() {
                j();
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.used {
            let mut st = lock(&self.pool.shared.state);
            if self.spawn {
                st.threads -= 1;
            } else {
                st.reserved -= 1;
            }
        }
    }
}

fn run(shared: Arc<Shared>, first: Option<Job>) {
    // A panicking job must not shrink the pool's count wrongly.
    struct Exit(Arc<Shared>);
    impl Drop for Exit {
        fn drop(&mut self) {
            lock(&self.0.state).threads -= 1;
        }
    }
    let _exit = Exit(shared.clone());
    if let Some(first) = first {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(first));
    }
    loop {
        let job = {
            let mut st = lock(&shared.state);
            loop {
                if let Some(j) = st.queue.pop_front() {
                    break j;
                }
                st.idle += 1;
                let (s, res) = shared
                    .wake
                    .wait_timeout(st, IDLE_EXIT)
                    .unwrap_or_else(|e| e.into_inner());
                st = s;
                st.idle -= 1;
                if res.timed_out() && st.queue.is_empty() {
                    return;
                }
            }
        };
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;

    fn execute(pool: &RelayPool, job: Job) -> bool {
        match pool.try_reserve() {
            Some(t) => {
                t.run(job);
                true
            }
            None => false,
        }
    }

    #[test]
    fn runs_jobs_reuses_threads_and_refuses_beyond_max() {
        let pool = RelayPool::new(2, 256 * 1024);
        let (tx, rx) = channel();
        for i in 0..2 {
            let tx = tx.clone();
            assert!(execute(&pool, Box::new(move || tx.send(i).unwrap())));
        }
        let mut got: Vec<i32> = (0..2).map(|_| rx.recv().unwrap()).collect();
        got.sort();
        assert_eq!(got, [0, 1]);
        // Both threads busy: a third reservation is refused.
        let (block_tx, block_rx) = channel::<()>();
        let block_rx = Arc::new(Mutex::new(block_rx));
        let (started_tx, started_rx) = channel();
        for _ in 0..2 {
            let (b, s) = (block_rx.clone(), started_tx.clone());
            let ok = (0..400).any(|_| {
                let (b, s) = (b.clone(), s.clone());
                let r = execute(
                    &pool,
                    Box::new(move || {
                        s.send(()).unwrap();
                        let _ = b.lock().unwrap().recv();
                    }),
                );
                if !r {
                    std::thread::sleep(Duration::from_millis(5));
                }
                r
            });
            assert!(ok);
        }
        started_rx.recv().unwrap();
        started_rx.recv().unwrap();
        assert!(pool.try_reserve().is_none());
        assert_eq!(pool.threads(), 2);
        assert_eq!(pool.in_flight(), 2);
        drop(block_tx);
        let drained = (0..400).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            pool.in_flight() == 0
        });
        assert!(drained, "in-flight count returns to zero");
    }

    #[test]
    fn unused_tickets_release_their_reservation_and_panics_keep_the_pool() {
        let pool = RelayPool::new(1, 256 * 1024);
        drop(pool.try_reserve().unwrap());
        assert_eq!(pool.threads(), 0);
        assert!(execute(&pool, Box::new(|| panic!("job panics"))));
        let (tx, rx) = channel();
        let ok = (0..400).any(|_| {
            let tx = tx.clone();
            let r = execute(&pool, Box::new(move || tx.send(()).unwrap()));
            if !r {
                std::thread::sleep(Duration::from_millis(5));
            }
            r
        });
        assert!(ok);
        rx.recv().unwrap();
    }
}
