//! Prometheus metrics, kept in fixed arrays of atomics: recording a request
//! is a handful of relaxed atomic adds, no lock and no allocation, and
//! memory is fixed whatever the traffic.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The server layer's live gauges, read when `/metrics` renders. A trait so
/// the arrow points from the server to here, not from the app up to the
/// server.
pub trait ServerGauges: Send + Sync {
    fn open_connections(&self) -> usize;
    fn queue_depth(&self) -> usize;
    fn busy_workers(&self) -> usize;
}

use crate::router::{Route, ROUTES};

/// Status codes we count individually; anything else is "other".
const STATUSES: &[u16] = &[
    200, 201, 204, 400, 401, 403, 404, 405, 408, 413, 414, 415, 421, 429, 431, 500, 502, 503, 504,
];
const OTHER_STATUS: usize = STATUSES.len();
const N_STATUS: usize = STATUSES.len() + 1;
/// Routes plus one slot for "no route" (404s, refused before routing).
const N_ROUTE: usize = ROUTES.len() + 1;
/// Latency histogram bucket bounds, seconds.
const BUCKETS_S: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Upstream failure kinds, by contract code.
pub const UPSTREAM_KINDS: &[&str] = &["upstream_unavailable", "upstream_error", "upstream_timeout"];
/// Authentication refusals, by reason (`filters::auth`). `too_many_failures`
/// is answered before any key lookup; the others after the shape check or
/// the lookup.
pub const AUTH_REFUSALS: &[&str] = &[
    "missing",
    "malformed",
    "unknown",
    "revoked",
    "too_many_failures",
];

pub struct Metrics {
    requests: Vec<AtomicU64>, // N_ROUTE * N_STATUS
    latency_buckets: Vec<AtomicU64>,
    latency_sum_us: AtomicU64,
    latency_count: AtomicU64,
    rate_limited: [AtomicU64; 2],
    upstream_errors: [AtomicU64; 3],
    auth_refusals: [AtomicU64; 5],
    queue_full: AtomicU64,
}

fn route_index(route: Option<Route>) -> usize {
    route.map(|r| r as usize).unwrap_or(ROUTES.len())
}

fn status_index(status: u16) -> usize {
    STATUSES
        .iter()
        .position(|s| *s == status)
        .unwrap_or(OTHER_STATUS)
}

