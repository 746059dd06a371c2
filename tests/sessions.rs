//! Browser sessions (issue 13): sign-in with name and password (Argon2id),
//! the session cookie, CSRF tokens bound to the session, sign-out that
//! works at once, expiry, one answer for a wrong name and a wrong
//! password, and sign-in attempts limited per name and per address.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::{assert_error, first_key, Opts, Resp, Server};

const ORIGIN: &str = "http://localhost:3000";

fn start(extra: &[(&str, &str)]) -> (Server, String) {
    let mut opts = Opts::new();
    for (k, v) in extra {
        opts = opts.env(k, v);
    }
    let s = Server::start(opts);
    let admin = first_key(&s);
    (s, admin)
}

fn make_user(s: &Server, admin: &str, name: &str, password: &str) -> String {
    let r = s.json(
        "POST",
        "/api/admin/users",
        Some(admin),
        &json!({"name": name, "password": password}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["has_password"], true);
    r.json()["id"].as_str().unwrap().to_string()
}

/// A browser request: Origin, and the cookie and CSRF token when given.
fn browser(
    s: &Server,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Resp {
    let cookie = cookie.map(|c| format!("portcullis_session={}", c));
    let mut h: Vec<(&str, &str)> = vec![("Origin", ORIGIN), ("Content-Type", "application/json")];
    if let Some(c) = &cookie {
        h.push(("Cookie", c));
    }
    if let Some(t) = csrf {
        h.push(("X-CSRF-Token", t));
    }
    let text = body.map(|b| b.to_string());
    s.req(method, path, &h, text.as_deref())
}

fn sign_in(s: &Server, name: &str, password: &str) -> Resp {
    browser(
        s,
        "POST",
        "/api/session",
        None,
        None,
        Some(json!({"name": name, "password": password})),
    )
}

/// The session token from a sign-in's `Set-Cookie`.
fn token_of(r: &Resp) -> String {
    let c = r.header("Set-Cookie").expect("Set-Cookie");
    c.split(';')
        .next()
        .unwrap()
        .strip_prefix("portcullis_session=")
        .unwrap()
        .to_string()
}

fn csrf_token(s: &Server, cookie: Option<&str>) -> String {
    browser(s, "GET", "/api/csrf-token", cookie, None, None).json()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

fn without_request_id(r: &Resp) -> Value {
    let mut v = r.json();
    v["error"].as_object_mut().map(|e| e.remove("request_id"));
    v
}

#[test]
fn sign_in_sets_a_strict_cookie_and_unsafe_requests_need_a_token_of_that_session() {
    let (s, admin) = start(&[]);
    let id = make_user(&s, &admin, "alice", "correct horse battery");
    let r = sign_in(&s, "alice", "correct horse battery");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["user"],
        json!({"id": id, "name": "alice", "role": "member"})
    );
    let set = r.header("Set-Cookie").unwrap();
    for part in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(part), "{}", set);
    }
    assert!(!set.contains("Secure"), "{}", set);
    let token = token_of(&r);
    assert!(token.starts_with("pcss_") && token.len() == 5 + 64);

    let me = browser(&s, "GET", "/api/me", Some(&token), None, None);
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["auth"], "session");
    assert_eq!(me.json()["user"]["name"], "alice");

    // Unsafe requests: a token bound to this session, and only that.
    let create = |csrf: Option<&str>| {
        browser(
            &s,
            "POST",
            "/api/projects",
            Some(&token),
            csrf,
            Some(json!({"name": "p"})),
        )
    };
    assert_error(&create(None), 403, "csrf_token_invalid");
    let unbound = csrf_token(&s, None);
    assert_error(&create(Some(&unbound)), 403, "csrf_token_invalid");
    let other = token_of(&sign_in(&s, "alice", "correct horse battery"));
    let of_other = csrf_token(&s, Some(&other));
    assert_error(&create(Some(&of_other)), 403, "csrf_token_invalid");
    let bound = csrf_token(&s, Some(&token));
    assert_eq!(create(Some(&bound)).status, 201);
    // The session sees its user's data (and nobody else's).
    let list = browser(&s, "GET", "/api/projects", Some(&token), None, None);
    assert_eq!(list.json()["items"].as_array().unwrap().len(), 1);
    assert!(s.get_as("/api/projects", &admin).json()["items"]
        .as_array()
        .unwrap()
        .is_empty());

    // Sign-out ends this session at once, not the other one.
    let out = browser(
        &s,
        "DELETE",
        "/api/session",
        Some(&token),
        Some(&bound),
        None,
    );
    assert_eq!(out.status, 204);
    assert!(out.header("Set-Cookie").unwrap().contains("Max-Age=0"));
    assert_error(
        &browser(&s, "GET", "/api/me", Some(&token), None, None),
        401,
        "unauthorized",
    );
    assert_eq!(
        browser(&s, "GET", "/api/me", Some(&other), None, None).status,
        200
    );

    // Disabling the user ends their sessions.
    let d = s.json(
        "DELETE",
        &format!("/api/admin/users/{}", id),
        Some(&admin),
        &json!({}),
    );
    assert_eq!(d.status, 204);
    assert_error(
        &browser(&s, "GET", "/api/me", Some(&other), None, None),
        401,
        "unauthorized",
    );
    // No password or hash in the log.
    let log = s.log_text();
    assert!(
        !log.contains("correct horse") && !log.contains("argon2"),
        "{}",
        log
    );
}

