//! A fake OpenAI-compatible upstream: a real HTTP/1.1 server on a real
//! socket (std `TcpListener`, one thread per connection), in the test
//! process. It answers according to its `Mode`:
//! - `POST /chat/completions` and `POST /completions`: JSON, or with
//!   `"stream": true` SSE chunks as OpenAI sends them (the first chat
//!   chunk names `delta.role`; with `stream_options.include_usage` a last
//!   chunk with empty `choices` carries `usage`), then `data: [DONE]`;
//! - `POST /responses`: a Responses API `response` object, or with
//!   `"stream": true` its named events (`response.created` ...
//!   `response.output_text.delta` ... `response.completed`, each `event:
//!   NAME` + `data: {"type":NAME,"sequence_number":N,...}`), so the
//!   official SDKs' stream helpers accept it;
//! - `POST /embeddings`: one embedding per input;
//! - `GET /models` and `GET /models/{id}` (`set_models`).
//!
//! Every mode applies to every route where it makes sense (`Error` and
//! `Hang` everywhere; `Garbage`, `Huge` and `TinyValues` to whole answers;
//! the streaming modes to every stream). It records every request
//! (headers and body), and notices when a client closes a connection
//! (`wait_closed`, `is_closed`) or leaves in the middle of a stream
//! (`abandoned`), which is how tests prove that portcullis stopped an
//! upstream request.
//!
//! Keep-alive works as in real servers: answers carry Content-Length or
//! chunked framing and the connection stays open for the next request, so
//! tests can count connections to check reuse (`connections`).
//!
//! A request whose text (see `steering_text`) holds `no-usage` is answered
//! without any `usage` (as some servers do), streamed or not; one holding
//! `litellm-usage` gets its stream's usage chunk in LiteLLM's shape (one
//! choice with an empty `delta` instead of no choice).
//!
//! `examples/mock_upstream.rs` includes this file to run it standalone.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How the fake answers.
#[derive(Clone, Debug)]
pub enum Mode {
    /// Answers at once (streamed token by token without delay).
    Normal,
    /// Streams tokens with `delay` before each (the head goes out at once).
    Slow { delay: Duration },
    /// Accepts and reads the request, never answers.
    Hang,
    /// Streams `tokens_before` tokens, then resets the connection (RST).
    ResetMidStream { tokens_before: usize },
    /// Answers `status` with `body` (e.g. a body holding secrets).
    Error { status: u16, body: String },
    /// 200 with a body that is not JSON (streaming: `data:` garbage).
    Garbage,
    /// 200 with a JSON answer whose content is `bytes` long.
    Huge { bytes: usize },
    /// 200 with a normal answer padded by `"pad":[0,0,...]` to about
    /// `bytes` (many tiny JSON values: the costliest shape for a tree).
    TinyValues { bytes: usize },
    /// Streams the tokens, then only `: keep-alive` comments every `every`
    /// (never a finish), until the client closes.
    KeepAlive { every: Duration },
    /// Streams content chunks of `chunk_bytes` as fast as the client takes
    /// them, without end (see `streamed_bytes`).
    Flood { chunk_bytes: usize },
    /// Answers with `tokens` instead of the shared ones (`set_tokens`),
    /// `delay` before each when streamed, and finishes with
    /// `finish_reason` ("length": cut at the length limit). Lets a test
    /// get a given answer (markdown, a hostile one, one cut short) on cue,
    /// usually as a `ByMessage` rule.
    Script {
        tokens: Vec<String>,
        delay: Duration,
        finish_reason: String,
    },
    /// Chosen per request by the text it asks about (the last message's
    /// content, else `input` or `prompt`, see `steering_text`): the mode of
    /// the first rule whose word it contains, else `default`. Lets a
    /// browser test steer the fake through what a person types ("slowly",
    /// "fail"), and an SDK test pick a refusal for one call.
    ByMessage {
        rules: Vec<(String, Mode)>,
        default: Box<Mode>,
    },
}

