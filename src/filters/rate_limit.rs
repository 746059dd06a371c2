//! Filter 6: token-bucket rate limiting, keyed by (identity, route class).
//!
//! The identity is the API key id when the auth filter set one, else the
//! client address from filter 4 (`client_ip::bucket_key`: IPv6 per /64,
//! IPv4-mapped as IPv4). Route classes `chat` and `other` have their own
//! buckets and limits; `RouteClass::Exempt` (health, UI) is never limited
//! and gets no rate-limit headers. The same buckets, class `AuthFailures`,
//! count failed authentications per client address in a second `Limiter`
//! (`Limiter::for_auth_failures`, used by `filters::auth` with `peek` before
//! and `take` after a failure). A bucket holds `limit` tokens and refills
//! lazily at `limit` per minute; time is always injected (`take(now)`,
//! `sweep(now)`), only `check` and the sweeper thread read the clock.
//!
//! Concurrency: the buckets live in `SHARDS` independently locked maps, the
//! shard picked by a keyed hash of the bucket key, and a lock is held only
//! for one bucket update (never across I/O), so workers rarely wait on each
//! other (`examples/limiter_contention.rs` measures it).
//!
//! Memory: the number of tracked buckets never exceeds
//! `max_tracked_clients` (each shard holds at most its share). When a shard
//! is full, buckets that are full again are evicted first: a full bucket
//! carries no information (a newcomer would get the same), so that is
//! lossless. If the shard is still full, the newcomer does NOT get a fresh
//! full bucket (a flood of new addresses would then bypass the limit);
//! instead every newcomer over the cap shares one overflow bucket per route
//! class, so a flood is limited collectively. Callers identified by an API
//! key overflow into their own shared buckets, so an anonymous address flood
//! cannot drain the allowance of key holders. Clients already tracked are
//! unaffected by a flood.
//!
//! Cost: one tracked bucket is one `(Key, Bucket)` entry of 56 bytes plus
//! one control byte in its shard's table, which rounds its capacity up to a
//! power of two at a load of 7/8: the default cap of 100,000 buckets costs
//! at most 32 x 4,096 x 57 bytes = 7.1 MiB (about 75 bytes per bucket),
//! plus the heap text of API key ids (bounded by the number of keys).
//! Measured: 200,000 distinct addresses against the default cap grew the
//! process by 8.2 MiB RSS (100,000 buckets tracked, about 86 bytes each).
//! `entry_size_is_as_documented` keeps the 56 honest.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::RateLimitConfig;
use crate::db::shared::{SharedLimits, SharedTake};
use crate::error::ApiError;
use crate::filters::client_ip;
use crate::http::{Ctx, RateInfo};
use crate::router::RouteClass;

/// The limits are per minute; this is the `w` of `RateLimit-Policy`.
pub const WINDOW_S: u64 = 60;
/// Fixed-point scale: one token is `WINDOW_S` in microseconds, so a bucket
/// of `limit` per minute refills by exactly `limit` units per microsecond
/// and every computation stays in integers (no rounding drift).
const UNITS_PER_TOKEN: u64 = WINDOW_S * 1_000_000;
const MICROS_PER_S: u64 = 1_000_000;
/// Independently locked maps. A power of two well above the worker count.
const SHARDS: usize = 32;
/// When a shard is full, it is scanned for evictable (full) buckets at most
/// this often, so a flood of newcomers cannot make every request pay for a
/// scan of the whole shard under its lock.
const EVICT_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// A limited route class (`RouteClass::Exempt` has none), or the
/// failed-authentication budget of a client address (`filters::auth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    Chat,
    Other,
    AuthFailures,
}

/// Number of `Class` variants (the size of per-class arrays).
const CLASSES: usize = 3;

impl Class {
    pub fn of(route: RouteClass) -> Option<Class> {
        match route {
            RouteClass::Chat => Some(Class::Chat),
            RouteClass::Other => Some(Class::Other),
            RouteClass::Exempt => None,
        }
    }

    /// The policy name in the `RateLimit` headers.
    pub fn policy(self) -> &'static str {
        match self {
            Class::Chat => "chat",
            Class::Other => "other",
            Class::AuthFailures => "auth_failures",
        }
    }

    fn index(self) -> usize {
        match self {
            Class::Chat => 0,
            Class::Other => 1,
            Class::AuthFailures => 2,
        }
    }
}

/// Who a bucket belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// An authenticated user (by key or session): all their keys and
    /// sessions share one budget.
    User(Box<str>),
    /// An authenticated API key (its id, never the key itself).
    Key(Box<str>),
    /// A client address, already reduced by `client_ip::bucket_key`.
    Addr(IpAddr),
}

