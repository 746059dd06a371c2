//! Several upstreams against real HTTP servers on loopback: routing by
//! model, balance by weight, failover before the first byte (refused,
//! hanging, 5xx), never after it, ejection and recovery on the configured
//! counts, and 1,000 calls across an upstream killed mid-run.
//! Contract: API.md "Several upstreams".

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use support::relay::*;
use support::sse::SseClient;
use support::{wait_until, Opts, Server};

/// What an upstream does with a chat call.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Act {
    /// Answers with its own name as the content (streamed when asked).
    Answer,
    /// 500 with a JSON error.
    Fail,
    /// Reads the request, never answers.
    Hang,
    /// Holds the answer until the gate opens.
    Gated,
    /// Streams one chunk, then resets the connection.
    BreakMidStream,
    /// 400: the request is refused as invalid.
    Refuse,
}

struct State {
    act: Act,
    /// Chat calls received (the text of their last message).
    calls: Vec<String>,
    open: Vec<TcpStream>,
}

/// A killable OpenAI-compatible upstream that names itself in answers.
#[derive(Clone)]
struct Up {
    name: &'static str,
    addr: std::net::SocketAddr,
    state: Arc<Mutex<State>>,
    gate: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    models: Arc<Vec<&'static str>>,
}

impl Up {
    fn start(name: &'static str, act: Act, models: &[&'static str]) -> Up {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let up = Up {
            name,
            addr: l.local_addr().unwrap(),
            state: Arc::new(Mutex::new(State {
                act,
                calls: Vec::new(),
                open: Vec::new(),
            })),
            gate: Arc::default(),
            killed: Arc::default(),
            models: Arc::new(models.to_vec()),
        };
        let me = up.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if me.killed.load(Ordering::SeqCst) {
                    return; // the listener closes: connections are refused
                }
                let Ok(s) = s else { return };
                me.state.lock().unwrap().open.push(s.try_clone().unwrap());
                let me = me.clone();
                std::thread::spawn(move || me.serve(s));
            }
        });
        up
    }

    fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    fn set(&self, act: Act) {
        self.state.lock().unwrap().act = act;
    }

    fn calls(&self) -> usize {
        self.state.lock().unwrap().calls.len()
    }

    /// Stops listening and cuts every connection, like a crashed server.
    fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        for s in self.state.lock().unwrap().open.drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
        // Wake the accept loop so the listener is dropped.
        let _ = TcpStream::connect(self.addr);
    }

    fn serve(&self, s: TcpStream) {
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        loop {
            let Some(q) = support::fake_upstream::read_request(&mut r, 0) else {
                return;
            };
            let (path, body) = (q.path, q.body);
            if path.ends_with("/models") {
                let data: Vec<Value> = self
                    .models
                    .iter()
                    .map(|m| json!({"id": m, "object": "model", "owned_by": self.name}))
                    .collect();
                let text = json!({"object": "list", "data": data}).to_string();
                if write_json(&mut w, 200, &text).is_err() {
                    return;
                }
                continue;
            }
            let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let text = req["messages"][0]["content"]
                .as_str()
                .unwrap_or("")
                .to_string();
            let act = {
                let mut st = self.state.lock().unwrap();
                st.calls.push(text);
                st.act
            };
            let stream = req["stream"] == json!(true);
            let ok = match act {
                Act::Hang => {
                    let mut sink = [0u8; 1];
                    let _ = r.get_mut().read(&mut sink);
                    return;
                }
                Act::Fail => write_json(&mut w, 500, r#"{"error":{"message":"boom"}}"#).is_ok(),
                Act::Refuse => {
                    write_json(&mut w, 400, r#"{"error":{"message":"bad request here"}}"#).is_ok()
                }
                Act::Gated | Act::Answer => {
                    if act == Act::Gated {
                        while !self.gate.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                    answer(&mut w, self.name, stream).is_ok()
                }
                Act::BreakMidStream => {
                    let chunk = chunk_json(self.name, None);
                    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n";
                    let _ = w.write_all(format!("{}data: {}\n\n", head, chunk).as_bytes());
                    let _ = w.flush();
                    let _ = w.shutdown(Shutdown::Both);
                    return;
                }
            };
            if !ok {
                return;
            }
        }
    }
}

fn write_json(w: &mut TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    write!(
        w,
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        status,
        body.len(),
        body
    )
}

fn chunk_json(content: &str, finish: Option<&str>) -> String {
    json!({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": finish}]})
    .to_string()
}

fn answer(w: &mut TcpStream, name: &str, stream: bool) -> std::io::Result<()> {
    if !stream {
        let body = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": name}, "finish_reason": "stop"}]})
        .to_string();
        return write_json(w, 200, &body);
    }
    let body = format!(
        "data: {}\n\ndata: [DONE]\n\n",
        chunk_json(name, Some("stop"))
    );
    write!(
        w,
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
}

/// A server with `[upstream]` at `default` and the named sections `extra`.
fn server(default: &Up, extra: &str, env: &[(&str, &str)]) -> Server {
    let config = format!(
        "[upstream]\nbase_url = {}\nmodel = m\n{}\n",
        default.base_url(),
        extra
    );
    let mut opts = Opts::new()
        .no_auth()
        .config(&config)
        .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "100000")
        .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "100000");
    for (k, v) in env {
        opts = opts.env(k, v);
    }
    Server::start(opts)
}

fn named(name: &str, up: &Up, models: &str, more: &str) -> String {
    format!(
        "[upstream.{}]\nbase_url = {}\nmodels = {}\n{}\n",
        name,
        up.base_url(),
        models,
        more
    )
}

fn chat(s: &Server, model: &str) -> (u16, String) {
    let r = post(
        s,
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let content = r.json()["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (r.status, if r.status == 200 { content } else { r.code() })
}

fn metric(s: &Server, line_start: &str) -> Option<f64> {
    let text = s.get("/metrics").text();
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

// ------------------------------------------------------------ routing

#[test]
fn calls_go_to_the_upstreams_that_serve_their_model() {
    let (d, big, hosted) = (
        Up::start("default", Act::Answer, &["m", "small"]),
        Up::start("big", Act::Answer, &["big-120b", "big-20b"]),
        Up::start("hosted", Act::Answer, &["gpt-4o", "gpt-4o-mini"]),
    );
    let s = server(
        &d,
        &(named("big", &big, "big-120b, big-20b", "") + &named("hosted", &hosted, "gpt-4o*", "")),
        &[],
    );
    assert_eq!(chat(&s, "big-20b"), (200, "big".into()));
    assert_eq!(chat(&s, "gpt-4o-mini"), (200, "hosted".into()));
    assert_eq!(
        chat(&s, "small"),
        (200, "default".into()),
        "unclaimed: the default"
    );
    assert_eq!(chat(&s, "anything-else"), (200, "default".into()));
    assert_eq!((d.calls(), big.calls(), hosted.calls()), (2, 1, 1));
    // /api/chat routes the same way.
    let r = post(
        &s,
        "/api/chat",
        &json!({"message": "hi", "model": "big-120b"}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["message"]["content"], "big");
    // The model list is the union, each model once.
    let v = s.get("/v1/models").json();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["m", "small", "big-120b", "big-20b", "gpt-4o", "gpt-4o-mini"]
    );
}

#[test]
fn the_least_busy_by_weight_gets_the_call() {
    let d = Up::start("default", Act::Answer, &["m"]);
    let light = Up::start("light", Act::Gated, &["shared"]);
    let heavy = Up::start("heavy", Act::Gated, &["shared"]);
    let s = server(
        &d,
        &(named("light", &light, "shared", "weight = 1")
            + &named("heavy", &heavy, "shared", "weight = 3")),
        &[],
    );
    let addr = s.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let r = support::request(
                    addr,
                    "POST",
                    "/v1/chat/completions",
                    &[
                        ("Content-Type", "application/json"),
                        ("Origin", "http://localhost:3000"),
                    ],
                    Some(br#"{"model":"shared","messages":[{"role":"user","content":"hi"}]}"#),
                );
                r.status
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(10), || light.calls()
        + heavy.calls()
        == 8));
    // In flight at once: 8 calls split 1:3 (2 and 6; a pick that races
    // another may land one off).
    let (l, h) = (light.calls(), heavy.calls());
    assert!(
        (1..=3).contains(&l) && (5..=7).contains(&h),
        "light {} heavy {}",
        l,
        h
    );
    light.gate.store(true, Ordering::SeqCst);
    heavy.gate.store(true, Ordering::SeqCst);
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
}

// ----------------------------------------------------------- failover

#[test]
fn a_refused_hanging_or_erring_upstream_fails_over_before_the_first_byte() {
    let d = Up::start("default", Act::Answer, &["m"]);
    let first = Up::start("first", Act::Answer, &["x"]);
    let second = Up::start("second", Act::Answer, &["x"]);
    let s = server(
        &d,
        &(named("first", &first, "x", "timeout_s = 1") + &named("second", &second, "x", "")),
        &[("PORTCULLIS_UPSTREAM_EJECT_AFTER_FAILURES", "0")],
    );
    for act in [Act::Fail, Act::Hang] {
        first.set(act);
        let before = (first.calls(), second.calls());
        assert_eq!(chat(&s, "x"), (200, "second".into()), "{:?}", act);
        assert_eq!(
            (first.calls(), second.calls()),
            (before.0 + 1, before.1 + 1)
        );
        // A stream fails over too: nothing had reached the client.
        let mut c = SseClient::open(
            s.addr,
            "/v1/chat/completions",
            &json!({"model": "x", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
        );
        assert_eq!(c.status, 200);
        let frames = c.all(Duration::from_secs(10));
        let text: String = frames
            .iter()
            .filter_map(|f| serde_json::from_str::<Value>(&f.data).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text, "second", "{:?}: {:?}", act, frames);
    }
    // A refused connection.
    first.kill();
    assert_eq!(chat(&s, "x"), (200, "second".into()));
    // A refusal of the request itself is not retried elsewhere.
    second.set(Act::Refuse);
    let before = second.calls();
    let r = post(
        &s,
        "/v1/chat/completions",
        &json!({"model": "x", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(
        (r.status, r.code().as_str()),
        (400, "upstream_rejected"),
        "{}",
        r.text()
    );
    assert_eq!(second.calls(), before + 1);
}

#[test]
fn a_stream_that_breaks_after_its_first_byte_is_never_sent_again() {
    let d = Up::start("default", Act::Answer, &["m"]);
    let first = Up::start("first", Act::BreakMidStream, &["x"]);
    let second = Up::start("second", Act::Answer, &["x"]);
    let s = server(
        &d,
        &(named("first", &first, "x", "") + &named("second", &second, "x", "")),
        &[],
    );
    let mut c = SseClient::open(
        s.addr,
        "/v1/chat/completions",
        &json!({"model": "x", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    let frames = c.all(Duration::from_secs(10));
    let last: Value = serde_json::from_str(&frames.last().unwrap().data).unwrap();
    assert!(
        last["error"]["code"].is_string(),
        "ends with an error: {:?}",
        frames
    );
    assert_eq!((first.calls(), second.calls()), (1, 0), "never sent twice");
}

// ---------------------------------------------------- ejection, recovery

#[test]
fn an_upstream_is_ejected_after_its_failures_and_probed_back() {
    let d = Up::start("default", Act::Answer, &["m"]);
    let flaky = Up::start("flaky", Act::Fail, &["x"]);
    let steady = Up::start("steady", Act::Answer, &["x"]);
    let s = server(
        &d,
        &(named("flaky", &flaky, "x", "") + &named("steady", &steady, "x", "")),
        &[
            ("PORTCULLIS_UPSTREAM_EJECT_AFTER_FAILURES", "3"),
            ("PORTCULLIS_UPSTREAM_EJECT_FOR_S", "2"),
        ],
    );
    // Three failures in a row (each call fails over to `steady`)...
    for _ in 0..3 {
        assert_eq!(chat(&s, "x"), (200, "steady".into()));
    }
    assert_eq!(flaky.calls(), 3);
    assert_eq!(
        metric(&s, "portcullis_upstream_up{upstream=\"flaky\"}"),
        Some(0.0)
    );
    let ready = s.get("/health/ready").json();
    assert_eq!(
        ready["checks"]["upstreams"]["flaky"]["ejected"], true,
        "{}",
        ready
    );
    // ...then it is skipped.
    for _ in 0..5 {
        assert_eq!(chat(&s, "x"), (200, "steady".into()));
    }
    assert_eq!(flaky.calls(), 3, "ejected: not tried");
    // Its time up, one call probes it; it recovered, so it is back.
    flaky.set(Act::Answer);
    assert!(wait_until(Duration::from_secs(5), || metric(
        &s,
        "portcullis_upstream_up{upstream=\"flaky\"}"
    ) == Some(1.0)));
    assert_eq!(chat(&s, "x"), (200, "flaky".into()), "the probe");
    assert_eq!(
        metric(&s, "portcullis_upstream_failures_total{upstream=\"flaky\"}"),
        Some(3.0)
    );
    let log = s.log_text();
    assert!(
        log.contains("upstream ejected") && log.contains("upstream back in service"),
        "{}",
        log
    );
}

#[test]
fn a_thousand_calls_across_a_killed_upstream_all_succeed() {
    let d = Up::start("default", Act::Answer, &["m"]);
    let doomed = Up::start("doomed", Act::Answer, &["x"]);
    let survivor = Up::start("survivor", Act::Answer, &["x"]);
    let s = server(
        &d,
        &(named("doomed", &doomed, "x", "") + &named("survivor", &survivor, "x", "")),
        &[],
    );
    let addr = s.addr;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut bad = Vec::new();
                for _ in 0..250 {
                    let r = support::request(
                        addr,
                        "POST",
                        "/v1/chat/completions",
                        &[
                            ("Content-Type", "application/json"),
                            ("Origin", "http://localhost:3000"),
                        ],
                        Some(br#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#),
                    );
                    if r.status != 200 {
                        bad.push(r.text());
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
                bad
            })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(30), || done
        .load(Ordering::SeqCst)
        >= 300));
    doomed.kill();
    let bad: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    assert!(
        bad.is_empty(),
        "{} failed: {:?}",
        bad.len(),
        &bad[..bad.len().min(3)]
    );
    assert!(doomed.calls() > 0 && survivor.calls() > 0);
}

/// A client that hangs up while the first upstream hangs stops the call:
/// the next upstream is not tried for nobody, and the hang-up is not
/// counted against the first.
#[test]
fn a_client_that_leaves_during_a_failover_stops_it() {
    let d = Up::start("default", Act::Answer, &["m"]);
    let slow = Up::start("slow", Act::Hang, &["x"]);
    let spare = Up::start("spare", Act::Answer, &["x"]);
    let s = server(
        &d,
        &(named("slow", &slow, "x", "timeout_s = 60") + &named("spare", &spare, "x", "")),
        &[],
    );
    let body = r#"{"model":"x","messages":[{"role":"user","content":"hi"}]}"#;
    let mut c = support::connect(s.addr);
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .unwrap();
    assert!(wait_until(Duration::from_secs(10), || slow.calls() == 1));
    drop(c);
    let idle = || metric(&s, "portcullis_upstream_in_flight{upstream=\"slow\"}") == Some(0.0);
    assert!(wait_until(Duration::from_secs(10), idle), "the call ended");
    assert_eq!(spare.calls(), 0, "no failover for a client that left");
    assert_eq!(
        metric(&s, "portcullis_upstream_failures_total{upstream=\"slow\"}"),
        Some(0.0)
    );
}

/// The same for a stream: a client gone while the first upstream hangs
/// stops the reader before it tries the next one.
#[test]
fn a_stream_whose_client_leaves_during_a_failover_stops_it() {
    let d = Up::start("default", Act::Answer, &["m"]);
    let slow = Up::start("slow", Act::Hang, &["x"]);
    let spare = Up::start("spare", Act::Answer, &["x"]);
    let s = server(
        &d,
        &(named("slow", &slow, "x", "timeout_s = 60") + &named("spare", &spare, "x", "")),
        &[("PORTCULLIS_UPSTREAM_STREAM_IDLE_TIMEOUT_S", "60")],
    );
    let c = SseClient::open(
        s.addr,
        "/v1/chat/completions",
        &json!({"model": "x", "stream": true, "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(c.status, 200, "the head went out after the grace");
    assert!(wait_until(Duration::from_secs(10), || slow.calls() == 1));
    drop(c);
    let idle = || metric(&s, "portcullis_upstream_in_flight{upstream=\"slow\"}") == Some(0.0);
    assert!(
        wait_until(Duration::from_secs(10), idle),
        "the stream ended"
    );
    assert_eq!(spare.calls(), 0, "no failover for a client that left");
}
