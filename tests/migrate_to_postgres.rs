//! `portcullis migrate-to-postgres --from FILE`: an SQLite store filled
//! through the library (every table, awkward text included) is copied by
//! the real binary into a fresh database of a real PostgreSQL
//! (`support::pg`), then compared three ways: the command's own report,
//! the digests (`db::pg::copy`), and row by row in this test; and the
//! PostgreSQL store, opened as the server opens it, must answer as the
//! file did (messages, keys, sessions, users, audit, usage reports) and go
//! on numbering rows past the copied ones. Refusals: a database not empty,
//! a missing, foreign or old file, no or a bad URL, a REAL value (rolled
//! back, then retried into the same database).

mod support;

use std::path::{Path, PathBuf};

use portcullis::config::Config;
use portcullis::db::audit_log::{Actor, AuditEvent};
use portcullis::db::keys::{KeyLookup, NewKey};
use portcullis::db::messages::{NewMessage, Role as MessageRole, Status};
use portcullis::db::page::PageReq;
use portcullis::db::pg::copy::{self, TABLES};
use portcullis::db::sessions::SessionLookup;
use portcullis::db::usage::{GroupBy, UsageQuery, UsageRow};
use portcullis::db::users::{Owner, Role, UserPatch};
use portcullis::db::Db;
use serde_json::json;
use support::pg::PgServer;
use support::{run_cli, TempDir};

/// Text that a careless copy would mangle (COPY's escapes, quotes,
/// multi-byte characters, an empty string).
const AWKWARD: &[&str] = &[
    "tab\there, newline\nthere, cr\r, backslash \\ and \\N and \\.",
    "quotes ' \" and a lone ; -- comment",
    "héllo 漢字 🙂",
    "",
];

/// What the filled file holds, to check on the other side.
struct Filled {
    file: PathBuf,
    alice: String,
    conversation: String,
    key: String,
    revoked_key: String,
    session: String,
    messages: Vec<portcullis::db::Message>,
    users: Vec<portcullis::db::users::User>,
    audit: Vec<portcullis::db::audit_log::AuditRow>,
    report: Vec<portcullis::db::usage::UsageItem>,
}

const DAY_US: i64 = 86_400_000_000;
const DAY0_US: i64 = 20_000 * DAY_US;

fn report_query() -> UsageQuery<'static> {
    UsageQuery {
        since_ms: DAY0_US / 1000,
        until_ms: (DAY0_US + 3 * DAY_US) / 1000,
        user_id: None,
        group_by: GroupBy::Model,
    }
}

