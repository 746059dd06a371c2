//! Conversations: an optional project, a title, a model and a system
//! prompt, owned by one user (every call takes its `Owner`; another user's
//! conversation, or project, is `NotFound`/`UnknownProject`). Listed newest first (by creation, so pages stay stable while
//! conversations are updated); deleting one removes its messages (FK
//! cascade).

use super::Cached;
use rusqlite::{params, OptionalExtension, Row};
use serde_json::json;

use super::audit_log::{self, Actor, AuditEvent};
use super::page::{Kind, Page, PageReq, Position};
use super::reads::{Arg, Read};
use super::users::Owner;
use super::{monotonic_now, opt_json, owned, Sqlite, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub id: String,
    pub project_id: Option<String>,
    pub title: Option<String>,
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

impl Conversation {
    /// The contract's shape; times as RFC 3339 UTC with milliseconds.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "project_id": opt_json(&self.project_id),
            "title": opt_json(&self.title),
            "model": opt_json(&self.model),
            "system_prompt": opt_json(&self.system_prompt),
            "created_at": crate::time::format_millis(self.created_at),
            "updated_at": crate::time::format_millis(self.updated_at),
        })
    }
}

/// A PATCH: the outer `None` leaves a field alone, `Some(None)` clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConversationPatch {
    pub project_id: Option<Option<String>>,
    pub title: Option<Option<String>>,
    pub model: Option<Option<String>>,
    pub system_prompt: Option<Option<String>>,
}

impl ConversationPatch {
    pub fn is_empty(&self) -> bool {
        *self == ConversationPatch::default()
    }

    /// Applies the patch to `c` (both stores), moving `updated_at` on.
    pub(crate) fn apply(&self, c: &mut Conversation) {
        let set = |field: &mut Option<String>, v: &Option<Option<String>>| {
            if let Some(v) = v {
                field.clone_from(v);
            }
        };
        set(&mut c.project_id, &self.project_id);
        set(&mut c.title, &self.title);
        set(&mut c.model, &self.model);
        set(&mut c.system_prompt, &self.system_prompt);
        c.updated_at = crate::time::now_millis().max(c.updated_at);
    }

    /// What changes, by name (never the new text), for the audit row.
    pub(crate) fn fields(&self) -> Vec<&'static str> {
        [
            ("project_id", self.project_id.is_some()),
            ("title", self.title.is_some()),
            ("model", self.model.is_some()),
            ("system_prompt", self.system_prompt.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect()
    }
}

/// The columns `from_row` reads, in its order.
macro_rules! columns {
    () => {
        "seq, id, project_id, title, model, system_prompt, created_at, updated_at"
    };
}
const GET: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM conversations WHERE id = ?1 AND owner_id = ?2"
);
const LIST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM conversations WHERE owner_id = ?1 AND (created_at, seq) < (?2, ?3)
     ORDER BY created_at DESC, seq DESC LIMIT ?4"
);
const LIST_OF_PROJECT: &str = concat!(
    "SELECT ",
    columns!(),
    // The project's index, named: by the owner's, SQLite would walk all
    // of the owner's conversations to find one project's.
    " FROM conversations INDEXED BY conversations_by_project
     WHERE project_id = ?1 AND owner_id = ?2 AND (created_at, seq) < (?3, ?4)
     ORDER BY created_at DESC, seq DESC LIMIT ?5"
);
/// The newest row's `created_at` (two lookups, as `projects::NEWEST`).
const NEWEST: &str =
    "SELECT created_at FROM conversations WHERE seq = (SELECT max(seq) FROM conversations)";
const PROJECT_EXISTS: &str = "SELECT 1 FROM projects WHERE id = ?1 AND owner_id = ?2";
/// The conversation row as the server writes it (also `examples/bulk_load.rs`).
pub const INSERT: &str =
    "INSERT INTO conversations (id, project_id, title, model, system_prompt, created_at, updated_at, owner_id)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// The reads above, for tests/query_plans.rs (`db::reads`).
