//! One suite of storage tests, run against both stores: SQLite (a file in
//! a temp dir) and PostgreSQL (a real server this test binary starts,
//! `support::pg`; a fresh database per test). Every test is a function of
//! `&Db` only, so the two stores must answer alike: the same rows, the
//! same page order and cursors, the same `StoreError`s, the same owner
//! checks. Outside CI, the PostgreSQL half is skipped with a notice when
//! PostgreSQL is not installed.

mod support;

use portcullis::config::Config;
use portcullis::db::audit_log::{Actor, AuditEvent};
use portcullis::db::conversations::ConversationPatch;
use portcullis::db::keys::{KeyLookup, NewKey, Revoke};
use portcullis::db::messages::{NewMessage, Role as MessageRole, Status};
use portcullis::db::page::{Kind, PageReq};
use portcullis::db::projects::ProjectPatch;
use portcullis::db::sessions::SessionLookup;
use portcullis::db::usage::{GroupBy, UsageQuery, UsageRow};
use portcullis::db::users::{Owner, Role, UserPatch};
use portcullis::db::{Db, StoreError};
use serde_json::json;
use support::pg::PgServer;
use support::TempDir;

/// A store of each kind; the TempDir keeps the SQLite file (and the
/// data dir of either) alive for the test.
fn sqlite() -> (Db, TempDir) {
    let dir = TempDir::new("contract-sqlite");
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.database.pool_size = 3;
    (Db::open(&cfg).expect("open SQLite"), dir)
}

fn postgres(test: &str) -> Option<(Db, TempDir)> {
    let pg = PgServer::shared()?;
    let url = pg.create_database(&format!("contract_{}", test));
    let dir = TempDir::new("contract-pg");
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.path().to_path_buf();
    cfg.database.url = url;
    cfg.database.pool_size = 3;
    Some((Db::open(&cfg).expect("open PostgreSQL"), dir))
}

/// `#[test]`s `NAME::sqlite` and `NAME::postgres` running `NAME(&Db)`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn sqlite() {
                let (db, _dir) = super::sqlite();
                super::$name(&db);
            }
            #[test]
            fn postgres() {
                if let Some((db, _dir)) = super::postgres(stringify!($name)) {
                    assert_eq!(db.backend(), "postgresql");
                    super::$name(&db);
                }
            }
        }
    )*};
}

on_both!(
    content_is_owned_paged_patched_and_deleted,
    users_keys_and_sessions,
    audit_rows_come_back_in_order,
    usage_reports_and_spending,
    readiness_answers,
);

fn actor() -> Actor {
    Actor::default()
}

fn page(limit: usize) -> PageReq {
    PageReq { limit, after: None }
}

fn msg<'a>(conversation_id: &'a str, content: &'a str) -> NewMessage<'a> {
    NewMessage {
        conversation_id,
        role: MessageRole::User,
        content,
        status: Status::Complete,
        model: Some("m"),
        usage: None,
        finish_reason: None,
    }
}

