//! The command line, without a framework crate:
//! `portcullis [serve] [--config PATH]`,
//! `portcullis check-config [--config PATH] [--production]`,
//! `portcullis keys create --name NAME [--user NAME] [--expires-in-days D]
//! [--models a,b] | keys list | keys revoke ID`,
//! `portcullis users create --name N [--role admin|member] | users list |
//! users disable ID`,
//! `portcullis audit [--since RFC3339] [--limit N]`,
//! `portcullis usage [--since T] [--until T] [--by day|model|key|user]
//! [--user NAME]`, `portcullis migrate-to-postgres --from FILE`, `--help`,
//! `--version`.
//!
//! Exit codes: 0 success, 1 failure (bad configuration, failed checklist,
//! start-up error), 2 usage error.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use crate::config::Config;

pub const USAGE: &str = "\
portcullis - a hardened chat backend for OpenAI-compatible LLM servers

USAGE:
    portcullis [serve] [--config PATH]        start the server (default)
    portcullis check-config [--config PATH] [--production]
                                              validate settings; --production runs
                                              the deployment checklist
    portcullis keys create --name NAME [--user NAME] [--expires-in-days D]
                           [--models a,b] [--config PATH]
                                              create an API key (printed once); without
                                              --user it belongs to the first admin
    portcullis keys list [--config PATH]      list keys (never shows a key)
    portcullis keys revoke ID [--config PATH] revoke a key at once
    portcullis users create --name NAME [--role admin|member] [--config PATH]
                                              create a user (a member by default)
    portcullis users list [--config PATH]     list users
    portcullis users passwd NAME [--config PATH]
                                              set a password, read from standard input
    portcullis users disable ID [--config PATH]
                                              refuse the user's keys at once (data kept)
    portcullis audit [--since TIME] [--limit N] [--config PATH]
                                              print the audit trail
    portcullis usage [--since TIME] [--until TIME] [--by day|model|key|user]
                     [--user NAME] [--config PATH]
                                              token usage (default: the last 30 days
                                              by day); TIME is RFC 3339 or a date
    portcullis migrate-to-postgres --from FILE [--config PATH]
                                              copy an SQLite file into the empty
                                              PostgreSQL database of database.url,
                                              then verify every table
    portcullis --help | --version

Without --config, ./config.ini is read when it exists, else built-in defaults.
Any setting can be overridden as PORTCULLIS_<SECTION>_<KEY>.
";

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve,
    CheckConfig {
        production: bool,
    },
    KeysCreate {
        name: String,
        user: Option<String>,
        expires_in_days: Option<u32>,
        models: Option<Vec<String>>,
    },
    UsersCreate {
        name: String,
        role: crate::db::users::Role,
    },
    UsersList,
    UsersDisable {
        id: String,
    },
    UsersPasswd {
        name: String,
    },
    KeysList,
    KeysRevoke {
        id: String,
    },
    Audit {
        since: Option<String>,
        limit: usize,
    },
    Usage {
        since: Option<String>,
        until: Option<String>,
        by: crate::db::usage::GroupBy,
        user: Option<String>,
    },
    MigrateToPostgres {
        from: PathBuf,
    },
    Help,
    Version,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Invocation {
    pub command: Command,
    pub config: Option<PathBuf>,
}

