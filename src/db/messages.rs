//! Messages of a conversation, oldest first. Every call takes the `Owner`
//! of the conversation (another user's is `NotFound`). Inserting or
//! updating one moves its conversation's `updated_at` forward in the same
//! transaction.

use super::Cached;
use rusqlite::{params, OptionalExtension, Row};
use serde_json::json;

use super::page::{Kind, Page, PageReq, Position};
use super::reads::{Arg, Read};
use super::users::Owner;
use super::{monotonic_now, opt_json, owned, Sqlite, StoreError};

/// Who wrote a stored message. The one list of stored roles: the schema's
/// CHECK constraint and the JSON say the same names (`as_str`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    System,
    User,
    Assistant,
}

/// How a stored message ended: `Partial` while a streamed answer is being
/// written or when it broke off, `Error` (empty) when nothing arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Complete,
    Partial,
    Error,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::System, Role::User, Role::Assistant];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Complete, Status::Partial, Status::Error];

    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Complete => "complete",
            Status::Partial => "partial",
            Status::Error => "error",
        }
    }
}

text_enum!(Role);
text_enum!(Status);

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub id: String,
    pub conversation_id: String,
    pub role: Role,
    pub content: String,
    pub status: Status,
    pub model: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    pub usage: Option<serde_json::Value>,
    /// Why the answer ended, as the upstream said (`stop`, `length`,
    /// ...); None for user turns and while partial or on error.
    pub finish_reason: Option<String>,
}

impl Message {
    /// The contract's shape; `usage` only when known, `finish_reason`
    /// always (null when absent).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = json!({
            "id": self.id,
            "conversation_id": self.conversation_id,
            "role": self.role.as_str(),
            "content": self.content,
            "status": self.status.as_str(),
            "model": opt_json(&self.model),
            "created_at": crate::time::format_millis(self.created_at),
            "finish_reason": opt_json(&self.finish_reason),
        });
        if let Some(u) = &self.usage {
            v["usage"] = u.clone();
        }
        v
    }
}

/// A message to store.
#[derive(Clone, Debug)]
pub struct NewMessage<'a> {
    pub conversation_id: &'a str,
    pub role: Role,
    pub content: &'a str,
    pub status: Status,
    pub model: Option<&'a str>,
    pub usage: Option<&'a serde_json::Value>,
    pub finish_reason: Option<&'a str>,
}

/// The columns `from_row` reads, in its order.
macro_rules! columns {
    () => {
        "seq, id, conversation_id, role, content, status, model, created_at, usage, finish_reason"
    };
}
/// The newest `?2` messages, newest first (the chat history).
const RECENT: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM messages WHERE conversation_id = ?1
     ORDER BY created_at DESC, seq DESC LIMIT ?2"
);
const LIST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM messages WHERE conversation_id = ?1 AND (created_at, seq) > (?2, ?3)
     ORDER BY created_at ASC, seq ASC LIMIT ?4"
);
/// The newest row's `created_at` (two lookups, as `projects::NEWEST`).
const NEWEST: &str = "SELECT created_at FROM messages WHERE seq = (SELECT max(seq) FROM messages)";
const CONVERSATION_EXISTS: &str = "SELECT 1 FROM conversations WHERE id = ?1 AND owner_id = ?2";
/// A message's conversation, if the owner's.
const CONVERSATION_OF: &str = "SELECT m.conversation_id FROM messages m
     JOIN conversations c ON c.id = m.conversation_id
     WHERE m.id = ?1 AND c.owner_id = ?2";
/// The message row as the server writes it (also `examples/bulk_load.rs`).
pub const INSERT: &str =
    "INSERT INTO messages (id, conversation_id, role, content, status, model, usage, created_at, finish_reason)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
/// Moves a conversation's `updated_at` to a new message's time (also
/// `examples/bulk_load.rs`).
pub const BUMP_CONVERSATION: &str =
    "UPDATE conversations SET updated_at = max(updated_at, ?2) WHERE id = ?1";

/// The reads above, for tests/query_plans.rs (`db::reads`).
pub const READS: &[Read] = &[
    Read::bounded(
        "messages::recent",
        RECENT,
        &[Arg::ConversationId, Arg::Limit],
    ),
    Read::bounded(
        "messages::list",
        LIST,
        &[
            Arg::ConversationId,
            Arg::Int(i64::MIN),
            Arg::Int(i64::MIN),
            Arg::Limit,
        ],
    ),
    Read::bounded("messages::newest", NEWEST, &[]),
    Read::bounded(
        "messages::conversation_exists",
        CONVERSATION_EXISTS,
        &[Arg::ConversationId, Arg::UserId],
    ),
    Read::bounded(
        "messages::conversation_of",
        CONVERSATION_OF,
        &[Arg::MessageId, Arg::UserId],
    ),
];