fn content_is_owned_paged_patched_and_deleted(db: &Db) {
    let me = db.user_by_name("admin").unwrap().id;
    let other = db
        .create_user("other", Role::Member, None, &actor())
        .unwrap()
        .id;
    let (o, x) = (Owner::of(&me), Owner::of(&other));

    let p = db.create_project(o, "p", Some("d"), &actor()).unwrap();
    assert_eq!(db.get_project(o, &p.id).unwrap(), p);
    assert_eq!(db.get_project(x, &p.id), Err(StoreError::NotFound));
    let u = db
        .update_project(
            o,
            &p.id,
            &ProjectPatch {
                name: Some("q".into()),
                description: Some(None),
            },
            &actor(),
        )
        .unwrap();
    assert_eq!((u.name.as_str(), u.description), ("q", None));

    // Five conversations, walked two at a time: newest first, no repeats.
    let mut made = Vec::new();
    for i in 0..5 {
        let c = db
            .create_conversation(
                o,
                Some(&p.id),
                Some(&format!("c{}", i)),
                None,
                None,
                &actor(),
            )
            .unwrap();
        made.push(c.id);
    }
    assert_eq!(
        db.create_conversation(x, Some(&p.id), None, None, None, &actor()),
        Err(StoreError::UnknownProject)
    );
    let mut seen = Vec::new();
    let mut req = page(2);
    loop {
        let pg = db.list_conversations(o, Some(&p.id), &req).unwrap();
        seen.extend(pg.items.iter().map(|c| c.id.clone()));
        match pg.next_cursor {
            Some(c) => {
                req = PageReq::from_query(
                    |k| (k == "cursor").then(|| c.clone()),
                    Kind::Conversations,
                )
                .unwrap();
                req.limit = 2;
            }
            None => break,
        }
    }
    made.reverse();
    assert_eq!(seen, made);
    assert!(db
        .list_conversations(x, None, &page(50))
        .unwrap()
        .items
        .is_empty());

    // Messages: oldest first, the other user cannot read or add.
    let c = &made[0];
    for i in 0..3 {
        db.insert_message(o, &msg(c, &format!("m{}", i))).unwrap();
    }
    assert_eq!(
        db.insert_message(x, &msg(c, "no")),
        Err(StoreError::NotFound)
    );
    let listed = db.list_messages(o, c, &page(50)).unwrap().items;
    let texts: Vec<&str> = listed.iter().map(|m| m.content.as_str()).collect();
    assert_eq!(texts, ["m0", "m1", "m2"]);
    let recent = db.recent_messages(o, c, 2).unwrap();
    assert_eq!(
        recent
            .iter()
            .map(|m| m.content.as_str())
            .collect::<Vec<_>>(),
        ["m1", "m2"]
    );
    assert_eq!(
        db.list_messages(x, c, &page(50)).err(),
        Some(StoreError::NotFound)
    );
    db.update_message(
        o,
        &listed[2].id,
        "done",
        Status::Partial,
        Some(&json!({"total_tokens": 3})),
        Some("length"),
    )
    .unwrap();
    let m = db
        .list_messages(o, c, &page(50))
        .unwrap()
        .items
        .pop()
        .unwrap();
    assert_eq!(
        (
            m.content.as_str(),
            m.status,
            m.usage,
            m.finish_reason.as_deref()
        ),
        (
            "done",
            Status::Partial,
            Some(json!({"total_tokens": 3})),
            Some("length")
        )
    );
    assert_eq!(
        db.update_message(x, &m.id, "x", Status::Complete, None, None),
        Err(StoreError::NotFound)
    );

    let patched = db
        .update_conversation(
            o,
            c,
            &ConversationPatch {
                title: Some(Some("t".into())),
                project_id: Some(None),
                ..ConversationPatch::default()
            },
            &actor(),
        )
        .unwrap();
    assert_eq!(
        (patched.title.as_deref(), patched.project_id),
        (Some("t"), None)
    );

    // Deleting the project takes its four remaining conversations along.
    db.delete_project(o, &p.id, &actor()).unwrap();
    assert_eq!(db.get_conversation(o, &made[1]), Err(StoreError::NotFound));
    assert!(db.get_conversation(o, c).is_ok());
    assert_eq!(
        db.delete_conversation(x, c, &actor()),
        Err(StoreError::NotFound)
    );
    db.delete_conversation(o, c, &actor()).unwrap();
    assert_eq!(
        db.list_messages(o, c, &page(5)).err(),
        Some(StoreError::NotFound)
    );
}

