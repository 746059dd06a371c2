//! A real PostgreSQL server, started by the test itself (issue 18: the
//! shared store). Tests talk to a real PostgreSQL over TCP rather than to a
//! mock, so the driver, the pool, the SQL and the failure paths (server
//! gone, server back) are the ones production runs.
//!
//! Each server is a throwaway cluster: `initdb` into a temp dir (trust
//! auth, user `postgres`, UTF8, C locale, no fsync), then `pg_ctl start` on
//! a free loopback port with its Unix socket in the same temp dir, so
//! servers of parallel test binaries never meet. No sleeps: `pg_ctl -w`
//! returns once the server accepts connections.
//!
//! Use: `PgServer::shared()` (one server per test binary, started on first
//! use) and `create_database` per test, so tests stay independent. A test
//! that stops the server (`stop` / `start_again`) must start its own with
//! `PgServer::start()`, or it would pull the shared one from under the
//! other tests of its binary.
//!
//! Missing binaries: the test prints a notice and skips (`None`); under
//! `CI=true` it panics instead (`.ci/run` installs Debian's `postgresql`).
//!
//! Root: `initdb` and `postgres` refuse to run as root, and tests (and CI)
//! do. Then every PostgreSQL command runs as the unprivileged `postgres`
//! user Debian's package creates (else `nobody`): the child process drops to
//! that uid/gid (and clears supplementary groups) between fork and exec
//! (`CommandExt::uid`/`gid`, no `runuser`/`su`, no PAM), with its working
//! directory and `HOME` in the temp dir, which is chowned to that user.
//!
//! Clean-up: each server gets a watchdog (`sh`, running as the same user,
//! in its own process group so a terminal's Ctrl-C does not reach it) that
//! blocks reading a pipe whose only write end this process holds. When the
//! test process ends, however it ends (normal exit, panic, SIGKILL), the
//! kernel closes that end, the watchdog reads EOF, runs `pg_ctl stop -m
//! immediate` and removes the temp dir. This is what stops the `shared`
//! server (statics are never dropped), and it also covers a killed test;
//! a non-static `PgServer` stops at once in `Drop`. Nothing polls.

use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::TempDir;

/// The unprivileged user PostgreSQL runs as when the tests run as root.
#[derive(Clone, Debug)]
struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
}

/// Paths of the PostgreSQL programs used.
#[derive(Clone, Debug)]
struct Bins {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    psql: PathBuf,
}

pub struct PgServer {
    port: u16,
    /// Temp dir: `data/` (the cluster), `log`, and the Unix socket.
    dir: TempDir,
    bins: Bins,
    run_as: Option<RunAs>,
    /// Write end of the watchdog's stdin pipe; dropping it (or the process
    /// ending) makes the watchdog stop the server and remove `dir`.
    watchdog: Mutex<Option<(Child, ChildStdin)>>,
}

/// Port collisions tolerated at start (another process took the free port
/// between our probe and the postmaster's bind).
const START_ATTEMPTS: usize = 3;

