//! Stream slots: a counting semaphore that bounds concurrent SSE streams
//! (`max_concurrent_streams`). A handler takes a slot before answering with
//! a stream; the slot travels into the stream's thread and is released when
//! that thread ends (also on panic). No slot: 503 `server_busy`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Clone)]
pub struct StreamSlots {
    active: Arc<AtomicUsize>,
    max: usize,
}

pub struct StreamSlot {
    active: Arc<AtomicUsize>,
}

impl StreamSlots {
    pub fn new(max: usize) -> StreamSlots {
        StreamSlots {
            active: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    pub fn try_acquire(&self) -> Option<StreamSlot> {
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
                    })
                }
                Err(now) => cur = now,
            }
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_and_released() {
        let s = StreamSlots::new(2);
        let a = s.try_acquire().unwrap();
        let _b = s.try_acquire().unwrap();
        assert!(s.try_acquire().is_none());
        drop(a);
        assert_eq!(s.active(), 1);
        assert!(s.try_acquire().is_some());
    }
}
