//! API keys end to end: the first key written at start (mode 0600, path
//! logged, key never), keys created, listed and revoked with the CLI while
//! the server runs (a revoked key is refused on its next request), the 401
//! cases and exempt routes, and the audit rows all of this leaves.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{assert_error, is_time, keyed, run_cli, Opts, Resp, Server};

fn get(s: &Server, path: &str, key: &str) -> Resp {
    s.get_as(path, key)
}

/// The CLI on the server's data dir: (exit code, stdout, stderr).
fn cli(s: &Server, args: &[&str]) -> (i32, String, String) {
    run_cli(args, &[], &s.dir)
}

#[test]
fn keys_created_listed_and_revoked_with_the_cli_take_effect_on_the_running_server() {
    let (s, first) = keyed(Opts::new());
    let (code, out, err) = cli(&s, &["keys", "create", "--name", "ci"]);
    assert_eq!(code, 0, "{}", err);
    let key = out.trim().to_string();
    assert!(key.starts_with("pcs_") && key.len() == 52, "{:?}", key);
    assert!(key[4..].bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(get(&s, "/api/projects", &key).status, 200);

    let (_, text, _) = cli(&s, &["keys", "list"]);
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
    let (code, _, err) = cli(&s, &["keys", "revoke", id]);
    assert_eq!(code, 0, "{}", err);
    // The very next request with the revoked key is refused.
    assert_error(&get(&s, "/api/projects", &key), 401, "unauthorized");
    assert_eq!(
        get(&s, "/api/projects", &first).status,
        200,
        "other keys still work"
    );
    let (_, listed, _) = cli(&s, &["keys", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.contains(id) && !l.contains("\"revoked_at\":null")),
        "{}",
        listed
    );
    assert_eq!(cli(&s, &["keys", "revoke", "no-such-id"]).0, 1);

    let (_, audit, _) = cli(&s, &["audit"]);
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
    let (_, audit, _) = cli(&s, &["audit"]);
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
