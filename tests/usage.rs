//! Usage accounting, token limits and budgets against the real server and
//! a fake upstream on loopback: one row per upstream call on every route
//! (streaming or not, completed, cancelled, failed), the usage chunk asked
//! for and stripped unless the client asked, estimates when the upstream
//! sends no usage, per-minute / day / month / stream limits with the
//! contract's codes and exact Retry-After, admin overrides, reports and
//! the CLI, and 50 racing clients against a small budget.
//! Contract: API.md "Usage, token limits and budgets".

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis::tokens;
use serde_json::{json, Value};
use support::fake_upstream::{FakeUpstream, Mode};
use support::relay::UPSTREAM_KEY;
use support::sse::SseClient;
use support::{first_key, run_cli, wait_until, Opts, Resp, Server};

/// What the fake reports for every call (see `fake_upstream`).
const PROMPT: u64 = 7;
const COMPLETION: u64 = 5;
/// The server's default model (requests here name none).
const MODEL: &str = "gpt-oss:20b";

fn opts(up: &FakeUpstream) -> Opts {
    Opts::new()
        .env("PORTCULLIS_UPSTREAM_BASE_URL", &up.base_url())
        .env("PORTCULLIS_UPSTREAM_KEY", UPSTREAM_KEY)
        .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "100000")
        .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "100000")
}

fn start(o: Opts) -> (Server, String) {
    let s = Server::start(o);
    let key = first_key(&s);
    (s, key)
}

fn chat_body(text: &str) -> Value {
    json!({"messages": [{"role": "user", "content": text}]})
}

fn post(s: &Server, key: &str, path: &str, body: &Value) -> Resp {
    s.json("POST", path, Some(key), body)
}

fn get(s: &Server, key: &str, path: &str) -> Resp {
    s.get_as(path, key)
}

/// One stored usage row, names resolved.
#[derive(Debug, Clone)]
struct Row {
    user: String,
    key: Option<String>,
    model: String,
    upstream: String,
    route: String,
    prompt: u64,
    completion: u64,
    estimated: bool,
    status: u16,
}

/// Every usage row, oldest first. A report first writes what the
/// recorder holds, so the rows of every settled call are there.
fn rows(s: &Server, admin: &str) -> Vec<Row> {
    let r = get(s, admin, "/api/admin/usage");
    assert_eq!(r.status, 200, "{}", r.text());
    let conn = rusqlite::Connection::open(s.dir.join("portcullis.db")).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT lu.label, lk.label, lm.label, lup.label, lr.label, prompt_tokens, completion_tokens, estimated, status
             FROM usage u
             JOIN usage_labels lu ON lu.id = u.user_id
             LEFT JOIN usage_labels lk ON lk.id = u.key_id
             JOIN usage_labels lm ON lm.id = u.model
             JOIN usage_labels lup ON lup.id = u.upstream
             JOIN usage_labels lr ON lr.id = u.route
             ORDER BY at",
        )
        .unwrap();
    let out = stmt
        .query_map([], |r| {
            Ok(Row {
                user: r.get(0)?,
                key: r.get(1)?,
                model: r.get(2)?,
                upstream: r.get(3)?,
                route: r.get(4)?,
                prompt: r.get::<_, i64>(5)? as u64,
                completion: r.get::<_, i64>(6)? as u64,
                estimated: r.get(7)?,
                status: r.get::<_, i64>(8)? as u16,
            })
        })
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    out
}

/// Waits until there are `n` rows (a cancelled stream settles on its own
/// thread after the client left).
fn wait_rows(s: &Server, admin: &str, n: usize) -> Vec<Row> {
    let mut last = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = rows(s, admin);
            last.len() >= n
        }),
        "{} rows, wanted {}: {:?}",
        last.len(),
        n,
        last
    );
    last
}

