//! The usage tables (schema migration 4): one row per upstream call in
//! `usage`, each day's sums per (user, key, model) in `usage_days`, names
//! as small integers in `usage_labels`. Rows arrive in batches from the
//! recorder (`usage::Recorder`), each batch one write that also adds it to
//! the day sums, so a report over whole days reads the sums and only the
//! partial days at its ends read rows: a 30-day report costs the same at
//! a thousand rows or at millions (BENCHMARKS.md, "Usage reports").

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};

use super::reads::{Arg, Reach, Read};
use super::{Cached, Sqlite, StoreError};
use crate::time::{day_of, DAY_MS};

/// One upstream call.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRow {
    /// When the call ended, µs since the epoch; unique and increasing (the
    /// recorder assigns it).
    pub at_us: i64,
    pub user_id: String,
    /// None for a browser session or auth mode `none`.
    pub key_id: Option<String>,
    pub model: String,
    pub upstream: String,
    /// The route's name (`chat`, `chat_completions`, ...).
    pub route: &'static str,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The upstream sent no usage: the counts are our estimate.
    pub estimated: bool,
    /// The call's HTTP status (499: the client left first).
    pub status: u16,
    pub latency_ms: u64,
}

/// How a report groups its rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Model,
    Key,
    User,
}

impl GroupBy {
    pub const ALL: [GroupBy; 4] = [GroupBy::Day, GroupBy::Model, GroupBy::Key, GroupBy::User];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Day => "day",
            GroupBy::Model => "model",
            GroupBy::Key => "key",
            GroupBy::User => "user",
        }
    }

    pub fn parse(s: &str) -> Option<GroupBy> {
        GroupBy::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// A report's window and grouping: `[since_ms, until_ms)`, one user's
/// calls or everyone's.
#[derive(Clone, Copy, Debug)]
pub struct UsageQuery<'a> {
    pub since_ms: i64,
    pub until_ms: i64,
    pub user_id: Option<&'a str>,
    pub group_by: GroupBy,
}

/// One line of a report. `group`: the day (`YYYY-MM-DD`), model, key id
/// or user id; None for calls made without a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageItem {
    pub group: Option<String>,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl UsageItem {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "group": self.group,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        })
    }
}

/// The label id of "no key".
const NO_KEY: i64 = 0;

const LABEL_ID: &str = "SELECT id FROM usage_labels WHERE label = ?1";
const LABEL_TEXT: &str = "SELECT label FROM usage_labels WHERE id = ?1";
const DAYS: &str =
    "SELECT day, user_id, key_id, model, requests, prompt_tokens, completion_tokens \
     FROM usage_days WHERE day >= ?1 AND day < ?2";
const DAYS_OF_USER: &str =
    "SELECT day, user_id, key_id, model, requests, prompt_tokens, completion_tokens \
     FROM usage_days WHERE user_id = ?3 AND day >= ?1 AND day < ?2";
const ROWS: &str = "SELECT at, user_id, key_id, model, prompt_tokens, completion_tokens \
     FROM usage WHERE at >= ?1 AND at < ?2";
const ROWS_OF_USER: &str = "SELECT at, user_id, key_id, model, prompt_tokens, completion_tokens \
     FROM usage WHERE user_id = ?3 AND at >= ?1 AND at < ?2";
/// A user's tokens per day from a day on (the limits' day and month).
const SPENT: &str =
    "SELECT day, prompt_tokens + completion_tokens FROM usage_days WHERE user_id = ?1 AND day >= ?2";
/// The rowid's max: one step down the table's B-tree (`SEARCH usage`).
const LAST_AT: &str = "SELECT max(at) FROM usage";

/// This module's reads (see `db::reads`).
pub const READS: &[Read] = &[
    Read::bounded("usage::label_id", LABEL_ID, &[Arg::Int(1)]),
    Read::bounded("usage::label_text", LABEL_TEXT, &[Arg::Int(1)]),
    Read::bounded("usage::spent", SPENT, &[Arg::Int(1), Arg::Int(0)]),
    Read::bounded("usage::last_at", LAST_AT, &[]),
    Read {
        name: "usage::days",
        sql: DAYS,
        args: &[Arg::Int(0), Arg::Int(30)],
        reach: Reach::TimeRange,
    },
    Read {
        name: "usage::days_of_user",
        sql: DAYS_OF_USER,
        args: &[Arg::Int(0), Arg::Int(30), Arg::Int(1)],
        reach: Reach::TimeRange,
    },
    Read {
        name: "usage::rows",
        sql: ROWS,
        args: &[Arg::Int(0), Arg::Int(86_400_000_000)],
        reach: Reach::TimeRange,
    },
    Read {
        name: "usage::rows_of_user",
        sql: ROWS_OF_USER,
        args: &[Arg::Int(0), Arg::Int(86_400_000_000), Arg::Int(1)],
        reach: Reach::TimeRange,
    },
];

