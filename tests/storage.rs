//! Storage under load and faults: concurrent writers and readers never get
//! a 500, a database locked by another process and an exhausted pool answer
//! 503 `server_busy` quickly, readiness reports the database and the
//! upstream, a database from a newer version is refused at start; and the
//! one boundary where storage errors become contract errors.
//! (Resources over HTTP: tests/resources.rs; API keys: tests/api_keys.rs.)

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis::db::StoreError;
use portcullis::error::ApiError;
use serde_json::json;
use support::{assert_error, Opts, Server};

/// `impl From<StoreError> for ApiError` (src/error.rs) is the only place a
/// storage outcome becomes a contract error; each row is the answer a
/// client gets.
#[test]
fn store_errors_map_to_the_contract_in_one_place() {
    let busy = ApiError::ServerBusy { retry_after_s: 1 };
    let table = [
        (StoreError::NotFound, ApiError::NotFound),
        // An unknown id, referenced or in the path, is 404 (docs/contract.md "Errors"; issue 11).
        (StoreError::UnknownProject, ApiError::NotFound),
        (
            StoreError::invalid("limit", "must be a whole number from 1 to 200"),
            ApiError::validation("limit", "must be a whole number from 1 to 200"),
        ),
        (
            StoreError::InvalidCursor,
            ApiError::validation("cursor", "is not a cursor from this list"),
        ),
        (StoreError::PoolExhausted, busy.clone()),
        (StoreError::Busy, busy.clone()),
        (StoreError::DiskFull, busy.clone()),
        (StoreError::Unavailable, busy.clone()),
        (
            StoreError::internal("database: boom"),
            ApiError::internal("database: boom"),
        ),
    ];
    for (store, api) in table {
        assert_eq!(ApiError::from(store.clone()), api, "{:?}", store);
    }
    assert_eq!(busy.status(), 503);
    assert_eq!(busy.headers(), vec![("Retry-After", "1".to_string())]);
    // SQLite's own failures, through both conversions.
    let sqlite = |code| {
        ApiError::from(StoreError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(code),
            None,
        )))
    };
    assert_eq!(sqlite(rusqlite::ffi::SQLITE_BUSY), busy);
    assert_eq!(sqlite(rusqlite::ffi::SQLITE_LOCKED), busy);
    assert_eq!(sqlite(rusqlite::ffi::SQLITE_FULL), busy);
    let other = ApiError::from(StoreError::from(rusqlite::Error::InvalidQuery));
    assert_eq!(other.status(), 500);
    assert!(other.detail().unwrap().contains("database"));
}

