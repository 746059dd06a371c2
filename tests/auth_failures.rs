//! Failed keys limited per client address (issue 10, item 6; API.md "Users,
//! keys and sessions": "after `auth.max_failures_per_minute` (default 20)
//! the address gets 429 before any lookup"), against the real binary over
//! real sockets. Clients are told apart with `X-Forwarded-For` from
//! loopback, a trusted proxy by default. The refill itself is tested with
//! injected time in `filters::auth` and `filters::rate_limit`.

mod support;

use std::time::Instant;

use support::{Opts, Resp, Server};

const SPRAYER: &str = "198.51.100.7";
const NEIGHBOUR: &str = "198.51.100.8";

fn get_as(s: &Server, from: &str, key: &str) -> Resp {
    let auth = format!("Bearer {}", key);
    s.req(
        "GET",
        "/api/projects",
        &[("X-Forwarded-For", from), ("Authorization", &auth)],
        None,
    )
}

/// `portcullis_auth_refusals_total{reason}` from `/metrics` (loopback).
fn refusals(s: &Server, reason: &str) -> u64 {
    let text = s.get("/metrics").text();
    let prefix = format!("portcullis_auth_refusals_total{{reason=\"{}\"}} ", reason);
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no {} in {}", prefix, text))
        .parse()
        .unwrap()
}

fn assert_429(r: &Resp) -> u64 {
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.code(), "rate_limited", "{}", r.text());
    assert!(r.header("X-Request-Id").is_some());
    let retry: u64 = r
        .header("Retry-After")
        .expect("Retry-After")
        .parse()
        .expect("whole seconds");
    // One failure refills every 60/20 = 3 s.
    assert!((1..=3).contains(&retry), "Retry-After {}", retry);
    assert_eq!(
        r.header("RateLimit-Policy"),
        Some("\"auth_failures\";q=20;w=60")
    );
    assert_eq!(
        r.header("RateLimit"),
        Some(format!("\"auth_failures\";r=0;t={}", retry).as_str())
    );
    assert_eq!(r.header("RateLimit-Remaining"), Some("0"));
    retry
}

#[test]
fn twenty_wrong_keys_then_the_address_gets_429_before_any_lookup() {
    let s = Server::start(Opts::new());
    let valid = support::first_key(&s);
    let wrong = format!("pcs_{}", "0f".repeat(24));

    let started = Instant::now();
    let mut unauthorized = 0;
    let first_429 = loop {
        let r = get_as(&s, SPRAYER, &wrong);
        match r.status {
            401 => unauthorized += 1,
            429 => break r,
            other => panic!("{} {}", other, r.text()),
        }
        assert!(unauthorized <= 40, "never limited");
    };
    let elapsed = started.elapsed();
    // A failure refills every 3 s: a loop slower than that earns one more try.
    let allowed = 20 + (elapsed.as_secs() / 3) as usize;
    assert!(
        (20..=allowed).contains(&unauthorized),
        "{} x 401 in {:?} before the 429",
        unauthorized,
        elapsed
    );
    assert_429(&first_429);
    // Every 401 was one lookup; the 429 was answered before any.
    assert_eq!(refusals(&s, "unknown"), unauthorized as u64);
    assert_eq!(refusals(&s, "too_many_failures"), 1);

    // The contract: the address gets 429 before any lookup. So a valid key
    // from it is refused too (telling it apart would need the lookup, and
    // would keep the address an oracle for guessed keys).
    assert_429(&get_as(&s, SPRAYER, &valid));
    // Missing credentials from it: the same 429, nothing read.
    assert_429(&s.req(
        "GET",
        "/api/projects",
        &[("X-Forwarded-For", SPRAYER)],
        None,
    ));
    assert_eq!(refusals(&s, "too_many_failures"), 3);
    assert_eq!(refusals(&s, "missing"), 0);
    assert_eq!(refusals(&s, "unknown"), unauthorized as u64);
    // Exempt routes stay served.
    let health = s.req("GET", "/health", &[("X-Forwarded-For", SPRAYER)], None);
    assert_eq!(health.status, 200, "{}", health.text());

    // Another address is unaffected: its valid key passes, its wrong key
    // is an ordinary 401.
    let ok = get_as(&s, NEIGHBOUR, &valid);
    assert_eq!(ok.status, 200, "{}", ok.text());
    let r = get_as(&s, NEIGHBOUR, &wrong);
    assert_eq!((r.status, r.code()), (401, "unauthorized".to_string()));
    assert_eq!(refusals(&s, "unknown"), unauthorized as u64 + 1);

    // The refusals are in the aggregated audit trail (written on shutdown).
    let mut s = s;
    s.terminate(std::time::Duration::from_secs(20));
    let out = std::process::Command::new(support::bin())
        .args(["audit"])
        .env("PORTCULLIS_SERVER_DATA_DIR", &s.dir)
        .current_dir(&s.dir)
        .output()
        .unwrap();
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(audit.contains("too_many_failures"), "{}", audit);
}