impl Mode {
    /// The mode that answers `req` (`ByMessage` resolved, others as is).
    fn for_request(self, req: &Recorded) -> Mode {
        let Mode::ByMessage { rules, default } = self else {
            return self;
        };
        let last = steering_text(&req.json());
        rules
            .into_iter()
            .find(|(word, _)| last.contains(word.as_str()))
            .map_or(*default, |(_, mode)| mode)
            .for_request(req)
    }

    /// How a complete answer in this mode ends.
    fn finish_reason(&self) -> &str {
        match self {
            Mode::Script { finish_reason, .. } => finish_reason,
            _ => "stop",
        }
    }

    /// The pause before each streamed token, if any.
    fn token_delay(&self) -> Option<Duration> {
        match self {
            Mode::Slow { delay } | Mode::Script { delay, .. } => Some(*delay),
            _ => None,
        }
    }
}

/// The text a request asks about: its last message's content (chat), its
/// `input` (a string, or the last item's content) or its `prompt`.
fn steering_text(body: &Value) -> String {
    let last_content = |list: &Value| {
        list.as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .map(str::to_string)
    };
    last_content(&body["messages"])
        .or_else(|| body["input"].as_str().map(str::to_string))
        .or_else(|| last_content(&body["input"]))
        .or_else(|| body["prompt"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Whether the answer to `body` carries `usage` (see the module doc).
fn sends_usage(body: &Value) -> bool {
    !steering_text(body).contains("no-usage")
}

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Which accepted connection carried it (0, 1, ...).
    pub conn: usize,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    /// When each streamed token was written and flushed.
    token_times: Vec<Instant>,
    accepted: usize,
    closed: Vec<usize>,
    /// Bytes of streamed bodies written so far (all connections).
    streamed_bytes: usize,
    /// Connections whose client left before a stream's end.
    abandoned: Vec<usize>,
}

struct Shared {
    mode: Mutex<Mode>,
    tokens: Mutex<Vec<String>>,
    /// The entries `GET /models` lists.
    models: Mutex<Vec<Value>>,
    state: Mutex<State>,
    changed: Condvar,
}

/// A running fake upstream. The listener thread lives as long as the
/// process (tests are short); connections end when clients close them.
#[derive(Clone)]
pub struct FakeUpstream {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl FakeUpstream {
    /// Starts on 127.0.0.1 with a free port.
    pub fn start(mode: Mode) -> FakeUpstream {
        Self::start_on("127.0.0.1:0", mode).expect("bind fake upstream")
    }

    pub fn start_on(addr: &str, mode: Mode) -> std::io::Result<FakeUpstream> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            tokens: Mutex::new(vec![
                "Hello".into(),
                " from".into(),
                " the".into(),
                " fake".into(),
                "!".into(),
            ]),
            models: Mutex::new(model_entries(&["fake-model", "other-model"])),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let id = {
                    let mut st = s.state.lock().unwrap();
                    st.accepted += 1;
                    st.accepted - 1
                };
                let s2 = s.clone();
                std::thread::spawn(move || {
                    serve_connection(&s2, conn, id);
                    let mut st = s2.state.lock().unwrap();
                    st.closed.push(id);
                    s2.changed.notify_all();
                });
            }
        });
        Ok(FakeUpstream { addr, shared })
    }

    /// `http://ADDR/v1`, the value for `[upstream] base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// The pieces a streamed answer is made of (joined: the whole answer).
    pub fn set_tokens(&self, tokens: &[&str]) {
        *self.shared.tokens.lock().unwrap() = tokens.iter().map(|t| t.to_string()).collect();
    }

    /// The ids `GET /models` lists, in order (default `fake-model`,
    /// `other-model`).
    pub fn set_models(&self, ids: &[&str]) {
        *self.shared.models.lock().unwrap() = model_entries(ids);
    }

    pub fn answer_text(&self) -> String {
        self.shared.tokens.lock().unwrap().concat()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// When each streamed token left the fake (for latency figures).
    pub fn token_times(&self) -> Vec<Instant> {
        self.shared.state.lock().unwrap().token_times.clone()
    }

    /// Whether the client closed connection `conn` (see `Recorded::conn`).
    pub fn is_closed(&self, conn: usize) -> bool {
        self.shared.state.lock().unwrap().closed.contains(&conn)
    }

    /// Whether the client of connection `conn` left in the middle of a
    /// streamed answer (before its last event).
    pub fn abandoned(&self, conn: usize) -> bool {
        self.shared.state.lock().unwrap().abandoned.contains(&conn)
    }

    /// Bytes of streamed answers written so far (SSE bodies).
    pub fn streamed_bytes(&self) -> usize {
        self.shared.state.lock().unwrap().streamed_bytes
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.state.lock().unwrap().accepted
    }

    /// Waits until at least `n` requests arrived.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait(timeout, |st| st.requests.len() >= n)
    }

    /// Waits until the connection that carried the latest request is closed
    /// by the client. Returns how long that took from the call, or None.
    pub fn wait_closed(&self, timeout: Duration) -> Option<Duration> {
        let t = Instant::now();
        self.wait(timeout, |st| {
            st.requests
                .last()
                .is_some_and(|r| st.closed.contains(&r.conn))
        })
        .then(|| t.elapsed())
    }

    fn wait(&self, timeout: Duration, cond: impl Fn(&State) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.state.lock().unwrap();
        loop {
            if cond(&st) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st = self.shared.changed.wait_timeout(st, left).unwrap().0;
        }
    }
}

