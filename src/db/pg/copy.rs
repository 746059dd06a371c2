//! `portcullis migrate-to-postgres --from FILE`: copies an SQLite file into
//! the empty PostgreSQL database of `database.url`, then proves the copy.
//!
//! The two schemas are kept equal version by version (`pg::schema`): same
//! tables, same column names, every INTEGER a BIGINT and every TEXT a TEXT.
//! So the copy is generic: each table's columns are listed on both sides
//! and must match by name, and each value goes over as what it is (an
//! integer, a text or NULL); a REAL or BLOB, which the schema never
//! stores, stops the copy with the table and column named. Rows go through
//! binary `COPY ... FROM STDIN` (typed, so nothing is escaped), every
//! table in one transaction, parents before children. Identity columns
//! are copied as they are, and their sequences moved past the largest.
//!
//! The file is opened read-only and read in one transaction, so the copy
//! and its verification see one snapshot even while a server writes to
//! it (what it writes later is not copied: stop it first). After the
//! commit, each table's rows are counted and hashed on both sides
//! (`sqlite_digest`, `postgres_digest`: SHA-256 over every value with its
//! type, in primary-key order) and must agree.
//!
//! The URL holds a password: nothing here prints it; messages name the
//! host and the database only.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use postgres::types::{ToSql, Type};
use rusqlite::types::ValueRef;

use crate::config::Config;

/// The tables copied, parents before children (foreign keys hold at every
/// row).
pub const TABLES: &[&str] = &[
    "users",
    "projects",
    "conversations",
    "messages",
    "api_keys",
    "sessions",
    "audit",
    "usage_labels",
    "usage",
    "usage_days",
];

/// Tables only the PostgreSQL schema has (`pg::schema`): not copied.
const PG_ONLY: &[&str] = &["schema_version", "rate_limits", "token_accounts"];

/// One table's content as the verification sees it: its row count and the
/// SHA-256 of its column names and of every value (type and value) in
/// primary-key order. Equal digests on both sides mean equal tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableDigest {
    pub rows: u64,
    pub sha256: [u8; 32],
}

/// Copies `from` into the database of `cfg.database.url` and verifies it.
/// Writes one line per table to `out` (`users rows=3 hash=ok`) and progress
/// to `progress`. Refuses a database that holds anything; any mismatch
/// after the copy is an error naming the tables.
pub fn run(
    cfg: &Config,
    from: &Path,
    out: &mut dyn Write,
    progress: &mut dyn Write,
) -> Result<(), String> {
    if cfg.database.url.is_empty() {
        return Err(
            "database.url is not set: set it (or PORTCULLIS_DATABASE_URL) to the postgres:// URL \
             of the empty database to copy into"
                .into(),
        );
    }
    let target = super::conn::parse_url(&cfg.database.url)?;
    let place = describe(&target.config);

    let sqlite = open_sqlite(from)?;
    let mut conn = super::PgPool::open(&cfg.database, 1)?
        .get()
        .map_err(|e| format!("cannot connect to PostgreSQL ({}): {}", place, e))?;
    let client = conn.client();
    // The pool's per-statement bound (`statement_timeout_ms`) is for
    // requests; a table of a million rows is one statement here.
    client
        .batch_execute("SET statement_timeout = 0; SET idle_in_transaction_session_timeout = 0")
        .map_err(pg_err("PostgreSQL"))?;
    check_empty(client, &place)?;
    super::schema::migrate(&mut conn, false)?;

    let started = Instant::now();
    let client = conn.client();
    let mut tx = client.transaction().map_err(pg_err("PostgreSQL"))?;
    let mut total = 0u64;
    let copied = (|| {
        for table in TABLES {
            let n = copy_table(&sqlite, &mut tx, table)?;
            total += n;
            let _ = writeln!(progress, "copied {}: {} rows", table, n);
        }
        for table in TABLES {
            advance_identities(&sqlite, &mut tx, table)?;
        }
        Ok(())
    })();
    copied
        .and_then(|()| tx.commit().map_err(pg_err("commit")))
        .map_err(|e: String| {
            format!(
                "{}; no row was kept (the database holds the empty schema: run the command \
                 again once this is fixed)",
                e
            )
        })?;
    let _ = writeln!(
        progress,
        "committed {} rows into PostgreSQL ({}) in {:.1} s; verifying",
        total,
        place,
        started.elapsed().as_secs_f64()
    );

    let mut bad = Vec::new();
    for table in TABLES {
        let a = sqlite_digest(&sqlite, table)?;
        let b = postgres_digest(client, table)?;
        let line = if a == b {
            format!("{} rows={} hash=ok", table, a.rows)
        } else {
            bad.push(*table);
            format!(
                "{} rows={} hash=MISMATCH (PostgreSQL: rows={})",
                table, a.rows, b.rows
            )
        };
        writeln!(out, "{}", line).map_err(|e| format!("cannot write the report: {}", e))?;
    }
    if !bad.is_empty() {
        return Err(format!(
            "verification failed: {} differ between {} and PostgreSQL ({}); do not use that \
             database (drop it and copy again into a new one)",
            bad.join(", "),
            from.display(),
            place
        ));
    }
    Ok(())
}

