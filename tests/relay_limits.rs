//! Issue 10, the relay's share: typed JSON with memory bounded by bytes,
//! a per-client stream cap, a whole-lifetime cap on streams, and clients
//! that stop reading dropped with bounded memory. Real binary, real sockets,
//! fake upstream (tests/support/fake_upstream.rs).
//! Contract: docs/contract.md "Errors" (400, 503 `server_busy`), "Chat"
//! (`event: error`, message status), settings `max_streams_per_client`,
//! `max_stream_s`.

mod support;

use std::io::Read;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_upstream::{FakeUpstream, Mode};
use support::sse::SseClient;
use support::{hwm_kib, wait_until, Opts, Resp, Server};

const MIB: u64 = 1024 * 1024;

fn opts_for(up: &FakeUpstream) -> Opts {
    Opts::new().env("PORTCULLIS_UPSTREAM_BASE_URL", &up.base_url())
}

fn stream_body() -> Value {
    json!({"messages": [{"role": "user", "content": "hi"}], "stream": true})
}

fn first_key(s: &Server) -> String {
    let file = s.dir.join("first_api_key");
    assert!(wait_until(Duration::from_secs(5), || file.exists()));
    std::fs::read_to_string(&file).unwrap().trim().to_string()
}

/// A key for the user `user`, made with the CLI.
fn create_key_for(s: &Server, name: &str, user: &str) -> String {
    let mut cmd = std::process::Command::new(support::bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    let out = cmd
        .args(["keys", "create", "--name", name, "--user", user])
        .env("PORTCULLIS_SERVER_DATA_DIR", &s.dir)
        .current_dir(&s.dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn assert_error(r: &Resp, status: u16, code: &str, field: Option<&str>) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.code(), code, "{}", r.text());
    if let Some(f) = field {
        assert_eq!(r.json()["error"]["field"], f, "{}", r.text());
    }
}

fn post_raw(s: &Server, path: &str, body: &[u8]) -> Resp {
    support::request(
        s.addr,
        "POST",
        path,
        &[
            ("Content-Type", "application/json"),
            ("Origin", "http://localhost:3000"),
        ],
        Some(body),
    )
}

// ------------------------------------------------------- stream caps

#[test]
fn ninth_stream_of_one_user_is_refused_and_another_user_is_served() {
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_secs(30),
    });
    let s = Server::start(opts_for(&up));
    // `max_streams_per_client` counts per user: b belongs to another one.
    let member = s.json(
        "POST",
        "/api/admin/users",
        Some(&first_key(&s)),
        &json!({"name": "other"}),
    );
    assert_eq!(member.status, 201, "{}", member.text());
    let (a, b) = (first_key(&s), create_key_for(&s, "second", "other"));
    // Both routes count against the same cap.
    let open: Vec<SseClient> = (0..8)
        .map(|i| {
            let (path, body) = match i % 2 {
                0 => ("/v1/chat/completions", stream_body()),
                _ => ("/api/chat", json!({"message": "hi", "stream": true})),
            };
            SseClient::open_as(s.addr, path, Some(&a), &body)
        })
        .collect();
    assert!(
        open.iter().all(|c| c.status == 200),
        "{:?}",
        open.iter().map(|c| c.status).collect::<Vec<_>>()
    );
    for path in ["/v1/chat/completions", "/api/chat"] {
        let body = match path {
            "/api/chat" => json!({"message": "one too many", "stream": true}),
            _ => stream_body(),
        };
        let mut ninth = SseClient::open_as(s.addr, path, Some(&a), &body);
        assert_eq!(ninth.status, 503, "{}", path);
        assert_eq!(ninth.header("retry-after"), Some("1"));
        assert_eq!(ninth.body_json()["error"]["code"], "server_busy");
    }
    let other = SseClient::open_as(s.addr, "/v1/chat/completions", Some(&b), &stream_body());
    assert_eq!(other.status, 200, "another user is still served");
    // A closed stream frees its slot.
    drop(open);
    assert!(wait_until(Duration::from_secs(5), || {
        SseClient::open_as(s.addr, "/v1/chat/completions", Some(&a), &stream_body()).status == 200
    }));
}

#[test]
fn without_a_key_streams_are_counted_per_client_address() {
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_secs(30),
    });
    let s = Server::start(
        opts_for(&up)
            .no_auth()
            .env("PORTCULLIS_SERVER_MAX_STREAMS_PER_CLIENT", "2"),
    );
    let open: Vec<SseClient> = (0..2)
        .map(|_| SseClient::open_as(s.addr, "/v1/chat/completions", None, &stream_body()))
        .collect();
    assert!(open.iter().all(|c| c.status == 200));
    let mut third = SseClient::open_as(s.addr, "/v1/chat/completions", None, &stream_body());
    assert_eq!(third.status, 503);
    assert_eq!(third.body_json()["error"]["code"], "server_busy");
}

// ------------------------------------------------------- max_stream_s

