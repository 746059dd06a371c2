//! `POST /api/chat` against a fake upstream (a real HTTP server in this
//! process, tests/support/fake_upstream.rs) and the real binary: storage of
//! both messages, history, validation, streams, failures.
//! Contract: docs/contract.md "Chat", "Errors" (502/504/503).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_upstream::{FakeUpstream, Mode};
use support::relay::*;
use support::sse::{Frame, SseClient};
use support::Server;

// ---------------------------------------------------------------- /api/chat

fn stored_messages(s: &Server, conversation_id: &str) -> Vec<Value> {
    let r = s.get(&format!("/api/conversations/{}/messages", conversation_id));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["items"].as_array().unwrap().clone()
}

/// Waits until the assistant message (the last one) has `want_status` and
/// content that satisfies `content_ok` (a streamed answer's row starts as
/// `partial` with no content and is updated when the stream ends).
fn final_assistant_with(
    s: &Server,
    conversation_id: &str,
    want_status: &str,
    content_ok: impl Fn(&str) -> bool,
) -> Value {
    let mut last = Value::Null;
    let ok = support::wait_until(Duration::from_secs(5), || {
        last = stored_messages(s, conversation_id)
            .last()
            .cloned()
            .unwrap_or(Value::Null);
        last["status"] == want_status && content_ok(last["content"].as_str().unwrap_or(""))
    });
    assert!(
        ok,
        "assistant message never became {}: {}",
        want_status, last
    );
    last
}

fn final_assistant(s: &Server, conversation_id: &str, want_status: &str) -> Value {
    final_assistant_with(s, conversation_id, want_status, |_| true)
}

fn chat_stream(s: &Server, body: Value) -> SseClient {
    let mut body = body;
    body["stream"] = json!(true);
    SseClient::open(s.addr, "/api/chat", &body)
}

#[test]
fn chat_answers_stores_both_messages_and_creates_the_conversation() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = start(&up);
    let r = post(
        &s,
        "/api/chat",
        &json!({"message": "hello there", "temperature": 0.5, "max_tokens": 64}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let cid = v["conversation_id"].as_str().unwrap().to_string();
    assert!(v["user_message_id"].is_string());
    assert_eq!(v["message"]["role"], "assistant");
    assert_eq!(v["message"]["content"], up.answer_text());
    assert_eq!(v["message"]["status"], "complete");
    assert_eq!(v["message"]["model"], "gpt-oss:20b");
    assert_eq!(v["message"]["usage"]["total_tokens"], 12);

    assert_eq!(
        up.requests()[0].header("authorization"),
        Some(&*format!("Bearer {}", UPSTREAM_KEY))
    );
    let sent = up.requests()[0].json();
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "hello there"}])
    );
    assert_eq!(
        (sent["temperature"].clone(), sent["max_tokens"].clone()),
        (json!(0.5), json!(64))
    );
    assert_eq!(sent["stream"], false);

    let stored = stored_messages(&s, &cid);
    assert_eq!(stored.len(), 2);
    assert_eq!(
        (stored[0]["role"].as_str(), stored[0]["content"].as_str()),
        (Some("user"), Some("hello there"))
    );
    assert_eq!(stored[1]["id"], v["message"]["id"]);
    let conv = s.get(&format!("/api/conversations/{}", cid)).json();
    assert_eq!(conv["title"], "hello there");
    assert_no_leak(&s, &[&r.text()]);
}

