//! Fills a data dir's usage tables with many rows, through the server's
//! own write path (`Db::record_usage`: the rows, their labels and the day
//! sums, in batches as the recorder writes them), for
//! `scripts/usage_bench.sh`: a 30-day report over 1,000,000 rows.
//!
//!     cargo run --release --example usage_load -- DATA_DIR \
//!         [--rows 1000000] [--days 30] [--users 20] [--keys 40] [--models 5]
//!
//! Rows are spread evenly over the last `--days` days (up to now), users,
//! keys and models chosen by a fixed pseudo-random sequence; the users are
//! real users of the database (`bench-user-N`). Then it times the report a
//! plain SQL aggregate would be (one `GROUP BY` over the rows of the
//! window, what the day sums avoid), as the baseline for the benchmark.
//!
//! Prints one line of `name=value` fields: `rows`, `load_s`, `user_id`
//! (the first user), `naive_ms` (median of 5) and `naive_rows`.

use std::path::PathBuf;
use std::time::Instant;

use portcullis::config::Config;
use portcullis::db::usage::UsageRow;
use portcullis::db::users::Role;
use portcullis::db::Db;

fn arg(args: &[String], name: &str, default: u64) -> u64 {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{} needs a number", name))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .expect("usage: usage_load DATA_DIR [--rows N] ..."),
    );
    let rows = arg(&args, "--rows", 1_000_000);
    let days = arg(&args, "--days", 30) as i64;
    let users = arg(&args, "--users", 20);
    let keys = arg(&args, "--keys", 40);
    let models = arg(&args, "--models", 5);

    let mut cfg = Config::default();
    cfg.server.data_dir = dir;
    let db = Db::open(&cfg).expect("open the database");
    let user_ids: Vec<String> = (0..users)
        .map(|i| {
            db.ensure_user(&format!("bench-user-{}", i), Role::Member)
                .expect("create a user")
                .id
        })
        .collect();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let start_us = now_us - days * 86_400_000_000;
    let step = ((now_us - start_us) / rows as i64).max(1);
    let started = Instant::now();
    // A fixed xorshift sequence: the same rows every run.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut batch = Vec::with_capacity(20_000);
    for i in 0..rows {
        let r = next();
        batch.push(UsageRow {
            at_us: start_us + i as i64 * step,
            user_id: user_ids[(r % users) as usize].clone(),
            key_id: Some(format!("bench-key-{}", (r >> 8) % keys)),
            model: format!("bench-model-{}", (r >> 16) % models),
            upstream: "default".into(),
            route: "/v1/chat/completions",
            prompt_tokens: 50 + (r >> 24) % 2000,
            completion_tokens: 20 + (r >> 40) % 800,
            estimated: false,
            status: 200,
            latency_ms: 100 + (r >> 50) % 3000,
        });
        if batch.len() == batch.capacity() {
            db.record_usage(&batch).expect("write usage rows");
            batch.clear();
        }
    }
    db.record_usage(&batch).expect("write usage rows");
    let load_s = started.elapsed().as_secs_f64();

    // The baseline: the same report as one aggregate over the rows.
    let conn = db.sqlite().expect("SQLite").conn().expect("a connection");
    let mut times = Vec::new();
    let mut naive_rows = 0i64;
    for _ in 0..5 {
        let t = Instant::now();
        let mut stmt = conn
            .prepare(
                "SELECT at / 86400000000, count(*), sum(prompt_tokens), sum(completion_tokens) \
                 FROM usage WHERE at >= ?1 AND at < ?2 GROUP BY 1",
            )
            .unwrap();
        let groups: Vec<(i64, i64)> = stmt
            .query_map([start_us, now_us + 1], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        naive_rows = groups.iter().map(|g| g.1).sum();
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "rows={} load_s={:.1} user_id={} naive_ms={:.1} naive_rows={}",
        rows, load_s, user_ids[0], times[2], naive_rows
    );
}
