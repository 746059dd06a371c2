//! State that several instances on one PostgreSQL database must agree on:
//! the request limiter and each user's token account. SQLite keeps both in
//! process memory (`filters::rate_limit`, `usage`), which is exact for its
//! one process; with PostgreSQL every instance checks and updates them in
//! the database (`pg::limits`), so a limit of 100 a minute is 100 across
//! all instances, not 100 each.

use super::users::UserLimits;
use super::StoreError;

/// One request against a limit (GCRA: the bucket of `limit` tokens that
/// refills at `limit` per window, kept as its theoretical arrival time).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SharedTake {
    pub allowed: bool,
    /// The bucket's theoretical arrival time after this request and the
    /// database's clock, in µs: the caller derives what is left and when
    /// it refills (`filters::rate_limit::take_from`).
    pub tat_us: f64,
    pub now_us: f64,
}

/// A user's token account: the minute bucket, the day's and month's
/// spending and what admitted calls reserved (`usage::Tally` keeps one in
/// memory for SQLite).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Account {
    pub level: f64,
    /// Wall clock, ms: when `level` was last brought up to date.
    pub level_at_ms: i64,
    pub day: i64,
    pub day_spent: u64,
    pub month: i64,
    pub month_spent: u64,
    pub reserved: u64,
}

pub trait SharedLimits: Send + Sync {
    /// Takes one request from `key`'s bucket of `limit` per `window_us`,
    /// in one atomic statement.
    fn take_request(&self, key: &str, limit: u32, window_us: u64)
        -> Result<SharedTake, StoreError>;

    /// Runs `f` on `user_id`'s account under its row lock and stores what
    /// `f` leaves: concurrent calls from any instance take turns, so a
    /// budget check and its reservation are one step. A new account starts
    /// from `fresh` (given the user's spending from the day sums: today's,
    /// this month's); `f` also gets the user's own limits.
    fn with_account(
        &self,
        user_id: &str,
        fresh: &dyn Fn(u64, u64) -> Account,
        month_first: i64,
        today: i64,
        f: &mut dyn FnMut(&mut Account, UserLimits),
    ) -> Result<(), StoreError>;

    /// Forgets limiter buckets that are full again (they carry nothing);
    /// returns how many.
    fn sweep_requests(&self) -> Result<u64, StoreError>;
}