/// `key:<id>` or `addr:<address>`, as the audit trail names who was limited.
impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::User(id) => write!(f, "user:{}", id),
            Identity::Key(id) => write!(f, "key:{}", id),
            Identity::Addr(a) => write!(f, "addr:{}", a),
        }
    }
}

impl Identity {
    /// The user when the request authenticated (a key or a session),
    /// the key id for a key without a principal (tests), else the
    /// client's bucket address (auth mode `none`: one local user, told
    /// apart by address).
    pub fn of(ctx: &Ctx) -> Identity {
        let authenticated = ctx.key_id.is_some() || ctx.session.is_some();
        match (&ctx.principal, &ctx.key_id) {
            (Some(p), _) if authenticated => Identity::User(p.user_id.as_str().into()),
            (_, Some(id)) => Identity::Key(id.as_str().into()),
            _ => Identity::Addr(client_ip::bucket_key(ctx.client)),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub id: Identity,
    pub class: Class,
}

/// The outcome of one `take`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Take {
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u32,
    /// Allowed: seconds until the bucket is full again. Refused: seconds
    /// until the next token (the `Retry-After`); at least 1.
    pub reset_s: u64,
}

/// One token bucket. Refills lazily when touched.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    /// Fill level in `UNITS_PER_TOKEN` units.
    units: u64,
    last: Instant,
}

/// `units` to gain at `limit` units per microsecond, in whole seconds, rounded up.
fn seconds_to_gain(units: u64, limit: u32) -> u64 {
    units.div_ceil(limit as u64).div_ceil(MICROS_PER_S)
}

impl Bucket {
    pub fn full(limit: u32, now: Instant) -> Bucket {
        Bucket {
            units: limit as u64 * UNITS_PER_TOKEN,
            last: now,
        }
    }

    /// The level at `now` (never past capacity). A `now` before the last
    /// update counts as no time passed.
    fn level(&self, limit: u32, now: Instant) -> u64 {
        // Past one whole window any bucket is full, so capping the elapsed
        // time there also keeps the product far from overflow.
        let elapsed_us = now
            .saturating_duration_since(self.last)
            .as_micros()
            .min(UNITS_PER_TOKEN as u128) as u64;
        (self.units + elapsed_us * limit as u64).min(limit as u64 * UNITS_PER_TOKEN)
    }

    /// Refills to `now` and takes one token if there is one.
    pub fn take(&mut self, limit: u32, now: Instant) -> Take {
        self.units = self.level(limit, now);
        self.last = self.last.max(now);
        if self.units >= UNITS_PER_TOKEN {
            self.units -= UNITS_PER_TOKEN;
            Take {
                allowed: true,
                remaining: (self.units / UNITS_PER_TOKEN) as u32,
                reset_s: seconds_to_gain(limit as u64 * UNITS_PER_TOKEN - self.units, limit),
            }
        } else {
            Take {
                allowed: false,
                remaining: 0,
                reset_s: seconds_to_gain(UNITS_PER_TOKEN - self.units, limit).max(1),
            }
        }
    }

    /// As `take` at `now`, without taking: `allowed` when a token is there,
    /// `remaining` the whole tokens there. Changes nothing.
    pub fn peek(&self, limit: u32, now: Instant) -> Take {
        let units = self.level(limit, now);
        if units >= UNITS_PER_TOKEN {
            Take {
                allowed: true,
                remaining: (units / UNITS_PER_TOKEN) as u32,
                reset_s: seconds_to_gain(limit as u64 * UNITS_PER_TOKEN - units, limit),
            }
        } else {
            Take {
                allowed: false,
                remaining: 0,
                reset_s: seconds_to_gain(UNITS_PER_TOKEN - units, limit).max(1),
            }
        }
    }

    /// True when the bucket has refilled completely: it can be forgotten.
    pub fn is_full(&self, limit: u32, now: Instant) -> bool {
        self.level(limit, now) == limit as u64 * UNITS_PER_TOKEN
    }
}

struct Shard {
    buckets: HashMap<Key, Bucket>,
    last_evict_scan: Option<Instant>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    per_shard_cap: usize,
    /// Per class (`Class::index`).
    limits: [u32; CLASSES],
    /// Picks the shard; randomly keyed so a client cannot aim at one shard.
    hasher: RandomState,
    /// Shared buckets for newcomers over the cap: `[anonymous, keyed][class]`.
    overflow: [[Mutex<Bucket>; CLASSES]; 2],
}

