//! Load and abuse generator for `scripts/bench.sh` (loopback only; every
//! loop is bounded in count and time and stops by itself).
//!
//! Subcommands:
//!   upstream ADDR [stream_gap_ms]      a fast OpenAI-compatible upstream
//!       (keep-alive; non-streaming answers at once; streams send the head at
//!       once, then 5 tokens `stream_gap_ms` apart, the first after one gap
//!       as a model's prefill would).
//!   stream-latency URL KEY STREAMS ROUNDS UPSTREAM_ADDR
//!       runs the upstream in-process on UPSTREAM_ADDR (portcullis must be
//!       configured to use it) and measures, per stream, the time from the
//!       upstream writing the first token to the client reading it; prints
//!       p50/p99/max in microseconds. Same process, same clock.
//!   direct-latency STREAMS ROUNDS UPSTREAM_ADDR
//!       the same measurement with the client reading the upstream directly.
//!   hold-streams URL KEY N PID SECONDS UPSTREAM_ADDR
//!       opens N streams that stay open (upstream sends one token then
//!       waits), prints the RSS of PID and /health latency while they are open.
//!   abuse URL PID SLOW SECONDS
//!       opens SLOW connections from 127.0.0.2 that trickle a header byte
//!       every 2 s, plus one header bomb (endless header bytes), and
//!       measures /health from 127.0.0.1 meanwhile; prints latency and RSS.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_RUN: Duration = Duration::from_secs(300);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| args.get(i).cloned().unwrap_or_default();
    let n = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    match a(0).as_str() {
        "upstream" => {
            let stamps = Arc::new(Mutex::new(Vec::new()));
            serve_upstream(&a(1), n(2, 20), stamps, false);
        }
        "stream-latency" => stream_latency(
            &a(1),
            &a(2),
            n(3, 20) as usize,
            n(4, 5) as usize,
            &a(5),
            false,
        ),
        "direct-latency" => {
            stream_latency("", "", n(1, 20) as usize, n(2, 5) as usize, &a(3), true)
        }
        "hold-streams" => hold_streams(
            &a(1),
            &a(2),
            n(3, 200) as usize,
            n(4, 0) as i32,
            n(5, 5),
            &a(6),
        ),
        "abuse" => abuse(&a(1), n(2, 0) as i32, n(3, 1000) as usize, n(4, 10)),
        _ => {
            eprintln!("usage: see the doc comment of examples/loadgen.rs");
            std::process::exit(2);
        }
    }
}

// ---- the upstream -----------------------------------------------------------

/// Time each stream's first token was written, by stream tag.
type Stamps = Arc<Mutex<Vec<(String, Instant)>>>;

const COMPLETION: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello from the bench upstream."},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}"#;

fn serve_upstream(addr: &str, gap_ms: u64, stamps: Stamps, hold: bool) {
    let listener = TcpListener::bind(addr).expect("bind upstream");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let stamps = stamps.clone();
        std::thread::spawn(move || {
            let _ = upstream_conn(conn, gap_ms, &stamps, hold);
        });
    }
}

fn upstream_conn(conn: TcpStream, gap_ms: u64, stamps: &Stamps, hold: bool) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut len = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; len];
        reader.read_exact(&mut body)?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if path.ends_with("/models") {
            let b = r#"{"object":"list","data":[{"id":"bench","object":"model","created":1,"owned_by":"bench"}]}"#;
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                b.len(),
                b
            )?;
            continue;
        }
        if !body.contains("\"stream\":true") {
            write!(
                w,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                COMPLETION.len(),
                COMPLETION
            )?;
            w.flush()?;
            continue;
        }
        // Streaming: tag = the user's message content (the client's index).
        let tag = body
            .split("\"content\":\"")
            .last()
            .and_then(|s| s.split('"').next())
            .unwrap_or("")
            .to_string();
        write!(w, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")?;
        w.flush()?;
        // Like a model's prefill: the head goes out at once, the first
        // token a little later (so the figure is relay latency, not the
        // stream's set-up racing the first token).
        std::thread::sleep(Duration::from_millis(gap_ms));
        for i in 0..5 {
            let chunk = format!(
                "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{} \"}},\"finish_reason\":null}}]}}\n\n",
                i
            );
            w.write_all(chunk.as_bytes())?;
            w.flush()?;
            if i == 0 {
                stamps.lock().unwrap().push((tag.clone(), Instant::now()));
                if hold {
                    // Stay open until the client leaves (bounded).
                    let mut b = [0u8; 1];
                    let _ = reader.get_ref().set_read_timeout(Some(MAX_RUN));
                    let _ = reader.read(&mut b);
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(gap_ms));
        }
        w.write_all(b"data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n")?;
        w.flush()?;
        return Ok(());
    }
}