/// An SQLite store in `dir` with rows in every table, closed again.
fn fill(dir: &Path) -> Filled {
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.to_path_buf();
    let db = Db::open(&cfg).expect("open SQLite");
    let actor = Actor {
        request_id: Some("req-1".into()),
        client: Some("203.0.113.7".into()),
        ..Actor::default()
    };
    let alice = db
        .create_user("alice", Role::Member, Some("$argon2id$v=19$x"), &actor)
        .unwrap();
    let bob = db.create_user("bob", Role::Admin, None, &actor).unwrap();
    db.update_user(
        &alice.id,
        &UserPatch {
            limits: [Some(Some(1000)), None, Some(Some(0)), Some(Some(2))],
            ..UserPatch::default()
        },
        &actor,
    )
    .unwrap();
    db.update_user(
        &bob.id,
        &UserPatch {
            disabled: Some(true),
            ..UserPatch::default()
        },
        &actor,
    )
    .unwrap();

    let (_, key) = db
        .create_key(
            &NewKey {
                name: AWKWARD[1],
                user_id: &alice.id,
                models: Some(vec!["m*".into(), "x".into()]),
                expires_at: Some(i64::MAX / 2),
            },
            &actor,
        )
        .unwrap();
    let (old, revoked) = db
        .create_key(
            &NewKey {
                name: "old",
                user_id: &alice.id,
                ..NewKey::default()
            },
            &actor,
        )
        .unwrap();
    db.revoke_key(&old.id, None, &actor).unwrap();

    let me = Owner::of(&alice.id);
    let project = db
        .create_project(me, AWKWARD[2], Some(AWKWARD[1]), &actor)
        .unwrap();
    let gone = db
        .create_conversation(me, Some(&project.id), None, None, None, &actor)
        .unwrap();
    let conversation = db
        .create_conversation(
            me,
            Some(&project.id),
            Some(AWKWARD[1]),
            Some("m1"),
            Some(AWKWARD[0]),
            &actor,
        )
        .unwrap();
    db.create_conversation(me, None, None, None, None, &actor)
        .unwrap();
    for text in AWKWARD.iter().chain(["plain"].iter()) {
        db.insert_message(
            me,
            &NewMessage {
                conversation_id: &conversation.id,
                role: MessageRole::User,
                content: text,
                status: Status::Complete,
                model: None,
                usage: None,
                finish_reason: None,
            },
        )
        .unwrap();
    }
    let answer = db
        .insert_message(
            me,
            &NewMessage {
                conversation_id: &conversation.id,
                role: MessageRole::Assistant,
                content: "",
                status: Status::Partial,
                model: Some("m1"),
                usage: None,
                finish_reason: None,
            },
        )
        .unwrap();
    db.update_message(
        me,
        &answer.id,
        AWKWARD[2],
        Status::Complete,
        Some(&json!({"prompt_tokens": 3, "completion_tokens": 4})),
        Some("stop"),
    )
    .unwrap();
    // Gaps in `seq`: the copy keeps the numbers, not just the order, and
    // never gives the number of the last one, deleted, again.
    db.delete_conversation(me, &gone.id, &actor).unwrap();
    let last = db
        .create_conversation(me, None, None, None, None, &actor)
        .unwrap();
    db.delete_conversation(me, &last.id, &actor).unwrap();

    let session = db.create_session(&alice.id, 3_600_000).unwrap();
    db.create_session(&bob.id, 3_600_000).unwrap();
    db.record_audit(AuditEvent::AuthFailed, &actor, &json!({"why": AWKWARD[0]}))
        .unwrap();

    let row = |at_us: i64, key: Option<&str>, model: &str, p: u64, c: u64| UsageRow {
        at_us,
        user_id: alice.id.clone(),
        key_id: key.map(str::to_string),
        model: model.into(),
        upstream: "default".into(),
        route: "chat",
        prompt_tokens: p,
        completion_tokens: c,
        estimated: c == 0,
        status: 200,
        latency_ms: 12,
    };
    db.record_usage(&[
        row(DAY0_US + 1, Some(&old.id), "m1", 10, 1),
        row(DAY0_US + DAY_US / 2, None, AWKWARD[2], 20, 0),
        row(DAY0_US + DAY_US + 5, Some(&old.id), "m2", 30, 3),
        row(DAY0_US + 2 * DAY_US + 7, Some(&old.id), "m1", 40, 4),
    ])
    .unwrap();

    let filled = Filled {
        file: cfg.database_path(),
        messages: db
            .list_messages(me, &conversation.id, &page())
            .unwrap()
            .items,
        users: db.list_users().unwrap(),
        audit: db.audit_rows(None, 1000).unwrap(),
        report: db.usage_report(&report_query()).unwrap(),
        alice: alice.id,
        conversation: conversation.id,
        key: key.expose_str().to_string(),
        revoked_key: revoked.expose_str().to_string(),
        session: session.expose_str().to_string(),
    };
    assert_eq!(filled.messages.len(), AWKWARD.len() + 2);
    filled
}

fn page() -> PageReq {
    PageReq {
        limit: 100,
        after: None,
    }
}

/// `migrate-to-postgres --from FILE` with `url` (if any) in the
/// environment; (exit code, stdout, stderr).
fn migrate(dir: &Path, file: &Path, url: Option<&str>) -> (i32, String, String) {
    let env: Vec<(&str, &str)> = url
        .map(|u| vec![("PORTCULLIS_DATABASE_URL", u)])
        .unwrap_or_default();
    run_cli(
        &["migrate-to-postgres", "--from", file.to_str().unwrap()],
        &env,
        dir,
    )
}

/// The URL with a password: trust auth ignores it, and no output may
/// repeat it.
fn with_password(url: &str) -> String {
    url.replacen("postgres@", "postgres:Sekr1tPass@", 1)
}

