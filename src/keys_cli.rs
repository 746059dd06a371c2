//! `portcullis keys create|list|revoke`, `users create|list|disable` and
//! `portcullis audit`: operator
//! commands on the same database file as the server (same `--config` and
//! `PORTCULLIS_*` settings). They work while the server runs: WAL lets a
//! second process write, and every key change rewrites the key stamp that
//! the server's key cache checks on each request (`db::keys::KeyCache`),
//! so a revoked key is refused on its next request.
//!
//! Output: `keys create` prints the key alone on standard output (so
//! `KEY=$(portcullis keys create --name ci)` works) and its id on standard
//! error; `keys list` and `audit` print one JSON object per line.

use std::io::Write;

use crate::config::Config;
use crate::db::keys::Revoke;
use crate::db::{Actor, Db, StoreError};

/// Opens the database after the server's start-up check of our files
/// (`data_files::secure_existing`): links refused, loose modes tightened.
fn open(cfg: &Config) -> Option<Db> {
    match crate::data_files::secure_existing(cfg) {
        Ok(tightened) => {
            for (file, was) in tightened {
                eprintln!(
                    "portcullis: {} ({}, was {:o})",
                    crate::data_files::TIGHTENED_MSG,
                    file.display(),
                    was
                );
            }
        }
        Err(e) => {
            eprintln!("portcullis: {}", e);
            return None;
        }
    }
    match Db::open_for_cli(cfg) {
        Ok(db) => Some(db),
        Err(e) => {
            eprintln!("portcullis: {}", e);
            None
        }
    }
}

fn fail(what: &str, e: StoreError) -> i32 {
    eprintln!("portcullis: {}: {}", what, e);
    1
}

/// Prints lines to stdout; a closed pipe (`| head`) is not an error.
fn print_lines(lines: impl Iterator<Item = String>) -> i32 {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for line in lines {
        if writeln!(out, "{}", line).is_err() {
            return 0;
        }
    }
    0
}

pub fn create(
    cfg: &Config,
    name: &str,
    user: Option<&str>,
    expires_in_days: Option<u32>,
    models: Option<Vec<String>>,
) -> i32 {
    let Some(db) = open(cfg) else { return 1 };
    let owner = match user {
        Some(n) => db.user_by_name(n),
        None => db.first_admin(),
    };
    let owner = match owner {
        Ok(u) => u,
        Err(StoreError::NotFound) => {
            eprintln!(
                "portcullis: no user {}",
                user.map_or("is an enabled admin".to_string(), |n| format!(
                    "is named {}",
                    n
                ))
            );
            return 1;
        }
        Err(e) => return fail("cannot read users", e),
    };
    let new = crate::db::keys::NewKey {
        name,
        user_id: &owner.id,
        expires_at: expires_in_days.map(|d| crate::time::now_millis() + i64::from(d) * 86_400_000),
        models,
    };
    match db.create_key(&new, &Actor::cli()) {
        Ok((key, secret)) => {
            println!("{}", secret.expose_str());
            eprintln!(
                "created API key {} ({}); it is shown only this once: store it now",
                key.id, key.name
            );
            0
        }
        Err(e) => fail("cannot create the key", e),
    }
}

pub fn list(cfg: &Config) -> i32 {
    let Some(db) = open(cfg) else { return 1 };
    match db.list_keys() {
        Ok(keys) => print_lines(keys.iter().map(|k| k.to_json().to_string())),
        Err(e) => fail("cannot list keys", e),
    }
}

pub fn revoke(cfg: &Config, id: &str) -> i32 {
    let Some(db) = open(cfg) else { return 1 };
    match db.revoke_key(id, None, &Actor::cli()) {
        Ok(Revoke::Revoked) => {
            eprintln!("revoked API key {}", id);
            0
        }
        Ok(Revoke::AlreadyRevoked) => {
            eprintln!("API key {} was already revoked", id);
            0
        }
        Ok(Revoke::NotFound) => {
            eprintln!("portcullis: no API key has id {}", id);
            1
        }
        Err(e) => fail("cannot revoke the key", e),
    }
}

pub fn users_create(cfg: &Config, name: &str, role: crate::db::users::Role) -> i32 {
    let Some(db) = open(cfg) else { return 1 };
    match db.create_user(name, role, None, &Actor::cli()) {
        Ok(u) => {
            println!("{}", u.to_json());
            0
        }
        Err(e) => fail("cannot create the user", e),
    }
}

pub fn users_list(cfg: &Config) -> i32 {
    let Some(db) = open(cfg) else { return 1 };
    match db.list_users() {
        Ok(users) => print_lines(users.iter().map(|u| u.to_json().to_string())),
        Err(e) => fail("cannot list users", e),
    }
}

/// Disables a user: their keys and sessions are refused on their next
/// request, also by a server running meanwhile (the key stamp moves).
pub fn users_disable(cfg: &Config, id: &str) -> i32 {
    let Some(db) = open(cfg) else { return 1 };
    let patch = crate::db::users::UserPatch {
        disabled: Some(true),
        ..Default::default()
    };
    match db.update_user(id, &patch, &Actor::cli()) {
        Ok(u) => {
            eprintln!("disabled user {} ({})", u.id, u.name);
            0
        }
        Err(StoreError::NotFound) => {
            eprintln!("portcullis: no user has id {}", id);
            1
        }
        Err(e) => fail("cannot disable the user", e),
    }
}

