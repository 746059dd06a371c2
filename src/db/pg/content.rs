//! Projects, conversations and messages on PostgreSQL: the statements of
//! `db::projects`, `db::conversations` and `db::messages` in PostgreSQL's
//! dialect, with the same owner checks, audit rows and page order.

use postgres::{GenericClient, Row};
use serde_json::json;

use super::conn::Statements;
use super::Postgres;
use crate::db::audit_log::{Actor, AuditEvent};
use crate::db::conversations::{Conversation, ConversationPatch};
use crate::db::messages::{Message, NewMessage, Status};
use crate::db::page::{Kind, Page, PageReq, Position};
use crate::db::projects::{Project, ProjectPatch};
use crate::db::store;
use crate::db::users::Owner;
use crate::db::StoreError;

/// Advisory lock keys: inserts into one list take turns (module doc of
/// `pg`), so `(created_at, seq)` grows in commit order.
pub const LOCK_PROJECTS: i64 = 0x7063_0001;
pub const LOCK_CONVERSATIONS: i64 = 0x7063_0002;
pub const LOCK_MESSAGES: i64 = 0x7063_0003;

/// Takes the insert turn of a list, then the `created_at` for its new row:
/// now, but never before the newest row's (as `db::monotonic_now`).
pub fn ordered_now(
    tx: &mut postgres::Transaction<'_>,
    st: &mut Statements,
    lock: i64,
    newest: &'static str,
) -> Result<i64, StoreError> {
    let s = st.get(tx, "SELECT pg_advisory_xact_lock($1)")?;
    tx.execute(&s, &[&lock])?;
    let s = st.get(tx, newest)?;
    let newest: Option<i64> = tx.query_opt(&s, &[])?.map(|r| r.get(0));
    Ok(crate::time::now_millis().max(newest.unwrap_or(i64::MIN)))
}

/// Whether `sql` (taking id, owner) finds a row.
fn owned<C: GenericClient>(
    c: &mut C,
    st: &mut Statements,
    sql: &'static str,
    owner: Owner,
    id: &str,
) -> Result<bool, StoreError> {
    let s = st.get(c, sql)?;
    Ok(c.query_opt(&s, &[&id, &owner.id()])?.is_some())
}

/// Runs a read-only query and maps its rows.
pub fn rows<C: GenericClient, T>(
    c: &mut C,
    st: &mut Statements,
    sql: &'static str,
    params: &[&(dyn postgres::types::ToSql + Sync)],
    f: impl Fn(&Row) -> T,
) -> Result<Vec<T>, StoreError> {
    let s = st.get(c, sql)?;
    Ok(c.query(&s, params)?.iter().map(f).collect())
}

/// Inserts an audit row in the caller's transaction (`db::audit_log`).
pub fn audit(
    tx: &mut postgres::Transaction<'_>,
    st: &mut Statements,
    event: AuditEvent,
    actor: &Actor,
    detail: &serde_json::Value,
) -> Result<(), StoreError> {
    super::access::insert_audit(tx, st, crate::time::now_millis(), event, actor, detail)
}

const BEFORE_ALL: Position = Position {
    created_at: i64::MAX,
    seq: i64::MAX,
};

// --- projects ---

const P_GET: &str = "SELECT seq, id, name, description, created_at, updated_at FROM projects WHERE id = $1 AND owner_id = $2";
const P_LIST: &str = "SELECT seq, id, name, description, created_at, updated_at FROM projects
     WHERE owner_id = $1 AND (created_at, seq) < ($2, $3) ORDER BY created_at DESC, seq DESC LIMIT $4";
const P_NEWEST: &str = "SELECT created_at FROM projects ORDER BY seq DESC LIMIT 1";
const P_INSERT: &str = "INSERT INTO projects (id, name, description, created_at, updated_at, owner_id) VALUES ($1, $2, $3, $4, $5, $6)";

fn project(r: &Row) -> (Project, Position) {
    let p = Project {
        id: r.get(1),
        name: r.get(2),
        description: r.get(3),
        created_at: r.get(4),
        updated_at: r.get(5),
    };
    let pos = Position {
        created_at: p.created_at,
        seq: r.get(0),
    };
    (p, pos)
}

fn project_in<C: GenericClient>(
    c: &mut C,
    st: &mut Statements,
    owner: Owner,
    id: &str,
) -> Result<Project, StoreError> {
    rows(c, st, P_GET, &[&id, &owner.id()], project)?
        .pop()
        .map(|(p, _)| p)
        .ok_or(StoreError::NotFound)
}

