//! The request context and the reply that handlers work with. Handlers and
//! filters never see tiny_http types: `server.rs` converts at the edge.

use std::io::Write;
use std::net::IpAddr;
use std::time::Instant;

use crate::router::Route;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Other,
}

impl Method {
    pub fn parse(s: &str) -> Method {
        match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }

    /// POST/PUT/PATCH/DELETE: the methods the Origin and CSRF checks guard.
    pub fn is_unsafe(self) -> bool {
        matches!(
            self,
            Method::Post | Method::Put | Method::Patch | Method::Delete | Method::Other
        )
    }
}

/// Per-rate-limit-decision data the response headers are built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateInfo {
    pub policy: &'static str,
    pub limit: u32,
    pub remaining: u32,
    pub reset_s: u64,
    pub window_s: u64,
}

/// One request as filters and handlers see it.
pub struct Ctx {
    pub request_id: String,
    pub method: Method,
    /// Path without the query string.
    pub path: String,
    /// The raw query string (without `?`), never logged.
    pub query: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub peer: IpAddr,
    /// The resolved client address (filter 4).
    pub client: IpAddr,
    /// Declared body length, if any.
    pub content_length: Option<u64>,
    /// True when the body is chunked (length unknown until read).
    pub chunked: bool,
    /// The body, read after the filters passed (bounded by the cap).
    pub body: Vec<u8>,
    pub route: Option<Route>,
    pub params: Vec<String>,
    /// The authenticated API key's id (filter 5).
    pub key_id: Option<String>,
    /// The user the request acts for (filter 5; the built-in `local` user
    /// in auth mode `none`). Storage calls take its `owner()`.
    pub principal: Option<crate::db::Principal>,
    /// The authenticating key's model allowlist (None: any model).
    pub key_models: Option<Vec<String>>,
    /// The hash of the session the request authenticated with (a session
    /// cookie): unsafe requests then need a CSRF token bound to it.
    pub session: Option<String>,
    /// The request's Origin when it is allowed (for CORS headers).
    pub cors_origin: Option<String>,
    pub rate: Option<RateInfo>,
    /// The contract error code this request was answered with, if any.
    pub error_code: Option<crate::error::Code>,
    /// Set when the connection must close after the response (refused or
    /// unread body): see tiny_http's patched `Request::close_connection`.
    pub close_connection: bool,
    /// An HTTP/1.0 request (keep-alive only when asked for).
    pub http10: bool,
    pub started: Instant,
}

impl Ctx {
    /// A context for tests and for synthetic requests.
    pub fn new(method: Method, path_and_query: &str, peer: IpAddr) -> Ctx {
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p.to_string(), q.to_string()),
            None => (path_and_query.to_string(), String::new()),
        };
        Ctx {
            request_id: String::new(),
            method,
            path,
            query,
            headers: Vec::new(),
            peer,
            client: peer,
            content_length: None,
            chunked: false,
            body: Vec::new(),
            route: None,
            params: Vec::new(),
            key_id: None,
            principal: None,
            key_models: None,
            session: None,
            cors_origin: None,
            rate: None,
            error_code: None,
            close_connection: false,
            http10: false,
            started: Instant::now(),
        }
    }

    /// A copy without headers or body: what decorating and logging a
    /// response need, for threads that finish the request (streams).
    pub fn detached(&self) -> Ctx {
        Ctx {
            request_id: self.request_id.clone(),
            method: self.method,
            path: self.path.clone(),
            query: self.query.clone(),
            headers: Vec::new(),
            peer: self.peer,
            client: self.client,
            content_length: None,
            chunked: false,
            body: Vec::new(),
            route: self.route,
            params: Vec::new(),
            key_id: self.key_id.clone(),
            principal: self.principal.clone(),
            key_models: self.key_models.clone(),
            session: self.session.clone(),
            cors_origin: self.cors_origin.clone(),
            rate: self.rate.clone(),
            error_code: self.error_code,
            close_connection: true,
            http10: self.http10,
            started: self.started,
        }
    }

    /// Who the request acts for; 401 when nobody authenticated (filter 5
    /// sets it for every route that needs it).
    pub fn principal(&self) -> Result<&crate::db::Principal, crate::error::ApiError> {
        self.principal
            .as_ref()
            .ok_or(crate::error::ApiError::Unauthorized)
    }

    /// The owner every storage call of this request is scoped to.
    pub fn owner(&self) -> Result<crate::db::Owner<'_>, crate::error::ApiError> {
        self.principal().map(|p| p.owner())
    }

    /// 403 `forbidden` unless the caller is an admin.
    pub fn require_admin(&self) -> Result<&crate::db::Principal, crate::error::ApiError> {
        let p = self.principal()?;
        if p.is_admin() {
            Ok(p)
        } else {
            Err(crate::error::ApiError::Forbidden)
        }
    }

    /// 403 `forbidden` when the authenticating key has a model allowlist
    /// without `model`.
    pub fn check_model(&self, model: &str) -> Result<(), crate::error::ApiError> {
        match &self.key_models {
            Some(allowed) if !allowed.iter().any(|m| m == model) => {
                Err(crate::error::ApiError::Forbidden)
            }
            _ => Ok(()),
        }
    }

    /// The value of cookie `name` (from every `Cookie` header), if sent once.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        let mut found = None;
        for header in self.header_all("cookie") {
            for pair in header.split(';') {
                if let Some((k, v)) = pair.trim().split_once('=') {
                    if k == name {
                        if found.is_some() {
                            // Sent twice: trust neither.
                            return None;
                        }
                        found = Some(v.trim());
                    }
                }
            }
        }
        found
    }

    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (lower-case), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Ctx {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k).as_deref() == Some(name))
                .then(|| percent_decode(v).unwrap_or_default())
        })
    }

    /// Whether the request declares a body.
    pub fn has_body(&self) -> bool {
        self.chunked || self.content_length.unwrap_or(0) > 0
    }
}

