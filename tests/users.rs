//! Users (issue 13): every conversation private to its owner, roles, keys
//! per user, disabling, the upgrade of a database made before users.
//!
//! The matrix: every resource route on member A's resources, called by A
//! (the owner), by member B and by the admin; another user's id must
//! answer exactly like an unknown id, lists must not show others' rows,
//! and deletes cascade only within the owner's data.

mod support;

use serde_json::{json, Value};
use support::fake_upstream::{FakeUpstream, Mode};
use support::{assert_error, first_key, run_cli, Opts, Resp, Server};

const UPSTREAM_KEY: &str = "sk-test-UPSTREAMKEY-0123456789";

fn start(up: &FakeUpstream) -> (Server, String) {
    let s = Server::start(
        Opts::new()
            .env("PORTCULLIS_UPSTREAM_BASE_URL", &up.base_url())
            .env("PORTCULLIS_UPSTREAM_KEY", UPSTREAM_KEY)
            .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "10000")
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "10000"),
    );
    let admin = first_key(&s);
    (s, admin)
}

/// A member and a key of theirs, made through the admin API.
fn member(s: &Server, admin: &str, name: &str) -> (String, String) {
    let u = s.json(
        "POST",
        "/api/admin/users",
        Some(admin),
        &json!({"name": name}),
    );
    assert_eq!(u.status, 201, "{}", u.text());
    let id = u.json()["id"].as_str().unwrap().to_string();
    assert_eq!(u.json()["role"], "member");
    let k = s.json(
        "POST",
        "/api/admin/keys",
        Some(admin),
        &json!({"user_id": id, "name": format!("{} laptop", name)}),
    );
    assert_eq!(k.status, 201, "{}", k.text());
    (id, k.json()["key"].as_str().unwrap().to_string())
}

fn call(s: &Server, key: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
    match body {
        Some(b) => s.json(method, path, Some(key), &b),
        None => s.req(
            method,
            path,
            &[("Authorization", &format!("Bearer {}", key))],
            None,
        ),
    }
}

/// The error body without its request id, to compare two refusals.
fn error_shape(r: &Resp) -> (u16, Value) {
    let mut v = r.json();
    v["error"].as_object_mut().map(|e| e.remove("request_id"));
    (r.status, v)
}

