//! The upstream client: the only module that makes outbound requests.
//!
//! One shared ureq `Agent` (no proxy from the environment, keep-alive pool
//! of `max_idle_connections`, statuses handled here, not as errors) talks to
//! the OpenAI-compatible server at `base_url`. The key (from the variable
//! named by `api_key_env`, see `secret.rs`) is sent as `Authorization:
//! Bearer` and nowhere else; it is never logged.
//!
//! Timeouts: `connect_timeout_s` for the connection; `timeout_s` until the
//! response head and, without streaming, for the whole exchange;
//! `stream_idle_timeout_s` between two reads of a streamed answer (ureq's
//! per-read timeout, which also applies while waiting for the head).
//!
//! Failures map to the contract (see `classify`): refused, unreachable,
//! unknown host or a connect timeout -> 502 `upstream_unavailable`; any
//! other timeout -> 504 `upstream_timeout`; an error status, a garbled,
//! truncated or oversized answer -> 502 `upstream_error`. The upstream's own
//! words go only into the private `detail` (logged after `redact_text`).
//!
//! Streaming runs on a reader thread per request (`open_stream_tries`), which
//! sends `StreamEvent`s over a channel bounded in events and in bytes
//! (`STREAM_BACKLOG_BYTES`) to the stream thread that owns the client
//! socket: when the client stops reading, the reader stops reading the
//! upstream (back-pressure), so a stalled client costs a small, fixed
//! amount of memory. The stream thread can stop the reader at once with
//! `StreamHandle::abort` (see `abort.rs` for how).
//!
//! Answers are never parsed into a `Value` tree (`views.rs`): a
//! non-streamed answer is checked to be a JSON object and relayed as the
//! bytes received; chunks are read into the few fields the relay needs.

mod abort;
mod plain_tcp;
mod resolver;
pub mod views;

use std::io::{BufRead, BufReader, Read};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{json, Map, Value};

pub use abort::{scope_aborted, Abort};

use crate::config::UpstreamConfig;
use crate::error::ApiError;
use crate::logging;
use crate::secret::Secret;
use crate::sse;

/// How many upstream events may wait for a slow client before the reader
/// blocks (back-pressure instead of buffering a whole answer).
const CHANNEL_DEPTH: usize = 256;
/// How many bytes of chunks may wait for a slow client before the reader
/// blocks (one larger chunk still passes when nothing waits).
const STREAM_BACKLOG_BYTES: usize = 64 * 1024;
/// How often a reader blocked on a full backlog looks for an abort.
const BACKLOG_WAIT_TICK: Duration = Duration::from_millis(100);
/// How much of an upstream error body we keep for the log.
const ERROR_SNIPPET_BYTES: u64 = 2048;
/// How much of an upstream error body we read for its message.
const ERROR_BODY_BYTES: u64 = 16 * 1024;
/// `/v1/models` must answer promptly even when the upstream hangs.
const MODELS_TIMEOUT: Duration = Duration::from_secs(5);
/// After `[DONE]`, how much trailing body we read so the connection can go
/// back to the pool.
const DRAIN_AFTER_DONE_BYTES: u64 = 64 * 1024;
/// How long a handler waits for a streamed answer's response head before
/// it starts the SSE stream anyway (see `Upstream::head_grace`).
const HEAD_GRACE_MAX: Duration = Duration::from_secs(2);
/// Stack for reader threads (they parse lines and JSON; nothing deep).
const READER_STACK_BYTES: usize = 256 * 1024;
/// How much of a readiness probe's answer is read (then dropped).
const PROBE_BODY_BYTES: u64 = 256 * 1024;
/// ureq's input and output buffer per upstream connection.
const UPSTREAM_BUFFER_BYTES: usize = 16 * 1024;

/// The upstream client, shared by all workers (`App::upstream`).
pub struct Upstream {
    agent: ureq::Agent,
    cfg: UpstreamConfig,
    key: Option<Secret>,
    /// Last reachability probe (time, result), see `reachability`.
    probe: std::sync::Mutex<Option<(std::time::Instant, serde_json::Value)>>,
}

/// What the reader thread of a streamed request reports, in order:
/// `Opened` once (the upstream accepted), then `Chunk`s, then exactly one
/// of `Done` or `Failed`.
#[derive(Debug)]
pub enum StreamEvent {
    Opened,
    /// One `data:` payload of the upstream, a JSON object.
    Chunk(Chunk),
    /// `data: [DONE]`, or the end of a stream whose last chunk carried a
    /// `finish_reason`.
    Done,
    Failed(ApiError),
}

