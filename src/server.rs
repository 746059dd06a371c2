//! The server layer: the listening socket, the (patched) tiny_http accept
//! loop, turns to run (`seats`: at most `workers` at once, a bounded line),
//! panic isolation, response writing (including raw streamed bodies) and
//! graceful shutdown.
//!
//! Path of a request: tiny_http's accept thread (connection caps, socket
//! timeouts) -> connection thread (head limits) -> a seat (line full: 503
//! at once) -> `handle`, still on the connection's thread: request id,
//! filters, router, body, handler -> `headers::decorate` -> response ->
//! access log. See ARCHITECTURE.md.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::panic::{self, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::app::App;
use crate::error::ApiError;
use crate::filters;
use crate::http::{Body, Ctx, Method, Reply};
use crate::logging;
use crate::seats::{Seat, Seats};

/// How often the drain loop re-checks for running requests during shutdown.
const DRAIN_POLL: Duration = Duration::from_millis(20);

/// Maps a routed request to its handler. `routes::dispatch` in production;
/// tests substitute their own to exercise the server layer (panics, slow
/// handlers) through real sockets.
pub type Dispatch = fn(&App, &mut Ctx, crate::router::Route) -> Result<Reply, ApiError>;

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    app: Arc<App>,
    server: Arc<tiny_http::Server>,
    seats: Arc<Seats>,
}

/// Gauges the metrics endpoint reads.
pub struct ServerStats {
    server: Arc<tiny_http::Server>,
    seats: Arc<Seats>,
}

impl crate::metrics::ServerGauges for ServerStats {
    fn open_connections(&self) -> usize {
        self.server.open_connections()
    }
    fn queue_depth(&self) -> usize {
        self.seats.waiting()
    }
    fn busy_workers(&self) -> usize {
        self.seats.taken()
    }
}

/// Binds and starts serving. The listener is ours (so port 0 works and the
/// chosen address is known); tiny_http accepts on it under our `Limits`.
pub fn start(app: Arc<App>) -> std::io::Result<Running> {
    start_with(app, crate::routes::dispatch)
}

/// As `start`, with a substitute dispatcher (tests).
pub fn start_with(app: Arc<App>, dispatch: Dispatch) -> std::io::Result<Running> {
    let cfg = &app.cfg.server;
    let listener = TcpListener::bind(cfg.bind.as_str())?;
    let addr = listener.local_addr()?;

    let overflow_app = app.clone();
    let refusal_app = app.clone();
    let seats = Arc::new(Seats::new(cfg.workers, cfg.queue_capacity));
    let (serve_app, serve_seats) = (app.clone(), seats.clone());
    let limits = tiny_http::Limits {
        max_connections: cfg.max_connections,
        max_connections_per_ip: cfg.max_connections_per_ip,
        read_timeout: Some(cfg.read_timeout),
        write_timeout: Some(cfg.write_timeout),
        max_request_line_bytes: cfg.max_request_line_bytes,
        max_head_bytes: cfg.max_head_bytes,
        max_headers: cfg.max_headers,
        head_timeout: Some(cfg.head_timeout),
        // Bodies over the cap must reach the body-cap filter unread (413
        // before any byte is read), so they are never prebuffered.
        prebuffer_body_bytes: cfg
            .prebuffer_body_bytes
            .min(usize::try_from(app.cfg.security.max_body_bytes).unwrap_or(usize::MAX)),
        prebuffer_timeout: Some(app.cfg.security.body_timeout),
        max_pending_requests: cfg.queue_capacity,
        overflow: Some(Arc::new(move |rq| answer_busy(&overflow_app, rq))),
        refusal: Some(Arc::new(move |r: &tiny_http::Refusal| {
            render_refusal(&refusal_app, r)
        })),
        // Every request is served on its connection's thread, so
        // tiny_http's own queue stays empty.
        inline: Some(Arc::new(move |rq| {
            serve(&serve_app, rq, dispatch, &serve_seats);
            None
        })),
    };
    let server = Arc::new(
        tiny_http::Server::from_listener_with_limits(listener, limits)
            .map_err(|e| std::io::Error::other(e.to_string()))?,
    );
    Ok(Running {
        addr,
        app,
        server,
        seats,
    })
}

impl Running {
    pub fn stats(&self) -> ServerStats {
        ServerStats {
            server: self.server.clone(),
            seats: self.seats.clone(),
        }
    }

