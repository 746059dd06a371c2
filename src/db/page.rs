//! Keyset pagination: `?limit=` (1..200, default 50) and an opaque
//! `?cursor=`, answered as `{"items": [...], "next_cursor": ...|null}`.
//!
//! Rows are walked in `(created_at, seq)` order, `seq` being the row's
//! insertion sequence. Why not `(created_at, id)`: ids are random, so two
//! rows created in the same millisecond by concurrent requests could commit
//! in the opposite order of their ids and the later one would land behind a
//! reader's cursor (a gap). `seq` follows commit order, and `created_at` is
//! assigned inside the write transaction as `max(now, newest created_at)`,
//! so `(created_at, seq)` only ever grows: a walk never repeats a row and
//! never skips one that existed when it started (or that committed before
//! the walk passed its position).
//!
//! The cursor is the hex of `<kind><created_at>.<seq>`: opaque to clients,
//! tagged with the list it belongs to, and checked when decoded.
//!
//! The rules for `limit` and `cursor` are here (`PageReq::from_query`);
//! the handler passes its query lookup, so storage never sees a request.

use super::StoreError;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 200;

/// Which list a cursor belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Projects,
    Conversations,
    Messages,
}

impl Kind {
    fn tag(self) -> char {
        match self {
            Kind::Projects => 'p',
            Kind::Conversations => 'c',
            Kind::Messages => 'm',
        }
    }
}

/// A position in a list: the last row already returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub created_at: i64,
    pub seq: i64,
}

/// One page request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageReq {
    pub limit: usize,
    pub after: Option<Position>,
}

impl PageReq {
    /// Reads `limit` and `cursor` through `param`, the request's query
    /// lookup (storage never sees the request itself). Absent (or an empty
    /// `cursor`): `DEFAULT_LIMIT` rows from the list's start. `limit` must be a whole number from 1 to
    /// `MAX_LIMIT`; `cursor` must be one this list issued.
    pub fn from_query(
        param: impl Fn(&str) -> Option<String>,
        kind: Kind,
    ) -> Result<PageReq, StoreError> {
        let limit = match param("limit") {
            None => DEFAULT_LIMIT,
            Some(s) => match s.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(StoreError::invalid(
                        "limit",
                        format!("must be a whole number from 1 to {}", MAX_LIMIT),
                    ))
                }
            },
        };
        let after = match param("cursor") {
            // `cursor=` (empty) is no cursor: the first page.
            None => None,
            Some(c) if c.is_empty() => None,
            Some(c) => Some(decode(&c, kind).ok_or(StoreError::InvalidCursor)?),
        };
        Ok(PageReq { limit, after })
    }

    /// Rows to fetch: one more than the limit tells whether a next page exists.
    pub fn fetch(&self) -> i64 {
        self.limit as i64 + 1
    }
}

/// A page of items plus the cursor of the next one.
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` rows fetched in walk order.
    pub fn from_rows(mut rows: Vec<(T, Position)>, req: &PageReq, kind: Kind) -> Page<T> {
        let more = rows.len() > req.limit;
        rows.truncate(req.limit);
        let next_cursor = if more {
            rows.last().map(|(_, p)| encode(*p, kind))
        } else {
            None
        };
        Page {
            items: rows.into_iter().map(|(t, _)| t).collect(),
            next_cursor,
        }
    }

    pub fn to_json(&self, item: impl Fn(&T) -> serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "items": self.items.iter().map(item).collect::<Vec<_>>(),
            "next_cursor": self.next_cursor,
        })
    }
}

pub fn encode(p: Position, kind: Kind) -> String {
    crate::ids::hex(format!("{}{}.{}", kind.tag(), p.created_at, p.seq).as_bytes())
}

/// Longest cursor accepted (a tag and two i64 in hex is far below this).
const MAX_CURSOR_CHARS: usize = 128;

pub fn decode(s: &str, kind: Kind) -> Option<Position> {
    if s.len() > MAX_CURSOR_CHARS || s.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let rest = text.strip_prefix(kind.tag())?;
    let (a, b) = rest.split_once('.')?;
    let all_digits = |x: &str| !x.is_empty() && x.bytes().all(|c| c.is_ascii_digit());
    if !all_digits(a) || !all_digits(b) {
        return None;
    }
    Some(Position {
        created_at: a.parse().ok()?,
        seq: b.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `q` as a query string (`limit=5&cursor=...`).
    fn req(q: &str, kind: Kind) -> Result<PageReq, StoreError> {
        let param = |name: &str| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        PageReq::from_query(param, kind)
    }

    fn field(e: StoreError) -> &'static str {
        match e {
            StoreError::Invalid { field, .. } => field,
            StoreError::InvalidCursor => "cursor",
            other => panic!("{:?}", other),
        }
    }

    #[test]
    fn cursor_round_trips_and_is_bound_to_its_list() {
        let p = Position {
            created_at: 1_795_447_743_123,
            seq: 42,
        };
        let c = encode(p, Kind::Messages);
        assert!(c.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(decode(&c, Kind::Messages), Some(p));
        assert_eq!(decode(&c, Kind::Projects), None);
    }

    #[test]
    fn query_table() {
        assert_eq!(
            req("", Kind::Projects).unwrap(),
            PageReq {
                limit: 50,
                after: None
            }
        );
        assert_eq!(req("limit=1", Kind::Projects).unwrap().limit, 1);
        assert_eq!(req("cursor=", Kind::Projects).unwrap().after, None);
        assert_eq!(req("limit=200", Kind::Projects).unwrap().limit, 200);
        for bad in [
            "limit=0",
            "limit=201",
            "limit=x",
            "limit=-1",
            "limit=",
            "limit=1.5",
        ] {
            assert_eq!(
                field(req(bad, Kind::Projects).unwrap_err()),
                "limit",
                "{}",
                bad
            );
        }
        let good = encode(
            Position {
                created_at: 5,
                seq: 6,
            },
            Kind::Projects,
        );
        assert!(req(&format!("cursor={}", good), Kind::Projects).is_ok());
        let forged = [
            "zz".to_string(),
            "abc".into(),
            crate::ids::hex(b"p5"),
            crate::ids::hex(b"p-5.6"),
            crate::ids::hex(b"p5.6.7"),
            crate::ids::hex(b"p99999999999999999999.1"),
            "a".repeat(1000),
        ];
        for bad in forged {
            assert_eq!(
                field(req(&format!("cursor={}", bad), Kind::Projects).unwrap_err()),
                "cursor",
                "{}",
                bad
            );
        }
    }

    #[test]
    fn page_has_next_cursor_only_when_more_rows_exist() {
        let rows = |n: i64| {
            (0..n)
                .map(|i| {
                    (
                        i,
                        Position {
                            created_at: i,
                            seq: i,
                        },
                    )
                })
                .collect::<Vec<_>>()
        };
        let r = PageReq {
            limit: 2,
            after: None,
        };
        let p = Page::from_rows(rows(3), &r, Kind::Projects);
        assert_eq!(p.items, vec![0, 1]);
        assert_eq!(
            decode(p.next_cursor.as_deref().unwrap(), Kind::Projects),
            Some(Position {
                created_at: 1,
                seq: 1
            })
        );
        assert!(Page::from_rows(rows(2), &r, Kind::Projects)
            .next_cursor
            .is_none());
    }
}
