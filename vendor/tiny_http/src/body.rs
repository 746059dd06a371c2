//! portcullis patch: request bodies received whole, on the connection's own
//! thread, before (or between) the times a worker sees the request.
//!
//! Memory grows with the bytes that actually arrive, never with a declared
//! length: the buffer grows geometrically but never past the declared
//! length (Content-Length) or the cap (chunked), so a 10 MiB body costs
//! about 10 MiB. The chunked decoder is strict (RFC 9112 §7.1): hex sizes
//! without sign or prefix, CRLF line ends only, bounded extension and
//! trailer lines; anything else is `Malformed` and the connection closes.

use std::convert::TryFrom;
use std::io::{BufRead, ErrorKind};
use std::time::Instant;

use crate::head::Framing;

/// Why a body could not be received. The connection is closed after each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// More than the cap (declared or counted).
    TooLarge,
    /// The whole body did not arrive within the body timeout (or a read
    /// hit the socket's read timeout).
    TimedOut,
    /// The client closed the connection before the body was complete.
    Closed,
    /// Chunked framing that breaks the grammar.
    Malformed,
}

/// Longest chunk-size line (size plus extensions) and trailer line.
const MAX_CHUNK_LINE: usize = 4096;
/// Most trailer lines after the last chunk.
const MAX_TRAILERS: usize = 64;
/// Bytes asked of the socket per read.
const READ_STEP: usize = 64 * 1024;
/// First allocation for a body of unknown size.
const FIRST_ALLOC: usize = 16 * 1024;

/// Receives a whole body framed as `framing`, at most `cap` bytes, by
/// `deadline`.
pub fn receive<R: BufRead + ?Sized>(
    r: &mut R,
    framing: Framing,
    cap: u64,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    match framing {
        Framing::None => {}
        Framing::Length(n) => {
            if n > cap {
                return Err(BodyError::TooLarge);
            }
            read_exact_into(r, &mut out, n as usize, n as usize, deadline)?;
        }
        Framing::Chunked => loop {
            let line = read_line(r, deadline)?;
            let size = chunk_size(&line)?;
            if size == 0 {
                for _ in 0..=MAX_TRAILERS {
                    if read_line(r, deadline)?.is_empty() {
                        return Ok(out);
                    }
                }
                return Err(BodyError::Malformed);
            }
            if out.len() as u64 + size > cap {
                return Err(BodyError::TooLarge);
            }
            let limit = usize::try_from(cap).unwrap_or(usize::MAX);
            read_exact_into(r, &mut out, size as usize, limit, deadline)?;
            if !read_line(r, deadline)?.is_empty() {
                return Err(BodyError::Malformed);
            }
        },
    }
    Ok(out)
}

/// Appends exactly `n` bytes to `out`, whose capacity never exceeds
/// `limit` (nor grows faster than the bytes received).
fn read_exact_into<R: BufRead + ?Sized>(
    r: &mut R,
    out: &mut Vec<u8>,
    n: usize,
    limit: usize,
    deadline: Option<Instant>,
) -> Result<(), BodyError> {
    let end = out.len() + n;
    while out.len() < end {
        let want = (end - out.len()).min(READ_STEP);
        if out.capacity() - out.len() < want {
            let grown = (out.capacity() * 2)
                .max(FIRST_ALLOC)
                .min(limit.max(out.len() + want));
            out.reserve_exact(grown.max(out.len() + want) - out.len());
        }
        let len = out.len();
        out.resize(len + want, 0);
        let got = match r.read(&mut out[len..]) {
            Ok(0) => {
                out.truncate(len);
                return Err(BodyError::Closed);
            }
            Ok(got) => got,
            Err(e) if e.kind() == ErrorKind::Interrupted => 0,
            Err(e) => {
                out.truncate(len);
                return Err(io_error(e.kind()));
            }
        };
        out.truncate(len + got);
        check_deadline(deadline)?;
    }
    Ok(())
}

fn io_error(kind: ErrorKind) -> BodyError {
    match kind {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => BodyError::TimedOut,
        _ => BodyError::Closed,
    }
}

fn check_deadline(deadline: Option<Instant>) -> Result<(), BodyError> {
    match deadline {
        Some(d) if Instant::now() > d => Err(BodyError::TimedOut),
        _ => Ok(()),
    }
}

