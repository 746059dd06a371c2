//! Test harness: starts the real `portcullis` binary on 127.0.0.1:0 with a
//! temp data dir (parallel-safe, no fixed ports), and talks raw HTTP/1.1 to
//! it over real sockets. No sleeps as synchronisation: `wait_until` polls a
//! condition with a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod fake_upstream;
pub mod pg;
pub mod relay;
pub mod sse;

/// Polls `cond` every few ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A fresh temp directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        let p =
            std::env::temp_dir().join(format!("portcullis-{}-{}-{:x}", tag, std::process::id(), n));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("PORTCULLIS_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Options for a test server.
#[derive(Clone, Default)]
pub struct Opts {
    /// Extra `PORTCULLIS_*` (or other) environment variables.
    pub env: Vec<(String, String)>,
    /// Contents of a config file passed with --config (optional).
    pub config: Option<String>,
    /// Reuse this data dir (restart tests).
    pub data_dir: Option<PathBuf>,
}

impl Opts {
    pub fn new() -> Opts {
        Opts::default()
    }
    pub fn env(mut self, k: &str, v: &str) -> Opts {
        self.env.push((k.to_string(), v.to_string()));
        self
    }
    /// Auth mode none: most tests of other behaviour need no key.
    pub fn no_auth(self) -> Opts {
        self.env("PORTCULLIS_AUTH_MODE", "none")
    }
    pub fn config(mut self, text: &str) -> Opts {
        self.config = Some(text.to_string());
        self
    }
    pub fn data_dir(mut self, p: &Path) -> Opts {
        self.data_dir = Some(p.to_path_buf());
        self
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portcullis")
}

/// A running portcullis process.
pub struct Server {
    pub child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: PathBuf,
    _tmp: Option<TempDir>,
}

impl Server {
    pub fn start(opts: Opts) -> Server {
        Self::try_start(opts).expect("server did not start")
    }

    pub fn try_start(opts: Opts) -> Result<Server, String> {
        let (tmp, dir) = match &opts.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = TempDir::new("srv");
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let addr_file = dir.join("portcullis.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(bin());
        cmd.arg("serve");
        if let Some(text) = &opts.config {
            let p = dir.join("test-config.ini");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&p, text).unwrap();
            cmd.arg("--config").arg(p);
        }
        // Start from a clean environment of settings so the developer's
        // shell cannot leak into tests.
        for (k, _) in std::env::vars() {
            if k.starts_with("PORTCULLIS_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("PORTCULLIS_SERVER_BIND", "127.0.0.1:0")
            .env("PORTCULLIS_SERVER_DATA_DIR", &dir)
            .env("PORTCULLIS_LOGGING_FILE", dir.join("portcullis.log"))
            .env("PORTCULLIS_LOGGING_LEVEL", "debug")
            // Tests read the log right after a request: no buffering.
            .env("PORTCULLIS_LOGGING_FLUSH_INTERVAL_MS", "0")
            // Tests about other behaviour must not trip the rate limiter;
            // rate-limit tests set their own limits (later env wins).
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "100000")
            .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "100000")
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| e.to_string())?;
        // The file may be seen created but not yet written: wait for an address.
        let addr_written = || {
            std::fs::read_to_string(&addr_file)
                .is_ok_and(|t| t.trim().parse::<SocketAddr>().is_ok())
        };
        let ok = wait_until(Duration::from_secs(20), || {
            addr_written() || matches!(child.try_wait(), Ok(Some(_)))
        });
        if !ok || !addr_written() {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(format!("server failed to start: {}", err));
        }
        let text = std::fs::read_to_string(&addr_file).unwrap();
        let addr: SocketAddr = text
            .trim()
            .parse()
            .map_err(|e| format!("{:?}: {}", text, e))?;
        Ok(Server {
            child: Some(child),
            addr,
            dir,
            _tmp: tmp,
        })
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("portcullis.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Every log line parsed as JSON (panics on a non-JSON line).
    pub fn log_json(&self) -> Vec<serde_json::Value> {
        self.log_text()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("non-JSON log line {:?}: {}", l, e))
            })
            .collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: i32) {
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(libc::SIGTERM);
        self.wait_exit(timeout)
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let mut status = None;
        wait_until(timeout, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], None)
    }

    /// A GET with `Authorization: Bearer <key>`.
    pub fn get_as(&self, path: &str, key: &str) -> Resp {
        self.req(
            "GET",
            path,
            &[("Authorization", &format!("Bearer {}", key))],
            None,
        )
    }

    /// A request with `Host: localhost` (and the given headers and body).
    pub fn req(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        request(self.addr, method, path, headers, body.map(|b| b.as_bytes()))
    }

    /// A JSON request sent as a non-browser client (no Origin) with a key.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: &serde_json::Value,
    ) -> Resp {
        let auth = key.map(|k| format!("Bearer {}", k));
        let mut h: Vec<(&str, &str)> = vec![("Content-Type", "application/json")];
        if let Some(a) = &auth {
            h.push(("Authorization", a));
        } else {
            h.push(("Origin", "http://localhost:3000"));
        }
        let text = body.to_string();
        self.req(method, path, &h, Some(&text))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({}): {}", e, self.text()))
    }
    /// The contract's error code.
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// One request on a new connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Resp {
    let mut s = connect(addr);
    let mut head = format!("{} {} HTTP/1.1\r\n", method, path);
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    for (n, v) in headers {
        head.push_str(&format!("{}: {}\r\n", n, v));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    if let Some(b) = body {
        s.write_all(b).unwrap();
    }
    read_response(&mut BufReader::new(s)).expect("response")
}