    /// Graceful shutdown: stop accepting (the port closes), let queued and
    /// in-flight requests and streams finish within `grace`.
    /// Returns whether everything drained in time.
    pub fn shutdown(self, grace: Duration) -> bool {
        self.app.begin_shutdown();
        self.server.stop_accepting();
        let deadline = Instant::now() + grace;
        loop {
            let idle = self.seats.taken() == 0
                && self.seats.waiting() == 0
                && self.server.pending_requests() == 0
                && self.app.active_streams() == 0
                && self.app.relays.in_flight() == 0;
            if idle {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(DRAIN_POLL);
        }
    }
}

/// Serves a request on its connection's own thread once it has a seat
/// (no hand-off to another thread and back); a full line answers 503
/// `server_busy` at once.
fn serve(app: &Arc<App>, rq: tiny_http::Request, dispatch: Dispatch, seats: &Seats) {
    match seats.take() {
        Some(seat) => handle(app, rq, dispatch, seat),
        None => answer_busy(app, rq),
    }
    logging::set_request_id(None);
}

/// Copies what filters and handlers need out of tiny_http's request.
fn context_from(rq: &tiny_http::Request) -> Ctx {
    let peer = rq
        .remote_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut ctx = Ctx::new(Method::parse(rq.method().as_str()), rq.url(), peer);
    ctx.http10 = *rq.http_version() == tiny_http::HTTPVersion(1, 0);
    ctx.headers = rq
        .headers()
        .iter()
        .map(|h| {
            (
                h.field.as_str().as_str().to_ascii_lowercase(),
                h.value.as_str().to_string(),
            )
        })
        .collect();
    ctx.chunked = ctx.header("transfer-encoding").is_some();
    // tiny_http ignores Content-Length when Transfer-Encoding is present.
    if !ctx.chunked {
        // An unparsable length counts as huge: refused, never guessed.
        ctx.content_length = ctx
            .header("content-length")
            .map(|v| v.trim().parse::<u64>().unwrap_or(u64::MAX));
    }
    ctx
}

/// What the first pass over a request decided.
enum Step {
    Reply(Reply),
    /// Every filter passed and the route takes a body that has not arrived:
    /// hand the request back to its connection's thread to receive it.
    NeedBody,
}

/// Serves one request holding a seat. Never panics: a panic in a filter or
/// handler answers 500 `internal` and the connection's thread lives on.
/// Never holds a seat while waiting for a client: a body that has not
/// arrived when the filters pass is received after the seat is given back
/// (`receive_body_later`), and the request comes back here with its `Ctx`
/// (and a new seat) once it has. Never holds a seat while waiting on the
/// model either (deferred replies and streams give it back first).
fn handle(app: &Arc<App>, mut rq: tiny_http::Request, dispatch: Dispatch, mut seat: Seat) {
    let resumed = rq.take_state().and_then(|s| s.downcast::<Ctx>().ok());
    let is_resumed = resumed.is_some();
    let mut ctx = match resumed {
        Some(ctx) => *ctx,
        None => {
            let mut ctx = context_from(&rq);
            ctx.request_id = filters::request_id::assign(
                ctx.peer,
                ctx.header("x-request-id"),
                &app.cfg.security.trusted_proxies,
            );
            ctx
        }
    };
    logging::set_request_id(Some(&ctx.request_id));

    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        if is_resumed {
            resume(app, &mut ctx, &mut rq, dispatch)
        } else {
            process(app, &mut ctx, &mut rq, dispatch)
        }
    }));
    let mut reply = match outcome {
        Ok(Ok(Step::Reply(reply))) => reply,
        Ok(Ok(Step::NeedBody)) => {
            seat.release();
            match rq.receive_body_later(app.cfg.security.max_body_bytes, Box::new(ctx)) {
                Ok(()) => return,
                Err(mut back) => {
                    // The connection is gone; answer (to nobody) and log.
                    ctx = match back.take_state().and_then(|s| s.downcast::<Ctx>().ok()) {
                        Some(ctx) => *ctx,
                        None => return,
                    };
                    rq = back;
                    let err = ApiError::internal("connection gone before its body");
                    ctx.error_code = Some(err.kind());
                    error_reply(app, &ctx, &err)
                }
            }
        }
        Ok(Err(err)) => {
            ctx.error_code = Some(err.kind());
            error_reply(app, &ctx, &err)
        }
        Err(_) => {
            // The panic hook already logged message and location.
            ctx.close_connection |= ctx.has_body();
            ctx.error_code = Some(crate::error::Code::Internal);
            error_reply(app, &ctx, &ApiError::internal("handler panicked"))
        }
    };
    let deferred = match std::mem::replace(&mut reply.body, Body::Empty) {
        Body::Deferred(run) => Some(run),
        other => {
            reply.body = other;
            None
        }
    };
    if let Some(run) = deferred {
        // The handler built what it sends upstream: the request body (up to
        // `max_body_bytes`) need not live while the upstream thinks.
        ctx.body = Vec::new();
        // The connection's thread waits on the upstream (it serves only
        // this client), without its seat, counted among the relays.
        seat.release();
        // A client that hangs up while the upstream thinks stops the call
        // (`relays`): the upstream I/O of this thread is abortable by it.
        let abort = crate::upstream::Abort::new();
        let _scope = abort.enter();
        match app.relays.enter(rq.socket_fd(), &abort) {
            Some(_in_flight) => reply = run_deferred(app, &mut ctx, run),
            None => {
                let err = ApiError::ServerBusy { retry_after_s: 1 };
                ctx.error_code = Some(err.kind());
                reply = error_reply(app, &ctx, &err);
            }
        }
    }
    filters::headers::decorate(&mut reply, &ctx, &app.cfg);
    send(app, rq, reply, &mut ctx, Some(seat));
}

