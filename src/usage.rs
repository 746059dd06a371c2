//! Usage accounting and per-user token limits (API.md "Usage, token
//! limits and budgets").
//!
//! Every upstream call goes through here twice. Before it is sent,
//! `Usage::admit` decides on an estimate (the prompt's, `tokens.rs`, plus
//! the answer's `max_tokens` or `limits.default_max_tokens`) and reserves
//! it: the call is refused when the user's day or month budget is spent
//! (429 `budget_exceeded`, `Retry-After` until midnight UTC or the month's
//! end), when their per-minute bucket is empty (429 `rate_limited`,
//! `Retry-After` until it holds a token again), or when they have
//! `max_streams` streams open. When it ends, `Ticket::settle` replaces the
//! reservation with what the call really cost (the upstream's `usage`, or
//! our estimate of the prompt and of the text relayed when it sent none),
//! refunding or charging the difference, and queues the call's row.
//!
//! Admission is lenient by exactly one call: a call is admitted while
//! anything is left (a budget not spent, a bucket above zero), and may
//! then take more than was left. Under a lock that every call of a user
//! takes, what was spent plus what is reserved is checked and the new
//! reservation added in one step, so racing calls cannot all see the same
//! remainder: a budget is overspent by at most the last admitted call's
//! estimate, whatever the concurrency (test
//! `fifty_racing_clients_overspend_by_at_most_one_estimate`), as long as
//! answers stay within their `max_tokens`.
//!
//! The per-minute bucket refills continuously (`tokens_per_minute / 60`
//! per second, up to `tokens_per_minute`) and may go below zero after a
//! call larger than what it held; the day and month windows are the UTC
//! calendar's. The tallies live in memory, one per user who made a call
//! (users are created by an admin, so their number is bounded), loaded on
//! a user's first call from the day sums in the database.
//!
//! Rows are written by the `usage-flush` thread in one transaction every
//! `usage_flush_interval_ms` (a report writes what is queued first, so it
//! sees every settled call). A crash loses at most that interval's rows;
//! admission is decided in memory and never waits for the disk.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::LimitsConfig;
use crate::db::shared::{Account, SharedLimits};
use crate::db::usage::UsageRow;
use crate::db::users::UserLimits;
use crate::db::{Db, StoreError};
use crate::error::ApiError;
use crate::time::{day_of, month_start, next_month_start, DAY_MS};
use crate::upstream::Tried;

/// A user's limits in force: their own, else `[limits]`'s. 0: no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    pub tokens_per_minute: u64,
    pub tokens_per_day: u64,
    pub tokens_per_month: u64,
    pub max_streams: u64,
}

impl Limits {
    fn with_own(defaults: Limits, own: UserLimits) -> Limits {
        let [m, d, mo, s] = own.0;
        Limits {
            tokens_per_minute: m.unwrap_or(defaults.tokens_per_minute),
            tokens_per_day: d.unwrap_or(defaults.tokens_per_day),
            tokens_per_month: mo.unwrap_or(defaults.tokens_per_month),
            max_streams: s.unwrap_or(defaults.max_streams),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "tokens_per_minute": self.tokens_per_minute,
            "tokens_per_day": self.tokens_per_day,
            "tokens_per_month": self.tokens_per_month,
            "max_streams": self.max_streams,
        })
    }
}

/// One user's account in memory.
#[derive(Debug)]
struct Tally {
    limits: Limits,
    /// Tokens the minute bucket holds (at most `tokens_per_minute`; below
    /// zero after a call larger than what it held).
    level: f64,
    /// Wall clock, ms (an account may move between instances).
    level_at_ms: i64,
    day: i64,
    day_spent: u64,
    /// The first day of the month `month_spent` counts.
    month: i64,
    month_spent: u64,
    /// Estimates of the calls admitted and not yet settled.
    reserved: u64,
    streams: u64,
}

