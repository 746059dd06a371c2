//! Stream slots: bound concurrent SSE streams in total
//! (`max_concurrent_streams`) and per client (`max_streams_per_client`,
//! keyed by API key id, else client address). A handler takes a slot before
//! answering with a stream; the slot travels into the stream's thread and is
//! released when that thread ends (also on panic). No slot: 503
//! `server_busy`.
//!
//! The per-client map only holds clients with at least one open stream, and
//! a client slot is only taken while holding a global one, so the map never
//! has more than `max_concurrent_streams` entries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::filters::rate_limit::Identity;

/// Whose streams are counted together: the API key when the request has
/// one, else the client address (IPv6 by its /64), as the rate limiter.
pub fn client_key(ctx: &crate::http::Ctx) -> Identity {
    Identity::of(ctx)
}

/// Open streams per client (only clients with at least one).
type PerClient = Arc<Mutex<HashMap<Identity, usize>>>;

#[derive(Clone)]
pub struct StreamSlots {
    active: Arc<AtomicUsize>,
    max: usize,
    per_client: PerClient,
    max_per_client: usize,
}

/// One open stream; dropping it frees its global and per-client slot.
pub struct StreamSlot {
    active: Arc<AtomicUsize>,
    client: Option<(PerClient, Identity)>,
}

impl StreamSlots {
    pub fn new(max: usize, max_per_client: usize) -> StreamSlots {
        StreamSlots {
            active: Arc::new(AtomicUsize::new(0)),
            max,
            per_client: Arc::new(Mutex::new(HashMap::new())),
            max_per_client,
        }
    }

    /// A slot for one more stream of `client` (an API key id or a client
    /// address); None when the server or that client is at its cap.
    pub fn try_acquire(&self, client: Identity) -> Option<StreamSlot> {
        let mut slot = self.acquire_global()?;
        {
            let mut map = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(client.clone()).or_insert(0);
            if *n >= self.max_per_client {
                return None; // `slot` drops: the global slot is freed.
            }
            *n += 1;
        }
        slot.client = Some((self.per_client.clone(), client));
        Some(slot)
    }

    fn acquire_global(&self) -> Option<StreamSlot> {
        let mut cur = self.active.load(Ordering::Acquire);
        loop {
            if cur >= self.max {
                return None;
            }
            match self.active.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(StreamSlot {
                        active: self.active.clone(),
                        client: None,
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Clients with at least one open stream.
    pub fn tracked_clients(&self) -> usize {
        self.per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Some((map, client)) = self.client.take() {
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&client) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&client);
                }
            }
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Identity {
        Identity::Key(name.into())
    }

    #[test]
    fn slots_are_bounded_and_released() {
        let s = StreamSlots::new(2, 8);
        let a = s.try_acquire(key("a")).unwrap();
        let _b = s.try_acquire(key("b")).unwrap();
        assert!(s.try_acquire(key("c")).is_none());
        drop(a);
        assert_eq!(s.active(), 1);
        assert!(s.try_acquire(key("c")).is_some());
    }

    #[test]
    fn one_client_cannot_take_every_slot() {
        let s = StreamSlots::new(10, 2);
        let a1 = s.try_acquire(key("key-a")).unwrap();
        let _a2 = s.try_acquire(key("key-a")).unwrap();
        assert!(
            s.try_acquire(key("key-a")).is_none(),
            "third stream of key-a"
        );
        assert_eq!(s.active(), 2, "a refused client slot frees its global slot");
        let _b = s.try_acquire(key("key-b")).unwrap();
        drop(a1);
        assert!(s.try_acquire(key("key-a")).is_some());
    }

    #[test]
    fn idle_clients_leave_the_map() {
        let s = StreamSlots::new(10, 2);
        let slots: Vec<_> = (0..5)
            .map(|i| s.try_acquire(key(&format!("c{}", i))).unwrap())
            .collect();
        assert_eq!(s.tracked_clients(), 5);
        drop(slots);
        assert_eq!(s.tracked_clients(), 0);
        assert_eq!(s.active(), 0);
    }
}
