//! Chat and the OpenAI relay against a fake upstream (a real HTTP server in
//! this process, tests/support/fake_upstream.rs) and the real binary.
//! Contract: docs/contract.md "Chat", "Errors" (502/504/503), `/v1/*`.

mod support;

use std::io::Write;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_upstream::{FakeUpstream, Mode};
use support::sse::{Frame, SseClient};
use support::{connect, read_response, request, Opts, Resp, Server};

const UPSTREAM_KEY: &str = "sk-test-UPSTREAMKEY-0123456789";
const UPSTREAM_SECRET: &str = "sk-UPSTREAMSECRET";

fn opts_for(base_url: &str) -> Opts {
    Opts::new()
        .no_auth()
        .env("PORTCULLIS_UPSTREAM_BASE_URL", base_url)
        .env("PORTCULLIS_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "10000")
        .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "10000")
}

fn start(up: &FakeUpstream) -> Server {
    Server::start(opts_for(&up.base_url()))
}

/// A base URL where nothing listens (a port we bound and released).
fn refused_base_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{}/v1", addr)
}

fn user_says(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

fn post(s: &Server, path: &str, body: &Value) -> Resp {
    s.json("POST", path, None, body)
}

/// The server log and a client body must never hold upstream credentials.
fn assert_no_leak(s: &Server, bodies: &[&str]) {
    let _every_line_is_json = s.log_json();
    let log = s.log_text();
    for needle in [UPSTREAM_KEY, UPSTREAM_SECRET] {
        assert!(!log.contains(needle), "{} in the server log", needle);
        for b in bodies {
            assert!(!b.contains(needle), "{} in a client body: {}", needle, b);
        }
    }
}

fn data_json(f: &Frame) -> Value {
    serde_json::from_str(&f.data).unwrap_or_else(|e| panic!("{:?}: {}", f, e))
}

// ---------------------------------------------------------------- /v1

#[test]
fn v1_models_relays_the_upstream_list_and_falls_back_to_the_configured_model() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = start(&up);
    let r = s.get("/v1/models");
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["fake-model", "other-model"]);
    assert_eq!(v["data"][0]["object"], "model");
    assert_eq!(
        up.requests()[0].header("authorization"),
        Some(&*format!("Bearer {}", UPSTREAM_KEY))
    );

    let down = Server::start(
        opts_for(&refused_base_url()).env("PORTCULLIS_UPSTREAM_MODEL", "configured-model"),
    );
    let r = down.get("/v1/models");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["id"], "configured-model");
    assert_no_leak(&s, &[&r.text()]);
}

#[test]
fn v1_non_streaming_relay_sends_the_key_as_bearer_and_reuses_the_connection() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = start(&up);
    let mut bodies = Vec::new();
    for _ in 0..3 {
        let r = post(&s, "/v1/chat/completions", &user_says("hi"));
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["choices"][0]["message"]["content"], up.answer_text());
        bodies.push(r.text());
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 3);
    for q in &reqs {
        assert_eq!(q.path, "/v1/chat/completions");
        assert_eq!(
            q.header("authorization"),
            Some(&*format!("Bearer {}", UPSTREAM_KEY))
        );
        let body = q.json();
        assert_eq!(body["model"], "gpt-oss:20b", "default model from settings");
        assert_eq!(body["stream"], false);
        assert_eq!(body["messages"][0]["content"], "hi");
    }
    assert_eq!(
        up.connections(),
        1,
        "keep-alive: one upstream connection for three calls"
    );
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    assert_no_leak(&s, &refs);
}