impl Inner {
    fn limit(&self, class: Class) -> u32 {
        self.limits[class.index()]
    }

    /// Drops every full bucket of one shard; returns how many.
    fn sweep_shard(&self, shard: &mut Shard, now: Instant) -> usize {
        let before = shard.buckets.len();
        shard
            .buckets
            .retain(|k, b| !b.is_full(self.limits[k.class.index()], now));
        // After a flood, give the memory back (hash tables never shrink on their own).
        if shard.buckets.capacity() > 64 && shard.buckets.capacity() > 4 * shard.buckets.len() {
            let len = shard.buckets.len();
            shard.buckets.shrink_to(2 * len);
        }
        before - shard.buckets.len()
    }
}

/// A panic under one of these locks can only leave one bucket half
/// updated, which is harmless: keep limiting rather than poison every request.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The rate limiter: sharded buckets with a hard cap. Cheap to clone (shared).
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

/// A limit decision: whether the request may pass, and its header fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub info: RateInfo,
}

impl Decision {
    /// The decision and its header fields for one bucket's answer.
    fn of(class: Class, limit: u32, t: Take) -> Decision {
        Decision {
            allowed: t.allowed,
            info: RateInfo {
                policy: class.policy(),
                limit,
                remaining: t.remaining,
                reset_s: t.reset_s,
                window_s: WINDOW_S,
            },
        }
    }
}

impl Limiter {
    pub fn new(cfg: &RateLimitConfig) -> Limiter {
        Limiter::with_shards(cfg, SHARDS)
    }

    /// The failed-authentication limiter of `filters::auth`: one bucket of
    /// `per_minute` per client address (class `AuthFailures` only), with
    /// its own table of at most `max_tracked` addresses, so a flood of
    /// failing addresses cannot evict the request buckets of `new`.
    pub fn for_auth_failures(per_minute: u32, max_tracked: usize) -> Limiter {
        let per_minute = per_minute.max(1);
        Limiter::build([per_minute; CLASSES], max_tracked, SHARDS)
    }

    /// As `new` with a chosen shard count (the contention example compares).
    /// The shard count is lowered when the cap is tiny, so every shard can
    /// hold at least one bucket and the total never exceeds the cap.
    pub fn with_shards(cfg: &RateLimitConfig, shards: usize) -> Limiter {
        let chat = cfg.chat_per_minute.max(1);
        let other = cfg.other_per_minute.max(1);
        // This limiter never sees `AuthFailures`; its slot holds a harmless value.
        Limiter::build([chat, other, other], cfg.max_tracked_clients, shards)
    }

    fn build(limits: [u32; CLASSES], max_tracked: usize, shards: usize) -> Limiter {
        let cap = max_tracked.max(1);
        let n = shards.clamp(1, cap);
        let now = Instant::now();
        let overflow_pair = || limits.map(|l| Mutex::new(Bucket::full(l, now)));
        Limiter {
            inner: Arc::new(Inner {
                shards: (0..n)
                    .map(|_| {
                        Mutex::new(Shard {
                            buckets: HashMap::new(),
                            last_evict_scan: None,
                        })
                    })
                    .collect(),
                per_shard_cap: cap / n,
                limits,
                hasher: RandomState::new(),
                overflow: [overflow_pair(), overflow_pair()],
            }),
        }
    }

    /// Takes one token from `key`'s bucket at `now`. A newcomer gets a full
    /// bucket while its shard has room; over the cap it shares the overflow
    /// bucket of its class (see the module doc).
    pub fn take(&self, key: Key, now: Instant) -> Decision {
        let inner = &*self.inner;
        let class = key.class;
        let limit = inner.limit(class);
        let shard =
            &inner.shards[(inner.hasher.hash_one(&key) % inner.shards.len() as u64) as usize];
        let keyed = matches!(key.id, Identity::Key(_));
        let taken = {
            let mut shard = lock(shard);
            if let Some(bucket) = shard.buckets.get_mut(&key) {
                Some(bucket.take(limit, now))
            } else {
                if shard.buckets.len() >= inner.per_shard_cap {
                    let due = shard
                        .last_evict_scan
                        .is_none_or(|t| now.saturating_duration_since(t) >= EVICT_SCAN_INTERVAL);
                    if due {
                        shard.last_evict_scan = Some(now);
                        inner.sweep_shard(&mut shard, now);
                    }
                }
                if shard.buckets.len() < inner.per_shard_cap {
                    let mut bucket = Bucket::full(limit, now);
                    let t = bucket.take(limit, now);
                    shard.buckets.insert(key, bucket);
                    Some(t)
                } else {
                    None
                }
            }
        };
        let t = taken.unwrap_or_else(|| {
            lock(&inner.overflow[keyed as usize][class.index()]).take(limit, now)
        });
        Decision::of(class, limit, t)
    }

