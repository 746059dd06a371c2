//! Filter 9: headers on every response (success, errors, preflight and
//! streams): `X-Request-Id`, the security headers, CORS for allowed origins
//! with `Vary: Origin`, and the rate-limit fields. `server.rs` calls
//! `decorate` on every reply on its way out, so no handler can forget it.

use crate::config::Config;
use crate::http::{Ctx, Reply};

pub const API_CSP: &str = "default-src 'none'; frame-ancestors 'none'";
const HSTS_VALUE: &str = "max-age=31536000; includeSubDomains";

pub fn decorate(reply: &mut Reply, ctx: &Ctx, cfg: &Config) {
    // Handlers may set their own CSP and Cache-Control (the chat page and
    // its assets); every other header here is ours alone, so it is pushed
    // without searching.
    if !reply.has_header("Content-Security-Policy") {
        reply.push_header("Content-Security-Policy", API_CSP);
    }
    if !reply.has_header("Cache-Control") {
        reply.push_header("Cache-Control", "no-store");
    }
    reply.push_header("X-Request-Id", ctx.request_id.clone());
    reply.push_header("X-Content-Type-Options", "nosniff");
    reply.push_header("X-Frame-Options", "DENY");
    reply.push_header("X-XSS-Protection", "0");
    reply.push_header("Referrer-Policy", "no-referrer");
    reply.push_header("Cross-Origin-Resource-Policy", "same-origin");
    if cfg.security.hsts {
        reply.push_header("Strict-Transport-Security", HSTS_VALUE);
    }
    reply.push_header("Server", "portcullis");
    reply.push_header("Vary", "Origin");
    if let Some(origin) = &ctx.cors_origin {
        reply.push_header("Access-Control-Allow-Origin", origin.clone());
        reply.push_header(
            "Access-Control-Expose-Headers",
            "X-Request-Id, Retry-After, RateLimit, RateLimit-Policy, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset",
        );
    }
    if let Some(rate) = &ctx.rate {
        reply.push_header(
            "RateLimit-Policy",
            format!("\"{}\";q={};w={}", rate.policy, rate.limit, rate.window_s),
        );
        reply.push_header(
            "RateLimit",
            format!(
                "\"{}\";r={};t={}",
                rate.policy, rate.remaining, rate.reset_s
            ),
        );
        reply.push_header("RateLimit-Limit", rate.limit.to_string());
        reply.push_header("RateLimit-Remaining", rate.remaining.to_string());
        reply.push_header("RateLimit-Reset", rate.reset_s.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{Method, RateInfo};

    fn get<'a>(r: &'a Reply, n: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.as_ref())
    }

    #[test]
    fn every_reply_gets_security_headers_and_never_a_wildcard() {
        let cfg = Config::default();
        let mut ctx = Ctx::new(Method::Get, "/x", "127.0.0.1".parse().unwrap());
        ctx.request_id = "rid".into();
        for mut r in [
            Reply::empty(204),
            Reply::error(&crate::error::ApiError::NotFound, "rid", false),
        ] {
            decorate(&mut r, &ctx, &cfg);
            assert_eq!(get(&r, "X-Request-Id"), Some("rid"));
            assert_eq!(get(&r, "X-Content-Type-Options"), Some("nosniff"));
            assert_eq!(get(&r, "X-Frame-Options"), Some("DENY"));
            assert_eq!(get(&r, "X-XSS-Protection"), Some("0"));
            assert_eq!(get(&r, "Referrer-Policy"), Some("no-referrer"));
            assert_eq!(get(&r, "Content-Security-Policy"), Some(API_CSP));
            assert_eq!(get(&r, "Cache-Control"), Some("no-store"));
            assert_eq!(get(&r, "Vary"), Some("Origin"));
            assert_eq!(get(&r, "Access-Control-Allow-Origin"), None);
            assert_eq!(get(&r, "Strict-Transport-Security"), None);
        }
    }

    #[test]
    fn cors_rate_and_hsts_when_applicable() {
        let mut cfg = Config::default();
        cfg.security.hsts = true;
        let mut ctx = Ctx::new(Method::Get, "/x", "127.0.0.1".parse().unwrap());
        ctx.cors_origin = Some("http://localhost:3000".into());
        ctx.rate = Some(RateInfo {
            policy: "chat",
            limit: 10,
            remaining: 3,
            reset_s: 20,
            window_s: 60,
        });
        let mut r = Reply::empty(200);
        decorate(&mut r, &ctx, &cfg);
        assert_eq!(
            get(&r, "Access-Control-Allow-Origin"),
            Some("http://localhost:3000")
        );
        assert_eq!(get(&r, "RateLimit-Policy"), Some("\"chat\";q=10;w=60"));
        assert_eq!(get(&r, "RateLimit"), Some("\"chat\";r=3;t=20"));
        assert_eq!(get(&r, "RateLimit-Remaining"), Some("3"));
        assert!(get(&r, "Strict-Transport-Security").is_some());
    }
}
