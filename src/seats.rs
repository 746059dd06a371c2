//! Turns to run the filter chain and a handler: at most `server.workers`
//! requests at once, the rest waiting in line (at most
//! `server.queue_capacity`, else 503 `server_busy` at once), first come
//! first served.
//!
//! A request runs on its connection's own thread once it has a seat, so a
//! request crosses no thread on its way in or out (two wake-ups of another
//! thread per request were most of what a relayed request cost on a quiet
//! server: BENCHMARKS.md). Waiting on the model gives the seat up first
//! (`Seat::release`): the seats bound CPU and database work, never time
//! spent waiting on the upstream.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

thread_local! {
    /// The seat this thread holds, if any (one request per thread at a
    /// time), so that a wait deep in a handler can give it back early
    /// (`give_back_for_io`).
    static HELD: Cell<Option<*const Seats>> = const { Cell::new(None) };
}

/// Gives back the seat this thread holds, if any, before a wait that is
/// not CPU or database work of ours: the writer's queue and its durable
/// commit (`db::Db::write`; the writer serialises writes by itself, and a
/// seat held through an fsync only kept other writes out of the batch).
/// The request finishes without a seat; its remaining work is small.
pub fn give_back_for_io() {
    if let Some(seats) = HELD.with(|h| h.take()) {
        // SAFETY: set by `Seats::take` on this thread from a live `&Seats`
        // whose `Seat` (which borrows it) has not been dropped yet: `Seat`
        // clears HELD when it is released or dropped.
        unsafe { (*seats).give_back() };
    }
}

pub struct Seats {
    state: Mutex<State>,
    max: usize,
    line_cap: usize,
}

struct State {
    taken: usize,
    line: VecDeque<Arc<Waiter>>,
}

/// One request in line; its seat is handed over directly (no stampede,
/// strictly in order).
struct Waiter {
    granted: Mutex<bool>,
    cv: Condvar,
}

/// A seat held; given back when dropped (also on panic) or by `release`.
pub struct Seat<'a> {
    seats: Option<&'a Seats>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Seats {
    pub fn new(max: usize, line_cap: usize) -> Seats {
        Seats {
            state: Mutex::new(State {
                taken: 0,
                line: VecDeque::new(),
            }),
            max: max.max(1),
            line_cap,
        }
    }

    /// A seat at once, or after those in line before us; None when the
    /// line is full.
    pub fn take(&self) -> Option<Seat<'_>> {
        let waiter = {
            let mut st = lock(&self.state);
            if st.taken < self.max && st.line.is_empty() {
                st.taken += 1;
                HELD.with(|h| h.set(Some(self as *const Seats)));
                return Some(Seat { seats: Some(self) });
            }
            if st.line.len() >= self.line_cap {
                return None;
            }
            let w = Arc::new(Waiter {
                granted: Mutex::new(false),
                cv: Condvar::new(),
            });
            st.line.push_back(w.clone());
            w
        };
        let mut granted = lock(&waiter.granted);
        while !*granted {
            granted = waiter.cv.wait(granted).unwrap_or_else(|e| e.into_inner());
        }
        HELD.with(|h| h.set(Some(self as *const Seats)));
        Some(Seat { seats: Some(self) })
    }

    fn give_back(&self) {
        let next = {
            let mut st = lock(&self.state);
            match st.line.pop_front() {
                // The seat passes straight to the first in line.
                Some(w) => w,
                None => {
                    st.taken -= 1;
                    return;
                }
            }
        };
        *lock(&next.granted) = true;
        next.cv.notify_one();
    }

    /// Seats taken (requests running).
    pub fn taken(&self) -> usize {
        lock(&self.state).taken
    }

    /// Requests waiting for a seat.
    pub fn waiting(&self) -> usize {
        lock(&self.state).line.len()
    }
}

impl Seat<'_> {
    /// Gives the seat back now (before waiting on the upstream).
    pub fn release(&mut self) {
        if let Some(seats) = self.seats.take() {
            // Given back already when `give_back_for_io` took it.
            if HELD.with(|h| h.take()).is_some() {
                seats.give_back();
            }
        }
    }
}

impl Drop for Seat<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn seats_bound_the_running_and_the_line_and_serve_in_order() {
        let seats = Arc::new(Seats::new(1, 2));
        let first = seats.take().unwrap();
        assert_eq!(seats.taken(), 1);
        let (tx, rx) = mpsc::channel();
        let mut waiting = Vec::new();
        for i in 0..2 {
            let (s, tx) = (seats.clone(), tx.clone());
            waiting.push(std::thread::spawn(move || {
                let _seat = s.take().unwrap();
                tx.send(i).unwrap();
            }));
            // In line before the next one is started.
            while seats.waiting() != i + 1 {
                std::thread::yield_now();
            }
        }
        assert!(seats.take().is_none(), "line full: refused at once");
        drop(first);
        assert_eq!(rx.recv().unwrap(), 0);
        assert_eq!(rx.recv().unwrap(), 1);
        for w in waiting {
            w.join().unwrap();
        }
        assert_eq!((seats.taken(), seats.waiting()), (0, 0));
    }

    #[test]
    fn a_seat_given_back_for_io_is_not_given_back_twice() {
        let seats = Seats::new(1, 0);
        let seat = seats.take().unwrap();
        give_back_for_io();
        assert_eq!(seats.taken(), 0);
        let other = seats.take().unwrap();
        give_back_for_io();
        drop(seat);
        assert_eq!(seats.taken(), 0);
        drop(other);
        assert_eq!(seats.taken(), 0);
        give_back_for_io();
    }

    #[test]
    fn release_is_once() {
        let seats = Seats::new(2, 0);
        let mut a = seats.take().unwrap();
        a.release();
        a.release();
        drop(a);
        assert_eq!(seats.taken(), 0);
    }
}