impl Tally {
    /// Moves to `today`'s day and month (their spending starts at 0) and
    /// refills the bucket to `now`.
    fn catch_up(&mut self, today: i64, now_ms: i64) {
        if today != self.day {
            self.day = today;
            self.day_spent = 0;
        }
        let month = month_start(today);
        if month != self.month {
            self.month = month;
            self.month_spent = 0;
        }
        let cap = self.limits.tokens_per_minute as f64;
        let elapsed_s = (now_ms - self.level_at_ms).max(0) as f64 / 1000.0;
        self.level = (self.level + elapsed_s * cap / 60.0).min(cap);
        self.level_at_ms = self.level_at_ms.max(now_ms);
    }

    /// The refusal for a new call now, if any (`now_ms`: wall clock, for
    /// the calendar windows).
    fn refusal(&self, stream: bool, now_ms: i64) -> Option<ApiError> {
        let l = &self.limits;
        let seconds_until = |day: i64| ((day * DAY_MS - now_ms).max(1) as u64).div_ceil(1000);
        if l.tokens_per_month > 0 && self.month_spent + self.reserved >= l.tokens_per_month {
            return Some(ApiError::BudgetExceeded {
                window: "month",
                retry_after_s: seconds_until(next_month_start(self.day)),
            });
        }
        if l.tokens_per_day > 0 && self.day_spent + self.reserved >= l.tokens_per_day {
            return Some(ApiError::BudgetExceeded {
                window: "day",
                retry_after_s: seconds_until(self.day + 1),
            });
        }
        if l.tokens_per_minute > 0 && self.level <= 0.0 {
            // The bucket holds more than zero after -level / rate seconds.
            let rate = l.tokens_per_minute as f64 / 60.0;
            return Some(ApiError::RateLimited {
                retry_after_s: (-self.level / rate).floor() as u64 + 1,
            });
        }
        if stream && l.max_streams > 0 && self.streams >= l.max_streams {
            return Some(ApiError::RateLimited { retry_after_s: 1 });
        }
        None
    }

    /// A tally without limits (`limits_fail_open` while the store is away).
    fn unlimited(today: i64, now_ms: i64) -> Tally {
        Tally::from_account(
            Limits::default(),
            Account {
                level_at_ms: now_ms,
                day: today,
                month: month_start(today),
                ..Account::default()
            },
            0,
        )
    }

    /// Replaces a call's reservation with what it cost.
    fn settle(&mut self, estimate: u64, stream: bool, actual: u64) {
        self.reserved = self.reserved.saturating_sub(estimate);
        self.streams = self.streams.saturating_sub(u64::from(stream));
        self.day_spent += actual;
        self.month_spent += actual;
        let cap = self.limits.tokens_per_minute as f64;
        self.level = (self.level + estimate as f64 - actual as f64).min(cap);
    }

    /// The shared part of this tally (all but the instance's streams).
    fn account(&self) -> Account {
        Account {
            level: self.level,
            level_at_ms: self.level_at_ms,
            day: self.day,
            day_spent: self.day_spent,
            month: self.month,
            month_spent: self.month_spent,
            reserved: self.reserved,
        }
    }

    fn from_account(limits: Limits, a: Account, streams: u64) -> Tally {
        Tally {
            limits,
            level: a.level,
            level_at_ms: a.level_at_ms,
            day: a.day,
            day_spent: a.day_spent,
            month: a.month,
            month_spent: a.month_spent,
            reserved: a.reserved,
            streams,
        }
    }

    fn status(&self) -> Value {
        json!({
            "limits": self.limits.to_json(),
            "today": {"tokens": self.day_spent, "day": crate::time::format_day(self.day)},
            "month": {"tokens": self.month_spent, "from": crate::time::format_day(self.month)},
            "in_flight_tokens": self.reserved,
            "streams": self.streams,
        })
    }
}

/// Most models `portcullis_tokens_total` names; the rest are `other`.
const METRIC_MODELS: usize = 64;