impl store::Projects for Postgres {
    fn create_project(
        &self,
        owner: Owner,
        name: &str,
        description: Option<&str>,
        actor: &Actor,
    ) -> Result<Project, StoreError> {
        self.write(|tx, st| {
            let now = ordered_now(tx, st, LOCK_PROJECTS, P_NEWEST)?;
            let p = Project {
                id: crate::ids::new_id(),
                name: name.to_string(),
                description: description.map(str::to_string),
                created_at: now,
                updated_at: now,
            };
            let s = st.get(tx, P_INSERT)?;
            tx.execute(
                &s,
                &[&p.id, &p.name, &p.description, &now, &now, &owner.id()],
            )?;
            audit(
                tx,
                st,
                AuditEvent::ProjectCreated,
                actor,
                &json!({ "project_id": p.id }),
            )?;
            Ok(p)
        })
    }

    fn get_project(&self, owner: Owner, id: &str) -> Result<Project, StoreError> {
        self.conn()?.run(|c, st| project_in(c, st, owner, id))
    }

    fn list_projects(&self, owner: Owner, req: &PageReq) -> Result<Page<Project>, StoreError> {
        let before = req.after.unwrap_or(BEFORE_ALL);
        let rows = self.conn()?.run(|c, st| {
            rows(
                c,
                st,
                P_LIST,
                &[&owner.id(), &before.created_at, &before.seq, &req.fetch()],
                project,
            )
        })?;
        Ok(Page::from_rows(rows, req, Kind::Projects))
    }

    fn update_project(
        &self,
        owner: Owner,
        id: &str,
        patch: &ProjectPatch,
        actor: &Actor,
    ) -> Result<Project, StoreError> {
        self.write(|tx, st| {
            let mut p = project_in(tx, st, owner, id)?;
            if *patch == ProjectPatch::default() {
                return Ok(p);
            }
            patch.apply(&mut p);
            let s = st.get(
                tx,
                "UPDATE projects SET name = $2, description = $3, updated_at = $4 WHERE id = $1",
            )?;
            tx.execute(&s, &[&p.id, &p.name, &p.description, &p.updated_at])?;
            let fields = patch.fields();
            audit(
                tx,
                st,
                AuditEvent::ProjectUpdated,
                actor,
                &json!({ "project_id": p.id, "fields": fields }),
            )?;
            Ok(p)
        })
    }

    fn delete_project(&self, owner: Owner, id: &str, actor: &Actor) -> Result<(), StoreError> {
        self.write(|tx, st| {
            project_in(tx, st, owner, id)?;
            let s = st.get(
                tx,
                "SELECT count(*) FROM conversations WHERE project_id = $1",
            )?;
            let conversations: i64 = tx.query_one(&s, &[&id])?.get(0);
            let s = st.get(tx, "DELETE FROM projects WHERE id = $1 AND owner_id = $2")?;
            if tx.execute(&s, &[&id, &owner.id()])? == 0 {
                return Err(StoreError::NotFound);
            }
            audit(
                tx,
                st,
                AuditEvent::ProjectDeleted,
                actor,
                &json!({ "project_id": id, "conversations": conversations }),
            )
        })
    }
}

// --- conversations ---

const C_COLUMNS_GET: &str = "SELECT seq, id, project_id, title, model, system_prompt, created_at, updated_at FROM conversations WHERE id = $1 AND owner_id = $2";
const C_LIST: &str = "SELECT seq, id, project_id, title, model, system_prompt, created_at, updated_at FROM conversations
     WHERE owner_id = $1 AND (created_at, seq) < ($2, $3) ORDER BY created_at DESC, seq DESC LIMIT $4";
const C_LIST_OF_PROJECT: &str = "SELECT seq, id, project_id, title, model, system_prompt, created_at, updated_at FROM conversations
     WHERE project_id = $1 AND owner_id = $2 AND (created_at, seq) < ($3, $4) ORDER BY created_at DESC, seq DESC LIMIT $5";
const C_NEWEST: &str = "SELECT created_at FROM conversations ORDER BY seq DESC LIMIT 1";
const C_PROJECT_EXISTS: &str = "SELECT 1 FROM projects WHERE id = $1 AND owner_id = $2";
const C_INSERT: &str = "INSERT INTO conversations (id, project_id, title, model, system_prompt, created_at, updated_at, owner_id)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

fn conversation(r: &Row) -> (Conversation, Position) {
    let c = Conversation {
        id: r.get(1),
        project_id: r.get(2),
        title: r.get(3),
        model: r.get(4),
        system_prompt: r.get(5),
        created_at: r.get(6),
        updated_at: r.get(7),
    };
    let pos = Position {
        created_at: c.created_at,
        seq: r.get(0),
    };
    (c, pos)
}

fn conversation_in<C: GenericClient>(
    c: &mut C,
    st: &mut Statements,
    owner: Owner,
    id: &str,
) -> Result<Conversation, StoreError> {
    rows(c, st, C_COLUMNS_GET, &[&id, &owner.id()], conversation)?
        .pop()
        .map(|(c, _)| c)
        .ok_or(StoreError::NotFound)
}

