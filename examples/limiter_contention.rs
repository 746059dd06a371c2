//! Measures the rate limiter under lock contention: nanoseconds per `take`
//! with 1 and 8 threads, for the sharded limiter and for a single-lock one
//! (1 shard), with many clients (each thread its own addresses) and with
//! one hot client shared by every thread (the worst case: one shard, one
//! bucket). Not a test: it prints figures.
//!
//!     cargo run --release --example limiter_contention

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use portcullis::config::RateLimitConfig;
use portcullis::filters::rate_limit::{Class, Identity, Key, Limiter};

const TAKES_PER_THREAD: u32 = 400_000;
const CLIENTS_PER_THREAD: u32 = 1_000;

fn key(thread: u32, i: u32, hot: bool) -> Key {
    let n = if hot {
        1
    } else {
        thread * CLIENTS_PER_THREAD + i % CLIENTS_PER_THREAD
    };
    Key {
        id: Identity::Addr(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n))),
        class: Class::Other,
    }
}

/// Mean wall-clock nanoseconds per `take` across `threads` threads.
fn run(limiter: &Limiter, threads: u32, hot: bool) -> f64 {
    let barrier = Barrier::new(threads as usize + 1);
    let t0 = Instant::now();
    let elapsed = std::thread::scope(|s| {
        for t in 0..threads {
            let (limiter, barrier) = (limiter.clone(), &barrier);
            s.spawn(move || {
                barrier.wait();
                for i in 0..TAKES_PER_THREAD {
                    // Injected time, one microsecond per take, so buckets refill.
                    let now = t0 + Duration::from_micros(i as u64);
                    std::hint::black_box(limiter.take(key(t, i, hot), now));
                }
            });
        }
        barrier.wait();
        let start = Instant::now();
        // The scope joins every thread before returning.
        start
    })
    .elapsed();
    elapsed.as_nanos() as f64 / (threads * TAKES_PER_THREAD) as f64
}

fn main() {
    let cfg = RateLimitConfig {
        chat_per_minute: 10,
        other_per_minute: 1_000_000,
        sweep_interval: Duration::from_secs(300),
        max_tracked_clients: 100_000,
    };
    println!(
        "cores: {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!(
        "{:<24} {:>8} {:>14} {:>14}",
        "limiter", "threads", "many clients", "one hot client"
    );
    for (name, shards) in [("sharded (32 locks)", 32), ("single lock", 1)] {
        for threads in [1, 8] {
            let many = run(&Limiter::with_shards(&cfg, shards), threads, false);
            let hot = run(&Limiter::with_shards(&cfg, shards), threads, true);
            println!(
                "{:<24} {:>8} {:>11.0} ns {:>11.0} ns",
                name, threads, many, hot
            );
        }
    }
    println!("(ns = wall-clock time per take across all threads; lower is better)");
}