/// One CRLF-terminated line (without the CRLF), at most `MAX_CHUNK_LINE`
/// bytes; a bare CR or LF, or a NUL, is `Malformed`.
fn read_line<R: BufRead + ?Sized>(
    r: &mut R,
    deadline: Option<Instant>,
) -> Result<Vec<u8>, BodyError> {
    let mut line = Vec::new();
    loop {
        let available = match r.fill_buf() {
            Ok([]) => return Err(BodyError::Closed),
            Ok(a) => a,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(e.kind())),
        };
        let (take, found) = match available.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if line.len() + take > MAX_CHUNK_LINE + 2 {
            return Err(BodyError::Malformed);
        }
        line.extend_from_slice(&available[..take]);
        r.consume(take);
        if found {
            if line.len() < 2 || line[line.len() - 2] != b'\r' {
                return Err(BodyError::Malformed);
            }
            line.truncate(line.len() - 2);
            if line.iter().any(|b| *b == b'\r' || *b == 0) {
                return Err(BodyError::Malformed);
            }
            return Ok(line);
        }
        check_deadline(deadline)?;
    }
}

/// `1*HEXDIG [ BWS ";" ext ]`: at most 15 hex digits (no overflow, no
/// sign, no `0x`); extensions are skipped but must be visible ASCII.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 15 {
        return Err(BodyError::Malformed);
    }
    let rest = &line[digits..];
    let ext_ok = rest.is_empty() || {
        let trimmed: &[u8] = {
            let s = rest
                .iter()
                .position(|b| *b != b' ' && *b != b'\t')
                .unwrap_or(rest.len());
            &rest[s..]
        };
        trimmed.first() == Some(&b';')
            && trimmed
                .iter()
                .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
    };
    if !ext_ok {
        return Err(BodyError::Malformed);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| BodyError::Malformed)?;
    u64::from_str_radix(text, 16).map_err(|_| BodyError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(raw: &str, cap: u64) -> Result<Vec<u8>, BodyError> {
        receive(&mut raw.as_bytes(), Framing::Chunked, cap, None)
    }

    #[test]
    fn chunked_table() {
        assert_eq!(chunked("5\r\nhello\r\n0\r\n\r\n", 100).unwrap(), b"hello");
        assert_eq!(
            chunked(
                "5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\n",
                100
            )
            .unwrap(),
            b"hello world"
        );
        assert_eq!(
            chunked("A\r\n0123456789\r\n0\r\n\r\n", 100).unwrap().len(),
            10
        );
        let bad = [
            "+5\r\nhello\r\n0\r\n\r\n",
            "0x5\r\nhello\r\n0\r\n\r\n",
            "-1\r\n\r\n",
            "\r\nhello\r\n0\r\n\r\n",
            "5 x\r\nhello\r\n0\r\n\r\n",
            "5\nhello\r\n0\r\n\r\n",
            "5\r\nhelloXX0\r\n\r\n",
            "5\r\nhello\n0\r\n\r\n",
            "fffffffffffffffff\r\n",
            "5\r\nhello\r\n0\r\nX: a\rb\r\n\r\n",
        ];
        for raw in bad {
            assert_eq!(
                chunked(raw, u64::MAX),
                Err(BodyError::Malformed),
                "{:?}",
                raw
            );
        }
        assert_eq!(
            chunked("5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 9),
            Err(BodyError::TooLarge)
        );
        assert_eq!(chunked("5\r\nhel", 100), Err(BodyError::Closed));
    }

    #[test]
    fn length_is_exact_and_capped() {
        let raw = b"hello world";
        let mut r = &raw[..];
        assert_eq!(
            receive(&mut r, Framing::Length(5), 10, None).unwrap(),
            b"hello"
        );
        assert_eq!(
            r, b" world",
            "bytes after the body are left for the next request"
        );
        assert_eq!(
            receive(
                &mut &raw[..],
                Framing::Length(9_000_000_000_000_000_000),
                10,
                None
            ),
            Err(BodyError::TooLarge)
        );
        assert_eq!(
            receive(&mut &raw[..], Framing::Length(20), 100, None),
            Err(BodyError::Closed)
        );
    }

    #[test]
    fn buffer_never_outgrows_the_declared_length() {
        let raw = vec![b'x'; 300_000];
        let body = receive(&mut &raw[..], Framing::Length(300_000), 1 << 30, None).unwrap();
        assert_eq!(body.len(), 300_000);
        assert_eq!(body.capacity(), 300_000);
    }

    #[test]
    fn past_deadline_times_out() {
        let raw = [b'x'; 10];
        let past = Instant::now() - std::time::Duration::from_secs(1);
        assert_eq!(
            receive(&mut &raw[..], Framing::Length(10), 100, Some(past)),
            Err(BodyError::TimedOut)
        );
    }
}
