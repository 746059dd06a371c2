//! The filter chain (docs/contract.md "Filter chain") through real sockets
//! against the real binary: host allowlist, body cap and connection
//! closing, proxy-aware client address, rate limits and their headers,
//! origin check, CORS preflight, CSRF tokens, and the security headers on
//! every kind of response.
//!
//! POST routes other than the ones under test may still be placeholders
//! (404) on this branch, so tests of the filters assert "passed the filter"
//! as "not the filter's refusal" rather than a handler's status.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::{read_response, wait_until, Opts, Resp, Server};

const ALLOWED_ORIGIN: &str = "http://localhost:3000";

/// Every response carries these (API.md filter 9).
fn assert_security_headers(r: &Resp, what: &str) {
    let want = [
        ("X-Content-Type-Options", "nosniff"),
        ("X-Frame-Options", "DENY"),
        ("X-XSS-Protection", "0"),
        ("Referrer-Policy", "no-referrer"),
        ("Cross-Origin-Resource-Policy", "same-origin"),
        ("Cache-Control", "no-store"),
    ];
    for (name, value) in want {
        assert_eq!(
            r.header(name),
            Some(value),
            "{}: {} in {:?}",
            what,
            name,
            r.headers
        );
    }
    let csp = r.header("Content-Security-Policy").unwrap_or("");
    assert!(
        csp.contains("default-src 'none'"),
        "{}: CSP {:?}",
        what,
        csp
    );
    assert!(
        r.header("X-Request-Id").is_some_and(|v| !v.is_empty()),
        "{}: X-Request-Id",
        what
    );
    assert!(
        r.header("Vary").is_some_and(|v| v.contains("Origin")),
        "{}: Vary {:?}",
        what,
        r.header("Vary")
    );
    assert_ne!(
        r.header("Access-Control-Allow-Origin"),
        Some("*"),
        "{}: wildcard CORS",
        what
    );
    if let Some(server) = r.header("Server") {
        assert!(
            !server.chars().any(|c| c.is_ascii_digit()),
            "{}: version banner {:?}",
            what,
            server
        );
        assert!(
            !server.to_ascii_lowercase().contains("tiny"),
            "{}: banner {:?}",
            what,
            server
        );
    }
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.code(), code, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_security_headers(r, code);
}

/// A POST with a JSON body as a browser on `origin` would send it.
fn post_json(
    s: &Server,
    path: &str,
    origin: Option<&str>,
    extra: &[(&str, &str)],
    body: &str,
) -> Resp {
    let mut h: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
    if let Some(o) = origin {
        h.push(("Origin", o));
    }
    h.extend_from_slice(extra);
    s.req("POST", path, &h, Some(body))
}

fn get_from(s: &Server, path: &str, xff: &str) -> Resp {
    s.req("GET", path, &[("X-Forwarded-For", xff)], None)
}

/// Opens a connection and writes `bytes` (a raw request, maybe partial).
fn send_raw(addr: SocketAddr, bytes: &[u8]) -> BufReader<TcpStream> {
    let mut s = support::connect(addr);
    s.write_all(bytes).unwrap();
    s.flush().unwrap();
    BufReader::new(s)
}

/// True when the server closed the connection: the next read is EOF (or a
/// reset), not more bytes and not a wait for a next request.
fn closed_after_response(r: &mut BufReader<TcpStream>) -> Result<(), String> {
    r.get_ref()
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) if rest.is_empty() => Ok(()),
        Ok(_) => Err(format!(
            "bytes after the response: {:?}",
            String::from_utf8_lossy(&rest)
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
        Err(e) => Err(format!(
            "connection stayed open: {} (after {:?})",
            e,
            String::from_utf8_lossy(&rest)
        )),
    }
}

fn rate_field(r: &Resp, name: &str) -> u64 {
    r.header(name)
        .unwrap_or_else(|| panic!("{} missing in {:?}", name, r.headers))
        .parse()
        .unwrap()
}

fn assert_no_rate_headers(r: &Resp) {
    for h in [
        "RateLimit",
        "RateLimit-Policy",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
    ] {
        assert_eq!(r.header(h), None, "{} on an exempt route", h);
    }
}

