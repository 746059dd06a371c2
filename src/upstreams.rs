//! Several upstreams: `[upstream]` (named `default`) and each
//! `[upstream.NAME]`, chosen per call by the request's model.
//!
//! - Routing: the named upstreams whose `models` match the model (names or
//!   `prefix*` patterns), and the default when its own `models` match or
//!   when no named upstream claims the model.
//! - Balance: among the candidates, the least busy by weight (calls in
//!   flight, this one included, per unit of `weight`), not random; ties go
//!   to the heavier, then to the earlier section.
//! - Failover, only while it is safe: before the client received any byte,
//!   a refused connection, a 5xx, a 429 or a timeout (`fails_over`) moves
//!   the call to the next candidate, at most `max_attempts` tries in all.
//!   Non-streaming calls have sent the client nothing until they return;
//!   a stream fails over inside its reader thread, before `Opened`. Once a
//!   byte went out, a failure is the client's (an in-stream error event).
//!   A refusal of the request itself (4xx, `upstream_rejected`) never
//!   fails over: every upstream would refuse it alike.
//! - Ejection: `eject_after_failures` failures in a row take an upstream
//!   out for `eject_for_s`; then one call probes it (success brings it
//!   back, failure ejects it again). When every candidate is ejected the
//!   call goes to them anyway (a chance beats a certain 502). Transitions
//!   are logged; `/health/ready` and `/metrics` show the state.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{Config, UpstreamConfig};
use crate::error::ApiError;
use crate::logging;
use crate::secret::Secret;
use crate::upstream::{Attempt, StreamHandle, StreamTry, Tried, Upstream};

/// The default upstream's name (`[upstream]`) in logs, metrics, readiness.
pub const DEFAULT_NAME: &str = "default";

pub struct Upstreams {
    /// `[upstream]` first, then the named ones in file order.
    members: Vec<Arc<Member>>,
    max_attempts: usize,
    eject_after: u32,
    eject_for: Duration,
}

/// One upstream and its live state.
pub struct Member {
    pub name: String,
    pub client: Arc<Upstream>,
    weight: u64,
    /// The default serves unclaimed models too.
    is_default: bool,
    in_flight: AtomicUsize,
    failures_in_row: AtomicU32,
    /// Until when it is skipped (None: in service).
    ejected_until: Mutex<Option<Instant>>,
    /// A probe of an ejected upstream is under way.
    probing: AtomicBool,
    requests: AtomicU64,
    failures: AtomicU64,
}

/// Whether a failure before any byte reached the client moves the call to
/// the next upstream: a refused or unreachable upstream, a timeout, a 429,
/// a 5xx (a garbled 2xx too: another upstream may answer well). Not a
/// refusal of the request (4xx), nor an answer too large.
pub fn fails_over(err: &ApiError) -> bool {
    match err {
        ApiError::UpstreamUnavailable { .. }
        | ApiError::UpstreamTimeout { .. }
        | ApiError::UpstreamRateLimited { .. } => true,
        ApiError::UpstreamError { detail } => !crate::upstream::is_oversize(detail),
        _ => false,
    }
}

/// An upstream chosen for one call, not yet tried. A probe that is never
/// tried gives its probe back when dropped.
pub struct Candidate {
    member: Arc<Member>,
    group: Arc<Upstreams>,
    probe: bool,
    lease: Option<Lease>,
}

impl Candidate {
    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// Tries it: counted in flight from now until the lease drops.
    pub fn lease(mut self) -> Lease {
        self.member.in_flight.fetch_add(1, Ordering::AcqRel);
        let probe = std::mem::take(&mut self.probe);
        Lease {
            member: self.member.clone(),
            group: self.group.clone(),
            probe,
            settled: false,
        }
    }
}

impl Drop for Candidate {
    fn drop(&mut self) {
        if self.probe {
            self.member.probing.store(false, Ordering::Release);
        }
    }
}

/// A stream's attempt on one candidate (see `upstream::open_stream_tries`).
impl Attempt for Candidate {
    fn begin(&mut self) {
        let fresh = Candidate {
            member: self.member.clone(),
            group: self.group.clone(),
            probe: std::mem::take(&mut self.probe),
            lease: None,
        };
        self.lease = Some(fresh.lease());
    }