/// Decodes `%XX` and `+`; None on invalid escapes or invalid UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A streamed body: runs on its own thread with the raw connection writer,
/// after the server wrote the response head. It must flush what it writes.
pub type StreamFn = Box<dyn FnOnce(&mut StreamOut) + Send + 'static>;

/// Renders a complete error response (head and body) for a stream that
/// fails before it began.
pub type ErrorResponder = Box<dyn FnOnce(&crate::error::ApiError) -> Vec<u8> + Send>;

/// The kernel send buffer of a stream's socket (Linux doubles it). Without
/// a fixed size it grows to `tcp_wmem`'s maximum (often 4 MiB) for a client
/// that stops reading; SSE events are small, so this costs no speed.
const STREAM_SEND_BUFFER_BYTES: libc::c_int = 32 * 1024;

/// The client side of a streamed response: a raw writer (each `flush`
/// sends at once; nothing is buffered by tiny_http) and a probe that tells
/// whether the client hung up, so a stream can stop its upstream request
/// even while it has nothing to write.
///
/// A client that stops reading is dropped: its socket's send buffer is
/// small (`STREAM_SEND_BUFFER_BYTES`), so a blocked write comes soon, and
/// the socket's own write timeout (`write_timeout_s`, read back from the
/// socket) fails it. A client that trickles a few bytes at a time is cut
/// too: an event not handed to the kernel `write_timeout_s` after its first
/// byte fails the next write (so at most about twice that in all). After a
/// failed write nothing more is attempted, not even on drop.
pub struct StreamOut {
    writer: Box<dyn Write + Send>,
    // Held so tiny_http's connection thread stays parked while we stream
    // (see the patched `Request::into_writer_and_reader`).
    _body: Option<Box<dyn std::io::Read + Send>>,
    fd: Option<i32>,
    /// The stream's response head, written before the first byte of the
    /// body: until then the stream can still answer a plain JSON error.
    head: Option<Vec<u8>>,
    fail: Option<ErrorResponder>,
    status: u16,
    /// How long one event may take to reach the kernel.
    write_timeout: Option<std::time::Duration>,
    /// When the first byte not yet flushed was written.
    pending_since: Option<Instant>,
    /// A write failed or timed out: the client counts as gone.
    broken: bool,
}

