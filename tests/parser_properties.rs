//! Property tests for every parser that reads attacker-controlled input
//! (INI, X-Forwarded-For, Host, Origin, router, JSON bodies): random and
//! mutated inputs from a seeded generator (reproducible, no extra crate)
//! must never panic and must keep each parser's invariants. Coverage-guided
//! fuzzing of the same entry points: `fuzz/` (cargo fuzz, nightly).

use std::net::IpAddr;

use portcullis::filters::{client_ip, host, origin};
use portcullis::http::{Ctx, Method};

/// xorshift64*: small, seeded, good enough to shake parsers.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    /// A string built from interesting fragments and random bytes.
    fn fuzz_string(&mut self, fragments: &[&str]) -> String {
        let mut s = String::new();
        for _ in 0..self.below(12) {
            match self.below(4) {
                0 => s.push(char::from_u32(self.below(0x3000) as u32).unwrap_or('?')),
                1 => s.push((self.below(128) as u8) as char),
                _ => s.push_str(fragments[self.below(fragments.len())]),
            }
        }
        s
    }
}

const ITERATIONS: usize = 20_000;

/// An entry's address, ignoring brackets and a port (the oracle).
fn loose_ip(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    let ip = e.parse::<IpAddr>().ok().or_else(|| {
        let inner = e.strip_prefix('[').and_then(|r| r.split(']').next());
        inner
            .and_then(|i| i.parse().ok())
            .or_else(|| e.rsplit_once(':').and_then(|(h, _)| h.parse().ok()))
    })?;
    Some(client_ip::canonical(ip))
}

#[test]
fn xff_resolution_never_trusts_an_untrusted_peer_and_never_panics() {
    let trusted =
        client_ip::TrustedProxies::parse(&["127.0.0.1".into(), "10.0.0.0/8".into(), "::1".into()])
            .unwrap();
    let frags = [
        "1.2.3.4",
        ",",
        " ",
        "10.0.0.1",
        "[",
        "]",
        ":",
        "::1",
        "2001:db8::1",
        "::ffff:1.2.3.4",
        "/",
        "999.1.1.1",
        "%",
        "\t",
    ];
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..ITERATIONS {
        let headers: Vec<String> = (0..rng.below(4)).map(|_| rng.fuzz_string(&frags)).collect();
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        let untrusted: IpAddr = "8.8.4.4".parse().unwrap();
        assert_eq!(client_ip::resolve(untrusted, &refs, &trusted), untrusted);
        let via_proxy = client_ip::resolve("127.0.0.1".parse().unwrap(), &refs, &trusted);
        // The answer is the proxy itself or one of the header's entries.
        let listed = headers
            .iter()
            .flat_map(|h| h.split(','))
            .any(|e| loose_ip(e) == Some(via_proxy));
        assert!(
            via_proxy == "127.0.0.1".parse::<IpAddr>().unwrap() || listed,
            "{:?} -> {}",
            headers,
            via_proxy
        );
    }
}

#[test]
fn host_and_origin_parsers_never_panic_and_normalise() {
    let frags = [
        "localhost",
        ":",
        "8000",
        "[",
        "]",
        "::1",
        ".",
        "http://",
        "https://",
        "/",
        "@",
        "*",
        "null",
        "EXAMPLE.org",
        "%2e",
    ];
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..ITERATIONS {
        let s = rng.fuzz_string(&frags);
        if let Some(name) = host::host_name(&s) {
            assert_eq!(name, name.to_ascii_lowercase());
            assert!(!name.is_empty());
        }
        if let Some(o) = origin::parse_origin(&s) {
            assert!(
                o.starts_with("http://") || o.starts_with("https://"),
                "{:?} -> {:?}",
                s,
                o
            );
            assert_eq!(
                origin::parse_origin(&o).as_deref(),
                Some(o.as_str()),
                "normal form is stable"
            );
        }
    }
}

#[test]
fn router_never_panics_and_params_never_contain_slashes() {
    let frags = [
        "/api",
        "/projects",
        "/conversations",
        "/",
        "x",
        "%2F",
        "%",
        "%zz",
        "..",
        "/messages",
        "/health",
        "/v1",
        "?",
        "#",
    ];
    let mut rng = Rng(0x5eed_0003);
    for _ in 0..ITERATIONS {
        let path = rng.fuzz_string(&frags);
        for m in [
            Method::Get,
            Method::Post,
            Method::Patch,
            Method::Delete,
            Method::Options,
            Method::Other,
        ] {
            if let Ok(Some((_, params))) = portcullis::router::resolve(m, &path) {
                for p in params {
                    assert!(!p.is_empty());
                }
            }
        }
    }
}

#[test]
fn ini_parser_never_panics_on_mutations_of_the_committed_config() {
    let base = include_str!("../config.ini");
    let mut rng = Rng(0x5eed_0004);
    let path = std::path::Path::new("fuzz.ini");
    for _ in 0..2_000 {
        let mut bytes = base.as_bytes().to_vec();
        for _ in 0..1 + rng.below(8) {
            let i = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[i] = rng.below(256) as u8,
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, b"[=#;\n "[rng.below(6)]),
            }
        }
        let text = String::from_utf8_lossy(&bytes);
        if let Err(e) = portcullis::config::parse_ini(&text, path) {
            assert!(
                e.0.starts_with("fuzz.ini:"),
                "error must name file and line: {}",
                e
            );
        }
    }
}

#[test]
fn json_bodies_never_panic_and_errors_are_contract_codes() {
    let frags = [
        "{", "}", "[", "]", "\"name\"", ":", ",", "\"", "\\u0000", "1e999", "-0", "null", "true",
        "\u{feff}", "\\", "\"a\"",
    ];
    let mut rng = Rng(0x5eed_0005);
    for _ in 0..ITERATIONS {
        let mut ctx = Ctx::new(Method::Post, "/x", "127.0.0.1".parse().unwrap())
            .with_header("content-type", "application/json");
        ctx.body = rng.fuzz_string(&frags).into_bytes();
        match portcullis::json_body::object(&ctx, &["name"]) {
            Ok(fields) => {
                let _ = fields.reject_unknown();
                let _ = fields.opt_str("name", 1, 200);
            }
            Err(e) => assert_eq!(e.code(), "invalid_json"),
        }
    }
}