#[test]
fn v1_streaming_relays_chunks_in_openai_framing_and_ends_with_done() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = start(&up);
    let mut body = user_says("stream please");
    body["stream"] = json!(true);
    body["model"] = json!("picked-model");
    body["unknown_field"] = json!(1);
    let mut c = SseClient::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(c.status, 200);
    assert_eq!(c.header("content-type"), Some("text/event-stream"));
    assert_eq!(c.header("cache-control"), Some("no-store"));
    assert_eq!(c.header("x-accel-buffering"), Some("no"));
    assert!(c.header("x-request-id").is_some());
    let frames = c.all(Duration::from_secs(10));
    let last = frames.last().expect("frames");
    assert_eq!(last.data, "[DONE]");
    assert!(
        frames.iter().all(|f| f.event.is_none()),
        "OpenAI framing has no event names"
    );
    let text: String = frames[..frames.len() - 1]
        .iter()
        .filter(|f| !f.comment)
        .filter_map(|f| {
            data_json(f)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    assert_eq!(text, up.answer_text());
    let sent = up.requests()[0].json();
    assert_eq!(sent["model"], "picked-model");
    assert_eq!(sent["stream"], true);
    assert!(
        sent.get("unknown_field").is_none(),
        "unknown fields are not relayed"
    );
    // The reader drains the body after [DONE] before the client sees the
    // end, so the connection is back in the pool for the next stream.
    let mut again = SseClient::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(
        again.all(Duration::from_secs(10)).last().unwrap().data,
        "[DONE]"
    );
    assert_eq!(
        up.connections(),
        1,
        "a completed stream's connection is reused"
    );
}

#[test]
fn v1_rejects_malformed_requests_with_the_contract_error() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = start(&up);
    let user = json!([{"role": "user", "content": "hi"}]);
    let too_many: Vec<Value> = (0..10_001).map(|_| user[0].clone()).collect();
    let cases = [
        (json!({"messages": "nope"}), "messages"),
        (json!({"messages": []}), "messages"),
        (json!({"messages": too_many}), "messages"),
        (
            json!({"messages": [{"role": "boss", "content": "x"}]}),
            "messages[0].role",
        ),
        (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        // issue 11 (schemathesis): an empty model is refused, as documented.
        (json!({"messages": user, "model": ""}), "model"),
        (json!({"messages": user, "model": "m".repeat(201)}), "model"),
    ];
    for (body, field) in cases {
        let r = post(&s, "/v1/chat/completions", &body);
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "validation_failed"),
            "{}",
            field
        );
        assert_eq!(r.json()["error"]["param"], field, "{}", r.text());
    }
    assert!(up.requests().is_empty());
}

// ------------------------------------------------- upstream failure mapping

#[test]
fn refused_upstream_is_502_upstream_unavailable() {
    let s = Server::start(opts_for(&refused_base_url()));
    let r = post(&s, "/v1/chat/completions", &user_says("hi"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        r.text()
    );
    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let mut c = SseClient::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(
        c.status, 502,
        "refused before the stream began: a plain JSON error"
    );
    assert_eq!(c.body_json()["error"]["code"], "upstream_unavailable");
}

#[test]
fn hanging_upstream_is_504_upstream_timeout() {
    let up = FakeUpstream::start(Mode::Hang);
    let s = Server::start(opts_for(&up.base_url()).env("PORTCULLIS_UPSTREAM_TIMEOUT_S", "1"));
    let t = Instant::now();
    let r = post(&s, "/v1/chat/completions", &user_says("hi"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (504, "upstream_timeout"),
        "{}",
        r.text()
    );
    eprintln!(
        "figure: non-streaming 504 after {:?} (timeout_s = 1)",
        t.elapsed()
    );
    assert!(
        up.wait_closed(Duration::from_secs(2)).is_some(),
        "the timed-out request was closed"
    );

    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let mut c = SseClient::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(
        c.status, 504,
        "timeout_s shorter than the head grace: a plain JSON 504"
    );
    assert_eq!(c.body_json()["error"]["code"], "upstream_timeout");
}

#[test]
fn upstream_error_status_is_502_and_its_secrets_never_leak() {
    let secret_body = format!(
        r#"{{"error":{{"message":"Incorrect API key provided: {}. Internal host 10.1.2.3","type":"invalid_request_error"}}}}"#,
        UPSTREAM_SECRET
    );
    let up = FakeUpstream::start(Mode::Error {
        status: 401,
        body: secret_body,
    });
    let s = start(&up);
    let r = post(&s, "/v1/chat/completions", &user_says("hi"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "upstream_error"),
        "{}",
        r.text()
    );
    assert!(
        !r.text().contains("10.1.2.3") && !r.text().contains("Incorrect API key"),
        "{}",
        r.text()
    );
    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let mut c = SseClient::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(c.status, 502);
    let streamed = c.body_json().to_string();
    assert!(streamed.contains("upstream_error"));
    let log = s.log_text();
    assert!(
        log.contains("upstream status 401"),
        "the detail is logged (redacted): {}",
        log
    );
    assert_no_leak(&s, &[&r.text(), &streamed]);
}

#[test]
fn debug_mode_shows_a_redacted_detail_only() {
    let up = FakeUpstream::start(Mode::Error {
        status: 503,
        body: format!("overloaded; key {} rejected", UPSTREAM_SECRET),
    });
    let s = Server::start(opts_for(&up.base_url()).env("PORTCULLIS_SERVER_DEBUG", "true"));
    let r = post(&s, "/v1/chat/completions", &user_says("hi"));
    assert_eq!((r.status, r.code().as_str()), (502, "upstream_error"));
    let detail = r.json()["error"]["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("upstream status 503") && detail.contains("[redacted]"),
        "{}",
        detail
    );
    assert_no_leak(&s, &[&r.text()]);
}

#[test]
fn garbage_and_oversized_answers_are_502_upstream_error() {
    let up = FakeUpstream::start(Mode::Garbage);
    let s = Server::start(
        opts_for(&up.base_url()).env("PORTCULLIS_UPSTREAM_MAX_RESPONSE_BYTES", "65536"),
    );
    let r = post(&s, "/v1/chat/completions", &user_says("hi"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "upstream_error"),
        "{}",
        r.text()
    );

    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let mut c = SseClient::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(
        c.status, 200,
        "the head was fine; the garbage came in the stream"
    );
    let frames = c.all(Duration::from_secs(10));
    let last = data_json(frames.last().unwrap());
    assert_eq!(last["error"]["code"], "upstream_error");
    assert!(frames.iter().all(|f| f.data != "[DONE]"));

    up.set_mode(Mode::Huge { bytes: 200_000 });
    let r = post(&s, "/v1/chat/completions", &user_says("hi"));
    assert_eq!(
        (r.status, r.code().as_str()),
        (502, "upstream_error"),
        "{}",
        r.text()
    );
}

#[test]
fn reset_mid_stream_ends_with_an_error_event_and_no_done() {
    let up = FakeUpstream::start(Mode::ResetMidStream { tokens_before: 2 });
    let s = start(&up);
    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let mut c = SseClient::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(c.status, 200);
    let frames = c.all(Duration::from_secs(10));
    let chunks = frames
        .iter()
        .filter(|f| !f.comment && !f.data.contains("\"error\""))
        .count();
    assert_eq!(chunks, 2, "{:?}", frames);
    let err = &data_json(frames.last().unwrap())["error"];
    assert_eq!(
        (&err["code"], &err["type"], &err["param"]),
        (
            &json!("upstream_error"),
            &json!("server_error"),
            &Value::Null
        )
    );
    assert!(err["request_id"].is_string());
    assert!(frames.iter().all(|f| f.data != "[DONE]"));
}

// ------------------------------------------- pings, disconnects, slots

#[test]
fn pings_are_sent_while_the_upstream_is_silent() {
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_millis(2600),
    });
    up.set_tokens(&["late"]);
    let s = Server::start(opts_for(&up.base_url()).env("PORTCULLIS_UPSTREAM_PING_INTERVAL_S", "1"));
    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let mut c = SseClient::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(c.status, 200);
    let frames = c.all(Duration::from_secs(10));
    let first_data = frames.iter().position(|f| !f.comment).unwrap();
    assert!(
        first_data >= 2,
        "two pings during 2.6 s of silence: {:?}",
        frames
    );
    assert!(frames[..first_data].iter().all(|f| f.data == ": ping"));
    assert_eq!(frames.last().unwrap().data, "[DONE]");
}