/// Parses arguments (without the program name).
pub fn parse(args: &[String]) -> Result<Invocation, String> {
    let mut config = None;
    let mut words: Vec<&str> = Vec::new();
    let mut production = false;
    let mut name = None;
    let mut user = None;
    let mut role = None;
    let mut expires_in_days = None;
    let mut models = None;
    let mut since = None;
    let mut until = None;
    let mut by = None;
    let mut from = None;
    let mut limit = 100usize;
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        let mut value = |flag: &str| -> Result<String, String> {
            i += 1;
            args.get(i)
                .cloned()
                .ok_or_else(|| format!("{} needs a value", flag))
        };
        match a {
            "-h" | "--help" => {
                return Ok(Invocation {
                    command: Command::Help,
                    config,
                })
            }
            "-V" | "--version" => {
                return Ok(Invocation {
                    command: Command::Version,
                    config,
                })
            }
            "--config" | "-c" => config = Some(PathBuf::from(value(a)?)),
            "--production" => production = true,
            "--name" => name = Some(value(a)?),
            "--user" => user = Some(value(a)?),
            "--role" => {
                role = Some(
                    value(a)?
                        .parse::<crate::db::users::Role>()
                        .map_err(|()| "--role is admin or member".to_string())?,
                )
            }
            "--expires-in-days" => {
                expires_in_days = Some(
                    value(a)?
                        .parse::<u32>()
                        .ok()
                        .filter(|d| (1..=36_500).contains(d))
                        .ok_or("--expires-in-days needs 1 to 36500")?,
                )
            }
            "--models" => {
                let list: Vec<String> = value(a)?
                    .split(',')
                    .map(|m| m.trim().to_string())
                    .filter(|m| !m.is_empty())
                    .collect();
                if list.is_empty() {
                    return Err("--models needs a comma-separated list".into());
                }
                models = Some(list)
            }
            "--since" => since = Some(value(a)?),
            "--until" => until = Some(value(a)?),
            "--by" => {
                by = Some(
                    crate::db::usage::GroupBy::parse(&value(a)?)
                        .ok_or("--by is day, model, key or user")?,
                )
            }
            "--from" => from = Some(PathBuf::from(value(a)?)),
            "--limit" => {
                limit = value(a)?
                    .parse()
                    .map_err(|_| "--limit needs a number".to_string())?
            }
            _ if a.starts_with("--config=") => config = Some(PathBuf::from(&a[9..])),
            _ if a.starts_with('-') => return Err(format!("unknown option {}", a)),
            _ => words.push(a),
        }
        i += 1;
    }
    let flag_misuse = |ok: bool, what: &str| {
        if ok {
            Ok(())
        } else {
            Err(format!("{} is not valid here", what))
        }
    };
    let command = match words.as_slice() {
        [] | ["serve"] => Command::Serve,
        ["check-config"] => Command::CheckConfig { production },
        ["keys", "create"] => Command::KeysCreate {
            name: name.clone().ok_or("keys create needs --name NAME")?,
            user: user.clone(),
            expires_in_days,
            models: models.clone(),
        },
        ["keys", "list"] => Command::KeysList,
        ["keys", "revoke", id] => Command::KeysRevoke { id: id.to_string() },
        ["keys", "revoke"] => return Err("keys revoke needs a key id".into()),
        ["keys", ..] => return Err("keys takes create, list or revoke".into()),
        ["users", "create"] => Command::UsersCreate {
            name: name.clone().ok_or("users create needs --name NAME")?,
            role: role.unwrap_or(crate::db::users::Role::Member),
        },
        ["users", "list"] => Command::UsersList,
        ["users", "disable", id] => Command::UsersDisable { id: id.to_string() },
        ["users", "disable"] => return Err("users disable needs a user id".into()),
        ["users", "passwd", name] => Command::UsersPasswd {
            name: name.to_string(),
        },
        ["users", "passwd"] => return Err("users passwd needs a user name".into()),
        ["users", ..] => return Err("users takes create, list, disable or passwd".into()),
        ["audit"] => Command::Audit {
            since: since.clone(),
            limit,
        },
        ["usage"] => Command::Usage {
            since: since.clone(),
            until: until.clone(),
            by: by.unwrap_or(crate::db::usage::GroupBy::Day),
            user: user.clone(),
        },
        ["migrate-to-postgres"] => Command::MigrateToPostgres {
            from: from
                .clone()
                .ok_or("migrate-to-postgres needs --from FILE")?,
        },
        [other, ..] => return Err(format!("unknown command `{}`", other)),
    };
    flag_misuse(
        !production || matches!(command, Command::CheckConfig { .. }),
        "--production",
    )?;
    flag_misuse(
        name.is_none()
            || matches!(
                command,
                Command::KeysCreate { .. } | Command::UsersCreate { .. }
            ),
        "--name",
    )?;
    let key_create = matches!(command, Command::KeysCreate { .. });
    let usage = matches!(command, Command::Usage { .. });
    flag_misuse(user.is_none() || key_create || usage, "--user")?;
    flag_misuse(until.is_none() || usage, "--until")?;
    flag_misuse(by.is_none() || usage, "--by")?;
    flag_misuse(expires_in_days.is_none() || key_create, "--expires-in-days")?;
    flag_misuse(models.is_none() || key_create, "--models")?;
    flag_misuse(
        role.is_none() || matches!(command, Command::UsersCreate { .. }),
        "--role",
    )?;
    flag_misuse(
        since.is_none() || usage || matches!(command, Command::Audit { .. }),
        "--since",
    )?;
    flag_misuse(
        from.is_none() || matches!(command, Command::MigrateToPostgres { .. }),
        "--from",
    )?;
    Ok(Invocation { command, config })
}

