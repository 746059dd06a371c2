//! Costs that stay flat as data grows (issue 12), at the level of SQL:
//! every read statement of the storage layer (`db::reads`, the very
//! constants the code runs) uses an index, sorts nothing in a temporary
//! B-tree, and does the same work at ten times the rows. The end-to-end
//! figures (1,000,000 messages) are `scripts/cost_growth.sh`.

mod support;

use std::collections::BTreeSet;

use portcullis::config::Config;
use portcullis::db::reads::{self, Arg, Reach, Read};
use portcullis::db::{schema, Db};
use rusqlite::types::Value;
use rusqlite::{Connection, StatementStatus};
use support::TempDir;

/// A page's rows plus one, as `PageReq::fetch` asks for the default limit.
const LIMIT: i64 = 51;

/// `EXPLAIN QUERY PLAN` of `sql`, one line per step.
fn plan(conn: &Connection, sql: &str, args: &[Value]) -> Vec<String> {
    let mut st = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", sql))
        .unwrap_or_else(|e| panic!("{}: {}", sql, e));
    st.query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap()
}

/// Why a plan step is refused, if it is: a table walked without an index,
/// an index walked to its end (no `LIMIT` to stop it) by a read that must
/// stay bounded, a sort or an index built for the one query.
fn refused(step: &str, read: &Read) -> Option<&'static str> {
    let indexed = step.contains(" USING INDEX ") || step.contains(" USING COVERING INDEX ");
    if step.starts_with("SCAN ") && !indexed {
        return Some("a full table scan");
    }
    if step.starts_with("SCAN ") && read.reach == Reach::Bounded && !read.sql.contains("LIMIT") {
        return Some("an index walked to its end (no LIMIT)");
    }
    if step.contains("TEMP B-TREE") {
        return Some("a sort in a temporary B-tree");
    }
    if step.contains("AUTOMATIC") {
        return Some("an automatic index");
    }
    None
}

/// Placeholder values: a plan depends on the statement, not the values.
fn placeholders(read: &Read) -> Vec<Value> {
    read.args
        .iter()
        .map(|a| match a {
            Arg::Int(n) => Value::Integer(*n),
            Arg::Limit => Value::Integer(LIMIT),
            Arg::AuditTime => Value::Integer(0),
            _ => Value::Text("0123456789abcdef01234567".into()),
        })
        .collect()
}

#[test]
fn every_read_uses_an_index_and_sorts_nothing() {
    let dir = TempDir::new("plans");
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.database.pool_size = 1;
    // The schema exactly as the server makes it (`db::schema::migrate`).
    let db = Db::open(&cfg).unwrap();
    let conn = db.sqlite().expect("SQLite").conn().unwrap();
    let mut failures = Vec::new();
    let mut names = BTreeSet::new();
    for read in reads::all() {
        assert!(names.insert(read.name), "{} is listed twice", read.name);
        let steps = plan(&conn, read.sql, &placeholders(read));
        assert!(!steps.is_empty(), "{}: no plan", read.name);
        for step in &steps {
            if let Some(why) = refused(step, read) {
                failures.push(format!("{}: `{}` is {}", read.name, step, why));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The reads allowed to visit every row, and only in index order: the
    // CLI's `keys list` and the user list (admin route and `users list`),
    // whose point is every row.
    let every_row: Vec<&str> = reads::all()
        .filter(|r| r.reach == Reach::EveryRow)
        .map(|r| r.name)
        .collect();
    assert_eq!(
        every_row,
        ["keys::list", "users::list"],
        "a new whole-table read needs a reason here"
    );
    // The check can fail: the statements it must refuse.
    let bad = |sql: &'static str| Read {
        name: "bad",
        sql,
        args: &[],
        reach: Reach::Bounded,
    };
    for sql in [
        "SELECT id FROM messages WHERE content = 'x'",
        "SELECT id FROM messages ORDER BY content LIMIT 5",
        "SELECT id FROM api_keys ORDER BY created_at, id",
        "SELECT count(*) FROM messages",
    ] {
        let r = bad(sql);
        let steps = plan(&conn, sql, &[]);
        assert!(
            steps.iter().any(|s| refused(s, &r).is_some()),
            "not refused: {} {:?}",
            sql,
            steps
        );
    }
}

/// Every `SELECT` of `src/db` outside tests and comments is listed in its
/// module's `READS`: counts per file must match. `pool.rs` (`SELECT 1`,
/// no table) and `ready.rs` (counts `sqlite_master`, the schema) read
/// nothing that grows with data.
#[test]
fn every_select_in_src_db_is_listed() {
    // No reads of stored data while serving: connection checks, the
    // readiness probe, and migrations (run once at start-up).
    const NO_DATA: [&str; 3] = ["pool.rs", "ready.rs", "schema.rs"];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/db");
    let listed: std::collections::HashMap<&str, &[Read]> = reads::MODULES.iter().copied().collect();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "{:?}", files);
    for path in files {
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let in_code: usize = code
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .map(|l| l.matches("SELECT").count())
            .sum();
        let in_list: usize = listed
            .get(name.as_str())
            .map(|reads| reads.iter().map(|r| r.sql.matches("SELECT").count()).sum())
            .unwrap_or(0);
        if NO_DATA.contains(&name.as_str()) {
            continue;
        }
        assert_eq!(
            in_code, in_list,
            "src/db/{}: {} SELECT in the code, {} in its READS (db::reads)",
            name, in_code, in_list
        );
    }
}

/// A database filled through the real schema: `60 * scale` projects,
/// `120 * scale` conversations (60 in each of `2 * scale` projects), 60
/// messages per conversation written in rounds (so a conversation's rows
/// are spread over the table, as in real use), `60 * scale` keys and audit
/// rows. `created_at` grows with insertion, as the server assigns it.
fn filled(scale: i64) -> Connection {
    let mut conn = Connection::open_in_memory().unwrap();
    schema::migrate(&mut conn).unwrap();
    conn.execute_batch(&format!(
        "BEGIN;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60 * {s})
         INSERT INTO users (id, name, role, created_at)
           SELECT printf('u%023d', i), printf('user%d', i), 'member', i FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60 * {s})
         INSERT INTO projects (id, name, created_at, updated_at, owner_id)
           SELECT printf('p%023d', i), 'p', i, i,
                  CASE WHEN i % 10 != 0 THEN (SELECT id FROM users WHERE name = 'admin')
                       ELSE printf('u%023d', i) END FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 120 * {s})
         INSERT INTO conversations (id, project_id, created_at, updated_at, owner_id)
           SELECT printf('c%023d', i), printf('p%023d', 1 + i % (2 * {s})), 1000000 + i, 1000000 + i,
                  (SELECT id FROM users WHERE name = 'admin') FROM n;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 60 * 120 * {s} - 1)
         INSERT INTO messages (id, conversation_id, role, content, status, created_at)
           SELECT printf('m%023d', i), printf('c%023d', 1 + i % (120 * {s})), 'user',
                  'hello', 'complete', 2000000 + i FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60 * {s})
         INSERT INTO api_keys (id, name, prefix, hash, created_at, user_id)
           SELECT printf('k%023d', i), 'k', 'pcs_', printf('%064x', i * 7919), i,
                  (SELECT id FROM users WHERE name = 'admin') FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60 * {s})
         INSERT INTO sessions (hash, user_id, created_at, last_used_at, expires_at)
           SELECT printf('%064x', i * 104729), printf('u%023d', i), i, i, i + 1000 FROM n;
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60 * {s})
         INSERT INTO audit (time, event, detail) SELECT i, 'key_created', '{{}}' FROM n;
         COMMIT;",
        s = scale
    ))
    .unwrap();
    conn
}

