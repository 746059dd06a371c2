//! The server layer (issue 2): command line, configuration errors, routing
//! errors, panic isolation, the bounded queue, slow clients, head limits,
//! connection caps, descriptor exhaustion, graceful shutdown, JSON logs and
//! redaction. Everything goes through real sockets on 127.0.0.1:0.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use portcullis::app::App;
use portcullis::config::Config;
use portcullis::error::ApiError;
use portcullis::http::{Ctx, Reply};
use portcullis::metrics::ServerGauges;
use portcullis::router::Route;
use support::*;

#[test]
fn help_version_and_usage_errors() {
    let dir = TempDir::new("cli");
    let (code, out, _) = run_cli(&["--help"], &[], dir.path());
    assert_eq!(code, 0);
    assert!(out.contains("check-config") && out.contains("keys create"));
    let (code, out, _) = run_cli(&["--version"], &[], dir.path());
    assert_eq!(code, 0);
    assert!(out.starts_with("portcullis "));
    let (code, _, err) = run_cli(&["frobnicate"], &[], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("unknown command"), "{}", err);
    let (code, _, err) = run_cli(&["serve", "--bogus"], &[], dir.path());
    assert_eq!(code, 2);
    assert!(err.contains("--bogus"), "{}", err);
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = TempDir::new("cfgerr");
    let path = dir.path().join("bad.ini");
    std::fs::write(&path, "[server]\nworkers = 4\nworkerz = 5\n").unwrap();
    let p = path.to_str().unwrap();
    let (code, _, err) = run_cli(&["check-config", "--config", p], &[], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("bad.ini:3") && err.contains("workerz"),
        "{}",
        err
    );

    std::fs::write(&path, "[server]\nread_timeout_s = soon\n").unwrap();
    let (code, _, err) = run_cli(&["serve", "--config", p], &[], dir.path());
    assert_eq!(code, 1, "serve must refuse to start");
    assert!(
        err.contains("bad.ini:2") && err.contains("read_timeout_s"),
        "{}",
        err
    );

    let (code, _, err) = run_cli(
        &["check-config"],
        &[("PORTCULLIS_SERVER_WORKERS", "lots")],
        dir.path(),
    );
    assert_eq!(code, 1);
    assert!(err.contains("PORTCULLIS_SERVER_WORKERS"), "{}", err);

    let (code, out, _) = run_cli(
        &["check-config", "--config", p],
        &[("PORTCULLIS_SERVER_READ_TIMEOUT_S", "5")],
        dir.path(),
    );
    assert_eq!(code, 0, "the environment overrides the file's bad value");
    assert!(out.contains("configuration OK"), "{}", out);
}

#[test]
fn production_checklist_lists_every_failing_item() {
    let dir = TempDir::new("prod");
    let env = [
        ("PORTCULLIS_SERVER_DEBUG", "true"),
        ("PORTCULLIS_AUTH_MODE", "none"),
        ("PORTCULLIS_SECURITY_TRUSTED_PROXIES", "0.0.0.0/0"),
        ("PORTCULLIS_SERVER_BIND", "0.0.0.0:8000"),
        ("PORTCULLIS_CSRF_SECRET", "short"),
    ];
    let (code, _, err) = run_cli(&["check-config", "--production"], &env, dir.path());
    assert_eq!(code, 1);
    for item in ["debug", "mode", "trusted_proxies", "bind", "CSRF secret"] {
        assert!(err.contains(item), "missing {:?} in {}", item, err);
    }
    let good = [("PORTCULLIS_CSRF_SECRET", "0123456789abcdef0123456789abcdef")];
    let (code, out, err) = run_cli(&["check-config", "--production"], &good, dir.path());
    assert_eq!(code, 0, "{} {}", out, err);
}

