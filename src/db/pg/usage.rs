//! Usage rows, day sums and reports on PostgreSQL (`db::usage` for the
//! tables' meaning). Several instances record at once: labels are added
//! with `ON CONFLICT DO NOTHING`, day sums are upserts, and a row whose
//! time another instance already took moves on by a microsecond.

use std::collections::HashMap;

use super::conn::Statements;
use super::content::rows;
use super::Postgres;
use crate::db::store;
use crate::db::usage::{build_report, day_sums, spent_from, UsageItem, UsageQuery, UsageRow};
use crate::db::StoreError;

const LABEL_ID: &str = "SELECT id FROM usage_labels WHERE label = $1";
const NO_KEY: i64 = 0;

fn label_id<C: postgres::GenericClient>(
    c: &mut C,
    st: &mut Statements,
    label: &str,
) -> Result<Option<i64>, StoreError> {
    let s = st.get(c, LABEL_ID)?;
    Ok(c.query_opt(&s, &[&label])?.map(|r| r.get(0)))
}

fn label_or_add(
    tx: &mut postgres::Transaction<'_>,
    st: &mut Statements,
    label: &str,
) -> Result<i64, StoreError> {
    if let Some(id) = label_id(tx, st, label)? {
        return Ok(id);
    }
    let s = st.get(
        tx,
        "INSERT INTO usage_labels (label) VALUES ($1) ON CONFLICT (label) DO NOTHING",
    )?;
    tx.execute(&s, &[&label])?;
    label_id(tx, st, label)?.ok_or_else(|| StoreError::internal("a usage label vanished"))
}

impl store::UsageLog for Postgres {
    fn record_usage(&self, batch: &[UsageRow]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.write(|tx, st| {
            let mut ids: HashMap<String, i64> = HashMap::new();
            let mut id = |tx: &mut postgres::Transaction<'_>,
                          st: &mut Statements,
                          l: &str|
             -> Result<i64, StoreError> {
                if let Some(i) = ids.get(l) {
                    return Ok(*i);
                }
                let i = label_or_add(tx, st, l)?;
                ids.insert(l.to_string(), i);
                Ok(i)
            };
            let insert = st.get(
                tx,
                "INSERT INTO usage (at, user_id, key_id, model, upstream, route, prompt_tokens, \
                 completion_tokens, estimated, status, latency_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (at) DO NOTHING",
            )?;
            let mut labels = Vec::with_capacity(batch.len());
            let mut stored = Vec::with_capacity(batch.len());
            for r in batch {
                let user = id(tx, st, &r.user_id)?;
                let key = match &r.key_id {
                    Some(k) => id(tx, st, k)?,
                    None => NO_KEY,
                };
                let model = id(tx, st, &r.model)?;
                let upstream = id(tx, st, &r.upstream)?;
                let route = id(tx, st, r.route)?;
                // `at` is unique: another instance may have used this µs.
                let mut at = r.at_us;
                loop {
                    let n = tx.execute(
                        &insert,
                        &[
                            &at,
                            &user,
                            &key,
                            &model,
                            &upstream,
                            &route,
                            &(r.prompt_tokens as i64),
                            &(r.completion_tokens as i64),
                            &i64::from(r.estimated),
                            &i64::from(r.status),
                            &(r.latency_ms as i64),
                        ],
                    )?;
                    if n == 1 {
                        break;
                    }
                    at += 1;
                }
                labels.push((user, key, model));
                stored.push(UsageRow { at_us: at, ..r.clone() });
            }
            let mut next = labels.into_iter();
            let days = day_sums(&stored, |_| next.next().unwrap_or_default());
            let upsert = st.get(
                tx,
                "INSERT INTO usage_days AS d (day, user_id, key_id, model, requests, prompt_tokens, completion_tokens) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (day, user_id, key_id, model) DO UPDATE SET \
                 requests = d.requests + excluded.requests, \
                 prompt_tokens = d.prompt_tokens + excluded.prompt_tokens, \
                 completion_tokens = d.completion_tokens + excluded.completion_tokens",
            )?;
            // In key order: two instances adding to the same sums lock
            // them in the same order (no deadlock).
            let mut days: Vec<_> = days.into_iter().collect();
            days.sort_by_key(|(k, _)| *k);
            for ((day, user, key, model), s) in days {
                tx.execute(
                    &upsert,
                    &[
                        &day,
                        &user,
                        &key,
                        &model,
                        &(s.requests as i64),
                        &(s.prompt as i64),
                        &(s.completion as i64),
                    ],
                )?;
            }
            Ok(())
        })
    }

