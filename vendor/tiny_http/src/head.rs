//! portcullis patch: strict request heads (RFC 9112).
//!
//! Stock tiny_http read heads line by line with a lenient parser: it took
//! bare LF as a line end, turned an obs-fold line into a new header,
//! treated any `Transfer-Encoding` as chunked, accepted `+12` and differing
//! `Content-Length`s, and hung on `HTTP/2.0` (portcullis issue 10). Here a
//! head is scanned as it arrives (`HeadScanner`, so limits and line-ending
//! rules hold before the head is complete and memory never exceeds
//! `max_head_bytes`), then parsed by `httparse` (the parser under hyper) and
//! checked against the framing rules of portcullis' contract ("HTTP
//! framing"). Every `HeadError` is answered and the connection closed.

use ascii::AsciiString;

use crate::common::{HTTPVersion, Header, HeaderField, Method};

/// How the request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no Content-Length, no Transfer-Encoding).
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Why a head was refused; each maps to one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// 400: malformed framing; the text says which rule (for logs only).
    BadRequest(&'static str),
    /// 414: request line over `max_request_line_bytes`.
    UriTooLong,
    /// 431: a header line, the whole head or the header count over its limit.
    HeadTooLarge,
    /// 505: a version other than HTTP/1.0 or HTTP/1.1 (refused as soon as
    /// the request line is complete).
    VersionNotSupported,
    /// 501: a `Transfer-Encoding` other than exactly `chunked`.
    NotImplemented,
    /// 417: an `Expect` other than `100-continue`.
    ExpectationFailed,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::BadRequest(_) => 400,
            HeadError::UriTooLong => 414,
            HeadError::HeadTooLarge => 431,
            HeadError::VersionNotSupported => 505,
            HeadError::NotImplemented => 501,
            HeadError::ExpectationFailed => 417,
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            HeadError::BadRequest(why) => why,
            HeadError::UriTooLong => "request line too long",
            HeadError::HeadTooLarge => "request head too large",
            HeadError::VersionNotSupported => "HTTP version not supported",
            HeadError::NotImplemented => "transfer coding not implemented",
            HeadError::ExpectationFailed => "expectation not supported",
        }
    }
}

/// The limits a head must respect.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_line: usize,
    pub max_head: usize,
    pub max_headers: usize,
}

/// A parsed, checked request head.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub target: String,
    pub version: HTTPVersion,
    pub headers: Vec<Header>,
    pub framing: Framing,
    /// `Expect: 100-continue` on an HTTP/1.1 request.
    pub expects_continue: bool,
}

/// Empty lines tolerated before a request line (RFC 9112 §2.2 allows a
/// server to skip "at least one"; a client flooding them is refused).
const MAX_LEADING_EMPTY_LINES: usize = 4;

/// Accumulates one head from the bytes of a connection, checking line
/// endings (CRLF only: a bare CR or LF, or a NUL, is refused at once), the
/// line and head limits, obs-fold and the version of the request line as
/// soon as each line is complete.
pub struct HeadScanner {
    limits: HeadLimits,
    buf: Vec<u8>,
    line_start: usize,
    /// Complete lines so far (the request line included).
    lines: usize,
    leading_empty: usize,
}

impl HeadScanner {
    pub fn new(limits: HeadLimits) -> HeadScanner {
        HeadScanner {
            limits,
            buf: Vec::new(),
            line_start: 0,
            lines: 0,
            leading_empty: 0,
        }
    }

    /// True once any byte of the head has arrived.
    pub fn started(&self) -> bool {
        !self.buf.is_empty() || self.leading_empty > 0
    }