/// Opens `path` read-only, starts the read transaction that every later
/// read shares, and checks that it holds this version's schema.
fn open_sqlite(path: &Path) -> Result<rusqlite::Connection, String> {
    use rusqlite::OpenFlags;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {}", shown, e))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", shown));
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| format!("cannot open {}: {}", shown, e))?;
    let err = |e: rusqlite::Error| format!("cannot read {}: {}", shown, e);
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    conn.execute_batch("BEGIN").map_err(err)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    let latest = crate::db::schema::LATEST;
    if version == 0 {
        return Err(format!("{} holds no portcullis database", shown));
    }
    if version < latest {
        return Err(format!(
            "{} has schema version {}, older than this portcullis's {}: start this portcullis \
             once on it (database.url empty) to upgrade it, then copy it",
            shown, version, latest
        ));
    }
    if version > latest {
        return Err(format!(
            "{} has schema version {}, newer than this portcullis knows ({}): copy it with the \
             portcullis that wrote it",
            shown, version, latest
        ));
    }
    // Every table but SQLite's own (`sqlite_sequence`).
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master \
              WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
        )
        .map_err(err)?;
    let names = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(err)?;
    drop(stmt);
    if let Some(extra) = names.iter().find(|n| !TABLES.contains(&n.as_str())) {
        return Err(format!(
            "{} holds a table `{}` that migrate-to-postgres does not know",
            shown, extra
        ));
    }
    if let Some(missing) = TABLES.iter().find(|t| !names.iter().any(|n| n == *t)) {
        return Err(format!("{} has no table `{}`", shown, missing));
    }
    Ok(conn)
}

/// Refuses a database that holds anything. One exception: portcullis's
/// own schema of this version with no row at all, which is what a copy
/// that failed after creating the schema leaves; copying again fills it.
fn check_empty(client: &mut postgres::Client, place: &str) -> Result<(), String> {
    let err = pg_err("PostgreSQL");
    let tables: Vec<String> = client
        .query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema() ORDER BY 1",
            &[],
        )
        .map_err(&err)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if tables.is_empty() {
        return Ok(());
    }
    let refuse = |why: String| {
        Err(format!(
            "the PostgreSQL database ({}) is not empty: {}; migrate-to-postgres copies into an \
             empty database only (create a new one, e.g. `CREATE DATABASE portcullis`)",
            place, why
        ))
    };
    let foreign: Vec<&str> = tables
        .iter()
        .map(String::as_str)
        .filter(|t| !TABLES.contains(t) && !PG_ONLY.contains(t))
        .collect();
    if !foreign.is_empty() {
        return refuse(format!("it holds the tables {}", foreign.join(", ")));
    }
    for t in tables.iter().filter(|t| *t != "schema_version") {
        let any: bool = client
            .query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", ident(t)), &[])
            .map_err(&err)?
            .get(0);
        if any {
            return refuse(format!("its table {} holds rows", t));
        }
    }
    let version: Option<i64> = if tables.iter().any(|t| t == "schema_version") {
        client
            .query_opt("SELECT version FROM schema_version", &[])
            .map_err(&err)?
            .map(|r| r.get(0))
    } else {
        None
    };
    if version != Some(super::schema::LATEST) {
        return refuse(format!(
            "it holds portcullis tables of another schema version ({})",
            version.map_or("none".into(), |v| v.to_string())
        ));
    }
    Ok(())
}

/// A value on its way between the stores (or into the hash), typed by its
/// column: NULL is `Int(None)` or `Text(None)`.
enum Cell<'a> {
    Int(Option<i64>),
    Text(Option<&'a str>),
}

