//! Projects: a name and a description that group conversations, owned by
//! one user (every call takes its `Owner`; another user's project is
//! `NotFound`). Listed newest first; deleting one removes its
//! conversations and their messages (FK cascade) and is audited in the
//! same transaction.

use super::Cached;
use rusqlite::{params, OptionalExtension, Row};
use serde_json::json;

use super::audit_log::{self, Actor, AuditEvent};
use super::page::{Kind, Page, PageReq, Position};
use super::reads::{Arg, Read};
use super::users::Owner;
use super::{monotonic_now, opt_json, Sqlite, StoreError};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    pub updated_at: i64,
}

impl Project {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "name": self.name,
            "description": opt_json(&self.description),
            "created_at": crate::time::format_millis(self.created_at),
            "updated_at": crate::time::format_millis(self.updated_at),
        })
    }
}

/// A PATCH: `None` leaves a field alone; `description: Some(None)` clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectPatch {
    pub name: Option<String>,
    pub description: Option<Option<String>>,
}

impl ProjectPatch {
    /// Applies the patch to `p` (both stores), moving `updated_at` on.
    pub(crate) fn apply(&self, p: &mut Project) {
        if let Some(name) = &self.name {
            p.name.clone_from(name);
        }
        if let Some(d) = &self.description {
            p.description.clone_from(d);
        }
        p.updated_at = crate::time::now_millis().max(p.updated_at);
    }

    /// What changes, by name (never the new text), for the audit row.
    pub(crate) fn fields(&self) -> Vec<&'static str> {
        [
            ("name", self.name.is_some()),
            ("description", self.description.is_some()),
        ]
        .into_iter()
        .filter_map(|(f, set)| set.then_some(f))
        .collect()
    }
}

/// The columns `from_row` reads, in its order.
macro_rules! columns {
    () => {
        "seq, id, name, description, created_at, updated_at"
    };
}
const GET: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM projects WHERE id = ?1 AND owner_id = ?2"
);
const LIST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM projects WHERE owner_id = ?1 AND (created_at, seq) < (?2, ?3)
     ORDER BY created_at DESC, seq DESC LIMIT ?4"
);
/// The newest row's `created_at`, found through the rowid's maximum (a
/// plan of two lookups, never a walk).
const NEWEST: &str = "SELECT created_at FROM projects WHERE seq = (SELECT max(seq) FROM projects)";
const COUNT_CONVERSATIONS: &str = "SELECT count(*) FROM conversations WHERE project_id = ?1";
/// The project row as the server writes it (also `examples/bulk_load.rs`).
pub const INSERT: &str = "INSERT INTO projects (id, name, description, created_at, updated_at, owner_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

/// The reads above, for tests/query_plans.rs (`db::reads`).
pub const READS: &[Read] = &[
    Read::bounded("projects::get", GET, &[Arg::ProjectId, Arg::UserId]),
    Read::bounded(
        "projects::list",
        LIST,
        &[
            Arg::UserId,
            Arg::Int(i64::MAX),
            Arg::Int(i64::MAX),
            Arg::Limit,
        ],
    ),
    Read::bounded("projects::newest", NEWEST, &[]),
    Read::bounded(
        "projects::count_conversations",
        COUNT_CONVERSATIONS,
        &[Arg::ProjectId],
    ),
];

fn from_row(r: &Row<'_>) -> rusqlite::Result<(Project, Position)> {
    let p = Project {
        id: r.get(1)?,
        name: r.get(2)?,
        description: r.get(3)?,
        created_at: r.get(4)?,
        updated_at: r.get(5)?,
    };
    let pos = Position {
        created_at: p.created_at,
        seq: r.get(0)?,
    };
    Ok((p, pos))
}

fn get_in(conn: &rusqlite::Connection, owner: Owner, id: &str) -> Result<Project, StoreError> {
    conn.query_row_cached(GET, [id, owner.id()], from_row)
        .optional()?
        .map(|(p, _)| p)
        .ok_or(StoreError::NotFound)
}

impl super::store::Projects for Sqlite {
    fn create_project(
        &self,
        owner: Owner,
        name: &str,
        description: Option<&str>,
        actor: &Actor,
    ) -> Result<Project, StoreError> {
        self.write(|tx| {
            let now = monotonic_now(tx, NEWEST)?;
            let p = Project {
                id: crate::ids::new_id(),
                name: name.to_string(),
                description: description.map(str::to_string),
                created_at: now,
                updated_at: now,
            };
            tx.execute_cached(
                INSERT,
                params![
                    p.id,
                    p.name,
                    p.description,
                    p.created_at,
                    p.updated_at,
                    owner.id()
                ],
            )?;
            audit_log::insert(
                tx,
                AuditEvent::ProjectCreated,
                actor,
                &json!({ "project_id": p.id }),
            )?;
            Ok(p)
        })
    }

    fn get_project(&self, owner: Owner, id: &str) -> Result<Project, StoreError> {
        get_in(&*self.conn()?, owner, id)
    }

