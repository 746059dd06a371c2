//! Filter 8: CSRF tokens (when `[security] csrf_tokens = true`).
//!
//! Unsafe browser requests (an unsafe method with an `Origin` header) must
//! send `X-CSRF-Token` holding a token from `GET /api/csrf-token`. Requests
//! without `Origin` are not browser requests; the Origin filter already
//! refused them unless they hold a valid key.
//!
//! A token is `<expiry>.<nonce>.<mac>`: the expiry in Unix seconds
//! (decimal), 16 random bytes (32 lower-case hex digits), and the
//! HMAC-SHA256 (`ring::hmac`) of `"<expiry>.<nonce>"` under the CSRF secret
//! and a domain label (64 lower-case hex digits). Anything else is refused
//! before the MAC is checked; the MAC comparison is constant time
//! (`ring::hmac::verify`). Tokens are stateless: nothing is stored.
//!
//! Requests authenticated by a session cookie are browser requests by
//! definition: every unsafe one needs a token, whatever `csrf_tokens` says
//! and whether or not it sends `Origin`, and the token must be bound to
//! that session: its MAC also covers the session's hash (`issue_for`), so
//! a token fetched in one session (or without one) is refused in another.

use crate::error::ApiError;
use crate::http::Ctx;
use crate::secret::Secret;
use ring::hmac;

/// The contract's floor for the HMAC secret (enforced at start-up when
/// tokens are on, see `App::new`).
pub const MIN_SECRET_BYTES: usize = 32;
/// Domain separation: a MAC made for something else with the same secret
/// is never a valid token.
const MAC_LABEL: &[u8] = b"portcullis csrf token v1\0";
const NONCE_BYTES: usize = 16;
const MAC_HEX_LEN: usize = 64;
/// u64 seconds have at most 20 digits.
const MAX_EXPIRY_DIGITS: usize = 20;
/// Longer header values are refused without parsing.
const MAX_TOKEN_LEN: usize = MAX_EXPIRY_DIGITS + 1 + NONCE_BYTES * 2 + 1 + MAC_HEX_LEN;

fn mac_key(secret: &Secret) -> hmac::Key {
    hmac::Key::new(hmac::HMAC_SHA256, secret.expose())
}

/// What the MAC covers: the label, the payload and, for a session's token,
/// a NUL and the session's hash.
fn signed_message(payload: &str, binding: &str) -> Vec<u8> {
    if binding.is_empty() {
        [MAC_LABEL, payload.as_bytes()].concat()
    } else {
        [MAC_LABEL, payload.as_bytes(), b"\0", binding.as_bytes()].concat()
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(*p.get(1)?)?))
        .collect()
}

/// The current time in Unix seconds (the handler and filter read the
/// clock; `issue` and `verify` take it).
pub fn now_unix() -> u64 {
    (crate::time::now_millis() / 1000).max(0) as u64
}

/// A new token valid for `ttl_s` seconds from `now_unix`.
pub fn issue(secret: &Secret, now_unix: u64, ttl_s: u64) -> String {
    issue_for(secret, now_unix, ttl_s, "")
}

/// As `issue`, bound to a session (its hash; "" for none).
pub fn issue_for(secret: &Secret, now_unix: u64, ttl_s: u64, binding: &str) -> String {
    let payload = format!(
        "{}.{}",
        now_unix.saturating_add(ttl_s),
        crate::ids::random_hex(NONCE_BYTES)
    );
    let tag = hmac::sign(&mac_key(secret), &signed_message(&payload, binding));
    format!("{}.{}", payload, crate::ids::hex(tag.as_ref()))
}

/// True when `token` was made by `issue` with this secret and has not
/// expired at `now_unix`. Malformed, forged, tampered and expired tokens
/// are all simply false.
pub fn verify(secret: &Secret, token: &str, now_unix: u64) -> bool {
    verify_for(secret, token, now_unix, "")
}

/// As `verify`, for a token bound to `binding` (a session's hash).
pub fn verify_for(secret: &Secret, token: &str, now_unix: u64, binding: &str) -> bool {
    if token.len() > MAX_TOKEN_LEN {
        return false;
    }
    let Some((payload, mac_hex)) = token.rsplit_once('.') else {
        return false;
    };
    let Some((expiry, nonce)) = payload.split_once('.') else {
        return false;
    };
    let expiry_ok = !expiry.is_empty()
        && expiry.len() <= MAX_EXPIRY_DIGITS
        && expiry.bytes().all(|b| b.is_ascii_digit());
    if !expiry_ok || !is_lower_hex(nonce, NONCE_BYTES * 2) || !is_lower_hex(mac_hex, MAC_HEX_LEN) {
        return false;
    }
    let Some(mac) = decode_hex(mac_hex) else {
        return false;
    };
    if hmac::verify(&mac_key(secret), &signed_message(payload, binding), &mac).is_err() {
        return false;
    }
    matches!(expiry.parse::<u64>(), Ok(e) if now_unix < e)
}