/// Runs a deferred handler body; panics and errors become error replies.
fn run_deferred(app: &App, ctx: &mut Ctx, run: crate::http::DeferredFn) -> Reply {
    let reply = match panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(Ok(r)) => r,
        Ok(Err(err)) => {
            ctx.error_code = Some(err.kind());
            error_reply(app, ctx, &err)
        }
        Err(_) => {
            ctx.error_code = Some(crate::error::Code::Internal);
            error_reply(app, ctx, &ApiError::internal("deferred handler panicked"))
        }
    };
    if let Body::Stream(_) | Body::Deferred(_) = reply.body {
        ctx.error_code = Some(crate::error::Code::Internal);
        return error_reply(
            app,
            ctx,
            &ApiError::internal("a deferred reply cannot stream"),
        );
    }
    reply
}

/// Filters, routing, then the handler, or `NeedBody` when the route takes
/// a body that has not arrived yet (a read-ahead body is taken at once).
fn process(
    app: &App,
    ctx: &mut Ctx,
    rq: &mut tiny_http::Request,
    dispatch: Dispatch,
) -> Result<Step, ApiError> {
    if let Some(reply) = filters::run(app, ctx)? {
        return Ok(Step::Reply(reply));
    }
    let route = ctx.route.ok_or(ApiError::NotFound)?;
    if route.takes_body() {
        crate::json_body::require_json_content_type(ctx).inspect_err(|_| {
            ctx.close_connection |= ctx.has_body();
        })?;
        if rq.body_pending() {
            return Ok(Step::NeedBody);
        }
        ctx.body = rq.take_body();
    }
    dispatch(app, ctx, route).map(Step::Reply)
}

/// The second pass, once the connection's thread received the body (or
/// failed to: too large, too slow, malformed chunks; the connection then
/// closes).
fn resume(
    app: &App,
    ctx: &mut Ctx,
    rq: &mut tiny_http::Request,
    dispatch: Dispatch,
) -> Result<Step, ApiError> {
    if let Some(err) = rq.body_error() {
        ctx.close_connection = true;
        return Err(match err {
            tiny_http::BodyError::TooLarge => ApiError::PayloadTooLarge,
            tiny_http::BodyError::TimedOut => ApiError::RequestTimeout,
            tiny_http::BodyError::Malformed => ApiError::BadRequest {
                why: "malformed chunked body",
            },
            tiny_http::BodyError::Closed => ApiError::BadRequest {
                why: "connection closed before the body was complete",
            },
        });
    }
    ctx.body = rq.take_body();
    let route = ctx.route.ok_or(ApiError::NotFound)?;
    dispatch(app, ctx, route).map(Step::Reply)
}