// ---- HTTP client bits ---------------------------------------------------------

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string()
}

fn post_stream(
    addr: &str,
    path: &str,
    key: &str,
    content: &str,
) -> std::io::Result<BufReader<TcpStream>> {
    let s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = format!(
        "{{\"model\":\"bench\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"{}\"}}]}}",
        content
    );
    let auth = if key.is_empty() {
        String::new()
    } else {
        format!("Authorization: Bearer {}\r\n", key)
    };
    let req = format!(
        "POST {} HTTP/1.1\r\nHost: localhost\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
        path,
        auth,
        body.len(),
        body
    );
    let mut w = s.try_clone()?;
    w.write_all(req.as_bytes())?;
    Ok(BufReader::new(s))
}

/// Reads until the first `data:` line that carries a token.
fn read_first_token(r: &mut BufReader<TcpStream>) -> std::io::Result<Instant> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("stream ended before a token"));
        }
        if line.starts_with("data:") && line.contains("tok0") {
            return Ok(Instant::now());
        }
    }
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn stream_latency(
    url: &str,
    key: &str,
    streams: usize,
    rounds: usize,
    upstream: &str,
    direct: bool,
) {
    let stamps: Stamps = Arc::new(Mutex::new(Vec::new()));
    {
        let (u, s) = (upstream.to_string(), stamps.clone());
        std::thread::spawn(move || serve_upstream(&u, 20, s, false));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (target, path) = if direct {
        (upstream.to_string(), "/v1/chat/completions")
    } else {
        (host_port(url), "/v1/chat/completions")
    };
    let mut deltas = Vec::new();
    let mut failures = 0;
    for round in 0..rounds {
        let handles: Vec<_> = (0..streams)
            .map(|i| {
                let (t, k) = (target.clone(), key.to_string());
                let tag = format!("r{}s{}", round, i);
                std::thread::spawn(move || {
                    let mut r = post_stream(&t, path, &k, &tag)?;
                    let got = read_first_token(&mut r)?;
                    // Drain the rest so the stream completes normally.
                    let mut rest = Vec::new();
                    let _ = r.read_to_end(&mut rest);
                    Ok::<_, std::io::Error>((tag, got))
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(Ok((tag, got))) => {
                    let sent = stamps
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|(t, _)| *t == tag)
                        .map(|(_, i)| *i);
                    match sent {
                        Some(sent) => deltas.push(got.saturating_duration_since(sent).as_micros()),
                        None => failures += 1,
                    }
                }
                _ => failures += 1,
            }
        }
    }
    deltas.sort_unstable();
    println!(
        "streams={} rounds={} samples={} failures={} first_token_us_p50={} p99={} max={}",
        streams,
        rounds,
        deltas.len(),
        failures,
        percentile(&deltas, 0.5),
        percentile(&deltas, 0.99),
        deltas.last().copied().unwrap_or(0)
    );
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{}/status", pid))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One GET /health on a new connection from `local` (None: any).
fn health_once(addr: &str, local: Option<&str>) -> Option<Duration> {
    let t = Instant::now();
    let mut s = match local {
        Some(l) => connect_from(l, addr.parse().ok()?)?,
        None => TcpStream::connect(addr).ok()?,
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    buf.starts_with(b"HTTP/1.1 200").then(|| t.elapsed())
}

fn health_probe(addr: &str, seconds: u64) -> (Vec<u128>, usize) {
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut lat = Vec::new();
    let mut failed = 0;
    while Instant::now() < end {
        match health_once(addr, Some("127.0.0.1")) {
            Some(d) => lat.push(d.as_micros()),
            None => failed += 1,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    lat.sort_unstable();
    (lat, failed)
}

fn hold_streams(url: &str, key: &str, n: usize, pid: i32, seconds: u64, upstream: &str) {
    let stamps: Stamps = Arc::new(Mutex::new(Vec::new()));
    {
        let (u, s) = (upstream.to_string(), stamps.clone());
        std::thread::spawn(move || serve_upstream(&u, 20, s, true));
    }
    std::thread::sleep(Duration::from_millis(200));
    let idle = rss_kib(pid);
    let target = host_port(url);
    let mut open = Vec::new();
    for i in 0..n {
        match post_stream(&target, "/v1/chat/completions", key, &format!("hold{}", i)) {
            Ok(mut r) => {
                if read_first_token(&mut r).is_ok() {
                    open.push(r);
                }
            }
            Err(_) => break,
        }
    }
    let opened = open.len();
    let (lat, failed) = health_probe(&target, seconds);
    let rss = rss_kib(pid);
    println!(
        "streams_open={} rss_idle_kib={} rss_with_streams_kib={} health_p50_us={} p99_us={} max_us={} health_failures={}",
        opened,
        idle,
        rss,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0),
        failed
    );
    drop(open);
}

/// Connects from a chosen local loopback address (so the server sees a
/// different client than the health probe).
fn connect_from(local: &str, addr: SocketAddr) -> Option<TcpStream> {
    use std::os::unix::io::FromRawFd;
    let local: std::net::Ipv4Addr = local.parse().ok()?;
    let SocketAddr::V4(remote) = addr else {
        return None;
    };
    // SAFETY: a fresh socket, bound and connected with valid sockaddr_in
    // values; ownership passes to TcpStream (or it is closed on error).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(local).to_be();
        sa.sin_port = 0;
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0 {
            libc::close(fd);
            return None;
        }
        let mut ra: libc::sockaddr_in = std::mem::zeroed();
        ra.sin_family = libc::AF_INET as libc::sa_family_t;
        ra.sin_addr.s_addr = u32::from(*remote.ip()).to_be();
        ra.sin_port = remote.port().to_be();
        if libc::connect(fd, &ra as *const _ as *const libc::sockaddr, len) != 0 {
            libc::close(fd);
            return None;
        }
        Some(TcpStream::from_raw_fd(fd))
    }
}

fn abuse(url: &str, pid: i32, slow: usize, seconds: u64) {
    let target = host_port(url);
    let addr: SocketAddr = target.parse().expect("URL must be http://IP:PORT");
    let stop = Arc::new(AtomicBool::new(false));
    let rss_before = rss_kib(pid);
    // Slow connections from 127.0.0.2: half a request, then a byte every 2 s.
    let mut conns = Vec::new();
    for _ in 0..slow {
        if let Some(mut c) = connect_from("127.0.0.2", addr) {
            let _ = c.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ");
            conns.push(c);
        }
    }
    let trickler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let end = Instant::now() + MAX_RUN;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                for c in conns.iter_mut() {
                    let _ = c.write(b"a");
                }
                std::thread::sleep(Duration::from_secs(2));
            }
            conns.len()
        })
    };
    // Header bombs from 127.0.0.3: endless header bytes, reconnecting when cut.
    let bomber = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0u64;
            let end = Instant::now() + MAX_RUN;
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                let Some(mut c) = connect_from("127.0.0.3", addr) else {
                    break;
                };
                let _ = c.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = c.write_all(b"GET /health HTTP/1.1\r\nX-Bomb: ");
                while !stop.load(Ordering::Relaxed) {
                    match c.write(&chunk) {
                        Ok(n) => sent += n as u64,
                        Err(_) => break,
                    }
                }
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let (lat, failed) = health_probe(&target, seconds);
    let rss_during = rss_kib(pid);
    stop.store(true, Ordering::Relaxed);
    let slow_held = trickler.join().unwrap_or(0);
    let bomb_bytes = bomber.join().unwrap_or(0);
    println!(
        "slow_connections_attempted={} slow_connected={} bomb_bytes_sent={} health_p50_us={} p99_us={} max_us={} health_failures={} rss_before_kib={} rss_during_kib={}",
        slow,
        slow_held,
        bomb_bytes,
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(0),
        failed,
        rss_before,
        rss_during
    );
}