/// One upstream stream chunk: its JSON text as received (relayed as is by
/// `/v1`) and the parts `/api/chat` needs.
#[derive(Debug)]
pub struct Chunk {
    pub raw: String,
    /// The upstream's `event:` name, when it gave one (the Responses API
    /// names every event; chat completions name none).
    pub event: Option<String>,
    pub parts: views::Parts,
}

impl Chunk {
    /// What the chunk costs while it waits in the backlog.
    fn cost(&self) -> usize {
        self.raw.len() + self.parts.content.as_ref().map_or(0, String::len)
    }
}

/// Bytes of chunks sent by the reader and not yet taken by the stream
/// thread; the reader waits for room (see `STREAM_BACKLOG_BYTES`).
#[derive(Default)]
struct Backlog {
    used: Mutex<usize>,
    room: Condvar,
}

impl Backlog {
    /// Waits until `n` more bytes fit (always when nothing waits); false
    /// when the stream was aborted meanwhile.
    fn reserve(&self, n: usize, abort: &Abort) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used > 0 && *used + n > STREAM_BACKLOG_BYTES {
            if abort.is_aborted() {
                return false;
            }
            used = self
                .room
                .wait_timeout(used, BACKLOG_WAIT_TICK)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *used += n;
        true
    }

    fn release(&self, n: usize) {
        {
            let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
            *used = used.saturating_sub(n);
        }
        self.room.notify_one();
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        *self.used.lock().unwrap()
    }
}

/// The consumer's side of a streamed upstream request. Dropping it before
/// the stream finished aborts the request.
pub struct StreamHandle {
    rx: Receiver<StreamEvent>,
    abort: Abort,
    backlog: Arc<Backlog>,
    finished: bool,
    /// The upstreams tried (the one streaming once `Opened` came), for
    /// the usage rows.
    tried: Arc<Mutex<Tried>>,
}

/// The upstreams one call went to, for its usage rows: each attempt that
/// failed and moved the call on (failover, `/api/chat`'s retry for the
/// context size), and the one that answered (or was tried last).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tried {
    pub upstream: String,
    pub failed: Vec<FailedAttempt>,
}

/// An attempt that failed before its upstream answered: nothing spent.
#[derive(Clone, Debug, PartialEq)]
pub struct FailedAttempt {
    pub upstream: String,
    pub status: u16,
    pub latency_ms: u64,
}

impl Tried {
    /// The attempt now under way.
    pub fn begin(&mut self, upstream: &str) {
        self.upstream.clear();
        self.upstream.push_str(upstream);
    }

    /// The attempt under way failed with `err` after `since` and the call
    /// moves on.
    pub fn failed(&mut self, err: &ApiError, since: std::time::Instant) {
        self.failed.push(FailedAttempt {
            upstream: self.upstream.clone(),
            status: err.status(),
            latency_ms: since.elapsed().as_millis() as u64,
        });
    }
}

impl StreamHandle {
    /// The upstreams tried: the one that took the stream (or was tried
    /// last), and those that failed before it.
    pub fn tried(&self) -> Tried {
        self.tried.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Result<StreamEvent, RecvTimeoutError> {
        let ev = self.rx.recv_timeout(timeout)?;
        match &ev {
            StreamEvent::Done | StreamEvent::Failed(_) => self.finished = true,
            StreamEvent::Chunk(c) => self.backlog.release(c.cost()),
            StreamEvent::Opened => {}
        }
        Ok(ev)
    }

    /// Waits up to `grace` for the upstream to accept. `Ok(true)`: it did;
    /// `Ok(false)`: still waiting (go on streaming, pings will cover the
    /// wait); `Err`: it failed before sending anything.
    pub fn wait_opened(&mut self, grace: Duration) -> Result<bool, ApiError> {
        match self.recv_timeout(grace) {
            Ok(StreamEvent::Opened) => Ok(true),
            Ok(StreamEvent::Failed(e)) => Err(e),
            // Not reachable: the reader sends Opened before anything else.
            Ok(other) => Err(ApiError::internal(format!(
                "unexpected {:?} before Opened",
                other
            ))),
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => {
                Err(ApiError::internal("upstream reader ended without a word"))
            }
        }
    }

    /// Stops the upstream request now (the reader's socket is shut down).
    pub fn abort(&self) {
        self.abort.abort();
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        if !self.finished {
            self.abort.abort();
        }
    }
}

/// Where a failure happened: before the response head everything but a
/// protocol error means the upstream was not reachable.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Head,
    Body,
}