/// The accounts, the recorder and the token counters; one per process
/// (`App::usage`).
pub struct Usage {
    defaults: Limits,
    default_max_tokens: u64,
    db: Db,
    tallies: Mutex<HashMap<String, Tally>>,
    /// With a shared store: this instance's open streams per user (the
    /// rest of each tally lives in the database, `db::shared`).
    streams: Mutex<HashMap<String, u64>>,
    recorder: Recorder,
    /// (model, prompt tokens, completion tokens) for the metrics.
    tokens: Mutex<Vec<(String, u64, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Who a call is for and what it is: what `admit` needs of the request.
pub struct Call<'a> {
    pub user_id: &'a str,
    pub key_id: Option<&'a str>,
    pub model: &'a str,
    pub route: &'static str,
    /// The prompt's estimated tokens.
    pub prompt: u64,
    /// The answer's `max_tokens`, when the request names one (`None`:
    /// `default_max_tokens`); `Some(0)` for calls that generate nothing
    /// (embeddings).
    pub max_tokens: Option<u64>,
    pub stream: bool,
}

impl Usage {
    /// Starts the recorder thread (`usage-flush`).
    pub fn start(cfg: &LimitsConfig, db: Db) -> Result<Arc<Usage>, String> {
        let last_at = db
            .last_usage_at()
            .map_err(|e| format!("cannot read the usage table: {}", e))?;
        let recorder = Recorder::start(db.clone(), cfg, last_at)?;
        Ok(Arc::new(Usage {
            defaults: Limits {
                tokens_per_minute: cfg.tokens_per_minute,
                tokens_per_day: cfg.tokens_per_day,
                tokens_per_month: cfg.tokens_per_month,
                max_streams: cfg.max_streams,
            },
            default_max_tokens: cfg.default_max_tokens,
            db,
            tallies: Mutex::new(HashMap::new()),
            streams: Mutex::new(HashMap::new()),
            recorder,
            tokens: Mutex::new(Vec::new()),
        }))
    }

    /// Admits `call` or says which limit refuses it; the ticket holds the
    /// reservation until it is settled (or dropped: refunded, no row).
    pub fn admit(self: &Arc<Self>, call: Call) -> Result<Ticket, ApiError> {
        let allowance = call.max_tokens.unwrap_or(self.default_max_tokens);
        let estimate = call.prompt.saturating_add(allowance);
        self.with_tally(call.user_id, |t, now_ms| {
            if let Some(refusal) = t.refusal(call.stream, now_ms) {
                return Err(refusal);
            }
            t.level -= estimate as f64;
            t.reserved += estimate;
            t.streams += u64::from(call.stream);
            Ok(())
        })?;
        Ok(Ticket {
            usage: self.clone(),
            open: Some(Open {
                user_id: call.user_id.to_string(),
                key_id: call.key_id.map(str::to_string),
                model: call.model.to_string(),
                route: call.route,
                prompt: call.prompt,
                estimate,
                stream: call.stream,
                started: Instant::now(),
            }),
        })
    }

    /// Runs `f` on `user_id`'s tally, brought to now (loaded first when
    /// this process has none yet: the user's own limits and what the day
    /// sums say they spent today and this month).
    fn with_tally<T>(
        &self,
        user_id: &str,
        f: impl FnOnce(&mut Tally, i64) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let now_ms = crate::time::now_millis();
        let today = day_of(now_ms);
        if let Some(shared) = self.db.shared() {
            return match self.with_account(shared, user_id, now_ms, f) {
                Ok(r) => r,
                // `limits_fail_open`: admitted unchecked while the database
                // cannot be reached (a tally without limits).
                Err((_, Some(f))) if self.db.limits_fail_open() => {
                    f(&mut Tally::unlimited(today, now_ms), now_ms)
                }
                Err((e, _)) => Err(e.into()),
            };
        }
        if let Some(t) = lock(&self.tallies).get_mut(user_id) {
            t.catch_up(today, now_ms);
            return f(t, now_ms);
        }
        // Read without the lock: other users' calls go on meanwhile.
        let loaded = self.load(user_id, today)?;
        let mut tallies = lock(&self.tallies);
        let t = tallies.entry(user_id.to_string()).or_insert(loaded);
        t.catch_up(today, now_ms);
        f(t, now_ms)
    }

