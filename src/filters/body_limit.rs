//! Filter 3: the body cap. A declared Content-Length over the cap is
//! refused here, before any body byte is read. A chunked body is counted
//! while the connection's thread receives it (patched tiny_http,
//! `body::receive`, given the same cap by `server::handle`) and refused at
//! the cap, within `body_timeout_s`, so memory never exceeds the cap and no
//! worker waits for it. After any refusal the connection is closed, never
//! reused: the unread remainder would otherwise be drained without limit or
//! parsed as a next request (smuggling; docs/findings.md).

use crate::error::ApiError;
use crate::http::Ctx;

/// Refuses a declared length over `cap` (before reading anything).
pub fn check_declared(ctx: &mut Ctx, cap: u64) -> Result<(), ApiError> {
    if ctx.content_length.is_some_and(|n| n > cap) {
        ctx.close_connection = true;
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(())
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
}