    /// Takes bytes from `data`; returns how many were consumed and whether
    /// the head is complete (the bytes after it are not consumed: they are
    /// the body or the next request).
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), HeadError> {
        let mut consumed = 0;
        while consumed < data.len() {
            let rest = &data[consumed..];
            let (take, found) = match rest.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (rest.len(), false),
            };
            let too_big = if self.lines == 0 {
                HeadError::UriTooLong
            } else {
                HeadError::HeadTooLarge
            };
            // +2: the CRLF does not count against the line limit.
            let line_room =
                (self.limits.max_line + 2).saturating_sub(self.buf.len() - self.line_start);
            let room = line_room.min(self.limits.max_head.saturating_sub(self.buf.len()));
            if take > room {
                // The bytes that fit are checked first, so the verdict does
                // not depend on how the bytes were split into reads (fuzzed).
                let old_len = self.buf.len();
                self.buf.extend_from_slice(&rest[..room]);
                check_bytes(&self.buf, old_len.saturating_sub(1).max(self.line_start))?;
                return Err(too_big);
            }
            let old_len = self.buf.len();
            self.buf.extend_from_slice(&rest[..take]);
            consumed += take;
            // A CR at the very end of the previous piece is checked now.
            check_bytes(&self.buf, old_len.saturating_sub(1).max(self.line_start))?;
            if !found {
                break;
            }
            let line_end = self.buf.len() - 2; // before CRLF (checked above)
            let line = &self.buf[self.line_start..line_end];
            if self.lines == 0 {
                if line.is_empty() {
                    self.leading_empty += 1;
                    if self.leading_empty > MAX_LEADING_EMPTY_LINES {
                        return Err(HeadError::BadRequest("empty lines before the request"));
                    }
                    self.buf.clear();
                    self.line_start = 0;
                    continue;
                }
                check_request_line(line)?;
            } else {
                if line.is_empty() {
                    return Ok((consumed, true));
                }
                if line[0] == b' ' || line[0] == b'\t' {
                    return Err(HeadError::BadRequest("obsolete line folding"));
                }
                if self.lines > self.limits.max_headers {
                    return Err(HeadError::HeadTooLarge);
                }
            }
            self.lines += 1;
            self.line_start = self.buf.len();
        }
        Ok((consumed, false))
    }

    /// Parses the complete head (after `feed` said so).
    pub fn parse(self) -> Result<Head, HeadError> {
        parse_complete(&self.buf, self.lines.saturating_sub(1))
    }
}

