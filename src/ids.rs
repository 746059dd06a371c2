//! Random identifiers and secrets from the operating system's CSPRNG
//! (through `ring`, already in the tree for TLS).

use ring::rand::{SecureRandom, SystemRandom};

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    // SystemRandom reads getrandom(2); failure means the OS cannot give
    // randomness at all, which no request can recover from.
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the operating system's random number generator failed");
    buf
}

/// `n` random bytes as lower-case hex (2n characters).
pub fn random_hex(n: usize) -> String {
    hex(&random_bytes(n))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// A new opaque id for stored rows: 24 lower-case hex characters, the
/// creation time in milliseconds (48 bits) then 48 random bits.
///
/// Why time first: every table has a unique index on `id`, and with wholly
/// random ids each insert landed on a different leaf of that index, so a
/// batch of 20 creates dirtied some 20 extra pages, each written to the WAL
/// and again by the checkpoint (measured at 32 connections: ~5 page writes
/// and 10 KiB of disk writes per create on a database of a million rows,
/// and the disk busy enough to stretch commits to 100 ms). Ids that grow
/// with time append to the index's last leaf instead. They reveal the
/// creation time, which every answer shows anyway (`created_at`); they
/// are not secrets (every read checks the owner), and 48 random bits per
/// millisecond keep them distinct (the `UNIQUE` constraint still guards).
pub fn new_id() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut bytes = [0u8; 12];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    bytes[6..].copy_from_slice(&random_bytes(6));
    hex(&bytes)
}

/// A new request id: 64 bits from a per-thread generator seeded once from
/// the OS. Request ids only correlate log lines (they are not secrets), so
/// they need uniqueness, not a system call per request.
pub fn new_request_id() -> String {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let b = random_bytes(8);
            u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) | 1
        });
    }
    // SplitMix64: full-period, well mixed, one add and three multiplies.
    let mut z = STATE.with(|s| {
        let v = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(v);
        v
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    hex(&z.to_be_bytes())
}

/// Constant-time byte comparison.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_distinct() {
        let a = new_id();
        let b = new_id();
        assert_eq!(a.len(), 24);
        assert_ne!(a, b);
        // Time first (so ids sort by creation): the first 12 hex digits
        // are the milliseconds since the epoch when it was made.
        let now = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64
        };
        let before = now();
        let id = new_id();
        let after = now();
        let ms = u64::from_str_radix(&id[..12], 16).unwrap();
        assert!(
            before <= ms && ms <= after,
            "{} not in {}..{}",
            ms,
            before,
            after
        );
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        let ids: std::collections::HashSet<String> =
            (0..10_000).map(|_| new_request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| i.len() == 16));
    }
}