#[test]
fn a_stream_kept_alive_by_comments_is_cut_at_max_stream_s() {
    let up = FakeUpstream::start(Mode::KeepAlive {
        every: Duration::from_millis(200),
    });
    let s = Server::start(
        opts_for(&up)
            .no_auth()
            .env("PORTCULLIS_UPSTREAM_MAX_STREAM_S", "2")
            .env("PORTCULLIS_UPSTREAM_STREAM_IDLE_TIMEOUT_S", "1"),
    );
    let t = Instant::now();
    let mut c = SseClient::open_as(
        s.addr,
        "/api/chat",
        None,
        &json!({"message": "hi", "stream": true}),
    );
    assert_eq!(c.status, 200);
    let events = c.events(Duration::from_secs(10));
    let took = t.elapsed();
    let names: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(names.first(), Some(&"start"), "{:?}", events);
    assert_eq!(names.last(), Some(&"error"), "{:?}", events);
    assert!(!names.contains(&"done"));
    let err: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(err["code"], "upstream_timeout");
    // Comments every 200 ms kept it past the 1 s idle timeout; the
    // lifetime cap ended it.
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{:?}",
        took
    );
    assert!(
        up.wait_closed(Duration::from_secs(3)).is_some(),
        "the upstream request was aborted"
    );
    let start: Value = serde_json::from_str(&events[0].1).unwrap();
    let conv = start["conversation_id"].as_str().unwrap();
    // The row starts as an empty `partial`; it ends with what arrived.
    let mut last = Value::Null;
    let stored = wait_until(Duration::from_secs(3), || {
        let r = s.get(&format!("/api/conversations/{}/messages", conv));
        last = r.json()["items"]
            .as_array()
            .and_then(|m| m.last().cloned())
            .unwrap_or_default();
        last["role"] == "assistant" && last["content"] == up.answer_text()
    });
    assert!(stored, "{}", last);
    assert_eq!(last["status"], "partial", "{}", last);

    // The /v1 stream ends with an in-stream error and no [DONE].
    let mut c = SseClient::open_as(s.addr, "/v1/chat/completions", None, &stream_body());
    assert_eq!(c.status, 200);
    let events = c.events(Duration::from_secs(10));
    let last: Value = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout", "{:?}", events);
    assert!(events.iter().all(|(_, d)| d != "[DONE]"));
}

// ------------------------------------------------ a client stops reading

#[test]
fn a_client_that_stops_reading_is_dropped_within_write_timeout() {
    let up = FakeUpstream::start(Mode::Flood { chunk_bytes: 4096 });
    let s = Server::start(
        opts_for(&up)
            .no_auth()
            .env("PORTCULLIS_SERVER_WRITE_TIMEOUT_S", "1")
            // Not the bound: without back-pressure the flood would run on.
            .env("PORTCULLIS_UPSTREAM_MAX_RESPONSE_BYTES", "4294967296"),
    );
    let pid = s.pid();
    assert_eq!(s.get("/health").status, 200);
    let before = hwm_kib(pid);
    let t = Instant::now();
    // Reads the head, then nothing more.
    let stalled: Vec<SseClient> = (0..4)
        .map(|_| SseClient::open_as(s.addr, "/v1/chat/completions", None, &stream_body()))
        .collect();
    assert!(stalled.iter().all(|c| c.status == 200));
    // Each flood stops when its client's buffers are full; the write then
    // times out after 1 s and the upstream request is aborted.
    let all_closed = wait_until(Duration::from_secs(8), || {
        let requests = up.requests();
        requests.len() == 4 && requests.iter().all(|r| up.is_closed(r.conn))
    });
    let took = t.elapsed();
    assert!(all_closed, "upstream requests still open after {:?}", took);
    let sent = up.streamed_bytes() as u64;
    let grew = hwm_kib(pid).saturating_sub(before) * 1024;
    eprintln!(
        "figure: 4 stalled readers dropped after {:?}; upstream wrote {} KiB in all; server peak RSS grew {} KiB",
        took,
        sent / 1024,
        grew / 1024
    );
    assert!(took < Duration::from_secs(5), "{:?}", took);
    assert!(
        sent < 64 * MIB,
        "back-pressure: the upstream wrote {} bytes",
        sent
    );
    assert!(grew < 16 * MIB, "peak RSS grew {} bytes", grew);
    // The clients see their connections end.
    for mut c in stalled {
        c.r.get_ref()
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut sink = Vec::new();
        assert!(c.r.read_to_end(&mut sink).is_ok(), "closed, not hanging");
    }
    assert!(wait_until(Duration::from_secs(3), || {
        s.log_text().matches("\"client_gone\"").count() >= 4
    }));
}

// ---------------------------------------------------------- typed JSON