fn me(s: &Server, key: &str) -> Value {
    let r = get(s, key, "/api/me");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

fn key_id(s: &Server, key: &str) -> String {
    let r = get(s, key, "/api/keys");
    r.json()["items"][0]["id"].as_str().unwrap().to_string()
}

/// A member and a key of theirs, made through the admin API.
fn member(s: &Server, admin: &str, name: &str) -> (String, String) {
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
    (id, k.json()["key"].as_str().unwrap().to_string())
}

fn set_limits(s: &Server, admin: &str, user: &str, limits: Value) -> Resp {
    s.json(
        "PATCH",
        &format!("/api/admin/users/{}", user),
        Some(admin),
        &json!({ "limits": limits }),
    )
}

fn retry_after(r: &Resp) -> u64 {
    r.header("Retry-After")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", r.headers))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Seconds from now to the next UTC midnight, and to the next month.
fn until_midnight_and_month_end() -> (u64, u64) {
    let now = now_ms();
    let day = now.div_euclid(86_400_000);
    let (y, m, _) = portcullis::time::civil_from_days(day);
    let next_month = match m {
        12 => portcullis::time::days_from_civil(y + 1, 1, 1),
        _ => portcullis::time::days_from_civil(y, m + 1, 1),
    };
    let secs = |d: i64| ((d * 86_400_000 - now) as u64).div_ceil(1000);
    (secs(day + 1), secs(next_month))
}

/// A streamed call read to its end: (status, data frames).
fn stream_all(s: &Server, key: &str, path: &str, body: &Value) -> (u16, Vec<String>) {
    let mut c = SseClient::open_as(s.addr, path, Some(key), body);
    if c.status != 200 {
        return (c.status, Vec::new());
    }
    let frames = c.all(Duration::from_secs(10));
    (c.status, frames.into_iter().map(|f| f.data).collect())
}

#[test]
fn every_route_records_one_row_with_the_upstreams_usage() {
    let up = FakeUpstream::start(Mode::Normal);
    let (s, admin) = start(opts(&up));
    let streamed = |path: &str, mut body: Value| {
        body["stream"] = json!(true);
        let (status, frames) = stream_all(&s, &admin, path, &body);
        assert_eq!(status, 200, "{}", path);
        assert!(!frames.is_empty(), "{}", path);
    };
    let whole = |path: &str, body: Value| {
        let r = post(&s, &admin, path, &body);
        assert_eq!(r.status, 200, "{}: {}", path, r.text());
    };
    whole("/api/chat", json!({"message": "hi"}));
    streamed("/api/chat", json!({"message": "hi"}));
    whole("/v1/chat/completions", chat_body("hi"));
    streamed("/v1/chat/completions", chat_body("hi"));
    streamed("/v1/completions", json!({"prompt": "hi"}));
    whole("/v1/embeddings", json!({"input": ["a", "b"]}));
    whole("/v1/responses", json!({"input": "hi"}));
    streamed("/v1/responses", json!({"input": "hi"}));

    let rows = wait_rows(&s, &admin, 8);
    assert_eq!(rows.len(), 8, "one row per call: {:?}", rows);
    let routes: Vec<&str> = rows.iter().map(|r| r.route.as_str()).collect();
    assert_eq!(
        routes,
        [
            "/api/chat",
            "/api/chat",
            "/v1/chat/completions",
            "/v1/chat/completions",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/responses",
            "/v1/responses"
        ]
    );
    let user = me(&s, &admin)["user"]["id"].as_str().unwrap().to_string();
    let key = key_id(&s, &admin);
    for r in &rows {
        let completion = if r.route == "/v1/embeddings" {
            0
        } else {
            COMPLETION
        };
        assert_eq!((r.prompt, r.completion), (PROMPT, completion), "{:?}", r);
        assert!(!r.estimated, "{:?}", r);
        assert_eq!(r.status, 200, "{:?}", r);
        assert_eq!(r.upstream, "default");
        assert_eq!(r.model, MODEL);
        assert_eq!(r.user, user);
        assert_eq!(r.key.as_deref(), Some(key.as_str()));
    }
    // The own report and the metrics agree with the rows.
    let report = get(&s, &admin, "/api/usage?group_by=model").json();
    assert_eq!(
        report["items"],
        json!([{"group": MODEL, "requests": 8, "prompt_tokens": 8 * PROMPT, "completion_tokens": 7 * COMPLETION}])
    );
    let metrics = s.get("/metrics").text();
    for (kind, n) in [("prompt", 8 * PROMPT), ("completion", 7 * COMPLETION)] {
        let line = format!(
            "portcullis_tokens_total{{model=\"{}\",kind=\"{}\"}} {}",
            MODEL, kind, n
        );
        assert!(metrics.contains(&line), "{} not in\n{}", line, metrics);
    }
    // A failed call is recorded too, with its status and nothing spent.
    up.set_mode(Mode::Error {
        status: 500,
        body: "{}".into(),
    });
    assert_eq!(
        post(&s, &admin, "/v1/chat/completions", &chat_body("x")).status,
        502
    );
    let last = wait_rows(&s, &admin, 9).pop().unwrap();
    assert_eq!(
        (last.status, last.prompt, last.completion),
        (502, 0, 0),
        "{:?}",
        last
    );
}

#[test]
fn the_usage_chunk_is_asked_for_and_reaches_only_clients_that_asked() {
    let up = FakeUpstream::start(Mode::Normal);
    let (s, admin) = start(opts(&up));
    let usage_chunks = |frames: &[String]| {
        frames
            .iter()
            .filter(|f| {
                serde_json::from_str::<Value>(f)
                    .is_ok_and(|v| v["choices"] == json!([]) && v["usage"].is_object())
            })
            .count()
    };
    let sent_options = || up.requests().last().unwrap().json()["stream_options"].clone();

    // Not asked: the upstream is asked, the client sees nothing of it, and
    // the body is the client's with only `stream_options` added in front.
    let body =
        r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"top_k":3}"#;
    let r = s.req(
        "POST",
        "/v1/chat/completions",
        &[
            ("Content-Type", "application/json"),
            ("Authorization", &format!("Bearer {}", admin)),
        ],
        Some(body),
    );
    assert_eq!(r.status, 200);
    let frames: Vec<String> = r
        .text()
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect();
    assert_eq!(usage_chunks(&frames), 0, "{:?}", frames);
    assert_eq!(frames.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(
        String::from_utf8(up.requests().last().unwrap().body.clone()).unwrap(),
        format!(
            "{{\"stream_options\":{{\"include_usage\":true}},{}",
            &body[1..]
        )
    );

    // Asked: relayed.
    let mut asked = chat_body("hi");
    asked["stream"] = json!(true);
    asked["stream_options"] = json!({"include_usage": true});
    let (_, frames) = stream_all(&s, &admin, "/v1/chat/completions", &asked);
    assert_eq!(usage_chunks(&frames), 1, "{:?}", frames);

    // Refused or left out among other options: set, the others kept.
    for options in [
        json!({"include_usage": false, "x": 1}),
        json!({"x": 1}),
        json!(null),
    ] {
        let mut b = chat_body("hi");
        b["stream"] = json!(true);
        b["stream_options"] = options.clone();
        let (_, frames) = stream_all(&s, &admin, "/v1/chat/completions", &b);
        assert_eq!(usage_chunks(&frames), 0, "{}: {:?}", options, frames);
        let sent = sent_options();
        assert_eq!(sent["include_usage"], json!(true), "{}", options);
        if options.is_object() {
            assert_eq!(sent["x"], json!(1), "{}", options);
        }
    }
    // LiteLLM's usage chunk holds one empty choice: dropped all the same.
    let mut b = chat_body("litellm-usage");
    b["stream"] = json!(true);
    let (_, frames) = stream_all(&s, &admin, "/v1/chat/completions", &b);
    assert!(
        frames.iter().all(|f| !f.contains("\"usage\"")),
        "{:?}",
        frames
    );
    // Text completions likewise.
    let (_, frames) = stream_all(
        &s,
        &admin,
        "/v1/completions",
        &json!({"prompt": "hi", "stream": true}),
    );
    assert_eq!(usage_chunks(&frames), 0, "{:?}", frames);
    assert_eq!(sent_options()["include_usage"], json!(true));

    // Every one of these calls was settled with the upstream's usage.
    let rows = wait_rows(&s, &admin, 7);
    assert!(
        rows.iter()
            .all(|r| !r.estimated && (r.prompt, r.completion) == (PROMPT, COMPLETION)),
        "{:?}",
        rows
    );
}

#[test]
fn without_usage_the_relayed_text_is_estimated_and_a_cancelled_stream_pays_what_it_got() {
    let up = FakeUpstream::start(Mode::ByMessage {
        rules: vec![(
            "slowly".into(),
            Mode::Slow {
                delay: Duration::from_millis(400),
            },
        )],
        default: Box::new(Mode::Normal),
    });
    let (s, admin) = start(opts(&up));
    let answer = tokens::estimate(&up.answer_text()) as u64;
    let forwarded_prompt = || tokens::estimate_json(&up.requests().last().unwrap().body) as u64;

    // No usage from the upstream: the prompt as sent and the answer's
    // text, estimated.
    assert_eq!(
        post(&s, &admin, "/v1/chat/completions", &chat_body("no-usage")).status,
        200
    );
    let r = wait_rows(&s, &admin, 1).pop().unwrap();
    assert_eq!(
        (r.estimated, r.prompt, r.completion),
        (true, forwarded_prompt(), answer),
        "{:?}",
        r
    );
    let mut b = chat_body("no-usage");
    b["stream"] = json!(true);
    assert_eq!(stream_all(&s, &admin, "/v1/chat/completions", &b).0, 200);
    let r = wait_rows(&s, &admin, 2).pop().unwrap();
    assert_eq!(
        (r.estimated, r.prompt, r.completion, r.status),
        (true, forwarded_prompt(), answer, 200),
        "{:?}",
        r
    );

    // A stream the client leaves after the first token: 499, the prompt
    // and the one token relayed.
    for (path, body) in [
        ("/v1/chat/completions", {
            let mut b = chat_body("slowly");
            b["stream"] = json!(true);
            b
        }),
        ("/api/chat", json!({"message": "slowly", "stream": true})),
    ] {
        let before = rows(&s, &admin).len();
        let mut c = SseClient::open_as(s.addr, path, Some(&admin), &body);
        assert_eq!(c.status, 200);
        let got_token = (0..10).any(|_| {
            c.next(Duration::from_secs(5))
                .is_some_and(|f| f.data.contains("Hello"))
        });
        assert!(got_token, "{}", path);
        drop(c);
        let r = wait_rows(&s, &admin, before + 1).pop().unwrap();
        assert_eq!(r.route, path);
        assert_eq!(r.status, 499, "{:?}", r);
        assert!(r.estimated, "{:?}", r);
        assert_eq!(r.prompt, forwarded_prompt(), "{:?}", r);
        assert_eq!(r.completion, tokens::estimate("Hello") as u64, "{:?}", r);
    }
}

#[test]
fn limits_refuse_with_the_contracts_codes_and_exact_retry_after() {
    let up = FakeUpstream::start(Mode::ByMessage {
        rules: vec![(
            "slowly".into(),
            Mode::Slow {
                delay: Duration::from_millis(300),
            },
        )],
        default: Box::new(Mode::Normal),
    });
    let (s, admin) = start(opts(&up).env("PORTCULLIS_LIMITS_TOKENS_PER_DAY", "30"));
    let call = |key: &str| post(&s, key, "/v1/chat/completions", &chat_body("hi"));

    // The day: admitted while anything is left (0, 12, 24 < 30), then 429
    // `budget_exceeded` until midnight UTC.
    for _ in 0..3 {
        assert_eq!(call(&admin).status, 200);
    }
    let r = call(&admin);
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "budget_exceeded"),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["error"]["type"], "insufficient_quota");
    let (midnight, month_end) = until_midnight_and_month_end();
    assert!(
        retry_after(&r).abs_diff(midnight) <= 2,
        "{} vs {}",
        retry_after(&r),
        midnight
    );
    let usage = &me(&s, &admin)["usage"];
    assert_eq!(usage["today"]["tokens"], 3 * (PROMPT + COMPLETION));
    assert_eq!(usage["limits"]["tokens_per_day"], 30);

    // A member's own month budget replaces the default; null goes back.
    let (id, member_key) = member(&s, &admin, "bea");
    let r = set_limits(
        &s,
        &admin,
        &id,
        json!({"tokens_per_day": 0, "tokens_per_month": 12}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["limits"]["tokens_per_month"], 12);
    assert_eq!(r.json()["limits"]["tokens_per_minute"], Value::Null);
    assert_eq!(call(&member_key).status, 200);
    let r = call(&member_key);
    assert_eq!((r.status, r.code().as_str()), (429, "budget_exceeded"));
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("month"));
    assert!(retry_after(&r).abs_diff(month_end) <= 2);
    assert_eq!(
        set_limits(&s, &admin, &id, json!({"tokens_per_month": null})).status,
        200
    );
    assert_eq!(call(&member_key).status, 200, "no day or month limit now");
    for bad in [
        json!({"tokens_per_week": 5}),
        json!({"tokens_per_day": -1}),
        json!({"tokens_per_day": 1.5}),
        json!("many"),
    ] {
        let r = set_limits(&s, &admin, &id, bad.clone());
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "validation_failed"),
            "{}",
            bad
        );
    }

    // The minute: a slow stream holds its estimate (prompt + max_tokens)
    // while it runs; the bucket (60/min: one token a second) is below zero
    // by that much less 60, and Retry-After says when it is above zero.
    let (id, key) = member(&s, &admin, "cy");
    set_limits(
        &s,
        &admin,
        &id,
        json!({"tokens_per_minute": 60, "tokens_per_day": 0}),
    );
    let mut b = chat_body("slowly");
    b["stream"] = json!(true);
    b["max_tokens"] = json!(200);
    let slow = SseClient::open_as(s.addr, "/v1/chat/completions", Some(&key), &b);
    assert_eq!(slow.status, 200);
    let estimate = tokens::estimate_json(&up.requests().last().unwrap().body) as u64 + 200;
    let r = call(&key);
    assert_eq!(
        (r.status, r.code().as_str()),
        (429, "rate_limited"),
        "{}",
        r.text()
    );
    let owed = estimate - 60;
    let ra = retry_after(&r);
    assert!(
        ra + 1 >= owed && ra <= owed + 1,
        "Retry-After {} for {} owed",
        ra,
        owed
    );
    drop(slow);

    // Concurrent streams.
    let (id, key) = member(&s, &admin, "dee");
    set_limits(
        &s,
        &admin,
        &id,
        json!({"max_streams": 1, "tokens_per_day": 0}),
    );
    let first = SseClient::open_as(s.addr, "/v1/chat/completions", Some(&key), &b);
    assert_eq!(first.status, 200);
    let second = SseClient::open_as(s.addr, "/v1/chat/completions", Some(&key), &b);
    assert_eq!(second.status, 429);
    assert_eq!(
        call(&key).status,
        200,
        "a non-streaming call is not a stream"
    );
    drop(first);
}

