//! The schema, as numbered migrations kept in code. `migrate` applies the
//! missing ones in one IMMEDIATE transaction at start-up and records the
//! version in `PRAGMA user_version`; a database newer than this binary is
//! refused with a clear message rather than half-understood.
//!
//! Every resource table has `seq INTEGER PRIMARY KEY AUTOINCREMENT` next to
//! its opaque text `id`: `seq` follows commit order (SQLite serialises
//! writers), so it is the tie-breaker of the keyset pagination on
//! `(created_at, seq)` (see `db::page`). Indexes exist for each list order.

use rusqlite::{Connection, TransactionBehavior};

/// Migration `i` (0-based) brings the schema from version `i` to `i + 1`.
/// Never edit a released migration: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: projects, conversations, messages, API keys, audit trail.
    "
    CREATE TABLE projects (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        id          TEXT NOT NULL UNIQUE,
        name        TEXT NOT NULL,
        description TEXT,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL
    );
    CREATE INDEX projects_by_created ON projects (created_at, seq);

    CREATE TABLE conversations (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT NOT NULL UNIQUE,
        project_id    TEXT REFERENCES projects (id) ON DELETE CASCADE,
        title         TEXT,
        model         TEXT,
        system_prompt TEXT,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL
    );
    CREATE INDEX conversations_by_created ON conversations (created_at, seq);
    -- Also serves the ON DELETE CASCADE lookup from projects.
    CREATE INDEX conversations_by_project ON conversations (project_id, created_at, seq);

    CREATE TABLE messages (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT NOT NULL UNIQUE,
        conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        role            TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
        content         TEXT NOT NULL,
        status          TEXT NOT NULL CHECK (status IN ('complete', 'partial', 'error')),
        model           TEXT,
        usage           TEXT,
        created_at      INTEGER NOT NULL
    );
    CREATE INDEX messages_by_conversation ON messages (conversation_id, created_at, seq);

    CREATE TABLE api_keys (
        id         TEXT PRIMARY KEY,
        name       TEXT NOT NULL,
        prefix     TEXT NOT NULL,
        hash       TEXT NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX api_keys_by_created ON api_keys (created_at, id);

    CREATE TABLE audit (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        time       INTEGER NOT NULL,
        event      TEXT NOT NULL,
        request_id TEXT,
        key_id     TEXT,
        client     TEXT,
        detail     TEXT
    );
    CREATE INDEX audit_by_time ON audit (time, id);
    ",
    // 2: users own keys, projects and conversations; browser sessions.
    // Whoever used the database before users existed becomes the admin
    // `admin` (no password: `portcullis users passwd admin` sets one), owner
    // of every key, project and conversation; a new database gets the same
    // user, who receives the first key. `owner_id` / `user_id` are set on
    // every row by storage (a column added by ALTER TABLE cannot be NOT
    // NULL without a default); lists go by owner, so the old indexes by
    // creation time alone are dropped.
    "
    CREATE TABLE users (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT NOT NULL UNIQUE,
        name          TEXT NOT NULL UNIQUE,
        role          TEXT NOT NULL CHECK (role IN ('admin', 'member')),
        password_hash TEXT,
        disabled      INTEGER NOT NULL DEFAULT 0,
        created_at    INTEGER NOT NULL
    );
    CREATE INDEX users_by_created ON users (created_at, seq);
    CREATE INDEX users_by_role ON users (role, disabled, created_at, seq);
    INSERT INTO users (id, name, role, created_at)
        VALUES (lower(hex(randomblob(12))), 'admin', 'admin',
                CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));

    ALTER TABLE api_keys ADD COLUMN user_id TEXT REFERENCES users (id);
    ALTER TABLE api_keys ADD COLUMN expires_at INTEGER;
    ALTER TABLE api_keys ADD COLUMN models TEXT;
    ALTER TABLE projects ADD COLUMN owner_id TEXT REFERENCES users (id);
    ALTER TABLE conversations ADD COLUMN owner_id TEXT REFERENCES users (id);
    UPDATE api_keys SET user_id = (SELECT id FROM users WHERE name = 'admin');
    UPDATE projects SET owner_id = (SELECT id FROM users WHERE name = 'admin');
    UPDATE conversations SET owner_id = (SELECT id FROM users WHERE name = 'admin');

    DROP INDEX projects_by_created;
    DROP INDEX conversations_by_created;
    CREATE INDEX projects_by_owner ON projects (owner_id, created_at, seq);
    CREATE INDEX conversations_by_owner ON conversations (owner_id, created_at, seq);
    CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at, id);

    CREATE TABLE sessions (
        hash         TEXT PRIMARY KEY,
        user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
        created_at   INTEGER NOT NULL,
        last_used_at INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL
    );
    CREATE INDEX sessions_by_user ON sessions (user_id);

    -- Who did it: the user, and the session when not a key.
    ALTER TABLE audit ADD COLUMN user_id TEXT;
    ALTER TABLE audit ADD COLUMN session TEXT;
    ",
    // 3: why an answer ended (`stop`, `length`, ...; NULL while partial,
    // on error, and for every row written before).
    "
    ALTER TABLE messages ADD COLUMN finish_reason TEXT;
    ",
    // 4: usage accounting and per-user token limits (`db::usage`).
    // Compact: every name (user id, key id, model, upstream, route) is a
    // small integer of `usage_labels`, and `at` is the row id, so the rows
    // are stored in time order and a time range is a range of the table
    // itself. `usage_days` keeps each day's sums per (user, key, model),
    // updated in the transaction that adds the rows: reports read whole
    // days from it and only the partial days at the ends from `usage`.
    "
    CREATE TABLE usage_labels (
        id    INTEGER PRIMARY KEY,
        label TEXT NOT NULL UNIQUE
    );
    CREATE TABLE usage (
        at                INTEGER PRIMARY KEY, -- µs since the epoch when the call ended; unique
        user_id           INTEGER NOT NULL,
        key_id            INTEGER NOT NULL,    -- 0: no key (a browser session, auth mode none)
        model             INTEGER NOT NULL,
        upstream          INTEGER NOT NULL,
        route             INTEGER NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        estimated         INTEGER NOT NULL,    -- 1: the upstream sent no usage
        status            INTEGER NOT NULL,    -- the HTTP status of the call (499: the client left)
        latency_ms        INTEGER NOT NULL
    );
    CREATE INDEX usage_by_user ON usage (user_id, at);
    CREATE TABLE usage_days (
        day               INTEGER NOT NULL,    -- days since the epoch (UTC)
        user_id           INTEGER NOT NULL,
        key_id            INTEGER NOT NULL,
        model             INTEGER NOT NULL,
        requests          INTEGER NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        PRIMARY KEY (day, user_id, key_id, model)
    ) WITHOUT ROWID;
    CREATE INDEX usage_days_by_user ON usage_days (user_id, day);

    -- A user's own limits; NULL: the `[limits]` default.
    ALTER TABLE users ADD COLUMN tokens_per_minute INTEGER;
    ALTER TABLE users ADD COLUMN tokens_per_day INTEGER;
    ALTER TABLE users ADD COLUMN tokens_per_month INTEGER;
    ALTER TABLE users ADD COLUMN max_streams INTEGER;
    ",
];

