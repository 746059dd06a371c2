//! Files in `data_dir` (issue 10, item 6): created private, never written
//! or read through a planted symbolic link, and loose modes of existing
//! files tightened at start. Drives the real binary.
//!
//! Chosen behaviour for a link where one of our files should be: start-up
//! refuses, with a message naming the file, and the link's target is left
//! untouched (rather than silently replacing the link): a planted link
//! means someone else can write to `data_dir`, which the operator must know.

mod support;

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{bin, wait_until, Opts, Server, TempDir};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {}", p.display(), e))
        .permissions()
        .mode()
        & 0o7777
}

/// Runs `portcullis serve` on `dir` (which the caller prepared) and
/// returns its exit status and standard error, or panics if it keeps running.
fn start_expecting_refusal(dir: &Path) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(bin())
        .arg("serve")
        .env("PORTCULLIS_SERVER_BIND", "127.0.0.1:0")
        .env("PORTCULLIS_SERVER_DATA_DIR", dir)
        .env("PORTCULLIS_LOGGING_FILE", dir.join("portcullis.log"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(Duration::from_secs(20), || {
        matches!(child.try_wait(), Ok(Some(_)))
    });
    if !exited {
        let _ = child.kill();
        panic!(
            "the server started although {} holds a planted link",
            dir.display()
        );
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_planted_link_at_any_of_our_files_stops_start_up_and_is_never_followed() {
    for name in [
        "portcullis.addr",
        "csrf_secret",
        "first_api_key",
        "portcullis.db",
        "portcullis.db-wal",
        "portcullis.db.keys-stamp",
        "portcullis.log",
    ] {
        let dir = TempDir::new("link");
        let outside_dir = TempDir::new("outside");
        let outside = outside_dir.path().join("precious");
        std::fs::write(&outside, "do not touch\n").unwrap();
        std::fs::set_permissions(&outside, std::fs::Permissions::from_mode(0o644)).unwrap();
        symlink(&outside, dir.path().join(name)).unwrap();

        let (status, stderr) = start_expecting_refusal(dir.path());
        assert!(!status.success(), "{}: exit {:?}", name, status);
        assert!(
            stderr.contains(name) && stderr.contains("symbolic link"),
            "{}: the message names the file and the reason: {}",
            name,
            stderr
        );
        assert_eq!(
            std::fs::read_to_string(&outside).unwrap(),
            "do not touch\n",
            "{}: the link's target was written",
            name
        );
        assert_eq!(
            mode(&outside),
            0o644,
            "{}: the target's mode was changed",
            name
        );
        assert!(
            std::fs::symlink_metadata(dir.path().join(name))
                .unwrap()
                .file_type()
                .is_symlink(),
            "{}: the link itself is left for the operator to see",
            name
        );
    }
}

#[test]
fn a_dangling_link_is_refused_too_and_nothing_is_created_through_it() {
    let dir = TempDir::new("dangling");
    let outside_dir = TempDir::new("outside");
    let target = outside_dir.path().join("created-through-link");
    symlink(&target, dir.path().join("portcullis.addr")).unwrap();
    let (status, stderr) = start_expecting_refusal(dir.path());
    assert!(!status.success());
    assert!(stderr.contains("portcullis.addr"), "{}", stderr);
    assert!(!target.exists(), "a file was created through the link");
}

#[test]
fn files_of_a_fresh_start_are_private() {
    let s = Server::start(Opts::new());
    for name in [
        "portcullis.addr",
        "csrf_secret",
        "first_api_key",
        "portcullis.db",
        "portcullis.db.keys-stamp",
        "portcullis.log",
    ] {
        assert_eq!(mode(&s.dir.join(name)), 0o600, "{}", name);
    }
    // No temp file of an atomic replace is left behind.
    let leftovers: Vec<String> = std::fs::read_dir(&s.dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{:?}", leftovers);
}

#[test]
fn loose_modes_of_existing_files_are_tightened_at_start_with_a_warning() {
    let dir = TempDir::new("modes");
    let opts = || Opts::new().data_dir(dir.path());
    let mut first = Server::start(opts());
    assert!(first
        .terminate(Duration::from_secs(20))
        .is_some_and(|s| s.success()));
    let loose = ["csrf_secret", "portcullis.db", "portcullis.addr"];
    for name in loose {
        let p = dir.path().join(name);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(
        dir.path().join("portcullis.db.keys-stamp"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    let secret_before = std::fs::read(dir.path().join("csrf_secret")).unwrap();

    let s = Server::start(opts());
    for name in ["csrf_secret", "portcullis.db", "portcullis.db.keys-stamp"] {
        assert_eq!(mode(&dir.path().join(name)), 0o600, "{}", name);
    }
    assert_eq!(
        std::fs::read(dir.path().join("csrf_secret")).unwrap(),
        secret_before,
        "the secret is kept, only its mode changes"
    );
    // The server still works on its tightened database.
    assert_eq!(s.get("/health/ready").status, 200);
    let warnings: Vec<serde_json::Value> = s
        .log_json()
        .into_iter()
        .filter(|l| l["level"] == "warn" && l["msg"].as_str().unwrap_or("").contains("tightened"))
        .collect();
    for (name, was) in [
        ("csrf_secret", "644"),
        ("portcullis.db", "644"),
        ("portcullis.db.keys-stamp", "666"),
    ] {
        assert!(
            warnings.iter().any(|w| w["file"]
                .as_str()
                .is_some_and(|f| f.ends_with(&format!("/{}", name)))
                && w["was"] == was),
            "no warning for {} ({}): {:?}",
            name,
            was,
            warnings
        );
    }
}

#[test]
fn key_commands_refuse_a_planted_link_too() {
    let dir = TempDir::new("cli-link");
    let outside_dir = TempDir::new("outside");
    let outside = outside_dir.path().join("precious");
    std::fs::write(&outside, "do not touch\n").unwrap();
    symlink(&outside, dir.path().join("portcullis.db.keys-stamp")).unwrap();
    let out = Command::new(bin())
        .args(["keys", "create", "--name", "ci"])
        .env("PORTCULLIS_SERVER_DATA_DIR", dir.path())
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", stderr);
    assert!(
        stderr.contains("portcullis.db.keys-stamp") && stderr.contains("symbolic link"),
        "{}",
        stderr
    );
    assert!(out.stdout.is_empty(), "no key was made");
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "do not touch\n");
}
