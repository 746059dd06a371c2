//! The storage interface: what handlers, filters and the CLI may ask of
//! the store, one trait per concern, implemented twice: by `Sqlite` (the
//! embedded default, `src/db/*.rs`) and by `Postgres` (the shared store,
//! `src/db/pg/`). Both answer the same way (same rows, same `StoreError`s),
//! which `tests/store_contract.rs` checks by running one suite on both.
//!
//! Callers hold a `Db` (an `Arc<dyn Store>`); methods of a trait object
//! need no `use` of its traits.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::audit_log::{Actor, AuditEvent, AuditRow};
use super::conversations::{Conversation, ConversationPatch};
use super::keys::{ApiKey, KeyLookup, NewKey, Revoke};
use super::messages::{Message, NewMessage, Status};
use super::page::{Page, PageReq};
use super::projects::{Project, ProjectPatch};
use super::ready::ReadyFailure;
use super::sessions::SessionLookup;
use super::usage::{UsageItem, UsageQuery, UsageRow};
use super::users::{Owner, Role, User, UserPatch};
use super::StoreError;
use crate::secret::Secret;

pub trait Projects {
    fn create_project(
        &self,
        owner: Owner,
        name: &str,
        description: Option<&str>,
        actor: &Actor,
    ) -> Result<Project, StoreError>;
    fn get_project(&self, owner: Owner, id: &str) -> Result<Project, StoreError>;
    /// The owner's projects, newest first.
    fn list_projects(&self, owner: Owner, req: &PageReq) -> Result<Page<Project>, StoreError>;
    /// Applies a PATCH; an empty one returns the project unchanged.
    fn update_project(
        &self,
        owner: Owner,
        id: &str,
        patch: &ProjectPatch,
        actor: &Actor,
    ) -> Result<Project, StoreError>;
    /// Deletes a project with its conversations and messages.
    fn delete_project(&self, owner: Owner, id: &str, actor: &Actor) -> Result<(), StoreError>;
}

pub trait Conversations {
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
    ) -> Result<Conversation, StoreError>;
    /// One conversation, or `NotFound`.
    fn get_conversation(&self, owner: Owner, id: &str) -> Result<Conversation, StoreError>;
    /// Conversations newest first, optionally of one project (an unknown
    /// project is `UnknownProject`).
    fn list_conversations(
        &self,
        owner: Owner,
        project_id: Option<&str>,
        req: &PageReq,
    ) -> Result<Page<Conversation>, StoreError>;
    /// Applies a PATCH. An empty patch is a no-op that returns the
    /// conversation unchanged (JSON merge-patch semantics); otherwise
    /// `updated_at` moves forward.
    fn update_conversation(
        &self,
        owner: Owner,
        id: &str,
        patch: &ConversationPatch,
        actor: &Actor,
    ) -> Result<Conversation, StoreError>;
    /// Deletes a conversation and its messages; audited in the same
    /// transaction.
    fn delete_conversation(&self, owner: Owner, id: &str, actor: &Actor) -> Result<(), StoreError>;
}

pub trait Messages {
    /// Stores a message (unknown conversation: `NotFound`).
    fn insert_message(&self, owner: Owner, m: &NewMessage<'_>) -> Result<Message, StoreError>;
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
    ) -> Result<(), StoreError>;
    /// The last `max` messages of a conversation, returned oldest first
    /// (the history sent upstream).
    fn recent_messages(
        &self,
        owner: Owner,
        conversation_id: &str,
        max: usize,
    ) -> Result<Vec<Message>, StoreError>;
    /// A page of a conversation's messages, oldest first (unknown
    /// conversation: `NotFound`).
    fn list_messages(
        &self,
        owner: Owner,
        conversation_id: &str,
        req: &PageReq,
    ) -> Result<Page<Message>, StoreError>;
}

