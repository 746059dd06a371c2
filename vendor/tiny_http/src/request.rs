use std::io::Error as IoError;
use std::io::{self, Cursor, ErrorKind, Read, Write};

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use std::any::Any;
use std::convert::TryFrom;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;

use crate::body::BodyError;
use crate::head::Framing;
use crate::util::{EqualReader, FusedReader};
use crate::{HTTPVersion, Header, Method, Response, StatusCode};
use chunked_transfer::Decoder;

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// # Pipelining
///
/// If a client sends multiple requests in a row (without waiting for the response), then you will
/// get multiple `Request` objects simultaneously. This is called *requests pipelining*.
/// Tiny-http automatically reorders the responses so that you don't need to worry about the order
/// in which you call `respond` or `into_writer`.
///
/// This mechanic is disabled if:
///
///  - The body of a request is large enough (handling requires pipelining requires storing the
///    body of the request in a buffer ; if the body is too big, tiny-http will avoid doing that)
///  - A request sends a `Expect: 100-continue` header (which means that the client waits to
///    know whether its body will be processed before sending it)
///  - A request sends a `Connection: close` header or `Connection: upgrade` header (used for
///    websockets), which indicates that this is the last request that will be received on this
///    connection
///
/// # Automatic cleanup
///
/// If a `Request` object is destroyed without `into_writer` or `respond` being called,
/// an empty response with a 500 status code (internal server error) will automatically be
/// sent back to the client.
/// This means that if your code fails during the handling of a request, this "internal server
/// error" response will automatically be sent during the stack unwinding.
///
/// # Testing
///
/// If you want to build fake requests to test your server, use [`TestRequest`](crate::test::TestRequest).
pub struct Request {
    // portcullis patch: the body, received or pending (see `BodyState`)
    body: BodyState,

    // portcullis patch: why receiving the body failed, if it did
    body_error: Option<BodyError>,

    // if this writer is empty, then the request has been answered
    response_writer: Option<Box<dyn Write + Send + 'static>>,

    remote_addr: Option<SocketAddr>,

    // true if HTTPS, false if HTTP
    secure: bool,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    body_length: Option<usize>,

    // true if a `100 Continue` response must be sent before the body is read
    must_send_continue: bool,

    // If Some, a message must be sent after responding
    notify_when_responded: Option<Sender<()>>,

    // portcullis patch: shared with the connection; when set, the response
    // says `Connection: close`, an unread body is not drained and the
    // connection reads no further request.
    close_after: Arc<AtomicBool>,

    // portcullis patch: the connection's descriptor (write half)
    raw_fd: Option<i32>,

    // portcullis patch: while the body is pending, the connection's thread
    // waits on the other end for this request to come back (to receive its
    // body) or to be dropped (answered without it).
    handback: Option<SyncSender<Request>>,
    handback_rx: Option<Receiver<Request>>,
    // portcullis patch: the most body bytes the embedder accepts
    body_cap: u64,
    // portcullis patch: the embedder's state across a handback
    state: Option<Box<dyn Any + Send + 'static>>,
}

/// portcullis patch: where a request's body is.
enum BodyState {
    /// Received whole (perhaps empty). `hold` is the connection's reader:
    /// kept until the request is finished, so the connection's thread
    /// reads the next request only then.
    Received {
        body: Cursor<Vec<u8>>,
        hold: Box<dyn BufRead + Send + 'static>,
    },
    /// Not read yet: on the connection's thread after a handback
    /// (`receive_body_later`), or lazily through `as_reader`.
    Pending {
        framing: Framing,
        source: Box<dyn BufRead + Send + 'static>,
    },
    /// Being read lazily through `as_reader`.
    Lazy(Box<dyn Read + Send + 'static>),
    /// Handed out (`into_writer_and_reader`, `upgrade`).
    Gone,
}

struct NotifyOnDrop<R> {
    sender: Sender<()>,
    inner: R,
}

impl<R: Read> Read for NotifyOnDrop<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl<R: Write> Write for NotifyOnDrop<R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
impl<R> Drop for NotifyOnDrop<R> {
    fn drop(&mut self) {
        self.sender.send(()).unwrap();
    }
}

/// portcullis patch: a body read ahead of time, holding the connection's
/// reader so the next request is read only after this one is finished.
struct Prebuffered<R> {
    body: Cursor<Vec<u8>>,
    _connection: R,
}

impl<R> Read for Prebuffered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.body.read(buf)
    }
}

