//! Two instances on one PostgreSQL database, behind no proxy: what one
//! does, the other sees on its next request. A limit of 100 a minute lets
//! 100 through across both (not 200); a day's token budget is overspent by
//! at most one call's estimate whichever instance takes the calls; a key
//! revoked or a user disabled through one is refused by the other; a
//! conversation started on one continues on the other. And when PostgreSQL
//! goes away, a valid key gets 503 `server_busy`, never 401.
//!
//! The database is a real PostgreSQL server this test starts
//! (`support::pg`); outside CI the tests skip with a notice when it is not
//! installed.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::fake_upstream::{FakeUpstream, Mode};
use support::pg::PgServer;
use support::relay::UPSTREAM_KEY;
use support::sse::SseClient;
use support::{first_key, Opts, Resp, Server};

/// The options of an instance on `url`, relaying to `up`.
fn opts(url: &str, up: &FakeUpstream) -> Opts {
    Opts::new()
        .env("PORTCULLIS_DATABASE_URL", url)
        .env("PORTCULLIS_UPSTREAM_BASE_URL", &up.base_url())
        .env("PORTCULLIS_UPSTREAM_KEY", UPSTREAM_KEY)
}

/// Instances A and B on one fresh database, and A's first key (admin).
fn pair(
    pg: &PgServer,
    name: &str,
    up: &FakeUpstream,
    extra: &[(&str, &str)],
) -> (Server, Server, String) {
    let url = pg.create_database(name);
    let with = |mut o: Opts| {
        for (k, v) in extra {
            o = o.env(k, v);
        }
        o
    };
    let a = Server::start(with(opts(&url, up)));
    let key = first_key(&a);
    let b = Server::start(with(opts(&url, up)));
    assert!(
        !b.dir.join("first_api_key").exists(),
        "the second instance finds the first key in the shared database"
    );
    (a, b, key)
}

fn post(s: &Server, key: &str, path: &str, body: &Value) -> Resp {
    s.json("POST", path, Some(key), body)
}

/// A member and a key of theirs, made through `s`'s admin API.
fn member(s: &Server, admin: &str, name: &str) -> (String, String, String) {
    let u = post(s, admin, "/api/admin/users", &json!({"name": name}));
    assert_eq!(u.status, 201, "{}", u.text());
    let id = u.json()["id"].as_str().unwrap().to_string();
    let k = post(
        s,
        admin,
        "/api/admin/keys",
        &json!({"user_id": id, "name": "k"}),
    );
    assert_eq!(k.status, 201, "{}", k.text());
    let kj = k.json();
    (
        id,
        kj["id"].as_str().unwrap().to_string(),
        kj["key"].as_str().unwrap().to_string(),
    )
}