pub trait ApiKeys {
    /// Creates a key; the secret is returned once and never stored.
    fn create_key(&self, new: &NewKey<'_>, actor: &Actor) -> Result<(ApiKey, Secret), StoreError>;
    /// When no key exists at all, creates one and writes it to `file`
    /// (mode 0600) before committing, so a key is never stored that nobody
    /// can read. Returns whether a key was created.
    fn ensure_first_key(&self, file: &Path) -> Result<bool, String>;
    /// Every key, oldest first (never the key itself).
    fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError>;
    /// One user's keys, oldest first (at most `MAX_LISTED`).
    fn list_user_keys(&self, owner: Owner) -> Result<Vec<ApiKey>, StoreError>;
    /// Revokes a key at once (the next request with it is refused). With
    /// `only_of`, a key of another user is `NotFound`.
    fn revoke_key(
        &self,
        id: &str,
        only_of: Option<Owner>,
        actor: &Actor,
    ) -> Result<Revoke, StoreError>;
    /// Looks a presented key up: a valid key already seen under the
    /// current key stamp comes from `KeyCache`; any other is looked up by
    /// its hash (indexed) and the stored hash compared in constant time.
    fn lookup_key(&self, presented: &str) -> Result<KeyLookup, StoreError>;
}

pub trait Users {
    fn create_user(
        &self,
        name: &str,
        role: Role,
        password_hash: Option<&str>,
        actor: &Actor,
    ) -> Result<User, StoreError>;
    /// The user named `name`, created with `role` if missing (the `local`
    /// user of auth mode `none`).
    fn ensure_user(&self, name: &str, role: Role) -> Result<User, StoreError>;
    fn get_user(&self, id: &str) -> Result<User, StoreError>;
    fn user_by_name(&self, name: &str) -> Result<User, StoreError>;
    /// Every user, oldest first.
    fn list_users(&self) -> Result<Vec<User>, StoreError>;
    /// The oldest enabled admin (keys made without an owner go to it).
    fn first_admin(&self) -> Result<User, StoreError>;
    /// (user id, password hash, disabled) of the user named `name`, for
    /// sign-in.
    fn password_of(&self, name: &str)
        -> Result<Option<(String, Option<String>, bool)>, StoreError>;
    /// Applies a PATCH. Disabling, or changing the role, takes effect on
    /// the user's next request, also in other processes: the key stamp is
    /// rewritten (cached keys are dropped) and a disabled user's sessions
    /// are ended.
    fn update_user(&self, id: &str, patch: &UserPatch, actor: &Actor) -> Result<User, StoreError>;
}

pub trait Sessions {
    /// Starts a session for `user_id`, valid for `ttl_ms`; returns the
    /// token (set as the cookie, never stored).
    fn create_session(&self, user_id: &str, ttl_ms: i64) -> Result<Secret, StoreError>;
    /// Looks a presented token up at `now` (milliseconds): valid while
    /// neither expired nor idle for `idle_ms`, and its user enabled.
    fn lookup_session(&self, token: &str, idle_ms: i64) -> Result<SessionLookup, StoreError>;
    /// Ends a session at once (sign-out).
    fn end_session(&self, hash: &str) -> Result<(), StoreError>;
}

pub trait AuditTrail {
    /// Writes one audit row in its own transaction (in the writers' queue,
    /// like every write).
    fn record_audit(
        &self,
        event: AuditEvent,
        actor: &Actor,
        detail: &Value,
    ) -> Result<(), StoreError>;
    /// Writes several rows (aggregated counters) in one transaction.
    fn record_audit_batch(
        &self,
        rows: &[(i64, AuditEvent, Actor, Value)],
    ) -> Result<(), StoreError>;
    /// Rows at or after `since` (epoch ms), oldest first, at most `limit`;
    /// without `since`, the newest `limit` rows, still oldest first.
    fn audit_rows(&self, since: Option<i64>, limit: usize) -> Result<Vec<AuditRow>, StoreError>;
}

pub trait UsageLog {
    /// Adds `rows` and their day sums in one write.
    fn record_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError>;
    /// The latest row's time (µs), 0 when there is none: the recorder
    /// goes on from it, so times stay unique across restarts.
    fn last_usage_at(&self) -> Result<i64, StoreError>;
    /// `user_id`'s tokens spent on `today` and since `month_first` (days
    /// since the epoch), from the day sums.
    fn usage_spent(
        &self,
        user_id: &str,
        month_first: i64,
        today: i64,
    ) -> Result<(u64, u64), StoreError>;
    /// A report: the calls ended in `[since, until)`, grouped. Whole days
    /// come from the day sums, the partial days at either end from the
    /// rows. Days in order; other groups by tokens, most first.
    fn usage_report(&self, q: &UsageQuery) -> Result<Vec<UsageItem>, StoreError>;
}

pub trait Readiness {
    /// Checks that the database answers a cheap query within `limit`
    /// (checkout included, itself bounded by the pool's checkout timeout:
    /// a pool that would refuse requests is not ready). Returns the latency.
    fn check_ready(&self, limit: Duration) -> Result<Duration, (ReadyFailure, Duration)>;
    /// (checkouts that waited, checkouts that timed out), for metrics.
    fn pool_wait_counts(&self) -> (u64, u64);
    /// Writes queued, running, or waiting for their commit (metrics).
    fn writes_in_flight(&self) -> usize;
}

/// The whole store. `shared` is the state several instances must agree on
/// (limits, budgets): None for SQLite, whose one process keeps it in memory.
pub trait Store:
    Projects
    + Conversations
    + Messages
    + ApiKeys
    + Users
    + Sessions
    + AuditTrail
    + UsageLog
    + Readiness
    + Send
    + Sync
{
    /// `sqlite` or `postgresql` (logs, `/health/ready`).
    fn backend(&self) -> &'static str;
    /// The SQLite store, for the tests and tools that read its file directly.
    fn as_sqlite(&self) -> Option<&super::Sqlite> {
        None
    }
    /// Limits and budgets kept in the database for every instance.
    fn shared(&self) -> Option<&dyn super::shared::SharedLimits> {
        None
    }
    /// `database.limits_fail_open`: whether limits admit unchecked while
    /// the shared store cannot be reached.
    fn limits_fail_open(&self) -> bool {
        false
    }
}
