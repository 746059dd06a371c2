use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::common::{HTTPVersion, Method};
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
    head_deadline: Option<std::time::Instant>,
    prebuffer_body_bytes: usize,
    prebuffer_timeout: Option<std::time::Duration>,
    // portcullis patch: set by a `Request` whose connection must close after
    // its response (refused or abandoned body): the next head is never read.
    close_after: Arc<AtomicBool>,
    // portcullis patch: descriptor of the write half (lives as long as a
    // response writer does)
    raw_fd: Option<i32>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// portcullis patch: request line over the limit (414)
    UriTooLong,
    /// portcullis patch: header line, head size or header count over the limit (431)
    HeadTooLarge,
    /// portcullis patch: the previous request asked for the connection to close
    Closing,
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        limits: &crate::Limits,
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
            head_deadline: None,
            prebuffer_body_bytes: limits.prebuffer_body_bytes,
            prebuffer_timeout: limits.prebuffer_timeout,
            close_after: Arc::new(AtomicBool::new(false)),
            raw_fd,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    ///
    /// portcullis patch: a line of `limit` bytes without CRLF is an error of
    /// kind `InvalidData`, so memory stays bounded whatever a client sends.
    fn read_next_line(&mut self, limit: usize) -> IoResult<AsciiString> {
        use std::io::BufRead;
        let head_timeout = self.head_timeout;
        let deadline = &mut self.head_deadline;
        let reader = self
            .next_header_source
            .turn_mut()
            .ok_or_else(|| IoError::new(ErrorKind::ConnectionAborted, "connection closed"))?;
        let mut buf: Vec<u8> = Vec::new();
        loop {
            let available = reader.fill_buf()?;
            if available.is_empty() {
                return Err(IoError::new(ErrorKind::ConnectionAborted, "Unexpected EOF"));
            }
            // portcullis patch: the whole head must arrive within
            // `head_timeout` of its first byte; checked whenever data is
            // needed, so a trickling client is cut however it paces bytes.
            let now = std::time::Instant::now();
            match *deadline {
                None => *deadline = head_timeout.map(|t| now + t),
                Some(d) if now > d => {
                    return Err(IoError::new(ErrorKind::TimedOut, "request head too slow"))
                }
                Some(_) => {}
            }
            let (take, found) = match available.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            // portcullis patch: a line longer than `limit` is refused
            // without buffering it (stock tiny_http grew without bound).
            if buf.len() + take > limit + 2 {
                return Err(IoError::new(ErrorKind::InvalidData, "line too long"));
            }
            buf.extend_from_slice(&available[..take]);
            reader.consume(take);
            if found && buf.len() >= 2 && buf[buf.len() - 2] == b'\r' {
                buf.truncate(buf.len() - 2);
                return AsciiString::from_ascii(buf)
                    .map_err(|_| IoError::new(ErrorKind::InvalidInput, "Header is not in ASCII"));
            }
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let (method, path, version, headers) = {
            // portcullis patch: once the previous request is done, close at
            // once when it asked to (refused or abandoned body) instead of
            // waiting for a next line that may never come (the connection
            // would stay open until the read timeout).
            self.next_header_source.wait_turn();
            if self.close_after.load(Ordering::Acquire) {
                return Err(ReadError::Closing);
            }
            self.head_deadline = None;

            // reading the request line
            let mut head_budget = self.max_head;
            let (method, path, version) = {
                let line = self.read_next_line(self.max_line).map_err(|e| {
                    if e.kind() == ErrorKind::InvalidData {
                        ReadError::UriTooLong
                    } else {
                        ReadError::ReadIoError(e)
                    }
                })?;
                if self.close_after.load(Ordering::Acquire) {
                    return Err(ReadError::Closing);
                }
                head_budget = head_budget.saturating_sub(line.len() + 2);

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let limit = head_budget.min(self.max_line);
                    let line = self.read_next_line(limit).map_err(|e| {
                        if e.kind() == ErrorKind::InvalidData {
                            ReadError::HeadTooLarge
                        } else {
                            ReadError::ReadIoError(e)
                        }
                    })?;
                    head_budget = head_budget.saturating_sub(line.len() + 2);

                    if line.is_empty() {
                        break;
                    };
                    if headers.len() >= self.max_headers {
                        return Err(ReadError::HeadTooLarge);
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
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
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version)
                }
            }
        })?;

        // return the request
        Ok(request)
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        use crate::{Response, StatusCode};

        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }

        loop {
            let rq = match self.read() {
                Err(ReadError::WrongRequestLine) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::WrongHeader(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(400));
                    response.raw_print(writer, ver, &[], false, None).ok();
                    return None; // we don't know where the next request would start,
                                 // se we have to close
                }

                Err(ReadError::ReadIoError(ref err)) if err.kind() == ErrorKind::TimedOut => {
                    // request timeout
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(408));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None; // closing the connection
                }

                Err(ReadError::ExpectationFailed(ver)) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(417));
                    response.raw_print(writer, ver, &[], true, None).ok();
                    return None; // TODO: should be recoverable, but needs handling in case of body
                }

                Err(ReadError::UriTooLong) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(414));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None;
                }

                Err(ReadError::HeadTooLarge) => {
                    let writer = self.sink.next().unwrap();
                    let response = Response::new_empty(StatusCode(431));
                    response
                        .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                        .ok();
                    return None;
                }

                Err(ReadError::Closing) => return None,

                Err(ReadError::ReadIoError(_)) => return None,

                Ok(rq) => rq,
            };

            // checking HTTP version
            if *rq.http_version() > (1, 1) {
                let writer = self.sink.next().unwrap();
                let response = Response::from_string(
                    "This server only supports HTTP versions 1.0 and 1.1".to_owned(),
                )
                .with_status_code(StatusCode(505));
                response
                    .raw_print(writer, HTTPVersion(1, 1), &[], false, None)
                    .ok();
                continue;
            }

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
            return Some(rq);
        }
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
    }
}
