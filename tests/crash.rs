//! Durability: SIGKILL the server while a client is writing, restart on the
//! same data dir, and check that every write acknowledged with 201 is
//! there and the database passes `PRAGMA integrity_check`.

mod support;

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use support::{Opts, Server};

/// POST /api/projects that reports failure instead of panicking (the
/// server dies under it).
fn try_create(addr: SocketAddr, key: &str, name: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let body = json!({ "name": name }).to_string();
    let head = format!(
        "POST /api/projects HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        key,
        body.len(),
        body
    );
    s.write_all(head.as_bytes()).ok()?;
    let r = support::read_response(&mut BufReader::new(s)).ok()?;
    if r.status != 201 {
        return None;
    }
    serde_json::from_slice::<serde_json::Value>(&r.body).ok()?["id"]
        .as_str()
        .map(str::to_string)
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    crash_run("full");
}

/// `synchronous = normal` trades power-loss durability for write speed; a
/// process crash must still lose nothing.
#[test]
fn acknowledged_writes_survive_sigkill_with_synchronous_normal() {
    crash_run("normal");
}

fn crash_run(synchronous: &str) {
    const MIN_ACKED: usize = 150;
    let mut first = Server::start(
        Opts::new()
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "1000000")
            .env("PORTCULLIS_DATABASE_SYNCHRONOUS", synchronous),
    );
    let dir = first.dir.clone();
    let key = support::first_key_in(&dir);

    let acked: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    // Four writers, so several writes are in flight when the kill lands.
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop, key, addr) = (acked.clone(), stop.clone(), key.clone(), first.addr);
            std::thread::spawn(move || {
                let mut attempts = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    attempts += 1;
                    if let Some(id) = try_create(addr, &key, &format!("w{}-{}", w, attempts)) {
                        acked.lock().unwrap().push(id);
                    }
                }
                attempts
            })
        })
        .collect();
    assert!(
        support::wait_until(Duration::from_secs(60), || acked.lock().unwrap().len()
            >= MIN_ACKED),
        "only {} writes acknowledged",
        acked.lock().unwrap().len()
    );
    // Mid-stream: the writer is still sending.
    first.kill();
    stop.store(true, Ordering::Relaxed);
    let attempts: usize = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= MIN_ACKED);

    let second = Server::start(
        Opts::new()
            .data_dir(&dir)
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "1000000"),
    );
    let mut missing = Vec::new();
    for id in &acked {
        let r = second.req(
            "GET",
            &format!("/api/projects/{}", id),
            &[("Authorization", &format!("Bearer {}", key))],
            None,
        );
        if r.status != 200 {
            missing.push(id.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        missing.len(),
        acked.len(),
        missing
    );

    let conn = rusqlite::Connection::open(dir.join("portcullis.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let fk: i64 = conn
        .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(fk, 0);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM projects", [], |r| r.get(0))
        .unwrap();
    // A write can commit and die before its 201 is sent: rows >= acked.
    assert!(rows as usize >= acked.len());
    eprintln!(
        "crash: {} attempts, {} acknowledged, {} rows after restart, 0 lost, integrity ok",
        attempts,
        acked.len(),
        rows
    );
    drop(second);
    drop(first);
}