/// Reads one request head and body; None when the client closed. The
/// tests' own purpose-built upstreams read requests with it too.
pub fn read_request(r: &mut BufReader<TcpStream>, conn: usize) -> Option<Recorded> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        if r.read_line(&mut l).ok()? == 0 {
            return None;
        }
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Recorded {
        method,
        path,
        headers,
        body,
        conn,
    })
}

fn serve_connection(shared: &Shared, conn: TcpStream, id: usize) {
    let _ = conn.set_nodelay(true);
    let Ok(write_half) = conn.try_clone() else {
        return;
    };
    let mut w = write_half;
    let mut r = BufReader::new(conn);
    loop {
        // `idle` leaves a read timeout behind; a keep-alive wait has none.
        let _ = r.get_ref().set_read_timeout(None);
        let Some(req) = read_request(&mut r, id) else {
            break;
        };
        {
            let mut st = shared.state.lock().unwrap();
            st.requests.push(req.clone());
            shared.changed.notify_all();
        }
        let mode = shared.mode.lock().unwrap().clone().for_request(&req);
        let tokens = match &mode {
            Mode::Script { tokens, .. } => tokens.clone(),
            _ => shared.tokens.lock().unwrap().clone(),
        };
        let keep_going = answer(shared, &mut w, r.get_ref(), &req, &mode, &tokens);
        if !keep_going {
            break;
        }
    }
    // Wait for the client to close its side (what tests observe), unless
    // we reset or it is already gone.
    let _ = r.get_ref().set_read_timeout(None);
    let mut buf = [0u8; 1024];
    while matches!(r.read(&mut buf), Ok(n) if n > 0) {}
}

/// Sleeps `d`, returning early (false) when the client closes the socket.
fn idle(sock: &TcpStream, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    let mut buf = [0u8; 64];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        match sock.peek(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {
                // Unexpected bytes while streaming: ignore, keep waiting.
                std::thread::sleep(left.min(Duration::from_millis(10)));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return false,
        }
    }
}

fn reset(sock: &TcpStream) {
    use std::os::unix::io::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = sock.shutdown(std::net::Shutdown::Both);
}