impl StreamOut {
    pub fn new(
        writer: Box<dyn Write + Send>,
        body: Option<Box<dyn std::io::Read + Send>>,
        fd: Option<i32>,
    ) -> StreamOut {
        let write_timeout = fd.and_then(|fd| {
            limit_send_buffer(fd);
            send_timeout(fd)
        });
        StreamOut {
            writer,
            _body: body,
            fd,
            head: None,
            fail: None,
            status: 200,
            write_timeout,
            pending_since: None,
            broken: false,
        }
    }

    /// Fails once the client is known gone or the pending event is older
    /// than the write timeout.
    fn check_progress(&mut self) -> std::io::Result<()> {
        if self.broken {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stream client gone",
            ));
        }
        let since = *self.pending_since.get_or_insert_with(Instant::now);
        if self.write_timeout.is_some_and(|t| since.elapsed() >= t) {
            self.broken = true;
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "stream client stopped reading",
            ));
        }
        Ok(())
    }

    /// A stream whose head (`status`, already rendered) is sent with its
    /// first write, and which may still fail as a whole before that.
    pub fn with_pending_head(
        mut self,
        status: u16,
        head: Vec<u8>,
        fail: ErrorResponder,
    ) -> StreamOut {
        self.status = status;
        self.head = Some(head);
        self.fail = Some(fail);
        self
    }

    /// Whether the response head has been sent.
    pub fn started(&self) -> bool {
        self.head.is_none()
    }

    /// The status the client got (for the access log).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Answers a failure that happened before anything was streamed with
    /// the contract's JSON error (its real status, e.g. 502 or 504). False
    /// when the stream has already begun (then send an in-stream error).
    pub fn fail_before_start(&mut self, err: &crate::error::ApiError) -> bool {
        if self.head.is_none() {
            return false;
        }
        self.head = None;
        self.status = err.status();
        if let Some(render) = self.fail.take() {
            let bytes = render(err);
            let _ = self
                .writer
                .write_all(&bytes)
                .and_then(|_| self.writer.flush());
        }
        true
    }

    fn send_head(&mut self) -> std::io::Result<()> {
        if let Some(head) = self.head.take() {
            self.fail = None;
            self.writer.write_all(&head)?;
        }
        Ok(())
    }

    /// True when the peer closed or reset the connection, or a write to it
    /// failed or timed out. Never blocks.
    pub fn client_gone(&self) -> bool {
        if self.broken {
            return true;
        }
        let Some(fd) = self.fd else { return false };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout; the descriptor stays open
        // while `writer` (its owner) lives, which outlives this call.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0
            && pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }
}

/// A streamed body is close-delimited (`Connection: close`), so its end is
/// the end of the connection: shut the socket down at once rather than rely
/// on tiny_http's connection thread noticing (it wakes when our body reader
/// is dropped and closes, but only after this writer is gone).
impl Drop for StreamOut {
    fn drop(&mut self) {
        // A stream that wrote nothing still sends its head; a client that
        // stopped reading gets nothing more (no second write timeout).
        if !self.broken {
            let _ = self.send_head();
            let _ = self.writer.flush();
        }
        if let Some(fd) = self.fd {
            // SAFETY: the descriptor is open while `writer` lives, and it
            // is dropped only after this body.
            unsafe {
                libc::shutdown(fd, libc::SHUT_RDWR);
            }
        }
    }
}

impl Write for StreamOut {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.check_progress()?;
        let written = self.send_head().and_then(|_| self.writer.write(buf));
        self.broken = written.is_err();
        written
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.check_progress()?;
        let flushed = self.send_head().and_then(|_| self.writer.flush());
        match flushed {
            Ok(()) => self.pending_since = None,
            Err(_) => self.broken = true,
        }
        flushed
    }
}

/// Fixes the socket's send buffer at `STREAM_SEND_BUFFER_BYTES` (best
/// effort: a failure leaves the kernel's default).
fn limit_send_buffer(fd: i32) {
    let size = STREAM_SEND_BUFFER_BYTES;
    // SAFETY: a socket descriptor owned by the stream's writer and a
    // correctly sized option value.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// The socket's write timeout (SO_SNDTIMEO, set from `write_timeout_s`
/// when the connection was accepted); None when unset or unreadable.
fn send_timeout(fd: i32) -> Option<std::time::Duration> {
    let mut tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 0,
    };
    let mut len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: a valid descriptor, a correctly sized out-value and length.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &mut tv as *mut libc::timeval as *mut libc::c_void,
            &mut len,
        )
    };
    let t = std::time::Duration::new(tv.tv_sec.max(0) as u64, (tv.tv_usec.max(0) as u32) * 1000);
    (rc == 0 && !t.is_zero()).then_some(t)
}

