//! The official OpenAI Python SDK against the real binary and the fake
//! upstream, through `scripts/openai_sdk_check.py`, with auth mode
//! `api_key` and the first key portcullis creates: every relayed route,
//! the SDK's stream helpers, errors as the SDK's exceptions. What only the
//! model server can see is checked here on the fake: the refusal reached
//! it once (no retry), vendor parameters arrived byte for byte, the stream
//! the client closed early was stopped upstream.
//!
//! Skipped (with a notice) where `python3 -c "import openai"` fails, except
//! under `CI=true`, where it fails: .ci/run installs `openai`.
//!
//! The official `openai` npm package (pinned in tests/e2e/package-lock.json)
//! runs its stream helpers through `tests/e2e/openai_sdk.mjs`. That test
//! skips with a notice where node or tests/e2e/node_modules/openai is
//! missing, except under `CI=true`, where it fails: .ci/run installs both
//! (`npm ci` in tests/e2e).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::fake_upstream::{FakeUpstream, Mode, Recorded};
use support::{Opts, Server};

/// The word that makes the fake refuse a request, and what it says.
const REFUSE_WORD: &str = "refuse";
const REFUSE_MESSAGE: &str = "the fake refuses this prompt (SDK check)";
/// The word of the responses stream the script closes after one delta.
const CANCEL_WORD: &str = "cancel";
/// A model id with a slash, as Hugging Face names them.
const SLASHED_MODEL: &str = "org/fake-model-7b";

fn sdk_version() -> Option<String> {
    Command::new("python3")
        .args(["-c", "import openai; print(openai.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).expect("hex"))
        .collect()
}

fn sent_with(up: &FakeUpstream, needle: &str) -> Vec<Recorded> {
    up.requests()
        .into_iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains(needle))
        .collect()
}

#[test]
fn official_openai_python_sdk_works_unmodified_on_every_route() {
    let Some(version) = sdk_version() else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!(
                "CI must run the OpenAI SDK check, but `import openai` fails (.ci/run installs it)"
            );
        }
        eprintln!("NOTICE: skipping the OpenAI SDK check: `python3 -c \"import openai\"` failed (pip install openai)");
        return;
    };
    eprintln!("openai (Python) {}", version);
    let refusal = serde_json::json!({"error": {
        "message": REFUSE_MESSAGE,
        "type": "invalid_request_error",
        "param": "messages",
        "code": null,
    }});
    let up = FakeUpstream::start(Mode::ByMessage {
        rules: vec![
            (
                REFUSE_WORD.to_string(),
                Mode::Error {
                    status: 400,
                    body: refusal.to_string(),
                },
            ),
            // Slow enough that the close reaches the fake long before the
            // last of the five tokens would.
            (
                CANCEL_WORD.to_string(),
                Mode::Slow {
                    delay: Duration::from_millis(1000),
                },
            ),
        ],
        default: Box::new(Mode::Slow {
            delay: Duration::from_millis(20),
        }),
    });
    up.set_models(&["fake-model", "other-model", SLASHED_MODEL]);
    let s = Server::start(
        Opts::new()
            .env("PORTCULLIS_UPSTREAM_BASE_URL", &up.base_url())
            .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "1000")
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "1000"),
    );
    let key = support::first_key(&s);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/openai_sdk_check.py");
    let out = Command::new("python3")
        .arg(script)
        .env("BASE_URL", format!("http://{}", s.addr))
        .env("API_KEY", &key)
        .env("REFUSE_WORD", REFUSE_WORD)
        .env("REFUSE_MESSAGE", REFUSE_MESSAGE)
        .env("CANCEL_WORD", CANCEL_WORD)
        .env_remove("ORIGIN")
        .env_remove("MODEL")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "SDK check failed:\n{}", stdout);
    assert!(!stdout.lines().any(|l| l.starts_with("FAIL")), "{}", stdout);
    for name in [
        "models.retrieve (id with /)",
        "chat.completions.stream()",
        "responses.stream()",
        "upstream refusal",
        "chat.completions (stream, usage not asked)",
    ] {
        assert!(
            stdout.contains(&format!("ok   {}:", name)),
            "check {:?} did not run:\n{}",
            name,
            stdout
        );
    }
    assert!(
        stdout.contains("19/19 checks passed, 0 skipped"),
        "{}",
        stdout
    );

    // The refusal reached the model server once: no retry by the SDK
    // (default retries) nor by portcullis.
    let refused = sent_with(&up, &format!("please {}", REFUSE_WORD));
    assert_eq!(
        refused.len(),
        1,
        "the refusal was sent {} times",
        refused.len()
    );

    // Vendor parameters: the fake got the very bytes the SDK sent.
    let hex = stdout
        .lines()
        .find_map(|l| l.strip_prefix("vendor-body: "))
        .expect("the script prints the vendor request body");
    let sdk_bytes = hex_decode(hex.trim());
    let vendor = sent_with(&up, "\"top_k\"");
    assert_eq!(vendor.len(), 1);
    assert_eq!(
        String::from_utf8_lossy(&vendor[0].body),
        String::from_utf8_lossy(&sdk_bytes),
        "the relay forwards the body byte for byte"
    );
    assert_eq!(vendor[0].json()["grammar"], "root ::= \"yes\"");

    // The responses stream closed after its first delta: the upstream
    // stream was stopped before its end.
    let cancelled = sent_with(&up, CANCEL_WORD);
    assert_eq!(cancelled.len(), 1);
    let conn = cancelled[0].conn;
    assert_eq!(cancelled[0].path, "/v1/responses");
    assert!(
        support::wait_until(Duration::from_secs(5), || up.is_closed(conn)),
        "the upstream connection of the closed stream is still open"
    );
    assert!(
        up.abandoned(conn),
        "the upstream stream ran to its end after the client left"
    );

    let paths: Vec<String> = up.requests().iter().map(|r| r.path.clone()).collect();
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
        "/v1/models",
    ] {
        assert!(
            paths.iter().any(|p| p == path),
            "{} never reached the fake",
            path
        );
    }
    assert!(
        !s.log_text().contains(&key),
        "the client's key is never logged"
    );
}