fn users_keys_and_sessions(db: &Db) {
    let u = db
        .create_user("ann", Role::Member, Some("$argon2id$x"), &actor())
        .unwrap();
    assert!(matches!(
        db.create_user("ann", Role::Member, None, &actor()),
        Err(StoreError::Invalid { field: "name", .. })
    ));
    assert!(matches!(
        db.create_user("bad name", Role::Member, None, &actor()),
        Err(StoreError::Invalid { field: "name", .. })
    ));
    assert_eq!(db.get_user(&u.id).unwrap(), u);
    assert_eq!(
        db.ensure_user("ann", Role::Admin).unwrap().role,
        Role::Member
    );
    assert_eq!(db.first_admin().unwrap().name, "admin");
    assert_eq!(
        db.list_users()
            .unwrap()
            .iter()
            .map(|u| u.name.as_str())
            .collect::<Vec<_>>(),
        ["admin", "ann"]
    );
    let (id, hash, disabled) = db.password_of("ann").unwrap().unwrap();
    assert_eq!(
        (id, hash.as_deref(), disabled),
        (u.id.clone(), Some("$argon2id$x"), false)
    );

    let (key, secret) = db
        .create_key(
            &NewKey {
                name: "k",
                user_id: &u.id,
                models: Some(vec!["m*".into()]),
                ..NewKey::default()
            },
            &actor(),
        )
        .unwrap();
    match db.lookup_key(secret.expose_str()).unwrap() {
        KeyLookup::Valid(g) => {
            assert_eq!(
                (g.key_id, g.principal.user_id, g.models),
                (key.id.clone(), u.id.clone(), Some(vec!["m*".to_string()]))
            );
        }
        other => panic!("{:?}", other),
    }
    assert_eq!(db.lookup_key("pcs_0000").unwrap(), KeyLookup::Unknown);
    assert_eq!(
        db.list_user_keys(Owner::of(&u.id)).unwrap(),
        vec![key.clone()]
    );
    let (_, expired) = db
        .create_key(
            &NewKey {
                name: "old",
                user_id: &u.id,
                expires_at: Some(1),
                ..NewKey::default()
            },
            &actor(),
        )
        .unwrap();
    assert!(matches!(
        db.lookup_key(expired.expose_str()).unwrap(),
        KeyLookup::Expired { .. }
    ));

    // Sessions live until ended; a disabled user's are refused at once.
    let token = db.create_session(&u.id, 60_000).unwrap();
    let hash = match db.lookup_session(token.expose_str(), 60_000).unwrap() {
        SessionLookup::Valid { principal, hash } => {
            assert_eq!(principal.user_id, u.id);
            hash
        }
        SessionLookup::Invalid => panic!("a new session is valid"),
    };
    db.end_session(&hash).unwrap();
    assert_eq!(
        db.lookup_session(token.expose_str(), 60_000).unwrap(),
        SessionLookup::Invalid
    );
    let token = db.create_session(&u.id, 60_000).unwrap();
    let limits = [Some(Some(100)), None, Some(Some(0)), None];
    let patched = db
        .update_user(
            &u.id,
            &UserPatch {
                disabled: Some(true),
                limits,
                ..UserPatch::default()
            },
            &actor(),
        )
        .unwrap();
    assert!(patched.disabled);
    assert_eq!(patched.limits.0, [Some(100), None, Some(0), None]);
    assert_eq!(db.get_user(&u.id).unwrap(), patched);
    assert_eq!(
        db.lookup_session(token.expose_str(), 60_000).unwrap(),
        SessionLookup::Invalid
    );
    assert!(matches!(
        db.lookup_key(secret.expose_str()).unwrap(),
        KeyLookup::Disabled { .. }
    ));
    db.update_user(
        &u.id,
        &UserPatch {
            disabled: Some(false),
            ..UserPatch::default()
        },
        &actor(),
    )
    .unwrap();

    // Revocation: only by its owner when `only_of`, once.
    let stranger = db.create_user("bob", Role::Member, None, &actor()).unwrap();
    assert_eq!(
        db.revoke_key(&key.id, Some(Owner::of(&stranger.id)), &actor())
            .unwrap(),
        Revoke::NotFound
    );
    assert_eq!(
        db.revoke_key(&key.id, Some(Owner::of(&u.id)), &actor())
            .unwrap(),
        Revoke::Revoked
    );
    assert_eq!(
        db.revoke_key(&key.id, None, &actor()).unwrap(),
        Revoke::AlreadyRevoked
    );
    assert_eq!(
        db.revoke_key("nope", None, &actor()).unwrap(),
        Revoke::NotFound
    );
    assert!(matches!(
        db.lookup_key(secret.expose_str()).unwrap(),
        KeyLookup::Revoked { .. }
    ));
    assert_eq!(db.list_keys().unwrap().len(), 2);
    assert_eq!(db.get_user("nope"), Err(StoreError::NotFound));
}

fn audit_rows_come_back_in_order(db: &Db) {
    let before = db.audit_rows(None, 1000).unwrap().len();
    let who = Actor {
        request_id: Some("r1".into()),
        client: Some("127.0.0.1".into()),
        ..Actor::default()
    };
    db.record_audit(AuditEvent::AuthFailed, &who, &json!({"n": 1}))
        .unwrap();
    db.record_audit_batch(&[
        (10, AuditEvent::RateLimited, who.clone(), json!({"n": 2})),
        (20, AuditEvent::RateLimited, who.clone(), json!({"n": 3})),
    ])
    .unwrap();
    let all = db.audit_rows(None, 1000).unwrap();
    assert_eq!(all.len(), before + 3);
    let since = db.audit_rows(Some(10), 2).unwrap();
    assert_eq!(
        since
            .iter()
            .map(|r| r.detail["n"].as_i64())
            .collect::<Vec<_>>(),
        [Some(2), Some(3)]
    );
    assert_eq!(since[0].actor, who);
    let newest = db.audit_rows(None, 1).unwrap();
    assert_eq!(newest[0].event, AuditEvent::AuthFailed);
}

