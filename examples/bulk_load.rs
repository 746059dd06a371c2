//! Fills a new data dir with a large database exactly as the server would
//! have written it, fast (issue 12: `scripts/cost_growth.sh` measures the
//! API against it). Not through HTTP: one transaction of prepared
//! statements with `synchronous=OFF`, but the schema comes from
//! `db::schema` (through `Db::open`), the rows from the same `INSERT`
//! statements the server runs (`db::projects::INSERT`, ...), ids from
//! `ids::new_id`, API keys from `db::keys::insert_key` (hashed, audited),
//! and `created_at` grows with `seq` in every table, as `db::page` needs.
//!
//!     cargo run --release --example bulk_load -- DATA_DIR \
//!         [--messages 1000000] [--conversations 10000] [--projects 100] \
//!         [--keys 10000] [--keys-file DATA_DIR/bulk_keys.txt] \
//!         [--conversations-per-project N] [--conversations-with-messages N]
//!
//! Conversations go to the projects in turn, `--conversations-per-project`
//! to each (default: as evenly as the counts allow), so some projects may
//! get none. Messages go to the first `--conversations-with-messages`
//! conversations (default: all), `messages / that` each (the first ones
//! one more when it does not divide), alternating user and assistant, in
//! rounds of one per conversation, so a conversation's rows are spread
//! over the whole table as in real use. (A baseline that fills every page
//! the benchmark reads yet holds little: `scripts/cost_growth.sh`.) The
//! keys (one per line, mode 0600) authenticate against a server on
//! DATA_DIR; the key stamp is bumped so a running server drops its cache.
//!
//! Prints one line of `name=value` fields: the counts, `load_s`, two
//! conversation ids (`conversation_id`, `conversation_id_2`), a project id
//! and the keys file. Refuses a database that already holds rows.

use std::path::PathBuf;
use std::time::Instant;

use portcullis::config::Config;
use portcullis::db::keys::{self, KeyCache, KeyLookup};
use portcullis::db::{conversations, messages, projects, Actor, Db, Role, Status};
use rusqlite::{params, Connection, OptionalExtension};

struct Args {
    data_dir: PathBuf,
    messages: u64,
    conversations: u64,
    projects: u64,
    keys: u64,
    keys_file: PathBuf,
    per_project: Option<u64>,
    with_messages: Option<u64>,
}

fn usage() -> ! {
    eprintln!(
        "usage: bulk_load DATA_DIR [--messages N] [--conversations N] [--projects N] [--keys N] \
         [--keys-file FILE] [--conversations-per-project N] [--conversations-with-messages N]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let data_dir = PathBuf::from(it.next().unwrap_or_else(|| usage()));
    let mut a = Args {
        keys_file: data_dir.join("bulk_keys.txt"),
        data_dir,
        messages: 1_000_000,
        conversations: 10_000,
        projects: 100,
        keys: 10_000,
        per_project: None,
        with_messages: None,
    };
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let n = || value.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            "--messages" => a.messages = n(),
            "--conversations" => a.conversations = n(),
            "--projects" => a.projects = n(),
            "--keys" => a.keys = n(),
            "--keys-file" => a.keys_file = PathBuf::from(&value),
            "--conversations-per-project" => a.per_project = Some(n().max(1)),
            "--conversations-with-messages" => a.with_messages = Some(n()),
            _ => usage(),
        }
    }
    let with_messages = a.with_messages.unwrap_or(a.conversations);
    if a.messages > 0 && (with_messages == 0 || with_messages > a.conversations) {
        eprintln!("bulk_load: messages need conversations to go to");
        std::process::exit(2);
    }
    a
}

/// A small deterministic generator (xorshift64*): message texts vary in
/// length and words, the same from run to run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: &[&str] = &[
    "the", "model", "answer", "question", "please", "explain", "how", "why", "a", "list", "of",
    "steps", "database", "index", "query", "rust", "thread", "memory", "request", "stream",
    "token", "and", "with", "for", "example", "could", "you", "write", "short", "summary",
];