/// Error that can happen when building a `Request` object.
#[derive(Debug)]
pub enum RequestCreationError {
    /// portcullis patch: a read-ahead body could not be received.
    Body(BodyError),
}

/// Builds a new request.
///
/// After the request line and headers have been read from the socket, a new `Request` object
/// is built.
///
/// portcullis patch: the framing comes from the strict head parser
/// (`head.rs`). A body of at most `prebuffer_limit` declared bytes without
/// `Expect: 100-continue` is received here, on the connection's thread,
/// within `prebuffer_timeout`; any other body stays pending until the
/// embedder hands the request back (`receive_body_later`) after deciding
/// it wants it, so no worker ever waits for a client's body.
#[allow(clippy::too_many_arguments)]
pub fn new_request<R, W>(
    secure: bool,
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
    framing: Framing,
    expects_continue: bool,
    remote_addr: Option<SocketAddr>,
    mut source_data: R,
    writer: W,
    close_after: Arc<AtomicBool>,
    raw_fd: Option<i32>,
    prebuffer_limit: usize,
    prebuffer_timeout: Option<std::time::Duration>,
) -> Result<Request, RequestCreationError>
where
    R: BufRead + Send + 'static,
    W: Write + Send + 'static,
{
    let body_length = match framing {
        Framing::None => Some(0),
        Framing::Length(n) => usize::try_from(n).ok(),
        Framing::Chunked => None,
    };
    let received = |bytes: Vec<u8>, hold: R| BodyState::Received {
        body: Cursor::new(bytes),
        hold: Box::new(hold),
    };
    let mut handback = None;
    let mut handback_rx = None;
    let body = match framing {
        Framing::None => received(Vec::new(), source_data),
        Framing::Length(n) if n <= prebuffer_limit as u64 && !expects_continue => {
            let deadline = prebuffer_timeout.map(|t| std::time::Instant::now() + t);
            let bytes = crate::body::receive(&mut source_data, framing, n, deadline)
                .map_err(RequestCreationError::Body)?;
            received(bytes, source_data)
        }
        _ => {
            let (tx, rx) = sync_channel(1);
            handback = Some(tx);
            handback_rx = Some(rx);
            BodyState::Pending {
                framing,
                source: Box::new(source_data),
            }
        }
    };

    Ok(Request {
        body,
        body_error: None,
        response_writer: Some(Box::new(writer) as Box<dyn Write + Send + 'static>),
        remote_addr,
        secure,
        method,
        path,
        http_version: version,
        headers,
        body_length,
        must_send_continue: expects_continue,
        notify_when_responded: None,
        close_after,
        raw_fd,
        handback,
        handback_rx,
        body_cap: 0,
        state: None,
    })
}

impl Request {
    /// portcullis patch: closes the connection after this request's response
    /// instead of draining an unread body and reading the next request from
    /// it. Use it whenever a body is refused or abandoned (no drain without
    /// timeout, no request smuggling through an unread chunked remainder).
    pub fn close_connection(&self) {
        self.close_after.store(true, Ordering::Release);
    }

    /// portcullis patch: whether `close_connection` was called (or the
    /// server is closing this connection).
    pub fn closes_connection(&self) -> bool {
        self.close_after.load(Ordering::Acquire)
    }

    /// portcullis patch: the connection's socket descriptor. It stays valid
    /// while the response writer (from `into_writer_and_reader`) lives, so
    /// the embedder can poll it to notice a client that hung up mid-stream.
    pub fn socket_fd(&self) -> Option<i32> {
        self.raw_fd
    }

    /// portcullis patch: true while the body has not been received (larger
    /// than the read-ahead limit, chunked, or `Expect: 100-continue`).
    pub fn body_pending(&self) -> bool {
        matches!(self.body, BodyState::Pending { .. })
    }

    /// portcullis patch: the received body (empty when there is none or it
    /// is still pending), taken out without a copy.
    pub fn take_body(&mut self) -> Vec<u8> {
        match &mut self.body {
            BodyState::Received { body, .. } => std::mem::take(body.get_mut()),
            _ => Vec::new(),
        }
    }

    /// portcullis patch: why receiving the body failed, after a handback.
    /// The connection closes after the response.
    pub fn body_error(&self) -> Option<BodyError> {
        self.body_error
    }

    /// portcullis patch: hands a request whose body is pending back to its
    /// connection's thread, which answers `100 Continue` if the client
    /// asked for it, receives at most `cap` bytes of body within the body
    /// timeout, and queues the request again with `state` attached
    /// (`take_state`). The caller (a worker) is free at once: a slow body
    /// holds only its connection's thread. Gives the request back when it
    /// has no pending body or its connection is gone.
    #[allow(clippy::result_large_err)] // the request itself comes back
    pub fn receive_body_later(
        mut self,
        cap: u64,
        state: Box<dyn Any + Send + 'static>,
    ) -> Result<(), Request> {
        let Some(tx) = self.handback.take().filter(|_| self.body_pending()) else {
            return Err(self);
        };
        self.body_cap = cap;
        self.state = Some(state);
        tx.send(self).map_err(|e| e.0)
    }

    /// portcullis patch: the state given to `receive_body_later`.
    pub fn take_state(&mut self) -> Option<Box<dyn Any + Send + 'static>> {
        self.state.take()
    }

    /// portcullis patch: the receiving end of `receive_body_later`, taken
    /// by the connection's thread before the request is queued.
    pub(crate) fn take_handback(&mut self) -> Option<Receiver<Request>> {
        self.handback_rx.take()
    }

    /// portcullis patch: runs on the connection's thread after a handback:
    /// `100 Continue` if asked, then the whole body (see `body::receive`).
    /// A failure is kept in `body_error` and closes the connection.
    pub(crate) fn receive_pending_body(&mut self, timeout: Option<std::time::Duration>) {
        let BodyState::Pending {
            framing,
            mut source,
        } = std::mem::replace(&mut self.body, BodyState::Gone)
        else {
            return;
        };
        let mut result = Ok(());
        if self.must_send_continue {
            self.must_send_continue = false;
            let writer = self.response_writer.as_mut().unwrap();
            let version = self.http_version.clone();
            result = writer
                .write_all(format!("HTTP/{} 100 Continue\r\n\r\n", version).as_bytes())
                .and_then(|_| writer.flush())
                .map_err(|_| BodyError::Closed);
        }
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let bytes = result
            .and_then(|_| crate::body::receive(&mut source, framing, self.body_cap, deadline));
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                self.body_error = Some(e);
                self.close_connection();
                Vec::new()
            }
        };
        self.body = BodyState::Received {
            body: Cursor::new(bytes),
            hold: source,
        };
    }

    /// portcullis patch: like `into_writer`, but also hands over the body
    /// reader. While the caller holds the reader, the connection's thread
    /// stays parked (it cannot read or shut down the socket), so the caller
    /// owns the socket alone for a long streamed response. Call
    /// `close_connection` first: the connection then ends after the stream.
    pub fn into_writer_and_reader(
        mut self,
    ) -> (
        Box<dyn Write + Send + 'static>,
        Box<dyn Read + Send + 'static>,
    ) {
        let writer = self.into_writer_impl_notify();
        let reader = self.extract_reader_impl();
        (writer, reader)
    }

    fn into_writer_impl_notify(&mut self) -> Box<dyn Write + Send + 'static> {
        let writer = self.extract_writer_impl();
        if let Some(sender) = self.notify_when_responded.take() {
            Box::new(NotifyOnDrop {
                sender,
                inner: writer,
            })
        } else {
            writer
        }
    }

    /// Returns true if the request was made through HTTPS.
    #[inline]
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by the client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the length of the body in bytes.
    ///
    /// Returns `None` if the length is unknown.
    #[inline]
    pub fn body_length(&self) -> Option<usize> {
        self.body_length
    }

    /// Returns the address of the client that sent this request.
    ///
    /// The address is always `Some` for TCP listeners, but always `None` for UNIX listeners
    /// (as the remote address of a UNIX client is almost always unnamed).
    ///
    /// Note that this is gathered from the socket. If you receive the request from a proxy,
    /// this function will return the address of the proxy and not the address of the actual
    /// user.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// Sends a response with a `Connection: upgrade` header, then turns the `Request` into a `Stream`.
    ///
    /// The main purpose of this function is to support websockets.
    /// If you detect that the request wants to use some kind of protocol upgrade, you can
    ///  call this function to obtain full control of the socket stream.
    ///
    /// If you call this on a non-websocket request, tiny-http will wait until this `Stream` object
    ///  is destroyed before continuing to read or write on the socket. Therefore you should always
    ///  destroy it as soon as possible.
    pub fn upgrade<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> Box<dyn ReadWrite + Send> {
        use crate::util::CustomStream;

        response
            .raw_print(
                self.response_writer.as_mut().unwrap().by_ref(),
                self.http_version.clone(),
                &self.headers,
                false,
                Some(protocol),
            )
            .ok(); // TODO: unused result

        self.response_writer.as_mut().unwrap().flush().ok(); // TODO: unused result

        let stream = CustomStream::new(self.extract_reader_impl(), self.extract_writer_impl());
        if let Some(sender) = self.notify_when_responded.take() {
            let stream = NotifyOnDrop {
                sender,
                inner: stream,
            };
            Box::new(stream) as Box<dyn ReadWrite + Send>
        } else {
            Box::new(stream) as Box<dyn ReadWrite + Send>
        }
    }

    /// Allows to read the body of the request.
    ///
    /// # Example
    ///
    /// ```ignore
    /// # extern crate rustc_serialize;
    /// # extern crate tiny_http;
    /// # use rustc_serialize::json::Json;
    /// # use std::io::Read;
    /// # fn get_content_type(_: &tiny_http::Request) -> &'static str { "" }
    /// # fn main() {
    /// # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
    /// let mut request = server.recv().unwrap();
    ///
    /// if get_content_type(&request) == "application/json" {
    ///     let mut content = String::new();
    ///     request.as_reader().read_to_string(&mut content).unwrap();
    ///     let json: Json = content.parse().unwrap();
    /// }
    /// # }
    /// ```
    ///
    /// If the client sent a `Expect: 100-continue` header with the request, calling this
    ///  function will send back a `100 Continue` response.
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        if let BodyState::Pending { .. } = self.body {
            // portcullis patch: a pending body read lazily (the embedder
            // chose to read it itself, on its own thread and time).
            if self.must_send_continue {
                let msg = Response::new_empty(StatusCode(100));
                msg.raw_print(
                    self.response_writer.as_mut().unwrap().by_ref(),
                    self.http_version.clone(),
                    &self.headers,
                    true,
                    None,
                )
                .ok();
                self.response_writer.as_mut().unwrap().flush().ok();
                self.must_send_continue = false;
            }
            if let BodyState::Pending { framing, source } =
                std::mem::replace(&mut self.body, BodyState::Gone)
            {
                let reader: Box<dyn Read + Send + 'static> = match framing {
                    Framing::Length(n) => {
                        let (r, _) = EqualReader::new(
                            source,
                            usize::try_from(n).unwrap_or(usize::MAX),
                            self.close_after.clone(),
                        );
                        Box::new(FusedReader::new(r))
                    }
                    _ => Box::new(FusedReader::new(Decoder::new(source))),
                };
                self.body = BodyState::Lazy(reader);
            }
        }
        if let BodyState::Gone = self.body {
            self.body = BodyState::Lazy(Box::new(io::empty()));
        }
        match &mut self.body {
            BodyState::Received { body, .. } => body,
            BodyState::Lazy(r) => r,
            _ => unreachable!("a pending body became lazy above"),
        }
    }

    /// Turns the `Request` into a writer.
    ///
    /// The writer has a raw access to the stream to the user.
    /// This function is useful for things like CGI.
    ///
    /// Note that the destruction of the `Writer` object may trigger
    /// some events. For exemple if a client has sent multiple requests and the requests
    /// have been processed in parallel, the destruction of a writer will trigger
    /// the writing of the next response.
    /// Therefore you should always destroy the `Writer` as soon as possible.
    #[inline]
    pub fn into_writer(mut self) -> Box<dyn Write + Send + 'static> {
        let writer = self.extract_writer_impl();
        if let Some(sender) = self.notify_when_responded.take() {
            let writer = NotifyOnDrop {
                sender,
                inner: writer,
            };
            Box::new(writer) as Box<dyn Write + Send + 'static>
        } else {
            writer
        }
    }

    /// Extract the response `Writer` object from the Request, dropping this `Writer` has the same side effects
    /// as the object returned by `into_writer` above.
    ///
    /// This may only be called once on a single request.
    fn extract_writer_impl(&mut self) -> Box<dyn Write + Send + 'static> {
        use std::mem;

        assert!(self.response_writer.is_some());

        let mut writer = None;
        mem::swap(&mut self.response_writer, &mut writer);
        writer.unwrap()
    }

    /// Extract the body `Reader` object from the Request.
    ///
    /// This may only be called once on a single request.
    fn extract_reader_impl(&mut self) -> Box<dyn Read + Send + 'static> {
        self.close_if_body_unread();
        match std::mem::replace(&mut self.body, BodyState::Gone) {
            BodyState::Received { body, hold } => Box::new(Prebuffered {
                body,
                _connection: hold,
            }),
            BodyState::Pending { source, .. } => source,
            BodyState::Lazy(r) => r,
            BodyState::Gone => Box::new(io::empty()),
        }
    }

    /// portcullis patch: a body that was never read is never drained nor
    /// parsed as the next request: the connection closes after this one.
    fn close_if_body_unread(&self) {
        if let BodyState::Pending { .. } = self.body {
            self.close_connection();
        }
    }

    /// Sends a response to this request.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let res = self.respond_impl(response);
        if let Some(sender) = self.notify_when_responded.take() {
            sender.send(()).unwrap();
        }
        res
    }

    fn respond_impl<R>(&mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        self.close_if_body_unread();
        let mut writer = self.extract_writer_impl();

        let do_not_send_body = self.method == Method::Head;
        let response = if self.closes_connection() {
            response.with_connection_close()
        } else {
            response
        };

        Self::ignore_client_closing_errors(response.raw_print(
            writer.by_ref(),
            self.http_version.clone(),
            &self.headers,
            do_not_send_body,
            None,
        ))?;

        Self::ignore_client_closing_errors(writer.flush())
    }

    fn ignore_client_closing_errors(result: io::Result<()>) -> io::Result<()> {
        result.or_else(|err| match err.kind() {
            ErrorKind::BrokenPipe => Ok(()),
            ErrorKind::ConnectionAborted => Ok(()),
            ErrorKind::ConnectionRefused => Ok(()),
            ErrorKind::ConnectionReset => Ok(()),
            _ => Err(err),
        })
    }

    pub(crate) fn with_notify_sender(mut self, sender: Sender<()>) -> Self {
        self.notify_when_responded = Some(sender);
        self
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.close_if_body_unread();
        if self.response_writer.is_some() {
            let response = Response::empty(500);
            let _ = self.respond_impl(response); // ignoring any potential error
            if let Some(sender) = self.notify_when_responded.take() {
                sender.send(()).unwrap();
            }
        }
    }
}

/// Dummy trait that regroups the `Read` and `Write` traits.
///
/// Automatically implemented on all types that implement both `Read` and `Write`.
pub trait ReadWrite: Read + Write {}
impl<T> ReadWrite for T where T: Read + Write {}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
