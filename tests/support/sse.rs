//! A raw streaming client for the SSE routes (`/api/chat`, `/v1/chat/completions`
//! with `stream: true`): sends one POST, reads the head, then frames.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The origin the page would send (in the default `allowed_origins`).
pub const ORIGIN: &str = "http://localhost:3000";

/// One SSE frame as a client sees it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub event: Option<String>,
    pub data: String,
    pub comment: bool,
    pub at: Instant,
}

/// A raw streaming client: sends one POST, reads the head, then frames.
pub struct SseClient {
    pub r: BufReader<TcpStream>,
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

impl SseClient {
    /// As a browser page would (an allowed Origin, no key).
    pub fn open(addr: SocketAddr, path: &str, body: &Value) -> SseClient {
        Self::open_as(addr, path, None, body)
    }

    /// With `key`, as a program would (a Bearer key, no Origin); without,
    /// as a browser page (an allowed Origin).
    pub fn open_as(addr: SocketAddr, path: &str, key: Option<&str>, body: &Value) -> SseClient {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = body.to_string();
        let auth = match key {
            Some(k) => format!("Authorization: Bearer {}\r\n", k),
            None => format!("Origin: {}\r\n", ORIGIN),
        };
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: localhost\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            path,
            auth,
            body.len(),
            body
        );
        (&s).write_all(head.as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).unwrap();
            let l = l.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
        SseClient { r, status, headers }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The rest of a non-stream answer (Content-Length framed).
    pub fn body_json(&mut self) -> Value {
        let len: usize = self
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut b = vec![0; len];
        self.r.read_exact(&mut b).unwrap();
        serde_json::from_slice(&b).unwrap()
    }

    /// The next frame (comments are frames too); None at the end of the
    /// stream or after `timeout`.
    pub fn next(&mut self, timeout: Duration) -> Option<Frame> {
        self.r.get_ref().set_read_timeout(Some(timeout)).unwrap();
        let (mut event, mut data, mut comment) = (None, None::<String>, false);
        loop {
            let mut l = String::new();
            match self.r.read_line(&mut l) {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
            let l = l.trim_end_matches('\n');
            if l.is_empty() {
                if data.is_some() || comment || event.is_some() {
                    return Some(Frame {
                        event,
                        data: data.unwrap_or_default(),
                        comment,
                        at: Instant::now(),
                    });
                }
                continue;
            }
            if l.starts_with(':') {
                comment = true;
                data = Some(l.to_string());
            } else if let Some(v) = l.strip_prefix("data: ") {
                data = Some(v.to_string());
            } else if let Some(v) = l.strip_prefix("event: ") {
                event = Some(v.to_string());
            } else {
                panic!("unexpected SSE line {:?}", l);
            }
        }
    }

    /// The `(event, data)` of every frame but comments until the stream
    /// ends (at most `timeout` in all).
    pub fn events(&mut self, timeout: Duration) -> Vec<(Option<String>, String)> {
        self.all(timeout)
            .into_iter()
            .filter(|f| !f.comment)
            .map(|f| (f.event, f.data))
            .collect()
    }

    /// Every frame until the stream ends (at most `timeout` in all).
    pub fn all(&mut self, timeout: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while let Some(f) = self.next(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ) {
            out.push(f);
        }
        out
    }
}