/// The detail of an answer over `max_response_bytes`.
const OVERSIZE: &str = "answer larger than max_response_bytes";

/// Whether an `upstream_error`'s detail says the answer was too large
/// (another upstream would not answer smaller: no failover).
pub fn is_oversize(detail: &str) -> bool {
    detail.starts_with(OVERSIZE)
}

/// Maps a ureq failure to the contract's code (see the module doc).
fn classify(err: ureq::Error, phase: Phase) -> ApiError {
    use ureq::Timeout as T;
    let detail = format!("{:?}: {}", phase, err);
    match err {
        ureq::Error::Timeout(T::Connect | T::Resolve) => ApiError::UpstreamUnavailable { detail },
        ureq::Error::Timeout(_) => ApiError::UpstreamTimeout { detail },
        ureq::Error::Io(ref e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            ApiError::UpstreamTimeout { detail }
        }
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => {
            ApiError::UpstreamUnavailable { detail }
        }
        ureq::Error::Io(_) | ureq::Error::Tls(_) | ureq::Error::Rustls(_)
            if phase == Phase::Head =>
        {
            ApiError::UpstreamUnavailable { detail }
        }
        ureq::Error::BodyExceedsLimit(n) => ApiError::UpstreamError {
            detail: format!("{} ({} bytes)", OVERSIZE, n),
        },
        _ => ApiError::UpstreamError { detail },
    }
}

/// An upstream's error status as the contract's error (API.md "Errors:
/// additions"): a refusal of the request (400, 404, 409, 413, 422) keeps
/// its status and the upstream's own message, so the client learns why and
/// SDKs do not retry it; 429 stays 429 with the upstream's `Retry-After`;
/// anything else (401/403: the upstream refused *our* key; 5xx) is 502
/// `upstream_error`, with the upstream's words in the private detail only.
fn refusal(res: &mut ureq::http::Response<ureq::Body>) -> ApiError {
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(retry_after_s);
    let mut buf = Vec::new();
    let _ = res
        .body_mut()
        .with_config()
        .limit(ERROR_BODY_BYTES)
        .reader()
        .take(ERROR_BODY_BYTES)
        .read_to_end(&mut buf);
    status_error(status, retry_after, &buf)
}

/// `refusal` from its parts (for tests and the stream reader alike).
fn status_error(status: u16, retry_after: Option<u64>, body: &[u8]) -> ApiError {
    if crate::error::UPSTREAM_REJECTIONS.contains(&status) {
        let (message, param) = match views::error_message(body) {
            Some((m, p)) => (m, p),
            None => (String::from_utf8_lossy(body).into_owned(), None),
        };
        return ApiError::upstream_rejected(status, &message, param.as_deref());
    }
    if status == 429 {
        return ApiError::UpstreamRateLimited {
            retry_after_s: retry_after.unwrap_or(1),
        };
    }
    let snippet = &body[..body.len().min(ERROR_SNIPPET_BYTES as usize)];
    ApiError::UpstreamError {
        detail: format!(
            "upstream status {}: {}",
            status,
            String::from_utf8_lossy(snippet)
        ),
    }
}

/// Seconds from a `Retry-After` value (delay-seconds or an HTTP date),
/// at least 1 and at most an hour.
fn retry_after_s(v: &str) -> Option<u64> {
    const MAX: u64 = 3600;
    let v = v.trim();
    let secs = match v.parse::<u64>() {
        Ok(n) => n,
        Err(_) => {
            let at = crate::time::parse_http_date(v)?;
            at.duration_since(std::time::SystemTime::now())
                .map(|d| d.as_secs() + 1)
                .unwrap_or(1)
        }
    };
    Some(secs.clamp(1, MAX))
}

/// Whether a failed call may be sent again on a new connection: it went
/// out on a pooled connection (`Trace::connected` false) and no byte of an
/// answer came back, and it failed on the wire rather than by a timeout
/// (a timeout may mean the upstream is working on it).
fn retry_on_new_connection(err: &ureq::Error, trace: abort::Trace) -> bool {
    !trace.connected
        && !trace.received
        && matches!(err, ureq::Error::Io(_) | ureq::Error::Protocol(_))
        && !matches!(err, ureq::Error::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        ))
}

/// Runs `send` once, and once more on a new connection when the first
/// attempt met a dead pooled connection (see `retry_on_new_connection`).
/// `send(true)` must bypass the pool's idle connections.
fn send_once_more<T>(
    mut send: impl FnMut(bool) -> Result<T, ureq::Error>,
) -> Result<T, ureq::Error> {
    abort::Trace::start();
    match send(false) {
        Err(e) if retry_on_new_connection(&e, abort::Trace::get()) => {
            logging::debug(
                "upstream connection was closed before it answered; sending again on a new one",
                &[("error", json!(e.to_string()))],
            );
            abort::Trace::start();
            send(true)
        }
        other => other,
    }
}

