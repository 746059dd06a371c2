use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::body::BodyError;
use crate::common::HTTPVersion;
use crate::head::{Head, HeadError, HeadLimits, HeadScanner};
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: IoResult<Option<SocketAddr>>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // portcullis patch: head limits
    max_line: usize,
    max_head: usize,
    max_headers: usize,
    head_timeout: Option<std::time::Duration>,
    prebuffer_body_bytes: usize,
    prebuffer_timeout: Option<std::time::Duration>,
    // portcullis patch: set by a `Request` whose connection must close after
    // its response (refused or abandoned body): the next head is never read.
    close_after: Arc<AtomicBool>,
    // portcullis patch: descriptor of the write half (lives as long as a
    // response writer does)
    raw_fd: Option<i32>,
    // portcullis patch: renders the answers this layer writes itself
    limits: Arc<crate::Limits>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    /// portcullis patch: the head broke a rule of `head.rs` (answered with
    /// its status, then the connection closes)
    Head(HeadError),
    /// portcullis patch: the head or a read-ahead body was too slow (408)
    TimedOut,
    /// portcullis patch: a read-ahead body broke the chunked grammar (400)
    BadBody,
    /// the client went away, or an I/O error: close without an answer
    ReadIoError(IoError),
    /// portcullis patch: the previous request asked for the connection to close
    Closing,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: Arc<crate::Limits>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr();
        let raw_fd = write_socket.raw_fd();
        let secure = read_socket.secure();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            max_line: limits.max_request_line_bytes,
            max_head: limits.max_head_bytes,
            max_headers: limits.max_headers,
            head_timeout: limits.head_timeout,
            prebuffer_body_bytes: limits.prebuffer_body_bytes,
            prebuffer_timeout: limits.prebuffer_timeout,
            close_after: Arc::new(AtomicBool::new(false)),
            raw_fd,
            limits,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// portcullis patch: reads one request head through the strict
    /// scanner (`head.rs`) straight from the `BufReader`'s buffer: bytes
    /// after the head stay unread (they are the body or the next request),
    /// memory never exceeds `max_head_bytes`, and the whole head must
    /// arrive within `head_timeout` of its first byte, however a client
    /// paces it.
    fn read_head(&mut self) -> Result<Head, ReadError> {
        use std::io::BufRead;
        let limits = HeadLimits {
            max_line: self.max_line,
            max_head: self.max_head,
            max_headers: self.max_headers,
        };
        let head_timeout = self.head_timeout;
        let mut deadline: Option<std::time::Instant> = None;
        let mut scanner = HeadScanner::new(limits);
        let reader = self.next_header_source.turn_mut().ok_or_else(|| {
            ReadError::ReadIoError(IoError::new(
                ErrorKind::ConnectionAborted,
                "connection closed",
            ))
        })?;
        loop {
            let available = match reader.fill_buf() {
                Ok([]) => {
                    return Err(ReadError::ReadIoError(IoError::new(
                        ErrorKind::ConnectionAborted,
                        "Unexpected EOF",
                    )))
                }
                Ok(a) => a,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                // A socket timeout in the middle of a head is a slow head;
                // before its first byte it is an idle keep-alive connection.
                Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => {
                    return Err(if scanner.started() {
                        ReadError::TimedOut
                    } else {
                        ReadError::ReadIoError(e)
                    })
                }
                Err(e) => return Err(ReadError::ReadIoError(e)),
            };
            let now = std::time::Instant::now();
            match deadline {
                None => deadline = head_timeout.map(|t| now + t),
                Some(d) if now > d => return Err(ReadError::TimedOut),
                Some(_) => {}
            }
            let (used, complete) = scanner.feed(available).map_err(ReadError::Head)?;
            reader.consume(used);
            if complete {
                return scanner.parse().map_err(ReadError::Head);
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        // portcullis patch: once the previous request is done, close at
        // once when it asked to (refused or abandoned body) instead of
        // waiting for a next line that may never come (the connection
        // would stay open until the read timeout).
        self.next_header_source.wait_turn();
        if self.close_after.load(Ordering::Acquire) {
            return Err(ReadError::Closing);
        }
        let head = self.read_head()?;
        if self.close_after.load(Ordering::Acquire) {
            return Err(ReadError::Closing);
        }

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        crate::request::new_request(
            self.secure,
            head.method,
            head.target,
            head.version,
            head.headers,
            head.framing,
            head.expects_continue,
            // portcullis patch: stock tiny_http unwrapped this and panicked
            // when the client vanished before the head was read (ENOTCONN).
            self.remote_addr.as_ref().ok().and_then(|a| *a),
            data_source,
            writer,
            self.close_after.clone(),
            self.raw_fd,
            self.prebuffer_body_bytes,
            self.prebuffer_timeout,
        )
        .map_err(|e| match e {
            crate::request::RequestCreationError::Body(BodyError::TimedOut) => ReadError::TimedOut,
            crate::request::RequestCreationError::Body(BodyError::Malformed) => ReadError::BadBody,
            crate::request::RequestCreationError::Body(_) => ReadError::ReadIoError(IoError::new(
                ErrorKind::ConnectionAborted,
                "body incomplete",
            )),
        })
    }

    /// portcullis patch: writes the HTTP layer's own answer (rendered by
    /// the embedder: request id, security headers, JSON error) after any
    /// earlier pipelined response, then the connection closes.
    fn refuse(&mut self, status: u16, reason: &'static str) {
        use std::io::Write;
        let refusal = crate::limits::Refusal {
            status,
            reason,
            peer: self.remote_addr.as_ref().ok().and_then(|a| *a),
        };
        let bytes = self.limits.render_refusal(&refusal);
        let mut writer = self.sink.next().unwrap();
        let _ = writer.write_all(&bytes).and_then(|_| writer.flush());
        drop(writer);
        if let Some(reader) = self.next_header_source.turn_mut() {
            reader.get_mut().linger_close();
        }
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        let rq = match self.read() {
            Ok(rq) => rq,
            Err(ReadError::Head(e)) => {
                self.refuse(e.status(), e.reason());
                return None;
            }
            Err(ReadError::TimedOut) => {
                self.refuse(408, "request head or body too slow");
                return None;
            }
            Err(ReadError::BadBody) => {
                self.refuse(400, "malformed chunked body");
                return None;
            }
            Err(ReadError::Closing) | Err(ReadError::ReadIoError(_)) => return None,
        };
        {
            // updating the status of the connection
            let connection_header = rq
                .headers()
                .iter()
                .find(|h| h.field.equiv("Connection"))
                .map(|h| h.value.as_str());

            let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

            match lowercase {
                Some(ref val) if val.contains("close") => self.no_more_requests = true,
                Some(ref val) if val.contains("upgrade") => self.no_more_requests = true,
                Some(ref val)
                    if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
                {
                    self.no_more_requests = true
                }
                None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
                _ => (),
            };

            // returning the request
            Some(rq)
        }
    }
}