/// Writes a response head: status line, `Date`, the reply's (decorated)
/// headers, `Content-Length` when the body's length is given, and
/// `Connection: close` when the connection ends after this response. The
/// only writer of response heads: plain replies, relays, streams, stream
/// failures and the HTTP layer's refusals all go through it.
fn render_head(reply: &Reply, content_length: Option<usize>, close: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\nDate: {}\r\n",
            reply.status,
            reason(reply.status),
            crate::time::http_date(std::time::SystemTime::now())
        )
        .as_bytes(),
    );
    reply.render_headers(out);
    // 1xx, 204 and 304 carry no body and no length (RFC 9110 §8.6).
    let bodiless = reply.status < 200 || reply.status == 204 || reply.status == 304;
    if let (Some(len), false) = (content_length, bodiless) {
        out.extend_from_slice(format!("Content-Length: {}\r\n", len).as_bytes());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Bodies up to this size are copied behind the head and leave in one
/// write; larger ones are written after it, never copied (a 7.5 MiB relayed
/// answer would otherwise briefly exist twice).
const COALESCE_BODY_BYTES: usize = 16 * 1024;

/// A complete response: the head (with a small body appended) and the rest
/// of the body to write after it; and the body length sent.
fn render_complete(reply: &mut Reply, head_only: bool, close: bool) -> (Vec<u8>, Vec<u8>, usize) {
    let data = match std::mem::replace(&mut reply.body, Body::Empty) {
        Body::Bytes(b) => b,
        _ => Vec::new(),
    };
    let small = data.len() <= COALESCE_BODY_BYTES;
    let mut out = Vec::with_capacity(1024 + if small { data.len() } else { 0 });
    render_head(reply, Some(data.len()), close, &mut out);
    if head_only {
        return (out, Vec::new(), 0);
    }
    let len = data.len();
    if small {
        out.extend_from_slice(&data);
        return (out, Vec::new(), len);
    }
    (out, data, len)
}

/// Writes what `render_complete` rendered and flushes.
fn write_complete(writer: &mut dyn Write, head: &[u8], rest: &[u8]) -> std::io::Result<()> {
    writer.write_all(head)?;
    if !rest.is_empty() {
        writer.write_all(rest)?;
    }
    writer.flush()
}

/// The HTTP layer's own answers (malformed or oversized head, slow head or
/// read-ahead body, connection cap) as full contract answers: a fresh
/// request id, the security headers and the JSON error body. Logged and
/// counted like any request, except the connection cap's 503, which is
/// written by the accept thread during a flood and only counted.
fn render_refusal(app: &App, refusal: &tiny_http::Refusal) -> Vec<u8> {
    let err = ApiError::from_refusal(refusal.status, refusal.reason);
    let peer = refusal
        .peer
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let mut ctx = Ctx::new(Method::Other, "", peer);
    ctx.request_id = crate::ids::new_request_id();
    ctx.error_code = Some(err.kind());
    let mut reply = Reply::error(&err, &ctx.request_id, app.cfg.server.debug);
    filters::headers::decorate(&mut reply, &ctx, &app.cfg);
    let (mut out, rest, len) = render_complete(&mut reply, false, true);
    out.extend_from_slice(&rest);
    if refusal.status == 503 {
        app.metrics
            .record(None, 503, ctx.started.elapsed(), Some(err.kind()));
    } else {
        logging::set_request_id(Some(&ctx.request_id));
        logging::info(
            "refused by the HTTP layer",
            &[
                ("status", json!(err.status())),
                ("rule", json!(refusal.reason)),
            ],
        );
        finish(app, &ctx, err.status(), len);
        logging::set_request_id(None);
    }
    out
}

fn error_reply(app: &App, ctx: &Ctx, err: &ApiError) -> Reply {
    if err.status() >= 500 {
        let mut fields = vec![("code", json!(err.code()))];
        if let Some(d) = err.detail() {
            fields.push(("detail", json!(logging::redact_text(d))));
        }
        logging::error("request failed", &fields);
    }
    Reply::error(err, &ctx.request_id, app.cfg.server.debug)
}

/// Writes the reply, counted and logged (`finish`) before its bytes leave,
/// so a client that reads `/metrics` right after its answer sees it
/// counted; streams are counted and logged when they end.
fn send(
    app: &Arc<App>,
    rq: tiny_http::Request,
    mut reply: Reply,
    ctx: &mut Ctx,
    seat: Option<Seat>,
) {
    // A body never read closes the connection by itself (patched
    // tiny_http: no drain, no smuggling); refusals ask for it here.
    if ctx.close_connection {
        rq.close_connection();
    }
    let head_only = ctx.method == Method::Head;
    match std::mem::replace(&mut reply.body, Body::Empty) {
        Body::Stream(run) => {
            rq.close_connection();
            let fd = rq.socket_fd();
            let (writer, body) = rq.into_writer_and_reader();
            let mut head = Vec::with_capacity(1024);
            render_head(&reply, None, true, &mut head);
            // The head leaves with the first event; until then the stream
            // may still answer a plain JSON error (upstream refused, error
            // status) with its real status and the same decorations.
            let (err_app, err_ctx) = (app.clone(), ctx.detached());
            let fail: crate::http::ErrorResponder = Box::new(move |err: &ApiError| {
                let mut reply = Reply::error(err, &err_ctx.request_id, err_app.cfg.server.debug);
                filters::headers::decorate(&mut reply, &err_ctx, &err_app.cfg);
                let (mut out, rest, _) = render_complete(&mut reply, false, true);
                out.extend_from_slice(&rest);
                out
            });
            let mut out = crate::http::StreamOut::new(writer, Some(body), fd).with_pending_head(
                reply.status,
                head,
                fail,
            );
            // The stream runs on the connection's thread without its seat:
            // the handler bounded how many exist (stream slots).
            drop(seat);
            let _ = panic::catch_unwind(AssertUnwindSafe(|| run(&mut out)));
            let status = out.status();
            drop(out);
            finish(app, ctx, status, 0);
        }
        body => {
            reply.body = body;
            // Written on the raw connection (keep-alive kept unless the
            // request or a refusal ends it), small answers in one piece.
            let close = ctx.close_connection || rq.body_pending() || client_closes(ctx);
            let (head, rest, len) = render_complete(&mut reply, head_only, close);
            finish(app, ctx, reply.status, len);
            // A client slow to read its answer holds its own thread (up to
            // `write_timeout_s`), not a seat.
            drop(seat);
            let mut writer = rq.into_writer();
            let _ = write_complete(&mut writer, &head, &rest);
        }
    }
}

/// Whether the client ends the connection after this request
/// (`Connection: close`, or HTTP/1.0 without keep-alive: tiny_http then
/// reads no further request).
fn client_closes(ctx: &Ctx) -> bool {
    let conn = ctx.header("connection").unwrap_or("");
    let has = |t: &str| conn.split(',').any(|v| v.trim().eq_ignore_ascii_case(t));
    has("close") || (ctx.http10 && !has("keep-alive"))
}

/// The reason phrase of every status portcullis sends.
fn reason(status: u16) -> &'static str {
    tiny_http::StatusCode(status).default_reason_phrase()
}

