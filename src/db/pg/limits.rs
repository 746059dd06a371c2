//! The request limiter and the token accounts, in the database every
//! instance shares (`db::shared`).
//!
//! The limiter is GCRA on the UNLOGGED table `rate_limits`, one statement
//! per check, as TensorZero does: `INSERT ... ON CONFLICT ... DO UPDATE
//! ... RETURNING`. A bucket of `limit` tokens refilling at `limit` per
//! window is its theoretical arrival time `tat`: a request at `now` is
//! admitted when `max(tat, now) + T <= now + window` (T = window / limit),
//! and then moves `tat` to `max(tat, now) + T`. The row lock of the upsert
//! makes concurrent checks from any instance take turns, and time is the
//! database's (`now()`), so instances with skewed clocks still agree.

use super::conn::Statements;
use super::Postgres;
use crate::db::shared::{Account, SharedLimits, SharedTake};
use crate::db::users::UserLimits;
use crate::db::StoreError;

const TAKE: &str = "INSERT INTO rate_limits AS r (key, tat_us, ok, seen_us)
     VALUES ($1, (extract(epoch FROM now()) * 1000000)::float8 + $2, true, (extract(epoch FROM now()) * 1000000)::float8)
     ON CONFLICT (key) DO UPDATE SET
       tat_us = CASE WHEN GREATEST(r.tat_us, excluded.seen_us) + $2 <= excluded.seen_us + $3
                     THEN GREATEST(r.tat_us, excluded.seen_us) + $2 ELSE r.tat_us END,
       ok = GREATEST(r.tat_us, excluded.seen_us) + $2 <= excluded.seen_us + $3,
       seen_us = excluded.seen_us
     RETURNING tat_us, ok, seen_us";

const ACCOUNT: &str =
    "SELECT a.level, a.level_at_ms, a.day, a.day_spent, a.month, a.month_spent, a.reserved,
            u.tokens_per_minute, u.tokens_per_day, u.tokens_per_month, u.max_streams
     FROM token_accounts a LEFT JOIN users u ON u.id = a.user_id
     WHERE a.user_id = $1 FOR UPDATE OF a";
const NEW_ACCOUNT: &str = "INSERT INTO token_accounts (user_id, level, level_at_ms, day, day_spent, month, month_spent, reserved)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id) DO NOTHING";
const SAVE_ACCOUNT: &str =
    "UPDATE token_accounts SET level = $2, level_at_ms = $3, day = $4, day_spent = $5,
     month = $6, month_spent = $7, reserved = $8 WHERE user_id = $1";
/// A user's tokens per day since the month's first day (`db::usage`).
const SPENT: &str = "SELECT d.day, d.prompt_tokens + d.completion_tokens FROM usage_days d
     JOIN usage_labels l ON l.id = d.user_id WHERE l.label = $1 AND d.day >= $2";

fn load(
    tx: &mut postgres::Transaction<'_>,
    st: &mut Statements,
    user_id: &str,
) -> Result<Option<(Account, UserLimits)>, StoreError> {
    let s = st.get(tx, ACCOUNT)?;
    let Some(r) = tx.query_opt(&s, &[&user_id])? else {
        return Ok(None);
    };
    let n = |i: usize| r.get::<_, i64>(i).max(0) as u64;
    let lim = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.max(0) as u64);
    Ok(Some((
        Account {
            level: r.get(0),
            level_at_ms: r.get(1),
            day: r.get(2),
            day_spent: n(3),
            month: r.get(4),
            month_spent: n(5),
            reserved: n(6),
        },
        UserLimits([lim(7), lim(8), lim(9), lim(10)]),
    )))
}

fn save(
    tx: &mut postgres::Transaction<'_>,
    st: &mut Statements,
    sql: &'static str,
    user_id: &str,
    a: &Account,
) -> Result<(), StoreError> {
    let s = st.get(tx, sql)?;
    tx.execute(
        &s,
        &[
            &user_id,
            &a.level,
            &a.level_at_ms,
            &a.day,
            &(a.day_spent as i64),
            &a.month,
            &(a.month_spent as i64),
            &(a.reserved as i64),
        ],
    )?;
    Ok(())
}

impl SharedLimits for Postgres {
    fn take_request(
        &self,
        key: &str,
        limit: u32,
        window_us: u64,
    ) -> Result<SharedTake, StoreError> {
        let window = window_us as f64;
        let t = window / f64::from(limit.max(1));
        let r = self.conn()?.run(|c, st| {
            let s = st.get(c, TAKE)?;
            Ok(c.query_one(&s, &[&key, &t, &window])?)
        })?;
        Ok(SharedTake {
            tat_us: r.get(0),
            allowed: r.get(1),
            now_us: r.get(2),
        })
    }

    fn with_account(
        &self,
        user_id: &str,
        fresh: &dyn Fn(u64, u64) -> Account,
        month_first: i64,
        today: i64,
        f: &mut dyn FnMut(&mut Account, UserLimits),
    ) -> Result<(), StoreError> {
        self.write(|tx, st| {
            let (mut account, own) = match load(tx, st, user_id)? {
                Some(found) => found,
                None => {
                    let s = st.get(tx, SPENT)?;
                    let days = tx
                        .query(&s, &[&user_id, &month_first])?
                        .iter()
                        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                        .collect::<Vec<_>>();
                    let (day, month) = crate::db::usage::spent_from(days, today);
                    // Another instance may create it meanwhile: then its
                    // row is the one, read again under the lock.
                    save(tx, st, NEW_ACCOUNT, user_id, &fresh(day, month))?;
                    load(tx, st, user_id)?
                        .ok_or_else(|| StoreError::internal("a new token account vanished"))?
                }
            };
            f(&mut account, own);
            save(tx, st, SAVE_ACCOUNT, user_id, &account)
        })
    }

    fn sweep_requests(&self) -> Result<u64, StoreError> {
        self.conn()?.run(|c, _| {
            Ok(c.execute(
                "DELETE FROM rate_limits WHERE tat_us <= (extract(epoch FROM now()) * 1000000)::float8",
                &[],
            )?)
        })
    }
}