/// A normal chat answer with `content`, padded to about `bytes` with
/// `"pad":[0,0,...]`.
pub fn tiny_values_answer(content: &str, bytes: usize) -> Vec<u8> {
    let whole = whole_answer(Api::Chat, &Value::Null, content);
    pad_with_tiny_values(whole.to_string().into_bytes(), bytes)
}

fn model_entries(ids: &[&str]) -> Vec<Value> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| json!({"id": id, "object": "model", "created": 1_700_000_000 + i as i64, "owned_by": "fake"}))
        .collect()
}

fn write_json(w: &mut TcpStream, status: u16, body: &[u8]) -> bool {
    let head = format!(
        "HTTP/1.1 {} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        status,
        body.len()
    );
    w.write_all(head.as_bytes())
        .and_then(|_| w.write_all(body))
        .and_then(|_| w.flush())
        .is_ok()
}

/// One chunk of a chunked body, flushed.
fn write_chunk(w: &mut TcpStream, data: &str) -> bool {
    let text = format!("{:x}\r\n{}\r\n", data.len(), data);
    w.write_all(text.as_bytes()).and_then(|_| w.flush()).is_ok()
}

/// The routes the fake serves (paths end with these; the base URL's
/// `/v1` comes before).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
    Embeddings,
    Responses,
}

impl Api {
    fn of(req: &Recorded) -> Option<Api> {
        if req.method != "POST" {
            return None;
        }
        let path = req.path.split('?').next().unwrap_or("");
        [
            ("/chat/completions", Api::Chat),
            ("/completions", Api::Completions),
            ("/embeddings", Api::Embeddings),
            ("/responses", Api::Responses),
        ]
        .into_iter()
        .find(|(suffix, _)| path.ends_with(suffix))
        .map(|(_, api)| api)
    }
}

const USAGE_PROMPT: u64 = 7;
const USAGE_COMPLETION: u64 = 5;

fn chat_usage() -> Value {
    json!({"prompt_tokens": USAGE_PROMPT, "completion_tokens": USAGE_COMPLETION, "total_tokens": USAGE_PROMPT + USAGE_COMPLETION})
}

fn responses_usage() -> Value {
    json!({
        "input_tokens": USAGE_PROMPT,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": USAGE_COMPLETION,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": USAGE_PROMPT + USAGE_COMPLETION,
    })
}

/// A whole (non-streaming) answer of `api` whose text is `content`.
fn whole_answer(api: Api, req: &Value, content: &str) -> Value {
    match api {
        Api::Chat => json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": chat_usage(),
        }),
        Api::Completions => json!({
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": 1_700_000_000,
            "model": "fake-model",
            "choices": [{"text": content, "index": 0, "logprobs": null, "finish_reason": "stop"}],
            "usage": chat_usage(),
        }),
        Api::Embeddings => embeddings_answer(req),
        Api::Responses => response_object("completed", Some(content)),
    }
}

/// An embedding per input (`input` a string: one; an array: one per
/// element), each a few floats derived from its index.
fn embeddings_answer(req: &Value) -> Value {
    let count = match &req["input"] {
        Value::Array(items) => items.len(),
        _ => 1,
    };
    let data: Vec<Value> = (0..count)
        .map(|i| {
            let base = i as f64;
            json!({"object": "embedding", "index": i, "embedding": [0.25 + base, -0.5, 0.125, base / 8.0]})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": req["model"].as_str().unwrap_or("fake-model"),
        "usage": {"prompt_tokens": USAGE_PROMPT, "total_tokens": USAGE_PROMPT},
    })
}

const RESPONSE_ID: &str = "resp_fake";
const MESSAGE_ID: &str = "msg_fake";

/// The Responses API's message item holding `text` (None: no content yet).
fn message_item(status: &str, text: Option<&str>) -> Value {
    let content = match text {
        Some(t) => json!([output_text_part(t)]),
        None => json!([]),
    };
    json!({"id": MESSAGE_ID, "type": "message", "status": status, "role": "assistant", "content": content})
}

fn output_text_part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