    /// As `with_tally` on the account in the shared store, under its row
    /// lock (`db::shared`); the open streams stay this instance's. On a
    /// store failure `f` comes back unless it ran.
    #[allow(clippy::type_complexity)]
    fn with_account<T, F: FnOnce(&mut Tally, i64) -> Result<T, ApiError>>(
        &self,
        shared: &dyn SharedLimits,
        user_id: &str,
        now_ms: i64,
        f: F,
    ) -> Result<Result<T, ApiError>, (StoreError, Option<F>)> {
        let today = day_of(now_ms);
        let month = month_start(today);
        let fresh = |day_spent, month_spent| Account {
            // Full: `catch_up` cuts it to the user's bucket.
            level: f64::MAX,
            level_at_ms: now_ms,
            day: today,
            day_spent,
            month,
            month_spent,
            reserved: 0,
        };
        let mut f = Some(f);
        let mut out = None;
        let mut streams_delta = 0i64;
        let r = shared.with_account(user_id, &fresh, month, today, &mut |a, own| {
            let Some(f) = f.take() else { return };
            // Reservations of calls whose instance died before settling
            // would stay forever: a new day starts without them (calls in
            // flight at midnight are then settled against nothing).
            if a.day != today {
                a.reserved = 0;
            }
            let mut streams = lock(&self.streams);
            let open = streams.get(user_id).copied().unwrap_or(0);
            let mut t = Tally::from_account(Limits::with_own(self.defaults, own), *a, open);
            t.catch_up(today, now_ms);
            out = Some(f(&mut t, now_ms));
            *a = t.account();
            streams_delta = t.streams as i64 - open as i64;
            if t.streams == 0 {
                streams.remove(user_id);
            } else {
                streams.insert(user_id.to_string(), t.streams);
            }
        });
        match (r, out) {
            (Ok(()), Some(out)) => Ok(out),
            (Ok(()), None) => Err((StoreError::internal("the token account was not read"), f)),
            (Err(e), _) => {
                // Not committed: this instance's stream count goes back.
                if streams_delta != 0 {
                    let mut streams = lock(&self.streams);
                    let n = streams.entry(user_id.to_string()).or_insert(0);
                    *n = (*n as i64 - streams_delta).max(0) as u64;
                }
                Err((e, f))
            }
        }
    }

    fn load(&self, user_id: &str, today: i64) -> Result<Tally, StoreError> {
        let own = match self.db.get_user(user_id) {
            Ok(u) => u.limits,
            Err(StoreError::NotFound) => UserLimits::default(),
            Err(e) => return Err(e),
        };
        let (day_spent, month_spent) = self.db.usage_spent(user_id, month_start(today), today)?;
        let limits = Limits::with_own(self.defaults, own);
        Ok(Tally {
            limits,
            level: limits.tokens_per_minute as f64,
            level_at_ms: crate::time::now_millis(),
            day: today,
            day_spent,
            month: month_start(today),
            month_spent,
            reserved: 0,
            streams: 0,
        })
    }

    /// The admin changed `user_id`'s own limits: they hold from the next
    /// call (a fuller bucket is cut to the new size).
    pub fn set_limits(&self, user_id: &str, own: UserLimits) {
        if let Some(t) = lock(&self.tallies).get_mut(user_id) {
            t.limits = Limits::with_own(self.defaults, own);
            t.level = t.level.min(t.limits.tokens_per_minute as f64);
        }
    }

    /// `user_id`'s limits and what they spent today and this month.
    pub fn status(&self, user_id: &str) -> Result<Value, ApiError> {
        self.with_tally(user_id, |t, _| Ok(t.status()))
    }

    /// Writes the queued rows now (a report reads what was settled).
    pub fn flush(&self) {
        self.recorder.flush();
    }

    /// Writes what is queued and stops the recorder (shutdown).
    pub fn stop(&self) {
        self.recorder.stop();
    }