    /// Whether `key` has a token at `now`, without taking it (the headers'
    /// fields as `take` would give them). An untracked key has its full
    /// bucket, unless its shard is at the cap: then it is judged by the
    /// overflow bucket its next `take` would use.
    pub fn peek(&self, key: &Key, now: Instant) -> Decision {
        let inner = &*self.inner;
        let class = key.class;
        let limit = inner.limit(class);
        let shard =
            &inner.shards[(inner.hasher.hash_one(key) % inner.shards.len() as u64) as usize];
        let keyed = matches!(key.id, Identity::Key(_));
        let peeked = {
            let shard = lock(shard);
            match shard.buckets.get(key) {
                Some(bucket) => Some(bucket.peek(limit, now)),
                None if shard.buckets.len() < inner.per_shard_cap => {
                    Some(Bucket::full(limit, now).peek(limit, now))
                }
                None => None,
            }
        };
        let t = peeked.unwrap_or_else(|| {
            lock(&inner.overflow[keyed as usize][class.index()]).peek(limit, now)
        });
        Decision::of(class, limit, t)
    }

    /// Drops every bucket that is full again at `now` (idle clients);
    /// returns how many. Locks one shard at a time.
    pub fn sweep(&self, now: Instant) -> usize {
        let inner = &*self.inner;
        inner
            .shards
            .iter()
            .map(|s| inner.sweep_shard(&mut lock(s), now))
            .sum()
    }

    /// How many buckets are tracked (never more than `max_tracked_clients`).
    pub fn tracked(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).buckets.len())
            .sum()
    }

    /// Starts the thread that runs `sweep` every `interval`. It stops when
    /// the handle is stopped or dropped, at once (it waits on a condition
    /// variable, not in a sleep).
    pub fn start_sweeper(&self, interval: Duration) -> std::io::Result<SweeperHandle> {
        Limiter::start_sweeper_for(vec![self.clone()], interval)
    }

    /// As `start_sweeper`, one thread sweeping every limiter of `limiters`
    /// in turn (the request limiter and the failed-authentication one).
    pub fn start_sweeper_for(
        limiters: Vec<Limiter>,
        interval: Duration,
    ) -> std::io::Result<SweeperHandle> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = crate::threads::spawn("rate-limit-sweeper", move || {
            let (stopped, wake) = &*signal;
            loop {
                {
                    let guard = lock(stopped);
                    let (guard, _) = wake
                        .wait_timeout_while(guard, interval, |stop| !*stop)
                        .unwrap_or_else(|e| e.into_inner());
                    if *guard {
                        return;
                    }
                }
                for limiter in &limiters {
                    let dropped = limiter.sweep(Instant::now());
                    crate::logging::debug(
                        "rate-limit sweep",
                        &[
                            ("dropped", dropped.into()),
                            ("tracked", limiter.tracked().into()),
                        ],
                    );
                }
            }
        })?;
        Ok(SweeperHandle {
            stop,
            thread: Some(thread),
        })
    }
}