fn zeros(n: usize) -> Vec<AtomicU64> {
    (0..n).map(|_| AtomicU64::new(0)).collect()
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            requests: zeros(N_ROUTE * N_STATUS),
            latency_buckets: zeros(BUCKETS_S.len()),
            latency_sum_us: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            rate_limited: Default::default(),
            upstream_errors: Default::default(),
            auth_refusals: Default::default(),
            queue_full: AtomicU64::new(0),
        }
    }

    /// Records one finished request (and, from its error code, rate-limit
    /// refusals and upstream failures).
    pub fn record(
        &self,
        route: Option<Route>,
        status: u16,
        elapsed: Duration,
        error_code: Option<crate::error::Code>,
    ) {
        self.requests[route_index(route) * N_STATUS + status_index(status)].fetch_add(1, Relaxed);
        let s = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS_S.iter().position(|b| s <= *b) {
            self.latency_buckets[i].fetch_add(1, Relaxed);
        }
        self.latency_sum_us
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
        match error_code {
            Some(crate::error::Code::RateLimited) => {
                let class =
                    usize::from(route.map(|r| r.class()) != Some(crate::router::RouteClass::Chat));
                self.rate_limited[class].fetch_add(1, Relaxed);
            }
            Some(code) => self.record_upstream_error(code.as_str()),
            None => {}
        }
    }

    /// An upstream failure that did not become the response status (a
    /// stream that failed after it began).
    pub fn record_upstream_error(&self, code: &str) {
        if let Some(i) = UPSTREAM_KINDS.iter().position(|k| *k == code) {
            self.upstream_errors[i].fetch_add(1, Relaxed);
        }
    }

    /// One authentication refusal; `reason` is one of `AUTH_REFUSALS`.
    pub fn record_auth_refusal(&self, reason: &str) {
        if let Some(i) = AUTH_REFUSALS.iter().position(|r| *r == reason) {
            self.auth_refusals[i].fetch_add(1, Relaxed);
        }
    }

    pub fn record_queue_full(&self) {
        self.queue_full.fetch_add(1, Relaxed);
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, gauges: &Gauges) -> String {
        let mut o = String::with_capacity(8192);
        o.push_str("# HELP portcullis_requests_total Requests answered, by route and status.\n");
        o.push_str("# TYPE portcullis_requests_total counter\n");
        for r in 0..N_ROUTE {
            let route = ROUTES.get(r).map(|d| d.path).unwrap_or("none");
            let method = ROUTES.get(r).map(|d| d.method.as_str()).unwrap_or("");
            for s in 0..N_STATUS {
                let n = self.requests[r * N_STATUS + s].load(Relaxed);
                if n == 0 {
                    continue;
                }
                let status = STATUSES
                    .get(s)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "other".into());
                let _ = writeln!(
                    o,
                    "portcullis_requests_total{{method=\"{}\",route=\"{}\",status=\"{}\"}} {}",
                    method, route, status, n
                );
            }
        }
        o.push_str(
            "# HELP portcullis_request_duration_seconds Time from request to response head.\n",
        );
        o.push_str("# TYPE portcullis_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (i, b) in BUCKETS_S.iter().enumerate() {
            cumulative += self.latency_buckets[i].load(Relaxed);
            let _ = writeln!(
                o,
                "portcullis_request_duration_seconds_bucket{{le=\"{}\"}} {}",
                b, cumulative
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            o,
            "portcullis_request_duration_seconds_bucket{{le=\"+Inf\"}} {}",
            count
        );
        let _ = writeln!(
            o,
            "portcullis_request_duration_seconds_sum {}",
            self.latency_sum_us.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(o, "portcullis_request_duration_seconds_count {}", count);
        o.push_str("# HELP portcullis_rate_limited_total Requests refused by the rate limiter, by class.\n");
        o.push_str("# TYPE portcullis_rate_limited_total counter\n");
        for (i, class) in ["chat", "other"].iter().enumerate() {
            let _ = writeln!(
                o,
                "portcullis_rate_limited_total{{class=\"{}\"}} {}",
                class,
                self.rate_limited[i].load(Relaxed)
            );
        }
        o.push_str("# HELP portcullis_upstream_errors_total Upstream failures, by kind.\n");
        o.push_str("# TYPE portcullis_upstream_errors_total counter\n");
        for (i, kind) in UPSTREAM_KINDS.iter().enumerate() {
            let _ = writeln!(
                o,
                "portcullis_upstream_errors_total{{kind=\"{}\"}} {}",
                kind,
                self.upstream_errors[i].load(Relaxed)
            );
        }
        o.push_str(
            "# HELP portcullis_auth_refusals_total Requests refused by authentication, by reason.\n",
        );
        o.push_str("# TYPE portcullis_auth_refusals_total counter\n");
        for (i, reason) in AUTH_REFUSALS.iter().enumerate() {
            let _ = writeln!(
                o,
                "portcullis_auth_refusals_total{{reason=\"{}\"}} {}",
                reason,
                self.auth_refusals[i].load(Relaxed)
            );
        }
        let counters = [
            (
                "portcullis_queue_full_total",
                "Requests answered 503 because the work queue was full.",
                self.queue_full.load(Relaxed),
            ),
            (
                "portcullis_db_pool_waits_total",
                "Database checkouts that had to wait for a connection.",
                gauges.pool_waits,
            ),
            (
                "portcullis_db_pool_timeouts_total",
                "Database checkouts that timed out (503).",
                gauges.pool_timeouts,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                o,
                "# HELP {} {}\n# TYPE {} counter\n{} {}",
                name, help, name, name, v
            );
        }
        let g = [
            (
                "portcullis_active_streams",
                "Open SSE streams.",
                gauges.active_streams,
            ),
            (
                "portcullis_queue_depth",
                "Requests waiting for a seat (server.workers busy).",
                gauges.queue_depth,
            ),
            (
                "portcullis_busy_workers",
                "Requests holding a seat (at most server.workers).",
                gauges.busy_workers,
            ),
            (
                "portcullis_db_writes_in_flight",
                "Writes waiting for the writer, running, or waiting for their commit.",
                gauges.writes_in_flight,
            ),
            (
                "portcullis_open_connections",
                "Open client connections.",
                gauges.open_connections,
            ),
            (
                "portcullis_uptime_seconds",
                "Seconds since start.",
                gauges.uptime_s,
            ),
        ];
        for (name, help, v) in g {
            let _ = writeln!(
                o,
                "# HELP {} {}\n# TYPE {} gauge\n{} {}",
                name, help, name, name, v
            );
        }
        o
    }
}

/// Point-in-time values read at scrape time.
#[derive(Default)]
pub struct Gauges {
    pub active_streams: u64,
    pub queue_depth: u64,
    pub busy_workers: u64,
    pub open_connections: u64,
    pub uptime_s: u64,
    pub pool_waits: u64,
    pub pool_timeouts: u64,
    pub writes_in_flight: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_renders_prometheus_text() {
        let m = Metrics::new();
        m.record(Some(Route::Health), 200, Duration::from_millis(2), None);
        m.record(
            Some(Route::Chat),
            429,
            Duration::from_millis(1),
            Some(crate::error::Code::RateLimited),
        );
        m.record(
            Some(Route::Chat),
            504,
            Duration::from_secs(3),
            Some(crate::error::Code::UpstreamTimeout),
        );
        m.record(
            None,
            404,
            Duration::from_micros(10),
            Some(crate::error::Code::NotFound),
        );
        m.record_auth_refusal("unknown");
        m.record_auth_refusal("too_many_failures");
        m.record_auth_refusal("not-a-reason");
        let text = m.render(&Gauges {
            active_streams: 2,
            ..Default::default()
        });
        assert!(
            text.contains(
                "portcullis_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1"
            ),
            "{}",
            text
        );
        assert!(text.contains("route=\"none\",status=\"404\"} 1"));
        assert!(text.contains("portcullis_rate_limited_total{class=\"chat\"} 1"));
        assert!(text.contains("portcullis_upstream_errors_total{kind=\"upstream_timeout\"} 1"));
        assert!(text.contains("portcullis_request_duration_seconds_bucket{le=\"+Inf\"} 4"));
        assert!(text.contains("portcullis_request_duration_seconds_bucket{le=\"0.005\"} 3"));
        assert!(text.contains("portcullis_active_streams 2"));
        assert!(text.contains("portcullis_auth_refusals_total{reason=\"unknown\"} 1"));
        assert!(text.contains("portcullis_auth_refusals_total{reason=\"too_many_failures\"} 1"));
        assert!(text.contains("portcullis_auth_refusals_total{reason=\"missing\"} 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap();
            assert!(value.parse::<f64>().is_ok(), "bad sample line {:?}", line);
        }
    }
}
