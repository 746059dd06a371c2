//! Bare tiny_http hello server: the baseline `scripts/bench.sh` compares
//! portcullis' `/health` against (same tiny_http build, same worker count).
//! Usage: hello_tiny_http ADDR WORKERS
use std::sync::Arc;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8081".into());
    let workers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(4);
    let server = Arc::new(tiny_http::Server::http(&addr).expect("bind"));
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let server = server.clone();
            std::thread::spawn(move || {
                while let Ok(rq) = server.recv() {
                    let header = tiny_http::Header::from_bytes(
                        &b"Content-Type"[..],
                        &b"application/json"[..],
                    )
                    .expect("static header");
                    let _ = rq.respond(
                        tiny_http::Response::from_string("{\"status\":\"ok\"}").with_header(header),
                    );
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}
