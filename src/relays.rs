//! Non-streaming upstream calls in flight (`Body::Deferred`). Each waits
//! on its own connection's thread, without a seat (`seats`); this bounds
//! how many wait at once (`server.max_concurrent_streams`, beyond it 503
//! `server_busy`) and lets shutdown wait for them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct Relays {
    in_flight: Arc<AtomicUsize>,
    max: usize,
}

/// One relay counted; the count drops with it (also on panic).
pub struct InFlight(Arc<AtomicUsize>);

impl Relays {
    pub fn new(max: usize) -> Relays {
        Relays {
            in_flight: Arc::default(),
            max,
        }
    }

    /// Counts one more relay, or None when `max` are in flight.
    pub fn enter(&self) -> Option<InFlight> {
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
                Ok(_) => return Some(InFlight(self.in_flight.clone())),
                Err(now) => n = now,
            }
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relays_are_bounded_and_counted_until_dropped() {
        let relays = Relays::new(2);
        let a = relays.enter().unwrap();
        let _b = relays.enter().unwrap();
        assert!(relays.enter().is_none());
        drop(a);
        assert_eq!(relays.in_flight(), 1);
        assert!(relays.enter().is_some());
    }
}