/// Runs the command line; returns the process exit code.
pub fn main(args: Vec<String>) -> i32 {
    let inv = match parse(&args) {
        Ok(inv) => inv,
        Err(e) => {
            eprintln!("portcullis: {}\n\n{}", e, USAGE);
            return 2;
        }
    };
    match inv.command {
        Command::Help => {
            print!("{}", USAGE);
            return 0;
        }
        Command::Version => {
            println!("portcullis {}", env!("CARGO_PKG_VERSION"));
            return 0;
        }
        _ => {}
    }
    let cfg = match Config::load(inv.config.as_deref()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("portcullis: invalid configuration: {}", e);
            return 1;
        }
    };
    match inv.command {
        Command::Serve => serve(cfg),
        Command::CheckConfig { production } => check_config(&cfg, production),
        Command::KeysCreate {
            name,
            user,
            expires_in_days,
            models,
        } => crate::keys_cli::create(&cfg, &name, user.as_deref(), expires_in_days, models),
        Command::UsersCreate { name, role } => crate::keys_cli::users_create(&cfg, &name, role),
        Command::UsersList => crate::keys_cli::users_list(&cfg),
        Command::UsersDisable { id } => crate::keys_cli::users_disable(&cfg, &id),
        Command::UsersPasswd { name } => crate::keys_cli::users_passwd(&cfg, &name),
        Command::KeysList => crate::keys_cli::list(&cfg),
        Command::KeysRevoke { id } => crate::keys_cli::revoke(&cfg, &id),
        Command::Audit { since, limit } => crate::keys_cli::audit(&cfg, since.as_deref(), limit),
        Command::Usage {
            since,
            until,
            by,
            user,
        } => crate::keys_cli::usage(
            &cfg,
            since.as_deref(),
            until.as_deref(),
            by,
            user.as_deref(),
        ),
        Command::MigrateToPostgres { from } => migrate_to_postgres(&cfg, &from),
        Command::Help | Command::Version => 0,
    }
}

fn check_config(cfg: &Config, production: bool) -> i32 {
    let from = cfg
        .source
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    if !production {
        println!("configuration OK ({})", from);
        return 0;
    }
    let secret_len = match std::env::var(crate::secret::CSRF_SECRET_ENV) {
        Ok(v) => Some(v.len()),
        Err(_) => crate::data_files::read(
            &cfg.server
                .data_dir
                .join(crate::data_files::CSRF_SECRET_FILE),
        )
        .ok()
        .map(|b| b.len()),
    };
    let problems = cfg.production_problems(secret_len);
    if problems.is_empty() {
        println!("production checklist passed ({})", from);
        0
    } else {
        eprintln!("production checklist failed ({}):", from);
        for p in &problems {
            eprintln!("  - {}", p);
        }
        1
    }
}