impl Cell<'_> {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int(v) => v,
            Cell::Text(v) => v,
        }
    }

    /// The canonical form both digests hash: a type tag, then the value
    /// (integers as 8 bytes big-endian, texts length-prefixed).
    fn hash_into(&self, h: &mut ring::digest::Context) {
        match self {
            Cell::Int(None) | Cell::Text(None) => h.update(&[0]),
            Cell::Int(Some(v)) => {
                h.update(&[1]);
                h.update(&v.to_be_bytes());
            }
            Cell::Text(Some(s)) => {
                h.update(&[2]);
                h.update(&(s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
        }
    }
}

/// An SQLite value as a cell; `Err` names its storage class when it is one
/// the schema never stores (REAL, BLOB) or text that is not UTF-8.
fn sqlite_cell(v: ValueRef<'_>) -> Result<Cell<'_>, &'static str> {
    match v {
        ValueRef::Null => Ok(Cell::Int(None)),
        ValueRef::Integer(i) => Ok(Cell::Int(Some(i))),
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(|s| Cell::Text(Some(s)))
            .map_err(|_| "text that is not UTF-8"),
        ValueRef::Real(_) => Err("a REAL"),
        ValueRef::Blob(_) => Err("a BLOB"),
    }
}

/// The column types PostgreSQL has for what SQLite stores.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
}

fn kind_of(ty: &Type, table: &str, column: &str) -> Result<Kind, String> {
    if *ty == Type::INT8 {
        Ok(Kind::Int)
    } else if *ty == Type::TEXT {
        Ok(Kind::Text)
    } else {
        Err(format!(
            "{}.{} is {} in PostgreSQL, neither BIGINT nor TEXT",
            table, column, ty
        ))
    }
}

/// A table's columns in SQLite, in declaration order, and its primary key.
fn sqlite_columns(
    conn: &rusqlite::Connection,
    table: &str,
) -> Result<(Vec<String>, Vec<String>), String> {
    let err = |e: rusqlite::Error| format!("SQLite table {}: {}", table, e);
    let mut stmt = conn
        .prepare("SELECT name, pk FROM pragma_table_info(?1) ORDER BY cid")
        .map_err(err)?;
    let cols: Vec<(String, i64)> = stmt
        .query_map([table], |r| Ok((r.get(0)?, r.get(1)?)))
        .and_then(|rows| rows.collect())
        .map_err(err)?;
    if cols.is_empty() {
        return Err(format!("SQLite has no table {}", table));
    }
    let mut pk: Vec<&(String, i64)> = cols.iter().filter(|c| c.1 > 0).collect();
    pk.sort_by_key(|c| c.1);
    let pk: Vec<String> = pk.into_iter().map(|c| c.0.clone()).collect();
    if pk.is_empty() {
        return Err(format!("SQLite table {} has no primary key", table));
    }
    Ok((cols.into_iter().map(|c| c.0).collect(), pk))
}

/// A table's columns in PostgreSQL (name and type), in declaration order.
fn postgres_columns<C: postgres::GenericClient>(
    client: &mut C,
    table: &str,
) -> Result<Vec<(String, Type)>, String> {
    let stmt = client
        .prepare(&format!("SELECT * FROM {} LIMIT 0", ident(table)))
        .map_err(pg_err(format!("PostgreSQL table {}", table)))?;
    Ok(stmt
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect())
}

/// A table's primary key columns in PostgreSQL, in key order.
fn postgres_primary_key<C: postgres::GenericClient>(
    client: &mut C,
    table: &str,
) -> Result<Vec<String>, String> {
    let rows = client
        .query(
            "SELECT k.column_name::text
               FROM information_schema.table_constraints c
               JOIN information_schema.key_column_usage k
                 ON k.constraint_schema = c.constraint_schema
                AND k.constraint_name = c.constraint_name
              WHERE c.constraint_type = 'PRIMARY KEY'
                AND c.table_schema = current_schema()
                AND c.table_name = $1
              ORDER BY k.ordinal_position",
            &[&table],
        )
        .map_err(pg_err(format!("PostgreSQL table {}", table)))?;
    if rows.is_empty() {
        return Err(format!("PostgreSQL table {} has no primary key", table));
    }
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Copies one table in primary-key order; returns the rows copied.
fn copy_table(
    sqlite: &rusqlite::Connection,
    tx: &mut postgres::Transaction<'_>,
    table: &str,
) -> Result<u64, String> {
    let (columns, pk) = sqlite_columns(sqlite, table)?;
    let pg_columns = postgres_columns(tx, table)?;
    let mut kinds = Vec::with_capacity(columns.len());
    let mut types = Vec::with_capacity(columns.len());
    for c in &columns {
        let Some((_, ty)) = pg_columns.iter().find(|(n, _)| n == c) else {
            return Err(format!(
                "{}.{} exists in SQLite but not in PostgreSQL",
                table, c
            ));
        };
        kinds.push(kind_of(ty, table, c)?);
        types.push(ty.clone());
    }
    if let Some((extra, _)) = pg_columns.iter().find(|(n, _)| !columns.contains(n)) {
        return Err(format!(
            "{}.{} exists in PostgreSQL but not in SQLite",
            table, extra
        ));
    }

    let list = columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let order = pk.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    let copy_err = pg_err(format!("copying {}", table));
    let writer = tx
        .copy_in(&format!(
            "COPY {} ({}) FROM STDIN (FORMAT binary)",
            ident(table),
            list
        ))
        .map_err(&copy_err)?;
    let mut writer = postgres::binary_copy::BinaryCopyInWriter::new(writer, &types);

    let read_err = |e: rusqlite::Error| format!("reading {} from SQLite: {}", table, e);
    let mut stmt = sqlite
        .prepare(&format!(
            "SELECT {} FROM {} ORDER BY {}",
            list,
            ident(table),
            order
        ))
        .map_err(read_err)?;
    let mut rows = stmt.query([]).map_err(read_err)?;
    while let Some(row) = rows.next().map_err(read_err)? {
        let mut cells = Vec::with_capacity(columns.len());
        // Which row, for a message: its primary key.
        let at = || {
            let key: Vec<String> = pk
                .iter()
                .filter_map(|k| {
                    let i = columns.iter().position(|c| c == k)?;
                    Some(match row.get_ref(i).ok()? {
                        ValueRef::Integer(v) => format!("{} = {}", k, v),
                        ValueRef::Text(t) => format!("{} = {:?}", k, String::from_utf8_lossy(t)),
                        _ => format!("{} = ?", k),
                    })
                })
                .collect();
            key.join(", ")
        };
        for (i, kind) in kinds.iter().enumerate() {
            let cell = sqlite_cell(row.get_ref(i).map_err(read_err)?).map_err(|what| {
                format!("{}.{} holds {} (row {})", table, columns[i], what, at())
            })?;
            let cell = match (cell, kind) {
                (Cell::Int(None), Kind::Text) => Cell::Text(None),
                (c @ Cell::Int(_), Kind::Int) | (c @ Cell::Text(_), Kind::Text) => c,
                (_, kind) => {
                    return Err(format!(
                        "{}.{} holds {} where PostgreSQL has {} (row {})",
                        table,
                        columns[i],
                        if *kind == Kind::Int {
                            "text"
                        } else {
                            "an integer"
                        },
                        if *kind == Kind::Int { "BIGINT" } else { "TEXT" },
                        at(),
                    ))
                }
            };
            cells.push(cell);
        }
        let values: Vec<&(dyn ToSql + Sync)> = cells.iter().map(Cell::as_sql).collect();
        writer.write(&values).map_err(&copy_err)?;
    }
    writer.finish().map_err(&copy_err)
}

/// Moves the sequence of each identity column of `table` past the largest
/// value copied, and past the largest SQLite ever gave (`sqlite_sequence`:
/// AUTOINCREMENT never reuses the number of a deleted row, so neither does
/// the copy).
fn advance_identities(
    sqlite: &rusqlite::Connection,
    tx: &mut postgres::Transaction<'_>,
    table: &str,
) -> Result<(), String> {
    let given: i64 = sqlite
        .query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = ?1), 0)",
            [table],
            |r| r.get(0),
        )
        .map_err(|e| format!("reading the sequence of {} from SQLite: {}", table, e))?;
    let err = pg_err(format!("setting the sequences of {}", table));
    let identities = tx
        .query(
            "SELECT column_name::text FROM information_schema.columns
              WHERE table_schema = current_schema() AND table_name = $1 AND is_identity = 'YES'",
            &[&table],
        )
        .map_err(&err)?;
    for r in identities {
        let column: String = r.get(0);
        tx.query_one(
            &format!(
                "SELECT setval(pg_get_serial_sequence($1, $2), greatest(max({c}), $3) + 1, false) \
                   FROM {t}",
                c = ident(&column),
                t = ident(table)
            ),
            &[&ident(table), &column, &given],
        )
        .map_err(&err)?;
    }
    Ok(())
}