#[test]
fn chat_sends_the_system_prompt_and_bounded_history() {
    let up = FakeUpstream::start(Mode::Normal);
    up.set_tokens(&["ok"]);
    let s = Server::start(
        opts_for(&up.base_url()).env("PORTCULLIS_UPSTREAM_HISTORY_MAX_MESSAGES", "4"),
    );
    let c = post(
        &s,
        "/api/conversations",
        &json!({"system_prompt": "Be brief.", "model": "conv-model"}),
    );
    assert_eq!(c.status, 201, "{}", c.text());
    let cid = c.json()["id"].as_str().unwrap().to_string();
    for turn in ["one", "two", "three"] {
        let r = post(
            &s,
            "/api/chat",
            &json!({"conversation_id": cid, "message": turn}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let last = up.requests().last().unwrap().json();
    assert_eq!(
        last["model"], "conv-model",
        "the conversation's model is the default"
    );
    assert_eq!(
        last["messages"],
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "three"},
        ]),
        "system prompt plus the newest 4 messages"
    );

    let s2 =
        Server::start(opts_for(&up.base_url()).env("PORTCULLIS_UPSTREAM_HISTORY_MAX_CHARS", "100"));
    let first = post(&s2, "/api/chat", &json!({"message": "a".repeat(60)}));
    let cid2 = first.json()["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post(
        &s2,
        "/api/chat",
        &json!({"conversation_id": cid2, "message": "b".repeat(60)}),
    );
    assert_eq!(r.status, 200);
    let sent = up.requests().last().unwrap().json();
    assert_eq!(
        sent["messages"],
        json!([{"role": "assistant", "content": "ok"}, {"role": "user", "content": "b".repeat(60)}]),
        "the oldest message no longer fits in 100 characters"
    );
}

#[test]
fn chat_validates_its_body() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = start(&up);
    let cases = [
        (json!({}), "message"),
        (json!({"message": ""}), "message"),
        (json!({"message": "   "}), "message"),
        (json!({"message": "x".repeat(32_001)}), "message"),
        (json!({"message": "hi", "extra": 1}), "extra"),
        (json!({"message": "hi", "stream": "yes"}), "stream"),
        (json!({"message": "hi", "temperature": 3}), "temperature"),
        (json!({"message": "hi", "max_tokens": 0}), "max_tokens"),
        (
            json!({"message": "hi", "max_tokens": 1_000_001}),
            "max_tokens",
        ),
        // issue 11 (schemathesis): a number as a string is not a number.
        (json!({"message": "hi", "max_tokens": "64"}), "max_tokens"),
        (json!({"message": "hi", "max_tokens": 64.5}), "max_tokens"),
        (
            json!({"message": "hi", "max_tokens": 1_000_000.5}),
            "max_tokens",
        ),
        (json!({"message": "hi", "model": ""}), "model"),
        (
            json!({"message": "hi", "conversation_id": ""}),
            "conversation_id",
        ),
        (
            json!({"message": "hi", "conversation_id": "c".repeat(129)}),
            "conversation_id",
        ),
    ];
    for (body, field) in cases {
        let r = post(&s, "/api/chat", &body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "validation_failed"),
            "{}",
            r.text()
        );
        assert_eq!(r.json()["error"]["field"], field, "{}", r.text());
    }
    let r = post(
        &s,
        "/api/chat",
        &json!({"conversation_id": "nope", "message": "hi"}),
    );
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
    // A project that is not the conversation's: no such conversation there.
    let c = post(&s, "/api/conversations", &json!({}));
    assert_eq!(c.status, 201, "{}", c.text());
    let p = post(&s, "/api/projects", &json!({"name": "p"}));
    let r = post(
        &s,
        "/api/chat",
        &json!({"conversation_id": c.json()["id"], "project_id": p.json()["id"], "message": "hi"}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (404, "not_found"),
        "{}",
        r.text()
    );
    assert!(up.requests().is_empty(), "nothing reached the upstream");
}

