//! Every read statement of the storage layer, listed (issue 12: costs that
//! stay flat as data grows). Each module that queries a table defines its
//! `SELECT`s as constants and lists them in its `READS`, beside the code
//! that runs them; `all` gathers the lists. `tests/query_plans.rs` runs
//! `EXPLAIN QUERY PLAN` on each (no full scan, no sort in a temporary
//! B-tree) and counts the work each does at one and ten times the rows,
//! and it fails when a module has a `SELECT` its `READS` does not list,
//! so a new query cannot skip the check.

/// One read statement.
#[derive(Clone, Copy, Debug)]
pub struct Read {
    /// `module::what`, for test messages.
    pub name: &'static str,
    /// The statement exactly as the code runs it.
    pub sql: &'static str,
    /// What each `?N` stands for, in order; a test binds real values.
    pub args: &'static [Arg],
    pub reach: Reach,
}

/// What a parameter stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    /// A project with more conversations than a page holds.
    ProjectId,
    /// A conversation with more messages than a page holds.
    ConversationId,
    MessageId,
    KeyId,
    /// A user owning more rows than a page holds.
    UserId,
    UserName,
    /// The SHA-256 hex of a stored session token.
    SessionHash,
    /// The SHA-256 hex of a stored key (`keys::hash_key`).
    KeyHash,
    /// An audit time with more rows after it than the limit.
    AuditTime,
    /// A page's size plus one (`PageReq::fetch` of the default limit), or a
    /// history's length.
    Limit,
    /// A literal: the open end of a keyset walk (`i64::MAX` before the
    /// newest row, `i64::MIN` after the oldest).
    Int(i64),
}

/// How many rows a read may visit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// A bounded number whatever the table size: an indexed lookup, or a
    /// walk along an index that stops at its `LIMIT`.
    Bounded,
    /// Every row of a table, in index order: only for a command-line
    /// listing whose whole point is every row (`portcullis keys list`).
    EveryRow,
    /// The rows of a time range, along the index that orders them by time
    /// (usage reports: the day sums of whole days, the rows of the partial
    /// days at the ends); never the rows outside the range.
    TimeRange,
}

impl Read {
    pub const fn bounded(name: &'static str, sql: &'static str, args: &'static [Arg]) -> Read {
        Read {
            name,
            sql,
            args,
            reach: Reach::Bounded,
        }
    }
}

/// Each module's file under `src/db` with its list.
pub const MODULES: &[(&str, &[Read])] = &[
    ("projects.rs", super::projects::READS),
    ("conversations.rs", super::conversations::READS),
    ("messages.rs", super::messages::READS),
    ("keys.rs", super::keys::READS),
    ("audit_log.rs", super::audit_log::READS),
    ("users.rs", super::users::READS),
    ("sessions.rs", super::sessions::READS),
    ("usage.rs", super::usage::READS),
];

/// Every listed read.
pub fn all() -> impl Iterator<Item = &'static Read> {
    MODULES.iter().flat_map(|(_, reads)| reads.iter())
}