fn sqlite_read_only(file: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

fn pg_client(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls).unwrap()
}

/// One value as this test sees it, independent of `copy`'s code.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum V {
    Null,
    Int(i64),
    Text(String),
}

/// Every row of `table` on both sides, each sorted, compared whole.
fn assert_same_rows(sqlite: &rusqlite::Connection, pg: &mut postgres::Client, table: &str) {
    let columns: Vec<String> = sqlite
        .prepare(&format!("SELECT name FROM pragma_table_info('{}')", table))
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let list = columns
        .iter()
        .map(|c| format!("\"{}\"", c))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT {} FROM \"{}\"", list, table);
    let mut a: Vec<Vec<V>> = sqlite
        .prepare(&sql)
        .unwrap()
        .query_map([], |r| {
            (0..columns.len())
                .map(|i| {
                    Ok(match r.get_ref(i)? {
                        rusqlite::types::ValueRef::Null => V::Null,
                        rusqlite::types::ValueRef::Integer(n) => V::Int(n),
                        rusqlite::types::ValueRef::Text(t) => {
                            V::Text(String::from_utf8(t.to_vec()).unwrap())
                        }
                        other => panic!("{}: unexpected {:?}", table, other),
                    })
                })
                .collect()
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut b: Vec<Vec<V>> = pg
        .query(sql.as_str(), &[])
        .unwrap()
        .iter()
        .map(|r| {
            (0..columns.len())
                .map(|i| match *r.columns()[i].type_() {
                    postgres::types::Type::INT8 => {
                        r.get::<_, Option<i64>>(i).map_or(V::Null, V::Int)
                    }
                    postgres::types::Type::TEXT => {
                        r.get::<_, Option<String>>(i).map_or(V::Null, V::Text)
                    }
                    ref other => panic!("{}.{} is {}", table, columns[i], other),
                })
                .collect()
        })
        .collect();
    a.sort();
    b.sort();
    assert!(
        !a.is_empty(),
        "{} is empty: the fixture must fill it",
        table
    );
    assert_eq!(a, b, "{}", table);
}

#[test]
fn a_filled_sqlite_store_is_copied_verified_and_served_by_postgres() {
    let Some(pg) = PgServer::shared() else { return };
    let dir = TempDir::new("migrate-pg");
    let filled = fill(dir.path());
    let url = pg.create_database("migrate_full");
    let secret_url = with_password(&url);

    let (code, out, err) = migrate(dir.path(), &filled.file, Some(&secret_url));
    assert_eq!(code, 0, "stdout:\n{}\nstderr:\n{}", out, err);
    assert!(
        !out.contains("Sekr1tPass") && !err.contains("Sekr1tPass"),
        "{}{}",
        out,
        err
    );

    // The command's report: one line per table, in copy order, counts as
    // in the file.
    let sqlite = sqlite_read_only(&filled.file);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), TABLES.len(), "{}", out);
    for (line, table) in lines.iter().zip(TABLES) {
        let n: i64 = sqlite
            .query_row(&format!("SELECT count(*) FROM \"{}\"", table), [], |r| {
                r.get(0)
            })
            .unwrap();
        assert!(n > 0, "the fixture leaves {} empty", table);
        assert_eq!(*line, format!("{} rows={} hash=ok", table, n));
        assert_eq!(
            pg.psql(
                "migrate_full",
                &format!("SELECT count(*) FROM \"{}\"", table)
            ),
            n.to_string(),
            "{}",
            table
        );
    }

    // The digests, and every row independently of them.
    let mut client = pg_client(&url);
    for table in TABLES {
        let a = copy::sqlite_digest(&sqlite, table).unwrap();
        let b = copy::postgres_digest(&mut client, table).unwrap();
        assert_eq!(a, b, "{}", table);
        assert_same_rows(&sqlite, &mut client, table);
    }
    // The digest sees a change of one value.
    pg.psql(
        "migrate_full",
        "UPDATE usage SET latency_ms = latency_ms + 1 WHERE at = (SELECT max(at) FROM usage)",
    );
    assert_ne!(
        copy::sqlite_digest(&sqlite, "usage").unwrap(),
        copy::postgres_digest(&mut client, "usage").unwrap()
    );
    pg.psql(
        "migrate_full",
        "UPDATE usage SET latency_ms = latency_ms - 1 WHERE at = (SELECT max(at) FROM usage)",
    );

    // The store the server opens answers as the file did.
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().join("pg-data");
    cfg.database.url = url.clone();
    let db = Db::open(&cfg).expect("open the copied PostgreSQL store");
    assert_eq!(db.backend(), "postgresql");
    let me = Owner::of(&filled.alice);
    assert_eq!(
        db.list_messages(me, &filled.conversation, &page())
            .unwrap()
            .items,
        filled.messages
    );
    match db.lookup_key(&filled.key).unwrap() {
        KeyLookup::Valid(g) => {
            assert_eq!(g.principal.user_id, filled.alice);
            assert_eq!(g.models, Some(vec!["m*".to_string(), "x".to_string()]));
        }
        other => panic!("the copied key: {:?}", other),
    }
    assert!(matches!(
        db.lookup_key(&filled.revoked_key).unwrap(),
        KeyLookup::Revoked { .. }
    ));
    match db.lookup_session(&filled.session, 3_600_000).unwrap() {
        SessionLookup::Valid { principal, .. } => assert_eq!(principal.user_id, filled.alice),
        SessionLookup::Invalid => panic!("the copied session is refused"),
    }
    assert_eq!(db.list_users().unwrap(), filled.users);
    assert_eq!(db.audit_rows(None, 1000).unwrap(), filled.audit);
    assert_eq!(db.usage_report(&report_query()).unwrap(), filled.report);

    // New rows take numbers past the copied ones (the identities moved).
    let max = |sql: &str| -> i64 { pg.psql("migrate_full", sql).parse().unwrap() };
    let before = max("SELECT max(seq) FROM messages");
    let m = db
        .insert_message(
            me,
            &NewMessage {
                conversation_id: &filled.conversation,
                role: MessageRole::User,
                content: "after",
                status: Status::Complete,
                model: None,
                usage: None,
                finish_reason: None,
            },
        )
        .unwrap();
    assert_eq!(max("SELECT max(seq) FROM messages"), before + 1);
    assert_eq!(
        db.list_messages(me, &filled.conversation, &page())
            .unwrap()
            .items
            .last(),
        Some(&m)
    );
    db.create_user("carol", Role::Member, None, &Actor::default())
        .unwrap();
    db.create_project(me, "new", None, &Actor::default())
        .unwrap();
    let given: i64 = sqlite
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'conversations'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(given > max("SELECT max(seq) FROM conversations"));
    db.create_conversation(me, None, None, None, None, &Actor::default())
        .unwrap();
    assert_eq!(max("SELECT max(seq) FROM conversations"), given + 1);
    db.record_usage(&[UsageRow {
        at_us: DAY0_US + 3 * DAY_US,
        user_id: "carol".into(),
        key_id: None,
        model: "new-model".into(),
        upstream: "other".into(),
        route: "chat",
        prompt_tokens: 1,
        completion_tokens: 1,
        estimated: false,
        status: 200,
        latency_ms: 1,
    }])
    .unwrap();
    drop(db);

    // Again into the same, now filled, database: refused, nothing touched.
    let rows_before = pg.psql("migrate_full", "SELECT count(*) FROM messages");
    let (code, out, err) = migrate(dir.path(), &filled.file, Some(&secret_url));
    assert_eq!(code, 1, "{}{}", out, err);
    assert!(err.contains("is not empty"), "{}", err);
    assert!(!err.contains("Sekr1tPass"), "{}", err);
    assert_eq!(
        pg.psql("migrate_full", "SELECT count(*) FROM messages"),
        rows_before
    );
}

