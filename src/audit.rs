//! The audit trail: state changes and security events, with time, request
//! id, API key id and client address (stored by `db::audit_log`, printed by
//! `portcullis audit`).
//!
//! State changes (key created or revoked, project or conversation deleted)
//! are written in the same transaction as the change. Events a client can
//! provoke at will — authentication failures and rate-limit refusals — are
//! counted in memory and written as one row per (event, client) per minute
//! by a flusher thread: a client spraying bad keys cannot turn each refusal
//! into a database write. The aggregate row keeps the first request id of
//! its window. The number of distinct counters is capped; beyond the cap,
//! events are counted in one overflow row.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{json, Value};

use crate::db::{Actor, AuditEvent, Db};
use crate::http::Ctx;

/// Who caused an event on the request path: the request's id, its
/// authenticated key and its resolved client address. (Storage takes an
/// `Actor` and never sees the request.)
pub fn actor(ctx: &Ctx) -> Actor {
    Actor {
        request_id: Some(ctx.request_id.clone()),
        user_id: ctx.principal.as_ref().map(|p| p.user_id.clone()),
        key_id: ctx.key_id.clone(),
        session: ctx.session.as_ref().map(|h| h.chars().take(16).collect()),
        client: Some(ctx.client.to_string()),
    }
}

/// Aggregation window of counted events.
pub const WINDOW_MS: i64 = 60_000;
/// Distinct (event, client) counters kept per window; more go to overflow.
const MAX_COUNTERS: usize = 10_000;
const OVERFLOW_KEY: &str = "(other clients)";

#[derive(Default)]
struct Tally {
    count: u64,
    first: Actor,
}

#[derive(Default)]
struct Pending {
    window_start: Option<i64>,
    counters: HashMap<(AuditEvent, String, String), Tally>,
    stopping: bool,
}

/// A row ready to write: (time, event, actor, detail).
pub type AuditRowOut = (i64, AuditEvent, Actor, Value);

impl Pending {
    fn count(
        &mut self,
        now_ms: i64,
        event: AuditEvent,
        key: &str,
        reason: &str,
        actor: Actor,
    ) -> bool {
        let started = self.window_start.is_none();
        self.window_start.get_or_insert(now_ms);
        let mut k = (event, key.to_string(), reason.to_string());
        if !self.counters.contains_key(&k) && self.counters.len() >= MAX_COUNTERS {
            k = (event, OVERFLOW_KEY.to_string(), String::new());
        }
        let tally = self.counters.entry(k).or_insert_with(|| Tally {
            count: 0,
            first: actor,
        });
        tally.count += 1;
        started
    }

    /// Takes every counter when the window is over (or `force`).
    fn take_due(&mut self, now_ms: i64, force: bool) -> Vec<AuditRowOut> {
        let Some(start) = self.window_start else {
            return Vec::new();
        };
        if !force && now_ms < start + WINDOW_MS {
            return Vec::new();
        }
        self.window_start = None;
        let mut rows: Vec<AuditRowOut> = self
            .counters
            .drain()
            .map(|((event, key, reason), t)| {
                let mut detail =
                    json!({ "count": t.count, "window_s": WINDOW_MS / 1000, "key": key });
                if !reason.is_empty() {
                    detail["reason"] = reason.into();
                }
                (start, event, t.first, detail)
            })
            .collect();
        rows.sort_by(|a, b| a.3["key"].as_str().cmp(&b.3["key"].as_str()));
        rows
    }
}

struct Inner {
    db: Db,
    pending: Mutex<Pending>,
    wake: Condvar,
}