impl PgServer {
    /// The server shared by every test of this test binary, started on
    /// first use; `None` when PostgreSQL is not installed (outside CI).
    /// Stopped by its watchdog when the test process exits.
    pub fn shared() -> Option<&'static PgServer> {
        static SHARED: OnceLock<Option<PgServer>> = OnceLock::new();
        SHARED.get_or_init(PgServer::start).as_ref()
    }

    /// Starts a new server of its own; `None` when PostgreSQL is not
    /// installed (panics instead under `CI=true`).
    pub fn start() -> Option<PgServer> {
        let bins = match find_bins() {
            Some(b) => b,
            None => {
                if std::env::var("CI").as_deref() == Ok("true") {
                    panic!(
                        "PostgreSQL (initdb, pg_ctl, psql) not found in /usr/lib/postgresql/*/bin \
                         or PATH; CI must install it (apt-get install postgresql, see .ci/run)"
                    );
                }
                eprintln!("skipping: PostgreSQL (initdb, pg_ctl) not installed; apt-get install postgresql");
                return None;
            }
        };
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(unprivileged_user().expect(
                "running as root, and neither a `postgres` nor a `nobody` user exists \
                 to run PostgreSQL as (initdb and postgres refuse root)",
            ))
        } else {
            None
        };

        let dir = temp_dir_for(run_as.as_ref());
        if let Some(u) = &run_as {
            std::os::unix::fs::chown(dir.path(), Some(u.uid), Some(u.gid))
                .expect("chown the PostgreSQL temp dir");
        }
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();

        let mut server = PgServer {
            port: 0,
            dir,
            bins,
            run_as,
            watchdog: Mutex::new(None),
        };
        // The watchdog first: from here on, whatever happens to this
        // process, the cluster does not outlive it.
        server.spawn_watchdog();

        let out = server
            .cmd(&server.bins.initdb)
            .arg("-D")
            .arg(server.data_dir())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .args(["--locale=C", "--no-sync"])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let mut last_err = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            match server.pg_ctl_start() {
                Ok(()) => return Some(server),
                Err(e) => {
                    let collided = e.contains("already in use")
                        || e.contains("could not bind")
                        || e.contains("could not create any TCP/IP sockets");
                    last_err = e;
                    if !collided {
                        break;
                    }
                }
            }
        }
        panic!("PostgreSQL did not start: {}", last_err);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:PORT/DB` (trust auth: no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, db)
    }

    /// Creates a fresh, empty database `name` (letters, digits, `_`) and
    /// returns its URL. Panics if it exists already.
    pub fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty()
                && name.len() <= 63
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "database name {:?}: use letters, digits and _ (at most 63)",
            name
        );
        self.psql("postgres", &format!("CREATE DATABASE \"{}\"", name));
        self.url(name)
    }

    /// Runs `sql` in database `db` with `psql -At` and returns its standard
    /// output, trimmed. Panics on any error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        self.try_psql(db, sql)
            .unwrap_or_else(|e| panic!("psql -d {} -c {:?} failed: {}", db, sql, e))
    }

    /// As `psql`, but an error (server down, bad SQL) is returned as its
    /// message.
    pub fn try_psql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = self
            .cmd(&self.bins.psql)
            // -X: no ~/.psqlrc; -A -t: bare values; stop at the first error.
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .map_err(|e| format!("run psql: {}", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Stops the server (`pg_ctl stop -m fast`: open connections are
    /// closed, clients see it gone). Returns once it is down.
    pub fn stop(&self) {
        let out = self
            .cmd(&self.bins.pg_ctl)
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output()
            .expect("run pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server again after `stop`, on the same port and data.
    /// Returns once it accepts connections.
    pub fn start_again(&self) {
        if let Err(e) = self.pg_ctl_start() {
            panic!(
                "PostgreSQL did not start again on port {}: {}",
                self.port, e
            );
        }
    }

    /// Restarts the server with TLS required on TCP (a self-signed
    /// certificate for 127.0.0.1 made with `openssl`; `hostnossl` refused)
    /// and returns its CA's certificate, for `sslrootcert`.
    pub fn require_tls(&self) -> PathBuf {
        let data = self.data_dir();
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        // A CA of its own and a server certificate it signs (a self-signed
        // certificate marked CA cannot be the server's own under webpki).
        let ca = self.dir.path().join("ca.crt");
        let ca_key = self.dir.path().join("ca.key");
        let csr = self.dir.path().join("server.csr");
        let ext = self.dir.path().join("server.ext");
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        let openssl = |args: &[&std::ffi::OsStr]| {
            let out = Command::new("openssl")
                .args(args)
                .output()
                .expect("run openssl");
            assert!(
                out.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let os = |s: &str| std::ffi::OsStr::new(s).to_owned();
        openssl(&[
            &os("req"),
            &os("-x509"),
            &os("-newkey"),
            &os("rsa:2048"),
            &os("-nodes"),
            &os("-days"),
            &os("2"),
            &os("-subj"),
            &os("/CN=portcullis test CA"),
            &os("-keyout"),
            ca_key.as_os_str(),
            &os("-out"),
            ca.as_os_str(),
        ]);
        openssl(&[
            &os("req"),
            &os("-newkey"),
            &os("rsa:2048"),
            &os("-nodes"),
            &os("-subj"),
            &os("/CN=127.0.0.1"),
            &os("-keyout"),
            key.as_os_str(),
            &os("-out"),
            csr.as_os_str(),
        ]);
        openssl(&[
            &os("x509"),
            &os("-req"),
            &os("-in"),
            csr.as_os_str(),
            &os("-CA"),
            ca.as_os_str(),
            &os("-CAkey"),
            ca_key.as_os_str(),
            &os("-CAcreateserial"),
            &os("-days"),
            &os("2"),
            &os("-extfile"),
            ext.as_os_str(),
            &os("-out"),
            cert.as_os_str(),
        ]);
        for f in [&cert, &key] {
            std::fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
            if let Some(u) = &self.run_as {
                std::os::unix::fs::chown(f, Some(u.uid), Some(u.gid)).unwrap();
            }
        }
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut conf, b"\nssl = on\n").unwrap();
        let hba = "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostnossl all all 127.0.0.1/32 reject\n";
        std::fs::write(data.join("pg_hba.conf"), hba).unwrap();
        self.stop();
        self.start_again();
        ca
    }

    /// The server's log (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `pg_ctl start -w` on `self.port`; on failure, pg_ctl's output and the
    /// server log's tail.
    fn pg_ctl_start(&self) -> Result<(), String> {
        // pg_ctl hands `-o` to `sh -c "exec postgres ..."`: quote the path.
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k '{}' -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let out = self
            .cmd(&self.bins.pg_ctl)
            .arg("-D")
            .arg(self.data_dir())
            .args(["-o", &opts, "-w", "-t", "60", "-l"])
            .arg(&log)
            .arg("start")
            .output()
            .map_err(|e| format!("run pg_ctl: {}", e))?;
        if out.status.success() {
            return Ok(());
        }
        let text = std::fs::read(&log).unwrap_or_default();
        let new = String::from_utf8_lossy(&text[(before as usize).min(text.len())..]);
        Err(format!(
            "pg_ctl start ({}): {}{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            new
        ))
    }

    /// A command for a PostgreSQL program: as the unprivileged user when we
    /// are root, in the temp dir, with a neutral locale.
    fn cmd(&self, program: &Path) -> Command {
        let mut c = Command::new(program);
        c.current_dir(self.dir.path())
            .env("LC_ALL", "C")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS")
            .stdin(Stdio::null());
        if let Some(u) = &self.run_as {
            // Root's HOME is not readable by that user.
            c.env("HOME", self.dir.path())
                .env("USER", &u.name)
                .env("LOGNAME", &u.name)
                .gid(u.gid)
                .uid(u.uid);
        }
        c
    }

    /// See the module doc: stops the server and removes the temp dir when
    /// the write end of its stdin closes.
    fn spawn_watchdog(&mut self) {
        let keep = std::env::var_os("PORTCULLIS_KEEP_TEST_DIRS").is_some();
        let script = "trap '' INT HUP; cat >/dev/null; \
             \"$0\" -D \"$1/data\" -m immediate -w stop >/dev/null 2>&1; \
             [ \"$2\" = keep ] || rm -rf \"$1\"";
        let mut c = self.cmd(Path::new("/bin/sh"));
        c.arg("-c")
            .arg(script)
            .arg(&self.bins.pg_ctl)
            .arg(self.dir.path())
            .arg(if keep { "keep" } else { "remove" })
            .stdin(Stdio::piped())
            // Not the test's stdout/stderr: a pipe reader (`cargo test |
            // tee`) must not wait for the watchdog.
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        let mut child = c.spawn().expect("spawn the PostgreSQL watchdog (/bin/sh)");
        let stdin = child.stdin.take().unwrap();
        *self.watchdog.lock().unwrap() = Some((child, stdin));
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Stop now rather than at process exit; the watchdog then finds it
        // stopped and removes the dir (TempDir's drop too: either wins).
        let _ = self
            .cmd(&self.bins.pg_ctl)
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some((mut child, mut stdin)) = self.watchdog.lock().unwrap().take() {
            let _ = stdin.flush();
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// initdb, pg_ctl and psql: from the highest `/usr/lib/postgresql/N/bin`
/// that has all three (Debian), else from PATH.
fn find_bins() -> Option<Bins> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    for (_, bin) in versions {
        let b = Bins {
            initdb: bin.join("initdb"),
            pg_ctl: bin.join("pg_ctl"),
            psql: bin.join("psql"),
        };
        if is_executable(&b.initdb) && is_executable(&b.pg_ctl) && is_executable(&b.psql) {
            return Some(b);
        }
    }
    Some(Bins {
        initdb: in_path("initdb")?,
        pg_ctl: in_path("pg_ctl")?,
        psql: in_path("psql")?,
    })
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `postgres` (Debian's package creates it), else `nobody`.
fn unprivileged_user() -> Option<RunAs> {
    ["postgres", "nobody"].iter().find_map(|name| {
        let cname = std::ffi::CString::new(*name).unwrap();
        // SAFETY: getpwnam returns NULL or a pointer to static storage,
        // read at once; tests call this before spawning PostgreSQL, and a
        // concurrent getpwnam in another test thread could only overwrite
        // it with another valid entry.
        let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
        if pw.is_null() {
            return None;
        }
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        (uid != 0).then(|| RunAs {
            name: name.to_string(),
            uid,
            gid,
        })
    })
}

/// A temp dir the PostgreSQL user can reach: under the usual temp dir,
/// unless (as root) one of its ancestors is closed to others (`TMPDIR`
/// under /root), then under /tmp.
fn temp_dir_for(run_as: Option<&RunAs>) -> TempDir {
    let dir = TempDir::new("pg");
    if run_as.is_none() {
        return dir;
    }
    let reachable = dir
        .path()
        .ancestors()
        .skip(1)
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0));
    if reachable {
        return dir;
    }
    drop(dir);
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let p = PathBuf::from("/tmp").join(format!("portcullis-pg-{}-{:x}", std::process::id(), n));
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

/// A loopback port free right now (bound, read, released).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}
