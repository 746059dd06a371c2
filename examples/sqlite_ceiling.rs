//! The raw ceiling of this disk for portcullis' writes: a plain
//! single-threaded rusqlite loop inserting the same project row, one
//! durable commit per row (WAL, `synchronous=FULL`, as portcullis runs),
//! for a fixed time. `scripts/bench.sh` compares portcullis' creates/s at
//! 32 connections against it, in the same run.
//!
//!     cargo run --release --example sqlite_ceiling -- DIR SECONDS
//!
//! Prints `rows_per_s=N p99_us=N`.

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(args.first().map(String::as_str).unwrap_or("/tmp"));
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let path = dir.join("ceiling.db");
    let _ = std::fs::remove_file(&path);
    let conn = rusqlite::Connection::open(&path).expect("open");
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;
         CREATE TABLE projects (
             seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE,
             name TEXT NOT NULL, description TEXT,
             created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
         CREATE INDEX projects_by_created ON projects (created_at, seq);",
    )
    .expect("schema");
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut n: u64 = 0;
    while Instant::now() < end {
        let t = Instant::now();
        let tx = conn.unchecked_transaction().expect("begin");
        tx.execute(
            "INSERT INTO projects (id, name, description, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?4)",
            rusqlite::params![
                format!("{:024x}", n),
                "bench project",
                "created by scripts/bench.sh",
                n as i64
            ],
        )
        .expect("insert");
        tx.commit().expect("commit");
        lat.push(t.elapsed());
        n += 1;
    }
    lat.sort();
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)];
    println!(
        "rows_per_s={:.0} p99_us={}",
        n as f64 / secs as f64,
        p99.as_micros()
    );
    let _ = std::fs::remove_file(&path);
}