    fn settle(&self, open: Open, spent: Option<Spent>) {
        let actual = spent.as_ref().map_or(0, |s| s.prompt + s.completion);
        let now_ms = crate::time::now_millis();
        if let Some(shared) = self.db.shared() {
            let r = self.with_account(shared, &open.user_id, now_ms, |t, _| {
                t.settle(open.estimate, open.stream, actual);
                Ok(())
            });
            if let Err((e, _)) = r {
                crate::logging::warn(
                    "usage: a call's tokens could not be settled in the shared account",
                    &[("error", json!(e.to_string()))],
                );
            }
        } else if let Some(t) = lock(&self.tallies).get_mut(&open.user_id) {
            t.catch_up(day_of(now_ms), now_ms);
            t.settle(open.estimate, open.stream, actual);
        }
        let Some(s) = spent else { return };
        if s.prompt + s.completion > 0 {
            self.count_tokens(&open.model, s.prompt, s.completion);
        }
        // One row per upstream call: those it moved on from first.
        for f in s.tried.failed {
            self.recorder.push(UsageRow {
                at_us: 0,
                user_id: open.user_id.clone(),
                key_id: open.key_id.clone(),
                model: open.model.clone(),
                upstream: f.upstream,
                route: open.route,
                prompt_tokens: 0,
                completion_tokens: 0,
                estimated: false,
                status: f.status,
                latency_ms: f.latency_ms,
            });
        }
        self.recorder.push(UsageRow {
            at_us: 0,
            latency_ms: open.started.elapsed().as_millis() as u64,
            user_id: open.user_id,
            key_id: open.key_id,
            model: open.model,
            upstream: s.tried.upstream,
            route: open.route,
            prompt_tokens: s.prompt,
            completion_tokens: s.completion,
            estimated: s.estimated,
            status: s.status,
        });
    }

    fn count_tokens(&self, model: &str, prompt: u64, completion: u64) {
        let mut t = lock(&self.tokens);
        let i = match t.iter().position(|(m, _, _)| m == model) {
            Some(i) => i,
            None if t.len() < METRIC_MODELS => {
                t.push((model.to_string(), 0, 0));
                t.len() - 1
            }
            None => match t.iter().position(|(m, _, _)| m.is_empty()) {
                Some(i) => i,
                None => {
                    t.push((String::new(), 0, 0));
                    t.len() - 1
                }
            },
        };
        t[i].1 += prompt;
        t[i].2 += completion;
    }

    /// `portcullis_tokens_total` and the recorder's counters.
    pub fn render_metrics(&self, o: &mut String) {
        o.push_str("# HELP portcullis_tokens_total Tokens of upstream calls, by model (the first 64 seen; then \"other\") and kind.\n");
        o.push_str("# TYPE portcullis_tokens_total counter\n");
        for (model, prompt, completion) in lock(&self.tokens).iter() {
            let name = match model.is_empty() {
                true => "other".to_string(),
                false => prometheus_label(model),
            };
            for (kind, n) in [("prompt", prompt), ("completion", completion)] {
                let _ = writeln!(
                    o,
                    "portcullis_tokens_total{{model=\"{}\",kind=\"{}\"}} {}",
                    name, kind, n
                );
            }
        }
        o.push_str("# HELP portcullis_usage_rows_dropped_total Usage rows dropped because the database could not take them in time (`usage_queue_rows`).\n");
        o.push_str("# TYPE portcullis_usage_rows_dropped_total counter\n");
        let _ = writeln!(
            o,
            "portcullis_usage_rows_dropped_total {}",
            self.recorder.inner.dropped.load(Ordering::Relaxed)
        );
    }
}

/// A label value in Prometheus' text format.
fn prometheus_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// An admitted call, not yet settled.
struct Open {
    user_id: String,
    key_id: Option<String>,
    model: String,
    route: &'static str,
    prompt: u64,
    estimate: u64,
    stream: bool,
    started: Instant,
}

/// What a call cost, for its row.
struct Spent {
    tried: Tried,
    prompt: u64,
    completion: u64,
    estimated: bool,
    status: u16,
}

/// How an upstream call ended, as the handler saw it.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The upstream that answered (or was tried last), and the attempts
    /// that failed before it (a row each, nothing spent).
    pub tried: Tried,
    /// The call's HTTP status: 200, the error's status, or 499 when the
    /// client left first.
    pub status: u16,
    /// (prompt, completion) tokens of the upstream's `usage`, when it sent
    /// one (`views::token_counts`, `views::answer_counts`).
    pub counts: Option<(u64, u64)>,
    /// Whether the upstream took the request (its head came, or it was
    /// working on it when the client left): then, without `usage`, the
    /// prompt's estimate is charged.
    pub accepted: bool,
    /// Estimated tokens of what it generated (the text relayed).
    pub generated: u64,
}