#[test]
fn a_failed_copy_keeps_nothing_and_can_be_run_again() {
    let Some(pg) = PgServer::shared() else { return };
    let dir = TempDir::new("migrate-pg-retry");
    let filled = fill(dir.path());
    let url = pg.create_database("migrate_retry");

    // A REAL where the schema has integers stops the copy, naming it.
    {
        let c = rusqlite::Connection::open(&filled.file).unwrap();
        c.execute(
            "UPDATE usage SET latency_ms = 1.5 WHERE at = (SELECT max(at) FROM usage)",
            [],
        )
        .unwrap();
    }
    let (code, out, err) = migrate(dir.path(), &filled.file, Some(&url));
    assert_eq!(code, 1, "{}{}", out, err);
    assert!(
        err.contains("usage.latency_ms holds a REAL (row at = "),
        "{}",
        err
    );
    assert!(err.contains("no row was kept"), "{}", err);
    assert!(out.is_empty(), "{}", out);
    // Rolled back: the schema is there, no row is.
    assert_eq!(pg.psql("migrate_retry", "SELECT count(*) FROM users"), "0");
    assert_eq!(
        pg.psql("migrate_retry", "SELECT count(*) FROM messages"),
        "0"
    );

    // Fixed, the same database takes the copy.
    {
        let c = rusqlite::Connection::open(&filled.file).unwrap();
        c.execute(
            "UPDATE usage SET latency_ms = 12 WHERE typeof(latency_ms) = 'real'",
            [],
        )
        .unwrap();
    }
    let (code, out, err) = migrate(dir.path(), &filled.file, Some(&url));
    assert_eq!(code, 0, "{}{}", out, err);
    assert_eq!(
        out.lines().filter(|l| l.ends_with("hash=ok")).count(),
        TABLES.len()
    );

    // A database a server already uses (its admin seeded) is refused, as
    // is one holding tables of something else.
    let used = pg.create_database("migrate_used");
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().join("pg-data");
    cfg.database.url = used.clone();
    drop(Db::open(&cfg).unwrap());
    let (code, _, err) = migrate(dir.path(), &filled.file, Some(&used));
    assert_eq!(code, 1);
    assert!(
        err.contains("is not empty") && err.contains("users holds rows"),
        "{}",
        err
    );
    let other = pg.create_database("migrate_other");
    pg.psql("migrate_other", "CREATE TABLE accounts (id int)");
    let (code, _, err) = migrate(dir.path(), &filled.file, Some(&other));
    assert_eq!(code, 1);
    assert!(
        err.contains("is not empty") && err.contains("accounts"),
        "{}",
        err
    );
    assert_eq!(
        pg.psql(
            "migrate_other",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "1"
    );
}

/// SQLite orders text keys by bytes; a database whose collation orders
/// them otherwise (ICU: `a` before `B`) must still give equal digests.
#[test]
fn text_keys_hash_alike_whatever_the_database_collation() {
    let Some(pg) = PgServer::shared() else { return };
    let created = pg.try_psql(
        "postgres",
        "CREATE DATABASE migrate_icu TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'",
    );
    if let Err(e) = created {
        eprintln!("skipping: this PostgreSQL has no ICU collations ({})", e);
        return;
    }
    assert_eq!(
        pg.psql(
            "migrate_icu",
            "SELECT string_agg(k, ',' ORDER BY k) FROM (VALUES ('B'), ('a')) v(k)"
        ),
        "a,B",
        "the test needs a collation that is not byte order"
    );
    let dir = TempDir::new("migrate-pg-icu");
    let filled = fill(dir.path());
    {
        let c = rusqlite::Connection::open(&filled.file).unwrap();
        for id in ["B-key", "a-key"] {
            c.execute(
                "INSERT INTO api_keys (id, name, prefix, hash, created_at, user_id) \
                 VALUES (?1, 'k', 'pcs_', ?1, 1, ?2)",
                [id, filled.alice.as_str()],
            )
            .unwrap();
        }
    }
    let (code, out, err) = migrate(dir.path(), &filled.file, Some(&pg.url("migrate_icu")));
    assert_eq!(code, 0, "{}{}", out, err);
    assert!(out.contains("api_keys rows=4 hash=ok"), "{}", out);
}

/// Refusals that come before any connection: they need no PostgreSQL.
#[test]
fn wrong_files_and_urls_are_refused_clearly() {
    let dir = TempDir::new("migrate-refusals");
    // Nothing listens there: the file is checked before connecting.
    let url = "postgres://postgres:Sekr1tPass@127.0.0.1:1/nowhere";
    let missing = dir.path().join("missing.db");
    let (code, _, err) = migrate(dir.path(), &missing, Some(url));
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read") && err.contains("missing.db"),
        "{}",
        err
    );

    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database, longer than a header\n".repeat(20)).unwrap();
    let (code, _, err) = migrate(dir.path(), &text, Some(url));
    assert_eq!(code, 1);
    assert!(
        err.contains("notes.txt") && err.contains("not a database"),
        "{}",
        err
    );

    let old = dir.path().join("old.db");
    {
        let c = rusqlite::Connection::open(&old).unwrap();
        c.execute_batch(
            "CREATE TABLE projects (seq INTEGER PRIMARY KEY); PRAGMA user_version = 3;",
        )
        .unwrap();
    }
    let (code, _, err) = migrate(dir.path(), &old, Some(url));
    assert_eq!(code, 1);
    assert!(
        err.contains("older") && err.contains("start this portcullis once"),
        "{}",
        err
    );

    let newer = dir.path().join("newer.db");
    {
        let c = rusqlite::Connection::open(&newer).unwrap();
        c.execute_batch("PRAGMA user_version = 99;").unwrap();
    }
    let (code, _, err) = migrate(dir.path(), &newer, Some(url));
    assert_eq!(code, 1);
    assert!(err.contains("newer than this portcullis"), "{}", err);

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, "").unwrap();
    let (code, _, err) = migrate(dir.path(), &empty, Some(url));
    assert_eq!(code, 1);
    assert!(err.contains("holds no portcullis database"), "{}", err);

    // The file is fine, the database cannot be reached: said without the URL.
    let filled = fill(&dir.path().join("data"));
    let (code, _, err) = migrate(dir.path(), &filled.file, Some(url));
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot connect to PostgreSQL (database nowhere on 127.0.0.1)"),
        "{}",
        err
    );

    // No URL, or not a PostgreSQL one.
    let (code, _, err) = migrate(dir.path(), &filled.file, None);
    assert_eq!(code, 1);
    assert!(err.contains("database.url is not set"), "{}", err);
    let (code, _, err) = migrate(dir.path(), &filled.file, Some("mysql://u:Sekr1tPass@h/d"));
    assert_eq!(code, 1);
    assert!(
        err.contains("postgres://") && !err.contains("Sekr1tPass"),
        "{}",
        err
    );

    // --from is required, and only for this command.
    let (code, _, err) = run_cli(&["migrate-to-postgres"], &[], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("needs --from FILE"), "{}", err);
    let (code, _, err) = run_cli(&["usage", "--from", "x.db"], &[], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("--from is not valid here"), "{}", err);
}