/// Owns the sweeper thread; stopping (or dropping) wakes and joins it.
pub struct SweeperHandle {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl SweeperHandle {
    pub fn stop(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        let (stopped, wake) = &*self.stop;
        *lock(stopped) = true;
        wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for SweeperHandle {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Limits the request unless its route is exempt. Sets `ctx.rate` for the
/// headers on every limited route, allowed or refused; refuses with 429
/// `rate_limited` and a `Retry-After` of whole seconds (at least 1).
pub fn check(limiter: &Limiter, ctx: &mut Ctx, now: Instant) -> Result<(), ApiError> {
    let Some(class) = ctx.route.and_then(|r| Class::of(r.class())) else {
        return Ok(());
    };
    let d = limiter.take(
        Key {
            id: Identity::of(ctx),
            class,
        },
        now,
    );
    let retry_after_s = d.info.reset_s;
    ctx.rate = Some(d.info);
    if d.allowed {
        Ok(())
    } else {
        Err(ApiError::RateLimited { retry_after_s })
    }
}

/// As `check`, with the buckets in the store every instance shares
/// (PostgreSQL: `db::shared`), so a limit holds across instances: one
/// atomic statement per request. When the store cannot answer, the request
/// is refused with 503 `server_busy`, or admitted without a check when
/// `fail_open` (`database.limits_fail_open`).
pub fn check_shared(
    store: &dyn SharedLimits,
    cfg: &RateLimitConfig,
    fail_open: bool,
    ctx: &mut Ctx,
) -> Result<(), ApiError> {
    let Some(class) = ctx.route.and_then(|r| Class::of(r.class())) else {
        return Ok(());
    };
    let limit = match class {
        Class::Chat => cfg.chat_per_minute,
        _ => cfg.other_per_minute,
    }
    .max(1);
    let key = format!("{}:{}", class.policy(), Identity::of(ctx));
    let taken = match store.take_request(&key, limit, UNITS_PER_TOKEN) {
        Ok(t) => t,
        Err(_) if fail_open => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let d = Decision::of(class, limit, take_from(taken, limit));
    let retry_after_s = d.info.reset_s;
    ctx.rate = Some(d.info);
    if d.allowed {
        Ok(())
    } else {
        Err(ApiError::RateLimited { retry_after_s })
    }
}

/// The header fields of a shared GCRA answer, as `Bucket::take` gives
/// them: whole tokens left, and seconds until full (admitted) or until the
/// next token (refused, at least 1).
fn take_from(t: SharedTake, limit: u32) -> Take {
    let window = UNITS_PER_TOKEN as f64;
    let per_token = window / f64::from(limit);
    if t.allowed {
        let left = ((t.now_us + window - t.tat_us) / per_token + 1e-9).floor();
        Take {
            allowed: true,
            remaining: left.clamp(0.0, f64::from(limit)) as u32,
            reset_s: ((t.tat_us - t.now_us).max(0.0) / MICROS_PER_S as f64).ceil() as u64,
        }
    } else {
        Take {
            allowed: false,
            remaining: 0,
            reset_s: ((t.tat_us + per_token - t.now_us - window) / MICROS_PER_S as f64)
                .ceil()
                .max(1.0) as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_answers_read_as_buckets_do() {
        // 60 a minute: one token a second. Just admitted, 10 s of tokens
        // used: 50 left, full again in 10 s.
        let now = 1e15;
        let t = take_from(
            SharedTake {
                allowed: true,
                tat_us: now + 10e6,
                now_us: now,
            },
            60,
        );
        assert_eq!((t.remaining, t.reset_s), (50, 10));
        // Refused with the bucket empty for 2.5 s more: retry in 3 s.
        let t = take_from(
            SharedTake {
                allowed: false,
                tat_us: now + 60e6 + 1.5e6,
                now_us: now,
            },
            60,
        );
        assert_eq!((t.allowed, t.remaining, t.reset_s), (false, 0, 3));
    }

    const S: Duration = Duration::from_secs(1);

    fn cfg(chat: u32, other: u32, cap: usize) -> RateLimitConfig {
        RateLimitConfig {
            chat_per_minute: chat,
            other_per_minute: other,
            sweep_interval: Duration::from_secs(300),
            max_tracked_clients: cap,
        }
    }

    fn addr(s: &str) -> Key {
        Key {
            id: Identity::Addr(client_ip::bucket_key(s.parse().unwrap())),
            class: Class::Other,
        }
    }

    fn chat(s: &str) -> Key {
        Key {
            class: Class::Chat,
            ..addr(s)
        }
    }

    fn key_id(id: &str) -> Key {
        Key {
            id: Identity::Key(id.into()),
            class: Class::Other,
        }
    }

    #[test]
    fn refill_math_table() {
        // (limit per minute, takes at t0, wait, expected take after the wait)
        let cases: &[(&str, u32, u32, Duration, Take)] = &[
            (
                "fresh_bucket_allows_and_counts_down",
                10,
                0,
                Duration::ZERO,
                Take {
                    allowed: true,
                    remaining: 9,
                    reset_s: 6,
                },
            ),
            (
                "one_token_per_6s_at_10_per_min",
                10,
                10,
                6 * S,
                Take {
                    allowed: true,
                    remaining: 0,
                    reset_s: 60,
                },
            ),
            (
                "just_before_the_token_is_refused",
                10,
                10,
                6 * S - Duration::from_micros(1),
                Take {
                    allowed: false,
                    remaining: 0,
                    reset_s: 1,
                },
            ),
            (
                "half_a_window_refills_half",
                60,
                60,
                30 * S,
                Take {
                    allowed: true,
                    remaining: 29,
                    reset_s: 31,
                },
            ),
            (
                "never_fills_past_capacity",
                10,
                1,
                3600 * S,
                Take {
                    allowed: true,
                    remaining: 9,
                    reset_s: 6,
                },
            ),
            // 3/7 of a minute rounded up to the µs: exactly three tokens, no float drift.
            (
                "fractional_rate_is_exact",
                7,
                7,
                Duration::from_micros(25_714_286),
                Take {
                    allowed: true,
                    remaining: 2,
                    reset_s: 43,
                },
            ),
            (
                "fractional_rate_one_us_short",
                7,
                7,
                Duration::from_micros(25_714_285),
                Take {
                    allowed: true,
                    remaining: 1,
                    reset_s: 43,
                },
            ),
        ];
        for (name, limit, drain, wait, want) in cases {
            let t0 = Instant::now();
            let mut b = Bucket::full(*limit, t0);
            for _ in 0..*drain {
                assert!(b.take(*limit, t0).allowed, "{}", name);
            }
            assert_eq!(b.take(*limit, t0 + *wait), *want, "{}", name);
        }
    }

    #[test]
    fn exhaustion_gives_retry_after_until_next_token() {
        let t0 = Instant::now();
        let mut b = Bucket::full(10, t0);
        for i in 0..10 {
            let t = b.take(10, t0);
            assert_eq!((t.allowed, t.remaining), (true, 9 - i));
        }
        assert_eq!(
            b.take(10, t0),
            Take {
                allowed: false,
                remaining: 0,
                reset_s: 6
            }
        );
        assert_eq!(
            b.take(10, t0 + 2 * S),
            Take {
                allowed: false,
                remaining: 0,
                reset_s: 4
            }
        );
        // A refusal costs nothing: the token still arrives on time.
        assert!(b.take(10, t0 + 6 * S).allowed);
        // Time going backwards (never with Instant, but injected) is no time.
        assert!(!b.take(10, t0).allowed);
    }

    #[test]
    fn classes_have_separate_buckets_and_limits() {
        let l = Limiter::new(&cfg(2, 3, 1000));
        let t0 = Instant::now();
        let a: Vec<bool> = (0..3)
            .map(|_| l.take(chat("1.2.3.4"), t0).allowed)
            .collect();
        assert_eq!(a, [true, true, false]);
        let d = l.take(addr("1.2.3.4"), t0);
        assert!(d.allowed);
        assert_eq!(
            d.info,
            RateInfo {
                policy: "other",
                limit: 3,
                remaining: 2,
                reset_s: 20,
                window_s: 60
            }
        );
        assert_eq!(l.take(chat("1.2.3.4"), t0).info.policy, "chat");
    }

    #[test]
    fn one_ipv6_64_is_one_bucket_and_mapped_ipv4_is_ipv4() {
        let l = Limiter::new(&cfg(10, 2, 1000));
        let t0 = Instant::now();
        assert!(l.take(addr("2001:db8:1:2::1"), t0).allowed);
        assert!(l.take(addr("2001:db8:1:2:ffff::9"), t0).allowed);
        assert!(
            !l.take(addr("2001:db8:1:2::77"), t0).allowed,
            "same /64 shares the bucket"
        );
        assert!(
            l.take(addr("2001:db8:1:3::1"), t0).allowed,
            "another /64 is another client"
        );
        assert!(l.take(addr("9.9.9.9"), t0).allowed);
        assert!(l.take(addr("::ffff:9.9.9.9"), t0).allowed);
        assert!(
            !l.take(addr("9.9.9.9"), t0).allowed,
            "mapped address is the IPv4 client"
        );
    }

    #[test]
    fn key_id_beats_address() {
        let l = Limiter::new(&cfg(10, 1, 1000));
        let t0 = Instant::now();
        let mut ctx = Ctx::new(
            crate::http::Method::Get,
            "/api/projects",
            "10.0.0.1".parse().unwrap(),
        );
        assert_eq!(
            Identity::of(&ctx),
            Identity::Addr("10.0.0.1".parse().unwrap())
        );
        ctx.key_id = Some("k1".into());
        assert_eq!(Identity::of(&ctx), Identity::Key("k1".into()));
        // The address's bucket is empty, the key's is not, and keys are separate.
        assert!(l.take(addr("10.0.0.1"), t0).allowed);
        assert!(!l.take(addr("10.0.0.1"), t0).allowed);
        assert!(l.take(key_id("k1"), t0).allowed);
        assert!(!l.take(key_id("k1"), t0).allowed);
        assert!(l.take(key_id("k2"), t0).allowed);
    }

    #[test]
    fn sweep_drops_buckets_that_are_full_again() {
        let l = Limiter::new(&cfg(10, 60, 1000));
        let t0 = Instant::now();
        l.take(addr("1.1.1.1"), t0); // other: refills in 1 s
        l.take(chat("1.1.1.1"), t0); // chat: refills in 6 s
        for _ in 0..60 {
            l.take(addr("2.2.2.2"), t0); // empty: full after 60 s
        }
        assert_eq!(l.tracked(), 3);
        assert_eq!(l.sweep(t0 + S / 2), 0);
        assert_eq!(l.sweep(t0 + S), 1);
        assert_eq!(l.sweep(t0 + 6 * S), 1);
        assert_eq!(l.sweep(t0 + 59 * S), 0);
        assert_eq!(l.sweep(t0 + 60 * S), 1);
        assert_eq!(l.tracked(), 0);
        // Forgetting a full bucket changes nothing for its client.
        assert_eq!(l.take(addr("2.2.2.2"), t0 + 60 * S).info.remaining, 59);
    }

    #[test]
    fn sweeper_thread_sweeps_and_stops_promptly() {
        let l = Limiter::new(&cfg(10, 60, 1000));
        // A bucket (60 per minute: one token a second) touched two seconds ago is full by now.
        l.take(
            addr("1.1.1.1"),
            Instant::now()
                .checked_sub(2 * S)
                .expect("monotonic clock past 2 s"),
        );
        assert_eq!(l.tracked(), 1);
        let h = l.start_sweeper(Duration::from_millis(10)).unwrap();
        let deadline = Instant::now() + 10 * S;
        while l.tracked() != 0 && Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(l.tracked(), 0, "the sweeper dropped the idle bucket");
        h.stop();

        // A sweeper waiting out a long interval stops at once when asked.
        let h = l.start_sweeper(Duration::from_secs(3600)).unwrap();
        let asked = Instant::now();
        drop(h);
        assert!(asked.elapsed() < 5 * S, "stop took {:?}", asked.elapsed());
    }

    #[test]
    fn cap_is_never_exceeded_and_a_flood_of_new_addresses_is_limited() {
        // 200,000 distinct addresses (as if forwarded by a trusted proxy),
        // one request each, 1 µs apart: a bucket that is not full again
        // carries information, so the table fills and newcomers overflow.
        const CAP: usize = 1000;
        const FLOOD: u32 = 200_000;
        let l = Limiter::new(&cfg(10, 60, CAP));
        let t0 = Instant::now();
        let (mut allowed, mut max_tracked) = (0u32, 0usize);
        for i in 0..FLOOD {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let now = t0 + Duration::from_micros(i as u64);
            if l.take(addr(&ip.to_string()), now).allowed {
                allowed += 1;
            }
            if i % 97 == 0 {
                max_tracked = max_tracked.max(l.tracked());
            }
        }
        max_tracked = max_tracked.max(l.tracked());
        assert!(max_tracked <= CAP, "tracked {} > cap {}", max_tracked, CAP);
        // At most: one request per tracked address, plus one bucket's worth
        // (60) for the overflow, plus what it refilled in 0.2 s (0).
        assert!(
            allowed <= CAP as u32 + 60,
            "flood got {} requests through",
            allowed
        );
        assert!(FLOOD - allowed > 198_000);

        // A client tracked before the flood keeps its own bucket...
        let l = Limiter::new(&cfg(10, 60, CAP));
        assert_eq!(l.take(addr("192.0.2.1"), t0).info.remaining, 59);
        for i in 0..20_000u32 {
            l.take(
                addr(&std::net::Ipv4Addr::from(0x0b00_0000 + i).to_string()),
                t0,
            );
        }
        assert_eq!(l.take(addr("192.0.2.1"), t0).info.remaining, 58);
        // ...and key holders overflow apart from the anonymous flood.
        assert!(
            !l.take(addr("203.0.113.9"), t0).allowed,
            "newcomer shares the drained overflow"
        );
        let keyed = (0..5000)
            .filter(|i| l.take(key_id(&format!("key-{}", i)), t0).allowed)
            .count();
        assert!(keyed >= 60, "keyed overflow is separate: {}", keyed);
        assert!(l.tracked() <= CAP);

        // Once the flood's buckets are full again, the table has room again.
        let later = t0 + 2 * S;
        assert!(l.take(addr("203.0.113.10"), later).allowed);
        assert_eq!(
            l.take(addr("203.0.113.10"), later).info.remaining,
            58,
            "own bucket, not the overflow"
        );
    }

    #[test]
    fn tiny_cap_still_bounds_the_table() {
        let l = Limiter::new(&cfg(10, 60, 16));
        let t0 = Instant::now();
        for i in 0..1000u32 {
            l.take(addr(&std::net::Ipv4Addr::from(i).to_string()), t0);
            assert!(l.tracked() <= 16);
        }
    }

    #[test]
    fn auth_failure_budget_is_peeked_before_and_taken_after_each_failure() {
        let l = Limiter::for_auth_failures(20, 1000);
        let fail = |ip: &str| Key {
            id: Identity::Addr(client_ip::bucket_key(ip.parse().unwrap())),
            class: Class::AuthFailures,
        };
        let k = fail("198.51.100.7");
        let t0 = Instant::now();
        for i in 0..20 {
            let d = l.peek(&k, t0);
            assert!(d.allowed, "failure {} is still allowed", i + 1);
            assert_eq!(d.info.remaining, 20 - i, "peeking takes nothing");
            l.take(k.clone(), t0);
        }
        // (wait after the 20th failure, allowed, Retry-After / reset seconds)
        let rows: &[(&str, Duration, bool, u64)] = &[
            ("twenty_first_is_refused", Duration::ZERO, false, 3),
            ("a_second_later_two_left", S, false, 2),
            (
                "one_us_before_the_token",
                3 * S - Duration::from_micros(1),
                false,
                1,
            ),
            ("one_token_every_3_s_at_20_per_min", 3 * S, true, 57),
            ("a_full_minute_refills_all", 60 * S, true, 0),
        ];
        for (name, wait, allowed, reset) in rows {
            let d = l.peek(&k, t0 + *wait);
            assert_eq!((d.allowed, d.info.reset_s), (*allowed, *reset), "{}", name);
            assert_eq!(
                (d.info.policy, d.info.limit),
                ("auth_failures", 20),
                "{}",
                name
            );
        }
        assert!(!l.peek(&fail("198.51.100.7"), t0).allowed);
        assert!(
            !l.peek(&fail("::ffff:198.51.100.7"), t0).allowed,
            "mapped address is the IPv4 client"
        );
        assert!(l.peek(&fail("198.51.100.8"), t0).allowed, "another address");
        // One IPv6 /64 is one client.
        for _ in 0..20 {
            l.take(fail("2001:db8:1:2::1"), t0);
        }
        assert!(!l.peek(&fail("2001:db8:1:2::beef"), t0).allowed);
        assert!(l.peek(&fail("2001:db8:1:3::1"), t0).allowed);
        // Swept once refilled, like request buckets.
        assert_eq!(l.sweep(t0 + 60 * S), 2);
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn untracked_address_over_the_cap_is_judged_by_the_overflow_bucket() {
        let l = Limiter::for_auth_failures(2, 16);
        let t0 = Instant::now();
        let fail = |i: u32| Key {
            id: Identity::Addr(std::net::Ipv4Addr::from(i).into()),
            class: Class::AuthFailures,
        };
        for i in 0..1000 {
            l.take(fail(i), t0);
        }
        assert!(l.tracked() <= 16);
        let newcomer = fail(5000);
        assert!(
            !l.peek(&newcomer, t0).allowed,
            "a flood of failing addresses is limited collectively"
        );
    }

    #[test]
    fn entry_size_is_as_documented() {
        // The module doc's memory figure is built on this size.
        assert_eq!(std::mem::size_of::<(Key, Bucket)>(), 56);
    }

    #[test]
    fn check_sets_headers_and_refuses_with_retry_after() {
        let limiter = Limiter::new(&cfg(10, 2, 1000));
        let now = Instant::now();
        let mut ctx = Ctx::new(
            crate::http::Method::Get,
            "/api/projects",
            "127.0.0.1".parse().unwrap(),
        );
        ctx.route = Some(crate::router::Route::ProjectsList);
        assert_eq!(check(&limiter, &mut ctx, now), Ok(()));
        assert_eq!(ctx.rate.as_ref().unwrap().remaining, 1);
        assert_eq!(check(&limiter, &mut ctx, now), Ok(()));
        match check(&limiter, &mut ctx, now) {
            Err(ApiError::RateLimited { retry_after_s }) => {
                assert!((1..=30).contains(&retry_after_s))
            }
            other => panic!("{:?}", other),
        }
        assert_eq!(ctx.rate.as_ref().unwrap().remaining, 0);
        let mut health = Ctx::new(
            crate::http::Method::Get,
            "/health",
            "127.0.0.1".parse().unwrap(),
        );
        health.route = Some(crate::router::Route::Health);
        for _ in 0..5 {
            assert_eq!(check(&limiter, &mut health, now), Ok(()));
        }
        assert_eq!(
            health.rate, None,
            "exempt routes carry no rate-limit headers"
        );
    }
}