/// Real values for a read's parameters in `filled`: the first project and
/// conversation (60 conversations, 60 messages), and so on.
fn bind(conn: &Connection, read: &Read) -> Vec<Value> {
    let one = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, Value>(0)).unwrap();
    read.args
        .iter()
        .map(|a| match a {
            Arg::ProjectId => one("SELECT project_id FROM conversations ORDER BY seq LIMIT 1"),
            Arg::ConversationId => one("SELECT id FROM conversations ORDER BY seq LIMIT 1"),
            Arg::MessageId => one("SELECT id FROM messages ORDER BY seq LIMIT 1 OFFSET 1000"),
            Arg::KeyId => one("SELECT id FROM api_keys ORDER BY id LIMIT 1 OFFSET 30"),
            Arg::KeyHash => one("SELECT hash FROM api_keys ORDER BY id LIMIT 1 OFFSET 30"),
            Arg::AuditTime => one("SELECT min(time) FROM audit"),
            Arg::UserId => one("SELECT id FROM users WHERE name = 'admin'"),
            Arg::UserName => Value::Text("admin".into()),
            Arg::SessionHash => one("SELECT hash FROM sessions ORDER BY hash LIMIT 1 OFFSET 30"),
            Arg::Limit => Value::Integer(LIMIT),
            Arg::Int(n) => Value::Integer(*n),
        })
        .collect()
}

/// What running `read` to its last row cost: (virtual machine steps,
/// rows, sorts, automatic indexes).
fn cost(conn: &Connection, read: &Read) -> (i32, usize, i32, i32) {
    let mut st = conn.prepare(read.sql).unwrap();
    let args = bind(conn, read);
    let rows = st
        .query_map(rusqlite::params_from_iter(&args), |_| Ok(()))
        .unwrap()
        .count();
    (
        st.get_status(StatementStatus::VmStep),
        rows,
        st.get_status(StatementStatus::Sort),
        st.get_status(StatementStatus::AutoIndex),
    )
}

#[test]
fn bounded_reads_do_the_same_work_at_ten_times_the_rows() {
    let (small, large) = (filled(1), filled(10));
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for read in reads::all() {
        let (s_steps, s_rows, s_sorts, s_auto) = cost(&small, read);
        let (l_steps, l_rows, l_sorts, l_auto) = cost(&large, read);
        report.push(format!(
            "{:34} steps {:6} -> {:6}  rows {:3} -> {:3}",
            read.name, s_steps, l_steps, s_rows, l_rows
        ));
        if s_sorts + l_sorts + s_auto + l_auto > 0 {
            failures.push(format!("{} sorts or builds an index", read.name));
        }
        if read.reach == Reach::EveryRow {
            continue;
        }
        if s_rows != l_rows {
            failures.push(format!(
                "{}: the fixture gives different row counts",
                read.name
            ));
        }
        // Same rows, same path: the same steps (a B-tree one level deeper
        // costs no extra step). A little slack for the planner's choices.
        if f64::from(l_steps) > f64::from(s_steps) * 1.1 + 10.0 {
            failures.push(format!(
                "{}: {} steps at 10x the rows vs {}",
                read.name, l_steps, s_steps
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n{}",
        failures.join("\n"),
        report.join("\n")
    );
    // The measure can fail: a scan grows with the table.
    let scan = Read::bounded(
        "scan",
        "SELECT count(*) FROM messages WHERE content = 'x'",
        &[],
    );
    assert!(cost(&large, &scan).0 > 5 * cost(&small, &scan).0);
}
