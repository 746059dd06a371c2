#![no_main]
//! The strict request-head parser (vendor/tiny_http/src/head.rs) and the
//! chunked body decoder: no input may panic, the parser never claims more
//! bytes than it was given, feeding the same bytes in two pieces decides
//! the same as one piece, and a decoded body never exceeds its cap.
use libfuzzer_sys::fuzz_target;
use tiny_http::{parse_head, receive_body, Framing, HeadLimits};

const LIMITS: HeadLimits = HeadLimits {
    max_line: 512,
    max_head: 2048,
    max_headers: 16,
};

fuzz_target!(|data: &[u8]| {
    let whole = parse_head(data, LIMITS);
    if let Ok(Some((head, used))) = &whole {
        assert!(*used <= data.len());
        assert!(head.headers.len() <= LIMITS.max_headers);
        if let Framing::Length(n) = head.framing {
            assert!(n > 0);
        }
        // Whatever follows the head, read as a chunked body, is bounded.
        let mut rest = &data[*used..];
        if let Ok(body) = receive_body(&mut rest, Framing::Chunked, 1024, None) {
            assert!(body.len() <= 1024);
        }
    }
    // The decision does not depend on how the bytes were split.
    if data.len() > 1 {
        let split = data[0] as usize % data.len();
        let mut scanner = tiny_http::HeadScanner::new(LIMITS);
        let first = scanner.feed(&data[..split]);
        let pieces = match first {
            Err(e) => Err(e),
            Ok((_, true)) => return, // complete within the first piece
            Ok((_, false)) => scanner.feed(&data[split..]).and_then(|(_, done)| {
                if done {
                    scanner.parse().map(Some)
                } else {
                    Ok(None)
                }
            }),
        };
        match (&whole, &pieces) {
            (Ok(Some(_)), Ok(Some(_))) | (Ok(None), Ok(None)) => {}
            (Err(a), Err(b)) => assert_eq!(a, b),
            (a, b) => panic!("one piece {:?} vs two {:?}", a.as_ref().map(|o| o.is_some()), b.as_ref().map(|o| o.is_some())),
        }
    }
});