/// The schema version this binary writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings the database to `LATEST` in one transaction, or explains why not.
pub fn migrate(conn: &mut Connection) -> Result<(), String> {
    migrate_to(conn, LATEST)
}

/// Brings the database to `target` (tests make databases of earlier
/// releases with it, to test the upgrade from them).
pub fn migrate_to(conn: &mut Connection, target: i64) -> Result<(), String> {
    let target = target.clamp(0, LATEST);
    let err = |e: rusqlite::Error| format!("database migration failed: {}", e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let current: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if current > target {
        return Err(format!(
            "the database schema is version {}, newer than this portcullis knows (version {}); \
             run the newer portcullis or restore a backup made by this version",
            current, target
        ));
    }
    if current < 0 {
        return Err(format!(
            "the database has an invalid schema version {}",
            current
        ));
    }
    for sql in &MIGRATIONS[current as usize..target as usize] {
        tx.execute_batch(sql).map_err(err)?;
    }
    if current != target {
        tx.pragma_update(None, "user_version", target)
            .map_err(err)?;
    }
    tx.commit().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_fresh_database_once_and_is_idempotent() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        migrate(&mut c).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, LATEST);
        let n: i64 = c
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN ('projects','conversations','messages','api_keys','audit')", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 5);
    }

    #[test]
    fn refuses_a_newer_database() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", LATEST + 1).unwrap();
        let e = migrate(&mut c).unwrap_err();
        assert!(e.contains("newer than this portcullis knows"), "{}", e);
    }
}