impl store::Conversations for Postgres {
    fn create_conversation(
        &self,
        owner: Owner,
        project_id: Option<&str>,
        title: Option<&str>,
        model: Option<&str>,
        system_prompt: Option<&str>,
        actor: &Actor,
    ) -> Result<Conversation, StoreError> {
        self.write(|tx, st| {
            if let Some(pid) = project_id {
                if !owned(tx, st, C_PROJECT_EXISTS, owner, pid)? {
                    return Err(StoreError::UnknownProject);
                }
            }
            let now = ordered_now(tx, st, LOCK_CONVERSATIONS, C_NEWEST)?;
            let c = Conversation {
                id: crate::ids::new_id(),
                project_id: project_id.map(str::to_string),
                title: title.map(str::to_string),
                model: model.map(str::to_string),
                system_prompt: system_prompt.map(str::to_string),
                created_at: now,
                updated_at: now,
            };
            let s = st.get(tx, C_INSERT)?;
            tx.execute(
                &s,
                &[
                    &c.id,
                    &c.project_id,
                    &c.title,
                    &c.model,
                    &c.system_prompt,
                    &now,
                    &now,
                    &owner.id(),
                ],
            )?;
            audit(
                tx,
                st,
                AuditEvent::ConversationCreated,
                actor,
                &json!({ "conversation_id": c.id, "project_id": c.project_id }),
            )?;
            Ok(c)
        })
    }

    fn get_conversation(&self, owner: Owner, id: &str) -> Result<Conversation, StoreError> {
        self.conn()?.run(|c, st| conversation_in(c, st, owner, id))
    }

    fn list_conversations(
        &self,
        owner: Owner,
        project_id: Option<&str>,
        req: &PageReq,
    ) -> Result<Page<Conversation>, StoreError> {
        let before = req.after.unwrap_or(BEFORE_ALL);
        let rows = self.conn()?.run(|c, st| match project_id {
            Some(pid) => {
                if !owned(c, st, C_PROJECT_EXISTS, owner, pid)? {
                    return Err(StoreError::UnknownProject);
                }
                rows(
                    c,
                    st,
                    C_LIST_OF_PROJECT,
                    &[
                        &pid,
                        &owner.id(),
                        &before.created_at,
                        &before.seq,
                        &req.fetch(),
                    ],
                    conversation,
                )
            }
            None => rows(
                c,
                st,
                C_LIST,
                &[&owner.id(), &before.created_at, &before.seq, &req.fetch()],
                conversation,
            ),
        })?;
        Ok(Page::from_rows(rows, req, Kind::Conversations))
    }

    fn update_conversation(
        &self,
        owner: Owner,
        id: &str,
        patch: &ConversationPatch,
        actor: &Actor,
    ) -> Result<Conversation, StoreError> {
        self.write(|tx, st| {
            let mut c = conversation_in(tx, st, owner, id)?;
            if patch.is_empty() {
                return Ok(c);
            }
            if let Some(Some(pid)) = &patch.project_id {
                if !owned(tx, st, C_PROJECT_EXISTS, owner, pid)? {
                    return Err(StoreError::UnknownProject);
                }
            }
            patch.apply(&mut c);
            let s = st.get(
                tx,
                "UPDATE conversations SET project_id = $2, title = $3, model = $4, system_prompt = $5, updated_at = $6 WHERE id = $1",
            )?;
            tx.execute(
                &s,
                &[
                    &c.id,
                    &c.project_id,
                    &c.title,
                    &c.model,
                    &c.system_prompt,
                    &c.updated_at,
                ],
            )?;
            let fields = patch.fields();
            audit(
                tx,
                st,
                AuditEvent::ConversationUpdated,
                actor,
                &json!({ "conversation_id": c.id, "fields": fields }),
            )?;
            Ok(c)
        })
    }

    fn delete_conversation(&self, owner: Owner, id: &str, actor: &Actor) -> Result<(), StoreError> {
        self.write(|tx, st| {
            let s = st.get(
                tx,
                "DELETE FROM conversations WHERE id = $1 AND owner_id = $2",
            )?;
            if tx.execute(&s, &[&id, &owner.id()])? == 0 {
                return Err(StoreError::NotFound);
            }
            audit(
                tx,
                st,
                AuditEvent::ConversationDeleted,
                actor,
                &json!({ "conversation_id": id }),
            )
        })
    }
}

// --- messages ---

const M_RECENT: &str = "SELECT seq, id, conversation_id, role, content, status, model, created_at, usage, finish_reason FROM messages
     WHERE conversation_id = $1 ORDER BY created_at DESC, seq DESC LIMIT $2";
