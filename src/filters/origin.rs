//! Filter 7: the Origin check for unsafe methods, and CORS preflight.
//!
//! POST/PUT/PATCH/DELETE must carry an `Origin` (else `Referer`) that
//! matches `allowed_origins` exactly (scheme, host, port). A request with
//! neither is refused unless it carries a valid API key: a non-browser
//! client holding a bearer credential is not a CSRF vector. Allowed origins
//! are echoed in `Access-Control-Allow-Origin` (never `*`) by `headers.rs`.

use crate::error::ApiError;
use crate::http::{Ctx, Method, Reply};

pub use crate::net::parse_origin;

/// How long browsers may cache a preflight answer.
const PREFLIGHT_MAX_AGE_S: u32 = 600;

/// The origin of a Referer URL (`https://a.example/x?y` -> `https://a.example`).
fn referer_origin(referer: &str) -> Option<String> {
    let (scheme, rest) = referer.trim().split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    parse_origin(&format!("{}://{}", scheme, &rest[..end]))
}

fn is_allowed(origin: &str, allowed: &[String]) -> bool {
    match parse_origin(origin) {
        Some(o) => allowed
            .iter()
            .any(|a| parse_origin(a).as_deref() == Some(o.as_str())),
        None => false,
    }
}

/// The request's own origin (`scheme://Host`), used to accept same-origin
/// requests from the built-in page. The Host header has already passed the
/// allowlist (filter 2), so a DNS-rebinding page cannot claim it; the
/// scheme is https only when a trusted proxy says so (X-Forwarded-Proto).
pub fn own_origin(
    ctx: &Ctx,
    trusted: &crate::filters::client_ip::TrustedProxies,
) -> Option<String> {
    let host = ctx.header("host")?.trim();
    let https = trusted.contains(ctx.peer)
        && ctx
            .header("x-forwarded-proto")
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    parse_origin(&format!(
        "{}://{}",
        if https { "https" } else { "http" },
        host
    ))
}

/// Records an allowed `Origin` for CORS (any method) and enforces the
/// check on unsafe methods. Allowed: an origin listed in `allowed_origins`
/// or the server's own origin (same-origin requests of the built-in page).
/// `has_valid_key` is the auth filter's verdict.
pub fn check(
    ctx: &mut Ctx,
    allowed: &[String],
    trusted: &crate::filters::client_ip::TrustedProxies,
    has_valid_key: bool,
) -> Result<(), ApiError> {
    // The own origin is needed only for an unsafe request whose origin is
    // not listed, so it is computed only then.
    let own = |ctx: &Ctx| own_origin(ctx, trusted);
    let same_origin = |ctx: &Ctx, o: &str| {
        let own = own(ctx);
        own.is_some() && parse_origin(o) == own
    };
    let origin = ctx.header("origin").map(str::to_string);
    if let Some(o) = &origin {
        if is_allowed(o, allowed) {
            ctx.cors_origin = Some(o.trim().to_string());
        }
    }
    if !ctx.method.is_unsafe() {
        return Ok(());
    }
    match origin {
        Some(o) if ctx.cors_origin.is_some() || is_allowed(&o, allowed) || same_origin(ctx, &o) => {
            Ok(())
        }
        Some(_) => Err(ApiError::OriginNotAllowed),
        None => match ctx.header("referer") {
            Some(r) => match referer_origin(r) {
                Some(o)
                    if allowed
                        .iter()
                        .any(|a| parse_origin(a).as_deref() == Some(o.as_str()))
                        || same_origin(ctx, &o) =>
                {
                    Ok(())
                }
                _ => Err(ApiError::OriginNotAllowed),
            },
            None if has_valid_key => Ok(()),
            None => Err(ApiError::OriginNotAllowed),
        },
    }
}

/// Answers an `OPTIONS` preflight: 204 with the CORS grant for an allowed
/// origin, 403 `origin_not_allowed` otherwise.
pub fn preflight(ctx: &mut Ctx, allowed: &[String]) -> Result<Reply, ApiError> {
    let origin = ctx
        .header("origin")
        .ok_or(ApiError::OriginNotAllowed)?
        .trim()
        .to_string();
    if !is_allowed(&origin, allowed) {
        return Err(ApiError::OriginNotAllowed);
    }
    ctx.cors_origin = Some(origin);
    let mut methods = crate::router::allowed_methods(&ctx.path);
    methods.push("OPTIONS");
    Ok(Reply::empty(204)
        .with_header("Access-Control-Allow-Methods", methods.join(", "))
        .with_header(
            "Access-Control-Allow-Headers",
            "Authorization, Content-Type, X-CSRF-Token, X-Request-Id",
        )
        .with_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE_S.to_string()))
}