#[test]
fn a_limit_of_100_a_minute_lets_100_through_across_both() {
    let Some(pg) = PgServer::shared() else { return };
    let up = FakeUpstream::start(Mode::Normal);
    let (a, b, key) = pair(
        pg,
        "limit100",
        &up,
        &[("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "100")],
    );
    let started = Instant::now();
    let (mut ok, mut refused) = (0u64, [0u64; 2]);
    for i in 0..200 {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = s.get_as("/api/projects", &key);
        match r.status {
            200 => ok += 1,
            429 => {
                assert_eq!(r.code(), "rate_limited");
                assert!(r.header("Retry-After").is_some());
                assert_eq!(r.header("RateLimit-Policy"), Some("\"other\";q=100;w=60"));
                refused[i % 2] += 1;
            }
            other => panic!("status {}: {}", other, r.text()),
        }
    }
    // The bucket refills one token per 0.6 s while the loop runs.
    let refilled = (started.elapsed().as_secs_f64() / 0.6).ceil() as u64;
    eprintln!(
        "two instances, 200 requests: {} admitted, {:?} refused (A, B), {} refilled meanwhile",
        ok, refused, refilled
    );
    assert!(ok >= 100, "{} admitted", ok);
    assert!(
        ok <= 100 + refilled,
        "{} admitted: the limit did not hold across instances",
        ok
    );
    assert!(
        refused[0] > 0 && refused[1] > 0,
        "both instances refuse: {:?}",
        refused
    );
}

#[test]
fn a_key_revoked_or_a_user_disabled_on_one_is_refused_on_the_other() {
    let Some(pg) = PgServer::shared() else { return };
    let up = FakeUpstream::start(Mode::Normal);
    let (a, b, admin) = pair(pg, "revoke", &up, &[]);
    let (user, key_id, key) = member(&a, &admin, "ann");
    assert_eq!(b.get_as("/api/me", &key).status, 200);
    let auth = format!("Bearer {}", admin);
    let r = a.req(
        "DELETE",
        &format!("/api/admin/keys/{}", key_id),
        &[("Authorization", auth.as_str())],
        None,
    );
    assert!(r.status == 200 || r.status == 204, "{}", r.text());
    let r = b.get_as("/api/me", &key);
    assert_eq!(r.status, 401, "{}", r.text());

    let (_, _, key2) = {
        let k = post(
            &a,
            &admin,
            "/api/admin/keys",
            &json!({"user_id": user, "name": "k2"}),
        );
        assert_eq!(k.status, 201, "{}", k.text());
        let kj = k.json();
        (
            user.clone(),
            kj["id"].as_str().unwrap().to_string(),
            kj["key"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(b.get_as("/api/me", &key2).status, 200);
    let r = b.json(
        "PATCH",
        &format!("/api/admin/users/{}", user),
        Some(&admin),
        &json!({"disabled": true}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A disabled user's key is 403 `forbidden` (API.md), on either.
    let r = a.get_as("/api/me", &key2);
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.text()
    );
}

#[test]
fn a_conversation_started_on_one_continues_on_the_other() {
    let Some(pg) = PgServer::shared() else { return };
    let up = FakeUpstream::start(Mode::Normal);
    let (a, b, key) = pair(pg, "conversation", &up, &[]);
    let r = post(&a, &key, "/api/chat", &json!({"message": "first"}));
    assert_eq!(r.status, 200, "{}", r.text());
    let conversation = r.json()["conversation_id"].as_str().unwrap().to_string();
    let r = post(
        &b,
        &key,
        "/api/chat",
        &json!({"message": "second", "conversation_id": conversation}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // B sent A's turn upstream as history.
    let sent = up.requests().last().unwrap().json();
    let history: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(
        history.contains(&"first") && history.contains(&"second"),
        "{:?}",
        history
    );
    for s in [&a, &b] {
        let r = s.get_as(
            &format!("/api/conversations/{}/messages", conversation),
            &key,
        );
        assert_eq!(r.status, 200);
        let roles: Vec<String> = r.json()["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{}:{}",
                    m["role"].as_str().unwrap(),
                    m["status"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            roles,
            [
                "user:complete",
                "assistant:complete",
                "user:complete",
                "assistant:complete"
            ]
        );
    }
}

#[test]
fn a_day_budget_is_overspent_by_at_most_one_estimate_across_both() {
    const LIMIT: u64 = 600;
    let Some(pg) = PgServer::shared() else { return };
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_millis(5),
    });
    let (a, b, admin) = pair(
        pg,
        "budget",
        &up,
        &[
            ("PORTCULLIS_LIMITS_TOKENS_PER_DAY", "600"),
            ("PORTCULLIS_SERVER_MAX_STREAMS_PER_CLIENT", "64"),
            ("PORTCULLIS_SERVER_MAX_CONCURRENT_STREAMS", "64"),
        ],
    );
    let servers = Arc::new([a, b]);
    let body = json!({
        "messages": [{"role": "user", "content": "race"}],
        "stream": true,
        "max_tokens": 10,
    });
    let spent_today = move |s: &Server, admin: &str| -> u64 {
        let r = s.get_as("/api/me", admin);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["usage"]["today"]["tokens"].as_u64().unwrap()
    };
    let (ok, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let (servers, admin, body) = (servers.clone(), admin.clone(), body.clone());
            let (ok, refused) = (ok.clone(), refused.clone());
            std::thread::spawn(move || {
                let s = &servers[i % 2];
                for _ in 0..200 {
                    let mut c =
                        SseClient::open_as(s.addr, "/v1/chat/completions", Some(&admin), &body);
                    match c.status {
                        200 => {
                            c.all(Duration::from_secs(10));
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            if spent_today(s, &admin) >= LIMIT {
                                return;
                            }
                        }
                        other => panic!("status {}", other),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    // Each instance writes its queued rows before answering a report.
    for s in servers.iter() {
        assert_eq!(s.get_as("/api/admin/usage", &admin).status, 200);
    }
    let spent: u64 = pg
        .psql(
            "budget",
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0) FROM usage",
        )
        .parse()
        .unwrap();
    let rows: u64 = pg
        .psql("budget", "SELECT count(*) FROM usage")
        .parse()
        .unwrap();
    let estimate =
        portcullis::tokens::estimate_json(&up.requests().last().unwrap().body) as u64 + 10;
    let (ok, refused) = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    eprintln!(
        "20 clients on two instances: {} admitted, {} refused; spent {} of {} (estimate per call {})",
        ok, refused, spent, LIMIT, estimate
    );
    assert_eq!(rows, ok);
    assert!(spent >= LIMIT, "the budget was spent: {}", spent);
    assert!(
        spent <= LIMIT + estimate,
        "overspent by {} with an estimate of {}",
        spent - LIMIT,
        estimate
    );
    for s in servers.iter() {
        assert_eq!(
            spent_today(s, &admin),
            spent,
            "both instances read the one account"
        );
    }
}

#[test]
fn postgres_away_is_503_never_401_and_ready_says_so() {
    // A server of its own: this test stops it.
    let Some(pg) = PgServer::start() else { return };
    let up = FakeUpstream::start(Mode::Normal);
    let url = pg.create_database("away");
    let a = Server::start(
        opts(&url, &up)
            .env("PORTCULLIS_DATABASE_CHECKOUT_TIMEOUT_MS", "500")
            .env("PORTCULLIS_DATABASE_READY_TIMEOUT_S", "2"),
    );
    let key = first_key(&a);
    assert_eq!(a.get_as("/api/projects", &key).status, 200);
    let ready = a.get("/health/ready").json();
    assert_eq!(ready["checks"]["database"]["backend"], "postgresql");
    assert_eq!(ready["checks"]["database"]["limits"], "fail_closed");

    pg.stop();
    for path in ["/api/projects", "/api/me"] {
        let t = Instant::now();
        let r = a.get_as(path, &key);
        assert_eq!(r.status, 503, "{}: {}", path, r.text());
        assert_eq!(r.code(), "server_busy");
        assert!(r.header("Retry-After").is_some());
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "bounded: {:?}",
            t.elapsed()
        );
    }
    let r = a.get("/health/ready");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["checks"]["database"]["status"], "fail");

    pg.start_again();
    let r = a.get_as("/api/projects", &key);
    assert_eq!(r.status, 200, "the pool reconnects: {}", r.text());
    assert_eq!(
        a.get("/health/ready").json()["checks"]["database"]["status"],
        "ok"
    );
}