impl Upstream {
    /// Builds the client. Nothing is contacted until the first request.
    pub fn new(cfg: &UpstreamConfig, key: Option<Secret>) -> Upstream {
        let config = ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections(cfg.max_idle_connections)
            .max_idle_connections_per_host(cfg.max_idle_connections)
            .timeout_connect(Some(cfg.connect_timeout))
            .timeout_recv_response(Some(cfg.timeout))
            // The whole-call bound of a non-streaming call, set once here
            // rather than per request: a per-request override clones the
            // agent's whole configuration on every call (measured: a few
            // per cent of a relayed request's CPU). Streams lift it.
            .timeout_per_call(Some(cfg.connect_timeout + cfg.timeout))
            // ureq's 128 KiB per direction per connection is the largest
            // item of an open stream's memory; heads are small and bodies
            // are read in pieces, so 16 KiB is plenty (200 streams: ~6 MiB
            // instead of ~50 MiB).
            .input_buffer_size(UPSTREAM_BUFFER_BYTES)
            .output_buffer_size(UPSTREAM_BUFFER_BYTES)
            .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
            .build();
        let agent = ureq::Agent::with_parts(
            config,
            abort::AbortableConnector::new(),
            resolver::CachingResolver::default(),
        );
        Upstream {
            agent,
            cfg: cfg.clone(),
            key,
            probe: std::sync::Mutex::new(None),
        }
    }