fn usage_reports_and_spending(db: &Db) {
    const DAY_US: i64 = 86_400_000_000;
    let day0 = 20_000 * DAY_US;
    let row = |at_us: i64, user: &str, key: Option<&str>, model: &str, p: u64, c: u64| UsageRow {
        at_us,
        user_id: user.into(),
        key_id: key.map(str::to_string),
        model: model.into(),
        upstream: "default".into(),
        route: "chat",
        prompt_tokens: p,
        completion_tokens: c,
        estimated: false,
        status: 200,
        latency_ms: 5,
    };
    assert_eq!(db.last_usage_at().unwrap(), 0);
    db.record_usage(&[
        row(day0 + 1, "u1", Some("k1"), "a", 10, 1),
        row(day0 + DAY_US / 2, "u1", None, "b", 20, 2),
        row(day0 + DAY_US + 5, "u2", Some("k2"), "a", 30, 3),
        row(day0 + 2 * DAY_US + 7, "u1", Some("k1"), "a", 40, 4),
    ])
    .unwrap();
    assert_eq!(db.last_usage_at().unwrap(), day0 + 2 * DAY_US + 7);
    let q = |since_ms: i64, until_ms: i64, user: Option<&'static str>, by: GroupBy| {
        db.usage_report(&UsageQuery {
            since_ms,
            until_ms,
            user_id: user,
            group_by: by,
        })
        .unwrap()
        .into_iter()
        .map(|i| (i.group, i.requests, i.prompt_tokens, i.completion_tokens))
        .collect::<Vec<_>>()
    };
    let ms = |us: i64| us / 1000;
    // Whole days from the sums, the partial ends from the rows.
    let all = q(ms(day0 + 1), ms(day0 + 3 * DAY_US), None, GroupBy::Model);
    assert_eq!(
        all,
        [(Some("a".into()), 3, 80, 8), (Some("b".into()), 1, 20, 2)]
    );
    let days = q(ms(day0), ms(day0 + 3 * DAY_US), Some("u1"), GroupBy::Day);
    assert_eq!(days.len(), 2);
    assert_eq!(days[0].1, 2);
    let keys = q(ms(day0), ms(day0 + DAY_US), None, GroupBy::Key);
    assert_eq!(keys, [(None, 1, 20, 2), (Some("k1".into()), 1, 10, 1)]);
    let users = q(ms(day0), ms(day0 + 3 * DAY_US), None, GroupBy::User);
    assert_eq!(users[0], (Some("u1".into()), 3, 70, 7));
    assert!(q(ms(day0), ms(day0 + DAY_US), Some("nobody"), GroupBy::Day).is_empty());
    // Spending for the limits: today's and this month's tokens.
    let (today, month) = db.usage_spent("u1", 20_000, 20_002).unwrap();
    assert_eq!((today, month), (44, 77));
    assert_eq!(db.usage_spent("nobody", 20_000, 20_002).unwrap(), (0, 0));
}

fn readiness_answers(db: &Db) {
    let latency = db
        .check_ready(std::time::Duration::from_secs(5))
        .expect("ready");
    assert!(latency < std::time::Duration::from_secs(5));
    let (waited, timed_out) = db.pool_wait_counts();
    assert_eq!(timed_out, 0, "{}", waited);
}

/// `sslmode` against a server that requires TLS on TCP: `disable` is
/// refused by the server, `prefer` and `require` encrypt, `verify-full`
/// accepts the server's certificate only with it as `sslrootcert` (the
/// self-signed certificate is not under the Mozilla roots).
#[test]
fn sslmode_reaches_a_server_that_requires_tls() {
    // A server of its own: this test restarts it.
    let Some(pg) = PgServer::start() else { return };
    pg.create_database("tls");
    let cert = pg.require_tls();
    let dir = TempDir::new("contract-tls");
    let open = |query: &str| {
        let mut cfg = Config::default();
        cfg.server.data_dir = dir.path().to_path_buf();
        cfg.database.url = format!("{}?{}", pg.url("tls"), query);
        cfg.database.pool_size = 1;
        Db::open(&cfg)
    };
    assert!(
        open("sslmode=disable").is_err(),
        "the server refuses plain TCP"
    );
    let rooted = format!("sslmode=verify-full&sslrootcert={}", cert.display());
    for q in ["sslmode=prefer", "sslmode=require", rooted.as_str()] {
        let db = open(q).unwrap_or_else(|e| panic!("{}: {}", q, e));
        db.check_ready(std::time::Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{}: {:?}", q, e));
    }
    assert!(
        open("sslmode=verify-full").is_err(),
        "an unknown issuer is refused"
    );
}