#[test]
fn host_outside_the_allowlist_is_421() {
    let s = Server::start(Opts::new().no_auth());
    for host in [
        "evil.example",
        "localhost.evil.example",
        "127.0.0.2:8000",
        "attacker:80",
    ] {
        let r = s.req("GET", "/health", &[("Host", host)], None);
        assert_error(&r, 421, "host_not_allowed");
    }
    for host in ["localhost", "LOCALHOST:1234", "127.0.0.1", "[::1]:8000"] {
        let r = s.req("GET", "/health", &[("Host", host)], None);
        assert_eq!(r.status, 200, "{}: {}", host, r.text());
    }
}

#[test]
fn declared_body_over_the_cap_is_413_before_reading_and_closes_the_connection() {
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SECURITY_MAX_BODY_BYTES", "1024"),
    );
    // Keep-alive request: only the server's close ends the connection.
    let head = format!(
        "POST /api/projects HTTP/1.1\r\nHost: localhost\r\nOrigin: {}\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n",
        ALLOWED_ORIGIN
    );
    let mut conn = send_raw(s.addr, head.as_bytes());
    let r = read_response(&mut conn).unwrap();
    assert_error(&r, 413, "payload_too_large");
    closed_after_response(&mut conn).unwrap();

    // A length no server could hold is refused the same way, and the
    // server lives on (FINDINGS.md: this once aborted the process).
    let head = "POST /api/projects HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 9000000000000000000\r\n\r\n{}";
    let mut conn = send_raw(s.addr, head.as_bytes());
    let r = read_response(&mut conn).unwrap();
    assert_error(&r, 413, "payload_too_large");
    closed_after_response(&mut conn).unwrap();
    assert_eq!(s.get("/health").status, 200);
    // A body at the cap is not refused by the cap.
    let body = format!("{{\"name\":\"{}\"}}", "x".repeat(1013));
    assert_eq!(body.len(), 1024);
    let r = post_json(&s, "/api/projects", Some(ALLOWED_ORIGIN), &[], &body);
    assert_ne!(r.status, 413, "{}", r.text());
}

#[test]
fn chunked_body_over_the_cap_is_413_and_a_smuggled_request_is_never_answered() {
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SECURITY_MAX_BODY_BYTES", "1024"),
    );
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let mut raw = format!(
        "POST /api/projects HTTP/1.1\r\nHost: localhost\r\nOrigin: {}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        ALLOWED_ORIGIN
    );
    // 1,280 counted bytes, one of them past the cap; the rest of the body
    // hides a second request, which would be parsed if the connection were
    // reused after the refusal.
    raw.push_str(&format!("500\r\n{}\r\n", " ".repeat(0x500)));
    raw.push_str(&format!(
        "{:x}\r\n{}\r\n0\r\n\r\n",
        smuggled.len(),
        smuggled
    ));
    raw.push_str(smuggled);
    let mut conn = send_raw(s.addr, raw.as_bytes());
    let r = read_response(&mut conn).unwrap();
    assert_error(&r, 413, "payload_too_large");
    closed_after_response(&mut conn).unwrap();

    // The access log shows every request the server parsed: once a later
    // request is logged, the smuggled one would have been logged before it.
    assert_eq!(s.get("/health?after=smuggling").status, 200);
    assert!(wait_until(Duration::from_secs(10), || s
        .log_text()
        .contains("/health")));
    let log = s.log_text();
    assert!(
        !log.contains("/smuggled"),
        "smuggled request reached the server:\n{}",
        log
    );
    assert!(log.contains("\"status\":413"), "{}", log);
}

/// Bytes the server has not yet read from its side of the loopback
/// connection `server_port` <- `client_port` (Linux `/proc/net/tcp`);
/// None once that socket is gone.
fn server_unread_bytes(server_port: u16, client_port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let (local, remote) = (
        format!("0100007F:{:04X}", server_port),
        format!("0100007F:{:04X}", client_port),
    );
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let rx = f.get(4)?.split(':').nth(1)?;
        (f.get(1) == Some(&local.as_str()) && f.get(2) == Some(&remote.as_str()))
            .then(|| u64::from_str_radix(rx, 16).ok())
            .flatten()
    })
}

/// Opens `n` connections that each send a head declaring `declared` body
/// bytes and then only 10 of them, one after another, each once the server
/// has read what it was sent (so all of them are being served together).
fn stall_bodies(s: &Server, n: usize, declared: usize) -> Vec<BufReader<TcpStream>> {
    (0..n)
        .map(|_| {
            let head = format!(
                "POST /api/projects HTTP/1.1\r\nHost: localhost\r\nOrigin: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"name\":\"x",
                ALLOWED_ORIGIN, declared
            );
            let conn = send_raw(s.addr, head.as_bytes());
            let port = conn.get_ref().local_addr().unwrap().port();
            assert!(
                wait_until(Duration::from_secs(10), || server_unread_bytes(s.addr.port(), port) != Some(
                    head.len() as u64
                )),
                "the server never read a stalled request's head"
            );
            conn
        })
        .collect()
}

