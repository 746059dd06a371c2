//! The official OpenAI Python SDK against the real binary and the fake
//! upstream, through `scripts/openai_sdk_check.py`, with auth mode
//! `api_key` and the first key portcullis creates: every relayed route,
//! the SDK's stream helpers, errors as the SDK's exceptions. What only the
//! model server can see is checked here on the fake: the refusal reached
//! it once (no retry), vendor parameters arrived byte for byte, the stream
//! the client closed early was stopped upstream.
//!
//! Skipped (with a notice) where `python3 -c "import openai"` fails;
//! `pip install openai` enables it (.ci/run installs it under `CI=true`).

mod support;

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
    ] {
        assert!(
            stdout.contains(&format!("ok   {}:", name)),
            "check {:?} did not run:\n{}",
            name,
            stdout
        );
    }
    assert!(
        stdout.contains("18/18 checks passed, 0 skipped"),
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