/// Copies the SQLite file `from` into the PostgreSQL database of
/// `database.url` (`db::pg::copy`): the verification lines on standard
/// output, progress and errors on standard error. Never prints the URL.
fn migrate_to_postgres(cfg: &Config, from: &std::path::Path) -> i32 {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    match crate::db::pg::copy::run(cfg, from, &mut stdout.lock(), &mut stderr.lock()) {
        Ok(()) => {
            eprintln!(
                "portcullis: {} copied and verified; start portcullis with this database.url",
                from.display()
            );
            0
        }
        Err(e) => {
            eprintln!("portcullis: migrate-to-postgres: {}", e);
            1
        }
    }
}

fn serve(cfg: Config) -> i32 {
    if let Err(e) = crate::logging::init(&cfg.logging, &cfg.server.data_dir) {
        eprintln!("portcullis: cannot open log file: {}", e);
        return 1;
    }
    crate::server::install_panic_hook();
    let grace = cfg.server.shutdown_grace;
    let app = match crate::app::App::new(cfg) {
        Ok(app) => Arc::new(app),
        Err(e) => {
            crate::logging::error("start-up failed", &[("error", json!(e))]);
            eprintln!("portcullis: {}", e);
            return 1;
        }
    };
    let signals = crate::signals::wait_for_shutdown();
    let running = match crate::server::start(app.clone()) {
        Ok(r) => r,
        Err(e) => {
            crate::logging::error(
                "cannot listen",
                &[
                    ("bind", json!(app.cfg.server.bind)),
                    ("error", json!(e.to_string())),
                ],
            );
            eprintln!(
                "portcullis: cannot listen on {}: {}",
                app.cfg.server.bind, e
            );
            return 1;
        }
    };
    app.set_stats(Box::new(running.stats()));
    let addr_file = app.cfg.server.data_dir.join(crate::data_files::ADDR_FILE);
    let addr_line = format!("{}\n", running.addr);
    if let Err(e) = crate::data_files::replace(&addr_file, addr_line.as_bytes()) {
        crate::logging::warn(
            "cannot write address file",
            &[("error", json!(e.to_string()))],
        );
    }
    crate::logging::info(
        "listening",
        &[
            ("addr", json!(running.addr.to_string())),
            ("version", json!(env!("CARGO_PKG_VERSION"))),
            ("workers", json!(app.cfg.server.workers)),
        ],
    );
    let sig = signals.recv().unwrap_or(libc::SIGTERM);
    crate::logging::info(
        "shutting down",
        &[("signal", json!(sig)), ("grace_s", json!(grace.as_secs()))],
    );
    let drained = running.shutdown(grace);
    app.stop_background();
    crate::logging::info("stopped", &[("drained", json!(drained))]);
    crate::logging::flush();
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Invocation, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn command_line_table() {
        assert_eq!(p(&[]).unwrap().command, Command::Serve);
        assert_eq!(
            p(&["serve", "--config", "x.ini"]).unwrap().config,
            Some(PathBuf::from("x.ini"))
        );
        assert_eq!(
            p(&["check-config", "--production"]).unwrap().command,
            Command::CheckConfig { production: true }
        );
        assert_eq!(
            p(&["keys", "create", "--name", "ci"]).unwrap().command,
            Command::KeysCreate {
                name: "ci".into(),
                user: None,
                expires_in_days: None,
                models: None
            }
        );
        assert_eq!(
            p(&["keys", "revoke", "k1"]).unwrap().command,
            Command::KeysRevoke { id: "k1".into() }
        );
        assert_eq!(
            p(&["migrate-to-postgres", "--from", "old.db"])
                .unwrap()
                .command,
            Command::MigrateToPostgres {
                from: PathBuf::from("old.db")
            }
        );
        assert_eq!(p(&["--version"]).unwrap().command, Command::Version);
        for bad in [
            &["bogus"][..],
            &["--nope"],
            &["keys"],
            &["keys", "create"],
            &["serve", "--production"],
            &["migrate-to-postgres"],
            &["usage", "--from", "old.db"],
            &["--config"],
        ] {
            assert!(p(bad).is_err(), "{:?}", bad);
        }
    }
}