#[test]
fn client_disconnect_before_the_first_token_stops_the_upstream_at_once() {
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_secs(60),
    });
    let s = start(&up);
    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let c = SseClient::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(c.status, 200);
    assert!(up.wait_requests(1, Duration::from_secs(5)));
    drop(c);
    let took = up.wait_closed(Duration::from_secs(1));
    assert!(
        took.is_some(),
        "the upstream connection was not closed within a second"
    );
    eprintln!(
        "figure: upstream closed {:?} after the client left (before first token)",
        took.unwrap()
    );
    assert!(support::wait_until(Duration::from_secs(2), || s
        .log_text()
        .contains("client_gone")));
}

#[test]
fn client_disconnect_mid_answer_stops_the_upstream_at_once() {
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_millis(300),
    });
    up.set_tokens(&["a"; 200]);
    let s = start(&up);
    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let mut c = SseClient::open(s.addr, "/v1/chat/completions", &body);
    let first = c.next(Duration::from_secs(5)).unwrap();
    assert!(first.data.contains("chat.completion.chunk"), "{:?}", first);
    drop(c);
    let took = up.wait_closed(Duration::from_secs(1));
    assert!(
        took.is_some(),
        "the upstream connection was not closed within a second"
    );
    eprintln!(
        "figure: upstream closed {:?} after the client left (mid-answer)",
        took.unwrap()
    );
    assert!(
        up.token_times().len() < 10,
        "the upstream stopped streaming"
    );
}

#[test]
fn stream_slots_bound_streams_and_the_rest_of_the_server_stays_responsive() {
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_secs(30),
    });
    let s = Server::start(
        opts_for(&up.base_url())
            .env("PORTCULLIS_SERVER_MAX_CONCURRENT_STREAMS", "3")
            .env("PORTCULLIS_SERVER_WORKERS", "2"),
    );
    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let streams: Vec<SseClient> = (0..3)
        .map(|_| SseClient::open(s.addr, "/v1/chat/completions", &body))
        .collect();
    assert!(streams.iter().all(|c| c.status == 200));

    let t = Instant::now();
    let h = s.get("/health");
    let health_took = t.elapsed();
    assert_eq!(h.status, 200);
    let t = Instant::now();
    let m = s.get("/v1/models");
    let models_took = t.elapsed();
    assert_eq!(m.status, 200);
    eprintln!(
        "figure: with 3 slow streams open, /health {:?}, /v1/models {:?}",
        health_took, models_took
    );
    assert!(health_took < Duration::from_secs(1) && models_took < Duration::from_secs(2));

    let mut extra = SseClient::open(s.addr, "/v1/chat/completions", &body);
    assert_eq!(extra.status, 503);
    assert_eq!(extra.header("retry-after"), Some("1"));
    assert_eq!(extra.body_json()["error"]["code"], "server_busy");

    drop(streams);
    assert!(support::wait_until(Duration::from_secs(3), || {
        SseClient::open(s.addr, "/v1/chat/completions", &body).status == 200
    }));
}