/// The id of `label`, added when new (inside a write).
fn label_id(tx: &rusqlite::Connection, label: &str) -> rusqlite::Result<i64> {
    if let Some(id) = tx
        .query_row_cached(LABEL_ID, [label], |r| r.get(0))
        .optional()?
    {
        return Ok(id);
    }
    tx.execute_cached("INSERT INTO usage_labels (label) VALUES (?1)", [label])?;
    Ok(tx.last_insert_rowid())
}

/// A day's sums for one (day, user, key, model).
#[derive(Default)]
pub(crate) struct Sums {
    pub requests: u64,
    pub prompt: u64,
    pub completion: u64,
}

impl super::store::UsageLog for Sqlite {
    /// Adds `rows` and their day sums in one write.
    fn record_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        self.write(|tx| {
            let mut ids: HashMap<String, i64> = HashMap::new();
            let mut id = |tx: &rusqlite::Connection, l: &str| -> rusqlite::Result<i64> {
                if let Some(i) = ids.get(l) {
                    return Ok(*i);
                }
                let i = label_id(tx, l)?;
                ids.insert(l.to_string(), i);
                Ok(i)
            };
            let mut labels = Vec::with_capacity(rows.len());
            for r in rows {
                let user = id(tx, &r.user_id)?;
                let key = match &r.key_id {
                    Some(k) => id(tx, k)?,
                    None => NO_KEY,
                };
                let model = id(tx, &r.model)?;
                let upstream = id(tx, &r.upstream)?;
                let route = id(tx, r.route)?;
                tx.execute_cached(
                    "INSERT INTO usage (at, user_id, key_id, model, upstream, route, prompt_tokens, \
                     completion_tokens, estimated, status, latency_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        r.at_us,
                        user,
                        key,
                        model,
                        upstream,
                        route,
                        r.prompt_tokens as i64,
                        r.completion_tokens as i64,
                        r.estimated,
                        r.status,
                        r.latency_ms as i64
                    ],
                )?;
                labels.push((user, key, model));
            }
            let mut next = labels.into_iter();
            let days = day_sums(rows, |_| next.next().unwrap_or_default());
            for ((day, user, key, model), s) in days {
                tx.execute_cached(
                    "INSERT INTO usage_days (day, user_id, key_id, model, requests, prompt_tokens, completion_tokens) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (day, user_id, key_id, model) DO UPDATE SET \
                     requests = requests + excluded.requests, \
                     prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
                     completion_tokens = completion_tokens + excluded.completion_tokens",
                    params![day, user, key, model, s.requests as i64, s.prompt as i64, s.completion as i64],
                )?;
            }
            Ok(())
        })
    }

    /// The latest row's time (µs), 0 when there is none: the recorder
    /// goes on from it, so times stay unique across restarts.
    fn last_usage_at(&self) -> Result<i64, StoreError> {
        let last: Option<i64> = self.conn()?.query_row_cached(LAST_AT, [], |r| r.get(0))?;
        Ok(last.unwrap_or(0))
    }

    /// `user_id`'s tokens spent on `today` and since `month_first` (days
    /// since the epoch), from the day sums.
    fn usage_spent(
        &self,
        user_id: &str,
        month_first: i64,
        today: i64,
    ) -> Result<(u64, u64), StoreError> {
        let conn = self.conn()?;
        let Some(user) = conn
            .query_row_cached(LABEL_ID, [user_id], |r| r.get::<_, i64>(0))
            .optional()?
        else {
            return Ok((0, 0));
        };
        let mut stmt = conn.prepare_cached(SPENT)?;
        let days = stmt
            .query_map(params![user, month_first], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<(i64, i64)>>>()?;
        Ok(spent_from(days, today))
    }

    /// A report: the calls ended in `[since, until)`, grouped
    /// (`build_report`).
    fn usage_report(&self, q: &UsageQuery) -> Result<Vec<UsageItem>, StoreError> {
        let conn = self.conn()?;
        let user = match q.user_id {
            Some(u) => match conn
                .query_row_cached(LABEL_ID, [u], |r| r.get::<_, i64>(0))
                .optional()?
            {
                Some(id) => Some(id),
                None => return Ok(Vec::new()),
            },
            None => None,
        };
        let query = |sql: &str, p: Vec<i64>, width: usize| -> Result<Vec<[i64; 7]>, StoreError> {
            let mut stmt = conn.prepare_cached(sql)?;
            let mut rows = stmt.query(rusqlite::params_from_iter(p))?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let mut v = [0i64; 7];
                for (i, x) in v.iter_mut().enumerate().take(width) {
                    *x = r.get(i)?;
                }
                out.push(v);
            }
            Ok(out)
        };
        build_report(
            q,
            |first, last| match user {
                Some(u) => query(DAYS_OF_USER, vec![first, last, u], 7),
                None => query(DAYS, vec![first, last], 7),
            },
            |from_us, to_us| match user {
                Some(u) => query(ROWS_OF_USER, vec![from_us, to_us, u], 6),
                None => query(ROWS, vec![from_us, to_us], 6),
            },
            |id| {
                Ok(conn
                    .query_row_cached(LABEL_TEXT, [id], |r| r.get(0))
                    .optional()?)
            },
        )
    }
}