#[test]
fn wrong_name_and_wrong_password_answer_alike_and_attempts_are_limited() {
    let (s, admin) = start(&[("PORTCULLIS_AUTH_LOGIN_MAX_FAILURES", "3")]);
    make_user(&s, &admin, "bob", "a long passphrase");
    let wrong_pw = sign_in(&s, "bob", "not the passphrase");
    let wrong_name = sign_in(&s, "nobody", "a long passphrase");
    assert_error(&wrong_pw, 401, "unauthorized");
    assert_eq!(
        without_request_id(&wrong_pw),
        without_request_id(&wrong_name)
    );
    assert!(wrong_pw.header("Set-Cookie").is_none());
    // A third failure for bob's name (from this address, which has failed
    // twice): the name and the address are now both at the limit.
    assert_error(&sign_in(&s, "bob", "still wrong"), 401, "unauthorized");
    let refused = sign_in(&s, "bob", "a long passphrase");
    assert_error(&refused, 429, "rate_limited");
    let wait: u64 = refused.header("Retry-After").unwrap().parse().unwrap();
    assert!(wait > 800 && wait <= 900, "{}", wait);
    // Keys still work from this address (its failed-key budget is apart).
    assert_eq!(s.get_as("/api/me", &admin).status, 200);
}

#[test]
fn expired_or_idle_sessions_are_refused_and_cookies_can_be_secure() {
    let (s, admin) = start(&[("PORTCULLIS_SECURITY_SECURE_COOKIES", "true")]);
    make_user(&s, &admin, "carol", "passphrase one");
    let r = sign_in(&s, "carol", "passphrase one");
    assert!(r.header("Set-Cookie").unwrap().contains("; Secure"));
    let a = token_of(&r);
    let b = token_of(&sign_in(&s, "carol", "passphrase one"));
    let db = rusqlite::Connection::open(s.dir.join("portcullis.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let hash = |t: &str| portcullis::db::keys::hash_key(t);
    // One past its lifetime, the other idle past `session_idle_s`.
    db.execute(
        "UPDATE sessions SET expires_at = 1 WHERE hash = ?1",
        [hash(&a)],
    )
    .unwrap();
    db.execute(
        "UPDATE sessions SET last_used_at = 1 WHERE hash = ?1",
        [hash(&b)],
    )
    .unwrap();
    for t in [&a, &b] {
        assert_error(
            &browser(&s, "GET", "/api/me", Some(t), None, None),
            401,
            "unauthorized",
        );
    }
}

#[test]
fn the_cli_sets_a_password_read_from_standard_input() {
    let (s, admin) = start(&[]);
    let r = s.json(
        "POST",
        "/api/admin/users",
        Some(&admin),
        &json!({"name": "dave"}),
    );
    assert_eq!(r.status, 201);
    assert_error(&sign_in(&s, "dave", "anything at all"), 401, "unauthorized");
    let mut child = Command::new(support::bin())
        .args(["users", "passwd", "dave"])
        .env("PORTCULLIS_SERVER_DATA_DIR", &s.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"from standard input\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sign_in(&s, "dave", "from standard input").status, 200);
}