/// The audit recorder; one per process, owned by `App`.
pub struct Audit {
    inner: Arc<Inner>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Audit {
    /// Starts the flusher thread.
    pub fn start(db: Db) -> Audit {
        let inner = Arc::new(Inner {
            db,
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        });
        let for_thread = inner.clone();
        let flusher = crate::threads::spawn("audit-flush", move || run_flusher(&for_thread)).ok();
        Audit {
            inner,
            flusher: Mutex::new(flusher),
        }
    }

    /// Writes one event row now; a failure is logged, never returned (an
    /// audit hiccup must not turn a refusal into a 500).
    pub fn record(&self, event: AuditEvent, ctx: &Ctx, detail: Value) {
        if let Err(e) = self.inner.db.record_audit(event, &actor(ctx), &detail) {
            crate::logging::warn(
                "audit write failed",
                &[
                    ("event", json!(event.as_str())),
                    ("error", json!(crate::logging::redact_text(&e.to_string()))),
                ],
            );
        }
    }

    /// Counts one rate-limit refusal for `key` (an API key id or a client
    /// address, as the limiter buckets them); written once per minute.
    pub fn record_rate_limited(&self, key: &str) {
        self.count_at(
            crate::time::now_millis(),
            AuditEvent::RateLimited,
            key,
            "",
            Actor::default(),
        );
    }

    /// As `record_rate_limited`, keeping the first refused request's id,
    /// key id and client address on the minute's row.
    pub fn rate_limited(&self, ctx: &Ctx, key: &str) {
        self.count_at(
            crate::time::now_millis(),
            AuditEvent::RateLimited,
            key,
            "",
            actor(ctx),
        );
    }

    /// Counts one authentication failure of the request's client.
    /// `reason`: missing, malformed, unknown or revoked.
    pub fn auth_failed(&self, ctx: &Ctx, reason: &'static str, key_id: Option<&str>) {
        let mut who = actor(ctx);
        who.key_id = key_id.map(str::to_string);
        let client = ctx.client.to_string();
        self.count_at(
            crate::time::now_millis(),
            AuditEvent::AuthFailed,
            &client,
            reason,
            who,
        );
    }

    fn count_at(&self, now_ms: i64, event: AuditEvent, key: &str, reason: &str, actor: Actor) {
        let started = lock(&self.inner.pending).count(now_ms, event, key, reason, actor);
        if started {
            self.inner.wake.notify_one();
        }
    }

    /// Writes every pending counter now and stops the flusher (shutdown).
    pub fn stop(&self) {
        lock(&self.inner.pending).stopping = true;
        self.inner.wake.notify_one();
        let handle = self
            .flusher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(h) = handle {
            let _ = h.join();
        }
    }
}

fn write(inner: &Inner, rows: &[AuditRowOut]) {
    if rows.is_empty() {
        return;
    }
    if let Err(e) = inner.db.record_audit_batch(rows) {
        crate::logging::warn(
            "audit flush failed",
            &[
                ("rows", json!(rows.len())),
                ("error", json!(crate::logging::redact_text(&e.to_string()))),
            ],
        );
    }
}

/// Sleeps until the open window ends (or forever when none is open),
/// writes its rows outside the lock, and on stop writes what is left.
fn run_flusher(inner: &Inner) {
    let mut st = lock(&inner.pending);
    loop {
        let now = crate::time::now_millis();
        if st.stopping {
            let rows = st.take_due(now, true);
            drop(st);
            write(inner, &rows);
            return;
        }
        match st.window_start {
            Some(start) if now >= start + WINDOW_MS => {
                let rows = st.take_due(now, false);
                drop(st);
                write(inner, &rows);
                st = lock(&inner.pending);
            }
            Some(start) => {
                let wait = Duration::from_millis((start + WINDOW_MS - now) as u64);
                st = inner
                    .wake
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            None => st = inner.wake.wait(st).unwrap_or_else(|e| e.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_aggregate_per_client_and_flush_once_per_window() {
        let mut p = Pending::default();
        let actor = |r: &str| Actor {
            request_id: Some(r.into()),
            ..Actor::default()
        };
        let failed = AuditEvent::AuthFailed;
        assert!(p.count(1_000, failed, "10.0.0.1", "unknown", actor("r1")));
        assert!(!p.count(2_000, failed, "10.0.0.1", "unknown", actor("r2")));
        p.count(3_000, AuditEvent::RateLimited, "key:k1", "", actor("r3"));
        assert!(p.take_due(60_999, false).is_empty());
        let rows = p.take_due(61_000, false);
        assert_eq!(rows.len(), 2);
        let auth = rows.iter().find(|r| r.1 == failed).unwrap();
        assert_eq!(auth.0, 1_000);
        assert_eq!(auth.2.request_id.as_deref(), Some("r1"));
        assert_eq!(auth.3["count"], 2);
        assert_eq!(auth.3["reason"], "unknown");
        assert!(p.take_due(200_000, true).is_empty());
    }

    #[test]
    fn distinct_counters_are_capped() {
        let mut p = Pending::default();
        for i in 0..MAX_COUNTERS + 50 {
            p.count(
                0,
                AuditEvent::AuthFailed,
                &format!("c{}", i),
                "unknown",
                Actor::default(),
            );
        }
        assert_eq!(p.counters.len(), MAX_COUNTERS + 1);
        let rows = p.take_due(WINDOW_MS, false);
        let overflow = rows.iter().find(|r| r.3["key"] == OVERFLOW_KEY).unwrap();
        assert_eq!(overflow.3["count"], 50);
    }

    #[test]
    fn stop_writes_pending_counters() {
        let db = crate::db::testing::temp_db();
        let audit = Audit::start(db.clone());
        audit.record_rate_limited("10.1.2.3");
        audit.record_rate_limited("10.1.2.3");
        audit.stop();
        let rows = db.audit_rows(None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].event, &rows[0].detail["count"]),
            (AuditEvent::RateLimited, &json!(2))
        );
    }
}
