//! Request latencies for `scripts/cost_growth.sh` and `scripts/bench.sh`
//! (issue 12): N sequential
//! requests on one keep-alive connection, each timed from the first byte
//! written to the last byte of the answer read; every answer must be 200
//! (else the probe fails, so a figure is never made of errors). Prints
//! `p50_us=N p99_us=N n=N`. Ten warm-up requests go first, uncounted
//! (none for `cold-keys`, whose keys are each used once).
//!
//! Subcommands (ADDR is host:port):
//!   get ADDR KEY PATH N
//!       GET PATH.
//!   last-page ADDR KEY CONVERSATION_ID N
//!       GET the conversation's last 50 messages: the page of
//!       `?limit=50&cursor=...` that ends the list (the cursor is found
//!       first by walking the list; the page is checked to hold 50 and to
//!       be the last).
//!   chat ADDR KEY CONVERSATION_ID N
//!       POST /api/chat, not streaming, continuing the conversation.
//!   post ADDR KEY PATH JSON N
//!       POST the JSON body to PATH (scripts/bench.sh counts system calls,
//!       context switches and allocations over exactly N relayed requests).
//!   cold-keys ADDR KEYS_FILE N FIRST
//!       GET /api/projects?limit=1, each request with its own key: lines
//!       FIRST.. FIRST+N-1 (0-based) of KEYS_FILE, one key per line. The
//!       caller uses each line once, so the server's key cache never has
//!       the key: every request looks it up in SQLite.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const WARM_UP: usize = 10;
const TIMEOUT: Duration = Duration::from_secs(30);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    let n = |i: usize| -> usize {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| fail("usage: see the doc comment of examples/growth_probe.rs"))
    };
    let mut c = Client::connect(&a(1));
    let times = match a(0).as_str() {
        "get" => {
            let (key, path) = (a(2), a(3));
            repeat(n(4), WARM_UP, || {
                c.expect_200("GET", &path, &key, None);
            })
        }
        "last-page" => {
            let (key, conversation) = (a(2), a(3));
            let path = last_page_path(&mut c, &key, &conversation);
            repeat(n(4), WARM_UP, || {
                let body = c.expect_200("GET", &path, &key, None);
                check_last_page(&body);
            })
        }
        "chat" => {
            let (key, conversation) = (a(2), a(3));
            let body = format!(
                r#"{{"conversation_id":"{}","message":"How does an index keep this query fast as the table grows?"}}"#,
                conversation
            );
            repeat(n(4), WARM_UP, || {
                c.expect_200("POST", "/api/chat", &key, Some(&body));
            })
        }
        "post" => {
            let (key, path, body) = (a(2), a(3), a(4));
            repeat(n(5), WARM_UP, || {
                c.expect_200("POST", &path, &key, Some(&body));
            })
        }
        "cold-keys" => {
            let keys: Vec<String> = std::fs::read_to_string(a(2))
                .unwrap_or_else(|e| fail(&format!("{}: {}", a(2), e)))
                .lines()
                .map(str::to_string)
                .collect();
            let (want, first) = (n(3), n(4));
            if keys.len() < first + want {
                fail(&format!(
                    "{} keys in {}, {} needed",
                    keys.len(),
                    a(2),
                    first + want
                ));
            }
            let mut next = keys[first..first + want].iter();
            repeat(want, 0, || {
                let key = next.next().expect("one key per request");
                c.expect_200("GET", "/api/projects?limit=1", key, None);
            })
        }
        _ => fail("usage: see the doc comment of examples/growth_probe.rs"),
    };
    let mut us: Vec<u128> = times.iter().map(Duration::as_micros).collect();
    us.sort_unstable();
    println!(
        "p50_us={} p99_us={} n={}",
        percentile(&us, 0.50),
        percentile(&us, 0.99),
        us.len()
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("growth_probe: {}", msg);
    std::process::exit(1);
}