/// A report from either store, given its three reads: `days(first, last)`
/// gives the day sums of whole days `[first, last)` as (day, user, key,
/// model, requests, prompt, completion); `rows(from_us, to_us)` the calls
/// in that range as (at, user, key, model, prompt, completion); `label(id)`
/// a label's text. Whole days come from the day sums, the partial days at
/// either end from the rows. Days in order; other groups by tokens, most
/// first.
pub(crate) fn build_report(
    q: &UsageQuery,
    mut days: impl FnMut(i64, i64) -> Result<Vec<[i64; 7]>, StoreError>,
    mut rows: impl FnMut(i64, i64) -> Result<Vec<[i64; 7]>, StoreError>,
    mut label: impl FnMut(i64) -> Result<Option<String>, StoreError>,
) -> Result<Vec<UsageItem>, StoreError> {
    let mut acc: HashMap<i64, Sums> = HashMap::new();
    let mut add = |day: i64, user: i64, key: i64, model: i64, s: Sums| {
        let group = match q.group_by {
            GroupBy::Day => day,
            GroupBy::Model => model,
            GroupBy::Key => key,
            GroupBy::User => user,
        };
        let e = acc.entry(group).or_default();
        e.requests += s.requests;
        e.prompt += s.prompt;
        e.completion += s.completion;
    };
    let n = |v: i64| v.max(0) as u64;
    if q.until_ms > q.since_ms {
        // Whole days [first, last), rows for the rest.
        let first = (q.since_ms + DAY_MS - 1).div_euclid(DAY_MS);
        let last = q.until_ms.div_euclid(DAY_MS);
        let mut raw = vec![(q.since_ms, q.until_ms)];
        if first < last {
            raw = vec![(q.since_ms, first * DAY_MS), (last * DAY_MS, q.until_ms)];
            for r in days(first, last)? {
                let s = Sums {
                    requests: n(r[4]),
                    prompt: n(r[5]),
                    completion: n(r[6]),
                };
                add(r[0], r[1], r[2], r[3], s);
            }
        }
        for (from, to) in raw.into_iter().filter(|(a, b)| b > a) {
            for r in rows(from * 1000, to * 1000)? {
                let s = Sums {
                    requests: 1,
                    prompt: n(r[4]),
                    completion: n(r[5]),
                };
                add(day_of(r[0] / 1000), r[1], r[2], r[3], s);
            }
        }
    }
    let mut items = Vec::with_capacity(acc.len());
    for (group, s) in acc {
        let name = match q.group_by {
            GroupBy::Day => Some(crate::time::format_day(group)),
            GroupBy::Key if group == NO_KEY => None,
            _ => label(group)?,
        };
        items.push((
            group,
            UsageItem {
                group: name,
                requests: s.requests,
                prompt_tokens: s.prompt,
                completion_tokens: s.completion,
            },
        ));
    }
    match q.group_by {
        GroupBy::Day => items.sort_by_key(|(g, _)| *g),
        _ => items.sort_by(|(_, a), (_, b)| {
            (b.prompt_tokens + b.completion_tokens)
                .cmp(&(a.prompt_tokens + a.completion_tokens))
                .then_with(|| a.group.cmp(&b.group))
        }),
    }
    Ok(items.into_iter().map(|(_, i)| i).collect())
}

/// Each (day, user, key, model)'s sums over `rows`, whose labels are
/// already ids: `ids(row)` gives (user, key, model).
pub(crate) fn day_sums(
    rows: &[UsageRow],
    mut ids: impl FnMut(&UsageRow) -> (i64, i64, i64),
) -> HashMap<(i64, i64, i64, i64), Sums> {
    let mut days: HashMap<(i64, i64, i64, i64), Sums> = HashMap::new();
    for r in rows {
        let (user, key, model) = ids(r);
        let s = days
            .entry((day_of(r.at_us / 1000), user, key, model))
            .or_default();
        s.requests += 1;
        s.prompt += r.prompt_tokens;
        s.completion += r.completion_tokens;
    }
    days
}