/// Refuses (403 `csrf_token_invalid`) an unsafe request that has an
/// `Origin` but no valid `X-CSRF-Token`, when CSRF tokens are enabled.
pub fn check(enabled: bool, secret: &Secret, ctx: &Ctx, now_unix: u64) -> Result<(), ApiError> {
    if let Some(session) = &ctx.session {
        if !ctx.method.is_unsafe() {
            return Ok(());
        }
        return match ctx.header("x-csrf-token") {
            Some(t) if verify_for(secret, t.trim(), now_unix, session) => Ok(()),
            _ => Err(ApiError::CsrfTokenInvalid),
        };
    }
    if !enabled || !ctx.method.is_unsafe() || ctx.header("origin").is_none() {
        return Ok(());
    }
    match ctx.header("x-csrf-token") {
        Some(t) if verify(secret, t.trim(), now_unix) => Ok(()),
        _ => Err(ApiError::CsrfTokenInvalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_447_743;
    const TTL: u64 = 3600;

    fn secret() -> Secret {
        Secret::new(vec![7u8; 32])
    }

    /// Replaces the character at `i` with another valid hex digit.
    fn flip(token: &str, i: usize) -> String {
        let mut b = token.as_bytes().to_vec();
        b[i] = if b[i] == b'0' { b'1' } else { b'0' };
        String::from_utf8(b).unwrap()
    }

    #[test]
    fn fresh_token_is_accepted_until_it_expires() {
        let t = issue(&secret(), NOW, TTL);
        assert!(verify(&secret(), &t, NOW));
        assert!(verify(&secret(), &t, NOW + TTL - 1));
        assert!(!verify(&secret(), &t, NOW + TTL), "expired at expiry");
        assert_ne!(
            issue(&secret(), NOW, TTL),
            t,
            "each token has its own nonce"
        );
        assert!(t.len() <= MAX_TOKEN_LEN);
    }

    #[test]
    fn bad_tokens_are_refused() {
        let good = issue(&secret(), NOW, TTL);
        let (payload, mac) = good.rsplit_once('.').unwrap();
        let (expiry, nonce) = payload.split_once('.').unwrap();
        let later_expiry = format!("{}.{}.{}", NOW + 10 * TTL, nonce, mac);
        let forged_mac = format!("{}.{}", payload, "ab".repeat(32));
        // A MAC made under another secret over the same payload.
        let other_secret = issue(&Secret::new(vec![8u8; 32]), NOW, TTL);
        let upper = good.to_ascii_uppercase();
        let cases: Vec<(&str, String, u64)> = vec![
            ("expired", issue(&secret(), NOW - TTL - 1, TTL), NOW),
            ("tampered_expiry", later_expiry, NOW),
            ("tampered_nonce", flip(&good, expiry.len() + 1), NOW),
            ("tampered_mac", flip(&good, good.len() - 1), NOW),
            ("forged_mac", forged_mac, NOW),
            ("wrong_secret", other_secret, NOW),
            ("empty", String::new(), NOW),
            ("no_dots", good.replace('.', ""), NOW),
            ("extra_part", format!("{}.00", good), NOW),
            ("short_mac", good[..good.len() - 2].to_string(), NOW),
            ("upper_case_hex", upper, NOW),
            ("signed_expiry", format!("+{}", good), NOW),
            (
                "huge_expiry",
                format!("{}.{}.{}", "9".repeat(21), nonce, mac),
                NOW,
            ),
            ("non_ascii", format!("{}é", &good[..good.len() - 2]), NOW),
            ("very_long", "a".repeat(10_000), NOW),
            ("garbage", "not-a-token".into(), NOW),
        ];
        for (name, token, now) in cases {
            assert!(
                !verify(&secret(), &token, now),
                "{} must be refused: {:?}",
                name,
                token
            );
        }
        assert!(
            verify(&secret(), &good, NOW),
            "the unmodified token still passes"
        );
    }

    #[test]
    fn check_guards_unsafe_browser_requests_only_when_enabled() {
        let token = issue(&secret(), NOW, TTL);
        let req = |m, headers: &[(&str, &str)]| {
            let mut ctx = Ctx::new(m, "/api/projects", "127.0.0.1".parse().unwrap());
            for (n, v) in headers {
                ctx = ctx.with_header(n, v);
            }
            ctx
        };
        use crate::http::Method::*;
        let origin = ("origin", "http://localhost:3000");
        type Case<'a> = (crate::http::Method, &'a [(&'a str, &'a str)], bool);
        let cases: &[Case] = &[
            (Post, &[origin], false),
            (Post, &[origin, ("x-csrf-token", "forged")], false),
            (Post, &[origin, ("x-csrf-token", token.as_str())], true),
            (Delete, &[origin, ("x-csrf-token", token.as_str())], true),
            (Get, &[origin], true),
            (Post, &[], true), // not a browser request (the Origin filter decides)
        ];
        for (m, h, ok) in cases {
            let got = check(true, &secret(), &req(*m, h), NOW);
            assert_eq!(got.is_ok(), *ok, "{:?} {:?}", m, h);
            if !ok {
                assert_eq!(got, Err(ApiError::CsrfTokenInvalid));
            }
        }
        assert!(
            check(false, &secret(), &req(Post, &[origin]), NOW).is_ok(),
            "disabled: no token needed"
        );
    }
}
