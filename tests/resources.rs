//! The resources through the HTTP API: projects, conversations and their
//! messages (create, get, PATCH, DELETE with cascade, status codes and
//! shapes), validation errors naming the field, and keyset pagination
//! without duplicates or gaps while writers insert.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use support::{assert_error, is_time, keyed, run_cli, Opts, Resp, Server};

fn get(s: &Server, path: &str, key: &str) -> Resp {
    s.get_as(path, key)
}

fn send(s: &Server, method: &str, path: &str, key: &str, body: Value) -> Resp {
    s.json(method, path, Some(key), &body)
}

fn delete(s: &Server, path: &str, key: &str) -> Resp {
    s.req(
        "DELETE",
        path,
        &[("Authorization", &format!("Bearer {}", key))],
        None,
    )
}

fn assert_field(r: &Resp, field: &str) {
    assert_error(r, 400, "validation_failed");
    assert_eq!(r.json()["error"]["field"], field, "{}", r.text());
}

#[test]
fn projects_crud_with_status_codes_and_shapes() {
    let (s, key) = keyed(Opts::new());
    let r = send(
        &s,
        "POST",
        "/api/projects",
        &key,
        json!({"name": "Alpha", "description": "first"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let p = r.json();
    let id = p["id"].as_str().unwrap().to_string();
    assert_eq!(
        (p["name"].as_str(), p["description"].as_str()),
        (Some("Alpha"), Some("first"))
    );
    assert!(
        is_time(&p["created_at"]) && is_time(&p["updated_at"]),
        "{}",
        p
    );
    assert_eq!(
        p.as_object().unwrap().len(),
        5,
        "exactly the contract's fields: {}",
        p
    );

    assert_eq!(get(&s, &format!("/api/projects/{}", id), &key).json(), p);

    let r = send(
        &s,
        "PATCH",
        &format!("/api/projects/{}", id),
        &key,
        json!({"name": "Beta"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        (r.json()["name"].as_str(), r.json()["description"].as_str()),
        (Some("Beta"), Some("first"))
    );
    let r = send(
        &s,
        "PATCH",
        &format!("/api/projects/{}", id),
        &key,
        json!({"description": null}),
    );
    assert_eq!(r.json()["description"], Value::Null);
    // An empty PATCH changes nothing (merge-patch semantics).
    let before = get(&s, &format!("/api/projects/{}", id), &key).json();
    let r = send(
        &s,
        "PATCH",
        &format!("/api/projects/{}", id),
        &key,
        json!({}),
    );
    assert_eq!((r.status, r.json()), (200, before));

    let list = get(&s, "/api/projects", &key).json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["next_cursor"], Value::Null);

    let r = delete(&s, &format!("/api/projects/{}", id), &key);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_error(
        &get(&s, &format!("/api/projects/{}", id), &key),
        404,
        "not_found",
    );
    assert_error(
        &delete(&s, &format!("/api/projects/{}", id), &key),
        404,
        "not_found",
    );
    assert_error(
        &send(
            &s,
            "PATCH",
            "/api/projects/nope",
            &key,
            json!({"name": "x"}),
        ),
        404,
        "not_found",
    );
}

#[test]
fn conversations_crud_filter_and_messages() {
    let (s, key) = keyed(Opts::new());
    let p = send(&s, "POST", "/api/projects", &key, json!({"name": "P"})).json();
    let pid = p["id"].as_str().unwrap();
    let r = send(
        &s,
        "POST",
        "/api/conversations",
        &key,
        json!({"project_id": pid, "title": "T", "model": "m1", "system_prompt": "be brief"}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let c1 = r.json();
    assert_eq!(c1.as_object().unwrap().len(), 7, "{}", c1);
    assert_eq!(c1["project_id"], pid);
    let c2 = send(&s, "POST", "/api/conversations", &key, json!({})).json();
    assert_eq!(
        (c2["project_id"].clone(), c2["title"].clone()),
        (Value::Null, Value::Null)
    );
    let c3 = send(
        &s,
        "POST",
        "/api/conversations",
        &key,
        json!({"project_id": pid}),
    )
    .json();

    // Newest first; the filter keeps the project's own.
    let all = get(&s, "/api/conversations", &key).json();
    let ids: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            c3["id"].as_str().unwrap(),
            c2["id"].as_str().unwrap(),
            c1["id"].as_str().unwrap()
        ]
    );
    let mine = get(&s, &format!("/api/conversations?project_id={}", pid), &key).json();
    let ids: Vec<&str> = mine["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [c3["id"].as_str().unwrap(), c1["id"].as_str().unwrap()]
    );
    // An unknown id, referenced or in the path, is 404 (docs/contract.md "Errors"; issue 11).
    assert_error(
        &get(&s, "/api/conversations?project_id=nope", &key),
        404,
        "not_found",
    );
    assert_error(
        &send(
            &s,
            "POST",
            "/api/conversations",
            &key,
            json!({"project_id": "missing"}),
        ),
        404,
        "not_found",
    );

    let path = format!("/api/conversations/{}", c1["id"].as_str().unwrap());
    assert_eq!(get(&s, &path, &key).json(), c1);
    let r = send(
        &s,
        "PATCH",
        &path,
        &key,
        json!({"title": "New", "project_id": null}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let u = r.json();
    assert_eq!(
        (
            u["title"].as_str(),
            u["project_id"].clone(),
            u["model"].as_str()
        ),
        (Some("New"), Value::Null, Some("m1"))
    );
    assert_error(
        &send(&s, "PATCH", &path, &key, json!({"project_id": "nope"})),
        404,
        "not_found",
    );

    let msgs = get(&s, &format!("{}/messages", path), &key);
    assert_eq!(msgs.status, 200);
    assert_eq!(msgs.json(), json!({"items": [], "next_cursor": null}));
    assert_error(
        &get(&s, "/api/conversations/nope/messages", &key),
        404,
        "not_found",
    );

    assert_eq!(delete(&s, &path, &key).status, 204);
    assert_error(&get(&s, &path, &key), 404, "not_found");
    assert_error(
        &get(&s, &format!("{}/messages", path), &key),
        404,
        "not_found",
    );
}

#[test]
fn validation_errors_name_the_field() {
    let s = Server::start(Opts::new().no_auth());
    let pid = s
        .json("POST", "/api/projects", None, &json!({"name": "p"}))
        .json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let long = |n: usize| "x".repeat(n);
    let rows: Vec<(&str, String, Value, &str)> = vec![
        ("POST", "/api/projects".into(), json!({}), "name"),
        ("POST", "/api/projects".into(), json!({"name": ""}), "name"),
        (
            "POST",
            "/api/projects".into(),
            json!({"name": long(201)}),
            "name",
        ),
        ("POST", "/api/projects".into(), json!({"name": 5}), "name"),
        (
            "POST",
            "/api/projects".into(),
            json!({"name": null}),
            "name",
        ),
        (
            "POST",
            "/api/projects".into(),
            json!({"name": "a", "description": long(2001)}),
            "description",
        ),
        (
            "POST",
            "/api/projects".into(),
            json!({"name": "a", "owner": "me"}),
            "owner",
        ),
        (
            "PATCH",
            format!("/api/projects/{}", pid),
            json!({"name": null}),
            "name",
        ),
        (
            "PATCH",
            format!("/api/projects/{}", pid),
            json!({"name": long(201)}),
            "name",
        ),
        (
            "PATCH",
            format!("/api/projects/{}", pid),
            json!({"id": "x"}),
            "id",
        ),
        (
            "POST",
            "/api/conversations".into(),
            json!({"project_id": 7}),
            "project_id",
        ),
        (
            "POST",
            "/api/conversations".into(),
            json!({"title": long(201)}),
            "title",
        ),
        (
            "POST",
            "/api/conversations".into(),
            json!({"model": ""}),
            "model",
        ),
        (
            "POST",
            "/api/conversations".into(),
            json!({"model": long(201)}),
            "model",
        ),
        (
            "POST",
            "/api/conversations".into(),
            json!({"system_prompt": long(20_001)}),
            "system_prompt",
        ),
        (
            "POST",
            "/api/conversations".into(),
            json!({"system_prompt": ["a"]}),
            "system_prompt",
        ),
        (
            "POST",
            "/api/conversations".into(),
            json!({"messages": []}),
            "messages",
        ),
    ];
    for (method, path, body, field) in &rows {
        let r = s.json(method, path, None, body);
        assert_eq!(
            r.json()["error"]["field"],
            *field,
            "{} {} {}: {}",
            method,
            path,
            body,
            r.text()
        );
        assert_field(&r, field);
    }
    // Limits are inclusive: exactly at the limit is accepted.
    let ok = s.json(
        "POST",
        "/api/conversations",
        None,
        &json!({"title": long(200), "system_prompt": long(20_000)}),
    );
    assert_eq!(ok.status, 201, "{}", ok.text());
    let ok = s.json(
        "POST",
        "/api/projects",
        None,
        &json!({"name": "é".repeat(200), "description": long(2000)}),
    );
    assert_eq!(ok.status, 201, "{}", ok.text());
    // Not JSON, or not an object: invalid_json.
    let r = s.req(
        "POST",
        "/api/projects",
        &[
            ("Content-Type", "application/json"),
            ("Origin", "http://localhost:3000"),
        ],
        Some("[1]"),
    );
    assert_error(&r, 400, "invalid_json");
    for q in ["limit=0", "limit=201", "limit=abc"] {
        assert_field(&s.get(&format!("/api/projects?{}", q)), "limit");
    }
    for q in ["cursor=zz", "cursor=6331", "cursor=%00"] {
        assert_field(&s.get(&format!("/api/conversations?{}", q)), "cursor");
    }
    // An empty `cursor=` is no cursor: the first page (issue 11, schemathesis).
    for path in [
        "/api/projects?cursor=",
        "/api/conversations?limit=5&cursor=",
        "/api/conversations/nope/messages?cursor=",
    ] {
        let r = s.get(path);
        let want = if path.contains("nope") { 404 } else { 200 };
        assert_eq!(r.status, want, "{}: {}", path, r.text());
    }
}

/// Walks a list with `limit` until `next_cursor` is null.
fn walk(s: &Server, base: &str, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let sep = if base.contains('?') { '&' } else { '?' };
        let mut path = format!("{}{}limit={}", base, sep, limit);
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", c));
        }
        let r = s.get(&path);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let items = v["items"].as_array().unwrap();
        assert!(items.len() <= limit);
        ids.extend(items.iter().map(|i| i["id"].as_str().unwrap().to_string()));
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return ids,
        }
    }
    panic!("pagination did not end");
}

#[test]
fn pagination_has_no_duplicates_or_gaps_under_concurrent_inserts() {
    let s = Arc::new(Server::start(Opts::new().no_auth()));
    let mut before = Vec::new();
    for i in 0..60 {
        let r = s.json(
            "POST",
            "/api/projects",
            None,
            &json!({"name": format!("p{}", i)}),
        );
        assert_eq!(r.status, 201);
        before.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // Writers keep inserting while the walks run.
    let stop = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while stop.load(Ordering::Relaxed) == 0 {
                    let r = s.json(
                        "POST",
                        "/api/projects",
                        None,
                        &json!({"name": format!("w{}-{}", w, n)}),
                    );
                    assert_eq!(r.status, 201, "{}", r.text());
                    n += 1;
                }
                n
            })
        })
        .collect();
    for limit in [1, 7, 50] {
        let seen = walk(&s, "/api/projects", limit);
        let unique: HashSet<&String> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "duplicates with limit {}", limit);
        for id in &before {
            assert!(
                unique.contains(id),
                "gap: {} missing with limit {}",
                id,
                limit
            );
        }
    }
    stop.store(1, Ordering::Relaxed);
    let inserted: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(inserted > 0);
    // At rest, a walk returns every row, newest first, exactly once.
    let all = walk(&s, "/api/projects", 13);
    assert_eq!(all.len(), 60 + inserted);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
    assert_eq!(all.last(), before.first());
}