pub const READS: &[Read] = &[
    Read::bounded(
        "conversations::get",
        GET,
        &[Arg::ConversationId, Arg::UserId],
    ),
    Read::bounded(
        "conversations::list",
        LIST,
        &[
            Arg::UserId,
            Arg::Int(i64::MAX),
            Arg::Int(i64::MAX),
            Arg::Limit,
        ],
    ),
    Read::bounded(
        "conversations::list_of_project",
        LIST_OF_PROJECT,
        &[
            Arg::ProjectId,
            Arg::UserId,
            Arg::Int(i64::MAX),
            Arg::Int(i64::MAX),
            Arg::Limit,
        ],
    ),
    Read::bounded("conversations::newest", NEWEST, &[]),
    Read::bounded(
        "conversations::project_exists",
        PROJECT_EXISTS,
        &[Arg::ProjectId, Arg::UserId],
    ),
];

fn from_row(r: &Row<'_>) -> rusqlite::Result<(Conversation, Position)> {
    let c = Conversation {
        id: r.get(1)?,
        project_id: r.get(2)?,
        title: r.get(3)?,
        model: r.get(4)?,
        system_prompt: r.get(5)?,
        created_at: r.get(6)?,
        updated_at: r.get(7)?,
    };
    let pos = Position {
        created_at: c.created_at,
        seq: r.get(0)?,
    };
    Ok((c, pos))
}

fn get_in(conn: &rusqlite::Connection, owner: Owner, id: &str) -> Result<Conversation, StoreError> {
    conn.query_row_cached(GET, [id, owner.id()], from_row)
        .optional()?
        .map(|(c, _)| c)
        .ok_or(StoreError::NotFound)
}

impl super::store::Conversations for Sqlite {
    /// Creates a conversation. An unknown `project_id` is
    /// `UnknownProject` (checked in the same transaction as the
    /// insert, so a concurrent project delete cannot slip between).
    fn create_conversation(
        &self,
        owner: Owner,
        project_id: Option<&str>,
        title: Option<&str>,
        model: Option<&str>,
        system_prompt: Option<&str>,
        actor: &Actor,
    ) -> Result<Conversation, StoreError> {
        self.write(|tx| {
            if let Some(pid) = project_id {
                if !owned(tx, PROJECT_EXISTS, owner, pid)? {
                    return Err(StoreError::UnknownProject);
                }
            }
            let now = monotonic_now(tx, NEWEST)?;
            let c = Conversation {
                id: crate::ids::new_id(),
                project_id: project_id.map(str::to_string),
                title: title.map(str::to_string),
                model: model.map(str::to_string),
                system_prompt: system_prompt.map(str::to_string),
                created_at: now,
                updated_at: now,
            };
            tx.execute_cached(
                INSERT,
                params![
                    c.id,
                    c.project_id,
                    c.title,
                    c.model,
                    c.system_prompt,
                    c.created_at,
                    c.updated_at,
                    owner.id()
                ],
            )?;
            audit_log::insert(
                tx,
                AuditEvent::ConversationCreated,
                actor,
                &json!({ "conversation_id": c.id, "project_id": c.project_id }),
            )?;
            Ok(c)
        })
    }

    /// One conversation, or `NotFound`.
    fn get_conversation(&self, owner: Owner, id: &str) -> Result<Conversation, StoreError> {
        get_in(&*self.conn()?, owner, id)
    }

    /// Conversations newest first, optionally of one project (an unknown
    /// project is `UnknownProject`).
    fn list_conversations(
        &self,
        owner: Owner,
        project_id: Option<&str>,
        req: &PageReq,
    ) -> Result<Page<Conversation>, StoreError> {
        let conn = self.conn()?;
        let before = req.after.unwrap_or(Position {
            created_at: i64::MAX,
            seq: i64::MAX,
        });
        let rows = match project_id {
            Some(pid) => {
                if !owned(&conn, PROJECT_EXISTS, owner, pid)? {
                    return Err(StoreError::UnknownProject);
                }
                let mut st = conn.prepare_cached(LIST_OF_PROJECT)?;
                let rows = st.query_map(
                    params![pid, owner.id(), before.created_at, before.seq, req.fetch()],
                    from_row,
                )?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            }
            None => {
                let mut st = conn.prepare_cached(LIST)?;
                let rows = st.query_map(
                    params![owner.id(), before.created_at, before.seq, req.fetch()],
                    from_row,
                )?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            }
        };
        Ok(Page::from_rows(rows, req, Kind::Conversations))
    }