#[test]
fn unknown_path_is_404_and_wrong_method_is_405_with_allow() {
    let s = Server::start(Opts::new().no_auth());
    let r = s.get("/no/such/path");
    assert_eq!(r.status, 404);
    assert_eq!(r.code(), "not_found");
    assert!(r.json()["error"]["request_id"].as_str().unwrap().len() >= 8);
    let r = s.req(
        "DELETE",
        "/health",
        &[("Origin", "http://localhost:3000")],
        None,
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.code(), "method_not_allowed");
    let allow = r.header("Allow").unwrap();
    assert!(allow.contains("GET") && allow.contains("HEAD"), "{}", allow);
    for r in [s.get("/health"), s.get("/nope")] {
        for h in [
            "X-Request-Id",
            "X-Content-Type-Options",
            "Content-Security-Policy",
            "Referrer-Policy",
            "Cache-Control",
        ] {
            assert!(r.header(h).is_some(), "{} missing on {}", h, r.status);
        }
        assert!(r
            .header("Server")
            .is_none_or(|v| !v.chars().any(|c| c.is_ascii_digit())));
    }
    let r = s.get("/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    assert_eq!(r.json()["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn env_override_changes_behaviour() {
    // The Host allowlist from the environment: only `api.example` is served.
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SECURITY_ALLOWED_HOSTS", "api.example"),
    );
    assert_eq!(s.get("/health").status, 421);
    assert_eq!(
        s.req("GET", "/health", &[("Host", "api.example:443")], None)
            .status,
        200
    );
}

// ---- library-level tests with a substitute dispatcher ----------------------

fn lib_app(tag: &str, workers: usize, queue: usize) -> (Arc<App>, TempDir) {
    let dir = TempDir::new(tag);
    let env: Vec<(String, String)> = vec![
        ("PORTCULLIS_SERVER_BIND".into(), "127.0.0.1:0".into()),
        (
            "PORTCULLIS_SERVER_DATA_DIR".into(),
            dir.path().display().to_string(),
        ),
        ("PORTCULLIS_SERVER_WORKERS".into(), workers.to_string()),
        ("PORTCULLIS_SERVER_QUEUE_CAPACITY".into(), queue.to_string()),
        ("PORTCULLIS_AUTH_MODE".into(), "none".into()),
    ];
    let cfg = Config::load_with_env(Some(&write_empty_config(&dir)), &env).unwrap();
    (Arc::new(App::new(cfg).unwrap()), dir)
}

fn write_empty_config(dir: &TempDir) -> std::path::PathBuf {
    let p = dir.path().join("empty.ini");
    std::fs::write(&p, "").unwrap();
    p
}

fn panicking_dispatch(app: &App, ctx: &mut Ctx, route: Route) -> Result<Reply, ApiError> {
    if ctx.query_param("panic").is_some() {
        panic!("deliberate test panic");
    }
    portcullis::routes::dispatch(app, ctx, route)
}

#[test]
fn panic_in_handler_answers_500_and_the_server_lives_on() {
    // One worker: if the panic killed it, nothing would answer afterwards.
    let (app, _dir) = lib_app("panic", 1, 8);
    let running = portcullis::server::start_with(app, panicking_dispatch).unwrap();
    for _ in 0..3 {
        let r = request(running.addr, "GET", "/health?panic=1", &[], None);
        assert_eq!(r.status, 500);
        assert_eq!(r.code(), "internal");
        assert!(
            !r.text().contains("deliberate"),
            "panic text must not reach the client"
        );
        assert!(r.header("X-Request-Id").is_some());
        let ok = request(running.addr, "GET", "/health", &[], None);
        assert_eq!(ok.status, 200);
    }
    assert!(running.shutdown(Duration::from_secs(5)));
}

/// A gate that blocks handlers until the test opens it.
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    entered: Mutex<usize>,
}

static GATE: Gate = Gate {
    open: Mutex::new(false),
    cv: Condvar::new(),
    entered: Mutex::new(0),
};

fn gated_dispatch(app: &App, ctx: &mut Ctx, route: Route) -> Result<Reply, ApiError> {
    if ctx.query_param("wait").is_some() {
        *GATE.entered.lock().unwrap() += 1;
        let mut open = GATE.open.lock().unwrap();
        while !*open {
            open = GATE.cv.wait(open).unwrap();
        }
    }
    portcullis::routes::dispatch(app, ctx, route)
}

fn open_gate() {
    *GATE.open.lock().unwrap() = true;
    GATE.cv.notify_all();
}