/// Every stalled client is answered (408) or cut off, none is kept forever.
fn assert_cut_off(stalled: Vec<BufReader<TcpStream>>, within: Duration) {
    for (i, mut conn) in stalled.into_iter().enumerate() {
        conn.get_ref().set_read_timeout(Some(within)).unwrap();
        let mut got = Vec::new();
        match conn.read_to_end(&mut got) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("stalled client {} still held after {:?}: {}", i, within, e),
        }
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "client {}: {:?}",
            i,
            text
        );
    }
}

#[test]
fn bodies_that_never_arrive_do_not_hold_the_workers() {
    const WORKERS: usize = 4;
    const READ_TIMEOUT: Duration = Duration::from_secs(2);
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SERVER_WORKERS", &WORKERS.to_string())
            .env("PORTCULLIS_SECURITY_BODY_TIMEOUT_S", "1")
            .env(
                "PORTCULLIS_SERVER_READ_TIMEOUT_S",
                &READ_TIMEOUT.as_secs().to_string(),
            ),
    );
    // Twice as many stalled bodies as workers, small (read ahead before the
    // request is queued) and larger than the read-ahead limit (received on
    // the connection's thread once the filters passed): no worker ever
    // waits for them, so /health is answered at once in both cases.
    for declared in [1000, 40_000] {
        let stalled = stall_bodies(&s, 2 * WORKERS, declared);
        let asked = Instant::now();
        let r = s.get("/health");
        let took = asked.elapsed();
        assert_eq!(r.status, 200);
        assert!(
            took < Duration::from_millis(500),
            "/health took {:?} behind {} stalled {}-byte bodies",
            took,
            2 * WORKERS,
            declared
        );
        assert_cut_off(stalled, READ_TIMEOUT + Duration::from_secs(10));
    }
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn forwarded_clients_have_their_own_buckets() {
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "2"),
    );
    // Loopback is a trusted proxy by default, so X-Forwarded-For names the client.
    assert_eq!(get_from(&s, "/api/csrf-token", "198.51.100.1").status, 200);
    assert_eq!(get_from(&s, "/api/csrf-token", "198.51.100.1").status, 200);
    assert_error(
        &get_from(&s, "/api/csrf-token", "198.51.100.1"),
        429,
        "rate_limited",
    );
    // Spoofed entries left of the real hop do not pick the bucket.
    assert_error(
        &get_from(&s, "/api/csrf-token", "203.0.113.7, 198.51.100.1"),
        429,
        "rate_limited",
    );
    let other = get_from(&s, "/api/csrf-token", "198.51.100.2");
    assert_eq!(other.status, 200);
    assert_eq!(rate_field(&other, "RateLimit-Remaining"), 1);
    // One IPv6 /64 is one client.
    assert_eq!(
        rate_field(
            &get_from(&s, "/api/csrf-token", "2001:db8:1:2::1"),
            "RateLimit-Remaining"
        ),
        1
    );
    assert_eq!(
        rate_field(
            &get_from(&s, "/api/csrf-token", "[2001:db8:1:2::beef]:443"),
            "RateLimit-Remaining"
        ),
        0
    );
    assert_error(
        &get_from(&s, "/api/csrf-token", "2001:db8:1:2:ffff::3"),
        429,
        "rate_limited",
    );
    assert_eq!(
        get_from(&s, "/api/csrf-token", "2001:db8:1:3::1").status,
        200
    );
    // The proxy itself (no header) is yet another client.
    assert_eq!(s.get("/api/csrf-token").status, 200);
}