    /// Applies a PATCH. An empty patch is a no-op that returns the
    /// conversation unchanged (JSON merge-patch semantics); otherwise
    /// `updated_at` moves forward.
    fn update_conversation(
        &self,
        owner: Owner,
        id: &str,
        patch: &ConversationPatch,
        actor: &Actor,
    ) -> Result<Conversation, StoreError> {
        self.write(|tx| {
            let mut c = get_in(tx, owner, id)?;
            if patch.is_empty() {
                return Ok(c);
            }
            if let Some(Some(pid)) = &patch.project_id {
                if !owned(tx, PROJECT_EXISTS, owner, pid)? {
                    return Err(StoreError::UnknownProject);
                }
            }
            patch.apply(&mut c);
            tx.execute_cached(
                "UPDATE conversations SET project_id = ?2, title = ?3, model = ?4, system_prompt = ?5, updated_at = ?6
                 WHERE id = ?1",
                params![c.id, c.project_id, c.title, c.model, c.system_prompt, c.updated_at],
            )?;
            let fields = patch.fields();
            audit_log::insert(
                tx,
                AuditEvent::ConversationUpdated,
                actor,
                &json!({ "conversation_id": c.id, "fields": fields }),
            )?;
            Ok(c)
        })
    }

    /// Deletes a conversation and its messages; audited in the same
    /// transaction.
    fn delete_conversation(&self, owner: Owner, id: &str, actor: &Actor) -> Result<(), StoreError> {
        self.write(|tx| {
            let n = tx.execute_cached(
                "DELETE FROM conversations WHERE id = ?1 AND owner_id = ?2",
                [id, owner.id()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            audit_log::insert(
                tx,
                AuditEvent::ConversationDeleted,
                actor,
                &json!({ "conversation_id": id }),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::temp_db;

    #[test]
    fn create_get_update_delete() {
        let db = temp_db();
        let me = db.user_by_name("admin").unwrap().id;
        let o = crate::db::Owner::of(&me);
        let c = db
            .create_conversation(
                o,
                None,
                Some("t"),
                None,
                Some("be brief"),
                &crate::db::Actor::default(),
            )
            .unwrap();
        assert_eq!(db.get_conversation(o, &c.id).unwrap(), c);
        assert_eq!(
            db.create_conversation(
                o,
                Some("nope"),
                None,
                None,
                None,
                &crate::db::Actor::default()
            )
            .unwrap_err(),
            StoreError::UnknownProject
        );
        let same = db
            .update_conversation(
                o,
                &c.id,
                &ConversationPatch::default(),
                &crate::db::Actor::default(),
            )
            .unwrap();
        assert_eq!(same, c);
        let patch = ConversationPatch {
            title: Some(None),
            model: Some(Some("m".into())),
            ..Default::default()
        };
        let u = db
            .update_conversation(o, &c.id, &patch, &crate::db::Actor::default())
            .unwrap();
        assert_eq!(
            (
                u.title.as_deref(),
                u.model.as_deref(),
                u.system_prompt.as_deref()
            ),
            (None, Some("m"), Some("be brief"))
        );
        db.delete_conversation(o, &c.id, &Actor::default()).unwrap();
        assert_eq!(db.get_conversation(o, &c.id), Err(StoreError::NotFound));
        assert_eq!(
            db.delete_conversation(o, &c.id, &Actor::default()),
            Err(StoreError::NotFound)
        );
    }

    #[test]
    fn created_at_never_goes_backwards_in_commit_order() {
        let db = temp_db();
        let me = db.user_by_name("admin").unwrap().id;
        let o = crate::db::Owner::of(&me);
        let ids: Vec<i64> = (0..20)
            .map(|_| {
                db.create_conversation(o, None, None, None, None, &crate::db::Actor::default())
                    .unwrap()
                    .created_at
            })
            .collect();
        assert!(ids.windows(2).all(|w| w[0] <= w[1]));
    }
}
