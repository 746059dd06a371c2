//! A standalone mock of an OpenAI-compatible model server, for trying
//! portcullis without a real LLM. It serves what the relay forwards, shaped
//! as OpenAI sends it, so the official SDKs accept it through portcullis:
//! - `POST /v1/chat/completions` and `POST /v1/completions`: streamed word
//!   by word after a pause each (the first chat chunk names
//!   `delta.role`; with `stream_options.include_usage` a last chunk with
//!   empty `choices` carries `usage`; then `data: [DONE]`), or answered at
//!   once without `stream`;
//! - `POST /v1/responses`: a Responses API `response` object, or streamed
//!   as its named events (`response.created` ...
//!   `response.output_text.delta` ... `response.completed`);
//! - `POST /v1/embeddings`: one small vector per input;
//! - `GET /v1/models` (two models) and `GET /v1/models/{id}`.
//!
//! The same code is the fake upstream of the integration tests
//! (tests/support/fake_upstream.rs).
//!
//! Usage: `cargo run --example mock_upstream -- [ADDR] [DELAY_MS] [MODE]`
//! (defaults 127.0.0.1:11434, 150 and `slow`), then point portcullis at it:
//! `PORTCULLIS_UPSTREAM_BASE_URL=http://127.0.0.1:11434/v1`. MODE
//! `tiny:BYTES` answers non-streaming requests with a normal answer padded
//! to BYTES of tiny JSON values (`"pad":[0,0,...]`), for memory checks
//! (`scripts/body_memory.sh`).

#[path = "../tests/support/fake_upstream.rs"]
mod fake_upstream;

use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:11434".to_string());
    let delay_ms: u64 = args.next().and_then(|d| d.parse().ok()).unwrap_or(150);
    let mode = match args.next() {
        Some(m) if m.starts_with("tiny:") => fake_upstream::Mode::TinyValues {
            bytes: m["tiny:".len()..].parse().unwrap_or(7_864_320),
        },
        _ => fake_upstream::Mode::Slow {
            delay: Duration::from_millis(delay_ms),
        },
    };
    let fake = match fake_upstream::FakeUpstream::start_on(&addr, mode) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("mock_upstream: cannot listen on {}: {}", addr, e);
            std::process::exit(1);
        }
    };
    fake.set_tokens(&[
        "Hello",
        "!",
        " I",
        " am",
        " the",
        " mock",
        " upstream",
        ":",
        " every",
        " word",
        " arrives",
        " after",
        " a",
        " short",
        " pause",
        ".",
    ]);
    println!(
        "mock upstream listening on {} (base_url {}): POST /chat/completions, /completions, /responses, /embeddings; GET /models, /models/{{id}}",
        fake.addr,
        fake.base_url()
    );
    loop {
        std::thread::park();
    }
}
