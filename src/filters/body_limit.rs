//! Filter 3: the body cap. A declared Content-Length over the cap is
//! refused before any body byte is read; a chunked body is counted while
//! read and refused at the cap, so memory never exceeds the cap. The body
//! must also arrive within `body_timeout_s` (a trickling client cannot hold
//! a worker). After any refusal the connection is closed, never reused: the
//! unread remainder would otherwise be drained without limit or parsed as a
//! next request (smuggling; ../shared/FINDINGS.md).

use std::io::Read;
use std::time::{Duration, Instant};

use crate::error::ApiError;
use crate::http::Ctx;

const READ_CHUNK: usize = 16 * 1024;

/// Refuses a declared length over `cap` (before reading anything).
pub fn check_declared(ctx: &mut Ctx, cap: u64) -> Result<(), ApiError> {
    if ctx.content_length.is_some_and(|n| n > cap) {
        ctx.close_connection = true;
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(())
}

/// Reads the whole body, at most `cap` bytes, within `timeout`.
pub fn read(
    reader: &mut dyn Read,
    cap: u64,
    timeout: Duration,
    now: Instant,
) -> Result<Vec<u8>, ApiError> {
    let deadline = now + timeout;
    let mut body = Vec::new();
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(body),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ApiError::RequestTimeout)
            }
            Err(e) => {
                return Err(ApiError::InvalidJson(format!(
                    "body could not be read ({})",
                    e.kind()
                )))
            }
        };
        if body.len() as u64 + n as u64 > cap {
            return Err(ApiError::PayloadTooLarge);
        }
        body.extend_from_slice(&chunk[..n]);
        if Instant::now() > deadline {
            return Err(ApiError::RequestTimeout);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_length_over_cap_is_refused_and_closes() {
        let mut ctx = Ctx::new(
            crate::http::Method::Post,
            "/x",
            "127.0.0.1".parse().unwrap(),
        );
        ctx.content_length = Some(9_000_000_000_000_000_000);
        assert_eq!(
            check_declared(&mut ctx, 1024),
            Err(ApiError::PayloadTooLarge)
        );
        assert!(ctx.close_connection);
        ctx.content_length = Some(1024);
        ctx.close_connection = false;
        assert_eq!(check_declared(&mut ctx, 1024), Ok(()));
    }

    #[test]
    fn counted_read_stops_at_cap() {
        let data = vec![b'a'; 5000];
        let got = read(&mut &data[..], 5000, Duration::from_secs(5), Instant::now()).unwrap();
        assert_eq!(got.len(), 5000);
        let err = read(&mut &data[..], 4999, Duration::from_secs(5), Instant::now()).unwrap_err();
        assert_eq!(err, ApiError::PayloadTooLarge);
    }

    #[test]
    fn endless_body_is_cut_at_the_cap_without_reading_it_all() {
        let mut endless = std::io::repeat(b'x');
        assert_eq!(
            read(
                &mut endless,
                100_000,
                Duration::from_secs(5),
                Instant::now()
            ),
            Err(ApiError::PayloadTooLarge)
        );
    }

    #[test]
    fn body_past_deadline_times_out() {
        let data = [b'a'; 10];
        let past = Instant::now() - Duration::from_secs(10);
        assert_eq!(
            read(&mut &data[..], 100, Duration::from_secs(1), past),
            Err(ApiError::RequestTimeout)
        );
    }
}