/// Reads one response (Content-Length, chunked or close-delimited).
pub fn read_response<R: BufRead>(r: &mut R) -> std::io::Result<Resp> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {:?}", line)))?;
    let mut headers = Vec::new();
    loop {
        let mut l = String::new();
        r.read_line(&mut l)?;
        let l = l.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = get("content-length") {
        let len: usize = len.parse().unwrap_or(0);
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut l = String::new();
            r.read_line(&mut l)?;
            let n = usize::from_str_radix(l.trim(), 16).unwrap_or(0);
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                break;
            }
            let mut chunk = vec![0; n];
            r.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if status != 204 && status != 304 && status >= 200 {
        r.read_to_end(&mut body)?;
    }
    Ok(Resp {
        status,
        headers,
        body,
    })
}

/// Resident set size of a process in KiB (Linux /proc).
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Number of threads of a process.
pub fn threads(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("Threads:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Peak resident set size (high-water mark) of a process in KiB (Linux
/// /proc `VmHWM`).
pub fn hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid)).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

// Shared by the storage, key and resource tests (and open to all): contract
// error assertions, the CLI runner, the first API key.

/// Asserts a contract error: the status, the `error.code`, and a request id
/// in the body.
pub fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.code(), code, "{}", r.text());
    assert!(r.json()["error"]["request_id"].is_string(), "{}", r.text());
}

/// Whether `v` is one of the contract's times: RFC 3339 UTC with
/// milliseconds (`2026-11-23T15:29:03.123Z`).
pub fn is_time(v: &serde_json::Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 24 && s.ends_with('Z') && s.as_bytes()[19] == b'.')
}

/// Runs the `portcullis` binary with `args` in `dir`, which is also its
/// data dir, from a clean `PORTCULLIS_*` environment plus `env`. Returns
/// (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)], dir: &Path) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).current_dir(dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("PORTCULLIS_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("PORTCULLIS_SERVER_DATA_DIR", dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The API key a server wrote to `first_api_key` in its data dir at its
/// first start.
pub fn first_key(s: &Server) -> String {
    first_key_in(&s.dir)
}

/// As `first_key`, for a data dir (waits up to 5 s for the file).
pub fn first_key_in(dir: &Path) -> String {
    let file = dir.join("first_api_key");
    assert!(
        wait_until(Duration::from_secs(5), || file.exists()),
        "no {}",
        file.display()
    );
    std::fs::read_to_string(&file)
        .expect("first_api_key readable")
        .trim()
        .to_string()
}

/// A server in `api_key` mode (the default) and its first key.
pub fn keyed(opts: Opts) -> (Server, String) {
    let s = Server::start(opts);
    let key = first_key(&s);
    (s, key)
}