/// Text of `min..max` characters (ASCII words).
fn text(rng: &mut Rng, min: u64, max: u64) -> String {
    let len = (min + rng.below(max - min)) as usize;
    let mut s = String::with_capacity(len + 12);
    while s.len() < len {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    s
}

fn main() {
    let a = parse_args();
    let started = Instant::now();
    portcullis::data_files::create_dir(&a.data_dir).unwrap_or_else(|e| fail(&e));
    let mut cfg = Config::default();
    cfg.server.data_dir = a.data_dir.clone();
    let path = cfg.database_path();
    // The file (mode 0600) and the schema exactly as the server makes them.
    drop(Db::open_for_cli(&cfg).unwrap_or_else(|e| fail(&e)));

    let mut conn = Connection::open(&path).unwrap_or_else(|e| fail(&e.to_string()));
    // A bulk load may lose everything on a crash: it is redone, not
    // repaired. Out of WAL mode the rows are written once (not to the WAL
    // and again at the checkpoint); WAL is back before the file is used.
    let mode: String = conn
        .query_row("PRAGMA journal_mode=MEMORY", [], |r| r.get(0))
        .unwrap_or_else(|e| fail(&e.to_string()));
    if mode != "memory" {
        fail(&format!(
            "cannot leave WAL mode for the load (got {})",
            mode
        ));
    }
    conn.execute_batch(
        "PRAGMA synchronous=OFF; PRAGMA foreign_keys=ON; PRAGMA cache_size=-262144;",
    )
    .unwrap_or_else(|e| fail(&e.to_string()));
    for table in ["projects", "conversations", "messages", "api_keys"] {
        let any: Option<i64> = conn
            .query_row(&format!("SELECT 1 FROM {} LIMIT 1", table), [], |r| {
                r.get(0)
            })
            .optional()
            .unwrap_or_else(|e| fail(&e.to_string()));
        if any.is_some() {
            fail(&format!(
                "{} already holds {}: bulk_load fills a new data dir",
                path.display(),
                table
            ));
        }
    }

    let tx = conn.transaction().unwrap_or_else(|e| fail(&e.to_string()));
    let secrets = fill(&tx, &a).unwrap_or_else(|e| fail(&e.to_string()));
    tx.commit().unwrap_or_else(|e| fail(&e.to_string()));
    let mode: String = conn
        .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
        .unwrap_or_else(|e| fail(&e.to_string()));
    if mode != "wal" {
        fail(&format!("cannot return to WAL mode (got {})", mode));
    }
    drop(conn);
    // Key changes are announced to running servers by the stamp.
    KeyCache::new(&path).bump_stamp();

    let mut lines = secrets.join("\n");
    lines.push('\n');
    portcullis::data_files::replace(&a.keys_file, lines.as_bytes())
        .unwrap_or_else(|e| fail(&format!("{}: {}", a.keys_file.display(), e)));
    let load_s = started.elapsed().as_secs_f64();

    // Proof that the rows are the server's: read back through `Db`.
    let db = Db::open_for_cli(&cfg).unwrap_or_else(|e| fail(&e));
    if let Some(k) = secrets.first() {
        match db.lookup_key(k) {
            Ok(KeyLookup::Valid { .. }) => {}
            other => fail(&format!("a loaded key does not authenticate: {:?}", other)),
        }
    }
    let conn = db
        .sqlite()
        .expect("SQLite")
        .conn()
        .unwrap_or_else(|e| fail(&e.to_string()));
    let first = |sql: &str| -> String {
        conn.query_row(sql, [], |r| r.get::<_, Option<String>>(0))
            .optional()
            .ok()
            .flatten()
            .flatten()
            .unwrap_or_default()
    };
    println!(
        "messages={} conversations={} projects={} keys={} load_s={:.1} conversation_id={} conversation_id_2={} project_id={} keys_file={}",
        a.messages,
        a.conversations,
        a.projects,
        a.keys,
        load_s,
        first("SELECT id FROM conversations ORDER BY seq LIMIT 1"),
        first("SELECT id FROM conversations ORDER BY seq LIMIT 1 OFFSET 1"),
        first("SELECT id FROM projects ORDER BY seq LIMIT 1"),
        a.keys_file.display()
    );
}

fn fail(msg: &str) -> ! {
    eprintln!("bulk_load: {}", msg);
    std::process::exit(1);
}

/// Writes every row inside `tx`; returns the keys' secrets.
fn fill(tx: &Connection, a: &Args) -> rusqlite::Result<Vec<String>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // One millisecond per row, ending now: `created_at` grows with `seq`
    // in each table, and the server's next row (now or later) follows.
    let rows = a.projects + a.conversations + a.messages;
    let mut clock = portcullis::time::now_millis() - rows as i64;
    let mut tick = || {
        clock += 1;
        clock
    };

    // Everything belongs to the admin every database has (as the first
    // key's owner would have made it).
    let admin: String = tx.query_row("SELECT id FROM users WHERE name = 'admin'", [], |r| {
        r.get(0)
    })?;
    let mut project_ids = Vec::with_capacity(a.projects as usize);
    {
        let mut st = tx.prepare(projects::INSERT)?;
        for i in 0..a.projects {
            let id = portcullis::ids::new_id();
            let t = tick();
            st.execute(params![
                id,
                format!("Project {}", i),
                Some("bulk loaded"),
                t,
                t,
                admin
            ])?;
            project_ids.push(id);
        }
    }

    // Projects used, in turn: enough to hold the conversations at
    // `per_project` each.
    let per_project = a
        .per_project
        .unwrap_or_else(|| a.conversations.div_ceil(a.projects.max(1)))
        .max(1);
    let used = a
        .conversations
        .div_ceil(per_project)
        .clamp(1, a.projects.max(1));
    let mut conversation_ids = Vec::with_capacity(a.conversations as usize);
    {
        let mut st = tx.prepare(conversations::INSERT)?;
        for i in 0..a.conversations {
            let id = portcullis::ids::new_id();
            let project =
                (!project_ids.is_empty()).then(|| project_ids[(i % used) as usize].as_str());
            let t = tick();
            let title = format!("Conversation {}", i);
            let none: Option<&str> = None;
            st.execute(params![id, project, title, none, none, t, t, admin])?;
            conversation_ids.push(id);
        }
    }

    // Round r writes message r of every conversation that has one.
    let c = a.with_messages.unwrap_or(a.conversations).max(1);
    let (per, extra) = (a.messages / c, a.messages % c);
    let mut last_at = vec![0i64; conversation_ids.len()];
    {
        let mut st = tx.prepare(messages::INSERT)?;
        for round in 0..per + u64::from(extra > 0) {
            let (role, status) = match round % 2 {
                0 => (Role::User, Status::Complete),
                _ => (Role::Assistant, Status::Complete),
            };
            let in_round = if round < per { c } else { extra };
            for (i, conversation) in conversation_ids.iter().take(in_round as usize).enumerate() {
                let (content, model, usage) = match role {
                    Role::User => (text(&mut rng, 20, 300), None, None),
                    _ => {
                        let (p, o) = (200 + rng.below(2000), 20 + rng.below(400));
                        let usage = format!(
                            r#"{{"completion_tokens":{},"prompt_tokens":{},"total_tokens":{}}}"#,
                            o,
                            p,
                            p + o
                        );
                        (text(&mut rng, 80, 600), Some("bench"), Some(usage))
                    }
                };
                let t = tick();
                st.execute(params![
                    portcullis::ids::new_id(),
                    conversation,
                    role,
                    content,
                    status,
                    model,
                    usage,
                    t,
                    // Answers stopped by themselves; questions have none.
                    model.map(|_| "stop")
                ])?;
                last_at[i] = t;
            }
        }
    }
    {
        // As `insert_message` does for each message: the conversation's
        // `updated_at` follows its newest message.
        let mut st = tx.prepare(messages::BUMP_CONVERSATION)?;
        for (id, t) in conversation_ids.iter().zip(&last_at) {
            if *t > 0 {
                st.execute(params![id, t])?;
            }
        }
    }

    let mut secrets = Vec::with_capacity(a.keys as usize);
    for i in 0..a.keys {
        let name = format!("bulk {}", i);
        let new = keys::NewKey {
            name: &name,
            user_id: &admin,
            ..keys::NewKey::default()
        };
        let (_, secret) = keys::insert_key(tx, &new, &Actor::cli())
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.to_string().into()))?;
        secrets.push(secret.expose_str().to_string());
    }
    Ok(secrets)
}