const M_LIST: &str = "SELECT seq, id, conversation_id, role, content, status, model, created_at, usage, finish_reason FROM messages
     WHERE conversation_id = $1 AND (created_at, seq) > ($2, $3) ORDER BY created_at ASC, seq ASC LIMIT $4";
const M_NEWEST: &str = "SELECT created_at FROM messages ORDER BY seq DESC LIMIT 1";
const M_CONVERSATION_EXISTS: &str = "SELECT 1 FROM conversations WHERE id = $1 AND owner_id = $2";
const M_CONVERSATION_OF: &str = "SELECT m.conversation_id FROM messages m
     JOIN conversations c ON c.id = m.conversation_id WHERE m.id = $1 AND c.owner_id = $2";
const M_INSERT: &str = "INSERT INTO messages (id, conversation_id, role, content, status, model, usage, created_at, finish_reason)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
const M_BUMP_CONVERSATION: &str =
    "UPDATE conversations SET updated_at = GREATEST(updated_at, $2) WHERE id = $1";

fn message(r: &Row) -> Result<(Message, Position), StoreError> {
    let bad = || StoreError::internal("database: a message row holds an unknown role or status");
    let usage: Option<String> = r.get(8);
    let m = Message {
        id: r.get(1),
        conversation_id: r.get(2),
        role: r.get::<_, &str>(3).parse().map_err(|()| bad())?,
        content: r.get(4),
        status: r.get::<_, &str>(5).parse().map_err(|()| bad())?,
        model: r.get(6),
        created_at: r.get(7),
        usage: usage.and_then(|u| serde_json::from_str(&u).ok()),
        finish_reason: r.get(9),
    };
    let pos = Position {
        created_at: m.created_at,
        seq: r.get(0),
    };
    Ok((m, pos))
}

impl store::Messages for Postgres {
    fn insert_message(&self, owner: Owner, m: &NewMessage<'_>) -> Result<Message, StoreError> {
        let usage_text = m.usage.map(|u| u.to_string());
        self.write(|tx, st| {
            if !owned(tx, st, M_CONVERSATION_EXISTS, owner, m.conversation_id)? {
                return Err(StoreError::NotFound);
            }
            let now = ordered_now(tx, st, LOCK_MESSAGES, M_NEWEST)?;
            let id = crate::ids::new_id();
            let s = st.get(tx, M_INSERT)?;
            tx.execute(
                &s,
                &[
                    &id,
                    &m.conversation_id,
                    &m.role.as_str(),
                    &m.content,
                    &m.status.as_str(),
                    &m.model,
                    &usage_text,
                    &now,
                    &m.finish_reason,
                ],
            )?;
            let s = st.get(tx, M_BUMP_CONVERSATION)?;
            tx.execute(&s, &[&m.conversation_id, &now])?;
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
        self.write(|tx, st| {
            let s = st.get(tx, M_CONVERSATION_OF)?;
            let Some(row) = tx.query_opt(&s, &[&id, &owner.id()])? else {
                return Err(StoreError::NotFound);
            };
            let conversation: String = row.get(0);
            let s = st.get(
                tx,
                "UPDATE messages SET content = $2, status = $3, usage = $4, finish_reason = $5 WHERE id = $1",
            )?;
            tx.execute(
                &s,
                &[&id, &content, &status.as_str(), &usage_text, &finish_reason],
            )?;
            let s = st.get(tx, M_BUMP_CONVERSATION)?;
            tx.execute(&s, &[&conversation, &crate::time::now_millis()])?;
            Ok(())
        })
    }

    fn recent_messages(
        &self,
        owner: Owner,
        conversation_id: &str,
        max: usize,
    ) -> Result<Vec<Message>, StoreError> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let mut out = self.conn()?.run(|c, st| {
            if !owned(c, st, M_CONVERSATION_EXISTS, owner, conversation_id)? {
                return Err(StoreError::NotFound);
            }
            rows(c, st, M_RECENT, &[&conversation_id, &limit], message)?
                .into_iter()
                .map(|r| r.map(|(m, _)| m))
                .collect::<Result<Vec<_>, _>>()
        })?;
        out.reverse();
        Ok(out)
    }

    fn list_messages(
        &self,
        owner: Owner,
        conversation_id: &str,
        req: &PageReq,
    ) -> Result<Page<Message>, StoreError> {
        let after = req.after.unwrap_or(Position {
            created_at: i64::MIN,
            seq: i64::MIN,
        });
        let rows = self.conn()?.run(|c, st| {
            if !owned(c, st, M_CONVERSATION_EXISTS, owner, conversation_id)? {
                return Err(StoreError::NotFound);
            }
            rows(
                c,
                st,
                M_LIST,
                &[
                    &conversation_id,
                    &after.created_at,
                    &after.seq,
                    &req.fetch(),
                ],
                message,
            )?
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Page::from_rows(rows, req, Kind::Messages))
    }
}