#[test]
fn full_queue_answers_503_at_once_then_graceful_shutdown_drains() {
    // 1 worker, queue of 1: request A occupies the worker, B waits in the
    // queue, C finds the queue full and must get 503 server_busy at once.
    let (app, _dir) = lib_app("queue", 1, 1);
    let running = portcullis::server::start_with(app, gated_dispatch).unwrap();
    let addr = running.addr;
    let a = std::thread::spawn(move || request(addr, "GET", "/health?wait=1", &[], None));
    assert!(wait_until(Duration::from_secs(10), || *GATE
        .entered
        .lock()
        .unwrap()
        >= 1));
    let b = std::thread::spawn(move || request(addr, "GET", "/health?wait=1", &[], None));
    let stats = running.stats();
    assert!(wait_until(Duration::from_secs(10), || stats.queue_depth() >= 1));

    let started = Instant::now();
    let c = request(addr, "GET", "/health", &[], None);
    assert_eq!(c.status, 503);
    assert_eq!(c.code(), "server_busy");
    assert_eq!(c.header("Retry-After"), Some("1"));
    assert!(c.header("X-Content-Type-Options").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "503 must not wait for a worker"
    );

    // Shutdown with requests in flight: the port closes at once, the
    // in-flight and queued requests still complete.
    let shutdown = std::thread::spawn(move || running.shutdown(Duration::from_secs(20)));
    assert!(
        wait_until(Duration::from_secs(5), || TcpStream::connect(addr).is_err()),
        "listener must close"
    );
    open_gate();
    assert_eq!(a.join().unwrap().status, 200);
    assert_eq!(b.join().unwrap().status, 200);
    assert!(shutdown.join().unwrap(), "drained within the grace period");
}

// ---- slow clients, head limits, connection caps ----------------------------

/// Reads until EOF or error; true when the server closed the connection.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn slow_client_is_cut_after_read_timeout() {
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SERVER_READ_TIMEOUT_S", "1"),
    );
    let mut c = connect(s.addr);
    c.write_all(b"GET /hea").unwrap();
    let t = Instant::now();
    assert!(
        closed_by_server(&mut c, Duration::from_secs(15)),
        "slow client must be disconnected"
    );
    assert!(t.elapsed() >= Duration::from_millis(900));
    // An idle keep-alive connection is cut the same way.
    let mut idle = connect(s.addr);
    assert!(closed_by_server(&mut idle, Duration::from_secs(15)));
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn oversized_request_line_and_head_are_refused_and_memory_stays_bounded() {
    let s = Server::start(Opts::new().no_auth());
    // Request line over 16 KiB -> 414.
    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(20_000)
    );
    let mut c = connect(s.addr);
    let _ = c.write_all(long.as_bytes());
    let r = read_response(&mut BufReader::new(c)).unwrap();
    assert_eq!(r.status, 414);

    // More than 100 headers -> 431.
    let mut many = String::from("GET /health HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-H{}: v\r\n", i));
    }
    many.push_str("\r\n");
    let mut c = connect(s.addr);
    c.write_all(many.as_bytes()).unwrap();
    assert_eq!(read_response(&mut BufReader::new(c)).unwrap().status, 431);

    // Header bomb: 64 MiB of header bytes without a line end. Stock
    // tiny_http buffered all of it (FINDINGS.md: +170 MB RSS); the patched
    // parser stops at the line limit and closes.
    let before = rss_kib(s.pid());
    let mut c = connect(s.addr);
    c.write_all(b"GET /health HTTP/1.1\r\nX-Bomb: ").unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..64 {
        match c.write_all(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(_) => break, // the server closed on us: good
        }
    }
    let after = rss_kib(s.pid());
    assert!(
        sent < 64 << 20 || after < before + 16 * 1024,
        "RSS grew from {} to {} KiB",
        before,
        after
    );
    assert!(
        after < before + 16 * 1024,
        "header bomb grew RSS from {} KiB to {} KiB",
        before,
        after
    );
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn connections_over_the_per_client_cap_get_503_and_close() {
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SERVER_MAX_CONNECTIONS_PER_IP", "4"),
    );
    let held: Vec<TcpStream> = (0..4).map(|_| connect(s.addr)).collect();
    // The accept thread counts connections as it accepts them.
    let mut refused = None;
    assert!(wait_until(Duration::from_secs(10), || {
        let mut c = connect(s.addr);
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = c.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if text.starts_with("HTTP/1.1 503") {
            refused = Some(text);
            true
        } else {
            false
        }
    }));
    assert!(refused.unwrap().contains("Retry-After"));
    drop(held);
    assert!(wait_until(Duration::from_secs(10), || s
        .get("/health")
        .status
        == 200));
}

