//! `scripts/smoke.sh` (issue 6) passes against a real server with the chat
//! endpoints on (a fake upstream), so the script and the server stay in step.

mod support;

use std::process::Command;

use support::fake_upstream::{FakeUpstream, Mode};
use support::{Opts, Server};

#[test]
fn smoke_script_passes_against_a_running_server() {
    if Command::new("curl").arg("--version").output().is_err() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "curl is required in CI"
        );
        eprintln!("SKIP smoke_script_passes_against_a_running_server: curl is not installed");
        return;
    }
    let up = FakeUpstream::start(Mode::Normal);
    let s = Server::start(Opts::new().env("PORTCULLIS_UPSTREAM_BASE_URL", &up.base_url()));
    let key = support::first_key(&s);
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/smoke.sh"))
        .env("BASE_URL", format!("http://{}", s.addr))
        .env("API_KEY", key.trim())
        .env("CHAT", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "smoke.sh failed:\n{}\n{}",
        stdout,
        stderr
    );
    assert!(stdout.contains("smoke: all"), "{}", stdout);
}
