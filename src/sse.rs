//! Server-sent events, both ways: framing what we send to clients (named
//! events for `/api/chat`, bare `data:` lines for the OpenAI relay, `: ping`
//! comments), parsing what the upstream streams to us, and `pump`, the loop
//! a stream thread runs between the upstream reader and the client socket.
//!
//! Every write is flushed at once: `StreamOut` is the raw connection writer,
//! so an event leaves the process when its `flush` returns. Event payloads
//! are serialised JSON, which never holds a raw newline, so no text from the
//! upstream or the user can forge an extra SSE line.

use std::io::{self, Write};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http::StreamOut;
use crate::upstream::{StreamEvent, StreamHandle};

/// Run first on a stream's thread (never a worker): waits up to `grace`
/// for the upstream to accept. A failure by then is answered as the
/// contract's plain JSON error with its real status (logged and counted)
/// and its code returned: the stream is over. Otherwise the 200 head goes
/// out now, and pings cover any further silence. `before_answer` runs
/// before a failure is answered (to store it), so a client that acts on the
/// answer finds the failure already recorded.
pub fn open_or_fail(
    out: &mut StreamOut,
    handle: &mut StreamHandle,
    grace: Duration,
    metrics: &crate::metrics::Metrics,
    before_answer: impl FnOnce(),
) -> Option<&'static str> {
    answer_opening(out, handle.wait_opened(grace), metrics, before_answer)
}

/// As `open_or_fail`, for a caller that waited itself
/// (`StreamHandle::wait_opened`), to look at a refusal first (`/api/chat`
/// retries one for the context size with less history).
pub fn answer_opening(
    out: &mut StreamOut,
    opened: Result<bool, crate::error::ApiError>,
    metrics: &crate::metrics::Metrics,
    before_answer: impl FnOnce(),
) -> Option<&'static str> {
    if let Err(e) = opened {
        if !out.started() {
            before_answer();
        }
        if out.fail_before_start(&e) {
            crate::upstream::log_failure(&e);
            metrics.record_upstream_error(e.code());
            return Some(e.code());
        }
    }
    let _ = out.flush();
    None
}

/// Longest line accepted from the upstream; a longer one is garbage.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// How often a stream thread wakes to look for a hung-up client (and to
/// send pings) while the upstream is silent. Bounds how late a disconnect
/// is noticed.
pub const TICK: Duration = Duration::from_millis(100);

/// A streamed `text/event-stream` reply with the contract's headers:
/// `Cache-Control: no-store` and `X-Accel-Buffering: no` (so nginx does not
/// buffer events).
pub fn reply(run: crate::http::StreamFn) -> crate::http::Reply {
    crate::http::Reply::stream(200, "text/event-stream", run)
        .with_header("Cache-Control", "no-store")
        .with_header("X-Accel-Buffering", "no")
}

