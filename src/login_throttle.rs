//! Failed sign-ins, per user name and per client address: after
//! `auth.login_max_failures` failures within `auth.login_window_s`, the
//! name (or the address) gets 429 `rate_limited` with the exact
//! `Retry-After` until its oldest failure leaves the window, before any
//! password is hashed. At most `max_tracked` names and addresses are
//! remembered (the oldest entries go first), so a flood of made-up names
//! cannot grow memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct LoginThrottle {
    max_failures: usize,
    window: Duration,
    max_tracked: usize,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginThrottle {
    pub fn new(max_failures: u32, window: Duration, max_tracked: usize) -> LoginThrottle {
        LoginThrottle {
            max_failures: max_failures.max(1) as usize,
            window,
            max_tracked: max_tracked.max(1),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Instant>>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Seconds until `key` may try again, if it is over the limit at `now`.
    pub fn refused(&self, key: &str, now: Instant) -> Option<u64> {
        let mut map = self.lock();
        let q = map.get_mut(key)?;
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() < self.max_failures {
            return None;
        }
        let oldest = *q.front()?;
        let wait = self.window.saturating_sub(now.duration_since(oldest));
        Some(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
    }

    /// Counts one failure of `key` at `now`.
    pub fn failed(&self, key: &str, now: Instant) {
        let mut map = self.lock();
        if !map.contains_key(key) && map.len() >= self.max_tracked {
            // Forget whichever entry failed longest ago.
            let oldest = map
                .iter()
                .min_by_key(|(_, q)| q.back().copied())
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                map.remove(&k);
            }
        }
        let q = map.entry(key.to_string()).or_default();
        q.push_back(now);
        while q.len() > self.max_failures {
            q.pop_front();
        }
    }

    /// A success forgets the name's failures.
    pub fn succeeded(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_the_limit_until_the_oldest_failure_leaves_the_window() {
        let t = LoginThrottle::new(3, Duration::from_secs(900), 100);
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(t.refused("name:alice", t0), None);
            t.failed("name:alice", t0 + Duration::from_secs(i * 10));
        }
        let now = t0 + Duration::from_secs(30);
        assert_eq!(t.refused("name:alice", now), Some(870));
        assert_eq!(t.refused("name:bob", now), None);
        assert_eq!(t.refused("name:alice", t0 + Duration::from_secs(900)), None);
        t.succeeded("name:alice");
        assert_eq!(t.refused("name:alice", now), None);
    }

    #[test]
    fn remembers_a_bounded_number_of_keys() {
        let t = LoginThrottle::new(1, Duration::from_secs(60), 2);
        let t0 = Instant::now();
        t.failed("a", t0);
        t.failed("b", t0 + Duration::from_secs(1));
        t.failed("c", t0 + Duration::from_secs(2));
        assert_eq!(t.lock().len(), 2);
        assert_eq!(
            t.refused("a", t0 + Duration::from_secs(3)),
            None,
            "oldest forgotten"
        );
    }
}
