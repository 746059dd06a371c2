//! Non-streaming upstream calls in flight (`Body::Deferred`). Each waits
//! on its own connection's thread, without a seat (`seats`); this bounds
//! how many wait at once (`server.max_concurrent_streams`, beyond it 503
//! `server_busy`) and lets shutdown wait for them.
//!
//! It also stops the upstream call of a client that hung up: a request for
//! a long answer (a big `max_tokens`, a slow model) would otherwise keep
//! the model generating for nobody. The waiting thread is blocked in the
//! upstream read, so a `relay-hangups` thread looks at the clients of the
//! relays that have waited longer than `HANGUP_GRACE`, every
//! `HANGUP_EVERY`, with one `poll(POLLRDHUP)` over all of them, and aborts
//! (`upstream::Abort`) the calls whose client is gone. A relay that answers
//! within the grace costs two uncontended lock operations and no system
//! call.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::upstream::Abort;

/// Relays younger than this are not looked at (most are done by then).
const HANGUP_GRACE: Duration = Duration::from_millis(250);
/// How often the clients of older relays are looked at.
const HANGUP_EVERY: Duration = Duration::from_millis(200);

#[derive(Clone)]
pub struct Relays {
    in_flight: Arc<AtomicUsize>,
    max: usize,
    watched: Arc<Mutex<Vec<Watched>>>,
    next_id: Arc<AtomicU64>,
}

/// A relay whose client may hang up.
struct Watched {
    id: u64,
    fd: i32,
    since: Instant,
    abort: Abort,
}

/// One relay counted (and watched); both end with it (also on panic).
pub struct InFlight {
    count: Arc<AtomicUsize>,
    watch: Option<(Arc<Mutex<Vec<Watched>>>, u64)>,
}

impl Relays {
    pub fn new(max: usize) -> Relays {
        Relays {
            in_flight: Arc::default(),
            max,
            watched: Arc::default(),
            next_id: Arc::default(),
        }
    }

    /// Counts one more relay, or None when `max` are in flight. With the
    /// client's socket (`client_fd`, open for as long as the `InFlight`
    /// lives), a hang-up of that client aborts `abort`.
    pub fn enter(&self, client_fd: Option<i32>, abort: &Abort) -> Option<InFlight> {
        let mut n = self.in_flight.load(Ordering::Acquire);
        loop {
            if n >= self.max {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                n,
                n + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => n = now,
            }
        }
        let watch = client_fd.map(|fd| {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            lock(&self.watched).push(Watched {
                id,
                fd,
                since: Instant::now(),
                abort: abort.clone(),
            });
            (self.watched.clone(), id)
        });
        Some(InFlight {
            count: self.in_flight.clone(),
            watch,
        })
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Starts the `relay-hangups` thread; it ends when every `Relays`
    /// clone is gone.
    pub fn start_hangup_watch(&self) -> std::io::Result<()> {
        let watched: Weak<Mutex<Vec<Watched>>> = Arc::downgrade(&self.watched);
        crate::threads::spawn("relay-hangups", move || loop {
            std::thread::sleep(HANGUP_EVERY);
            let Some(watched) = watched.upgrade() else {
                return;
            };
            abort_hung_up(&mut lock(&watched), HANGUP_GRACE);
        })
        .map(|_| ())
    }
}

fn lock(m: &Mutex<Vec<Watched>>) -> std::sync::MutexGuard<'_, Vec<Watched>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Aborts the relays older than `grace` whose client hung up. Runs under
/// the list's lock: a socket in the list is open (its relay removes it
/// before the connection can close), so the poll sees the right one.
fn abort_hung_up(watched: &mut [Watched], grace: Duration) {
    let now = Instant::now();
    let old: Vec<usize> = (0..watched.len())
        .filter(|&i| now.duration_since(watched[i].since) >= grace)
        .collect();
    if old.is_empty() {
        return;
    }
    let mut fds: Vec<libc::pollfd> = old
        .iter()
        .map(|&i| libc::pollfd {
            fd: watched[i].fd,
            events: libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    // SAFETY: valid pollfds (see above), zero timeout.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
    if n <= 0 {
        return;
    }
    let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;
    for (pfd, &i) in fds.iter().zip(&old) {
        if pfd.revents & gone != 0 && !watched[i].abort.is_aborted() {
            crate::logging::info("client gone; stopping its upstream call", &[]);
            watched[i].abort.abort();
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some((watched, id)) = self.watch.take() {
            lock(&watched).retain(|w| w.id != id);
        }
        self.count.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn relays_are_bounded_and_counted_until_dropped() {
        let relays = Relays::new(2);
        let abort = Abort::new();
        let a = relays.enter(None, &abort).unwrap();
        let _b = relays.enter(None, &abort).unwrap();
        assert!(relays.enter(None, &abort).is_none());
        drop(a);
        assert_eq!(relays.in_flight(), 1);
        assert!(relays.enter(None, &abort).is_some());
    }

    #[test]
    fn a_relay_whose_client_hung_up_is_aborted_once_past_the_grace() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server_side, _) = l.accept().unwrap();
        let relays = Relays::new(4);
        let (stays, leaves) = (Abort::new(), Abort::new());
        let other = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (other_side, _) = l.accept().unwrap();
        let _a = relays
            .enter(Some(server_side.as_raw_fd()), &leaves)
            .unwrap();
        let _b = relays.enter(Some(other_side.as_raw_fd()), &stays).unwrap();
        drop(client);
        // Within the grace nothing is looked at.
        abort_hung_up(&mut lock(&relays.watched), Duration::from_secs(3600));
        assert!(!leaves.is_aborted());
        abort_hung_up(&mut lock(&relays.watched), Duration::ZERO);
        assert!(leaves.is_aborted());
        assert!(!stays.is_aborted(), "a client still there keeps its call");
        drop(other);
        drop(_a);
        assert_eq!(
            lock(&relays.watched).len(),
            1,
            "a finished relay is no longer watched"
        );
    }
}
