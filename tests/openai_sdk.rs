//! The official OpenAI Python SDK against the real binary and the fake
//! upstream, through `scripts/openai_sdk_check.py`, with auth mode
//! `api_key` and the first key portcullis creates. Skipped (with a notice)
//! where `python3 -c "import openai"` fails; `pip install openai` enables it.

mod support;

use std::process::Command;
use std::time::Duration;

use support::fake_upstream::{FakeUpstream, Mode};
use support::{Opts, Server};

fn sdk_available() -> bool {
    Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn official_openai_python_sdk_works_unmodified() {
    if !sdk_available() {
        eprintln!("NOTICE: skipping the OpenAI SDK check: `python3 -c \"import openai\"` failed (pip install openai)");
        return;
    }
    let up = FakeUpstream::start(Mode::Slow {
        delay: Duration::from_millis(20),
    });
    let s = Server::start(
        Opts::new()
            .env("PORTCULLIS_UPSTREAM_BASE_URL", &up.base_url())
            .env("PORTCULLIS_RATE_LIMIT_CHAT_PER_MINUTE", "1000"),
    );
    let key_file = s.dir.join("first_api_key");
    assert!(support::wait_until(Duration::from_secs(5), || key_file.exists()));
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/openai_sdk_check.py");
    let out = Command::new("python3")
        .arg(script)
        .env("BASE_URL", format!("http://{}", s.addr))
        .env("API_KEY", &key)
        .env_remove("ORIGIN")
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}{}", stdout, String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "SDK check failed:\n{}", stdout);
    assert!(stdout.contains("4/4 checks passed"));
    assert!(
        !s.log_text().contains(&key),
        "the client's key is never logged"
    );
}