#[test]
fn chat_stream_sends_start_deltas_done_and_stores_the_answer() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = start(&up);
    let mut c = chat_stream(&s, json!({"message": "stream it"}));
    assert_eq!(c.status, 200);
    assert_eq!(c.header("content-type"), Some("text/event-stream"));
    assert_eq!(c.header("cache-control"), Some("no-store"));
    assert_eq!(c.header("x-accel-buffering"), Some("no"));
    let frames: Vec<Frame> = c
        .all(Duration::from_secs(10))
        .into_iter()
        .filter(|f| !f.comment)
        .collect();
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_deref().unwrap()).collect();
    let mut want = vec!["start"];
    want.extend(std::iter::repeat_n("delta", 5));
    want.push("done");
    assert_eq!(names, want);
    let start = data_json(&frames[0]);
    let (cid, mid) = (
        start["conversation_id"].as_str().unwrap(),
        start["message_id"].as_str().unwrap(),
    );
    assert!(start["user_message_id"].is_string());
    let text: String = frames[1..6]
        .iter()
        .map(|f| data_json(f)["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, up.answer_text());
    let done = data_json(&frames[6]);
    assert_eq!(done["message_id"], mid);
    assert_eq!(done["finish_reason"], "stop");
    assert_eq!(done["usage"]["total_tokens"], 12);
    let sent = up.requests()[0].json();
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"]["include_usage"], true);

    let m = final_assistant(&s, cid, "complete");
    assert_eq!(m["id"], mid);
    assert_eq!(m["content"], up.answer_text());
    assert_eq!(m["usage"]["total_tokens"], 12);
}

// A streamed body is close-delimited: a client (curl, the built-in page)
// sees the end of the answer only when the connection closes. A small
// request body is read ahead by tiny_http, whose connection thread then
// waited for a next request until `read_timeout_s` (found by issue 7's
// browser test: Stop stayed lit for seconds after `done`).
#[test]
fn chat_stream_closes_the_connection_right_after_done() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = Server::start(opts_for(&up.base_url()).env("PORTCULLIS_SERVER_READ_TIMEOUT_S", "30"));
    for path in ["/api/chat", "/v1/chat/completions"] {
        let body = match path {
            "/api/chat" => json!({"message": "short", "stream": true}),
            _ => json!({"messages": [{"role": "user", "content": "short"}], "stream": true}),
        };
        let mut c = SseClient::open(s.addr, path, &body);
        assert_eq!(c.status, 200, "{path}");
        let frames = c.all(Duration::from_secs(25));
        let last = frames.iter().rev().find(|f| !f.comment).expect("frames");
        assert!(
            last.event.as_deref() == Some("done") || last.data == "[DONE]",
            "{path}: {last:?}"
        );
        let closed_after = last.at.elapsed();
        assert!(
            closed_after < Duration::from_secs(2),
            "{path}: the connection stayed open {closed_after:?} after the last event"
        );
    }
}