fn from_row(r: &Row<'_>) -> rusqlite::Result<(Message, Position)> {
    let usage: Option<String> = r.get(8)?;
    let m = Message {
        id: r.get(1)?,
        conversation_id: r.get(2)?,
        role: r.get(3)?,
        content: r.get(4)?,
        status: r.get(5)?,
        model: r.get(6)?,
        created_at: r.get(7)?,
        // Written by us as JSON; unreadable text is dropped, not fatal.
        usage: usage.and_then(|u| serde_json::from_str(&u).ok()),
        finish_reason: r.get(9)?,
    };
    let pos = Position {
        created_at: m.created_at,
        seq: r.get(0)?,
    };
    Ok((m, pos))
}

impl super::store::Messages for Sqlite {
    /// Stores a message (unknown conversation: `NotFound`).
    fn insert_message(&self, owner: Owner, m: &NewMessage<'_>) -> Result<Message, StoreError> {
        let usage_text = m.usage.map(|u| u.to_string());
        self.write(|tx| {
            if !owned(tx, CONVERSATION_EXISTS, owner, m.conversation_id)? {
                return Err(StoreError::NotFound);
            }
            let now = monotonic_now(tx, NEWEST)?;
            let id = crate::ids::new_id();
            tx.execute_cached(
                INSERT,
                params![
                    id,
                    m.conversation_id,
                    m.role,
                    m.content,
                    m.status,
                    m.model,
                    usage_text,
                    now,
                    m.finish_reason
                ],
            )?;
            tx.execute_cached(BUMP_CONVERSATION, params![m.conversation_id, now])?;
            Ok(Message {
                id,
                conversation_id: m.conversation_id.to_string(),
                role: m.role,
                content: m.content.to_string(),
                status: m.status,
                model: m.model.map(str::to_string),
                created_at: now,
                usage: m.usage.cloned(),
                finish_reason: m.finish_reason.map(str::to_string),
            })
        })
    }

    /// Replaces a message's content, status, usage and finish reason (a
    /// streamed answer being completed). Unknown id: `NotFound`.
    fn update_message(
        &self,
        owner: Owner,
        id: &str,
        content: &str,
        status: Status,
        usage: Option<&serde_json::Value>,
        finish_reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let usage_text = usage.map(|u| u.to_string());
        self.write(|tx| {
            let conversation: Option<String> = tx
                .query_row_cached(CONVERSATION_OF, [id, owner.id()], |r| r.get(0))
                .optional()?;
            let Some(conversation) = conversation else {
                return Err(StoreError::NotFound);
            };
            tx.execute_cached(
                "UPDATE messages SET content = ?2, status = ?3, usage = ?4, finish_reason = ?5
                 WHERE id = ?1",
                params![id, content, status, usage_text, finish_reason],
            )?;
            tx.execute_cached(
                BUMP_CONVERSATION,
                params![conversation, crate::time::now_millis()],
            )?;
            Ok(())
        })
    }

    /// The last `max` messages of a conversation, returned oldest first
    /// (the history sent upstream).
    fn recent_messages(
        &self,
        owner: Owner,
        conversation_id: &str,
        max: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let conn = self.conn()?;
        if !owned(&conn, CONVERSATION_EXISTS, owner, conversation_id)? {
            return Err(StoreError::NotFound);
        }
        let mut st = conn.prepare_cached(RECENT)?;
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut rows = st
            .query_map(params![conversation_id, limit], from_row)?
            .map(|r| r.map(|(m, _)| m))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        rows.reverse();
        Ok(rows)
    }

