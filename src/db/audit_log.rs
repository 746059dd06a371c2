//! The `audit` table: one row per state change or security event, with
//! time, event name, request id, API key id, client address and a JSON
//! detail. Rows are written in the same transaction as the change they
//! record (`insert`), or on their own (`Db::record_audit`). Never holds a
//! key or token: callers pass ids and counts only.

use super::Cached;
use rusqlite::params;
use serde_json::{json, Value};

use super::reads::{Arg, Read};
use super::{Sqlite, StoreError};

/// What an audit row records. Its name (`as_str`) is the text stored in
/// the `event` column and printed by `portcullis audit`; nowhere else is
/// it text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuditEvent {
    KeyCreated,
    KeyRevoked,
    UserCreated,
    UserUpdated,
    SignedIn,
    SignedOut,
    ProjectCreated,
    ProjectUpdated,
    ProjectDeleted,
    ConversationCreated,
    ConversationUpdated,
    ConversationDeleted,
    /// Counted per client per minute (`audit::Audit`).
    AuthFailed,
    /// Counted per client per minute (`audit::Audit`).
    RateLimited,
}

impl AuditEvent {
    pub const ALL: [AuditEvent; 14] = [
        AuditEvent::KeyCreated,
        AuditEvent::KeyRevoked,
        AuditEvent::UserCreated,
        AuditEvent::UserUpdated,
        AuditEvent::SignedIn,
        AuditEvent::SignedOut,
        AuditEvent::ProjectCreated,
        AuditEvent::ProjectUpdated,
        AuditEvent::ConversationCreated,
        AuditEvent::ConversationUpdated,
        AuditEvent::ProjectDeleted,
        AuditEvent::ConversationDeleted,
        AuditEvent::AuthFailed,
        AuditEvent::RateLimited,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            AuditEvent::KeyCreated => "key_created",
            AuditEvent::KeyRevoked => "key_revoked",
            AuditEvent::UserCreated => "user_created",
            AuditEvent::UserUpdated => "user_updated",
            AuditEvent::SignedIn => "signed_in",
            AuditEvent::SignedOut => "signed_out",
            AuditEvent::ProjectCreated => "project_created",
            AuditEvent::ProjectUpdated => "project_updated",
            AuditEvent::ConversationCreated => "conversation_created",
            AuditEvent::ConversationUpdated => "conversation_updated",
            AuditEvent::ProjectDeleted => "project_deleted",
            AuditEvent::ConversationDeleted => "conversation_deleted",
            AuditEvent::AuthFailed => "auth_failed",
            AuditEvent::RateLimited => "rate_limited",
        }
    }
}

text_enum!(AuditEvent);

/// Who caused an event (a request's actor: `audit::actor`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    pub request_id: Option<String>,
    /// The user the request acted for.
    pub user_id: Option<String>,
    pub key_id: Option<String>,
    /// A session's id: the first 16 hex digits of its token's hash (names
    /// the session without being usable as one).
    pub session: Option<String>,
    pub client: Option<String>,
}

impl Actor {
    /// The operator at the command line.
    pub fn cli() -> Actor {
        Actor {
            client: Some("cli".to_string()),
            ..Actor::default()
        }
    }
}

/// The columns `AuditRow` is read from, in order.
macro_rules! columns {
    () => {
        "id, time, event, request_id, key_id, client, detail, user_id, session"
    };
}
/// Rows from a time on, oldest first.
const SINCE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM audit WHERE time >= ?1 ORDER BY time, id LIMIT ?2"
);
/// The newest rows, newest first.
const NEWEST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM audit ORDER BY time DESC, id DESC LIMIT ?1"
);

/// The reads above, for tests/query_plans.rs (`db::reads`).
pub const READS: &[Read] = &[
    Read::bounded("audit_log::since", SINCE, &[Arg::AuditTime, Arg::Limit]),
    Read::bounded("audit_log::newest", NEWEST, &[Arg::Limit]),
];

/// Writes one row on `conn` (usually inside the caller's transaction).
pub fn insert(
    conn: &rusqlite::Connection,
    event: AuditEvent,
    actor: &Actor,
    detail: &Value,
) -> Result<(), StoreError> {
    insert_at(conn, crate::time::now_millis(), event, actor, detail)
}

