//! Helpers shared by the chat and relay tests: a server pointed at a fake
//! upstream, requests, and leak checks.

use std::net::TcpListener;

use serde_json::{json, Value};

use super::fake_upstream::FakeUpstream;
use super::sse::Frame;
use super::{Opts, Resp, Server};

pub const UPSTREAM_KEY: &str = "sk-test-UPSTREAMKEY-0123456789";
pub const UPSTREAM_SECRET: &str = "sk-UPSTREAMSECRET";

pub fn opts_for(base_url: &str) -> Opts {
    Opts::new()
        .no_auth()
        .env("PORTCULLIS_UPSTREAM_BASE_URL", base_url)
        .env("PORTCULLIS_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "10000")
        .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "10000")
}

pub fn start(up: &FakeUpstream) -> Server {
    Server::start(opts_for(&up.base_url()))
}

/// A base URL where nothing listens (a port we bound and released).
pub fn refused_base_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{}/v1", addr)
}

pub fn user_says(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

pub fn post(s: &Server, path: &str, body: &Value) -> Resp {
    s.json("POST", path, None, body)
}

/// The server log and a client body must never hold upstream credentials.
pub fn assert_no_leak(s: &Server, bodies: &[&str]) {
    let _every_line_is_json = s.log_json();
    let log = s.log_text();
    for needle in [UPSTREAM_KEY, UPSTREAM_SECRET] {
        assert!(!log.contains(needle), "{} in the server log", needle);
        for b in bodies {
            assert!(!b.contains(needle), "{} in a client body: {}", needle, b);
        }
    }
}

pub fn data_json(f: &Frame) -> Value {
    serde_json::from_str(&f.data).unwrap_or_else(|e| panic!("{:?}: {}", f, e))
}