#[test]
fn exhausted_bucket_is_429_with_retry_after_and_rate_limit_fields() {
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "3")
            .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "1"),
    );
    for remaining in [2u64, 1, 0] {
        let r = s.get("/api/csrf-token");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("RateLimit-Policy"), Some("\"other\";q=3;w=60"));
        assert_eq!(rate_field(&r, "RateLimit-Limit"), 3);
        assert_eq!(rate_field(&r, "RateLimit-Remaining"), remaining);
        // Seconds until full again: 20 per missing token at 3 per minute.
        let reset = rate_field(&r, "RateLimit-Reset");
        assert!(
            reset <= (3 - remaining) * 20 && reset > (2 - remaining) * 20,
            "reset {}",
            reset
        );
        assert_eq!(
            r.header("RateLimit"),
            Some(format!("\"other\";r={};t={}", remaining, reset).as_str())
        );
    }
    let r = s.get("/api/csrf-token");
    assert_error(&r, 429, "rate_limited");
    let retry: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    assert!((1..=20).contains(&retry), "Retry-After {}", retry);
    assert_eq!(r.header("RateLimit-Policy"), Some("\"other\";q=3;w=60"));
    assert_eq!(
        r.header("RateLimit"),
        Some(format!("\"other\";r=0;t={}", retry).as_str())
    );
    assert_eq!(rate_field(&r, "RateLimit-Limit"), 3);
    assert_eq!(rate_field(&r, "RateLimit-Remaining"), 0);
    assert_eq!(rate_field(&r, "RateLimit-Reset"), retry);

    // Health is exempt: never limited, no rate-limit fields.
    for _ in 0..5 {
        let h = s.get("/health");
        assert_eq!(h.status, 200);
        assert_no_rate_headers(&h);
    }

    // The chat class has its own bucket: the exhausted `other` one does not matter.
    let first = post_json(
        &s,
        "/api/chat",
        Some(ALLOWED_ORIGIN),
        &[],
        "{\"message\":\"hi\"}",
    );
    assert!(
        ![403, 429].contains(&first.status),
        "{} {}",
        first.status,
        first.text()
    );
    assert_eq!(first.header("RateLimit-Policy"), Some("\"chat\";q=1;w=60"));
    assert_eq!(rate_field(&first, "RateLimit-Remaining"), 0);
    let second = post_json(
        &s,
        "/api/chat",
        Some(ALLOWED_ORIGIN),
        &[],
        "{\"message\":\"hi\"}",
    );
    assert_error(&second, 429, "rate_limited");
    assert_eq!(second.header("RateLimit-Policy"), Some("\"chat\";q=1;w=60"));
    let retry: u64 = second.header("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{}", retry);
}

#[test]
fn unsafe_methods_need_an_allowed_origin() {
    let s = Server::start(Opts::new().no_auth());
    let body = "{\"name\":\"p\"}";
    // Neither Origin nor Referer, and no key: refused.
    assert_error(
        &post_json(&s, "/api/projects", None, &[], body),
        403,
        "origin_not_allowed",
    );
    assert_error(
        &post_json(&s, "/api/projects", Some("http://evil.example"), &[], body),
        403,
        "origin_not_allowed",
    );
    assert_error(
        &post_json(
            &s,
            "/api/projects",
            Some("http://localhost:3001"),
            &[],
            body,
        ),
        403,
        "origin_not_allowed",
    );
    let r = s.req(
        "DELETE",
        "/api/projects/x",
        &[("Referer", "http://evil.example/page")],
        None,
    );
    assert_error(&r, 403, "origin_not_allowed");

    // Allowed origin (or Referer) passes the Origin filter (and CSRF, off by default).
    let r = post_json(&s, "/api/projects", Some(ALLOWED_ORIGIN), &[], body);
    assert_ne!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some(ALLOWED_ORIGIN)
    );
    let r = post_json(
        &s,
        "/api/projects",
        None,
        &[("Referer", "http://localhost:3000/app?x=1")],
        body,
    );
    assert_ne!(r.status, 403, "{}", r.text());
}

#[test]
fn cors_preflight_answers_allowed_origins_only_and_never_a_wildcard() {
    let s = Server::start(Opts::new().no_auth());
    let preflight = |origin: &str| {
        s.req(
            "OPTIONS",
            "/api/projects",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "content-type, x-csrf-token",
                ),
            ],
            None,
        )
    };
    let r = preflight(ALLOWED_ORIGIN);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some(ALLOWED_ORIGIN)
    );
    assert!(r
        .header("Access-Control-Allow-Methods")
        .is_some_and(|m| m.contains("POST")));
    assert!(r
        .header("Access-Control-Allow-Headers")
        .is_some_and(|h| h.contains("X-CSRF-Token")));
    assert_security_headers(&r, "preflight");
    assert_no_rate_headers(&r);

    let r = preflight("http://evil.example");
    assert_error(&r, 403, "origin_not_allowed");
    assert_eq!(r.header("Access-Control-Allow-Origin"), None);
    assert_error(
        &s.req("OPTIONS", "/api/projects", &[], None),
        403,
        "origin_not_allowed",
    );

    // Simple requests: the allowed origin is echoed, others get nothing.
    let r = s.req(
        "GET",
        "/health",
        &[("Origin", "http://127.0.0.1:3000")],
        None,
    );
    assert_eq!(
        r.header("Access-Control-Allow-Origin"),
        Some("http://127.0.0.1:3000")
    );
    let r = s.req("GET", "/health", &[("Origin", "http://evil.example")], None);
    assert_eq!(r.header("Access-Control-Allow-Origin"), None);
    assert_security_headers(&r, "health from another origin");
}

