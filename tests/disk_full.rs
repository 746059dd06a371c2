//! Fault tests (issue 6): the database's storage fills up. Writes must fail
//! with a clean contract error, reads keep working, acknowledged writes
//! survive, nothing is corrupted.
//! - A real full file system: a small tmpfs mounted for the test (needs
//!   root and mount rights; skipped with a notice otherwise). SQLite sees
//!   ENOSPC -> SQLITE_FULL -> 503 `server_busy`.
//! - A file-size limit (RLIMIT_FSIZE), which needs no privileges: SQLite
//!   sees EFBIG -> an I/O error -> 500 `internal` (logged with detail); the
//!   server ignores SIGXFSZ so the limit cannot kill it.

mod support;

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::*;

fn file_len(p: &std::path::Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

#[test]
fn file_size_limit_gives_clean_errors_and_loses_nothing() {
    let dir = TempDir::new("diskfull");
    // A first run creates the schema, the key and some rows.
    let mut first = Server::start(Opts::new().data_dir(dir.path()));
    let key = first_key_in(dir.path());
    let mut acked = Vec::new();
    for i in 0..5 {
        let r = first.json(
            "POST",
            "/api/projects",
            Some(&key),
            &json!({"name": format!("before {}", i)}),
        );
        assert_eq!(r.status, 201);
        acked.push(r.json()["id"].as_str().unwrap().to_string());
    }
    assert!(first.terminate(Duration::from_secs(15)).unwrap().success());
    let db = dir.path().join("portcullis.db");
    let limit = file_len(&db) + 48 * 1024;

    // Second run: no file may grow past `limit` bytes.
    let addr_file = dir.path().join("portcullis.addr");
    let _ = std::fs::remove_file(&addr_file);
    let mut cmd = Command::new(bin());
    cmd.arg("serve")
        .env("PORTCULLIS_SERVER_BIND", "127.0.0.1:0")
        .env("PORTCULLIS_SERVER_DATA_DIR", dir.path())
        .env("PORTCULLIS_LOGGING_FILE", dir.path().join("full.log"))
        .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "100000")
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    unsafe {
        cmd.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    assert!(wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&addr_file).is_ok_and(|t| t.ends_with('\n'))
    }));
    let addr: std::net::SocketAddr = std::fs::read_to_string(&addr_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let auth = format!("Bearer {}", key);
    let post = |name: &str| {
        let body = json!({"name": name, "description": "x".repeat(1500)}).to_string();
        request(
            addr,
            "POST",
            "/api/projects",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(body.as_bytes()),
        )
    };
    let mut refused = None;
    for i in 0..2000 {
        let r = post(&format!("during {}", i));
        if r.status == 201 {
            acked.push(r.json()["id"].as_str().unwrap().to_string());
        } else {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the file-size limit was never hit");
    assert_eq!(refused.status, 500, "{}", refused.text());
    assert_eq!(refused.code(), "internal");
    assert!(
        !refused.text().contains("I/O"),
        "no internals in the message"
    );
    // Still alive, reads still work, and writes keep failing cleanly.
    assert_eq!(request(addr, "GET", "/health", &[], None).status, 200);
    let list = request(
        addr,
        "GET",
        "/api/projects?limit=5",
        &[("Authorization", &auth)],
        None,
    );
    assert_eq!(list.status, 200, "{}", list.text());
    let again = post("again");
    assert!(
        again.status == 500 || again.status == 201,
        "{}",
        again.text()
    );
    if again.status == 201 {
        acked.push(again.json()["id"].as_str().unwrap().to_string());
    }
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let _ = child.wait();

    // Third run, space again: every acknowledged write is there, intact.
    let third = Server::start(Opts::new().data_dir(dir.path()));
    for id in &acked {
        let r = third.req(
            "GET",
            &format!("/api/projects/{}", id),
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(r.status, 200, "acknowledged project {} lost", id);
    }
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let r = third.json(
        "POST",
        "/api/projects",
        Some(&key),
        &json!({"name": "after"}),
    );
    assert_eq!(r.status, 201, "writes work again once there is space");
    eprintln!(
        "disk full: {} writes acknowledged, all present after restart",
        acked.len()
    );
}

/// Unmounts the test's tmpfs however the test ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn full_file_system_gives_503_and_loses_nothing() {
    let dir = TempDir::new("tmpfs");
    let mnt = dir.path().join("fs");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=600k", "tmpfs"])
        .arg(&mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP full_file_system_gives_503_and_loses_nothing: cannot mount a tmpfs here (needs root); the file-size-limit test covers the error path");
        return;
    }
    let _guard = Mount(mnt.clone());
    let s = Server::start(Opts::new().data_dir(&mnt));
    let key = first_key_in(&mnt);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..5000 {
        let r = s.json(
            "POST",
            "/api/projects",
            Some(&key),
            &json!({"name": format!("p{}", i), "description": "y".repeat(1900)}),
        );
        if r.status == 201 {
            acked.push(r.json()["id"].as_str().unwrap().to_string());
        } else {
            refused = Some(r);
            break;
        }
    }
    let refused = refused.expect("the file system never filled up");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.code(), "server_busy");
    assert!(refused.header("Retry-After").is_some());
    assert_eq!(s.get("/health").status, 200);
    let auth = format!("Bearer {}", key);
    assert_eq!(
        s.req(
            "GET",
            "/api/projects?limit=3",
            &[("Authorization", &auth)],
            None
        )
        .status,
        200
    );
    drop(s); // SIGKILL, as a crash would

    // Space again: everything acknowledged is there and the file is sound.
    assert!(Command::new("mount")
        .args(["-o", "remount,size=8m"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let again = Server::start(Opts::new().data_dir(&mnt));
    for id in &acked {
        let r = again.req(
            "GET",
            &format!("/api/projects/{}", id),
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(r.status, 200, "acknowledged project {} lost", id);
    }
    let conn = rusqlite::Connection::open(mnt.join("portcullis.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    assert_eq!(
        again
            .json(
                "POST",
                "/api/projects",
                Some(&key),
                &json!({"name": "after"})
            )
            .status,
        201
    );
    eprintln!(
        "full file system: {} writes acknowledged before ENOSPC, all present after restart",
        acked.len()
    );
    drop(again);
}