/// Work that waits on the upstream, run after the request gave its seat
/// back (`server::handle`); its reply is decorated and written like any
/// other.
pub type DeferredFn = Box<dyn FnOnce() -> Result<Reply, crate::error::ApiError> + Send + 'static>;

pub enum Body {
    Empty,
    Bytes(Vec<u8>),
    Stream(StreamFn),
    Deferred(DeferredFn),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Body::Empty => f.write_str("Empty"),
            Body::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Body::Stream(_) => f.write_str("Stream"),
            Body::Deferred(_) => f.write_str("Deferred"),
        }
    }
}

/// Room for the headers a reply usually ends up with after `decorate`, so
/// the list is allocated once.
const REPLY_HEADERS: usize = 20;

fn with_content_type(value: HeaderValue) -> Vec<(&'static str, HeaderValue)> {
    let mut h = Vec::with_capacity(REPLY_HEADERS);
    h.push(("Content-Type", value));
    h
}

/// A header value: static text costs no allocation.
pub type HeaderValue = std::borrow::Cow<'static, str>;

/// What a handler answers.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, HeaderValue)>,
    pub body: Body,
}

impl Reply {
    pub fn json(status: u16, value: &serde_json::Value) -> Reply {
        Reply {
            status,
            headers: with_content_type("application/json".into()),
            body: Body::Bytes(serde_json::to_vec(value).unwrap_or_default()),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::with_capacity(REPLY_HEADERS),
            body: Body::Empty,
        }
    }

    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: with_content_type(content_type.into()),
            body: Body::Bytes(body),
        }
    }

    /// An SSE (or other streamed) reply; `run` gets the raw writer.
    pub fn stream(status: u16, content_type: &'static str, run: StreamFn) -> Reply {
        Reply {
            status,
            headers: with_content_type(content_type.into()),
            body: Body::Stream(run),
        }
    }

    /// A reply computed after the request gave its seat back, so no seat
    /// waits while the upstream thinks.
    pub fn deferred(run: DeferredFn) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: Body::Deferred(run),
        }
    }

    pub fn with_header(mut self, name: &'static str, value: impl Into<HeaderValue>) -> Reply {
        self.set_header(name, value);
        self
    }

    /// Sets a header, replacing one of the same name.
    pub fn set_header(&mut self, name: &'static str, value: impl Into<HeaderValue>) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name, value.into()));
    }

    /// Adds a header the caller knows is not set yet (no search).
    pub fn push_header(&mut self, name: &'static str, value: impl Into<HeaderValue>) {
        self.headers.push((name, value.into()));
    }

    /// The header block as raw lines (`Name: value\r\n`), skipping any
    /// header whose name or value holds a control character, so no value
    /// (some echo request data) can split the response.
    pub fn render_headers(&self, out: &mut Vec<u8>) {
        let clean = |s: &str| !s.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f);
        for (n, v) in &self.headers {
            // Names and borrowed values are our own constants; only values
            // built at run time (some echo request data) are checked.
            let value_ok = matches!(v, std::borrow::Cow::Borrowed(_)) || clean(v);
            if value_ok {
                out.extend_from_slice(n.as_bytes());
                out.extend_from_slice(b": ");
                out.extend_from_slice(v.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The reply for an error, in the contract's shape.
    pub fn error(err: &crate::error::ApiError, request_id: &str, debug: bool) -> Reply {
        let mut r = Reply::bytes(
            err.status(),
            "application/json",
            err.to_body(request_id, debug),
        );
        for (n, v) in err.headers() {
            r.set_header(n, v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params_are_decoded() {
        let c = Ctx::new(
            Method::Get,
            "/x?a=1&project_id=ab%20c&flag",
            "127.0.0.1".parse().unwrap(),
        );
        assert_eq!(c.query_param("project_id").as_deref(), Some("ab c"));
        assert_eq!(c.query_param("flag").as_deref(), Some(""));
        assert_eq!(c.query_param("none"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
