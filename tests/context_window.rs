//! Issue 14, the context window: the history sent upstream fits
//! `[upstream] context_tokens` (system prompt and new turn kept, oldest
//! turns dropped first), a turn that cannot fit is refused before any
//! upstream call, an upstream that still refuses the request as too long
//! gets exactly one retry with half the history, and an answer cut at the
//! length limit is stored and returned with `finish_reason: "length"`.
//! Contract: API.md "History and the context window", "Clarifications
//! (second part)" (messages carry `finish_reason`).
//!
//! The fake upstream here is purpose-built (a real HTTP/1.1 server on a
//! thread): it records every request, refuses as llama.cpp does ("the
//! request exceeds the available context size", 400) any request with more
//! than `refuse_over` messages, optionally only after a delay, and ends its
//! answers with the `finish_reason` it is told.

mod support;

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use portcullis::tokens;
use serde_json::{json, Value};
use support::relay::{data_json, opts_for, post};
use support::sse::SseClient;
use support::Server;

const ANSWER: &str = "Hello";
/// llama.cpp's words for a prompt over its context size.
const OVERFLOW: &str = "the request exceeds the available context size, try increasing it";

struct Behaviour {
    /// Requests with more messages than this are refused as too long.
    refuse_over: usize,
    /// How long a refusal waits before it is sent.
    refusal_delay: Duration,
    finish_reason: &'static str,
}

#[derive(Default)]
struct Seen {
    /// Every chat request body, in arrival order.
    requests: Vec<Value>,
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    seen: Mutex<Seen>,
    changed: Condvar,
}

#[derive(Clone)]
struct Fake {
    base_url: String,
    shared: Arc<Shared>,
}

impl Fake {
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour {
                refuse_over: usize::MAX,
                refusal_delay: Duration::ZERO,
                finish_reason: "stop",
            }),
            seen: Mutex::default(),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Fake { base_url, shared }
    }

    fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.behaviour.lock().unwrap());
    }

    fn requests(&self) -> Vec<Value> {
        self.shared.seen.lock().unwrap().requests.clone()
    }

    /// The `messages` of every request received, in order.
    fn sent_messages(&self) -> Vec<Vec<Value>> {
        self.requests()
            .iter()
            .map(|r| r["messages"].as_array().unwrap().clone())
            .collect()
    }

    /// Waits (with a deadline) until `n` requests arrived.
    fn wait_requests(&self, n: usize) -> bool {
        let seen = self.shared.seen.lock().unwrap();
        let (seen, _) = self
            .shared
            .changed
            .wait_timeout_while(seen, Duration::from_secs(10), |s| s.requests.len() < n)
            .unwrap();
        seen.requests.len() >= n
    }
}

/// One connection: one request (head + Content-Length body), one answer,
/// then the connection closes (`Connection: close`).
fn serve(conn: TcpStream, shared: &Shared) {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let Some(q) = support::fake_upstream::read_request(&mut r, 0) else {
        return;
    };
    let mut w = conn;
    if q.method != "POST" || !q.path.ends_with("/chat/completions") {
        let _ = w
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    }
    let req: Value = serde_json::from_slice(&q.body).unwrap_or(Value::Null);
    let n = req["messages"].as_array().map_or(0, Vec::len);
    let stream = req["stream"] == json!(true);
    {
        let mut seen = shared.seen.lock().unwrap();
        seen.requests.push(req);
        shared.changed.notify_all();
    }
    let (refuse_over, delay, finish) = {
        let b = shared.behaviour.lock().unwrap();
        (b.refuse_over, b.refusal_delay, b.finish_reason)
    };
    if n > refuse_over {
        // The upstream's behaviour under test (a slow refusal), not a
        // test waiting for something to happen.
        std::thread::sleep(delay);
        let body = json!({"error": {"code": 400, "message": OVERFLOW, "type": "exceed_context_size_error"}})
            .to_string();
        let head = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = w.write_all(format!("{}{}", head, body).as_bytes());
        return;
    }
    if stream {
        let chunks = [
            json!({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {"content": ANSWER}, "finish_reason": null}]}),
            json!({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}),
            json!({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}),
        ];
        let mut out = String::from(
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n",
        );
        for c in chunks {
            out.push_str(&format!("data: {}\n\n", c));
        }
        out.push_str("data: [DONE]\n\n");
        let _ = w.write_all(out.as_bytes());
        return;
    }
    let body = json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11},
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = w.write_all(format!("{}{}", head, body).as_bytes());
}