pub fn insert_at(
    conn: &rusqlite::Connection,
    time: i64,
    event: AuditEvent,
    actor: &Actor,
    detail: &Value,
) -> Result<(), StoreError> {
    conn.execute_cached(
        "INSERT INTO audit (time, event, request_id, key_id, client, detail, user_id, session)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            time,
            event,
            actor.request_id,
            actor.key_id,
            actor.client,
            detail.to_string(),
            actor.user_id,
            actor.session
        ],
    )?;
    Ok(())
}

/// One stored row.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditRow {
    pub id: i64,
    pub time: i64,
    pub event: AuditEvent,
    pub actor: Actor,
    pub detail: Value,
}

impl AuditRow {
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "time": crate::time::format_millis(self.time),
            "event": self.event.as_str(),
            "request_id": self.actor.request_id,
            "user_id": self.actor.user_id,
            "key_id": self.actor.key_id,
            "session": self.actor.session,
            "client": self.actor.client,
            "detail": self.detail,
        })
    }
}

impl super::store::AuditTrail for Sqlite {
    /// Writes one audit row in its own transaction (in the writers' queue,
    /// like every write).
    fn record_audit(
        &self,
        event: AuditEvent,
        actor: &Actor,
        detail: &Value,
    ) -> Result<(), StoreError> {
        self.write(|tx| insert(tx, event, actor, detail))
    }

    /// Writes several rows (aggregated counters) in one transaction.
    fn record_audit_batch(
        &self,
        rows: &[(i64, AuditEvent, Actor, Value)],
    ) -> Result<(), StoreError> {
        self.write(|tx| {
            for (time, event, actor, detail) in rows {
                insert_at(tx, *time, *event, actor, detail)?;
            }
            Ok(())
        })
    }

    /// Rows at or after `since` (epoch ms), oldest first, at most `limit`;
    /// without `since`, the newest `limit` rows, still oldest first.
    fn audit_rows(&self, since: Option<i64>, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        let conn = self.conn()?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let map = |r: &rusqlite::Row<'_>| {
            let detail: Option<String> = r.get(6)?;
            Ok(AuditRow {
                id: r.get(0)?,
                time: r.get(1)?,
                event: r.get(2)?,
                actor: Actor {
                    request_id: r.get(3)?,
                    key_id: r.get(4)?,
                    client: r.get(5)?,
                    user_id: r.get(7)?,
                    session: r.get(8)?,
                },
                detail: detail
                    .and_then(|d| serde_json::from_str(&d).ok())
                    .unwrap_or(Value::Null),
            })
        };
        let rows = match since {
            Some(t) => {
                let mut st = conn.prepare(SINCE)?;
                let rows = st.query_map(params![t, limit], map)?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            }
            None => {
                let mut st = conn.prepare(NEWEST)?;
                let rows = st.query_map(params![limit], map)?;
                let mut rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
                rows.reverse();
                rows
            }
        };
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::temp_db;

    #[test]
    fn rows_come_back_oldest_first_with_since_and_limit() {
        let db = temp_db();
        let rows: Vec<(i64, AuditEvent, Actor, Value)> = (0..5)
            .map(|i| {
                (
                    1000 + i,
                    AuditEvent::KeyCreated,
                    Actor::cli(),
                    json!({ "n": i }),
                )
            })
            .collect();
        db.record_audit_batch(&rows).unwrap();
        let last2 = db.audit_rows(None, 2).unwrap();
        assert_eq!(
            last2.iter().map(|r| r.time).collect::<Vec<_>>(),
            [1003, 1004]
        );
        let since = db.audit_rows(Some(1001), 2).unwrap();
        assert_eq!(
            since.iter().map(|r| r.time).collect::<Vec<_>>(),
            [1001, 1002]
        );
        assert_eq!(since[0].detail["n"], 1);
        assert_eq!(since[0].to_json()["client"], "cli");
        assert_eq!(since[0].to_json()["event"], "key_created");
    }

    #[test]
    fn event_names_round_trip_and_unknown_text_is_refused() {
        for e in AuditEvent::ALL {
            assert_eq!(e.as_str().parse(), Ok(e));
        }
        assert_eq!("Key_Created".parse::<AuditEvent>(), Err(()));
        let db = temp_db();
        db.sqlite()
            .unwrap()
            .conn()
            .unwrap()
            .execute_batch("INSERT INTO audit (time, event) VALUES (1, 'no_such_event')")
            .unwrap();
        assert!(matches!(
            db.audit_rows(None, 10),
            Err(StoreError::Internal { .. })
        ));
    }
}
