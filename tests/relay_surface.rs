//! The relay's surface against scripted upstreams (real HTTP servers on
//! loopback whose every answer a test decides): upstream refusals keep
//! their status and message, 429 keeps `Retry-After`, a request that meets
//! a pooled connection the upstream already closed is sent once more on a
//! new one (no spurious 502), bodies reach the upstream byte for byte, the
//! new routes go where they should, and unknown `/v1` paths say so.
//! Contract: API.md "Errors: additions", "OpenAI-compatible relay: the full
//! surface".

mod support;

use std::io::{BufReader, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::fake_upstream::{FakeUpstream, Mode};
use support::relay::*;
use support::sse::SseClient;
use support::Server;

/// What a scripted upstream does with one request.
enum Act {
    /// Writes these bytes (a whole response) and keeps the connection.
    Answer(Vec<u8>),
    /// Writes these bytes, then closes its side at once, without having
    /// said `Connection: close` (what uvicorn does after a 500).
    AnswerThenClose(Vec<u8>),
    /// Closes without answering (a connection the server had already
    /// dropped when the request arrived).
    Drop,
}

/// One request as the scripted upstream saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    body: Vec<u8>,
    /// The connection's number and the request's number on it (0, 1, ...).
    conn: usize,
    on_conn: usize,
}

type Script = dyn Fn(&Seen) -> Act + Send + Sync;