/// A Responses API `response` object; with `text`, its output is one
/// message holding it, and it carries usage.
fn response_object(status: &str, text: Option<&str>) -> Value {
    let done = text.is_some();
    json!({
        "id": RESPONSE_ID,
        "object": "response",
        "created_at": 1_700_000_000,
        "status": status,
        "error": null,
        "incomplete_details": null,
        "instructions": null,
        "max_output_tokens": null,
        "model": "fake-model",
        "output": match text {
            Some(t) => json!([message_item("completed", Some(t))]),
            None => json!([]),
        },
        "parallel_tool_calls": true,
        "previous_response_id": null,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": if done { responses_usage() } else { Value::Null },
        "metadata": {},
    })
}

/// `body` (a JSON object's text) padded to about `bytes` with
/// `"pad":[0,0,...]`.
fn pad_with_tiny_values(mut out: Vec<u8>, bytes: usize) -> Vec<u8> {
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"pad\":[0");
    while out.len() + 3 < bytes {
        out.extend_from_slice(b",0");
    }
    out.extend_from_slice(b"]}");
    out
}

/// How a streamed answer ended.
enum Streamed {
    /// Every event went out (the body is complete).
    Complete,
    /// The fake reset the connection on purpose (`ResetMidStream`).
    Reset,
    /// The client went away before the end.
    ClientGone,
}

/// The events of one streamed answer in the upstream's own framing: chat
/// and text completions as `data: {chunk}` ending with `data: [DONE]`,
/// the Responses API as named events (`event: NAME` + `data:
/// {"type":NAME,"sequence_number":N,...}`) ending with
/// `response.completed`, as OpenAI sends them.
struct Events {
    api: Api,
    /// `stream_options.include_usage`: a last chunk with empty `choices`
    /// and `usage` before `[DONE]` (else usage rides on the finish chunk,
    /// as llama.cpp sends it).
    include_usage: bool,
    /// Whether any usage is sent (`sends_usage`).
    usage: bool,
    /// The usage chunk as LiteLLM sends it (see the module doc).
    litellm: bool,
    /// The finish chunk's `finish_reason` (`Mode::finish_reason`).
    finish_reason: String,
    sequence: u64,
    text: String,
    role_sent: bool,
}

impl Events {
    fn new(api: Api, req: &Value, finish_reason: &str) -> Events {
        Events {
            api,
            finish_reason: finish_reason.to_string(),
            include_usage: req["stream_options"]["include_usage"] == json!(true),
            usage: sends_usage(req),
            litellm: steering_text(req).contains("litellm-usage"),
            sequence: 0,
            text: String::new(),
            role_sent: false,
        }
    }