#[test]
fn concurrent_writers_and_readers_never_get_a_500() {
    for opts in [
        Opts::new().no_auth(),
        // A tiny pool and short waits: refusals are 503, never 500.
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_DATABASE_POOL_SIZE", "1")
            .env("PORTCULLIS_DATABASE_CHECKOUT_TIMEOUT_MS", "5")
            .env("PORTCULLIS_DATABASE_BUSY_TIMEOUT_MS", "5"),
    ] {
        let s = Arc::new(Server::start(opts));
        let pid = s
            .json("POST", "/api/projects", None, &json!({"name": "base"}))
            .json()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let counts: Arc<[AtomicUsize; 6]> = Arc::new(Default::default());
        let threads: Vec<_> = (0..12)
            .map(|t| {
                let (s, pid, counts) = (s.clone(), pid.clone(), counts.clone());
                std::thread::spawn(move || {
                    for i in 0..25 {
                        let r = match (t + i) % 5 {
                            0 => s.json(
                                "POST",
                                "/api/projects",
                                None,
                                &json!({"name": format!("t{}-{}", t, i)}),
                            ),
                            1 => s.json(
                                "POST",
                                "/api/conversations",
                                None,
                                &json!({"project_id": pid}),
                            ),
                            2 => s.get("/api/conversations?limit=20"),
                            3 => s.json(
                                "PATCH",
                                &format!("/api/projects/{}", pid),
                                None,
                                &json!({"description": format!("{}", i)}),
                            ),
                            _ => s.get(&format!("/api/conversations?project_id={}", pid)),
                        };
                        let slot = match r.status {
                            200 | 201 | 204 => 0,
                            503 => {
                                assert_eq!(r.code(), "server_busy");
                                assert_eq!(r.header("Retry-After"), Some("1"));
                                1
                            }
                            500 => 5,
                            _ => 4,
                        };
                        assert_ne!(slot, 5, "500: {}", r.text());
                        assert_ne!(slot, 4, "unexpected {}: {}", r.status, r.text());
                        counts[slot].fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let ok = counts[0].load(Ordering::Relaxed);
        let busy = counts[1].load(Ordering::Relaxed);
        assert_eq!(ok + busy, 12 * 25);
        assert!(ok > 0);
        eprintln!("concurrency: {} ok, {} server_busy", ok, busy);
        assert!(!s.log_text().contains("\"status\":500"));
    }
}

#[test]
fn a_database_locked_by_another_process_gives_503_not_500() {
    let s = Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_DATABASE_BUSY_TIMEOUT_MS", "100"),
    );
    let other = rusqlite::Connection::open(s.dir.join("portcullis.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let r = s.json("POST", "/api/projects", None, &json!({"name": "x"}));
    assert_error(&r, 503, "server_busy");
    assert_eq!(r.header("Retry-After"), Some("1"));
    // Readers are not blocked by a writer in WAL mode.
    assert_eq!(s.get("/api/projects").status, 200);
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(
        s.json("POST", "/api/projects", None, &json!({"name": "x"}))
            .status,
        201
    );
}

#[test]
fn a_blocked_writer_makes_other_writes_answer_503_quickly_and_reads_go_on() {
    // The process's one writer is blocked on an outside lock (another
    // process's transaction) for up to the busy timeout (10 s); the next
    // write may wait only 50 ms for its turn. Reads use the pool, not the
    // writer, so they are not held up at all.
    let s = Arc::new(Server::start(
        Opts::new()
            .no_auth()
            .env("PORTCULLIS_DATABASE_POOL_SIZE", "1")
            .env("PORTCULLIS_DATABASE_CHECKOUT_TIMEOUT_MS", "50")
            .env("PORTCULLIS_DATABASE_BUSY_TIMEOUT_MS", "10000"),
    ));
    let other = rusqlite::Connection::open(s.dir.join("portcullis.db")).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let s2 = s.clone();
    let blocked =
        std::thread::spawn(move || s2.json("POST", "/api/projects", None, &json!({"name": "x"})));
    // The blocked write holds the writer until released (its request gave
    // its seat back: waiting for the writer is I/O).
    let writing = || {
        s.get("/metrics").text().lines().any(|l| {
            l.strip_prefix("portcullis_db_writes_in_flight ")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some_and(|n| n >= 1)
        })
    };
    assert!(support::wait_until(Duration::from_secs(5), writing));
    // Another write is refused at once.
    let t = Instant::now();
    let r = s.json("POST", "/api/projects", None, &json!({"name": "y"}));
    let took = t.elapsed();
    assert_error(&r, 503, "server_busy");
    assert!(took < Duration::from_millis(1000), "answered in {:?}", took);
    // Reads and readiness go on meanwhile.
    assert_eq!(s.get("/api/projects").status, 200);
    assert_eq!(s.get("/health/ready").status, 200);
    other.execute_batch("COMMIT").unwrap();
    assert_eq!(blocked.join().unwrap().status, 201);
}

#[test]
fn readiness_reports_database_and_upstream() {
    // An upstream that is down is reported (status "fail" when no upstream
    // is ok) but does not make readiness 503.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let s = Server::start(Opts::new().env(
        "PORTCULLIS_UPSTREAM_BASE_URL",
        &format!("http://{}/v1", closed),
    ));
    let r = s.get("/health/ready");
    assert_eq!(
        r.status,
        200,
        "only the database makes it 503: {}",
        r.text()
    );
    let v = r.json();
    assert_eq!(v["status"], "fail", "no upstream is ok: {}", v);
    assert_eq!(
        v["checks"]["upstreams"]["default"]["status"], "fail",
        "{}",
        v
    );
    assert_eq!(v["checks"]["database"]["status"], "ok");
    assert!(v["checks"]["database"]["latency_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(v["checks"]["upstream"]["status"], "fail", "{}", v);
    assert_eq!(v["checks"]["upstream"]["reason"], "unreachable");

    // An upstream that answers `GET /models` with our key is ok; one that
    // refuses the key is reported `unauthorized` (every chat would fail).
    let live = support::fake_upstream::FakeUpstream::start(support::fake_upstream::Mode::Normal);
    let s = Server::start(Opts::new().env("PORTCULLIS_UPSTREAM_BASE_URL", &live.base_url()));
    let v = s.get("/health/ready").json();
    assert_eq!(v["checks"]["upstream"]["status"], "ok", "{}", v);
    let probe = &live.requests()[0];
    assert_eq!(
        (probe.method.as_str(), probe.path.as_str()),
        ("GET", "/v1/models")
    );
    let refusing =
        support::fake_upstream::FakeUpstream::start(support::fake_upstream::Mode::Error {
            status: 401,
            body: r#"{"error":{"message":"Incorrect API key provided"}}"#.into(),
        });
    let s = Server::start(Opts::new().env("PORTCULLIS_UPSTREAM_BASE_URL", &refusing.base_url()));
    let r = s.get("/health/ready");
    assert_eq!(
        r.status,
        200,
        "the upstream never fails readiness: {}",
        r.text()
    );
    let v = r.json();
    assert_eq!(v["checks"]["upstream"]["status"], "fail", "{}", v);
    assert_eq!(v["checks"]["upstream"]["reason"], "unauthorized", "{}", v);
}

#[test]
fn a_database_from_a_newer_version_is_refused_at_start() {
    let dir = support::TempDir::new("newer");
    let s = Server::start(Opts::new().data_dir(dir.path()));
    drop(s);
    let c = rusqlite::Connection::open(dir.path().join("portcullis.db")).unwrap();
    c.pragma_update(None, "user_version", 999).unwrap();
    drop(c);
    let err = Server::try_start(Opts::new().data_dir(dir.path()))
        .err()
        .expect("refused");
    assert!(err.contains("newer than this portcullis knows"), "{}", err);
}