/// Runs `f` `warm` times, then `n` times timed.
fn repeat(n: usize, warm: usize, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..warm {
        f();
    }
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect()
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// The path of the conversation's last 50 messages: counts them (pages of
/// 200), then asks for all but the last 50 to get the cursor before them.
fn last_page_path(c: &mut Client, key: &str, conversation: &str) -> String {
    const LAST: usize = 50;
    let base = format!("/api/conversations/{}/messages", conversation);
    let page = |c: &mut Client, query: &str| -> serde_json::Value {
        let body = c.expect_200("GET", &format!("{}?{}", base, query), key, None);
        serde_json::from_slice(&body).unwrap_or_else(|e| fail(&e.to_string()))
    };
    let (mut total, mut cursor) = (0usize, String::new());
    loop {
        let p = page(c, &format!("limit=200&cursor={}", cursor));
        total += p["items"].as_array().map_or(0, Vec::len);
        match p["next_cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    if total < LAST || total - LAST > 200 {
        fail(&format!(
            "the conversation has {} messages; 50 to 250 needed",
            total
        ));
    }
    if total == LAST {
        return format!("{}?limit={}", base, LAST);
    }
    let before = page(c, &format!("limit={}", total - LAST));
    let cursor = before["next_cursor"]
        .as_str()
        .unwrap_or_else(|| fail("no cursor before the last page"));
    format!("{}?limit={}&cursor={}", base, LAST, cursor)
}

fn check_last_page(body: &[u8]) {
    let p: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|e| fail(&e.to_string()));
    let n = p["items"].as_array().map_or(0, Vec::len);
    if n != 50 || !p["next_cursor"].is_null() {
        fail(&format!(
            "not the last 50 messages: {} items, next_cursor {}",
            n, p["next_cursor"]
        ));
    }
}

/// One keep-alive HTTP/1.1 connection (answers with Content-Length only,
/// as portcullis sends every non-streamed answer).
struct Client {
    addr: String,
    conn: Option<BufReader<TcpStream>>,
}

impl Client {
    fn connect(addr: &str) -> Client {
        Client {
            addr: addr.to_string(),
            conn: None,
        }
    }

    fn stream(&mut self) -> &mut BufReader<TcpStream> {
        if self.conn.is_none() {
            let s = TcpStream::connect(&self.addr)
                .unwrap_or_else(|e| fail(&format!("{}: {}", self.addr, e)));
            s.set_nodelay(true).ok();
            s.set_read_timeout(Some(TIMEOUT)).ok();
            self.conn = Some(BufReader::new(s));
        }
        self.conn.as_mut().expect("connected above")
    }

    /// Sends one request and returns the answer's body; fails unless 200.
    fn expect_200(&mut self, method: &str, path: &str, key: &str, body: Option<&str>) -> Vec<u8> {
        let mut req = format!(
            "{} {} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n",
            method, path, key
        );
        if let Some(b) = body {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body.unwrap_or(""));
        let r = self.stream();
        r.get_mut()
            .write_all(req.as_bytes())
            .unwrap_or_else(|e| fail(&e.to_string()));
        let (status, len, close) = read_head(r);
        let mut out = vec![0u8; len];
        r.read_exact(&mut out)
            .unwrap_or_else(|e| fail(&e.to_string()));
        if close {
            self.conn = None;
        }
        if status != 200 {
            fail(&format!(
                "{} {} answered {}: {}",
                method,
                path,
                status,
                String::from_utf8_lossy(&out)
            ));
        }
        out
    }
}

/// Reads a response head: (status, Content-Length, whether it closes).
fn read_head(r: &mut BufReader<TcpStream>) -> (u16, usize, bool) {
    let mut line = String::new();
    let mut read = |line: &mut String| {
        line.clear();
        match r.read_line(line) {
            Ok(0) => fail("the server closed the connection"),
            Ok(_) => {}
            Err(e) => fail(&e.to_string()),
        }
    };
    read(&mut line);
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fail(&format!("bad status line {:?}", line)));
    let (mut len, mut close) = (None, false);
    loop {
        read(&mut line);
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().ok();
            } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
                close = true;
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                fail("a chunked answer (the probe reads Content-Length only)");
            }
        }
    }
    (
        status,
        len.unwrap_or_else(|| fail("no Content-Length")),
        close,
    )
}