#[test]
fn chat_failures_answer_the_contract_codes_and_store_an_error_message() {
    let secret_body = format!(r#"{{"error":{{"message":"bad key {}"}}}}"#, UPSTREAM_SECRET);
    let cases: Vec<(Mode, u16, &str)> = vec![
        (
            Mode::Error {
                status: 500,
                body: secret_body,
            },
            502,
            "upstream_error",
        ),
        (Mode::Garbage, 502, "upstream_error"),
        (Mode::Hang, 504, "upstream_timeout"),
    ];
    for (mode, status, code) in cases {
        let up = FakeUpstream::start(mode.clone());
        let s = Server::start(opts_for(&up.base_url()).env("PORTCULLIS_UPSTREAM_TIMEOUT_S", "1"));
        let r = post(&s, "/api/chat", &json!({"message": "hi"}));
        assert_eq!(
            (r.status, r.code().as_str()),
            (status, code),
            "{:?}: {}",
            mode,
            r.text()
        );
        // Streaming: refused or timed out before the head -> the same JSON
        // error; garbage after a good head -> start, then an error event.
        let mut c = chat_stream(&s, json!({"message": "hi"}));
        let streamed = if c.status == 200 {
            let frames: Vec<Frame> = c
                .all(Duration::from_secs(10))
                .into_iter()
                .filter(|f| !f.comment)
                .collect();
            let names: Vec<&str> = frames.iter().map(|f| f.event.as_deref().unwrap()).collect();
            assert_eq!(names, ["start", "error"], "{:?}", mode);
            assert!(
                matches!(mode, Mode::Garbage),
                "{:?} should fail before the stream",
                mode
            );
            let e = data_json(&frames[1]);
            assert_eq!(e["code"], code);
            let cid = data_json(&frames[0])["conversation_id"]
                .as_str()
                .unwrap()
                .to_string();
            final_assistant(&s, &cid, "error");
            e.to_string()
        } else {
            assert_eq!(c.status, status, "{:?}", mode);
            let v = c.body_json();
            assert_eq!(v["error"]["code"], code);
            v.to_string()
        };
        assert_no_leak(&s, &[&r.text(), &streamed]);
        let convs = s.get("/api/conversations").json();
        for c in convs["items"].as_array().unwrap() {
            let stored = stored_messages(&s, c["id"].as_str().unwrap());
            assert_eq!(stored.len(), 2, "{:?}: {:?}", mode, stored);
            assert_eq!(
                (stored[0]["role"].as_str(), stored[0]["status"].as_str()),
                (Some("user"), Some("complete"))
            );
            assert_eq!(
                (stored[1]["role"].as_str(), stored[1]["status"].as_str()),
                (Some("assistant"), Some("error"))
            );
            assert_eq!(stored[1]["content"], "");
        }
    }
    let s = Server::start(opts_for(&refused_base_url()));
    let r = post(&s, "/api/chat", &json!({"message": "hi"}));
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        r.text()
    );
    let stored = stored_messages(
        &s,
        s.get("/api/conversations").json()["items"][0]["id"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(stored[1]["status"], "error");
}

#[test]
fn chat_reset_mid_stream_sends_an_error_event_and_stores_partial() {
    let up = FakeUpstream::start(Mode::ResetMidStream { tokens_before: 2 });
    let s = start(&up);
    let mut c = chat_stream(&s, json!({"message": "hi"}));
    let frames: Vec<Frame> = c
        .all(Duration::from_secs(10))
        .into_iter()
        .filter(|f| !f.comment)
        .collect();
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_deref().unwrap()).collect();
    assert_eq!(names, ["start", "delta", "delta", "error"]);
    let err = data_json(&frames[3]);
    assert_eq!(err["code"], "upstream_error");
    assert!(err["message"].is_string());
    let cid = data_json(&frames[0])["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let m = final_assistant(&s, &cid, "partial");
    assert_eq!(m["content"], "Hello from");
    // The failure after the 200 is still counted by kind.
    let metrics = s.get("/metrics").text();
    assert!(
        metrics.contains("portcullis_upstream_errors_total{kind=\"upstream_error\"} 1"),
        "{}",
        metrics
    );
}

#[test]
fn chat_stream_timeout_after_start_is_an_error_event() {
    // The head arrives, then no token within stream_idle_timeout_s.
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_secs(30),
    });
    let s = Server::start(
        opts_for(&up.base_url()).env("PORTCULLIS_UPSTREAM_STREAM_IDLE_TIMEOUT_S", "1"),
    );
    let mut c = chat_stream(&s, json!({"message": "hi"}));
    let frames: Vec<Frame> = c
        .all(Duration::from_secs(10))
        .into_iter()
        .filter(|f| !f.comment)
        .collect();
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_deref().unwrap()).collect();
    assert_eq!(names, ["start", "error"]);
    assert_eq!(data_json(&frames[1])["code"], "upstream_timeout");
    let cid = data_json(&frames[0])["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    final_assistant(&s, &cid, "error");
}

