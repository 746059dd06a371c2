//! The shared limiter's cost: `N` checks of one bucket through
//! `SharedLimits::take_request` (one `INSERT ... ON CONFLICT ... RETURNING`
//! on PostgreSQL), one after the other on one pooled connection, as a
//! request pays it. Prints `checks=N p50_us=.. p99_us=.. allowed=..`.
//!
//! Usage: limiter_check POSTGRES_URL [N]   (scripts/pg_bench.sh runs it)

use std::time::Instant;

use portcullis::config::Config;
use portcullis::db::Db;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let url = args.first().expect("usage: limiter_check POSTGRES_URL [N]");
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let dir = std::env::temp_dir().join(format!("limiter-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let mut cfg = Config::default();
    cfg.server.data_dir = dir.clone();
    cfg.database.url = url.clone();
    cfg.database.pool_size = 1;
    let db = Db::open(&cfg).expect("open the database");
    let shared = db.shared().expect("a shared store (PostgreSQL)");
    let mut took = Vec::with_capacity(n);
    let mut allowed = 0;
    for i in 0..n {
        // Mostly one hot bucket, as a busy client; every tenth a new one.
        let key = if i % 10 == 0 {
            format!("bench:addr:{}", i)
        } else {
            "bench:key:hot".into()
        };
        let t = Instant::now();
        let r = shared
            .take_request(&key, 1_000_000, 60_000_000)
            .expect("a check");
        took.push(t.elapsed().as_micros() as u64);
        allowed += usize::from(r.allowed);
    }
    took.sort_unstable();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    println!(
        "checks={} p50_us={} p99_us={} allowed={}",
        n,
        at(0.50),
        at(0.99),
        allowed
    );
    let _ = std::fs::remove_dir_all(&dir);
}
