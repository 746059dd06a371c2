//! A fake OpenAI-compatible upstream: a real HTTP/1.1 server on a real
//! socket (std `TcpListener`, one thread per connection), in the test
//! process. It answers `POST /chat/completions` (JSON, or SSE with
//! `"stream": true`) and `GET /models` according to its `Mode`, records
//! every request (headers and body), and notices when a client closes a
//! connection (`wait_closed`), which is how tests prove that portcullis
//! stopped an upstream request.
//!
//! Keep-alive works as in real servers: answers carry Content-Length or
//! chunked framing and the connection stays open for the next request, so
//! tests can count connections to check reuse (`connections`).
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
    /// Chosen per request by the text of its last message: the mode of the
    /// first rule whose word it contains, else `default`. Lets a browser
    /// test steer the fake through what a person types ("slowly", "fail").
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
        let body = req.json();
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string();
        rules
            .into_iter()
            .find(|(word, _)| last.contains(word.as_str()))
            .map_or(*default, |(_, mode)| mode)
            .for_request(req)
    }
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
}

struct Shared {
    mode: Mutex<Mode>,
    tokens: Mutex<Vec<String>>,
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

/// Reads one request head and body; None when the client closed.
fn read_request(r: &mut BufReader<TcpStream>, conn: usize) -> Option<Recorded> {
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
        let tokens = shared.tokens.lock().unwrap().clone();
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

fn chunk_json(content: Option<&str>, finish: Option<&str>) -> Value {
    let delta = match content {
        Some(c) => json!({"content": c}),
        None => json!({}),
    };
    let mut v = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    if finish.is_some() {
        v["usage"] = json!({"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12});
    }
    v
}

/// A normal answer with `content`, padded to about `bytes` with
/// `"pad":[0,0,...]`.
pub fn tiny_values_answer(content: &str, bytes: usize) -> Vec<u8> {
    let mut out = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "fake-model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
    })
    .to_string()
    .into_bytes();
    out.pop(); // the closing brace
    out.extend_from_slice(b",\"pad\":[0");
    while out.len() + 3 < bytes {
        out.extend_from_slice(b",0");
    }
    out.extend_from_slice(b"]}");
    out
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
    if req.method == "GET" && req.path.ends_with("/models") {
        let list = json!({"object": "list", "data": [
            {"id": "fake-model", "object": "model", "created": 1_700_000_000, "owned_by": "fake"},
            {"id": "other-model", "object": "model", "created": 1_700_000_001, "owned_by": "fake"},
        ]});
        return write_json(w, 200, list.to_string().as_bytes());
    }
    if !(req.method == "POST" && req.path.ends_with("/chat/completions")) {
        return write_json(w, 404, br#"{"error":{"message":"no such route"}}"#);
    }
    let stream = req.json()["stream"] == json!(true);
    if !stream {
        let content = match mode {
            Mode::Garbage => return write_json(w, 200, b"<html>surprise, not JSON</html>"),
            Mode::Huge { bytes } => "x".repeat(*bytes),
            Mode::TinyValues { bytes } => {
                return write_json(w, 200, &tiny_values_answer(&tokens.concat(), *bytes))
            }
            _ => tokens.concat(),
        };
        let body = json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "fake-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
        });
        return write_json(w, 200, body.to_string().as_bytes());
    }
    let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
    if w.write_all(head.as_bytes())
        .and_then(|_| w.flush())
        .is_err()
    {
        return false;
    }
    if let Mode::Flood { chunk_bytes } = mode {
        let ev = format!(
            "data: {}\n\n",
            chunk_json(Some(&"x".repeat(*chunk_bytes)), None)
        );
        loop {
            if !write_chunk(w, &ev) {
                return false;
            }
            shared.state.lock().unwrap().streamed_bytes += ev.len();
        }
    }
    if let Mode::Garbage = mode {
        return write_chunk(w, "data: {not json at all\n\n")
            && write_chunk(w, "data: [DONE]\n\n")
            && write_chunk(w, "");
    }
    for (i, t) in tokens.iter().enumerate() {
        if let Mode::ResetMidStream { tokens_before } = mode {
            if i == *tokens_before {
                reset(sock);
                return false;
            }
        }
        if let Mode::Slow { delay } = mode {
            if !idle(sock, *delay) {
                return false;
            }
        }
        let ev = format!("data: {}\n\n", chunk_json(Some(t), None));
        shared
            .state
            .lock()
            .unwrap()
            .token_times
            .push(Instant::now());
        if !write_chunk(w, &ev) {
            return false;
        }
    }
    if let Mode::ResetMidStream { .. } = mode {
        reset(sock);
        return false;
    }
    if let Mode::KeepAlive { every } = mode {
        loop {
            if !idle(sock, *every) || !write_chunk(w, ": keep-alive\n\n") {
                return false;
            }
        }
    }
    let fin = format!("data: {}\n\n", chunk_json(None, Some("stop")));
    write_chunk(w, &fin) && write_chunk(w, "data: [DONE]\n\n") && write_chunk(w, "")
}