fn e2e_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e")
}

/// What the Node SDK test needs and this machine lacks, each with how to
/// install it.
fn node_sdk_missing() -> Vec<String> {
    let mut missing = Vec::new();
    let node_ok = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !node_ok {
        missing.push("node (apt-get install nodejs npm)".to_string());
    }
    if !e2e_dir().join("node_modules/openai/package.json").is_file() {
        missing.push("tests/e2e/node_modules/openai (cd tests/e2e && npm ci)".to_string());
    }
    missing
}

/// Bound on the Node script (node start-up included).
const NODE_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn official_openai_node_sdk_stream_helpers_work_unmodified() {
    let missing = node_sdk_missing();
    if !missing.is_empty() {
        let what = missing.join("; ");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("CI must run the Node SDK test, but this machine lacks: {what} (.ci/run installs them)");
        }
        eprintln!("NOTICE: skipping the OpenAI Node SDK test: missing {what}");
        return;
    }
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_millis(20),
    });
    let s = Server::start(
        Opts::new()
            .env("PORTCULLIS_UPSTREAM_BASE_URL", &up.base_url())
            .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "1000")
            .env("PORTCULLIS_RATE_LIMIT_OTHER_PER_MINUTE", "1000"),
    );
    let key = support::first_key(&s);
    let out_dir = support::TempDir::new("node-sdk");
    let stdout_path = out_dir.path().join("stdout");
    let stderr_path = out_dir.path().join("stderr");
    let mut child = Command::new("node")
        .arg(e2e_dir().join("openai_sdk.mjs"))
        .current_dir(e2e_dir())
        .env("BASE_URL", format!("http://{}", s.addr))
        .env("API_KEY", &key)
        .env_remove("MODEL")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start node");
    let mut status = None;
    support::wait_until(NODE_TIMEOUT, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = std::fs::read_to_string(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    eprintln!("{}{}", stdout, stderr);
    assert!(
        status.is_some(),
        "the Node SDK script did not end within {:?}",
        NODE_TIMEOUT
    );
    assert!(
        status.is_some_and(|s| s.success()),
        "Node SDK check failed:\n{}{}",
        stdout,
        stderr
    );
    for name in [
        "chat.completions.stream()",
        "responses.stream()",
        "chat.completions (stream, usage not asked)",
    ] {
        assert!(
            stdout.contains(&format!("ok   {}:", name)),
            "check {:?} did not pass:\n{}",
            name,
            stdout
        );
    }
    assert!(
        stdout.contains("5/5 checks passed, 0 skipped"),
        "{}",
        stdout
    );
    let streamed = up
        .requests()
        .iter()
        .filter(|r| r.json()["stream"] == true)
        .count();
    assert_eq!(streamed, 4, "every helper streamed through the relay");
}