/// Today's and this month's tokens from (day, tokens) day sums since the
/// month's first day.
pub(crate) fn spent_from(days: impl IntoIterator<Item = (i64, i64)>, today: i64) -> (u64, u64) {
    let (mut day, mut month) = (0u64, 0u64);
    for (d, n) in days {
        month += n.max(0) as u64;
        if d == today {
            day += n.max(0) as u64;
        }
    }
    (day, month)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::temp_db;

    const HOUR_US: i64 = 3_600_000_000;

    fn row(at_us: i64, user: &str, model: &str, prompt: u64) -> UsageRow {
        UsageRow {
            at_us,
            user_id: user.into(),
            key_id: None,
            model: model.into(),
            upstream: "default".into(),
            route: "/v1/chat/completions",
            prompt_tokens: prompt,
            completion_tokens: 1,
            estimated: false,
            status: 200,
            latency_ms: 3,
        }
    }

    #[test]
    fn reports_add_whole_days_from_the_sums_and_the_ends_from_the_rows() {
        let db = temp_db();
        let day0 = 20_000 * DAY_MS * 1000; // µs
                                           // Rows across four days; their prompt tokens tell them apart.
        let rows = [
            row(day0 + 6 * HOUR_US, "a", "m", 1),
            row(day0 + 18 * HOUR_US, "a", "m", 2),
            row(day0 + 24 * HOUR_US + 12 * HOUR_US, "b", "n", 4),
            row(day0 + 48 * HOUR_US + 3 * HOUR_US, "a", "n", 8),
            row(day0 + 48 * HOUR_US + 20 * HOUR_US, "a", "m", 16),
            row(day0 + 72 * HOUR_US, "a", "m", 32),
        ];
        // In two batches: the day sums add up across writes.
        db.record_usage(&rows[..3]).unwrap();
        db.record_usage(&rows[3..]).unwrap();
        let ms = |us: i64| us / 1000;
        let report = |since: i64, until: i64, user: Option<&str>, by: GroupBy| {
            db.usage_report(&UsageQuery {
                since_ms: ms(since),
                until_ms: ms(until),
                user_id: user,
                group_by: by,
            })
            .unwrap()
        };
        // Every window against a plain sum over the rows.
        let windows = [
            (day0, day0 + 96 * HOUR_US),
            (day0 + 12 * HOUR_US, day0 + 60 * HOUR_US),
            (day0 + 7 * HOUR_US, day0 + 17 * HOUR_US),
            (day0 + 18 * HOUR_US, day0 + 72 * HOUR_US),
            (day0 + 24 * HOUR_US, day0 + 48 * HOUR_US),
            (day0 + 30 * HOUR_US, day0 + 30 * HOUR_US),
        ];
        for (since, until) in windows {
            for user in [None, Some("a"), Some("b")] {
                let want: u64 = rows
                    .iter()
                    .filter(|r| r.at_us >= since && r.at_us < until)
                    .filter(|r| user.is_none_or(|u| r.user_id == u))
                    .map(|r| r.prompt_tokens)
                    .sum();
                for by in GroupBy::ALL {
                    let got: u64 = report(since, until, user, by)
                        .iter()
                        .map(|i| i.prompt_tokens)
                        .sum();
                    assert_eq!(got, want, "{:?}..{:?} {:?} {:?}", since, until, user, by);
                }
            }
        }
        let by_day = report(day0, day0 + 96 * HOUR_US, Some("a"), GroupBy::Day);
        let days: Vec<(Option<&str>, u64, u64)> = by_day
            .iter()
            .map(|i| (i.group.as_deref(), i.requests, i.prompt_tokens))
            .collect();
        assert_eq!(
            days,
            [
                (Some("2024-10-04"), 2, 3),
                (Some("2024-10-06"), 2, 24),
                (Some("2024-10-07"), 1, 32)
            ]
        );
        let by_model = report(day0, day0 + 96 * HOUR_US, None, GroupBy::Model);
        assert_eq!(by_model[0].group.as_deref(), Some("m"), "most tokens first");
        assert_eq!(
            report(day0, day0 + 96 * HOUR_US, None, GroupBy::Key)[0].group,
            None
        );
        assert!(report(day0, day0 + 96 * HOUR_US, Some("nobody"), GroupBy::Day).is_empty());
        // The limits' view: a user's day and month from the sums.
        assert_eq!(
            db.usage_spent("a", 20_000, 20_002).unwrap(),
            (8 + 16 + 2, 1 + 2 + 8 + 16 + 32 + 5)
        );
        assert_eq!(db.last_usage_at().unwrap(), day0 + 72 * HOUR_US);
    }
}