/// Exposed so `Ctx` users can ask whether a method is guarded.
pub fn guarded(method: Method) -> bool {
    method.is_unsafe()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_proxies() -> crate::filters::client_ip::TrustedProxies {
        crate::filters::client_ip::TrustedProxies::default()
    }

    fn allowed() -> Vec<String> {
        vec!["http://localhost:3000".into(), "https://app.example".into()]
    }

    fn ctx(method: Method, headers: &[(&str, &str)]) -> Ctx {
        let mut c = Ctx::new(method, "/api/projects", "127.0.0.1".parse().unwrap());
        for (n, v) in headers {
            c = c.with_header(n, v);
        }
        c
    }

    #[test]
    fn origin_parsing() {
        assert_eq!(
            parse_origin("HTTPS://App.Example:443").as_deref(),
            Some("https://app.example")
        );
        assert_eq!(
            parse_origin("http://[::1]:3000").as_deref(),
            Some("http://[::1]:3000")
        );
        for bad in [
            "null",
            "*",
            "ftp://x",
            "http://x/path",
            "http://",
            "http://x:99999",
            "http://u@x",
        ] {
            assert_eq!(parse_origin(bad), None, "{}", bad);
        }
    }

    /// (method, headers, has a valid key, allowed?)
    type Case<'a> = (Method, &'a [(&'a str, &'a str)], bool, bool);

    #[test]
    fn origin_check_table() {
        let cases: &[Case] = &[
            (
                Method::Post,
                &[("origin", "http://localhost:3000")],
                false,
                true,
            ),
            (
                Method::Post,
                &[("origin", "https://app.example:443")],
                false,
                true,
            ),
            (
                Method::Post,
                &[("origin", "http://localhost:3001")],
                true,
                false,
            ),
            (
                Method::Post,
                &[("origin", "http://evil.example")],
                true,
                false,
            ),
            (Method::Post, &[("origin", "null")], true, false),
            (
                Method::Delete,
                &[("referer", "https://app.example/page?x=1")],
                false,
                true,
            ),
            (
                Method::Patch,
                &[("referer", "https://app.example.evil/")],
                false,
                false,
            ),
            (Method::Post, &[], false, false),
            (Method::Post, &[], true, true),
            (Method::Get, &[], false, true),
            (
                Method::Get,
                &[("origin", "http://evil.example")],
                false,
                true,
            ),
        ];
        for (m, h, key, ok) in cases {
            let mut c = ctx(*m, h);
            assert_eq!(
                check(&mut c, &allowed(), &no_proxies(), *key).is_ok(),
                *ok,
                "{:?} {:?} key={}",
                m,
                h,
                key
            );
        }
    }

    #[test]
    fn cors_origin_only_echoed_when_allowed() {
        let mut c = ctx(Method::Get, &[("origin", "http://evil.example")]);
        check(&mut c, &allowed(), &no_proxies(), false).unwrap();
        assert_eq!(c.cors_origin, None);
        let mut c = ctx(Method::Get, &[("origin", "http://localhost:3000")]);
        check(&mut c, &allowed(), &no_proxies(), false).unwrap();
        assert_eq!(c.cors_origin.as_deref(), Some("http://localhost:3000"));
    }

    #[test]
    fn same_origin_requests_are_allowed_and_scheme_comes_from_trusted_proxies_only() {
        let trusted =
            crate::filters::client_ip::TrustedProxies::parse(&["127.0.0.1".into()]).unwrap();
        let c = ctx(Method::Post, &[("host", "localhost:8000")]);
        let own = own_origin(&c, &trusted);
        assert_eq!(own.as_deref(), Some("http://localhost:8000"));
        let mut c = ctx(
            Method::Post,
            &[
                ("host", "localhost:8000"),
                ("origin", "http://localhost:8000"),
            ],
        );
        assert!(check(&mut c, &allowed(), &trusted, false).is_ok());
        let mut c = ctx(
            Method::Post,
            &[
                ("host", "localhost:8000"),
                ("origin", "http://localhost:8001"),
            ],
        );
        assert!(check(&mut c, &allowed(), &trusted, false).is_err());
        let mut c = ctx(
            Method::Post,
            &[
                ("host", "localhost:8000"),
                ("referer", "http://localhost:8000/"),
            ],
        );
        assert!(check(&mut c, &allowed(), &trusted, false).is_ok());
        // X-Forwarded-Proto believed from a trusted peer only.
        let c = ctx(
            Method::Post,
            &[("host", "chat.example"), ("x-forwarded-proto", "https")],
        );
        assert_eq!(
            own_origin(&c, &trusted).as_deref(),
            Some("https://chat.example")
        );
        let mut c = ctx(
            Method::Post,
            &[("host", "chat.example"), ("x-forwarded-proto", "https")],
        );
        c.peer = "8.8.8.8".parse().unwrap();
        assert_eq!(
            own_origin(&c, &trusted).as_deref(),
            Some("http://chat.example")
        );
    }

    #[test]
    fn preflight_answers_allowed_origins_only() {
        let mut c = ctx(Method::Options, &[("origin", "http://localhost:3000")]);
        let r = preflight(&mut c, &allowed()).unwrap();
        assert_eq!(r.status, 204);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == "Access-Control-Allow-Methods" && v.contains("POST")));
        let mut c = ctx(Method::Options, &[("origin", "http://evil.example")]);
        assert_eq!(
            preflight(&mut c, &allowed()).unwrap_err(),
            ApiError::OriginNotAllowed
        );
    }
}
