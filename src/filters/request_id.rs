//! Filter 1: the request id. A new random id, or the caller's
//! `X-Request-Id` when the peer is a trusted proxy and the value is
//! 1..64 characters of `[A-Za-z0-9._-]` (anything else could forge log
//! lines or smuggle markup into them).

use std::net::IpAddr;

use super::client_ip::TrustedProxies;

const MAX_REQUEST_ID_LEN: usize = 64;

pub fn is_well_formed(id: &str) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The id for this request.
pub fn assign(peer: IpAddr, offered: Option<&str>, trusted: &TrustedProxies) -> String {
    match offered {
        Some(id) if trusted.contains(peer) && is_well_formed(id) => id.to_string(),
        _ => crate::ids::new_request_id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_table() {
        let t = TrustedProxies::parse(&["127.0.0.1".to_string()]).unwrap();
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "8.8.8.8".parse().unwrap();
        assert_eq!(assign(proxy, Some("abc-1.2_3"), &t), "abc-1.2_3");
        for bad in ["", "has space", "new\nline", "ü", &"x".repeat(65)] {
            assert_ne!(assign(proxy, Some(bad), &t), bad, "{:?}", bad);
        }
        assert_ne!(
            assign(stranger, Some("abc"), &t),
            "abc",
            "untrusted peer cannot choose its id"
        );
        assert_eq!(assign(stranger, None, &t).len(), 16);
    }
}