/// A million usage rows, timed (`cargo test --test migrate_to_postgres --
/// --ignored`). Prints the time; fails past two minutes.
#[test]
#[ignore]
fn a_million_usage_rows_copy_in_seconds() {
    let Some(pg) = PgServer::shared() else { return };
    let dir = TempDir::new("migrate-pg-big");
    let filled = fill(dir.path());
    {
        let mut c = rusqlite::Connection::open(&filled.file).unwrap();
        let tx = c.transaction().unwrap();
        {
            let mut ins = tx
                .prepare("INSERT INTO usage VALUES (?1, 1, 2, 3, 4, 5, ?2, ?3, 0, 200, ?4)")
                .unwrap();
            for i in 0..1_000_000i64 {
                ins.execute([DAY0_US + 10 * DAY_US + i, i % 1000, i % 77, i % 500])
                    .unwrap();
            }
        }
        tx.commit().unwrap();
    }
    let url = pg.create_database("migrate_big");
    let started = std::time::Instant::now();
    let (code, out, err) = migrate(dir.path(), &filled.file, Some(&url));
    let took = started.elapsed();
    eprintln!(
        "{}{}\nmigrate-to-postgres took {:.1} s",
        out,
        err,
        took.as_secs_f64()
    );
    assert_eq!(code, 0, "{}{}", out, err);
    assert!(out.contains("usage rows=1000004 hash=ok"), "{}", out);
    assert!(took < std::time::Duration::from_secs(120), "{:?}", took);
}