/// Sets a user's password, read from standard input (never an argument,
/// which other users of the machine could see); ends their sessions.
pub fn users_passwd(cfg: &Config, name: &str) -> i32 {
    let Some(db) = open(cfg) else { return 1 };
    let user = match db.user_by_name(name) {
        Ok(u) => u,
        Err(StoreError::NotFound) => {
            eprintln!("portcullis: no user is named {}", name);
            return 1;
        }
        Err(e) => return fail("cannot read users", e),
    };
    let password = match crate::passwords::read_stdin() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("portcullis: {}", e);
            return 2;
        }
    };
    let hash = match crate::passwords::hash(&password) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("portcullis: cannot hash the password: {:?}", e);
            return 1;
        }
    };
    let patch = crate::db::users::UserPatch {
        password_hash: Some(hash),
        ..Default::default()
    };
    match db.update_user(&user.id, &patch, &Actor::cli()) {
        Ok(_) => {
            eprintln!("password set for {}", name);
            0
        }
        Err(e) => fail("cannot set the password", e),
    }
}

/// Audit rows since `since` (RFC 3339), oldest first, at most `limit`;
/// without `since`, the newest `limit` rows.
pub fn audit(cfg: &Config, since: Option<&str>, limit: usize) -> i32 {
    let since = match since.map(|s| (s, crate::time::parse_rfc3339_millis(s))) {
        None => None,
        Some((_, Some(ms))) => Some(ms),
        Some((s, None)) => {
            eprintln!(
                "portcullis: --since {:?} is not an RFC 3339 UTC time like 2026-11-23T15:29:03Z",
                s
            );
            return 2;
        }
    };
    let Some(db) = open(cfg) else { return 1 };
    match db.audit_rows(since, limit) {
        Ok(rows) => print_lines(rows.iter().map(|r| r.to_json().to_string())),
        Err(e) => fail("cannot read the audit trail", e),
    }
}

/// `portcullis usage`: a report as `GET /api/admin/usage` gives it, as a
/// table (users by name). Rows a running server has not flushed yet (at
/// most `limits.usage_flush_interval_ms` old) are not in it.
pub fn usage(
    cfg: &Config,
    since: Option<&str>,
    until: Option<&str>,
    by: crate::db::usage::GroupBy,
    user: Option<&str>,
) -> i32 {
    let time = |flag: &str, v: Option<&str>| {
        match v {
        None => Ok(None),
        Some(s) => crate::time::parse_rfc3339(s).map(Some).ok_or_else(|| {
            eprintln!(
                "portcullis: {} {:?} is not an RFC 3339 time (2026-12-01T00:00:00Z) or a date (2026-12-01)",
                flag, s
            );
            2
        }),
    }
    };
    let (since, until) = match (time("--since", since), time("--until", until)) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(code), _) | (_, Err(code)) => return code,
    };
    let until = until.unwrap_or_else(crate::time::now_millis);
    let since = since.unwrap_or(until - 30 * crate::time::DAY_MS);
    let Some(db) = open(cfg) else { return 1 };
    let users = match db.list_users() {
        Ok(u) => u,
        Err(e) => return fail("cannot read the users", e),
    };
    let user_id = match user {
        None => None,
        Some(name) => match users.iter().find(|u| u.name == name) {
            Some(u) => Some(u.id.clone()),
            None => {
                eprintln!("portcullis: no user named {:?}", name);
                return 1;
            }
        },
    };
    let q = crate::db::usage::UsageQuery {
        since_ms: since,
        until_ms: until,
        user_id: user_id.as_deref(),
        group_by: by,
    };
    let items = match db.usage_report(&q) {
        Ok(items) => items,
        Err(e) => return fail("cannot read the usage", e),
    };
    println!(
        "usage from {} to {}, by {}",
        crate::time::format_millis(since),
        crate::time::format_millis(until),
        by.as_str()
    );
    println!(
        "{:<26} {:>10} {:>14} {:>14} {:>14}",
        by.as_str(),
        "requests",
        "prompt",
        "completion",
        "total"
    );
    let mut total = (0, 0, 0);
    for i in &items {
        let group = match (by, &i.group) {
            (_, None) => "(no key)".to_string(),
            (crate::db::usage::GroupBy::User, Some(id)) => users
                .iter()
                .find(|u| &u.id == id)
                .map_or_else(|| id.clone(), |u| u.name.clone()),
            (_, Some(g)) => g.clone(),
        };
        println!(
            "{:<26} {:>10} {:>14} {:>14} {:>14}",
            group,
            i.requests,
            i.prompt_tokens,
            i.completion_tokens,
            i.prompt_tokens + i.completion_tokens
        );
        total.0 += i.requests;
        total.1 += i.prompt_tokens;
        total.2 += i.completion_tokens;
    }
    println!(
        "{:<26} {:>10} {:>14} {:>14} {:>14}",
        "total",
        total.0,
        total.1,
        total.2,
        total.1 + total.2
    );
    0
}