    /// Whether the upstream answers, for `/health/ready`: an authenticated
    /// `GET {base_url}/models` (with our key, so a wrong key shows here
    /// rather than on every chat), bounded by `min(connect_timeout_s,
    /// wait)`. `{"status":"ok","latency_ms":..}` when it answers (a server
    /// without a model list, 404/405, counts: it is up), else
    /// `{"status":"fail","reason":..}` with `unauthorized` (401/403: our key
    /// is refused), `unreachable`, `timeout` or `error` (5xx, garbage). The
    /// call runs on a helper thread so a slow resolver cannot stretch the
    /// wait; the result is cached for `PROBE_CACHE` so an unauthenticated
    /// readiness endpoint cannot be used to flood the model server.
    pub fn reachability(self: &Arc<Self>, wait: Duration) -> serde_json::Value {
        const PROBE_CACHE: Duration = Duration::from_secs(5);
        if let Some((at, v)) = self
            .probe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            if at.elapsed() < PROBE_CACHE {
                return v.clone();
            }
        }
        let wait = wait.min(self.cfg.connect_timeout);
        let started = std::time::Instant::now();
        let (tx, rx) = std::sync::mpsc::channel();
        let up = self.clone();
        let spawned = std::thread::Builder::new()
            .name("upstream-probe".into())
            .stack_size(128 * 1024)
            .spawn(move || {
                let outcome = match up.get("/models", wait, false).call() {
                    Ok(mut res) => {
                        let status = res.status().as_u16();
                        let _ = res
                            .body_mut()
                            .with_config()
                            .limit(PROBE_BODY_BYTES)
                            .reader()
                            .take(PROBE_BODY_BYTES)
                            .read_to_end(&mut Vec::new());
                        match status {
                            200..=299 | 404 | 405 => Ok(()),
                            401 | 403 => Err("unauthorized"),
                            _ => Err("error"),
                        }
                    }
                    Err(e) => Err(match classify(e, Phase::Head) {
                        ApiError::UpstreamTimeout { .. } => "timeout",
                        _ => "unreachable",
                    }),
                };
                let _ = tx.send(outcome);
            });
        let outcome = match spawned {
            Ok(_) => rx
                .recv_timeout(wait + Duration::from_millis(50))
                .unwrap_or(Err("timeout")),
            Err(_) => Err("probe_unavailable"),
        };
        let ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        let v = match outcome {
            Ok(()) => serde_json::json!({ "status": "ok", "latency_ms": ms }),
            Err(e) => {
                serde_json::json!({ "status": "fail", "latency_ms": ms, "reason": e, "error": e })
            }
        };
        *self.probe.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((std::time::Instant::now(), v.clone()));
        v
    }

    /// How long a stream's thread waits (no worker is held) for the
    /// upstream's response head: errors seen by then (refused, error status,
    /// a `timeout_s` shorter than this) are answered as plain JSON errors
    /// with their real status; after it, the stream starts with 200 and any
    /// later failure is an in-stream error event, while pings keep the
    /// client informed. At most `HEAD_GRACE_MAX`, so a hanging upstream
    /// holds a worker only briefly; a little over `timeout_s` when that is
    /// shorter, so such a timeout is reliably a JSON 504.
    pub fn head_grace(&self) -> Duration {
        HEAD_GRACE_MAX.min(self.cfg.timeout + Duration::from_millis(500))
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.cfg.base_url, path)
    }

    fn authorize<B>(&self, rb: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        match &self.key {
            Some(k) => rb.header("Authorization", format!("Bearer {}", k.expose_str())),
            None => rb,
        }
    }

    /// A POST request to the upstream, builder only. `fresh`: use a new
    /// connection, not an idle pooled one (see `send_once_more`).
    fn post(
        &self,
        path: &str,
        accept: &str,
        fresh: bool,
        streaming: bool,
    ) -> ureq::RequestBuilder<ureq::typestate::WithBody> {
        let rb = self
            .authorize(self.agent.post(self.url(path)))
            .header("Content-Type", "application/json")
            .header("Accept", accept);
        if !fresh && !streaming {
            return rb;
        }
        let mut cfg = rb.config();
        if fresh {
            // No idle connection is young enough: the pool drops them
            // (they are as old as the one that just failed) and connects.
            cfg = cfg.max_idle_age(Duration::ZERO);
        }
        if streaming {
            cfg = cfg
                .timeout_per_call(None)
                .timeout_recv_body(None)
                .timeout_per_read(Some(self.cfg.stream_idle_timeout));
        }
        cfg.build()
    }

    /// A non-streaming POST to `path` (`/chat/completions`,
    /// `/completions`, `/embeddings`, `/responses`): the upstream's answer,
    /// checked to be one JSON object (nothing of it is stored but its
    /// bytes), read within `timeout_s` and `max_response_bytes`. `body` is
    /// the request's JSON text, sent as is.
    pub fn relay(&self, path: &str, body: &[u8]) -> Result<Vec<u8>, ApiError> {
        let res =
            send_once_more(|fresh| self.post(path, "application/json", fresh, false).send(body))
                .map_err(|e| classify(e, Phase::Head))?;
        let bytes = self.answer_bytes(res)?;
        if views::is_json_object(&bytes) {
            Ok(bytes)
        } else {
            Err(ApiError::UpstreamError {
                detail: format!("answer is not a JSON object ({} bytes)", bytes.len()),
            })
        }
    }

    /// A whole non-streaming answer: an error status becomes
    /// `upstream_error` (its text kept for the log only); the body is read
    /// within `max_response_bytes`.
    fn answer_bytes(&self, mut res: ureq::http::Response<ureq::Body>) -> Result<Vec<u8>, ApiError> {
        let status = res.status().as_u16();
        if !(200..300).contains(&status) {
            return Err(refusal(&mut res));
        }
        res.into_body()
            .into_with_config()
            .limit(self.cfg.max_response_bytes)
            .read_to_vec()
            .map_err(|e| classify(e, Phase::Body))
    }

    /// A GET request to the upstream within `limit` (builder only); see
    /// `post` for `fresh`.
    fn get(
        &self,
        path: &str,
        limit: Duration,
        fresh: bool,
    ) -> ureq::RequestBuilder<ureq::typestate::WithoutBody> {
        let mut cfg = self
            .authorize(self.agent.get(self.url(path)))
            .header("Accept", "application/json")
            .config()
            .timeout_per_call(Some(limit));
        if fresh {
            cfg = cfg.max_idle_age(Duration::ZERO);
        }
        cfg.build()
    }

    /// The upstream's model list (`GET /models`), within `MODELS_TIMEOUT`:
    /// its bytes, checked to be JSON (read them with `views::model_entries`).
    /// `Ok(None)` when the upstream has no model list (404, 405, 501:
    /// some servers serve one model and no `/models`).
    pub fn models(&self) -> Result<Option<Vec<u8>>, ApiError> {
        let limit = MODELS_TIMEOUT.min(self.cfg.connect_timeout + self.cfg.timeout);
        let res = send_once_more(|fresh| self.get("/models", limit, fresh).call())
            .map_err(|e| classify(e, Phase::Head))?;
        if matches!(res.status().as_u16(), 404 | 405 | 501) {
            return Ok(None);
        }
        let bytes = self.answer_bytes(res)?;
        if views::is_json(&bytes) {
            Ok(Some(bytes))
        } else {
            Err(ApiError::UpstreamError {
                detail: format!("model list is not JSON ({} bytes)", bytes.len()),
            })
        }
    }

    /// Starts a streamed POST to `path` (`/chat/completions`, `/responses`,
    /// ...) on a reader thread and returns at once. `body` (the request's
    /// JSON text) must hold `"stream": true`. Several upstreams go through
    /// `upstreams::Upstreams::open_stream`.
    pub fn open_stream_at(
        self: &Arc<Self>,
        path: &str,
        body: Vec<u8>,
        request_id: &str,
    ) -> Result<StreamHandle, ApiError> {
        let only = StreamTry {
            name: crate::upstreams::DEFAULT_NAME.to_string(),
            upstream: self.clone(),
            attempt: Box::new(()),
        };
        open_stream_tries(vec![only], path, body, request_id, |_| false)
    }
}