fn start(fake: &Fake, context_tokens: Option<usize>) -> Server {
    let mut opts = opts_for(&fake.base_url);
    if let Some(n) = context_tokens {
        opts = opts.env("PORTCULLIS_UPSTREAM_CONTEXT_TOKENS", &n.to_string());
    }
    Server::start(opts)
}

fn new_conversation(s: &Server, system_prompt: &str) -> String {
    let r = post(
        s,
        "/api/conversations",
        &json!({"system_prompt": system_prompt}),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

fn say(s: &Server, conversation_id: &str, message: &str) -> Value {
    let r = post(
        s,
        "/api/chat",
        &json!({"conversation_id": conversation_id, "message": message}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn stored_messages(s: &Server, conversation_id: &str) -> Vec<Value> {
    let r = s.get(&format!("/api/conversations/{}/messages", conversation_id));
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["items"].as_array().unwrap().clone()
}

fn contents(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect()
}

/// A user turn of about `chars` ASCII characters, unique by `i`.
fn turn(i: usize, chars: usize) -> String {
    let head = format!("turn {:02}: ", i);
    format!("{}{}", head, "word ".repeat((chars - head.len()) / 5))
}

#[test]
fn history_fits_the_window_keeping_the_system_prompt_and_the_newest_turns() {
    let fake = Fake::start();
    let s = start(&fake, Some(512));
    let cid = new_conversation(&s, "Be brief.");
    let turns: Vec<String> = (0..8).map(|i| turn(i, 300)).collect();
    for t in &turns {
        say(&s, &cid, t);
    }
    // 512 tokens: a quarter (128) kept for the answer (no max_tokens), a
    // tenth (51) for the estimate's error, 3 for the reply's opening.
    let budget = 512 - 128 - 51 - 3;
    let sent = fake.sent_messages();
    assert_eq!(sent.len(), turns.len());
    let stored = stored_messages(&s, &cid);
    for (i, messages) in sent.iter().enumerate() {
        let cost: usize = messages
            .iter()
            .map(|m| tokens::message(m["content"].as_str().unwrap()))
            .sum();
        assert!(cost <= budget, "request {} costs {} > {}", i, cost, budget);
        assert_eq!(
            messages[0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            messages.last().unwrap(),
            &json!({"role": "user", "content": turns[i]}),
            "request {} ends with its new turn",
            i
        );
        // What was sent after the system prompt is the newest stretch of
        // the conversation as stored (oldest dropped first, none skipped),
        // and the next older message would not have fitted.
        let history = &messages[1..];
        let before: Vec<&Value> = stored[..2 * i + 1].iter().collect();
        let kept = &before[before.len() - history.len()..];
        assert_eq!(
            contents(history),
            kept.iter()
                .map(|m| m["content"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        );
        if let Some(dropped) = before
            .len()
            .checked_sub(history.len() + 1)
            .map(|k| before[k])
        {
            let next = tokens::message(dropped["content"].as_str().unwrap());
            assert!(
                cost + next > budget,
                "request {} dropped a message that fitted",
                i
            );
        }
    }
    // The later turns lost their oldest messages.
    let last = sent.last().unwrap();
    assert!(last.len() < 2 * turns.len(), "{} messages", last.len());
    assert!(!contents(last).contains(&turns[0]));

    // A larger max_tokens leaves less for the history.
    let r = post(
        &s,
        "/api/chat",
        &json!({"conversation_id": cid, "message": turn(99, 300), "max_tokens": 250}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let small = fake.sent_messages().pop().unwrap();
    let cost: usize = small
        .iter()
        .map(|m| tokens::message(m["content"].as_str().unwrap()))
        .sum();
    assert!(cost <= 512 - 250 - 51 - 3, "{}", cost);
    assert!(
        small.len() < last.len(),
        "{} vs {}",
        small.len(),
        last.len()
    );
    assert_eq!(small[0]["role"], "system");
}

#[test]
fn a_turn_too_long_for_the_window_is_refused_before_any_upstream_call() {
    let fake = Fake::start();
    let s = start(&fake, Some(512));
    // About 500 tokens: more than the 330 the window leaves.
    let r = post(&s, "/api/chat", &json!({"message": "x".repeat(1500)}));
    support::assert_error(&r, 400, "validation_failed");
    assert_eq!(r.json()["error"]["field"], "message", "{}", r.text());
    let text = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(text.contains("context window"), "{}", text);
    // A max_tokens that leaves no room at all names max_tokens.
    let r = post(
        &s,
        "/api/chat",
        &json!({"message": "hi", "max_tokens": 500}),
    );
    support::assert_error(&r, 400, "validation_failed");
    assert_eq!(r.json()["error"]["field"], "max_tokens", "{}", r.text());
    // In a conversation, the system prompt counts too.
    let cid = new_conversation(&s, &"Be very precise. ".repeat(40));
    let r = post(
        &s,
        "/api/chat",
        &json!({"conversation_id": cid, "message": "y".repeat(600), "stream": true}),
    );
    support::assert_error(&r, 400, "validation_failed");
    assert_eq!(r.json()["error"]["field"], "message");
    // Nothing reached the upstream, nothing was stored.
    assert!(fake.requests().is_empty(), "{:?}", fake.requests());
    assert!(stored_messages(&s, &cid).is_empty());
    let list = s.get("/api/conversations").json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{}", list);
    // The same turn fits a larger window.
    let s = start(&fake, Some(4096));
    let r = post(&s, "/api/chat", &json!({"message": "x".repeat(1500)}));
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A conversation with a system prompt and `n` answered turns.
fn conversation_with_turns(s: &Server, n: usize) -> String {
    let cid = new_conversation(s, "Be brief.");
    for i in 0..n {
        say(s, &cid, &format!("question {}", i));
    }
    cid
}

/// The retried request: the system prompt, the newest half of the older
/// turns, the new turn.
fn assert_halved(first: &[Value], retry: &[Value]) {
    let older = first.len() - 2;
    assert_eq!(retry.len(), 2 + older / 2, "{:?}", contents(retry));
    assert_eq!(retry[0], first[0]);
    assert_eq!(retry[0]["role"], "system");
    assert_eq!(retry[1..], first[first.len() - 1 - older / 2..]);
}

#[test]
fn an_upstream_that_refuses_the_size_gets_one_retry_with_half_the_history() {
    let fake = Fake::start();
    let s = start(&fake, None);
    let cid = conversation_with_turns(&s, 6);
    assert_eq!(fake.requests().len(), 6);

    // Non-streaming: 1 + 12 + 1 messages refused, 1 + 6 + 1 accepted.
    fake.set(|b| b.refuse_over = 8);
    let v = say(&s, &cid, "question 6");
    assert_eq!(v["message"]["content"], ANSWER);
    assert_eq!(v["message"]["status"], "complete");
    let sent = fake.sent_messages();
    assert_eq!(sent.len(), 8, "exactly one retry");
    assert_eq!(sent[6].len(), 14);
    assert_halved(&sent[6], &sent[7]);
    let log = s.log_text();
    assert!(log.contains("retrying with half the history"), "{}", log);

    // Streaming, refused before the response head: 1 + 14 + 1 refused,
    // 1 + 7 + 1 accepted; the client sees one clean answer.
    fake.set(|b| b.refuse_over = 9);
    let mut c = SseClient::open(
        s.addr,
        "/api/chat",
        &json!({"conversation_id": cid, "message": "question 7", "stream": true}),
    );
    assert_eq!(c.status, 200);
    let events = c.events(Duration::from_secs(10));
    let names: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(names, ["start", "delta", "done"], "{:?}", events);
    let sent = fake.sent_messages();
    assert_eq!(sent.len(), 10, "exactly one retry");
    assert_eq!(sent[8].len(), 16);
    assert_halved(&sent[8], &sent[9]);

    // A second refusal is answered as the upstream gave it.
    fake.set(|b| b.refuse_over = 1);
    let r = post(
        &s,
        "/api/chat",
        &json!({"conversation_id": cid, "message": "question 8"}),
    );
    support::assert_error(&r, 400, "upstream_rejected");
    assert!(
        r.text().contains("exceeds the available context size"),
        "{}",
        r.text()
    );
    assert_eq!(fake.requests().len(), 12, "one retry, not more");
    let stored = stored_messages(&s, &cid);
    let last = stored.last().unwrap();
    assert_eq!(last["status"], "error");
    assert_eq!(last["finish_reason"], Value::Null);
}

#[test]
fn a_stream_refused_after_its_head_went_out_is_retried_without_a_trace() {
    let fake = Fake::start();
    let s = start(&fake, None);
    let cid = conversation_with_turns(&s, 4);
    // The refusal comes after the head grace (2 s): the 200 head and the
    // `start` event are out, no delta is; the retry happens in the stream.
    fake.set(|b| {
        b.refuse_over = 7;
        b.refusal_delay = Duration::from_millis(2300);
    });
    let mut c = SseClient::open(
        s.addr,
        "/api/chat",
        &json!({"conversation_id": cid, "message": "question 4", "stream": true}),
    );
    assert_eq!(c.status, 200);
    let events = c.events(Duration::from_secs(15));
    let names: Vec<&str> = events
        .iter()
        .map(|(e, _)| e.as_deref().unwrap_or(""))
        .collect();
    assert_eq!(names, ["start", "delta", "done"], "{:?}", events);
    assert!(fake.wait_requests(6));
    let sent = fake.sent_messages();
    assert_eq!(sent.len(), 6, "exactly one retry");
    assert_eq!(sent[4].len(), 10);
    assert_halved(&sent[4], &sent[5]);
    assert!(support::wait_until(Duration::from_secs(5), || {
        stored_messages(&s, &cid).last().unwrap()["status"] == "complete"
    }));
    let stored = stored_messages(&s, &cid);
    assert_eq!(stored.len(), 10);
    assert_eq!(stored[9]["content"], ANSWER);
    assert_eq!(stored[9]["finish_reason"], "stop");
}

#[test]
fn an_answer_cut_at_the_length_limit_keeps_finish_reason_length() {
    let fake = Fake::start();
    let s = start(&fake, None);

    // Non-streaming: the reply's message and the stored one.
    let v = say(&s, &new_conversation(&s, "Be brief."), "first");
    assert_eq!(v["message"]["finish_reason"], "stop", "{}", v);
    fake.set(|b| b.finish_reason = "length");
    let cid = v["conversation_id"].as_str().unwrap().to_string();
    let v = say(&s, &cid, "tell me everything");
    assert_eq!(v["message"]["finish_reason"], "length", "{}", v);
    assert_eq!(v["message"]["status"], "complete");
    let stored = stored_messages(&s, &cid);
    let reasons: Vec<&Value> = stored.iter().map(|m| &m["finish_reason"]).collect();
    assert_eq!(
        reasons,
        [&Value::Null, &json!("stop"), &Value::Null, &json!("length")]
    );

    // Streaming: the `done` event and the stored message.
    let mut c = SseClient::open(
        s.addr,
        "/api/chat",
        &json!({"conversation_id": cid, "message": "and more", "stream": true}),
    );
    assert_eq!(c.status, 200);
    let frames: Vec<_> = c
        .all(Duration::from_secs(10))
        .into_iter()
        .filter(|f| !f.comment)
        .collect();
    let done = frames
        .iter()
        .find(|f| f.event.as_deref() == Some("done"))
        .unwrap();
    assert_eq!(data_json(done)["finish_reason"], "length");
    let mut last = Value::Null;
    assert!(
        support::wait_until(Duration::from_secs(5), || {
            last = stored_messages(&s, &cid).pop().unwrap();
            last["status"] == "complete"
        }),
        "{}",
        last
    );
    assert_eq!(last["finish_reason"], "length", "{}", last);
    assert_eq!(last["content"], ANSWER);
}