    fn named(&mut self, name: &str, mut fields: Value) -> String {
        fields["type"] = json!(name);
        fields["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        format!("event: {}\ndata: {}\n\n", name, fields)
    }

    fn chunk(&mut self, content: Option<&str>, finish: Option<&str>) -> String {
        let mut v = match self.api {
            Api::Completions => json!({
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": 1_700_000_000,
                "model": "fake-model",
                "choices": [{"text": content.unwrap_or(""), "index": 0, "logprobs": null, "finish_reason": finish}],
            }),
            _ => {
                let mut delta = json!({});
                // The first chunk names the role, as OpenAI's does (the
                // Node SDK's stream helper needs it).
                if !self.role_sent {
                    delta["role"] = json!("assistant");
                    self.role_sent = true;
                }
                if let Some(c) = content {
                    delta["content"] = json!(c);
                }
                json!({
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 1_700_000_000,
                    "model": "fake-model",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                })
            }
        };
        if finish.is_some() && !self.include_usage && self.usage {
            v["usage"] = chat_usage();
        }
        format!("data: {}\n\n", v)
    }

    /// What precedes the first token.
    fn opening(&mut self) -> Vec<String> {
        if self.api != Api::Responses {
            return Vec::new();
        }
        vec![
            self.named(
                "response.created",
                json!({"response": response_object("in_progress", None)}),
            ),
            self.named(
                "response.in_progress",
                json!({"response": response_object("in_progress", None)}),
            ),
            self.named(
                "response.output_item.added",
                json!({"output_index": 0, "item": message_item("in_progress", None)}),
            ),
            self.named(
                "response.content_part.added",
                json!({"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0, "part": output_text_part("")}),
            ),
        ]
    }

    fn token(&mut self, t: &str) -> String {
        self.text.push_str(t);
        match self.api {
            Api::Responses => self.named(
                "response.output_text.delta",
                json!({"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0, "delta": t, "logprobs": []}),
            ),
            _ => self.chunk(Some(t), None),
        }
    }

    /// What follows the last token, the end marker included.
    fn closing(&mut self) -> Vec<String> {
        let text = self.text.clone();
        match self.api {
            Api::Responses => vec![
                self.named(
                    "response.output_text.done",
                    json!({"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0, "text": text, "logprobs": []}),
                ),
                self.named(
                    "response.content_part.done",
                    json!({"item_id": MESSAGE_ID, "output_index": 0, "content_index": 0, "part": output_text_part(&text)}),
                ),
                self.named(
                    "response.output_item.done",
                    json!({"output_index": 0, "item": message_item("completed", Some(&text))}),
                ),
                {
                    let mut response = response_object("completed", Some(&text));
                    if !self.usage {
                        response["usage"] = Value::Null;
                    }
                    self.named("response.completed", json!({ "response": response }))
                },
            ],
            _ => {
                let finish = self.finish_reason.clone();
                let mut out = vec![self.chunk(None, Some(&finish))];
                if self.include_usage && self.usage {
                    let object = match self.api {
                        Api::Completions => "text_completion",
                        _ => "chat.completion.chunk",
                    };
                    let last = json!({
                        "id": "chatcmpl-fake",
                        "object": object,
                        "created": 1_700_000_000,
                        "model": "fake-model",
                        "choices": if self.litellm { json!([{"index": 0, "delta": {}}]) } else { json!([]) },
                        "usage": chat_usage(),
                    });
                    out.push(format!("data: {}\n\n", last));
                }
                out.push("data: [DONE]\n\n".to_string());
                out
            }
        }
    }

    /// An event that is not JSON, in this API's framing.
    fn garbage(&self) -> Vec<String> {
        match self.api {
            Api::Responses => {
                vec!["event: response.output_text.delta\ndata: {not json at all\n\n".into()]
            }
            _ => vec![
                "data: {not json at all\n\n".into(),
                "data: [DONE]\n\n".into(),
            ],
        }
    }
}

/// Answers one request; false when the connection must end.
fn answer(
    shared: &Shared,
    w: &mut TcpStream,
    sock: &TcpStream,
    req: &Recorded,
    mode: &Mode,
    tokens: &[String],
) -> bool {
    if let Mode::Hang = mode {
        // Never answer; notice the close.
        idle(sock, Duration::from_secs(3600));
        return false;
    }
    if let Mode::Error { status, body } = mode {
        return write_json(w, *status, body.as_bytes());
    }
    let path = req.path.split('?').next().unwrap_or("");
    if req.method == "GET" && path.ends_with("/models") {
        let data = shared.models.lock().unwrap().clone();
        let list = json!({"object": "list", "data": data});
        return write_json(w, 200, list.to_string().as_bytes());
    }
    if let (true, Some((_, id))) = (req.method == "GET", path.split_once("/models/")) {
        let id = percent_decode(id);
        let models = shared.models.lock().unwrap().clone();
        return match models.iter().find(|m| m["id"] == id.as_str()) {
            Some(m) => write_json(w, 200, m.to_string().as_bytes()),
            None => write_json(
                w,
                404,
                json!({"error": {"message": format!("The model `{}` does not exist", id), "type": "invalid_request_error", "param": null, "code": "model_not_found"}}).to_string().as_bytes(),
            ),
        };
    }
    let Some(api) = Api::of(req) else {
        return write_json(w, 404, br#"{"error":{"message":"no such route"}}"#);
    };
    let body = req.json();
    let stream = api != Api::Embeddings && body["stream"] == json!(true);
    if !stream {
        let content = match mode {
            Mode::Garbage => return write_json(w, 200, b"<html>surprise, not JSON</html>"),
            Mode::Huge { bytes } => "x".repeat(*bytes),
            Mode::TinyValues { bytes } => {
                let whole = whole_answer(api, &body, &tokens.concat());
                let padded = pad_with_tiny_values(whole.to_string().into_bytes(), *bytes);
                return write_json(w, 200, &padded);
            }
            _ => tokens.concat(),
        };
        let mut whole = whole_answer(api, &body, &content);
        if let Some(reason) = whole.pointer_mut("/choices/0/finish_reason") {
            *reason = json!(mode.finish_reason());
        }
        if !sends_usage(&body) {
            whole.as_object_mut().map(|o| o.remove("usage"));
        }
        return write_json(w, 200, whole.to_string().as_bytes());
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    if w.write_all(head.as_bytes())
        .and_then(|_| w.flush())
        .is_err()
    {
        return false;
    }
    let events = Events::new(api, &body, mode.finish_reason());
    match stream_events(shared, w, sock, mode, tokens, events) {
        Streamed::Complete => true,
        Streamed::Reset => false,
        Streamed::ClientGone => {
            let mut st = shared.state.lock().unwrap();
            st.abandoned.push(req.conn);
            shared.changed.notify_all();
            false
        }
    }
}

/// Writes a streamed answer's events (the head is out) as `mode` says.
fn stream_events(
    shared: &Shared,
    w: &mut TcpStream,
    sock: &TcpStream,
    mode: &Mode,
    tokens: &[String],
    mut events: Events,
) -> Streamed {
    let send = |w: &mut TcpStream, evs: Vec<String>| evs.iter().all(|ev| write_chunk(w, ev));
    if let Mode::Garbage = mode {
        let evs = events.garbage();
        return if send(w, evs) && write_chunk(w, "") {
            Streamed::Complete
        } else {
            Streamed::ClientGone
        };
    }
    let opening = events.opening();
    if !send(w, opening) {
        return Streamed::ClientGone;
    }
    if let Mode::Flood { chunk_bytes } = mode {
        let x = "x".repeat(*chunk_bytes);
        loop {
            let ev = events.token(&x);
            events.text.clear();
            if !write_chunk(w, &ev) {
                return Streamed::ClientGone;
            }
            shared.state.lock().unwrap().streamed_bytes += ev.len();
        }
    }
    for (i, t) in tokens.iter().enumerate() {
        if let Mode::ResetMidStream { tokens_before } = mode {
            if i == *tokens_before {
                reset(sock);
                return Streamed::Reset;
            }
        }
        if let Some(delay) = mode.token_delay() {
            if !idle(sock, delay) {
                return Streamed::ClientGone;
            }
        }
        let ev = events.token(t);
        shared
            .state
            .lock()
            .unwrap()
            .token_times
            .push(Instant::now());
        if !write_chunk(w, &ev) {
            return Streamed::ClientGone;
        }
    }
    if let Mode::ResetMidStream { .. } = mode {
        reset(sock);
        return Streamed::Reset;
    }
    if let Mode::KeepAlive { every } = mode {
        loop {
            if !idle(sock, *every) || !write_chunk(w, ": keep-alive\n\n") {
                return Streamed::ClientGone;
            }
        }
    }
    let closing = events.closing();
    if send(w, closing) && write_chunk(w, "") {
        Streamed::Complete
    } else {
        Streamed::ClientGone
    }
}

/// `%XX` escapes decoded (model ids with `/` arrive as `%2F`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