/// An admitted call's reservation; `settle` it when the call ends. Dropped
/// unsettled (the call never reached an upstream), it is refunded and
/// leaves no row.
pub struct Ticket {
    usage: Arc<Usage>,
    open: Option<Open>,
}

impl Ticket {
    /// The prompt's estimate became known more exactly (`/api/chat`
    /// builds its history after admission): the reservation follows it.
    pub fn set_prompt(&mut self, prompt: u64) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        let estimate = open.estimate - open.prompt + prompt;
        let more = estimate as f64 - open.estimate as f64;
        if let Some(t) = lock(&self.usage.tallies).get_mut(&open.user_id) {
            t.reserved = t.reserved - open.estimate + estimate;
            t.level -= more;
        }
        open.prompt = prompt;
        open.estimate = estimate;
    }

    /// Replaces the reservation with what the call cost and queues its row.
    pub fn settle(mut self, o: Outcome) {
        let Some(open) = self.open.take() else { return };
        let (prompt, completion, estimated) = match o.counts {
            Some((p, c)) => (p, c, false),
            None if o.accepted => (open.prompt, o.generated, true),
            // Refused before the upstream took it: nothing was spent.
            None => (0, o.generated, true),
        };
        let spent = Spent {
            tried: o.tried,
            prompt,
            completion,
            estimated,
            status: o.status,
        };
        self.usage.settle(open, Some(spent));
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            self.usage.settle(open, None);
        }
    }
}