#[test]
fn fifty_racing_clients_overspend_by_at_most_one_estimate() {
    const LIMIT: u64 = 600;
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_millis(5),
    });
    let (s, admin) = start(
        opts(&up)
            .env("PORTCULLIS_LIMITS_TOKENS_PER_DAY", &LIMIT.to_string())
            .env("PORTCULLIS_SERVER_MAX_STREAMS_PER_CLIENT", "64")
            .env("PORTCULLIS_SERVER_MAX_CONCURRENT_STREAMS", "64")
            .env("PORTCULLIS_SERVER_MAX_CONNECTIONS_PER_IP", "256"),
    );
    let mut body = chat_body("race");
    body["stream"] = json!(true);
    body["max_tokens"] = json!(10);
    let s = Arc::new(s);
    let (ok, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let threads: Vec<_> = (0..50)
        .map(|_| {
            let (s, admin, body) = (s.clone(), admin.clone(), body.clone());
            let (ok, refused) = (ok.clone(), refused.clone());
            std::thread::spawn(move || {
                // Until the day is spent: a refusal while others'
                // reservations are in flight may be followed by refunds.
                for _ in 0..200 {
                    let (status, _) = stream_all(&s, &admin, "/v1/chat/completions", &body);
                    match status {
                        200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        429 => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            let spent =
                                me(&s, &admin)["usage"]["today"]["tokens"].as_u64().unwrap();
                            if spent >= LIMIT {
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
    let estimate = tokens::estimate_json(&up.requests().last().unwrap().body) as u64 + 10;
    let rows = rows(&s, &admin);
    let spent: u64 = rows.iter().map(|r| r.prompt + r.completion).sum();
    let (ok, refused) = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    eprintln!(
        "50 clients: {} admitted, {} refused; spent {} of {} (estimate per call {})",
        ok, refused, spent, LIMIT, estimate
    );
    assert_eq!(rows.len() as u64, ok);
    assert!(refused >= 50, "every client ends on a refusal");
    assert!(spent >= LIMIT, "the budget was spent: {}", spent);
    assert!(
        spent <= LIMIT + estimate,
        "overspent by {} with an estimate of {}",
        spent - LIMIT,
        estimate
    );
}

#[test]
fn reports_group_and_are_scoped_and_the_cli_prints_them() {
    let up = FakeUpstream::start(Mode::Normal);
    let (s, admin) = start(opts(&up));
    let (member_id, member_key) = member(&s, &admin, "eve");
    for _ in 0..2 {
        assert_eq!(
            post(&s, &admin, "/v1/chat/completions", &chat_body("a")).status,
            200
        );
    }
    let mut b = chat_body("b");
    b["model"] = json!("other-model");
    assert_eq!(
        post(&s, &member_key, "/v1/chat/completions", &b).status,
        200
    );
    let admin_id = me(&s, &admin)["user"]["id"].as_str().unwrap().to_string();
    let item = |group: &str, n: u64| json!({"group": group, "requests": n, "prompt_tokens": n * PROMPT, "completion_tokens": n * COMPLETION});

    // Own: only the member's call.
    let r = get(&s, &member_key, "/api/usage?group_by=model");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["items"], json!([item("other-model", 1)]));
    assert_eq!(r.json()["group_by"], "model");
    let today = portcullis::time::format_day(now_ms().div_euclid(86_400_000));
    assert_eq!(
        get(&s, &member_key, "/api/usage").json()["items"],
        json!([item(&today, 1)])
    );
    let r = get(&s, &member_key, "/api/usage?group_by=user");
    assert_eq!((r.status, r.code().as_str()), (400, "validation_failed"));
    assert_eq!(get(&s, &member_key, "/api/admin/usage").status, 403);

    // Everyone's, by user (most tokens first), key, and for one user.
    let r = get(&s, &admin, "/api/admin/usage?group_by=user").json();
    assert_eq!(r["items"], json!([item(&admin_id, 2), item(&member_id, 1)]));
    let keys = get(&s, &admin, "/api/admin/usage?group_by=key").json();
    assert_eq!(keys["items"][0]["group"], json!(key_id(&s, &admin)));
    let one = get(
        &s,
        &admin,
        &format!("/api/admin/usage?user_id={}", member_id),
    )
    .json();
    assert_eq!(one["items"], json!([item(&today, 1)]));
    assert_eq!(
        get(&s, &admin, "/api/admin/usage?user_id=nobody").status,
        404
    );

    // Windows: RFC 3339 with an offset or a date; empty ones; refusals.
    let tomorrow = portcullis::time::format_day(now_ms().div_euclid(86_400_000) + 1);
    let later = get(&s, &admin, &format!("/api/admin/usage?since={}", tomorrow));
    assert_eq!(later.status, 400, "since after the default until");
    let r = get(
        &s,
        &admin,
        &format!(
            "/api/admin/usage?since={}&until={}T00:00:00%2B00:00",
            today, tomorrow
        ),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["items"], json!([item(&today, 3)]));
    let empty = get(
        &s,
        &admin,
        &format!("/api/admin/usage?since={}&until={}", tomorrow, tomorrow),
    );
    assert_eq!(empty.json()["items"], json!([]));
    for bad in ["since=yesterday", "until=2026-13-01", "group_by=week"] {
        let r = get(&s, &admin, &format!("/api/admin/usage?{}", bad));
        assert_eq!(
            (r.status, r.code().as_str()),
            (400, "validation_failed"),
            "{}",
            bad
        );
    }

    // The CLI reads the same tables (users by name).
    let (code, out, err) = run_cli(&["usage", "--by", "user"], &[], &s.dir);
    assert_eq!(code, 0, "{}", err);
    assert!(out.contains("eve"), "{}", out);
    assert!(out.contains("admin"), "{}", out);
    let total = format!("{}", 3 * (PROMPT + COMPLETION));
    assert!(
        out.lines()
            .any(|l| l.starts_with("total") && l.trim_end().ends_with(&total)),
        "{}",
        out
    );
    let (code, out, _) = run_cli(&["usage", "--by", "model", "--user", "eve"], &[], &s.dir);
    assert_eq!(code, 0);
    assert!(
        out.contains("other-model") && !out.contains(MODEL),
        "{}",
        out
    );
    let (code, _, err) = run_cli(&["usage", "--since", "soon"], &[], &s.dir);
    assert_eq!(code, 2, "{}", err);
}

#[test]
fn a_call_that_fails_over_leaves_a_row_for_each_upstream_it_tried() {
    let up = FakeUpstream::start(Mode::Normal);
    let config = format!(
        "[upstream]\nbase_url = {}\nmodels = m\n\n[upstream.backup]\nbase_url = {}\nmodels = m\n",
        support::relay::refused_base_url(),
        up.base_url()
    );
    // `opts` would point the default upstream at the fake: not here.
    let (s, admin) = start(
        Opts::new()
            .config(&config)
            .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "100000")
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "100000"),
    );
    let mut body = chat_body("hi");
    body["model"] = json!("m");
    assert_eq!(post(&s, &admin, "/v1/chat/completions", &body).status, 200);
    body["stream"] = json!(true);
    assert_eq!(stream_all(&s, &admin, "/v1/chat/completions", &body).0, 200);
    let rows = wait_rows(&s, &admin, 4);
    let seen: Vec<(&str, u16, u64, u64)> = rows
        .iter()
        .map(|r| (r.upstream.as_str(), r.status, r.prompt, r.completion))
        .collect();
    assert_eq!(
        seen,
        [
            ("default", 502, 0, 0),
            ("backup", 200, PROMPT, COMPLETION),
            ("default", 502, 0, 0),
            ("backup", 200, PROMPT, COMPLETION)
        ]
    );
}

#[test]
fn queued_rows_are_written_at_shutdown() {
    let up = FakeUpstream::start(Mode::Normal);
    // A flush interval longer than the test: only the shutdown writes.
    let (mut s, admin) = start(opts(&up).env("PORTCULLIS_LIMITS_USAGE_FLUSH_INTERVAL_MS", "60000"));
    assert_eq!(
        post(&s, &admin, "/v1/chat/completions", &chat_body("hi")).status,
        200
    );
    let count = |s: &Server| -> i64 {
        rusqlite::Connection::open(s.dir.join("portcullis.db"))
            .unwrap()
            .query_row("SELECT count(*) FROM usage", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count(&s), 0, "still queued");
    assert!(s
        .terminate(Duration::from_secs(10))
        .is_some_and(|st| st.success()));
    assert_eq!(count(&s), 1);
}