    fn last_usage_at(&self) -> Result<i64, StoreError> {
        self.conn()?.run(|c, _| {
            Ok(c.query_one("SELECT max(at) FROM usage", &[])?
                .get::<_, Option<i64>>(0)
                .unwrap_or(0))
        })
    }

    fn usage_spent(
        &self,
        user_id: &str,
        month_first: i64,
        today: i64,
    ) -> Result<(u64, u64), StoreError> {
        let days = self.conn()?.run(|c, st| {
            rows(
                c,
                st,
                "SELECT d.day, d.prompt_tokens + d.completion_tokens FROM usage_days d
                 JOIN usage_labels l ON l.id = d.user_id WHERE l.label = $1 AND d.day >= $2",
                &[&user_id, &month_first],
                |r| (r.get::<_, i64>(0), r.get::<_, i64>(1)),
            )
        })?;
        Ok(spent_from(days, today))
    }

    fn usage_report(&self, q: &UsageQuery) -> Result<Vec<UsageItem>, StoreError> {
        let mut conn = self.conn()?;
        conn.run(|c, st| {
            let user = match q.user_id {
                Some(u) => match label_id(c, st, u)? {
                    Some(id) => Some(id),
                    None => return Ok(Vec::new()),
                },
                None => None,
            };
            // Three reads on one connection, one after the other.
            let cell = std::cell::RefCell::new((c, st));
            let query = |sql: &'static str,
                         p: &[&(dyn postgres::types::ToSql + Sync)],
                         width: usize|
             -> Result<Vec<[i64; 7]>, StoreError> {
                let mut g = cell.borrow_mut();
                let (c, st) = &mut *g;
                rows(*c, st, sql, p, |r| {
                    let mut v = [0i64; 7];
                    for (i, x) in v.iter_mut().enumerate().take(width) {
                        *x = r.get(i);
                    }
                    v
                })
            };
            build_report(
                q,
                |first, last| match user {
                    Some(u) => query(
                        "SELECT day, user_id, key_id, model, requests, prompt_tokens, completion_tokens \
                         FROM usage_days WHERE user_id = $3 AND day >= $1 AND day < $2",
                        &[&first, &last, &u],
                        7,
                    ),
                    None => query(
                        "SELECT day, user_id, key_id, model, requests, prompt_tokens, completion_tokens \
                         FROM usage_days WHERE day >= $1 AND day < $2",
                        &[&first, &last],
                        7,
                    ),
                },
                |from_us, to_us| match user {
                    Some(u) => query(
                        "SELECT at, user_id, key_id, model, prompt_tokens, completion_tokens \
                         FROM usage WHERE user_id = $3 AND at >= $1 AND at < $2",
                        &[&from_us, &to_us, &u],
                        6,
                    ),
                    None => query(
                        "SELECT at, user_id, key_id, model, prompt_tokens, completion_tokens \
                         FROM usage WHERE at >= $1 AND at < $2",
                        &[&from_us, &to_us],
                        6,
                    ),
                },
                |id| {
                    let mut g = cell.borrow_mut();
                    let (c, st) = &mut *g;
                    Ok(rows(
                        *c,
                        st,
                        "SELECT label FROM usage_labels WHERE id = $1",
                        &[&id],
                        |r| r.get::<_, String>(0),
                    )?
                    .pop())
                },
            )
        })
    }
}
