//! portcullis patch: limits that stock tiny_http 0.12 does not have.
//!
//! Stock tiny_http spawns one thread per connection without bound, sets no
//! socket timeouts and buffers request heads without limit (see
//! portcullis' docs/findings.md). These limits are enforced in the
//! accept loop and the head parser, before any request reaches a worker.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::Request;

/// Called on the connection's own thread when the request queue is full,
/// so the caller can answer (e.g. 503) without the request ever queueing.
pub type OverflowHandler = Arc<dyn Fn(Request) + Send + Sync + 'static>;

/// Called on the connection's own thread with each request before it is
/// queued: the embedder either serves it right there (returns `None`: no
/// hand-off to another thread, so no wake-up on the way in or out) or
/// gives it back (`Some`) to be queued for `Server::recv` as usual, e.g.
/// when its own bound on requests served at once is reached.
pub type InlineHandler = Arc<dyn Fn(Request) -> Option<Request> + Send + Sync + 'static>;

/// portcullis patch: an answer the HTTP layer writes itself (malformed or
/// oversized head, slow head or read-ahead body, connection cap). The
/// connection is closed after it.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    pub status: u16,
    /// Which rule was broken, for logs (never client input).
    pub reason: &'static str,
    pub peer: Option<SocketAddr>,
}

/// Renders a refusal as complete response bytes (status line, headers with
/// `Connection: close`, body), so the embedder's answers carry its request
/// id, security headers and error body. Runs on the connection's thread
/// (or the accept thread for the connection cap): keep it short.
pub type RefusalRenderer = Arc<dyn Fn(&Refusal) -> Vec<u8> + Send + Sync + 'static>;

/// The bare answer used without a renderer.
pub(crate) fn bare_refusal(status: u16) -> Vec<u8> {
    let reason = crate::common::StatusCode(status).default_reason_phrase();
    format!(
        "HTTP/1.1 {} {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        status, reason
    )
    .into_bytes()
}

/// Hard limits applied to every accepted connection.
#[derive(Clone)]
pub struct Limits {
    /// Open connections over this are answered 503 and closed at accept.
    pub max_connections: usize,
    /// Open connections from one IP address (IPv6: one /64) over this are
    /// answered 503 and closed at accept.
    pub max_connections_per_ip: usize,
    /// Socket read timeout: an idle or trickling client is cut after this.
    pub read_timeout: Option<Duration>,
    /// Socket write timeout: a client that stops reading is cut after this.
    pub write_timeout: Option<Duration>,
    /// Longest request line; longer answers 414 and closes.
    pub max_request_line_bytes: usize,
    /// Largest request head (request line plus headers); larger answers 431.
    pub max_head_bytes: usize,
    /// Most header lines; more answers 431.
    pub max_headers: usize,
    /// A request head must be complete this long after its first byte
    /// arrives (a trickling client cannot hold a connection forever); 408.
    pub head_timeout: Option<Duration>,
    /// Bodies declared up to this size are read on the connection's own
    /// thread before the request is queued, so a client that stalls its
    /// body holds its connection thread, never a worker.
    pub prebuffer_body_bytes: usize,
    /// A prebuffered body must arrive within this time, else the connection
    /// is closed.
    pub prebuffer_timeout: Option<Duration>,
    /// Requests waiting for a worker; beyond this `overflow` answers them.
    pub max_pending_requests: usize,
    /// Answers requests that find the queue full (default: bare 503).
    pub overflow: Option<OverflowHandler>,
    /// Renders the answers the HTTP layer writes itself (default: bare).
    pub refusal: Option<RefusalRenderer>,
    /// Serves requests on their connection's thread when it can (default:
    /// none, every request is queued).
    pub inline: Option<InlineHandler>,
}

impl Limits {
    pub(crate) fn render_refusal(&self, refusal: &Refusal) -> Vec<u8> {
        match self.refusal {
            Some(ref render) => render(refusal),
            None => bare_refusal(refusal.status),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 1024,
            max_connections_per_ip: 256,
            read_timeout: Some(Duration::from_secs(10)),
            write_timeout: Some(Duration::from_secs(10)),
            max_request_line_bytes: 16 * 1024,
            max_head_bytes: 64 * 1024,
            max_headers: 100,
            head_timeout: Some(Duration::from_secs(10)),
            prebuffer_body_bytes: 1024,
            prebuffer_timeout: Some(Duration::from_secs(30)),
            max_pending_requests: 1024,
            overflow: None,
            refusal: None,
            inline: None,
        }
    }
}

/// Counts open connections, in total and per client address.
#[derive(Default)]
pub(crate) struct ConnectionTracker {
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Held by a connection's thread; releases its slot when dropped (also on
/// panic, so a crashing connection never leaks a slot).
pub(crate) struct ConnectionSlot {
    tracker: Arc<ConnectionTracker>,
    ip: Option<IpAddr>,
}

/// The key connections are counted under: IPv4 (also IPv4-mapped IPv6) by
/// address, other IPv6 by /64, since one host usually owns a whole /64.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl ConnectionTracker {
    /// Takes a slot, or None when a limit is reached.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        limits: &Limits,
    ) -> Option<ConnectionSlot> {
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        if prev >= limits.max_connections {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let ip = ip.map(ip_key);
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= limits.max_connections_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return None;
            }
            *n += 1;
        }
        Some(ConnectionSlot {
            tracker: self.clone(),
            ip,
        })
    }

    pub(crate) fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self
                .tracker
                .per_ip
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.tracker.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_and_total_caps_hold_and_release() {
        let t = Arc::new(ConnectionTracker::default());
        let limits = Limits {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..Limits::default()
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = t.acquire(Some(a), &limits).unwrap();
        let _s2 = t.acquire(Some(a), &limits).unwrap();
        assert!(t.acquire(Some(a), &limits).is_none(), "per-ip cap");
        let _s3 = t.acquire(Some(b), &limits).unwrap();
        assert!(t.acquire(Some(b), &limits).is_none(), "total cap");
        drop(s1);
        assert_eq!(t.open(), 2);
        assert!(t.acquire(Some(a), &limits).is_some());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        let m: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(ip_key(m), "10.1.2.3".parse::<IpAddr>().unwrap());
    }
}