/// Rows waiting for the database, written in batches.
struct Recorder {
    inner: Arc<RecorderInner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct RecorderInner {
    db: Db,
    queue: Mutex<Queue>,
    wake: Condvar,
    interval: Duration,
    cap: usize,
    dropped: AtomicU64,
}

struct Queue {
    rows: VecDeque<UsageRow>,
    /// The last row's time (µs): each row gets a later one.
    last_at: i64,
    stopping: bool,
}

/// Rows that wake the flusher before its interval is up: under load a
/// write (and its fsync) carries thousands of rows, a few times a second,
/// and the queue holds about a megabyte at most between writes.
const BATCH_ROWS: usize = 4096;

impl Recorder {
    fn start(db: Db, cfg: &LimitsConfig, last_at: i64) -> Result<Recorder, String> {
        let inner = Arc::new(RecorderInner {
            db,
            queue: Mutex::new(Queue {
                rows: VecDeque::new(),
                last_at,
                stopping: false,
            }),
            wake: Condvar::new(),
            interval: cfg.usage_flush_interval,
            cap: cfg.usage_queue_rows,
            dropped: AtomicU64::new(0),
        });
        let for_thread = inner.clone();
        let thread = crate::threads::spawn("usage-flush", move || for_thread.run())
            .map_err(|e| format!("cannot start the usage recorder: {}", e))?;
        Ok(Recorder {
            inner,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn push(&self, mut row: UsageRow) {
        let mut q = lock(&self.inner.queue);
        let now_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        row.at_us = now_us.max(q.last_at + 1);
        q.last_at = row.at_us;
        if q.rows.len() >= self.inner.cap {
            q.rows.pop_front();
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
        q.rows.push_back(row);
        if q.rows.len() == BATCH_ROWS {
            self.inner.wake.notify_one();
        }
    }

    fn flush(&self) {
        self.inner.write_queued();
    }

    fn stop(&self) {
        lock(&self.inner.queue).stopping = true;
        self.inner.wake.notify_one();
        let thread = lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl RecorderInner {
    fn run(&self) {
        loop {
            let mut q = lock(&self.queue);
            let deadline = Instant::now() + self.interval;
            while !q.stopping && q.rows.len() < BATCH_ROWS {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                q = self
                    .wake
                    .wait_timeout(q, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let stopping = q.stopping;
            drop(q);
            self.write_queued();
            if stopping {
                return;
            }
        }
    }

    /// Writes every queued row in one transaction; on failure they go back
    /// to the front of the queue (within its cap) for the next flush.
    fn write_queued(&self) {
        // Taken whole: the queue's buffer goes with it and is freed after
        // the write, so a burst leaves no large buffer behind.
        let rows: Vec<UsageRow> = std::mem::take(&mut lock(&self.queue).rows).into();
        if rows.is_empty() {
            return;
        }
        if let Err(e) = self.db.record_usage(&rows) {
            crate::logging::warn(
                "usage rows not written; kept for the next flush",
                &[
                    ("rows", json!(rows.len())),
                    ("error", json!(crate::logging::redact_text(&e.to_string()))),
                ],
            );
            let mut q = lock(&self.queue);
            for row in rows.into_iter().rev() {
                if q.rows.len() >= self.cap {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                q.rows.push_front(row);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(limits: Limits) -> Tally {
        Tally {
            limits,
            level: limits.tokens_per_minute as f64,
            level_at_ms: 20_000 * DAY_MS,
            day: 20_000,
            day_spent: 0,
            month: month_start(20_000),
            month_spent: 0,
            reserved: 0,
            streams: 0,
        }
    }

    #[test]
    fn refusals_say_which_limit_and_when_it_renews() {
        let noon = 20_000 * DAY_MS + DAY_MS / 2;
        let mut t = tally(Limits {
            tokens_per_day: 100,
            ..Limits::default()
        });
        assert!(t.refusal(false, noon).is_none());
        t.day_spent = 60;
        t.reserved = 40;
        match t.refusal(false, noon) {
            Some(ApiError::BudgetExceeded {
                window: "day",
                retry_after_s,
            }) => assert_eq!(retry_after_s, 43_200),
            other => panic!("{:?}", other),
        }
        let mut t = tally(Limits {
            tokens_per_month: 10,
            ..Limits::default()
        });
        t.month_spent = 10;
        let until = (next_month_start(20_000) * DAY_MS - noon) as u64 / 1000;
        assert!(matches!(
            t.refusal(false, noon),
            Some(ApiError::BudgetExceeded { window: "month", retry_after_s }) if retry_after_s == until
        ));
        // 60 per minute is one per second: 2.5 tokens owed is 3 s.
        let mut t = tally(Limits {
            tokens_per_minute: 60,
            ..Limits::default()
        });
        t.level = -2.5;
        assert!(matches!(
            t.refusal(false, noon),
            Some(ApiError::RateLimited { retry_after_s: 3 })
        ));
        t.level = 0.5;
        assert!(t.refusal(false, noon).is_none());
        let mut t = tally(Limits {
            max_streams: 1,
            ..Limits::default()
        });
        t.streams = 1;
        assert!(t.refusal(false, noon).is_none());
        assert!(matches!(
            t.refusal(true, noon),
            Some(ApiError::RateLimited { .. })
        ));
    }

    #[test]
    fn the_bucket_refills_continuously_and_windows_reset() {
        let mut t = tally(Limits {
            tokens_per_minute: 600,
            ..Limits::default()
        });
        let start = t.level_at_ms;
        t.level = -100.0;
        t.day_spent = 5;
        t.month_spent = 7;
        t.catch_up(20_000, start + 5_000);
        assert!((t.level - -50.0).abs() < 1e-6, "{}", t.level);
        t.catch_up(20_000, start + 600_000);
        assert_eq!(t.level, 600.0);
        assert_eq!((t.day_spent, t.month_spent), (5, 7));
        t.catch_up(20_001, start + 600_000);
        assert_eq!(t.day_spent, 0);
        let next_month = next_month_start(20_000);
        t.catch_up(next_month, start + 600_000);
        assert_eq!((t.day_spent, t.month_spent, t.month), (0, 0, next_month));
    }

    #[test]
    fn own_limits_replace_the_defaults_one_by_one() {
        let d = Limits {
            tokens_per_minute: 1,
            tokens_per_day: 2,
            tokens_per_month: 3,
            max_streams: 4,
        };
        let l = Limits::with_own(d, UserLimits([None, Some(0), Some(9), None]));
        assert_eq!(
            l,
            Limits {
                tokens_per_minute: 1,
                tokens_per_day: 0,
                tokens_per_month: 9,
                max_streams: 4,
            }
        );
        assert_eq!(prometheus_label("a\"b\\c\n"), "a\\\"b\\\\c\\n");
    }
}