/// Opens the server's database in the test process through the library.
fn db_of(dir: &Path) -> portcullis::db::Db {
    let env = vec![(
        "PORTCULLIS_SERVER_DATA_DIR".to_string(),
        dir.display().to_string(),
    )];
    let cfg = portcullis::config::Config::load_with_env(None, &env).unwrap();
    portcullis::db::Db::open_for_cli(&cfg).unwrap()
}

/// The user id owning a conversation (the server's `local` user without
/// auth, `admin` with the first key).
fn owner_of(db: &portcullis::db::Db, conversation_id: &str) -> String {
    db.sqlite()
        .unwrap()
        .conn()
        .unwrap()
        .query_row(
            "SELECT owner_id FROM conversations WHERE id = ?1",
            [conversation_id],
            |r| r.get(0),
        )
        .unwrap()
}

fn new_message<'a>(conversation_id: &'a str, content: &'a str) -> portcullis::db::NewMessage<'a> {
    portcullis::db::NewMessage {
        conversation_id,
        role: portcullis::db::Role::User,
        content,
        status: portcullis::db::Status::Complete,
        model: None,
        usage: None,
        finish_reason: None,
    }
}

#[test]
fn messages_page_oldest_first_while_another_writer_appends() {
    let s = Server::start(Opts::new().no_auth());
    let c = s
        .json("POST", "/api/conversations", None, &json!({}))
        .json();
    let cid = c["id"].as_str().unwrap().to_string();
    let db = db_of(&s.dir);
    for i in 0..25 {
        db.insert_message(
            portcullis::db::Owner::of(&owner_of(&db, &cid)),
            &new_message(&cid, &format!("m{:03}", i)),
        )
        .unwrap();
    }
    let path = format!("/api/conversations/{}/messages", cid);
    let first = s.get(&format!("{}?limit=10", path)).json();
    let m0 = &first["items"][0];
    assert_eq!(
        (
            m0["role"].as_str(),
            m0["content"].as_str(),
            m0["status"].as_str()
        ),
        (Some("user"), Some("m000"), Some("complete"))
    );
    assert!(
        is_time(&m0["created_at"])
            && m0["conversation_id"] == cid.as_str()
            && m0.get("usage").is_none(),
        "{}",
        m0
    );

    // Appending during an oldest-first walk: every message shows up once, in order.
    let appender = {
        let (db, cid) = (db.clone(), cid.clone());
        std::thread::spawn(move || {
            for i in 25..60 {
                db.insert_message(
                    portcullis::db::Owner::of(&owner_of(&db, &cid)),
                    &new_message(&cid, &format!("m{:03}", i)),
                )
                .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("{}?limit=4&cursor={}", path, c),
            None => format!("{}?limit=4", path),
        };
        let v = s.get(&url).json();
        seen.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["content"].as_str().unwrap().to_string()),
        );
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    appender.join().unwrap();
    // Whatever the walk caught of the appends, it is a gap-free prefix.
    let expected: Vec<String> = (0..seen.len()).map(|i| format!("m{:03}", i)).collect();
    assert_eq!(seen, expected, "oldest first, no duplicates, no gaps");
    assert!(seen.len() >= 25);
    let all = s.get(&format!("{}?limit=200", path)).json();
    assert_eq!(all["items"].as_array().unwrap().len(), 60);
    // The updated conversation moved its updated_at forward.
    let after = s.get(&format!("/api/conversations/{}", cid)).json();
    assert!(after["updated_at"].as_str() > c["updated_at"].as_str());
}

#[test]
fn deleting_a_project_removes_its_conversations_and_messages() {
    let (s, key) = keyed(Opts::new());
    let pid = send(&s, "POST", "/api/projects", &key, json!({"name": "P"})).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let keep = send(&s, "POST", "/api/conversations", &key, json!({})).json()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let db = db_of(&s.dir);
    let mut gone = Vec::new();
    for _ in 0..3 {
        let c = send(
            &s,
            "POST",
            "/api/conversations",
            &key,
            json!({"project_id": pid}),
        )
        .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        db.insert_message(
            portcullis::db::Owner::of(&owner_of(&db, &c)),
            &new_message(&c, "hi"),
        )
        .unwrap();
        gone.push(c);
    }
    db.insert_message(
        portcullis::db::Owner::of(&owner_of(&db, &keep)),
        &new_message(&keep, "stay"),
    )
    .unwrap();
    assert_eq!(
        delete(&s, &format!("/api/projects/{}", pid), &key).status,
        204
    );
    for c in &gone {
        assert_error(
            &get(&s, &format!("/api/conversations/{}", c), &key),
            404,
            "not_found",
        );
        assert_error(
            &get(&s, &format!("/api/conversations/{}/messages", c), &key),
            404,
            "not_found",
        );
    }
    let left: i64 = rusqlite::Connection::open(s.dir.join("portcullis.db"))
        .unwrap()
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 1, "only the unrelated conversation's message is left");
    assert_eq!(
        get(&s, &format!("/api/conversations/{}/messages", keep), &key).json()["items"][0]
            ["content"],
        "stay"
    );

    // The delete is audited with request id, key id and client.
    let (_, out, _) = run_cli(&["audit", "--limit", "50"], &[], &s.dir);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = rows
        .iter()
        .find(|r| r["event"] == "project_deleted")
        .expect("audited");
    assert_eq!(row["detail"]["project_id"], pid.as_str());
    assert_eq!(row["detail"]["conversations"], 3);
    assert!(
        row["request_id"].is_string() && row["key_id"].is_string() && row["client"] == "127.0.0.1",
        "{}",
        row
    );
}
