//! Filter 2: the Host allowlist (421 `host_not_allowed`). A DNS-rebinding
//! page reaches us with its own host name in `Host`; only names we serve
//! are accepted. The port is ignored; IPv6 literals come in brackets.

use crate::error::ApiError;

/// The host name of a Host header value, lower-cased, without port.
pub fn host_name(value: &str) -> Option<String> {
    host_part(value).map(|n| n.to_ascii_lowercase())
}

/// The host part of a Host header value as sent (no port, no trailing
/// dot); None when the value is not a valid Host.
fn host_part(value: &str) -> Option<&str> {
    let v = value.trim();
    if v.is_empty() || v.len() > 255 {
        return None;
    }
    let name = if let Some(rest) = v.strip_prefix('[') {
        let (inner, after) = rest.split_once(']')?;
        if !(after.is_empty()
            || after
                .strip_prefix(':')
                .is_some_and(|p| p.parse::<u16>().is_ok()))
        {
            return None;
        }
        inner
    } else {
        match v.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                p.parse::<u16>().ok()?;
                h
            }
            Some(_) => return None, // bare IPv6 without brackets is not a valid Host
            None => v,
        }
    };
    let name = name.trim_end_matches('.');
    (!name.is_empty()).then_some(name)
}

pub fn check(host: Option<&str>, allowed: &[String]) -> Result<(), ApiError> {
    // Compared without allocating: this runs on every request.
    match host.and_then(host_part) {
        Some(name) if allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) => Ok(()),
        _ => Err(ApiError::HostNotAllowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_table() {
        let allowed: Vec<String> = ["localhost", "127.0.0.1", "::1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cases = [
            (Some("localhost"), true),
            (Some("LOCALHOST:8000"), true),
            (Some("localhost."), true),
            (Some("127.0.0.1:1"), true),
            (Some("[::1]:8000"), true),
            (Some("[::1]"), true),
            (Some("::1"), false),
            (Some("evil.example"), false),
            (Some("localhost.evil.example"), false),
            (Some("localhost:notaport"), false),
            (Some(""), false),
            (None, false),
        ];
        for (h, ok) in cases {
            assert_eq!(check(h, &allowed).is_ok(), ok, "{:?}", h);
        }
    }
}