fn ids(r: &Resp) -> Vec<String> {
    r.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_resource_route_is_scoped_to_its_owner() {
    let up = FakeUpstream::start(Mode::Normal);
    let (s, admin) = start(&up);
    let (_a_id, a) = member(&s, &admin, "alice");
    let (_b_id, b) = member(&s, &admin, "bob");

    // A's data: a project, a conversation in it with a system prompt, and
    // a chat turn (two stored messages).
    let pa = call(
        &s,
        &a,
        "POST",
        "/api/projects",
        Some(json!({"name": "alice's"})),
    );
    assert_eq!(pa.status, 201);
    let pa = pa.json()["id"].as_str().unwrap().to_string();
    let ca = call(
        &s,
        &a,
        "POST",
        "/api/conversations",
        Some(json!({"project_id": pa, "system_prompt": "secret plans"})),
    );
    assert_eq!(ca.status, 201);
    let ca = ca.json()["id"].as_str().unwrap().to_string();
    let turn = call(
        &s,
        &a,
        "POST",
        "/api/chat",
        Some(json!({"conversation_id": ca, "message": "hello"})),
    );
    assert_eq!(turn.status, 200, "{}", turn.text());
    // B's own conversation, to try moving into A's project.
    let cb = call(&s, &b, "POST", "/api/conversations", Some(json!({})));
    let cb = cb.json()["id"].as_str().unwrap().to_string();

    let unknown = "0123456789abcdef01234567";
    let project = format!("/api/projects/{}", pa);
    let conversation = format!("/api/conversations/{}", ca);
    let messages = format!("{}/messages", conversation);
    let of_project = format!("/api/conversations?project_id={}", pa);
    // (method, path, body, the owner's status); others get 404.
    let routes: Vec<(&str, String, Option<Value>, u16)> = vec![
        ("GET", project.clone(), None, 200),
        (
            "PATCH",
            project.clone(),
            Some(json!({"name": "renamed"})),
            200,
        ),
        ("GET", conversation.clone(), None, 200),
        (
            "PATCH",
            conversation.clone(),
            Some(json!({"system_prompt": "x"})),
            200,
        ),
        ("GET", messages.clone(), None, 200),
        ("GET", of_project.clone(), None, 200),
        (
            "POST",
            "/api/conversations".into(),
            Some(json!({"project_id": pa})),
            201,
        ),
        (
            "POST",
            "/api/chat".into(),
            Some(json!({"conversation_id": ca, "message": "again"})),
            200,
        ),
        (
            "POST",
            "/api/chat".into(),
            Some(json!({"project_id": pa, "message": "new in project"})),
            200,
        ),
    ];
    for (method, path, body, owner_status) in &routes {
        let mine = call(&s, &a, method, path, body.clone());
        assert_eq!(
            mine.status,
            *owner_status,
            "owner {} {}: {}",
            method,
            path,
            mine.text()
        );
        for (who, key) in [("member", &b), ("admin", &admin)] {
            let r = call(&s, key, method, path, body.clone());
            assert_error(&r, 404, "not_found");
            // Exactly what an unknown id answers.
            let unknown_path = path.replace(&pa, unknown).replace(&ca, unknown);
            let unknown_body = body.as_ref().map(|b| {
                serde_json::from_str(&b.to_string().replace(&pa, unknown).replace(&ca, unknown))
                    .unwrap()
            });
            let u = call(&s, key, method, &unknown_path, unknown_body);
            assert_eq!(
                error_shape(&r),
                error_shape(&u),
                "{} {} {}",
                who,
                method,
                path
            );
        }
    }
    // B cannot move its own conversation into A's project.
    let r = call(
        &s,
        &b,
        "PATCH",
        &format!("/api/conversations/{}", cb),
        Some(json!({"project_id": pa})),
    );
    assert_error(&r, 404, "not_found");

    // Lists hold only the caller's rows.
    let a_projects = ids(&call(&s, &a, "GET", "/api/projects", None));
    assert_eq!(a_projects, vec![pa.clone()]);
    for key in [&b, &admin] {
        assert!(ids(&call(&s, key, "GET", "/api/projects", None)).is_empty());
        let convs = ids(&call(&s, key, "GET", "/api/conversations", None));
        assert!(!convs.contains(&ca), "{:?}", convs);
    }
    assert_eq!(
        ids(&call(&s, &b, "GET", "/api/conversations", None)),
        vec![cb.clone()]
    );
    let a_convs = ids(&call(&s, &a, "GET", "/api/conversations", None));
    assert!(
        a_convs.contains(&ca) && !a_convs.contains(&cb) && a_convs.len() == 3,
        "{:?}",
        a_convs
    );
    let a_msgs = call(&s, &a, "GET", &messages, None).json();
    assert_eq!(a_msgs["items"].as_array().unwrap().len(), 4, "{}", a_msgs);

    // Deletes by others are unknown ids, and remove nothing.
    for key in [&b, &admin] {
        assert_error(
            &call(&s, key, "DELETE", &conversation, None),
            404,
            "not_found",
        );
        assert_error(&call(&s, key, "DELETE", &project, None), 404, "not_found");
    }
    assert_eq!(call(&s, &a, "GET", &conversation, None).status, 200);
    // The owner's delete cascades to the project's conversations and
    // their messages, and to nothing of B's.
    assert_eq!(call(&s, &a, "DELETE", &project, None).status, 204);
    assert_error(&call(&s, &a, "GET", &conversation, None), 404, "not_found");
    assert_error(&call(&s, &a, "GET", &messages, None), 404, "not_found");
    assert_eq!(
        ids(&call(&s, &a, "GET", "/api/conversations", None)),
        Vec::<String>::new()
    );
    assert_eq!(
        call(&s, &b, "GET", &format!("/api/conversations/{}", cb), None).status,
        200
    );
}

#[test]
fn keys_belong_to_users_and_admin_routes_to_admins() {
    let up = FakeUpstream::start(Mode::Normal);
    let (s, admin) = start(&up);
    let (a_id, a) = member(&s, &admin, "alice");
    let (b_id, b) = member(&s, &admin, "bob");

    let me = call(&s, &a, "GET", "/api/me", None);
    assert_eq!(me.status, 200);
    assert_eq!(
        me.json()["user"],
        json!({"id": a_id, "name": "alice", "role": "member"})
    );
    assert_eq!(me.json()["auth"], "key");
    assert_eq!(
        call(&s, &admin, "GET", "/api/me", None).json()["user"]["role"],
        "admin"
    );

    // Members manage their own keys only.
    let made = call(&s, &a, "POST", "/api/keys", Some(json!({"name": "second"})));
    assert_eq!(made.status, 201, "{}", made.text());
    let second = made.json();
    assert!(second["key"].as_str().unwrap().starts_with("pcs_"));
    assert_eq!(second["user_id"], a_id.as_str());
    let a_keys = ids(&call(&s, &a, "GET", "/api/keys", None));
    assert_eq!(a_keys.len(), 2);
    let b_keys = ids(&call(&s, &b, "GET", "/api/keys", None));
    assert_eq!(b_keys.len(), 1);
    assert!(b_keys.iter().all(|k| !a_keys.contains(k)));
    let second_id = second["id"].as_str().unwrap();
    assert_error(
        &call(&s, &b, "DELETE", &format!("/api/keys/{}", second_id), None),
        404,
        "not_found",
    );
    assert_eq!(call(&s, &a, "GET", "/api/me", None).status, 200);
    assert_eq!(
        call(&s, &a, "DELETE", &format!("/api/keys/{}", second_id), None).status,
        204
    );
    assert_error(
        &call(&s, second["key"].as_str().unwrap(), "GET", "/api/me", None),
        401,
        "unauthorized",
    );

    // Admin routes: 403 for a member, whatever the route.
    for (method, path, body) in [
        ("GET", "/api/admin/users".to_string(), None),
        (
            "POST",
            "/api/admin/users".to_string(),
            Some(json!({"name": "eve"})),
        ),
        (
            "PATCH",
            format!("/api/admin/users/{}", b_id),
            Some(json!({"role": "admin"})),
        ),
        ("DELETE", format!("/api/admin/users/{}", b_id), None),
        ("GET", format!("/api/admin/keys?user_id={}", b_id), None),
        (
            "POST",
            "/api/admin/keys".to_string(),
            Some(json!({"user_id": a_id, "name": "x"})),
        ),
    ] {
        assert_error(&call(&s, &a, method, &path, body), 403, "forbidden");
    }
    let users = call(&s, &admin, "GET", "/api/admin/users", None).json();
    let names: Vec<&str> = users["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["admin", "alice", "bob"]);
    // Never a password hash, only whether there is one.
    assert!(!users.to_string().contains("argon2"));
    assert_eq!(users["items"][1]["has_password"], false);
    let taken = call(
        &s,
        &admin,
        "POST",
        "/api/admin/users",
        Some(json!({"name": "alice"})),
    );
    assert_error(&taken, 400, "validation_failed");
    assert_error(
        &call(
            &s,
            &admin,
            "POST",
            "/api/admin/users",
            Some(json!({"name": "no spaces"})),
        ),
        400,
        "validation_failed",
    );

    // Disabling (admin API) refuses the user's keys on the next request;
    // the data stays, and enabling restores access.
    assert_eq!(
        call(
            &s,
            &b,
            "POST",
            "/api/projects",
            Some(json!({"name": "kept"}))
        )
        .status,
        201
    );
    assert_eq!(
        call(
            &s,
            &admin,
            "DELETE",
            &format!("/api/admin/users/{}", b_id),
            None
        )
        .status,
        204
    );
    assert_error(
        &call(&s, &b, "GET", "/api/projects", None),
        403,
        "forbidden",
    );
    let back = call(
        &s,
        &admin,
        "PATCH",
        &format!("/api/admin/users/{}", b_id),
        Some(json!({"disabled": false})),
    );
    assert_eq!(back.status, 200, "{}", back.text());
    assert_eq!(ids(&call(&s, &b, "GET", "/api/projects", None)).len(), 1);

    // Disabling from the CLI, in another process, while the server runs.
    let (code, _, err) = run_cli(&["users", "disable", &a_id], &[], &s.dir);
    assert_eq!(code, 0, "{}", err);
    assert_error(&call(&s, &a, "GET", "/api/me", None), 403, "forbidden");
}

#[test]
fn keys_may_expire_and_carry_a_model_allowlist() {
    let up = FakeUpstream::start(Mode::Normal);
    let (s, admin) = start(&up);
    let (a_id, _) = member(&s, &admin, "alice");
    let limited = s.json(
        "POST",
        "/api/admin/keys",
        Some(&admin),
        &json!({"user_id": a_id, "name": "m1 only", "models": ["m1"], "expires_in_days": 30}),
    );
    assert_eq!(limited.status, 201, "{}", limited.text());
    assert_eq!(limited.json()["models"], json!(["m1"]));
    assert!(limited.json()["expires_at"].is_string());
    let key = limited.json()["key"].as_str().unwrap().to_string();
    let ask = |model: &str| {
        s.json(
            "POST",
            "/v1/chat/completions",
            Some(&key),
            &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        )
    };
    assert_eq!(ask("m1").status, 200);
    assert_error(&ask("m2"), 403, "forbidden");
    let chat = s.json(
        "POST",
        "/api/chat",
        Some(&key),
        &json!({"message": "hi", "model": "m2"}),
    );
    assert_error(&chat, 403, "forbidden");

    // From the CLI: a key that expired (its expiry moved into the past in
    // the database before its first use) answers 401.
    let (code, out, err) = run_cli(
        &[
            "keys",
            "create",
            "--name",
            "short",
            "--user",
            "alice",
            "--expires-in-days",
            "1",
        ],
        &[],
        &s.dir,
    );
    assert_eq!(code, 0, "{}", err);
    let short = out.trim().to_string();
    let db = rusqlite::Connection::open(s.dir.join("portcullis.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.execute(
        "UPDATE api_keys SET expires_at = 1 WHERE name = 'short'",
        [],
    )
    .unwrap();
    assert_error(
        &s.json("GET", "/api/me", Some(&short), &json!({})),
        401,
        "unauthorized",
    );
}

#[test]
fn a_database_from_before_users_is_upgraded_to_one_admin() {
    // A database as the release before users wrote it: schema version 1,
    // a key, a project, a conversation in it and a message.
    let dir = support::TempDir::new("upgrade");
    let path = dir.path().join("portcullis.db");
    let key = format!("pcs_{}", "5a".repeat(24));
    {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        c.execute_batch("PRAGMA journal_mode=WAL").unwrap();
        portcullis::db::schema::migrate_to(&mut c, 1).unwrap();
        c.execute_batch(&format!(
            "INSERT INTO api_keys (id, name, prefix, hash, created_at)
               VALUES ('k1', 'old', 'pcs_5a5a5a5a', '{}', 1);
             INSERT INTO projects (id, name, created_at, updated_at) VALUES ('p1', 'old project', 2, 2);
             INSERT INTO conversations (id, project_id, title, created_at, updated_at)
               VALUES ('c1', 'p1', 'old chat', 3, 3);
             INSERT INTO messages (id, conversation_id, role, content, status, created_at)
               VALUES ('m1', 'c1', 'user', 'kept', 'complete', 4);",
            portcullis::db::keys::hash_key(&key)
        ))
        .unwrap();
    }
    let s = Server::start(Opts::new().data_dir(dir.path()));
    let me = s.get_as("/api/me", &key);
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["user"]["name"], "admin");
    assert_eq!(me.json()["user"]["role"], "admin");
    assert_eq!(ids(&s.get_as("/api/projects", &key)), ["p1"]);
    assert_eq!(
        ids(&s.get_as("/api/conversations?project_id=p1", &key)),
        ["c1"]
    );
    let msgs = s.get_as("/api/conversations/c1/messages", &key).json();
    assert_eq!(msgs["items"][0]["content"], "kept");
    // No key was added (the old one is the admin's), and the CLI agrees.
    let (code, out, _) = run_cli(&["users", "list"], &[], dir.path());
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{}", out);
    let (_, keys, _) = run_cli(&["keys", "list"], &[], dir.path());
    assert_eq!(keys.lines().count(), 1, "{}", keys);
}

#[test]
fn every_state_change_is_audited_with_who_did_it() {
    let up = FakeUpstream::start(Mode::Normal);
    let (s, admin) = start(&up);
    let (a_id, a) = member(&s, &admin, "alice");
    let p = call(&s, &a, "POST", "/api/projects", Some(json!({"name": "p"})));
    let pid = p.json()["id"].as_str().unwrap().to_string();
    let path = format!("/api/projects/{}", pid);
    assert_eq!(
        call(&s, &a, "PATCH", &path, Some(json!({"name": "q"}))).status,
        200
    );
    let c = call(
        &s,
        &a,
        "POST",
        "/api/conversations",
        Some(json!({"project_id": pid})),
    );
    let cid = c.json()["id"].as_str().unwrap().to_string();
    let cpath = format!("/api/conversations/{}", cid);
    assert_eq!(
        call(&s, &a, "PATCH", &cpath, Some(json!({"title": "t"}))).status,
        200
    );
    assert_eq!(call(&s, &a, "DELETE", &path, None).status, 204);
    let (code, out, err) = run_cli(&["audit", "--limit", "100"], &[], &s.dir);
    assert_eq!(code, 0, "{}", err);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let a_key = call(&s, &a, "GET", "/api/keys", None).json()["items"][0]["id"].clone();
    for event in [
        "project_created",
        "project_updated",
        "conversation_created",
        "conversation_updated",
        "project_deleted",
    ] {
        let row = rows
            .iter()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("no {} in {}", event, out));
        assert_eq!(row["user_id"], a_id.as_str(), "{}", row);
        assert_eq!(row["key_id"], a_key, "{}", row);
        assert!(
            row["client"].is_string() && row["request_id"].is_string(),
            "{}",
            row
        );
    }
    // Edits name the fields changed, never their new text.
    let upd = rows
        .iter()
        .find(|r| r["event"] == "conversation_updated")
        .unwrap();
    assert_eq!(upd["detail"]["fields"], json!(["title"]));
    let made = rows.iter().find(|r| r["event"] == "user_created").unwrap();
    assert_eq!(made["detail"]["name"], "alice");
}

#[test]
fn a_users_keys_share_one_rate_limit_budget() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = Server::start(
        Opts::new()
            .env("PORTCULLIS_UPSTREAM_BASE_URL", &up.base_url())
            // The admin's five setup requests fit; alice's two keys share six.
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "6"),
    );
    let admin = first_key(&s);
    let (a_id, a1) = member(&s, &admin, "alice");
    let a2 = s
        .json(
            "POST",
            "/api/admin/keys",
            Some(&admin),
            &json!({"user_id": a_id, "name": "second"}),
        )
        .json()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, b) = member(&s, &admin, "bob");
    // Six requests in all from alice's two keys, then either key is refused.
    for key in [&a1, &a2, &a1, &a2, &a1, &a2] {
        assert_eq!(call(&s, key, "GET", "/api/projects", None).status, 200);
    }
    for key in [&a1, &a2] {
        let r = call(&s, key, "GET", "/api/projects", None);
        assert_error(&r, 429, "rate_limited");
        assert!(r.header("Retry-After").is_some());
    }
    // Another user has their own budget.
    assert_eq!(call(&s, &b, "GET", "/api/projects", None).status, 200);
}