/// Answers a request that found the queue full: 503 `server_busy` with
/// `Retry-After`, on the connection's own thread, without queueing.
fn answer_busy(app: &Arc<App>, rq: tiny_http::Request) {
    let mut ctx = context_from(&rq);
    ctx.request_id = crate::ids::new_request_id();
    let err = ApiError::ServerBusy { retry_after_s: 1 };
    app.metrics.record_queue_full();
    let mut reply = Reply::error(&err, &ctx.request_id, false);
    filters::headers::decorate(&mut reply, &ctx, &app.cfg);
    ctx.error_code = Some(err.kind());
    send(app, rq, reply, &mut ctx, None);
}

/// The one place a finished request is counted (metrics) and logged (the
/// access line): plain answers, relays, streams, a full line, refusals.
fn finish(app: &App, ctx: &Ctx, status: u16, bytes: usize) {
    app.metrics
        .record(ctx.route, status, ctx.started.elapsed(), ctx.error_code);
    access_log(ctx, status, bytes);
}

fn access_log(ctx: &Ctx, status: u16, bytes: usize) {
    if log::Level::Info > log::max_level() {
        return;
    }
    let micros = ctx.started.elapsed().as_micros() as u64;
    // Built by hand into one buffer rather than through a serde_json map:
    // this line is written for every request. Every string that comes from
    // the request goes through `push_json_str`.
    use std::fmt::Write as _;
    let mut line = String::with_capacity(320);
    line.push_str("{\"time\":\"");
    line.push_str(&crate::time::format_rfc3339_millis(
        std::time::SystemTime::now(),
    ));
    line.push_str("\",\"level\":\"info\",\"msg\":\"request\",\"request_id\":");
    logging::push_json_str(&mut line, &ctx.request_id);
    let _ = write!(line, ",\"method\":\"{}\",\"path\":", ctx.method.as_str());
    logging::push_json_str(&mut line, &logging::log_path(&ctx.path, &ctx.query));
    line.push_str(",\"route\":");
    match ctx.route {
        Some(r) => logging::push_json_str(&mut line, r.name()),
        None => line.push_str("null"),
    }
    let _ = write!(
        line,
        ",\"status\":{},\"bytes\":{},\"duration_ms\":{}.{:03},\"client\":\"{}\"}}",
        status,
        bytes,
        micros / 1000,
        micros % 1000,
        ctx.client
    );
    logging::write_line(log::Level::Info, line);
}

/// Routes panics to the JSON log (message and location, no backtrace on
/// the wire). Installed once at start-up.
pub fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".to_string());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()));
        logging::error(
            "panic",
            &[
                ("panic", json!(logging::redact_text(&msg))),
                ("location", json!(location)),
            ],
        );
    }));
}
