//! Filter 4: the client's address, proxy-aware.
//!
//! The socket peer is the client unless the peer is a trusted proxy; then
//! `X-Forwarded-For` is walked from the right and the first address that is
//! not itself a trusted proxy is the client. A header from an untrusted peer
//! is never believed, so a client cannot pick its own rate-limit bucket.

use std::net::{IpAddr, Ipv6Addr};

pub use crate::net::{canonical, Cidr, TrustedProxies};

/// Longest X-Forwarded-For value we look at; beyond it the walk stops (the
/// rightmost entries, the ones added by our own proxies, come first).
const MAX_XFF_BYTES: usize = 4096;
/// Most hops walked.
const MAX_XFF_HOPS: usize = 32;

/// The rate-limit identity of an address: IPv4 as is, IPv6 by its /64
/// (one host usually owns a whole /64; keying on full addresses is evaded
/// by rotating the interface id).
pub fn bucket_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Parses one X-Forwarded-For entry: `1.2.3.4`, `1.2.3.4:5678`, `::1`,
/// `[::1]`, `[::1]:5678`. Anything else is malformed.
fn parse_hop(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty() || (after.starts_with(':') && after[1..].parse::<u16>().is_ok())) {
            return None;
        }
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| canonical(IpAddr::V6(ip)));
    }
    // IPv4 with a port.
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// Returns the client's address: the socket peer, unless that peer is a
/// trusted proxy, in which case the rightmost X-Forwarded-For entry that is
/// not itself a trusted proxy. A malformed entry stops the walk and the last
/// good hop is used. Never trusts a header from an untrusted peer.
pub fn resolve(peer: IpAddr, forwarded_for: &[&str], trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    let mut budget = MAX_XFF_BYTES;
    let mut hops = 0;
    // Several X-Forwarded-For headers are one list in order.
    'walk: for header in forwarded_for.iter().rev() {
        for entry in header.rsplit(',') {
            budget = match budget.checked_sub(entry.len() + 1) {
                Some(b) => b,
                None => break 'walk,
            };
            hops += 1;
            if hops > MAX_XFF_HOPS {
                break 'walk;
            }
            match parse_hop(entry) {
                Some(ip) => {
                    client = ip;
                    if !trusted.contains(ip) {
                        break 'walk;
                    }
                }
                None => break 'walk,
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxies(list: &[&str]) -> TrustedProxies {
        TrustedProxies::parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn resolve_table() {
        let t = proxies(&["127.0.0.1", "10.0.0.0/8", "::1", "fd00::/8"]);
        let long = format!("{}1.1.1.1", "9.9.9.9, ".repeat(5000));
        let cases: &[(&str, &str, &[&str], &str)] = &[
            (
                "spoofed_xff_from_untrusted_peer_is_ignored",
                "8.8.8.8",
                &["1.2.3.4"],
                "8.8.8.8",
            ),
            (
                "no_header_from_proxy_is_the_proxy",
                "127.0.0.1",
                &[],
                "127.0.0.1",
            ),
            (
                "single_hop_through_proxy",
                "127.0.0.1",
                &["1.2.3.4"],
                "1.2.3.4",
            ),
            (
                "client_spoof_left_of_real_hop_is_ignored",
                "127.0.0.1",
                &["6.6.6.6, 1.2.3.4"],
                "1.2.3.4",
            ),
            (
                "chain_of_trusted_proxies_is_skipped",
                "127.0.0.1",
                &["1.2.3.4, 10.0.0.2, 10.0.0.3"],
                "1.2.3.4",
            ),
            (
                "multiple_headers_are_one_list",
                "127.0.0.1",
                &["1.2.3.4", "10.0.0.9"],
                "1.2.3.4",
            ),
            (
                "malformed_entry_stops_walk_at_last_good_hop",
                "127.0.0.1",
                &["1.2.3.4, garbage, 10.0.0.2"],
                "10.0.0.2",
            ),
            (
                "empty_entry_stops_walk",
                "127.0.0.1",
                &["1.2.3.4, , 10.0.0.2"],
                "10.0.0.2",
            ),
            ("empty_header_is_the_peer", "127.0.0.1", &[""], "127.0.0.1"),
            ("ipv4_with_port", "127.0.0.1", &["1.2.3.4:5555"], "1.2.3.4"),
            (
                "ipv6_bracketed_with_port",
                "127.0.0.1",
                &["[2001:db8::1]:443"],
                "2001:db8::1",
            ),
            ("ipv6_bare", "::1", &["2001:db8::7"], "2001:db8::7"),
            (
                "ipv6_bracketed_no_port",
                "::1",
                &["[2001:db8::7]"],
                "2001:db8::7",
            ),
            (
                "bad_bracket_suffix_is_malformed",
                "::1",
                &["[2001:db8::7]x"],
                "::1",
            ),
            (
                "mapped_peer_counts_as_ipv4_proxy",
                "::ffff:127.0.0.1",
                &["1.2.3.4"],
                "1.2.3.4",
            ),
            (
                "mapped_hop_is_ipv4",
                "127.0.0.1",
                &["::ffff:5.6.7.8"],
                "5.6.7.8",
            ),
            (
                "all_hops_trusted_gives_leftmost",
                "127.0.0.1",
                &["10.0.0.1, 10.0.0.2"],
                "10.0.0.1",
            ),
            (
                "absurdly_long_header_is_bounded",
                "127.0.0.1",
                &[long.as_str()],
                "1.1.1.1",
            ),
            (
                "unicode_garbage",
                "127.0.0.1",
                &["１.２.３.４"],
                "127.0.0.1",
            ),
        ];
        for (name, peer, xff, want) in cases {
            assert_eq!(resolve(ip(peer), xff, &t), ip(want), "{}", name);
        }
    }

    #[test]
    fn hop_walk_is_bounded_in_count() {
        let t = proxies(&["10.0.0.0/8"]);
        let many: String = (0..100)
            .map(|i| format!("10.0.0.{},", i % 250))
            .collect::<String>()
            + "10.0.0.1";
        // Stops after MAX_XFF_HOPS trusted hops; the result is still a trusted hop, never a spoof.
        assert!(t.contains(resolve(ip("10.0.0.1"), &[&format!("6.6.6.6,{}", many)], &t)));
    }

    #[test]
    fn cidr_parsing() {
        assert!(Cidr::parse("10.0.0.0/8").unwrap().contains(ip("10.9.9.9")));
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().contains(ip("11.0.0.1")));
        assert!(Cidr::parse("fd00::/8").unwrap().contains(ip("fd12::1")));
        assert!(Cidr::parse("::ffff:10.0.0.0/104")
            .unwrap()
            .contains(ip("10.1.1.1")));
        assert!(Cidr::parse("10.0.0.0/33").is_none());
        assert!(Cidr::parse("nope").is_none());
        assert!(proxies(&["0.0.0.0/0"]).is_catch_all());
        assert!(!proxies(&["127.0.0.1"]).is_catch_all());
    }

    #[test]
    fn ipv6_buckets_by_64_and_mapped_as_v4() {
        assert_eq!(
            bucket_key(ip("2001:db8:1:2::1")),
            bucket_key(ip("2001:db8:1:2:aaaa::9"))
        );
        assert_ne!(
            bucket_key(ip("2001:db8:1:2::1")),
            bucket_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(bucket_key(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
    }
}