#[test]
fn typed_bodies_keep_the_contract_errors() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = Server::start(opts_for(&up).no_auth());
    let deep = format!(
        "{{\"name\":\"x\",\"description\":{}{}}}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    let cases: Vec<(&str, String, &str, Option<&str>)> = vec![
        (
            "/api/projects",
            r#"{"name":"x","pad":[0,0]}"#.into(),
            "validation_failed",
            Some("pad"),
        ),
        (
            "/api/projects",
            r#"{"name":5}"#.into(),
            "validation_failed",
            Some("name"),
        ),
        (
            "/api/projects",
            r#"{"description":"d"}"#.into(),
            "validation_failed",
            Some("name"),
        ),
        (
            "/api/projects",
            format!(r#"{{"name":"{}"}}"#, "é".repeat(201)),
            "validation_failed",
            Some("name"),
        ),
        ("/api/projects", deep.clone(), "invalid_json", None),
        ("/api/projects", "[1,2]".into(), "invalid_json", None),
        (
            "/api/projects",
            r#"{"name":"x""#.into(),
            "invalid_json",
            None,
        ),
        (
            "/api/projects",
            r#"{"pad":[1,}"#.into(),
            "invalid_json",
            None,
        ),
        (
            "/api/conversations",
            r#"{"title":[]}"#.into(),
            "validation_failed",
            Some("title"),
        ),
        (
            "/api/chat",
            r#"{"message":"hi","temperature":"hot"}"#.into(),
            "validation_failed",
            Some("temperature"),
        ),
        (
            "/api/chat",
            r#"{"message":"hi","extra":{}}"#.into(),
            "validation_failed",
            Some("extra"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":{}}"#.into(),
            "validation_failed",
            Some("messages"),
        ),
        (
            "/v1/chat/completions",
            r#"{"messages":[{"role":"user","content":1}]}"#.into(),
            "validation_failed",
            Some("messages[0].content"),
        ),
        (
            "/v1/chat/completions",
            format!(
                r#"{{"messages":[{{"role":"user","content":"x"}}],"tools":{}{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            "invalid_json",
            None,
        ),
        (
            "/v1/chat/completions",
            "\"just a string\"".into(),
            "invalid_json",
            None,
        ),
    ];
    for (path, body, code, field) in &cases {
        let r = post_raw(&s, path, body.as_bytes());
        assert_error(&r, 400, code, *field);
    }
    assert!(
        up.requests().is_empty(),
        "nothing refused reached the upstream"
    );
    let ok = post_raw(
        &s,
        "/api/projects",
        format!(r#"{{"name":"{}"}}"#, "é".repeat(200)).as_bytes(),
    );
    assert_eq!(
        ok.status,
        201,
        "200 characters (400 bytes) fit: {}",
        ok.text()
    );
}

/// A 10 MiB body of tiny values, refused for its unknown field.
fn padded_body(bytes: usize) -> Vec<u8> {
    let mut b = br#"{"name":"x","pad":[0"#.to_vec();
    while b.len() + 4 < bytes {
        b.extend_from_slice(b",0");
    }
    b.extend_from_slice(b"]}");
    b
}

/// A fresh server (VmHWM is a high-water mark, and freed memory may stay
/// resident: each figure needs its own process) in front of a fake that
/// answers 7.5 MiB of tiny values.
fn tiny_values_server() -> (FakeUpstream, Server) {
    let up = FakeUpstream::start(Mode::TinyValues { bytes: 7_864_320 });
    let s = Server::start(
        opts_for(&up)
            .no_auth()
            .env("PORTCULLIS_UPSTREAM_MAX_RESPONSE_BYTES", "16777216"),
    );
    (up, s)
}

#[test]
fn a_10_mib_body_of_tiny_values_costs_less_than_three_times_its_size() {
    let (_up, s) = tiny_values_server();
    let pid = s.pid();
    assert_eq!(s.get("/health").status, 200);
    let body = padded_body(10 * MIB as usize - 64);
    let before = hwm_kib(pid) * 1024;
    let r = post_raw(&s, "/api/projects", &body);
    assert_error(&r, 400, "validation_failed", Some("pad"));
    let grew = (hwm_kib(pid) * 1024).saturating_sub(before);
    eprintln!(
        "figure: one {} byte body of tiny values: peak RSS +{} KiB ({:.2}x)",
        body.len(),
        grew / 1024,
        grew as f64 / body.len() as f64
    );
    assert!(grew < 3 * body.len() as u64, "peak RSS grew {} bytes", grew);
}

#[test]
fn a_7_5_mib_upstream_answer_of_tiny_values_costs_less_than_three_times_its_size() {
    let (up, s) = tiny_values_server();
    let pid = s.pid();
    assert_eq!(s.get("/health").status, 200);
    // A non-streaming answer of 7.5 MiB of tiny values, relayed.
    let before = hwm_kib(pid) * 1024;
    let r = post_raw(
        &s,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}]})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert!(
        r.body == support::fake_upstream::tiny_values_answer(&up.answer_text(), 7_864_320),
        "relayed byte for byte"
    );
    let grew = (hwm_kib(pid) * 1024).saturating_sub(before);
    eprintln!(
        "figure: one 7.5 MiB upstream answer of tiny values: peak RSS +{} KiB ({:.2}x)",
        grew / 1024,
        grew as f64 / 7_864_320.0
    );
    assert!(grew < 3 * 7_864_320, "peak RSS grew {} bytes", grew);

    // /api/chat reads only what it stores.
    let r = post_raw(&s, "/api/chat", br#"{"message":"hi"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["message"]["content"], up.answer_text());
}
