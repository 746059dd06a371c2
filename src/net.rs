//! Address and origin values shared by the settings and the filters:
//! CIDR blocks, the `trusted_proxies` list, web origins. Settings parse
//! them at start-up; filters use them per request; neither depends on the
//! other.

use std::net::IpAddr;

/// A parsed CIDR block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `1.2.3.4`, `10.0.0.0/8`, `::1`, `fd00::/8`.
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => {
                let n: u8 = p.trim().parse().ok()?;
                // An IPv4-mapped CIDR like ::ffff:10.0.0.0/104 becomes 10.0.0.0/8.
                if a.contains(':') && addr.is_ipv4() {
                    n.checked_sub(96)?
                } else {
                    n
                }
            }
            None => max,
        };
        (prefix <= max).then_some(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is the IPv4 address it maps.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// The `trusted_proxies` setting.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses the list; the error is the first entry that is not an address or CIDR.
    pub fn parse(items: &[String]) -> Result<TrustedProxies, String> {
        items
            .iter()
            .map(|s| Cidr::parse(s).ok_or_else(|| s.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// True when every address would be trusted.
    pub fn is_catch_all(&self) -> bool {
        self.0.iter().any(|c| c.prefix == 0)
    }
}

/// Normalises an origin (`scheme://host[:port]`): lower-cased, default
/// port dropped. None for anything that is not exactly an origin.
pub fn parse_origin(s: &str) -> Option<String> {
    let s = s.trim();
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let rest = rest.to_ascii_lowercase();
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, after) = r.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return None,
        };
        (format!("[{}]", h), port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.clone(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return None;
    }
    match port {
        Some(p) if p.parse::<u16>().is_err() => None,
        Some(p) if p == default_port => Some(format!("{}://{}", scheme, host)),
        Some(p) => Some(format!("{}://{}:{}", scheme, host, p)),
        None => Some(format!("{}://{}", scheme, host)),
    }
}
