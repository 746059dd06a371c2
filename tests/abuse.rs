//! Abuse tests (issue 6): slowloris from one loopback address while another
//! address is served, connection floods, header bombs under load. Bounded in
//! count and time; loopback only.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::io::FromRawFd;
use std::time::{Duration, Instant};

use support::*;

/// Raises this process's descriptor limit (children inherit it).
fn raise_nofile(want: u64) {
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < want {
            r.rlim_cur = want.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Connects from a chosen loopback source address.
fn connect_from(local: [u8; 4], addr: SocketAddr) -> Option<TcpStream> {
    let SocketAddr::V4(remote) = addr else {
        return None;
    };
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from_be_bytes(local).to_be();
        let mut ra: libc::sockaddr_in = std::mem::zeroed();
        ra.sin_family = libc::AF_INET as libc::sa_family_t;
        ra.sin_addr.s_addr = u32::from(*remote.ip()).to_be();
        ra.sin_port = remote.port().to_be();
        if libc::bind(fd, &sa as *const _ as *const libc::sockaddr, len) != 0
            || libc::connect(fd, &ra as *const _ as *const libc::sockaddr, len) != 0
        {
            libc::close(fd);
            return None;
        }
        Some(TcpStream::from_raw_fd(fd))
    }
}

fn health_from(local: [u8; 4], addr: SocketAddr) -> Option<(u16, Duration)> {
    let t = Instant::now();
    let mut s = connect_from(local, addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let status = std::str::from_utf8(buf.get(9..12)?).ok()?.parse().ok()?;
    Some((status, t.elapsed()))
}

#[test]
fn slowloris_from_one_address_does_not_starve_another() {
    raise_nofile(8192);
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SERVER_MAX_CONNECTIONS", "4096")
            .env("PORTCULLIS_SERVER_MAX_CONNECTIONS_PER_IP", "2048"),
    );
    // 1,000 connections from 127.0.0.2, each stuck half-way through its head.
    let mut slow = Vec::new();
    for _ in 0..1000 {
        if let Some(mut c) = connect_from([127, 0, 0, 2], s.addr) {
            let _ = c.write_all(b"GET /health HTTP/1.1\r\nX-Slow: a");
            slow.push(c);
        }
    }
    assert!(
        slow.len() >= 950,
        "only {} slow connections opened",
        slow.len()
    );
    assert!(
        wait_until(Duration::from_secs(20), || threads(s.pid()) >= 900),
        "server did not take the connections"
    );
    // A client on 127.0.0.1 is still served, promptly.
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let (status, took) = health_from([127, 0, 0, 1], s.addr).expect("health answered");
        assert_eq!(status, 200);
        worst = worst.max(took);
    }
    eprintln!(
        "slowloris: 1000 slow connections; worst /health {:?}; RSS {} KiB",
        worst,
        rss_kib(s.pid())
    );
    assert!(
        worst < Duration::from_secs(2),
        "health took {:?} under slowloris",
        worst
    );
    assert!(rss_kib(s.pid()) < 96 * 1024, "RSS {} KiB", rss_kib(s.pid()));
    drop(slow);
}

#[test]
fn connection_flood_is_capped_and_the_server_recovers() {
    raise_nofile(8192);
    let s = Server::start(Opts::new().no_auth()); // defaults: 128 per address
    let mut flood = Vec::new();
    for _ in 0..1500 {
        if let Some(c) = connect_from([127, 0, 0, 4], s.addr) {
            flood.push(c);
        }
    }
    // Excess connections are answered 503 and closed at accept: the thread
    // count stays near the per-address cap, not the flood size.
    assert!(wait_until(Duration::from_secs(20), || {
        let (status, _) = health_from([127, 0, 0, 1], s.addr).unwrap_or((0, Duration::ZERO));
        status == 200
    }));
    let t = threads(s.pid());
    assert!(t < 128 + 64, "{} threads for a 1500-connection flood", t);
    drop(flood);
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn header_bombs_in_parallel_keep_memory_bounded() {
    let s = Server::start(Opts::new().no_auth());
    let before = rss_kib(s.pid());
    let bombers: Vec<_> = (0..8)
        .map(|_| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let chunk = vec![b'x'; 256 * 1024];
                let mut sent = 0usize;
                // Reconnect whenever the server cuts us; 32 MiB per bomber at most.
                while sent < 32 << 20 {
                    let mut c = connect(addr);
                    let _ = c.write_all(b"GET /health HTTP/1.1\r\nX-Bomb: ");
                    while let Ok(n) = c.write(&chunk) {
                        sent += n;
                        if sent >= 32 << 20 {
                            break;
                        }
                    }
                }
                sent
            })
        })
        .collect();
    let mut peak = before;
    let mut done = false;
    while !done {
        peak = peak.max(rss_kib(s.pid()));
        assert_eq!(s.get("/health").status, 200);
        done = bombers.iter().all(|b| b.is_finished());
    }
    let total: usize = bombers.into_iter().map(|b| b.join().unwrap()).sum();
    eprintln!(
        "header bombs: {} MiB sent, RSS {} -> peak {} KiB",
        total >> 20,
        before,
        peak
    );
    assert!(
        peak < before + 24 * 1024,
        "RSS grew from {} to {} KiB",
        before,
        peak
    );
}

#[test]
fn invalid_utf8_and_garbage_requests_get_clean_errors() {
    let s = Server::start(Opts::new().no_auth());
    // Invalid UTF-8 in a JSON body.
    let mut c = connect(s.addr);
    let body = b"{\"name\":\"\xff\xfe\"}";
    let head = format!(
        "POST /api/projects HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(body).unwrap();
    let r = read_response(&mut std::io::BufReader::new(c)).unwrap();
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.code(), "invalid_json");
    // Deeply nested JSON.
    let deep = format!("{}{}", "[".repeat(50_000), "]".repeat(50_000));
    let r = s.req(
        "POST",
        "/api/projects",
        &[
            ("Origin", "http://localhost:3000"),
            ("Content-Type", "application/json"),
        ],
        Some(&deep),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "invalid_json");
    // Garbage instead of HTTP, binary bytes in the request line, non-ASCII header.
    for garbage in [
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
        b"GET /\xff\xfe HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: \xc3\x28\r\n\r\n",
    ] {
        let mut c = connect(s.addr);
        let _ = c.write_all(garbage);
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        assert!(
            buf.is_empty() || buf.starts_with(b"HTTP/1.1 4"),
            "{:?}",
            String::from_utf8_lossy(&buf)
        );
    }
    assert_eq!(s.get("/health").status, 200);
}