/// One upstream a stream may be sent to, and who to tell when it is tried.
pub struct StreamTry {
    /// The upstream's name (`[upstream.NAME]`; `default`).
    pub name: String,
    pub upstream: Arc<Upstream>,
    pub attempt: Box<dyn Attempt>,
}

/// Bookkeeping around one attempt (see `upstreams::Candidate`): `begin`
/// before the request goes out; `settle` with how its head went (`Ok`: the
/// stream opened; `Err`: it failed before sending anything). Dropped when
/// the attempt (or, for the one that opened, the stream) is over.
pub trait Attempt: Send {
    fn begin(&mut self) {}
    fn settle(&mut self, _outcome: Result<(), &ApiError>) {}
}

/// A lone upstream keeps no books.
impl Attempt for () {}

/// Starts a streamed POST to `path` on a reader thread and returns at
/// once. The reader sends it to `tries` in turn while the attempt fails
/// before the stream opened and `fails_over` says so (nothing has reached
/// the client then: `Opened` is sent only after a 2xx head); an abort (the
/// client left) stops it in every phase. `body` must hold `"stream": true`.
pub fn open_stream_tries(
    tries: Vec<StreamTry>,
    path: &str,
    body: Vec<u8>,
    request_id: &str,
    fails_over: fn(&ApiError) -> bool,
) -> Result<StreamHandle, ApiError> {
    let (tx, rx) = sync_channel(CHANNEL_DEPTH);
    let abort = Abort::new();
    let reader_abort = abort.clone();
    let backlog = Arc::new(Backlog::default());
    let out = Sender {
        tx,
        backlog: backlog.clone(),
        abort: abort.clone(),
    };
    let request_id = request_id.to_string();
    let path = path.to_string();
    let tried = Arc::new(Mutex::new(Tried::default()));
    let reader_tried = tried.clone();
    std::thread::Builder::new()
        .name("upstream-reader".into())
        .stack_size(READER_STACK_BYTES)
        .spawn(move || {
            logging::set_request_id(Some(&request_id));
            let _scope = reader_abort.enter();
            let n = tries.len();
            for (i, mut t) in tries.into_iter().enumerate() {
                if reader_abort.is_aborted() {
                    return;
                }
                let requests = [
                    t.upstream.post(&path, "text/event-stream", false, true),
                    t.upstream.post(&path, "text/event-stream", true, true),
                ];
                reader_tried
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .begin(&t.name);
                let attempt_started = std::time::Instant::now();
                t.attempt.begin();
                match send_head(requests, &body, &reader_abort) {
                    Ok(res) => {
                        t.attempt.settle(Ok(()));
                        let limit = t.upstream.cfg.max_response_bytes;
                        if let Some(ev) = pump_body(res, limit, &out, &reader_abort) {
                            let _ = out.tx.send(ev);
                        }
                        return;
                    }
                    Err(None) => return,
                    Err(Some(e)) => {
                        t.attempt.settle(Err(&e));
                        if i + 1 < n && fails_over(&e) && !reader_abort.is_aborted() {
                            reader_tried
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .failed(&e, attempt_started);
                            logging::info(
                                "upstream failed before the stream opened; trying the next",
                                &[("code", json!(e.code()))],
                            );
                            continue;
                        }
                        let _ = out.tx.send(StreamEvent::Failed(e));
                        return;
                    }
                }
            }
        })
        .map_err(|e| ApiError::internal(format!("cannot start upstream reader: {}", e)))?;
    Ok(StreamHandle {
        tried,
        rx,
        abort,
        backlog,
        finished: false,
    })
}

/// The reader's side of the channel: chunks wait for backlog room.
struct Sender {
    tx: SyncSender<StreamEvent>,
    backlog: Arc<Backlog>,
    abort: Abort,
}