/// A loopback HTTP/1.1 server that answers as `script` says.
struct Scripted {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Scripted {
    fn start(script: impl Fn(&Seen) -> Act + Send + Sync + 'static) -> Scripted {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let script: Arc<Script> = Arc::new(script);
        let conns = Arc::new(AtomicUsize::new(0));
        let rec = seen.clone();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(stream) = stream else { return };
                let (script, rec) = (script.clone(), rec.clone());
                let conn = conns.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || serve(stream, conn, &*script, &rec));
            }
        });
        Scripted { addr, seen }
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, conn: usize, script: &Script, rec: &Mutex<Vec<Seen>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    for on_conn in 0.. {
        let Some(q) = support::fake_upstream::read_request(&mut r, conn) else {
            return;
        };
        let (method, path, body) = (q.method, q.path, q.body);
        let seen = Seen {
            method,
            path,
            body,
            conn,
            on_conn,
        };
        let act = script(&seen);
        rec.lock().unwrap().push(seen);
        match act {
            Act::Answer(bytes) => {
                if w.write_all(&bytes).is_err() {
                    return;
                }
            }
            Act::AnswerThenClose(bytes) => {
                let _ = w.write_all(&bytes);
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
            Act::Drop => {
                let _ = w.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}

fn response(status: u16, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        status,
        body.len()
    );
    for (k, v) in headers {
        out.push_str(&format!("{}: {}\r\n", k, v));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

fn completion(text: &str) -> String {
    json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
    .to_string()
}

/// An SSE answer with a length, ending with `[DONE]`.
fn stream_answer(text: &str) -> Vec<u8> {
    let chunk = json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": "stop"}]});
    let body = format!("data: {}\n\ndata: [DONE]\n\n", chunk);
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .into_bytes()
}

fn streaming(body: &Value) -> Value {
    let mut b = body.clone();
    b["stream"] = json!(true);
    b
}

// ------------------------------------------------- refusals keep meaning

#[test]
fn upstream_refusals_keep_their_status_and_message_and_are_not_retried() {
    let cases: &[(u16, &str, &str, Option<&str>)] = &[
        // LiteLLM's refusal of an unknown model.
        (
            400,
            r#"{"error":{"message":"Invalid model name passed in model=nope. Call `/v1/models` to view available models for your key.","type":"invalid_request_error","param":"model","code":"400"}}"#,
            "Invalid model name passed in model=nope",
            Some("model"),
        ),
        // llama.cpp's context overflow.
        (
            400,
            r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#,
            "the request exceeds the available context size",
            None,
        ),
        // FastAPI (vLLM) validation.
        (
            422,
            r#"{"detail":[{"loc":["body","messages"],"msg":"Field required","type":"missing"}]}"#,
            "Field required",
            None,
        ),
        (
            404,
            r#"{"error":"model 'nope' not found"}"#,
            "model 'nope' not found",
            None,
        ),
        (
            413,
            "request entity too large",
            "request entity too large",
            None,
        ),
        (409, r#"{"message":"conflict"}"#, "conflict", None),
    ];
    for (status, body, words, param) in cases {
        let up = FakeUpstream::start(Mode::Error {
            status: *status,
            body: body.to_string(),
        });
        let s = start(&up);
        let r = post(&s, "/v1/chat/completions", &user_says("hi"));
        assert_eq!(r.status, *status, "{}", r.text());
        let e = &r.json()["error"];
        assert_eq!(e["code"], "upstream_rejected", "{}", r.text());
        let message = e["message"].as_str().unwrap();
        assert!(message.contains(words), "{} lacks {}", message, words);
        assert_eq!(e["param"].as_str(), *param);
        let want_type = if *status == 404 {
            "not_found_error"
        } else {
            "invalid_request_error"
        };
        assert_eq!(e["type"], want_type);
        assert!(r.header("retry-after").is_none());
        // Before the stream began, a streamed call is refused the same way.
        let mut c = SseClient::open(s.addr, "/v1/chat/completions", &streaming(&user_says("hi")));
        assert_eq!(c.status, *status);
        assert_eq!(c.body_json()["error"]["code"], "upstream_rejected");
        // /api/chat tells the person why, too.
        let r = post(&s, "/api/chat", &json!({"message": "hi"}));
        assert_eq!(r.status, *status, "{}", r.text());
        assert!(r.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains(words));
        // One upstream call per client call: a refusal is never retried.
        assert_eq!(up.requests().len(), 3, "{}", status);
        assert_no_leak(&s, &[]);
    }
}

#[test]
fn an_upstream_message_is_redacted_scrubbed_and_cut() {
    let long = "x".repeat(2000);
    let body = json!({"error": {"message": format!(
        "bad request from {} with key {} at http://10.9.8.7:8000/v1 {}", "10.1.2.3", UPSTREAM_KEY, long
    )}})
    .to_string();
    let up = FakeUpstream::start(Mode::Error { status: 400, body });
    let s = start(&up);
    let r = post(&s, "/v1/chat/completions", &user_says("hi"));
    assert_eq!(r.status, 400);
    let message = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("bad request from"), "{}", message);
    for gone in ["10.1.2.3", "10.9.8.7", UPSTREAM_KEY, "UPSTREAMKEY"] {
        assert!(!message.contains(gone), "{} in {}", gone, message);
    }
    let relayed = message
        .strip_prefix("the model server refused the request: ")
        .unwrap();
    assert_eq!(relayed.chars().count(), 512, "cut to 512 characters");
    assert_no_leak(&s, &[&r.text()]);
}

#[test]
fn upstream_rate_limits_keep_their_retry_after() {
    let up = Scripted::start(|_| {
        Act::Answer(response(
            429,
            &[("Retry-After", "7")],
            r#"{"error":{"message":"Rate limit reached for requests"}}"#,
        ))
    });
    let s = Server::start(opts_for(&up.base_url()));
    let r = post(&s, "/v1/chat/completions", &user_says("hi"));
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.code(), "rate_limited");
    assert_eq!(r.header("retry-after"), Some("7"));
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let mut c = SseClient::open(s.addr, "/v1/chat/completions", &streaming(&user_says("hi")));
    assert_eq!(c.status, 429);
    assert_eq!(c.header("retry-after"), Some("7"));
    assert_eq!(c.body_json()["error"]["code"], "rate_limited");
}

// ------------------------------------------ dead pooled connections

/// Every connection answers one request (alternately 500 and 200, never
/// saying `Connection: close`) and drops the next one unanswered: each
/// second call meets a pooled connection the upstream has given up, every
/// time, not by chance. Before the fix those calls failed 502
/// `upstream_unavailable` ("Connection reset by peer").
#[test]
fn a_request_that_meets_a_dead_pooled_connection_is_sent_again_on_a_new_one() {
    let up = Scripted::start(|q| {
        if q.on_conn > 0 {
            return Act::Drop;
        }
        if q.body.windows(6).any(|w| w == b"stream") {
            return Act::Answer(stream_answer("streamed"));
        }
        if q.conn % 2 == 0 {
            Act::Answer(response(500, &[], r#"{"detail":"Internal Server Error"}"#))
        } else {
            Act::Answer(response(200, &[], &completion("fine")))
        }
    });
    let s = Server::start(opts_for(&up.base_url()));
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..200 {
        let r = post(&s, "/v1/chat/completions", &user_says("hi"));
        *statuses.entry((r.status, r.code())).or_insert(0) += 1;
    }
    assert!(
        !statuses
            .keys()
            .any(|(_, code)| code == "upstream_unavailable"),
        "spurious 502s: {:?}",
        statuses
    );
    assert_eq!(
        statuses.values().sum::<i32>(),
        200,
        "every call answered: {:?}",
        statuses
    );
    let seen = up.seen();
    let dropped = seen.iter().filter(|q| q.on_conn > 0).count();
    assert!(dropped >= 100, "the dead connections were met: {}", dropped);
    assert_eq!(seen.len() - dropped, 200, "each call answered once");
    // Streams too: the call is sent again before anything reached the client.
    for _ in 0..20 {
        let mut c = SseClient::open(s.addr, "/v1/chat/completions", &streaming(&user_says("hi")));
        assert_eq!(c.status, 200);
        let frames = c.all(Duration::from_secs(10));
        assert_eq!(frames.last().unwrap().data, "[DONE]", "{:?}", frames);
    }
}

/// The race as uvicorn produces it: a 500, then the socket closes at once
/// without `Connection: close`. 200 calls, no spurious 502.
#[test]
fn an_upstream_that_closes_after_a_500_causes_no_spurious_502() {
    let calls = Arc::new(AtomicUsize::new(0));
    let n = calls.clone();
    let up = Scripted::start(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
            Act::AnswerThenClose(response(500, &[], "Internal Server Error"))
        } else {
            Act::Answer(response(200, &[], &completion("fine")))
        }
    });
    let s = Server::start(opts_for(&up.base_url()));
    let mut unavailable = 0;
    let mut ok = 0;
    for _ in 0..200 {
        let r = post(&s, "/v1/chat/completions", &user_says("hi"));
        match (r.status, r.code().as_str()) {
            (200, _) => ok += 1,
            (502, "upstream_error") => {}
            (_, "upstream_unavailable") => unavailable += 1,
            other => panic!("{:?}: {}", other, r.text()),
        }
    }
    assert_eq!(unavailable, 0);
    assert!(ok >= 90, "{} answered 200", ok);
}

// --------------------------------------------- bodies and routes

#[test]
fn bodies_reach_the_upstream_byte_for_byte() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = start(&up);
    // Vendor parameters, odd spacing, escapes, number forms: all the
    // client's bytes, none rewritten.
    let sent = r#"{ "model" : "picked",  "messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00"}],
        "grammar":"root ::= \"yes\" | \"no\"", "top_k": 4e1, "min_p":0.050,
        "chat_template_kwargs":{"enable_thinking":false}, "cache_prompt": true }"#;
    let headers = [
        ("Content-Type", "application/json"),
        ("Origin", "http://localhost:3000"),
    ];
    let r = s.req("POST", "/v1/chat/completions", &headers, Some(sent));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        String::from_utf8(up.requests()[0].body.clone()).unwrap(),
        sent
    );
    // Without a model, `"model":"<default>",` is the only change.
    let sent = r#"{"messages":[{"role":"user","content":"hi"}],"top_k":40}"#;
    let r = s.req("POST", "/v1/chat/completions", &headers, Some(sent));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        String::from_utf8(up.requests()[1].body.clone()).unwrap(),
        r#"{"model":"gpt-oss:20b","messages":[{"role":"user","content":"hi"}],"top_k":40}"#
    );
    // A model named twice is refused: the upstream might read the other.
    let twice = r#"{"model":"a","messages":[{"role":"user","content":"hi"}],"model":"b"}"#;
    let r = s.req("POST", "/v1/chat/completions", &headers, Some(twice));
    assert_eq!((r.status, r.code().as_str()), (400, "validation_failed"));
    assert_eq!(r.json()["error"]["param"], "model");
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn each_relayed_route_reaches_its_upstream_path() {
    let models = json!({"object": "list", "data": [
        {"id": "org/model-a", "object": "model", "created": 5, "owned_by": "org"},
        {"id": "plain", "object": "model"},
    ]})
    .to_string();
    let up = Scripted::start(move |q| match (q.method.as_str(), q.path.as_str()) {
        ("GET", "/v1/models") => Act::Answer(response(200, &[], &models)),
        ("POST", "/v1/embeddings") => Act::Answer(response(
            200,
            &[],
            r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-1]}],"model":"e"}"#,
        )),
        ("POST", "/v1/completions") => Act::Answer(response(
            200,
            &[],
            r#"{"object":"text_completion","choices":[{"index":0,"text":"done","finish_reason":"stop"}]}"#,
        )),
        ("POST", "/v1/responses") if q.body.windows(13).any(|w| w == b"\"stream\":true") => {
            let mut body = String::new();
            for (name, data) in [
                (
                    "response.created",
                    json!({"type": "response.created", "response": {"id": "r1", "status": "in_progress"}}),
                ),
                (
                    "response.output_text.delta",
                    json!({"type": "response.output_text.delta", "delta": "hel"}),
                ),
                (
                    "response.output_text.delta",
                    json!({"type": "response.output_text.delta", "delta": "lo"}),
                ),
                (
                    "response.completed",
                    json!({"type": "response.completed", "response": {"id": "r1", "status": "completed"}}),
                ),
            ] {
                body.push_str(&format!("event: {}\ndata: {}\n\n", name, data));
            }
            Act::Answer(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{}",
                    body.len(),
                    body
                )
                .into_bytes(),
            )
        }
        ("POST", "/v1/responses") => Act::Answer(response(
            200,
            &[],
            r#"{"id":"r1","object":"response","status":"completed","output":[]}"#,
        )),
        _ => Act::Answer(response(
            404,
            &[],
            r#"{"error":{"message":"no such route"}}"#,
        )),
    });
    let s = Server::start(opts_for(&up.base_url()));

    let r = post(&s, "/v1/embeddings", &json!({"input": "hi"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["embedding"], json!([0.5, -1]));
    let r = post(
        &s,
        "/v1/completions",
        &json!({"prompt": "say", "max_tokens": 3}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["choices"][0]["text"], "done");
    let r = post(&s, "/v1/responses", &json!({"input": "hi"}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["object"], "response");
    let paths: Vec<String> = up.seen().iter().map(|q| q.path.clone()).collect();
    assert_eq!(
        paths,
        ["/v1/embeddings", "/v1/completions", "/v1/responses"]
    );
    for q in up.seen() {
        let v: Value = serde_json::from_slice(&q.body).unwrap();
        assert_eq!(v["model"], "gpt-oss:20b", "the default model is set");
    }
    // Required fields are checked before anything is sent.
    let r = post(&s, "/v1/embeddings", &json!({"model": "e"}));
    assert_eq!(
        (r.status, r.json()["error"]["param"].clone()),
        (400, json!("input"))
    );

    // A Responses stream keeps its event names and ends without [DONE].
    let mut c = SseClient::open(
        s.addr,
        "/v1/responses",
        &json!({"input": "hi", "stream": true}),
    );
    assert_eq!(c.status, 200);
    let frames: Vec<_> = c
        .all(Duration::from_secs(10))
        .into_iter()
        .filter(|f| !f.comment)
        .collect();
    let names: Vec<&str> = frames
        .iter()
        .map(|f| f.event.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(
        names,
        [
            "response.created",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.completed"
        ]
    );
    assert!(frames.iter().all(|f| f.data != "[DONE]"));

    // Models: one by id, slashes included; an unknown id is 404.
    let r = s.get("/v1/models/org/model-a");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], "org/model-a");
    assert_eq!(r.json()["owned_by"], "org");
    let r = s.get("/v1/models/plain");
    assert_eq!(
        (r.status, r.json()["object"].clone()),
        (200, json!("model"))
    );
    let r = s.get("/v1/models/nope");
    assert_eq!((r.status, r.code().as_str()), (404, "not_found"));
}

#[test]
fn unknown_openai_paths_say_they_are_not_supported() {
    let up = FakeUpstream::start(Mode::Normal);
    let s = start(&up);
    for (method, path) in [
        ("GET", "/v1/assistants"),
        ("POST", "/v1/audio/speech"),
        ("GET", "/v1/files/file-abc"),
    ] {
        let r = s.req(method, path, &[("Origin", "http://localhost:3000")], None);
        assert_eq!(
            (r.status, r.code().as_str()),
            (404, "not_found"),
            "{}",
            path
        );
        let message = r.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(
            message.contains(path) && message.contains("not supported"),
            "{}",
            message
        );
    }
    // A path holding something key-shaped does not echo it.
    let r = s.get(&format!("/v1/x/{}", UPSTREAM_KEY));
    assert_eq!(r.status, 404);
    assert!(!r.text().contains(UPSTREAM_KEY), "{}", r.text());
    // Elsewhere a bare "not found" stays as it was.
    assert_eq!(s.get("/nope").json()["error"]["message"], "not found");
    assert!(up.requests().is_empty());
}

/// A client that hangs up while a non-streaming call waits on the model
/// stops that call: the model does not go on generating for nobody.
#[test]
fn a_client_that_hangs_up_stops_its_non_streaming_upstream_call() {
    let up = FakeUpstream::start(Mode::Hang);
    let s = Server::start(opts_for(&up.base_url()).env("PORTCULLIS_UPSTREAM_TIMEOUT_S", "120"));
    for path in ["/v1/chat/completions", "/v1/responses", "/api/chat"] {
        let before = up.requests().len();
        let body = match path {
            "/v1/responses" => json!({"input": "think long"}),
            "/api/chat" => json!({"message": "think long"}),
            _ => user_says("think long"),
        }
        .to_string();
        let mut c = support::connect(s.addr);
        write!(
            c,
            "POST {} HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            path,
            body.len(),
            body
        )
        .unwrap();
        assert!(
            up.wait_requests(before + 1, Duration::from_secs(10)),
            "{}",
            path
        );
        drop(c);
        assert!(
            up.wait_closed(Duration::from_secs(5)).is_some(),
            "{}: the upstream call was not stopped",
            path
        );
    }
    assert!(
        support::wait_until(Duration::from_secs(5), || s
            .log_text()
            .matches("client gone; stopping its upstream call")
            .count()
            >= 3),
        "{}",
        s.log_text()
    );
}