    /// A page of a conversation's messages, oldest first (unknown
    /// conversation: `NotFound`).
    fn list_messages(
        &self,
        owner: Owner,
        conversation_id: &str,
        req: &PageReq,
    ) -> Result<Page<Message>, StoreError> {
        let conn = self.conn()?;
        if !owned(&conn, CONVERSATION_EXISTS, owner, conversation_id)? {
            return Err(StoreError::NotFound);
        }
        let after = req.after.unwrap_or(Position {
            created_at: i64::MIN,
            seq: i64::MIN,
        });
        let mut st = conn.prepare_cached(LIST)?;
        let rows = st
            .query_map(
                params![conversation_id, after.created_at, after.seq, req.fetch()],
                from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Page::from_rows(rows, req, Kind::Messages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::temp_db;

    fn msg<'a>(conversation_id: &'a str, content: &'a str) -> NewMessage<'a> {
        NewMessage {
            conversation_id,
            role: Role::User,
            content,
            status: Status::Complete,
            model: None,
            usage: None,
            finish_reason: None,
        }
    }

    #[test]
    fn insert_bumps_conversation_and_recent_is_oldest_first() {
        let db = temp_db();
        let me = db.user_by_name("admin").unwrap().id;
        let o = crate::db::Owner::of(&me);
        let c = db
            .create_conversation(o, None, None, None, None, &crate::db::Actor::default())
            .unwrap();
        for i in 0..5 {
            db.insert_message(o, &msg(&c.id, &i.to_string())).unwrap();
        }
        let recent = db.recent_messages(o, &c.id, 3).unwrap();
        let texts: Vec<&str> = recent.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(texts, ["2", "3", "4"]);
        let after = db.get_conversation(o, &c.id).unwrap();
        assert!(after.updated_at >= recent[2].created_at);
        assert_eq!(
            db.insert_message(o, &msg("nope", "x")).unwrap_err(),
            StoreError::NotFound
        );
    }

    #[test]
    fn names_round_trip_and_the_schema_allows_exactly_them() {
        for r in Role::ALL {
            assert_eq!(r.as_str().parse(), Ok(r));
        }
        for s in Status::ALL {
            assert_eq!(s.as_str().parse(), Ok(s));
        }
        assert_eq!("tool".parse::<Role>(), Err(()));
        assert_eq!("done".parse::<Status>(), Err(()));
        // The CHECK constraints name the same lists.
        let db = temp_db();
        let me = db.user_by_name("admin").unwrap().id;
        let o = crate::db::Owner::of(&me);
        let c = db
            .create_conversation(o, None, None, None, None, &crate::db::Actor::default())
            .unwrap();
        let insert = |role: &str, status: &str| {
            db.sqlite().unwrap().conn().unwrap().execute(
                "INSERT INTO messages (id, conversation_id, role, content, status, created_at)
                 VALUES (?1, ?2, ?3, '', ?4, 0)",
                params![crate::ids::new_id(), c.id, role, status],
            )
        };
        for r in Role::ALL {
            for s in Status::ALL {
                assert!(insert(r.as_str(), s.as_str()).is_ok());
            }
        }
        assert!(insert("tool", "complete").is_err());
        assert!(insert("user", "done").is_err());
    }

    #[test]
    fn update_message_sets_content_status_and_usage() {
        let db = temp_db();
        let me = db.user_by_name("admin").unwrap().id;
        let o = crate::db::Owner::of(&me);
        let c = db
            .create_conversation(o, None, None, None, None, &crate::db::Actor::default())
            .unwrap();
        let m = db
            .insert_message(
                o,
                &NewMessage {
                    role: Role::Assistant,
                    status: Status::Partial,
                    ..msg(&c.id, "")
                },
            )
            .unwrap();
        let usage = json!({"prompt_tokens": 3});
        db.update_message(
            o,
            &m.id,
            "done",
            Status::Complete,
            Some(&usage),
            Some("length"),
        )
        .unwrap();
        let got = db.recent_messages(o, &c.id, 10).unwrap().remove(0);
        assert_eq!(
            (got.content.as_str(), got.status, got.usage.clone()),
            ("done", Status::Complete, Some(usage))
        );
        assert_eq!(got.to_json()["usage"]["prompt_tokens"], 3);
        assert_eq!(got.to_json()["status"], "complete");
        assert_eq!(got.to_json()["role"], "assistant");
        assert_eq!(got.to_json()["finish_reason"], "length");
        let user = db.insert_message(o, &msg(&c.id, "hi")).unwrap();
        assert_eq!(user.to_json()["finish_reason"], serde_json::Value::Null);
        assert_eq!(
            db.update_message(o, "nope", "x", Status::Complete, None, None),
            Err(StoreError::NotFound)
        );
    }

    #[test]
    fn pages_walk_every_message_once() {
        let db = temp_db();
        let me = db.user_by_name("admin").unwrap().id;
        let o = crate::db::Owner::of(&me);
        let c = db
            .create_conversation(o, None, None, None, None, &crate::db::Actor::default())
            .unwrap();
        for i in 0..7 {
            db.insert_message(o, &msg(&c.id, &i.to_string())).unwrap();
        }
        let mut seen = Vec::new();
        let mut req = PageReq {
            limit: 3,
            after: None,
        };
        loop {
            let page = db.list_messages(o, &c.id, &req).unwrap();
            seen.extend(page.items.iter().map(|m| m.content.clone()));
            match page.next_cursor {
                Some(cur) => req.after = crate::db::page::decode(&cur, Kind::Messages),
                None => break,
            }
        }
        assert_eq!(seen, ["0", "1", "2", "3", "4", "5", "6"]);
    }
}