    /// The owner's projects, newest first.
    fn list_projects(&self, owner: Owner, req: &PageReq) -> Result<Page<Project>, StoreError> {
        let conn = self.conn()?;
        let before = req.after.unwrap_or(Position {
            created_at: i64::MAX,
            seq: i64::MAX,
        });
        let mut st = conn.prepare_cached(LIST)?;
        let rows = st
            .query_map(
                params![owner.id(), before.created_at, before.seq, req.fetch()],
                from_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Page::from_rows(rows, req, Kind::Projects))
    }

    /// Applies a PATCH; an empty one returns the project unchanged.
    fn update_project(
        &self,
        owner: Owner,
        id: &str,
        patch: &ProjectPatch,
        actor: &Actor,
    ) -> Result<Project, StoreError> {
        self.write(|tx| {
            let mut p = get_in(tx, owner, id)?;
            if *patch == ProjectPatch::default() {
                return Ok(p);
            }
            patch.apply(&mut p);
            tx.execute_cached(
                "UPDATE projects SET name = ?2, description = ?3, updated_at = ?4 WHERE id = ?1",
                params![p.id, p.name, p.description, p.updated_at],
            )?;
            let fields = patch.fields();
            audit_log::insert(
                tx,
                AuditEvent::ProjectUpdated,
                actor,
                &json!({ "project_id": p.id, "fields": fields }),
            )?;
            Ok(p)
        })
    }

    /// Deletes a project with its conversations and messages.
    fn delete_project(&self, owner: Owner, id: &str, actor: &Actor) -> Result<(), StoreError> {
        self.write(|tx| {
            get_in(tx, owner, id)?;
            let conversations: i64 =
                tx.query_row_cached(COUNT_CONVERSATIONS, [id], |r| r.get(0))?;
            let n = tx.execute_cached(
                "DELETE FROM projects WHERE id = ?1 AND owner_id = ?2",
                [id, owner.id()],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound);
            }
            audit_log::insert(
                tx,
                AuditEvent::ProjectDeleted,
                actor,
                &json!({ "project_id": id, "conversations": conversations }),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::testing::temp_db;
    use crate::db::NewMessage;

    #[test]
    fn delete_cascades_to_conversations_and_messages() {
        let db = temp_db();
        let me = db.user_by_name("admin").unwrap().id;
        let o = crate::db::Owner::of(&me);
        let p = db
            .create_project(o, "p", None, &crate::db::Actor::default())
            .unwrap();
        let c = db
            .create_conversation(
                o,
                Some(&p.id),
                None,
                None,
                None,
                &crate::db::Actor::default(),
            )
            .unwrap();
        let other = db
            .create_conversation(o, None, None, None, None, &crate::db::Actor::default())
            .unwrap();
        db.insert_message(
            o,
            &NewMessage {
                conversation_id: &c.id,
                role: crate::db::Role::User,
                content: "hi",
                status: crate::db::Status::Complete,
                model: None,
                usage: None,
                finish_reason: None,
            },
        )
        .unwrap();
        db.delete_project(o, &p.id, &Actor::default()).unwrap();
        assert_eq!(db.get_conversation(o, &c.id), Err(StoreError::NotFound));
        assert!(db.get_conversation(o, &other.id).is_ok());
        let left: i64 = db
            .sqlite()
            .unwrap()
            .conn()
            .unwrap()
            .query_row_cached("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
        let audited: String = db
            .sqlite()
            .unwrap()
            .conn()
            .unwrap()
            .query_row_cached(
                "SELECT detail FROM audit WHERE event = 'project_deleted'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(
            audited.contains(&p.id) && audited.contains("\"conversations\":1"),
            "{}",
            audited
        );
    }

    #[test]
    fn patch_keeps_absent_fields_and_clears_null_ones() {
        let db = temp_db();
        let me = db.user_by_name("admin").unwrap().id;
        let o = crate::db::Owner::of(&me);
        let p = db
            .create_project(o, "p", Some("d"), &crate::db::Actor::default())
            .unwrap();
        assert_eq!(
            db.update_project(
                o,
                &p.id,
                &ProjectPatch::default(),
                &crate::db::Actor::default()
            )
            .unwrap(),
            p
        );
        let u = db
            .update_project(
                o,
                &p.id,
                &ProjectPatch {
                    name: Some("q".into()),
                    description: None,
                },
                &crate::db::Actor::default(),
            )
            .unwrap();
        assert_eq!(
            (u.name.as_str(), u.description.as_deref()),
            ("q", Some("d"))
        );
        let u = db
            .update_project(
                o,
                &p.id,
                &ProjectPatch {
                    name: None,
                    description: Some(None),
                },
                &crate::db::Actor::default(),
            )
            .unwrap();
        assert_eq!(u.description, None);
        assert_eq!(
            db.update_project(
                o,
                "nope",
                &ProjectPatch::default(),
                &crate::db::Actor::default()
            ),
            Err(StoreError::NotFound)
        );
    }
}