#[test]
fn sse_event_latency_figure() {
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_millis(300),
    });
    up.set_tokens(&["one", " two", " three", " four", " five"]);
    let s = start(&up);
    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let mut c = SseClient::open(s.addr, "/v1/chat/completions", &body);
    let frames = c.all(Duration::from_secs(10));
    let received: Vec<Instant> = frames
        .iter()
        .filter(|f| f.data.contains("\"content\":"))
        .map(|f| f.at)
        .collect();
    let sent = up.token_times();
    assert_eq!(received.len(), sent.len());
    let mut lat: Vec<Duration> = received
        .iter()
        .zip(&sent)
        .map(|(r, s)| r.duration_since(*s))
        .collect();
    lat.sort();
    eprintln!(
        "figure: upstream token -> client SSE event latency, median {:?}, max {:?}",
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
    assert!(
        lat[lat.len() - 1] < Duration::from_millis(250),
        "each event arrives before the next token: {:?}",
        lat
    );
}

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

#[test]
fn non_streaming_relays_wait_on_relay_threads_not_workers() {
    // One worker, an upstream that never answers: three pending relays
    // must not keep /health or resource requests waiting.
    let up = FakeUpstream::start(Mode::Hang);
    let s = Server::start(
        opts_for(&up.base_url())
            .env("PORTCULLIS_SERVER_WORKERS", "1")
            .env("PORTCULLIS_UPSTREAM_TIMEOUT_S", "20"),
    );
    let addr = s.addr;
    let pending: Vec<_> = (0..3)
        .map(|_| {
            std::thread::spawn(move || {
                request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[
                        ("Origin", "http://localhost:3000"),
                        ("Content-Type", "application/json"),
                    ],
                    Some(user_says("hello").to_string().as_bytes()),
                )
            })
        })
        .collect();
    assert!(
        up.wait_requests(3, Duration::from_secs(10)),
        "all three reached the upstream"
    );
    let t = Instant::now();
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(s.get("/api/projects").status, 200);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "waited {:?}",
        t.elapsed()
    );
    drop(s); // the pending clients see their connections end
    for p in pending {
        let _ = p.join();
    }
}

#[test]
fn deferred_replies_keep_the_connection_alive() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = start(&up);
    let mut c = connect(s.addr);
    let body = user_says("hi").to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    );
    let mut reader = std::io::BufReader::new(c.try_clone().unwrap());
    for _ in 0..3 {
        c.write_all(req.as_bytes()).unwrap();
        let r = read_response(&mut reader).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.json()["choices"].is_array());
        assert!(
            r.header("X-Request-Id").is_some() && r.header("Content-Security-Policy").is_some()
        );
        assert!(r.header("Date").is_some());
    }
    c.write_all(b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    assert_eq!(read_response(&mut reader).unwrap().status, 200);
}

#[test]
fn a_burst_of_stream_starts_never_waits_on_workers() {
    // Two workers, twenty streams starting at once against an upstream
    // that answers slowly: waiting for the upstream happens on the stream
    // threads, so every stream is accepted (none gets 503) and completes.
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_millis(50),
    });
    let s = Server::start(
        opts_for(&up.base_url())
            .env("PORTCULLIS_SERVER_WORKERS", "2")
            // All twenty come from one address: lift the per-client cap.
            .env("PORTCULLIS_SERVER_MAX_STREAMS_PER_CLIENT", "20"),
    );
    let mut body = user_says("hi");
    body["stream"] = json!(true);
    let addr = s.addr;
    let clients: Vec<_> = (0..20)
        .map(|_| {
            let body = body.clone();
            std::thread::spawn(move || {
                let mut c = SseClient::open(addr, "/v1/chat/completions", &body);
                let status = c.status;
                let frames = c.all(Duration::from_secs(30));
                (status, frames.iter().any(|f| f.data == "[DONE]"))
            })
        })
        .collect();
    for c in clients {
        let (status, done) = c.join().unwrap();
        assert_eq!(status, 200);
        assert!(done, "stream did not finish");
    }
}
