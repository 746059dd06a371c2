//! A measurement, not a test: how long a small SSE event written through a
//! streamed tiny_http `Response` takes to reach the client (docs/findings.md:
//! such responses hold small events until 8 KiB pile up, which is why
//! portcullis streams on the raw connection and flushes each event).
//!
//!     cargo run --release --example tiny_http_buffering

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() {
    const EVENT: &[u8] = b"event: delta\ndata: {\"content\":\"hi\"}\n\n";
    struct OneEventThenSilence {
        step: u8,
        silence: Duration,
    }
    impl Read for OneEventThenSilence {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.step += 1;
            match self.step {
                1 => {
                    buf[..EVENT.len()].copy_from_slice(EVENT);
                    Ok(EVENT.len())
                }
                2 => {
                    std::thread::sleep(self.silence);
                    Ok(0)
                }
                _ => Ok(0),
            }
        }
    }
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = server.server_addr().to_ip().unwrap();
    let silence = Duration::from_millis(1500);
    std::thread::spawn(move || {
        if let Ok(rq) = server.recv() {
            let body = OneEventThenSilence { step: 0, silence };
            let _ = rq.respond(tiny_http::Response::new(
                200.into(),
                vec![],
                body,
                None,
                None,
            ));
        }
    });
    let mut s = TcpStream::connect(addr).unwrap();
    let t = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("event: delta") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed before the event arrived");
        got.extend_from_slice(&buf[..n]);
    }
    eprintln!(
        "figure: tiny_http streamed Response: a {}-byte SSE event reached the client after {:?} (the producer was silent for {:?} after writing it)",
        EVENT.len(),
        t.elapsed(),
        silence
    );
}
