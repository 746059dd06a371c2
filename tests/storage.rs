//! Storage through the HTTP API: resources, validation, pagination,
//! cascade delete, API keys (CLI against a running server), 401 cases,
//! concurrency without 500s, busy database and pool exhaustion as 503,
//! readiness, audit, schema version check.

mod support;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{Opts, Resp, Server};

/// A server in api_key mode and the key it generated at first start.
fn keyed(opts: Opts) -> (Server, String) {
    let s = Server::start(opts);
    let key = std::fs::read_to_string(s.dir.join("first_api_key")).expect("first_api_key written");
    (s, key.trim().to_string())
}

fn get(s: &Server, path: &str, key: &str) -> Resp {
    s.req(
        "GET",
        path,
        &[("Authorization", &format!("Bearer {}", key))],
        None,
    )
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

/// Runs the CLI on the server's data dir; a clean PORTCULLIS_* environment.
fn cli(dir: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(support::bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("PORTCULLIS_SERVER_DATA_DIR", dir)
        .current_dir(dir)
        .output()
        .expect("run portcullis")
}

fn is_time(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.')
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.code(), code, "{}", r.text());
    assert!(r.json()["error"]["request_id"].is_string());
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
    // An unknown id, referenced or in the path, is 404 (API.md; issue 11).
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

fn new_message<'a>(conversation_id: &'a str, content: &'a str) -> portcullis::db::NewMessage<'a> {
    portcullis::db::NewMessage {
        conversation_id,
        role: "user",
        content,
        status: "complete",
        model: None,
        usage: None,
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
        db.insert_message(&new_message(&cid, &format!("m{:03}", i)))
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
                db.insert_message(&new_message(&cid, &format!("m{:03}", i)))
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
        db.insert_message(&new_message(&c, "hi")).unwrap();
        gone.push(c);
    }
    db.insert_message(&new_message(&keep, "stay")).unwrap();
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
    let out = cli(&s.dir, &["audit", "--limit", "50"]);
    let rows: Vec<Value> = String::from_utf8(out.stdout)
        .unwrap()
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

#[test]
fn keys_created_listed_and_revoked_with_the_cli_take_effect_on_the_running_server() {
    let (s, first) = keyed(Opts::new());
    let out = cli(&s.dir, &["keys", "create", "--name", "ci"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("pcs_") && key.len() == 52, "{:?}", key);
    assert!(key[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(get(&s, "/api/projects", &key).status, 200);

    let out = cli(&s.dir, &["keys", "list"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        !text.contains(&key[4..]) && !text.contains(&first[4..]),
        "the list never shows a key: {}",
        text
    );
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    let ci = rows.iter().find(|r| r["name"] == "ci").unwrap();
    assert!(key.starts_with(ci["prefix"].as_str().unwrap()));
    assert_eq!(ci["revoked_at"], Value::Null);
    assert!(is_time(&ci["created_at"]));

    let id = ci["id"].as_str().unwrap();
    let out = cli(&s.dir, &["keys", "revoke", id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The very next request with the revoked key is refused.
    assert_error(&get(&s, "/api/projects", &key), 401, "unauthorized");
    assert_eq!(
        get(&s, "/api/projects", &first).status,
        200,
        "other keys still work"
    );
    let listed = String::from_utf8(cli(&s.dir, &["keys", "list"]).stdout).unwrap();
    assert!(
        listed
            .lines()
            .any(|l| l.contains(id) && !l.contains("\"revoked_at\":null")),
        "{}",
        listed
    );
    assert_eq!(
        cli(&s.dir, &["keys", "revoke", "no-such-id"]).status.code(),
        Some(1)
    );

    let audit = String::from_utf8(cli(&s.dir, &["audit"]).stdout).unwrap();
    assert!(
        audit.contains("\"key_created\"") && audit.contains("\"key_revoked\""),
        "{}",
        audit
    );
    assert!(!audit.contains(&key[4..]));
    assert!(
        !s.log_text().contains(&key[4..]) && !s.log_text().contains(&first[4..]),
        "keys never logged"
    );
}

#[test]
fn unauthorized_cases_and_exempt_routes() {
    let (mut s, key) = keyed(Opts::new());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(s.dir.join("first_api_key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let log = s.log_text();
    assert!(
        log.contains("first_api_key") && !log.contains(&key[4..]),
        "path logged, key not"
    );

    let unknown = format!("pcs_{}", "ab".repeat(24));
    let cases: Vec<Vec<(&str, String)>> = vec![
        vec![],
        vec![("Authorization", key.clone())],
        vec![("Authorization", format!("Basic {}", key))],
        vec![("Authorization", "Bearer".to_string())],
        vec![("Authorization", "Bearer sk-123".to_string())],
        vec![("Authorization", format!("Bearer {}x", key))],
        vec![("Authorization", format!("Bearer {}", unknown))],
        vec![
            ("Authorization", format!("Bearer {}", key)),
            ("Authorization", format!("Bearer {}", unknown)),
        ],
    ];
    for headers in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let r = s.req("GET", "/api/projects", &h, None);
        assert_error(&r, 401, "unauthorized");
        assert!(!r.text().contains("pcs_"), "{}", r.text());
    }
    // POST without a key and without Origin: refused too (auth comes first).
    assert_eq!(
        s.json(
            "POST",
            "/api/projects",
            Some(&unknown),
            &json!({"name": "x"})
        )
        .status,
        401
    );
    // Exempt: liveness and readiness need no key.
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(s.get("/health/ready").status, 200);
    assert_eq!(get(&s, "/api/projects", &key).status, 200);

    // Failures are audited in aggregate; a graceful stop flushes the counts.
    assert!(s
        .terminate(Duration::from_secs(10))
        .is_some_and(|st| st.success()));
    let audit = String::from_utf8(cli(&s.dir, &["audit"]).stdout).unwrap();
    let rows: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let total: u64 = rows
        .iter()
        .filter(|r| r["event"] == "auth_failed")
        .map(|r| r["detail"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total as usize, cases.len() + 1, "{}", audit);
    assert!(rows.iter().any(|r| r["event"] == "auth_failed"
        && r["detail"]["reason"] == "missing"
        && r["client"] == "127.0.0.1"));
    assert!(!audit.contains(&key[4..]) && !audit.contains(&unknown[4..]));
    assert!(!s.log_text().contains(&key[4..]));
}

#[test]
fn concurrent_writers_and_readers_never_get_a_500() {
    for opts in [
        Opts::new().no_auth(),
        // A tiny pool and short waits: refusals are 503, never 500.
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_DATABASE_POOL_SIZE", "1")
            .env("PORTCULLIS_DATABASE_CHECKOUT_TIMEOUT_MS", "5")
            .env("PORTCULLIS_DATABASE_BUSY_TIMEOUT_MS", "5"),
    ] {
        let s = Arc::new(Server::start(opts));
        let pid = s
            .json("POST", "/api/projects", None, &json!({"name": "base"}))
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let counts: Arc<[AtomicUsize; 6]> = Arc::new(Default::default());
        let threads: Vec<_> = (0..12)
            .map(|t| {
                let (s, pid, counts) = (s.clone(), pid.clone(), counts.clone());
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let r = match (t + i) % 5 {
                            0 => s.json(
                                "POST",
                                "/api/projects",
                                None,
                                &json!({"name": format!("t{}-{}", t, i)}),
                            ),
                            1 => s.json(
                                "POST",
                                "/api/conversations",
                                None,
                                &json!({"project_id": pid}),
                            ),
                            2 => s.get("/api/conversations?limit=20"),
                            3 => s.json(
                                "PATCH",
                                &format!("/api/projects/{}", pid),
                                None,
                                &json!({"description": format!("{}", i)}),
                            ),
                            _ => s.get(&format!("/api/conversations?project_id={}", pid)),
                        };
                        let slot = match r.status {
                            200 | 201 | 204 => 0,
                            503 => {
                                assert_eq!(r.code(), "server_busy");
                                assert_eq!(r.header("Retry-After"), Some("1"));
                                1
                            }
                            500 => 5,
                            _ => 4,
                        };
                        assert_ne!(slot, 5, "500: {}", r.text());
                        assert_ne!(slot, 4, "unexpected {}: {}", r.status, r.text());
                        counts[slot].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let ok = counts[0].load(Ordering::Relaxed);
        let busy = counts[1].load(Ordering::Relaxed);
        assert_eq!(ok + busy, 12 * 25);
        assert!(ok > 0);
        eprintln!("concurrency: {} ok, {} server_busy", ok, busy);
        assert!(!s.log_text().contains("\"status\":500"));
    }
}

#[test]
fn a_database_locked_by_another_process_gives_503_not_500() {
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_DATABASE_BUSY_TIMEOUT_MS", "100"),
    );
    let other = rusqlite::Connection::open(s.dir.join("portcullis.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let r = s.json("POST", "/api/projects", None, &json!({"name": "x"}));
    assert_error(&r, 503, "server_busy");
    assert_eq!(r.header("Retry-After"), Some("1"));
    // Readers are not blocked by a writer in WAL mode.
    assert_eq!(s.get("/api/projects").status, 200);
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(
        s.json("POST", "/api/projects", None, &json!({"name": "x"}))
            .status,
        201
    );
}

#[test]
fn an_exhausted_pool_answers_503_quickly_instead_of_hanging() {
    // One connection; a writer blocked on an outside lock holds it for the
    // busy timeout (10 s) while the next request may wait only 50 ms for it.
    let s = Arc::new(Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_DATABASE_POOL_SIZE", "1")
            .env("PORTCULLIS_DATABASE_CHECKOUT_TIMEOUT_MS", "50")
            .env("PORTCULLIS_DATABASE_BUSY_TIMEOUT_MS", "10000"),
    ));
    let other = rusqlite::Connection::open(s.dir.join("portcullis.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let s2 = s.clone();
    let blocked =
        std::thread::spawn(move || s2.json("POST", "/api/projects", None, &json!({"name": "x"})));
    // Wait until the writer holds the pool's only connection.
    let mut busy = None;
    assert!(support::wait_until(Duration::from_secs(5), || {
        let t = Instant::now();
        let r = s.get("/api/projects");
        if r.status == 503 {
            busy = Some((r, t.elapsed()));
            true
        } else {
            false
        }
    }));
    let (r, took) = busy.unwrap();
    assert_error(&r, 503, "server_busy");
    assert!(took < Duration::from_millis(1000), "answered in {:?}", took);
    // Readiness says so too, without hanging.
    let ready = s.get("/health/ready");
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert_eq!(
        ready.json()["checks"]["database"]["error"],
        "pool_exhausted"
    );
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(blocked.join().unwrap().status, 201);
    assert_eq!(s.get("/health/ready").status, 200);
}

#[test]
fn readiness_reports_database_and_upstream() {
    // An upstream that is down is reported but does not fail readiness.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = Server::start(Opts::new().env(
        "PORTCULLIS_UPSTREAM_BASE_URL",
        &format!("http://{}/v1", closed),
    ));
    let r = s.get("/health/ready");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["checks"]["database"]["status"], "ok");
    assert!(v["checks"]["database"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["checks"]["upstream"]["status"], "fail", "{}", v);
    assert_eq!(v["checks"]["upstream"]["error"], "unreachable");

    // A listening upstream is reported ok.
    let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let s = Server::start(Opts::new().env(
        "PORTCULLIS_UPSTREAM_BASE_URL",
        &format!("http://{}/v1", live.local_addr().unwrap()),
    ));
    let v = s.get("/health/ready").json();
    assert_eq!(v["checks"]["upstream"]["status"], "ok", "{}", v);
}

#[test]
fn a_database_from_a_newer_version_is_refused_at_start() {
    let dir = support::TempDir::new("newer");
    let s = Server::start(Opts::new().data_dir(dir.path()));
    drop(s);
    let c = rusqlite::Connection::open(dir.path().join("portcullis.db")).unwrap();
    c.pragma_update(None, "user_version", 999).unwrap();
    drop(c);
    let err = Server::try_start(Opts::new().data_dir(dir.path()))
        .err()
        .expect("refused");
    assert!(err.contains("newer than this portcullis knows"), "{}", err);
}