#[test]
fn csrf_tokens_are_required_from_browsers_when_enabled() {
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SECURITY_CSRF_TOKENS", "true")
            .env("PORTCULLIS_SECURITY_CSRF_TOKEN_TTL_S", "120"),
    );
    let r = s.get("/api/csrf-token");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    assert_security_headers(&r, "csrf-token");
    let v = r.json();
    assert_eq!(v["expires_in"], 120);
    let token = v["token"].as_str().expect("token").to_string();
    assert!(token.len() >= 32, "{}", token);

    let body = "{\"name\":\"p\"}";
    let no_token = post_json(&s, "/api/projects", Some(ALLOWED_ORIGIN), &[], body);
    assert_error(&no_token, 403, "csrf_token_invalid");
    let forged = format!("{}.{}.{}", u32::MAX, "0".repeat(32), "0".repeat(64));
    for bad in [forged.as_str(), "garbage", &token[..token.len() - 1]] {
        let r = post_json(
            &s,
            "/api/projects",
            Some(ALLOWED_ORIGIN),
            &[("X-CSRF-Token", bad)],
            body,
        );
        assert_error(&r, 403, "csrf_token_invalid");
    }
    let r = post_json(
        &s,
        "/api/projects",
        Some(ALLOWED_ORIGIN),
        &[("X-CSRF-Token", &token)],
        body,
    );
    assert_ne!(
        r.status,
        403,
        "a valid token passes the CSRF filter: {}",
        r.text()
    );
    // A token is reusable until it expires (stateless).
    let r = post_json(
        &s,
        "/api/chat",
        Some(ALLOWED_ORIGIN),
        &[("X-CSRF-Token", &token)],
        "{\"message\":\"x\"}",
    );
    assert_ne!(r.status, 403, "{}", r.text());
    // Without Origin it is not a browser request: the Origin filter decides.
    assert_error(
        &post_json(&s, "/api/projects", None, &[], body),
        403,
        "origin_not_allowed",
    );
    // Safe methods never need a token.
    assert_eq!(
        s.req("GET", "/health", &[("Origin", ALLOWED_ORIGIN)], None)
            .status,
        200
    );
}

#[test]
fn security_headers_on_success_errors_and_preflight() {
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SECURITY_MAX_BODY_BYTES", "1024")
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "60"),
    );
    let ok = s.get("/health");
    assert_eq!(ok.status, 200);
    assert_security_headers(&ok, "200");
    let cases: Vec<(Resp, u16, &str)> = vec![
        (s.get("/nope"), 404, "not_found"),
        (
            s.req("PUT", "/health", &[], None),
            405,
            "method_not_allowed",
        ),
        (
            s.req("GET", "/health", &[("Host", "evil.example")], None),
            421,
            "host_not_allowed",
        ),
        (
            post_json(&s, "/api/projects", None, &[], "{}"),
            403,
            "origin_not_allowed",
        ),
        (
            s.req(
                "POST",
                "/api/projects",
                &[("Origin", ALLOWED_ORIGIN), ("Content-Type", "text/plain")],
                Some("x"),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            post_json(
                &s,
                "/api/projects",
                Some(ALLOWED_ORIGIN),
                &[],
                &"x".repeat(2000),
            ),
            413,
            "payload_too_large",
        ),
    ];
    for (r, status, code) in &cases {
        assert_error(r, *status, code);
    }
    for _ in 0..60 {
        assert_eq!(get_from(&s, "/api/csrf-token", "192.0.2.50").status, 200);
    }
    assert_error(
        &get_from(&s, "/api/csrf-token", "192.0.2.50"),
        429,
        "rate_limited",
    );
    let pre = s.req("OPTIONS", "/api/chat", &[("Origin", ALLOWED_ORIGIN)], None);
    assert_eq!(pre.status, 204);
    assert_security_headers(&pre, "preflight");
}