#[test]
fn chat_client_disconnect_stops_the_upstream_and_stores_partial() {
    // Mid-answer.
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_millis(200),
    });
    up.set_tokens(&["word "; 100]);
    let s = start(&up);
    let mut c = chat_stream(&s, json!({"message": "hi"}));
    let start = data_json(&c.next(Duration::from_secs(5)).unwrap());
    let d1 = c.next(Duration::from_secs(5)).unwrap();
    assert_eq!(d1.event.as_deref(), Some("delta"));
    drop(c);
    let took = up.wait_closed(Duration::from_secs(1));
    assert!(
        took.is_some(),
        "upstream not closed within a second of the client leaving"
    );
    eprintln!(
        "figure: /api/chat mid-answer disconnect -> upstream closed in {:?}",
        took.unwrap()
    );
    let m = final_assistant_with(
        &s,
        start["conversation_id"].as_str().unwrap(),
        "partial",
        |c| !c.is_empty(),
    );
    assert!(m["content"].as_str().unwrap().starts_with("word "), "{}", m);

    // Before the first token.
    up.set_mode(Mode::Slow {
        delay: Duration::from_secs(60),
    });
    let mut c = chat_stream(&s, json!({"message": "hi again"}));
    let start = data_json(&c.next(Duration::from_secs(5)).unwrap());
    drop(c);
    let took = up.wait_closed(Duration::from_secs(1));
    assert!(
        took.is_some(),
        "upstream not closed within a second of the client leaving"
    );
    eprintln!(
        "figure: /api/chat before-first-token disconnect -> upstream closed in {:?}",
        took.unwrap()
    );
    let ended = |s: &Server| s.log_text().matches("\"outcome\":\"client_gone\"").count();
    assert!(
        support::wait_until(Duration::from_secs(5), || ended(&s) == 2),
        "both streams logged client_gone"
    );
    let m = final_assistant(&s, start["conversation_id"].as_str().unwrap(), "partial");
    assert_eq!(m["content"], "");
}

#[test]
fn chat_stream_slots_refuse_with_503_and_leave_no_trace() {
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_secs(30),
    });
    let s = Server::start(
        opts_for(&up.base_url())
            .env("PORTCULLIS_SERVER_MAX_CONCURRENT_STREAMS", "2")
            .env("PORTCULLIS_SERVER_WORKERS", "2"),
    );
    let open: Vec<SseClient> = (0..2)
        .map(|_| chat_stream(&s, json!({"message": "hi"})))
        .collect();
    assert!(open.iter().all(|c| c.status == 200));
    let t = Instant::now();
    let h = s.get("/health");
    let health = t.elapsed();
    let t = Instant::now();
    let convs = s.get("/api/conversations");
    let list = t.elapsed();
    assert_eq!((h.status, convs.status), (200, 200));
    eprintln!(
        "figure: with 2 slow chat streams open, /health {:?}, /api/conversations {:?}",
        health, list
    );
    assert!(health < Duration::from_secs(1) && list < Duration::from_secs(1));
    let mut extra = chat_stream(&s, json!({"message": "one too many"}));
    assert_eq!(extra.status, 503);
    assert_eq!(extra.header("retry-after"), Some("1"));
    assert_eq!(extra.body_json()["error"]["code"], "server_busy");
    assert_eq!(convs.json()["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        s.get("/api/conversations").json()["items"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "the refused turn stored nothing"
    );
}

#[test]
fn a_stream_outlives_the_idle_read_timeout_of_its_connection() {
    // The request body is small (read ahead by the connection thread), the
    // answer takes ~3 s and read_timeout_s is 1: the connection's idle
    // timeout must not be mistaken for the client leaving.
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_millis(600),
    });
    let s = Server::start(opts_for(&up.base_url()).env("PORTCULLIS_SERVER_READ_TIMEOUT_S", "1"));
    let mut c = chat_stream(&s, json!({"message": "take your time", "stream": true}));
    let frames: Vec<Frame> = c
        .all(Duration::from_secs(30))
        .into_iter()
        .filter(|f| !f.comment)
        .collect();
    let names: Vec<&str> = frames.iter().map(|f| f.event.as_deref().unwrap()).collect();
    assert_eq!(names.first(), Some(&"start"));
    assert_eq!(names.last(), Some(&"done"), "{:?}", names);
    let cid = data_json(&frames[0])["conversation_id"]
        .as_str()
        .unwrap()
        .to_string();
    final_assistant(&s, &cid, "complete");
}