impl Sender {
    /// Sends a chunk once the backlog has room; false when the consumer is
    /// gone or the stream was aborted.
    fn chunk(&self, chunk: Chunk) -> bool {
        let cost = chunk.cost();
        if !self.backlog.reserve(cost, &self.abort) {
            return false;
        }
        if self.tx.send(StreamEvent::Chunk(chunk)).is_err() {
            self.backlog.release(cost);
            return false;
        }
        true
    }
}

/// The reader thread's body: sends `Opened` and `Chunk`s on `tx`; returns
/// the final event (None when the consumer is gone or aborted).
/// Sends a streamed request and reads its head: the response when it is
/// 2xx, else the error (`None`: aborted, the consumer is gone).
fn send_head(
    requests: [ureq::RequestBuilder<ureq::typestate::WithBody>; 2],
    body: &[u8],
    abort: &Abort,
) -> Result<ureq::http::Response<ureq::Body>, Option<ApiError>> {
    let mut requests = requests.map(Some);
    let sent = send_once_more(|fresh| match requests[usize::from(fresh)].take() {
        Some(rb) if !abort.is_aborted() => rb.send(body),
        _ => Err(ureq::Error::Io(std::io::ErrorKind::Interrupted.into())),
    });
    let mut res = match sent {
        Ok(r) => r,
        Err(_) if abort.is_aborted() => return Err(None),
        Err(e) => return Err(Some(classify(e, Phase::Head))),
    };
    let status = res.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(Some(refusal(&mut res)));
    }
    Ok(res)
}