    fn settle(&mut self, outcome: Result<(), &ApiError>) {
        if let Some(l) = &mut self.lease {
            l.settle(outcome);
        }
    }
}

/// An upstream taken for one call: counted in flight until dropped; its
/// outcome is told with `settle`.
pub struct Lease {
    member: Arc<Member>,
    group: Arc<Upstreams>,
    probe: bool,
    settled: bool,
}

impl Lease {
    pub fn member(&self) -> &Member {
        &self.member
    }

    /// Records the outcome: a failure that fails over counts towards
    /// ejection; anything else (success, the request's own refusal) means
    /// the upstream works.
    pub fn settle(&mut self, outcome: Result<(), &ApiError>) {
        if self.settled {
            return;
        }
        self.settled = true;
        let m = &self.member;
        m.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Err(e) if fails_over(e) => {
                m.failures.fetch_add(1, Ordering::Relaxed);
                let n = m.failures_in_row.fetch_add(1, Ordering::AcqRel) + 1;
                let limit = self.group.eject_after;
                if self.probe || (limit > 0 && n >= limit) {
                    let mut until = lock(&m.ejected_until);
                    let first = until.is_none();
                    *until = Some(Instant::now() + self.group.eject_for);
                    drop(until);
                    if first || self.probe {
                        logging::warn(
                            "upstream ejected",
                            &[
                                ("upstream", json!(m.name)),
                                ("failures_in_a_row", json!(n)),
                                ("for_s", json!(self.group.eject_for.as_secs())),
                                ("reason", json!(e.code())),
                            ],
                        );
                    }
                }
            }
            _ => {
                m.failures_in_row.store(0, Ordering::Release);
                if lock(&m.ejected_until).take().is_some() {
                    logging::info("upstream back in service", &[("upstream", json!(m.name))]);
                }
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.member.in_flight.fetch_sub(1, Ordering::AcqRel);
        if self.probe {
            self.member.probing.store(false, Ordering::Release);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Member {
    fn new(name: &str, cfg: &UpstreamConfig, key: Option<Secret>, is_default: bool) -> Member {
        Member {
            name: name.to_string(),
            client: Arc::new(Upstream::new(cfg, key)),
            weight: cfg.weight.max(1),
            is_default,
            in_flight: AtomicUsize::new(0),
            failures_in_row: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
            probing: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    pub fn cfg(&self) -> &UpstreamConfig {
        self.client.config()
    }

    /// Ejected now (and until when).
    fn ejected(&self, now: Instant) -> Option<Instant> {
        lock(&self.ejected_until).filter(|t| *t > now)
    }

    /// Ejected once, its time is up, and no probe is under way.
    fn due_for_probe(&self, now: Instant) -> bool {
        lock(&self.ejected_until).is_some_and(|t| t <= now)
    }
}

impl Upstreams {
    /// The upstreams of `cfg`; `keys` holds each one's key by name (read
    /// from the variables their `api_key_env` names).
    pub fn new(cfg: &Config, keys: &dyn Fn(&str) -> Option<Secret>) -> Arc<Upstreams> {
        let mut members = vec![Arc::new(Member::new(
            DEFAULT_NAME,
            &cfg.upstream,
            keys(&cfg.upstream.api_key_env),
            true,
        ))];
        for n in &cfg.named_upstreams {
            members.push(Arc::new(Member::new(
                &n.name,
                &n.cfg,
                keys(&n.cfg.api_key_env),
                false,
            )));
        }
        Arc::new(Upstreams {
            members,
            max_attempts: cfg.upstream.max_attempts.max(1),
            eject_after: cfg.upstream.eject_after_failures,
            eject_for: cfg.upstream.eject_for,
        })
    }

    pub fn members(&self) -> &[Arc<Member>] {
        &self.members
    }

    /// Whether `m` is out of service now.
    pub fn is_ejected(&self, m: &Member) -> bool {
        m.ejected(Instant::now()).is_some()
    }

    /// The upstreams that serve `model`, in section order.
    fn serving(&self, model: &str) -> Vec<&Arc<Member>> {
        let named: Vec<&Arc<Member>> = self
            .members
            .iter()
            .filter(|m| !m.is_default && m.cfg().serves(model))
            .collect();
        let default = &self.members[0];
        let default_serves = default.cfg().serves(model) || named.is_empty();
        let mut out = Vec::with_capacity(named.len() + 1);
        if default_serves {
            out.push(default);
        }
        out.extend(named);
        out
    }

    /// The smallest context window among the upstreams that may answer
    /// `model` (the history must fit whichever answers).
    pub fn context_tokens(&self, model: &str) -> usize {
        self.serving(model)
            .iter()
            .map(|m| m.cfg().context_tokens)
            .min()
            .unwrap_or(self.members[0].cfg().context_tokens)
    }

    /// Candidates for one call to `model`, best first, at most `max_attempts`:
    /// in-service upstreams by load per weight, then an ejected one whose
    /// time is up (as a probe), then, only when nothing else is left, the
    /// ejected ones (soonest back first).
    pub fn candidates(self: &Arc<Self>, model: &str) -> Vec<Candidate> {
        let now = Instant::now();
        let serving = self.serving(model);
        let mut ready: Vec<&Arc<Member>> = serving
            .iter()
            .copied()
            .filter(|m| lock(&m.ejected_until).is_none())
            .collect();
        // Least busy by weight: the load each would have with this call,
        // (in_flight + 1) / weight, compared without division; on a tie the
        // heavier first, then section order (the sort is stable). The +1
        // lets weights count when nothing is in flight: an idle weight-5
        // upstream goes before an idle weight-1 one.
        ready.sort_by(|a, b| {
            let la = (a.in_flight.load(Ordering::Acquire) as u128 + 1) * b.weight as u128;
            let lb = (b.in_flight.load(Ordering::Acquire) as u128 + 1) * a.weight as u128;
            la.cmp(&lb).then(b.weight.cmp(&a.weight))
        });
        // A probe goes first: it is how an ejected upstream comes back,
        // and if it fails the call still fails over to a ready one.
        let mut order: Vec<(&Arc<Member>, bool)> = Vec::new();
        for m in serving.iter().copied() {
            if m.due_for_probe(now)
                && m.probing
                    .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                order.push((m, true));
            }
        }
        order.extend(ready.into_iter().map(|m| (m, false)));
        if order.is_empty() {
            let mut ejected: Vec<&Arc<Member>> = serving.clone();
            ejected.sort_by_key(|m| m.ejected(now));
            order.extend(ejected.into_iter().map(|m| (m, false)));
        }
        let mut chosen = Vec::new();
        for (i, (m, probe)) in order.into_iter().enumerate() {
            if i >= self.max_attempts {
                if probe {
                    m.probing.store(false, Ordering::Release);
                }
                continue;
            }
            chosen.push(Candidate {
                member: m.clone(),
                group: self.clone(),
                probe,
                lease: None,
            });
        }
        chosen
    }

    /// A non-streaming POST for `model` (see `Upstream::relay`), failing
    /// over as the module doc says; `tried` records where it went.
    pub fn relay(
        self: &Arc<Self>,
        model: &str,
        path: &str,
        body: &[u8],
        tried: &mut Tried,
    ) -> Result<Vec<u8>, ApiError> {
        self.call(model, tried, |up| up.relay(path, body))
    }

    /// `f` on the leased upstreams in turn until one does not fail over;
    /// `tried` records each attempt.
    pub fn call<T>(
        self: &Arc<Self>,
        model: &str,
        tried: &mut Tried,
        mut f: impl FnMut(&Upstream) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut last = None;
        for candidate in self.candidates(model) {
            let mut lease = candidate.lease();
            tried.begin(&lease.member.name);
            let started = std::time::Instant::now();
            let r = f(&lease.member.client);
            if crate::upstream::scope_aborted() {
                // The client left (`relays`): no next upstream, and this
                // failure is not the upstream's.
                return r;
            }
            lease.settle(r.as_ref().map(|_| ()));
            match r {
                Err(e) if fails_over(&e) => {
                    tried.failed(&e, started);
                    logging::info(
                        "upstream failed before answering; trying the next",
                        &[
                            ("upstream", json!(lease.member.name)),
                            ("code", json!(e.code())),
                        ],
                    );
                    last = Some(e);
                }
                other => return other,
            }
        }
        // The last failure is the call's own outcome, not an attempt it
        // moved on from.
        if last.is_some() {
            tried.failed.pop();
        }
        Err(last.unwrap_or_else(|| ApiError::internal("no upstream serves this model")))
    }

    /// A streamed POST for `model`: the reader thread fails over before the
    /// stream opens (see `upstream::open_stream_tries`).
    pub fn open_stream(
        self: &Arc<Self>,
        model: &str,
        path: &str,
        body: Vec<u8>,
        request_id: &str,
    ) -> Result<StreamHandle, ApiError> {
        let tries = self
            .candidates(model)
            .into_iter()
            .map(|c| StreamTry {
                name: c.member.name.clone(),
                upstream: c.member.client.clone(),
                attempt: Box::new(c),
            })
            .collect();
        crate::upstream::open_stream_tries(tries, path, body, request_id, fails_over)
    }

    /// How long a handler waits for a stream's head: the longest of the
    /// upstreams' (a failover may need it).
    pub fn head_grace(&self) -> Duration {
        self.members
            .iter()
            .map(|m| m.client.head_grace())
            .max()
            .unwrap_or_default()
    }

    /// Each upstream by name for `/health/ready`:
    /// `{"status","latency_ms","reason"?,"ejected"?}`.
    /// The checks run side by side, so the answer takes the longest one,
    /// not their sum.
    pub fn readiness(&self, wait: Duration) -> serde_json::Map<String, Value> {
        let checks: Vec<Value> = std::thread::scope(|s| {
            let running: Vec<_> = self
                .members
                .iter()
                .map(|m| s.spawn(move || m.client.reachability(wait)))
                .collect();
            running
                .into_iter()
                .map(|h| h.join().unwrap_or(Value::Null))
                .collect()
        });
        let now = Instant::now();
        let mut out = serde_json::Map::new();
        for (m, mut v) in self.members.iter().zip(checks) {
            if let Some(until) = m.ejected(now) {
                v["ejected"] = json!(true);
                v["ejected_for_s"] = json!(until.duration_since(now).as_secs() + 1);
            }
            out.insert(m.name.clone(), v);
        }
        out
    }

    /// `/metrics` lines: up, requests and failures per upstream.
    pub fn render_metrics(&self, o: &mut String) {
        use std::fmt::Write;
        let now = Instant::now();
        o.push_str(
            "# HELP portcullis_upstream_up Whether an upstream is in service (1) or ejected (0).\n",
        );
        o.push_str("# TYPE portcullis_upstream_up gauge\n");
        for m in &self.members {
            let up = u8::from(m.ejected(now).is_none());
            let _ = writeln!(
                o,
                "portcullis_upstream_up{{upstream=\"{}\"}} {}",
                m.name, up
            );
        }
        o.push_str("# HELP portcullis_upstream_requests_total Calls sent to an upstream.\n");
        o.push_str("# TYPE portcullis_upstream_requests_total counter\n");
        for m in &self.members {
            let n = m.requests.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "portcullis_upstream_requests_total{{upstream=\"{}\"}} {}",
                m.name, n
            );
        }
        o.push_str("# HELP portcullis_upstream_failures_total Calls an upstream failed (refused, timed out, 429, 5xx).\n");
        o.push_str("# TYPE portcullis_upstream_failures_total counter\n");
        for m in &self.members {
            let n = m.failures.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "portcullis_upstream_failures_total{{upstream=\"{}\"}} {}",
                m.name, n
            );
        }
        o.push_str("# HELP portcullis_upstream_in_flight Calls an upstream is answering now.\n");
        o.push_str("# TYPE portcullis_upstream_in_flight gauge\n");
        for m in &self.members {
            let n = m.in_flight.load(Ordering::Relaxed);
            let _ = writeln!(
                o,
                "portcullis_upstream_in_flight{{upstream=\"{}\"}} {}",
                m.name, n
            );
        }
    }
}
