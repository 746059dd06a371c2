//! Browser sessions. A session token is `pcss_` + 64 hex characters (256
//! random bits); only its SHA-256 is stored. A session ends at
//! `expires_at` (`auth.session_ttl_s` after sign-in), after
//! `auth.session_idle_s` without use, at sign-out (its row is deleted, so
//! the cookie stops working at once, in every process), and when its user
//! is disabled or changes password (`users::update_user`).
//!
//! Use is recorded at most once per `TOUCH_EVERY` per session, so a busy
//! page does not turn every read into a write; idle expiry is therefore
//! exact to that granularity.

use rusqlite::{params, OptionalExtension};

use super::reads::{Arg, Read};
use super::users::{Principal, Role};
use super::{Cached, Sqlite, StoreError};
use crate::secret::Secret;

pub const TOKEN_PREFIX: &str = "pcss_";
const TOKEN_RANDOM_BYTES: usize = 32;
/// Milliseconds between two recordings of a session's use.
const TOUCH_EVERY_MS: i64 = 60_000;

const INSERT: &str = "INSERT INTO sessions (hash, user_id, created_at, last_used_at, expires_at)
     VALUES (?1, ?2, ?3, ?3, ?4)";
/// A session with its user, by the token's hash (primary key).
const BY_HASH: &str =
    "SELECT s.hash, s.last_used_at, s.expires_at, u.id, u.name, u.role, u.disabled
     FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.hash = ?1";

/// The reads above, for tests/query_plans.rs (`db::reads`).
pub const READS: &[Read] = &[Read::bounded(
    "sessions::by_hash",
    BY_HASH,
    &[Arg::SessionHash],
)];

/// Whether `s` has the shape of a session token.
pub fn well_formed(s: &str) -> bool {
    s.strip_prefix(TOKEN_PREFIX).is_some_and(|hex| {
        hex.len() == TOKEN_RANDOM_BYTES * 2
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A new token and its hash (the token is the cookie; only the hash is
/// stored).
pub(crate) fn new_token() -> (Secret, String) {
    let token = Secret::new(format!(
        "{}{}",
        TOKEN_PREFIX,
        crate::ids::random_hex(TOKEN_RANDOM_BYTES)
    ));
    let hash = super::keys::hash_key(token.expose_str());
    (token, hash)
}

/// A session row found by `hash` (stored hash, last used, expires, user
/// id, name, role, disabled), judged at `now`: its user while it is live,
/// and whether its last use should be recorded again.
pub(crate) fn judge(
    hash: &str,
    row: Option<(String, i64, i64, String, String, Role, bool)>,
    idle_ms: i64,
    now: i64,
) -> Option<(Principal, bool)> {
    let (stored, last_used, expires_at, user_id, name, role, disabled) = row?;
    let live = crate::ids::constant_time_eq(stored.as_bytes(), hash.as_bytes())
        && now < expires_at
        && now < last_used.saturating_add(idle_ms)
        && !disabled;
    live.then(|| {
        (
            Principal {
                user_id,
                name,
                role,
            },
            now - last_used >= TOUCH_EVERY_MS,
        )
    })
}

/// What a presented session token turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionLookup {
    /// Valid: the user, and the token's hash (CSRF tokens are bound to it).
    Valid { principal: Principal, hash: String },
    /// Unknown, ended, expired, idle too long, or its user disabled.
    Invalid,
}

impl super::store::Sessions for Sqlite {
    /// Starts a session for `user_id`, valid for `ttl_ms`; returns the
    /// token (set as the cookie, never stored).
    fn create_session(&self, user_id: &str, ttl_ms: i64) -> Result<Secret, StoreError> {
        let (token, hash) = new_token();
        let now = crate::time::now_millis();
        self.write(|tx| {
            tx.execute_cached(
                INSERT,
                params![hash, user_id, now, now.saturating_add(ttl_ms)],
            )?;
            Ok(())
        })?;
        Ok(token)
    }

    /// Looks a presented token up at `now` (milliseconds): valid while
    /// neither expired nor idle for `idle_ms`, and its user enabled.
    fn lookup_session(&self, token: &str, idle_ms: i64) -> Result<SessionLookup, StoreError> {
        if !well_formed(token) {
            return Ok(SessionLookup::Invalid);
        }
        let hash = super::keys::hash_key(token);
        type Row = (String, i64, i64, String, String, Role, bool);
        let row: Option<Row> = self
            .conn()?
            .query_row_cached(BY_HASH, [&hash], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .optional()?;
        let now = crate::time::now_millis();
        let Some((principal, touch)) = judge(&hash, row, idle_ms, now) else {
            return Ok(SessionLookup::Invalid);
        };
        if touch {
            self.write(|tx| {
                tx.execute_cached(
                    "UPDATE sessions SET last_used_at = ?2 WHERE hash = ?1",
                    params![hash, now],
                )?;
                Ok(())
            })?;
        }
        Ok(SessionLookup::Valid { principal, hash })
    }

    /// Ends a session at once (sign-out).
    fn end_session(&self, hash: &str) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.execute_cached("DELETE FROM sessions WHERE hash = ?1", [hash])?;
            Ok(())
        })
    }
}