#[test]
fn listener_survives_running_out_of_file_descriptors() {
    // FINDINGS.md: stock tiny_http's accept loop ends for good on EMFILE.
    let dir = TempDir::new("emfile");
    let addr_file = dir.path().join("portcullis.addr");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n 64 && exec '{}' serve", bin()))
        .env("PORTCULLIS_SERVER_BIND", "127.0.0.1:0")
        .env("PORTCULLIS_SERVER_DATA_DIR", dir.path())
        .env("PORTCULLIS_LOGGING_FILE", dir.path().join("log"))
        .env("PORTCULLIS_AUTH_MODE", "none")
        .current_dir(dir.path())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(20), || addr_file.exists()));
    let addr: std::net::SocketAddr = std::fs::read_to_string(&addr_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // 100 idle connections exhaust the 64 descriptors.
    let flood: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert!(flood.len() >= 64);
    drop(flood);
    let ok = wait_until(Duration::from_secs(20), || {
        std::panic::catch_unwind(|| request(addr, "GET", "/health", &[], None).status == 200)
            .unwrap_or(false)
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(ok, "the server must answer again once descriptors are free");
}

// ---- shutdown and logs -----------------------------------------------------

#[test]
fn sigterm_stops_gracefully_with_exit_code_zero() {
    let mut s = Server::start(Opts::new().no_auth());
    assert_eq!(s.get("/health").status, 200);
    let addr = s.addr;
    let status = s.terminate(Duration::from_secs(15)).expect("exited");
    assert!(status.success(), "{:?}", status);
    assert!(TcpStream::connect(addr).is_err());
    let logs = s.log_json();
    assert!(
        logs.iter()
            .any(|l| l["msg"] == "stopped" && l["drained"] == true),
        "{:?}",
        logs
    );
}

#[test]
fn logs_are_json_lines_with_request_id_and_never_hold_secrets() {
    let s = Server::start(Opts::new().no_auth().env("PORTCULLIS_SERVER_DEBUG", "true"));
    let r = s.req(
        "GET",
        "/health?token=QUERYSECRET&cursor=abc",
        &[
            ("Authorization", "Bearer pcs_HEADERSECRET"),
            ("X-Api-Key", "sk-OTHERSECRET"),
        ],
        None,
    );
    assert_eq!(r.status, 200);
    let rid = r.header("X-Request-Id").unwrap().to_string();
    // Log injection: a newline in the path must not forge a line.
    let _ = s.req("GET", "/x%0A{\"forged\":1}", &[], None);
    let _ = s.req(
        "GET",
        "/nope",
        &[("Authorization", "Bearer pcs_HEADERSECRET")],
        None,
    );
    assert!(wait_until(Duration::from_secs(5), || s
        .log_text()
        .contains(&rid)));
    let text = s.log_text();
    for secret in ["QUERYSECRET", "HEADERSECRET", "OTHERSECRET"] {
        assert!(!text.contains(secret), "{} leaked into the log", secret);
    }
    let lines = s.log_json();
    assert!(lines
        .iter()
        .all(|l| l["time"].is_string() && l["level"].is_string() && l["msg"].is_string()));
    assert!(!lines.iter().any(|l| l.get("forged").is_some()));
    let access = lines
        .iter()
        .find(|l| l["msg"] == "request" && l["request_id"] == rid.as_str())
        .unwrap();
    assert_eq!(access["method"], "GET");
    assert_eq!(access["path"], "/health?token&cursor");
    assert_eq!(access["status"], 200);
    assert!(access["bytes"].as_u64().unwrap() > 0);
    assert!(access["duration_ms"].is_number());
    assert_eq!(access["client"], "127.0.0.1");
}

#[test]
fn trusted_proxy_request_id_is_kept_and_bad_ones_replaced() {
    let s = Server::start(Opts::new().no_auth());
    let r = s.req(
        "GET",
        "/health",
        &[("X-Request-Id", "edge-123.abc_D")],
        None,
    );
    assert_eq!(r.header("X-Request-Id"), Some("edge-123.abc_D"));
    let r = s.req(
        "GET",
        "/health",
        &[("X-Request-Id", "bad id with spaces")],
        None,
    );
    assert_ne!(r.header("X-Request-Id"), Some("bad id with spaces"));
}

#[test]
fn metrics_for_loopback_only_in_prometheus_format() {
    let s = Server::start(Opts::new().no_auth());
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(s.get("/nope").status, 404);
    let m = s.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("Content-Type").unwrap().starts_with("text/plain"));
    let text = m.text();
    assert!(
        text.contains(
            "portcullis_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1"
        ),
        "{}",
        text
    );
    assert!(
        text.contains("route=\"none\",status=\"404\"} 1"),
        "{}",
        text
    );
    for name in [
        "portcullis_request_duration_seconds_bucket",
        "portcullis_rate_limited_total",
        "portcullis_active_streams",
        "portcullis_queue_depth",
        "portcullis_db_pool_waits_total",
        "portcullis_upstream_errors_total",
    ] {
        assert!(text.contains(name), "{} missing", name);
    }
    // A client behind the (trusted) loopback proxy is not local: 404.
    let r = s.req(
        "GET",
        "/metrics",
        &[("X-Forwarded-For", "203.0.113.9")],
        None,
    );
    assert_eq!(r.status, 404);
}

#[test]
fn trickled_head_is_cut_at_head_timeout_even_when_each_byte_is_on_time() {
    // Each byte arrives well within read_timeout_s; only the whole-head
    // deadline can end this (slowloris keeping one connection forever).
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SERVER_READ_TIMEOUT_S", "30")
            .env("PORTCULLIS_SERVER_HEAD_TIMEOUT_S", "1"),
    );
    let mut c = connect(s.addr);
    c.write_all(b"GET /health HTTP/1.1\r\nX-Slow: ").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let started = Instant::now();
    let mut got = Vec::new();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(20) {
        if c.write_all(b"a").is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 256];
        match c.read(&mut buf) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                closed = true;
                break;
            }
        }
    }
    assert!(
        closed,
        "a trickled head must be cut (got {:?})",
        String::from_utf8_lossy(&got)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

#[test]
fn stalled_small_bodies_never_hold_a_seat() {
    // One worker, long timeouts: if a stalled body reached the worker,
    // /health would wait for the body timeout (30 s).
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_SERVER_WORKERS", "1")
            .env("PORTCULLIS_SERVER_READ_TIMEOUT_S", "30")
            .env("PORTCULLIS_SECURITY_BODY_TIMEOUT_S", "30"),
    );
    let mut stalled = Vec::new();
    for _ in 0..4 {
        let mut c = connect(s.addr);
        c.write_all(
            b"POST /api/projects HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost:3000\r\nContent-Type: application/json\r\nContent-Length: 4000\r\n\r\n{\"name\":",
        )
        .unwrap();
        stalled.push(c);
    }
    let started = Instant::now();
    for _ in 0..5 {
        assert_eq!(s.get("/health").status, 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "health waited {:?} behind stalled bodies",
        started.elapsed()
    );
    drop(stalled);
}

static RELAY_GATE: Gate = Gate {
    open: Mutex::new(false),
    cv: Condvar::new(),
    entered: Mutex::new(0),
};

/// A handler whose (deferred) work waits for the gate, as a slow model would.
fn deferred_gated_dispatch(_app: &App, _ctx: &mut Ctx, _route: Route) -> Result<Reply, ApiError> {
    Ok(Reply::deferred(Box::new(|| {
        *RELAY_GATE.entered.lock().unwrap() += 1;
        let mut open = RELAY_GATE.open.lock().unwrap();
        while !*open {
            open = RELAY_GATE.cv.wait(open).unwrap();
        }
        Ok(Reply::bytes(
            200,
            "application/json",
            b"{\"late\":true}".to_vec(),
        ))
    })))
}

#[test]
fn shutdown_waits_for_deferred_relays_and_health_stays_free_meanwhile() {
    // One worker: the deferred work goes to the relay pool, so the worker
    // is free for /health while the relay waits.
    let (app, _dir) = lib_app("relay-drain", 1, 8);
    let running = portcullis::server::start_with(app, deferred_gated_dispatch).unwrap();
    let addr = running.addr;
    let pending = std::thread::spawn(move || request(addr, "GET", "/health", &[], None));
    assert!(wait_until(Duration::from_secs(10), || *RELAY_GATE
        .entered
        .lock()
        .unwrap()
        >= 1));
    // The worker is free although a relay is waiting.
    let started = Instant::now();
    let second = std::thread::spawn(move || request(addr, "GET", "/health", &[], None));
    assert!(wait_until(Duration::from_secs(10), || *RELAY_GATE
        .entered
        .lock()
        .unwrap()
        >= 2));
    assert!(started.elapsed() < Duration::from_secs(5));
    let shutdown = std::thread::spawn(move || running.shutdown(Duration::from_secs(20)));
    assert!(wait_until(Duration::from_secs(5), || TcpStream::connect(
        addr
    )
    .is_err()));
    assert!(
        !shutdown.is_finished(),
        "shutdown must wait for relays in flight"
    );
    *RELAY_GATE.open.lock().unwrap() = true;
    RELAY_GATE.cv.notify_all();
    for p in [pending, second] {
        let r = p.join().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "{\"late\":true}");
        assert!(r.header("X-Request-Id").is_some());
    }
    assert!(shutdown.join().unwrap(), "drained");
}
