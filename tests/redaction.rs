//! Secrets redacted by value and key-shaped paths kept out of the log
//! (issue 10, item 6), against the real binary: an upstream key without any
//! key-like prefix, echoed back by the upstream in an error body, must reach
//! neither the log nor a debug-mode `detail`; a key pasted into a URL path
//! must not reach the access line.

mod support;

use serde_json::json;
use std::time::Duration;
use support::fake_upstream::{FakeUpstream, Mode};
use support::{wait_until, Opts, Server};

/// No `sk-`, no `pcs_`, nothing a pattern would catch (the issue's canary).
const CANARY_KEY: &str = "llama-canary-7f3a9b";

#[test]
fn upstream_key_of_any_shape_echoed_in_an_error_is_redacted_everywhere() {
    let up = FakeUpstream::start(Mode::Error {
        status: 503,
        body: format!(
            r#"{{"error":{{"message":"key {} is over quota"}}}}"#,
            CANARY_KEY
        ),
    });
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_UPSTREAM_BASE_URL", &up.base_url())
            .env("PORTCULLIS_UPSTREAM_KEY", CANARY_KEY)
            .env("PORTCULLIS_SERVER_DEBUG", "true"),
    );
    let r = s.json(
        "POST",
        "/v1/chat/completions",
        None,
        &json!({"messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(r.status, 502, "{}", r.text());
    // The upstream did get the key: the test would prove nothing otherwise.
    assert!(up
        .requests()
        .iter()
        .any(|q| q.header("authorization") == Some(&format!("Bearer {}", CANARY_KEY))));
    let detail = r.json()["error"]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        detail.contains("over quota") && detail.contains("[redacted]"),
        "the detail is kept, the key is not: {}",
        detail
    );
    assert!(!r.text().contains(CANARY_KEY), "{}", r.text());
    let log = s.log_text();
    assert!(log.contains("over quota"), "the failure is logged: {}", log);
    assert!(!log.contains(CANARY_KEY), "key in the log: {}", log);
    assert!(!log.contains("canary-7f3a"), "part of the key in the log");
}

#[test]
fn key_shaped_path_segments_never_reach_the_access_line() {
    let s = Server::start(Opts::new().no_auth());
    let key = format!("pcs_{}", "ab".repeat(24));
    let r = s.get(&format!("/api/projects/{}?cursor=x", key));
    assert_eq!(r.status, 404, "{}", r.text());
    let r = s.get("/api/projects/0123456789abcdef01234567");
    assert_eq!(r.status, 404, "{}", r.text());
    // The access line is written after the response: wait for both.
    let paths = || -> Vec<String> {
        s.log_json()
            .iter()
            .filter(|l| l["msg"] == "request")
            .filter_map(|l| l["path"].as_str().map(str::to_string))
            .collect()
    };
    assert!(wait_until(Duration::from_secs(10), || paths().len() >= 2));
    let paths = paths();
    let paths: Vec<&str> = paths.iter().map(String::as_str).collect();
    assert!(
        paths.contains(&"/api/projects/[redacted]?cursor"),
        "{:?}",
        paths
    );
    assert!(
        paths.contains(&"/api/projects/0123456789abcdef01234567"),
        "our own ids stay readable: {:?}",
        paths
    );
    assert!(!s.log_text().contains(&key));
}
