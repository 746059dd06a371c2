//! The PostgreSQL test harness itself (tests/support/pg.rs): a real server
//! starts, databases are separate, and a stopped server comes back.

mod support;

use support::pg::PgServer;

#[test]
fn shared_server_databases_are_separate() {
    let Some(pg) = PgServer::shared() else { return };
    let a = pg.create_database("harness_a");
    let b = pg.create_database("harness_b");
    assert_eq!(
        a,
        format!("postgres://postgres@127.0.0.1:{}/harness_a", pg.port())
    );
    assert_eq!(b, pg.url("harness_b"));
    assert_eq!(pg.psql("harness_a", "SELECT 1"), "1");
    pg.psql(
        "harness_a",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (7)",
    );
    assert_eq!(pg.psql("harness_a", "SELECT x FROM t"), "7");
    // A fresh database is empty.
    assert_eq!(
        pg.psql(
            "harness_b",
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );
    assert!(pg.try_psql("harness_a", "SELEC 1").is_err());
}

#[test]
fn own_server_stops_and_starts_again() {
    let Some(pg) = PgServer::start() else { return };
    pg.create_database("harness_c");
    pg.psql(
        "harness_c",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1)",
    );
    pg.stop();
    let e = pg.try_psql("harness_c", "SELECT 1").unwrap_err();
    assert!(e.contains("127.0.0.1") || e.contains("connect"), "{}", e);
    pg.start_again();
    // Same port, same data.
    assert_eq!(pg.psql("harness_c", "SELECT x FROM t"), "1");
}