/// The reader thread's body once the head was 2xx: sends `Opened` and
/// `Chunk`s on `out`; returns the final event (None when the consumer is
/// gone or aborted).
fn pump_body(
    res: ureq::http::Response<ureq::Body>,
    limit: u64,
    out: &Sender,
    abort: &Abort,
) -> Option<StreamEvent> {
    out.tx.send(StreamEvent::Opened).ok()?;
    let mut reader = BufReader::new(res.into_body().into_with_config().limit(limit).reader());
    let mut parser = sse::Parser::default();
    let mut line = Vec::new();
    let mut saw_finish = false;
    loop {
        line.clear();
        let n = match (&mut reader)
            .take(sse::MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
        {
            Ok(n) => n,
            Err(_) if abort.is_aborted() => return None,
            Err(e) => {
                return Some(StreamEvent::Failed(classify(
                    ureq::Error::from(e),
                    Phase::Body,
                )))
            }
        };
        if abort.is_aborted() {
            return None;
        }
        if n == 0 {
            if let Some(incoming) = parser.finish() {
                if let Some(end) = on_incoming(incoming, out, &mut saw_finish) {
                    return end;
                }
            }
            if saw_finish {
                return Some(StreamEvent::Done);
            }
            return Some(StreamEvent::Failed(ApiError::UpstreamError {
                detail: "stream ended before [DONE]".into(),
            }));
        }
        if line.len() > sse::MAX_LINE_BYTES {
            return Some(StreamEvent::Failed(ApiError::UpstreamError {
                detail: "stream line longer than the limit".into(),
            }));
        }
        let Ok(text) = std::str::from_utf8(&line) else {
            return Some(StreamEvent::Failed(ApiError::UpstreamError {
                detail: "stream is not UTF-8".into(),
            }));
        };
        let Some(incoming) = parser.line(text.trim_end_matches('\n')) else {
            continue;
        };
        if incoming.data.trim() == "[DONE]" {
            drain(&mut reader);
            return Some(StreamEvent::Done);
        }
        if let Some(end) = on_incoming(incoming, out, &mut saw_finish) {
            return end;
        }
    }
}

/// Handles one upstream event that is not `[DONE]`: forwards a chunk, or
/// says how the stream ends (`Some(None)`: the consumer is gone).
fn on_incoming(
    incoming: sse::Incoming,
    out: &Sender,
    saw_finish: &mut bool,
) -> Option<Option<StreamEvent>> {
    if incoming.data.trim() == "[DONE]" {
        return Some(Some(StreamEvent::Done));
    }
    let Some(parts) = views::chunk_parts(&incoming.data) else {
        return Some(Some(StreamEvent::Failed(ApiError::UpstreamError {
            detail: format!(
                "stream event is not a JSON object ({} bytes)",
                incoming.data.len()
            ),
        })));
    };
    if parts.error || incoming.event.as_deref() == Some("error") {
        let mut shown = incoming.data;
        if shown.len() > ERROR_SNIPPET_BYTES as usize {
            let mut cut = ERROR_SNIPPET_BYTES as usize;
            while !shown.is_char_boundary(cut) {
                cut -= 1;
            }
            shown.truncate(cut);
        }
        return Some(Some(StreamEvent::Failed(ApiError::UpstreamError {
            detail: format!("upstream stream error: {}", shown),
        })));
    }
    // A chat or completion stream ends with `[DONE]` (or EOF after a
    // chunk with a `finish_reason`); a Responses API stream ends with its
    // terminal event and EOF, without `[DONE]`.
    let terminal = matches!(
        incoming.event.as_deref().or(parts.kind.as_deref()),
        Some("response.completed" | "response.incomplete" | "response.failed")
    );
    *saw_finish |= parts.finish_reason.is_some() || terminal;
    let chunk = Chunk {
        raw: incoming.data,
        event: incoming.event,
        parts,
    };
    if out.chunk(chunk) {
        None
    } else {
        Some(None)
    }
}

/// Reads what follows `[DONE]` (normally nothing), boundedly, so ureq sees
/// the body end and can pool the connection.
fn drain(reader: &mut impl Read) {
    let _ = std::io::copy(
        &mut reader.take(DRAIN_AFTER_DONE_BYTES),
        &mut std::io::sink(),
    );
}

/// A chat request body for the upstream, as JSON text.
pub fn chat_request(
    model: &str,
    messages: Vec<Value>,
    stream: bool,
    extra: &[(&str, Value)],
) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("model".into(), json!(model));
    m.insert("messages".into(), Value::Array(messages));
    m.insert("stream".into(), json!(stream));
    for (k, v) in extra {
        m.insert((*k).to_string(), v.clone());
    }
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// Logs an upstream failure that is not answered as an error reply (those
/// are logged by the server): stream failures after the head was sent.
pub fn log_failure(err: &ApiError) {
    let mut fields = vec![("code", json!(err.code()))];
    if let Some(d) = err.detail() {
        fields.push(("detail", json!(logging::redact_text(d))));
    }
    logging::warn("upstream failed during stream", &fields);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_table() {
        use std::io::{Error as IoError, ErrorKind as K};
        let cases: Vec<(ureq::Error, Phase, &str)> = vec![
            (
                ureq::Error::Io(IoError::from(K::ConnectionRefused)),
                Phase::Head,
                "upstream_unavailable",
            ),
            (
                ureq::Error::HostNotFound,
                Phase::Head,
                "upstream_unavailable",
            ),
            (
                ureq::Error::Timeout(ureq::Timeout::Connect),
                Phase::Head,
                "upstream_unavailable",
            ),
            (
                ureq::Error::Timeout(ureq::Timeout::RecvResponse),
                Phase::Head,
                "upstream_timeout",
            ),
            (
                ureq::Error::Timeout(ureq::Timeout::PerRead),
                Phase::Body,
                "upstream_timeout",
            ),
            (
                ureq::Error::Io(IoError::from(K::TimedOut)),
                Phase::Body,
                "upstream_timeout",
            ),
            (
                ureq::Error::Io(IoError::from(K::ConnectionReset)),
                Phase::Head,
                "upstream_unavailable",
            ),
            (
                ureq::Error::Io(IoError::from(K::ConnectionReset)),
                Phase::Body,
                "upstream_error",
            ),
            (
                ureq::Error::BodyExceedsLimit(10),
                Phase::Body,
                "upstream_error",
            ),
        ];
        for (err, phase, code) in cases {
            let shown = format!("{:?}", err);
            assert_eq!(
                classify(err, phase).code(),
                code,
                "{} in {:?}",
                shown,
                phase
            );
        }
    }

    #[test]
    fn backlog_is_bounded_in_bytes() {
        let b = Backlog::default();
        let abort = Abort::new();
        assert!(
            b.reserve(STREAM_BACKLOG_BYTES * 4, &abort),
            "one big chunk passes"
        );
        let aborted = Abort::new();
        aborted.abort();
        // A full backlog: the reader would wait; an abort ends the wait.
        assert!(!b.reserve(10, &aborted));
        b.release(STREAM_BACKLOG_BYTES * 4);
        assert_eq!(b.used(), 0);
        assert!(
            b.reserve(STREAM_BACKLOG_BYTES - 10, &aborted),
            "room: no wait"
        );
        assert!(b.reserve(10, &aborted));
        assert!(!b.reserve(1, &aborted), "full again");
        assert_eq!(b.used(), STREAM_BACKLOG_BYTES);
    }
}