/// `event: NAME\ndata: JSON\n\n`, flushed.
pub fn event(out: &mut dyn Write, name: &str, data: &Value) -> io::Result<()> {
    let text = format!("event: {}\ndata: {}\n\n", name, data);
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// `data: JSON\n\n`, flushed (OpenAI's framing).
pub fn data(out: &mut dyn Write, data: &Value) -> io::Result<()> {
    let text = format!("data: {}\n\n", data);
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// `data: JSON\n\n`, flushed, where `json` is JSON text relayed as
/// received. Line ends in it can only be whitespace between tokens (JSON
/// strings cannot hold a raw one), so they become spaces: the text stays
/// the same JSON and cannot forge an SSE line.
pub fn data_raw(out: &mut dyn Write, json: &str) -> io::Result<()> {
    out.write_all(b"data: ")?;
    if json.contains(['\n', '\r']) {
        out.write_all(json.replace(['\n', '\r'], " ").as_bytes())?;
    } else {
        out.write_all(json.as_bytes())?;
    }
    out.write_all(b"\n\n")?;
    out.flush()
}

/// As `data_raw`, preceded by `event: NAME` when a name is given. A name
/// that is not a plain token (letters, digits, `._-`) is left out rather
/// than relayed, so it cannot forge SSE lines either.
pub fn event_raw(out: &mut dyn Write, name: Option<&str>, json: &str) -> io::Result<()> {
    if let Some(name) = name.filter(|n| {
        !n.is_empty()
            && n.len() <= 128
            && n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    }) {
        out.write_all(b"event: ")?;
        out.write_all(name.as_bytes())?;
        out.write_all(b"\n")?;
    }
    data_raw(out, json)
}

/// `data: [DONE]\n\n`, flushed: the end of an OpenAI stream.
pub fn done_marker(out: &mut dyn Write) -> io::Result<()> {
    out.write_all(b"data: [DONE]\n\n")?;
    out.flush()
}

/// `: ping\n\n`, flushed: keeps proxies and clients from timing out while
/// the upstream is silent. SSE clients ignore comment lines.
pub fn ping(out: &mut dyn Write) -> io::Result<()> {
    out.write_all(b": ping\n\n")?;
    out.flush()
}

/// One parsed upstream event: its `data` lines joined by `\n`.
#[derive(Debug, PartialEq, Eq)]
pub struct Incoming {
    pub event: Option<String>,
    pub data: String,
}

/// An incremental SSE parser (the WHATWG rules we need: `data:` lines
/// accumulate, a blank line dispatches, `:` lines are comments, an optional
/// space after the colon is dropped, CRLF or LF line ends).
#[derive(Default)]
pub struct Parser {
    event: Option<String>,
    data: Option<String>,
}

impl Parser {
    /// Feeds one line (without its line end). Returns an event when the line
    /// completes one.
    pub fn line(&mut self, line: &str) -> Option<Incoming> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.is_empty() {
            return self.dispatch();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
        None
    }

    /// The event still pending when the stream ends without a blank line.
    pub fn finish(&mut self) -> Option<Incoming> {
        self.dispatch()
    }

    fn dispatch(&mut self) -> Option<Incoming> {
        let event = self.event.take();
        self.data.take().map(|data| Incoming { event, data })
    }
}

/// How a pumped stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PumpEnd {
    /// The handler said the stream is complete (or failed and said so).
    Finished,
    /// The client hung up or a write failed; the upstream was aborted.
    ClientGone,
}

/// What the handler wants after an event.
pub enum Flow {
    Continue,
    Stop,
}

/// The time limits of one pumped stream.
pub struct PumpLimits {
    /// `: ping` after this long without a write (`ping_interval_s`).
    pub ping_every: Duration,
    /// The stream ends here, however lively the upstream (`max_stream_s`,
    /// counted from the stream's start).
    pub deadline: Instant,
}

/// Runs a stream: forwards upstream events to `on_event` as they arrive,
/// sends `: ping` after `ping_every` without a write, and watches for the
/// client hanging up (every `TICK`) even while the upstream is silent. A
/// client that is gone (probe or failed write, which `StreamOut` fails
/// after `write_timeout_s` without progress) aborts the upstream request at
/// once and ends the pump with `ClientGone`. At `deadline` the upstream is
/// aborted and `on_event` gets `Failed(upstream_timeout)`, so the client
/// hears of it as of any other mid-stream failure.
pub fn pump(
    out: &mut StreamOut,
    upstream: &mut StreamHandle,
    limits: &PumpLimits,
    mut on_event: impl FnMut(&mut StreamOut, StreamEvent) -> io::Result<Flow>,
) -> PumpEnd {
    let mut last_write = Instant::now();
    loop {
        if Instant::now() >= limits.deadline {
            upstream.abort();
            let err = crate::error::ApiError::UpstreamTimeout {
                detail: "stream lasted longer than max_stream_s".into(),
            };
            return match on_event(out, StreamEvent::Failed(err)) {
                Ok(_) => PumpEnd::Finished,
                Err(_) => PumpEnd::ClientGone,
            };
        }
        match upstream.recv_timeout(TICK) {
            Ok(ev) => {
                let wrote = !matches!(ev, StreamEvent::Opened);
                match on_event(out, ev) {
                    Ok(Flow::Continue) => {}
                    Ok(Flow::Stop) => return PumpEnd::Finished,
                    Err(_) => {
                        upstream.abort();
                        return PumpEnd::ClientGone;
                    }
                }
                if wrote {
                    last_write = Instant::now();
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // The reader always sends a final event; this is a bug guard.
                return PumpEnd::Finished;
            }
        }
        if out.client_gone() {
            upstream.abort();
            return PumpEnd::ClientGone;
        }
        if last_write.elapsed() >= limits.ping_every {
            if ping(out).is_err() {
                upstream.abort();
                return PumpEnd::ClientGone;
            }
            last_write = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(text: &str) -> Vec<Incoming> {
        let mut p = Parser::default();
        let mut out: Vec<Incoming> = text.split('\n').filter_map(|l| p.line(l)).collect();
        out.extend(p.finish());
        out
    }

    #[test]
    fn parser_table() {
        let ev = |e: Option<&str>, d: &str| Incoming {
            event: e.map(str::to_string),
            data: d.to_string(),
        };
        let cases: Vec<(&str, Vec<Incoming>)> = vec![
            ("data: {\"a\":1}\n\n", vec![ev(None, "{\"a\":1}")]),
            ("data:x\r\n\r\n", vec![ev(None, "x")]),
            (": ping\n\ndata: [DONE]\n\n", vec![ev(None, "[DONE]")]),
            (
                "event: error\ndata: a\ndata: b\n\n",
                vec![ev(Some("error"), "a\nb")],
            ),
            (
                "data: tail-without-blank-line",
                vec![ev(None, "tail-without-blank-line")],
            ),
            ("id: 3\nretry: 10\n\n", vec![]),
            ("data:  two spaces\n\n", vec![ev(None, " two spaces")]),
        ];
        for (input, want) in cases {
            assert_eq!(parse_all(input), want, "{:?}", input);
        }
    }

    #[test]
    fn framing_escapes_newlines_in_payloads() {
        let mut buf = Vec::new();
        event(
            &mut buf,
            "delta",
            &serde_json::json!({"content": "a\n\nevent: done\ndata: x"}),
        )
        .unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert_eq!(text.matches('\n').count(), 3, "{:?}", text);
        assert!(text.starts_with("event: delta\ndata: {"));
        let mut buf = Vec::new();
        data(&mut buf, &serde_json::json!({"x": 1})).unwrap();
        done_marker(&mut buf).unwrap();
        ping(&mut buf).unwrap();
        data_raw(&mut buf, "{\"a\": \"b\\n\"}").unwrap();
        data_raw(&mut buf, "{\r\n\"a\":\n1}").unwrap();
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "data: {\"x\":1}\n\ndata: [DONE]\n\n: ping\n\n\
             data: {\"a\": \"b\\n\"}\n\ndata: {  \"a\": 1}\n\n"
        );
    }
}