/// Every CR must be followed by LF and every LF preceded by CR; no NUL.
fn check_bytes(buf: &[u8], from: usize) -> Result<(), HeadError> {
    for i in from..buf.len() {
        match buf[i] {
            0 => return Err(HeadError::BadRequest("NUL in the request head")),
            b'\r' if i + 1 < buf.len() && buf[i + 1] != b'\n' => {
                return Err(HeadError::BadRequest("bare CR in the request head"))
            }
            b'\n' if i == 0 || buf[i - 1] != b'\r' => {
                return Err(HeadError::BadRequest("bare LF in the request head"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// `METHOD SP target SP HTTP/1.x`, ASCII only; any other `HTTP/...`
/// version is a 505 before the headers are even read.
fn check_request_line(line: &[u8]) -> Result<(), HeadError> {
    if !line.is_ascii() {
        return Err(HeadError::BadRequest("non-ASCII request line"));
    }
    let version = match line.iter().rposition(|b| *b == b' ') {
        Some(i) => &line[i + 1..],
        None => return Err(HeadError::BadRequest("malformed request line")),
    };
    match version {
        b"HTTP/1.1" | b"HTTP/1.0" => Ok(()),
        v if v.starts_with(b"HTTP/") => Err(HeadError::VersionNotSupported),
        _ => Err(HeadError::BadRequest("malformed request line")),
    }
}

/// Parses a whole head (request line, header lines, empty line) with
/// httparse, then applies the framing rules.
pub fn parse_complete(buf: &[u8], header_lines: usize) -> Result<Head, HeadError> {
    let mut slots = vec![httparse::EMPTY_HEADER; header_lines.max(1)];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n == buf.len() => {}
        Ok(_) => return Err(HeadError::BadRequest("incomplete request head")),
        Err(httparse::Error::Version) => return Err(HeadError::VersionNotSupported),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadTooLarge),
        Err(_) => return Err(HeadError::BadRequest("malformed request head")),
    }
    let method: Method = req
        .method
        .and_then(|m| m.parse().ok())
        .ok_or(HeadError::BadRequest("malformed method"))?;
    let target = req
        .path
        .filter(|p| p.is_ascii())
        .ok_or(HeadError::BadRequest("malformed request target"))?
        .to_string();
    let version = match req.version {
        Some(0) => HTTPVersion(1, 0),
        Some(1) => HTTPVersion(1, 1),
        _ => return Err(HeadError::VersionNotSupported),
    };
    let mut headers = Vec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let value = trim_ows(h.value);
        let field = HeaderField::from_bytes(h.name.as_bytes())
            .map_err(|_| HeadError::BadRequest("malformed header name"))?;
        let value = AsciiString::from_ascii(value)
            .map_err(|_| HeadError::BadRequest("non-ASCII header value"))?;
        headers.push(Header { field, value });
    }
    let (framing, expects_continue) = framing(&headers, &version)?;
    Ok(Head {
        method,
        target,
        version,
        headers,
        framing,
        expects_continue,
    })
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |i| i + 1);
    &v[start..end]
}

/// The contract's framing rules: one Host (required in HTTP/1.1);
/// Content-Length and Transfer-Encoding never together; Transfer-Encoding
/// exactly `chunked` (not in HTTP/1.0); Content-Length plain digits, every
/// value equal; Expect only `100-continue`.
fn framing(headers: &[Header], version: &HTTPVersion) -> Result<(Framing, bool), HeadError> {
    let named = |name: &'static str| headers.iter().filter(move |h| h.field.equiv(name));
    match named("Host").count() {
        0 if *version == HTTPVersion(1, 1) => {
            return Err(HeadError::BadRequest("HTTP/1.1 request without Host"))
        }
        0 | 1 => {}
        _ => return Err(HeadError::BadRequest("several Host headers")),
    }
    let has_te = named("Transfer-Encoding").next().is_some();
    let mut length: Option<u64> = None;
    for h in named("Content-Length") {
        for part in h.value.as_str().split(',') {
            let part = part.trim_matches(|c| c == ' ' || c == '\t');
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HeadError::BadRequest("malformed Content-Length"));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| HeadError::BadRequest("Content-Length out of range"))?;
            if length.is_some_and(|m| m != n) {
                return Err(HeadError::BadRequest("differing Content-Length values"));
            }
            length = Some(n);
        }
    }
    let framing = if has_te {
        if length.is_some() {
            return Err(HeadError::BadRequest(
                "Content-Length with Transfer-Encoding",
            ));
        }
        if *version == HTTPVersion(1, 0) {
            return Err(HeadError::BadRequest("Transfer-Encoding in HTTP/1.0"));
        }
        let mut codings = named("Transfer-Encoding").flat_map(|h| h.value.as_str().split(','));
        let only_chunked = matches!(
            (codings.next(), codings.next()),
            (Some(c), None) if c.trim_matches(|c| c == ' ' || c == '\t').eq_ignore_ascii_case("chunked")
        );
        if !only_chunked {
            return Err(HeadError::NotImplemented);
        }
        Framing::Chunked
    } else {
        match length {
            None | Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };
    let mut expects_continue = false;
    for h in named("Expect") {
        if h.value.as_str().eq_ignore_ascii_case("100-continue") {
            // RFC 9110 §10.1.1: ignored in an HTTP/1.0 request.
            expects_continue = *version == HTTPVersion(1, 1);
        } else {
            return Err(HeadError::ExpectationFailed);
        }
    }
    if framing == Framing::None {
        expects_continue = false;
    }
    Ok((framing, expects_continue))
}

/// Scans and parses `bytes` as one whole head; what the fuzz target and
/// the table tests drive. Returns the head and the bytes it used.
pub fn parse_head(bytes: &[u8], limits: HeadLimits) -> Result<Option<(Head, usize)>, HeadError> {
    let mut scanner = HeadScanner::new(limits);
    let (used, complete) = scanner.feed(bytes)?;
    if !complete {
        return Ok(None);
    }
    // Leading empty lines were consumed but are not part of the buffer.
    Ok(Some((scanner.parse()?, used)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_line: 200,
        max_head: 1000,
        max_headers: 5,
    };

    fn parse(s: &str) -> Result<Option<(Head, usize)>, HeadError> {
        parse_head(s.as_bytes(), LIMITS)
    }

    #[test]
    fn framing_table() {
        use Framing::*;
        let ok: &[(&str, Framing)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
            ("GET / HTTP/1.0\r\n\r\n", None),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n",
                Length(12),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nContent-Length: 12\r\n\r\n",
                Length(12),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12, 12\r\n\r\n",
                Length(12),
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
                Chunked,
            ),
            (
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n",
                Chunked,
            ),
            ("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
        ];
        for (head, want) in ok {
            let (h, used) = parse(head).unwrap().unwrap();
            assert_eq!(h.framing, *want, "{:?}", head);
            assert_eq!(used, head.len(), "{:?}", head);
        }
        let bad: &[(&str, HeadError)] = &[
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::BadRequest("Content-Length with Transfer-Encoding")),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", HeadError::NotImplemented),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", HeadError::NotImplemented),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n", HeadError::NotImplemented),
            ("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::NotImplemented),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\n", HeadError::BadRequest("differing Content-Length values")),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +12\r\n\r\n", HeadError::BadRequest("malformed Content-Length")),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", HeadError::BadRequest("malformed Content-Length")),
            ("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n", HeadError::BadRequest("Content-Length out of range")),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", HeadError::BadRequest("several Host headers")),
            ("GET / HTTP/1.1\r\n\r\n", HeadError::BadRequest("HTTP/1.1 request without Host")),
            ("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", HeadError::BadRequest("obsolete line folding")),
            ("GET / HTTP/1.1\r\nHost: a\r\nFoo: b\r\n\tTransfer-Encoding: chunked\r\n\r\n", HeadError::BadRequest("obsolete line folding")),
            ("GET / HTTP/1.1\nHost: a\r\n\r\n", HeadError::BadRequest("bare LF in the request head")),
            ("GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", HeadError::BadRequest("bare CR in the request head")),
            ("GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", HeadError::BadRequest("NUL in the request head")),
            ("GET / HTTP/2.0\r\n", HeadError::VersionNotSupported),
            ("GET / HTTP/3.0\r\n", HeadError::VersionNotSupported),
            ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HeadError::VersionNotSupported),
            ("GET / HTTP/1.2\r\n", HeadError::VersionNotSupported),
            ("GET /\r\n", HeadError::BadRequest("malformed request line")),
            ("GET  / HTTP/1.1\r\nHost: a\r\n\r\n", HeadError::BadRequest("malformed request head")),
            ("GET / HTTP/1.1\r\nHost: a\r\nExpect: 101-whatever\r\n\r\n", HeadError::ExpectationFailed),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", HeadError::BadRequest("Transfer-Encoding in HTTP/1.0")),
            ("GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n", HeadError::BadRequest("malformed request head")),
            ("GET / HTTP/1.1\r\nHost: a\r\nX: caf\u{e9}\r\n\r\n", HeadError::BadRequest("non-ASCII header value")),
        ];
        for (head, want) in bad {
            assert_eq!(parse(head).unwrap_err(), *want, "{:?}", head);
        }
    }

    #[test]
    fn limits_refuse_before_the_head_is_complete() {
        let long_line = format!("GET /{} HTTP/1.1\r\n", "a".repeat(300));
        assert_eq!(parse(&long_line).unwrap_err(), HeadError::UriTooLong);
        // No CRLF ever: refused at the limit, not buffered further.
        let endless = format!("GET /{}", "a".repeat(300));
        assert_eq!(parse(&endless).unwrap_err(), HeadError::UriTooLong);
        let long_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "b".repeat(300));
        assert_eq!(parse(&long_header).unwrap_err(), HeadError::HeadTooLarge);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X: y\r\n".repeat(6));
        assert_eq!(parse(&many).unwrap_err(), HeadError::HeadTooLarge);
        let big = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            format!("X: {}\r\n", "c".repeat(196)).repeat(5)
        );
        assert_eq!(parse(&big).unwrap_err(), HeadError::HeadTooLarge);
        let flood = "\r\n".repeat(10);
        assert!(parse(&flood).is_err());
    }

    #[test]
    fn bytes_after_the_head_are_left_alone() {
        let raw = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let (h, used) = parse(raw).unwrap().unwrap();
        assert_eq!(&raw[used..], "hello");
        assert_eq!(h.target, "/x");
        assert_eq!(h.headers.len(), 2);
    }

    #[test]
    fn split_feeds_equal_one_feed() {
        let raw =
            b"POST /x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        for split in 1..raw.len() {
            let mut s = HeadScanner::new(LIMITS);
            let (a, done) = s.feed(&raw[..split]).unwrap();
            assert_eq!(a, split);
            assert!(!done);
            let (b, done) = s.feed(&raw[split..]).unwrap();
            assert!(done);
            assert_eq!(a + b, raw.len());
            let h = s.parse().unwrap();
            assert!(h.expects_continue);
        }
        // Found by the fuzz target: a NUL early in an over-long line is
        // the verdict whether the line arrives whole or in pieces.
        let mut line = b"GET /".to_vec();
        line.push(0);
        line.extend_from_slice(&[b'a'; 400]);
        let whole = parse_head(&line, LIMITS).unwrap_err();
        let mut s = HeadScanner::new(LIMITS);
        let pieces = s
            .feed(&line[..10])
            .and_then(|_| s.feed(&line[10..]))
            .unwrap_err();
        assert_eq!(whole, HeadError::BadRequest("NUL in the request head"));
        assert_eq!(whole, pieces);
        // A CR at a piece boundary followed by something else is refused.
        let mut s = HeadScanner::new(LIMITS);
        s.feed(b"GET / HTTP/1.1\r\nHost: a\r").unwrap();
        assert!(s.feed(b"X").is_err());
    }
}