/// `table`'s digest in an SQLite database (in the connection's current
/// transaction, if any). Column names are hashed sorted, so the order in
/// which columns were added does not matter.
pub fn sqlite_digest(conn: &rusqlite::Connection, table: &str) -> Result<TableDigest, String> {
    let (mut columns, pk) = sqlite_columns(conn, table)?;
    columns.sort();
    let mut h = header(&columns);
    let list = columns
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let order = pk.iter().map(|c| ident(c)).collect::<Vec<_>>().join(", ");
    let err = |e: rusqlite::Error| format!("reading {} from SQLite: {}", table, e);
    let mut stmt = conn
        .prepare(&format!(
            "SELECT {} FROM {} ORDER BY {}",
            list,
            ident(table),
            order
        ))
        .map_err(err)?;
    let mut rows = stmt.query([]).map_err(err)?;
    let mut n = 0u64;
    while let Some(row) = rows.next().map_err(err)? {
        for (i, c) in columns.iter().enumerate() {
            sqlite_cell(row.get_ref(i).map_err(err)?)
                .map_err(|what| format!("{}.{} holds {}", table, c, what))?
                .hash_into(&mut h);
        }
        n += 1;
    }
    Ok(finish(n, h))
}

/// `table`'s digest in a PostgreSQL database, computed as `sqlite_digest`
/// does. Text keys are ordered by bytes (`COLLATE "C"`), as SQLite orders
/// them, whatever the database's collation.
pub fn postgres_digest(client: &mut postgres::Client, table: &str) -> Result<TableDigest, String> {
    let mut columns = postgres_columns(client, table)?;
    columns.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<String> = columns.iter().map(|c| c.0.clone()).collect();
    let kinds = columns
        .iter()
        .map(|(n, ty)| kind_of(ty, table, n))
        .collect::<Result<Vec<_>, _>>()?;
    let pk = postgres_primary_key(client, table)?;
    let order = pk
        .iter()
        .map(|c| match columns.iter().find(|(n, _)| n == c) {
            Some((_, ty)) if *ty == Type::TEXT => format!("{} COLLATE \"C\"", ident(c)),
            _ => ident(c),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let list = names
        .iter()
        .map(|c| ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let mut h = header(&names);
    let err = pg_err(format!("reading {} from PostgreSQL", table));
    let sql = format!("SELECT {} FROM {} ORDER BY {}", list, ident(table), order);
    let mut rows = client
        .query_raw(sql.as_str(), std::iter::empty::<&(dyn ToSql + Sync)>())
        .map_err(&err)?;
    let mut n = 0u64;
    use postgres::fallible_iterator::FallibleIterator;
    while let Some(row) = rows.next().map_err(&err)? {
        for (i, kind) in kinds.iter().enumerate() {
            let cell = match kind {
                Kind::Int => Cell::Int(row.try_get(i).map_err(&err)?),
                Kind::Text => Cell::Text(row.try_get(i).map_err(&err)?),
            };
            cell.hash_into(&mut h);
        }
        n += 1;
    }
    Ok(finish(n, h))
}

fn header(columns: &[String]) -> ring::digest::Context {
    let mut h = ring::digest::Context::new(&ring::digest::SHA256);
    for c in columns {
        h.update(c.as_bytes());
        h.update(&[0]);
    }
    h.update(&[0]);
    h
}

fn finish(rows: u64, h: ring::digest::Context) -> TableDigest {
    let mut sha256 = [0u8; 32];
    sha256.copy_from_slice(h.finish().as_ref());
    TableDigest { rows, sha256 }
}

/// `name` as a quoted identifier (the same syntax in SQLite and
/// PostgreSQL).
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Where the database is, for messages: host and database name, never the
/// URL (it may hold a password).
fn describe(config: &postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let db = config
        .get_dbname()
        .or(config.get_user())
        .unwrap_or("postgres");
    format!("database {} on {}", db, host)
}

/// Formats a driver error with what was being done: the server's message
/// and detail when it sent one.
fn pg_err(what: impl std::fmt::Display) -> impl Fn(postgres::Error) -> String {
    move |e| match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{}: {} ({})", what, db.message(), d),
            None => format!("{}: {}", what, db.message()),
        },
        // No server message: the connection broke, or a value did not
        // convert. The driver's text never holds the URL.
        None => format!("{}: {}", what, e),
    }
}
