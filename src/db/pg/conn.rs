//! Connections to PostgreSQL: the URL (with `sslmode`), TLS through rustls,
//! a fixed-size pool (Mutex + Condvar, as `db::pool`), a per-connection
//! cache of prepared statements, and the sorting of errors into
//! `StoreError`.
//!
//! Bounded waits: a checkout waits at most `checkout_timeout_ms`; opening a
//! connection (TCP, TLS, authentication) at most as long; and each session
//! runs with `statement_timeout` set, so the server cancels a statement
//! that outlives `statement_timeout_ms` (a lock wait included). A
//! connection that broke (server restarted, network cut) is dropped when
//! it comes back and a fresh one is opened by the next checkout.
//!
//! The URL holds a password: it is never logged; errors name the host only.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use postgres::error::SqlState;
use postgres::{Client, Statement};
use rustls::pki_types::pem::PemObject;

use crate::config::DatabaseConfig;
use crate::db::StoreError;

/// How TLS is used (`sslmode` in the URL; libpq's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, certificate not verified (libpq's
    /// default; as libpq, it protects against passive listeners only).
    Prefer,
    /// TLS always, certificate not verified (libpq's `require`).
    Require,
    /// TLS always, the certificate verified against the roots
    /// (`sslrootcert=FILE`, else the Mozilla roots) and the host name.
    /// `verify-ca` means the same here: rustls always checks the name,
    /// which is stricter than libpq's `verify-ca`, never looser.
    VerifyFull,
}

/// A parsed `database.url`: the driver's config without the TLS parameters
/// the driver does not know, and those parameters.
pub struct Target {
    pub config: postgres::Config,
    pub ssl: SslMode,
    pub root_cert: Option<std::path::PathBuf>,
}

/// Parses `url`; errors never repeat it (it may hold a password).
pub fn parse_url(url: &str) -> Result<Target, String> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut ssl = SslMode::Prefer;
    let mut root_cert = None;
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                ssl = match v {
                    "disable" => SslMode::Disable,
                    "allow" | "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" | "verify-full" => SslMode::VerifyFull,
                    _ => {
                        return Err(format!(
                            "database.url: sslmode {:?} is not one of disable, prefer, require, verify-ca, verify-full",
                            v
                        ))
                    }
                }
            }
            "sslrootcert" => root_cert = Some(std::path::PathBuf::from(v)),
            _ => rest.push(pair),
        }
    }
    let cleaned = if rest.is_empty() {
        base.to_string()
    } else {
        format!("{}?{}", base, rest.join("&"))
    };
    if !(cleaned.starts_with("postgres://") || cleaned.starts_with("postgresql://")) {
        return Err("database.url: must start with postgres:// (or be empty for SQLite)".into());
    }
    let mut config = postgres::Config::from_str(&cleaned)
        .map_err(|e| format!("database.url is not a PostgreSQL URL: {}", e))?;
    config.ssl_mode(match ssl {
        SslMode::Disable => postgres::config::SslMode::Disable,
        SslMode::Prefer => postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyFull => postgres::config::SslMode::Require,
    });
    Ok(Target {
        config,
        ssl,
        root_cert,
    })
}

/// The TLS connector for `ssl` (None: plain TCP).
fn tls_for(t: &Target) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {}", e))?;
    let config = match t.ssl {
        SslMode::Disable => return Ok(None),
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth(),
        SslMode::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            match &t.root_cert {
                Some(path) => {
                    let pem = std::fs::read(path).map_err(|e| {
                        format!("database.url: sslrootcert {}: {}", path.display(), e)
                    })?;
                    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| format!("sslrootcert {}: {:?}", path.display(), e))?;
                    for c in certs {
                        roots
                            .add(c)
                            .map_err(|e| format!("sslrootcert {}: {}", path.display(), e))?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

/// `sslmode=prefer`/`require`: encryption without authentication of the
/// server, as libpq does (signatures are still checked, so the handshake
/// is sound; only the certificate's chain and name are not).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Sorts a driver error into what a caller can act on. A server that
/// cannot be reached or went away is `Unavailable`; a statement cancelled
/// by `statement_timeout`, a lock or serialization conflict is `Busy`; both
/// are 503 `server_busy` on the request path.
pub fn store_error(e: postgres::Error) -> StoreError {
    if e.is_closed() {
        return StoreError::Unavailable;
    }
    match e.code() {
        Some(c) if *c == SqlState::QUERY_CANCELED => StoreError::Busy,
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED
                || *c == SqlState::LOCK_NOT_AVAILABLE =>
        {
            StoreError::Busy
        }
        Some(c) if *c == SqlState::DISK_FULL => StoreError::DiskFull,
        Some(c)
            if *c == SqlState::TOO_MANY_CONNECTIONS
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::READ_ONLY_SQL_TRANSACTION =>
        {
            StoreError::Unavailable
        }
        Some(_) => StoreError::internal(format!("database: {}", e)),
        // No SQL state: an I/O or protocol failure (the connection is gone).
        None => StoreError::Unavailable,
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> StoreError {
        store_error(e)
    }
}

/// Prepared statements of one connection, by their text's address (every
/// statement is a `&'static str`): each is parsed by the server once per
/// connection, not once per call.
#[derive(Default)]
pub struct Statements(HashMap<usize, Statement>);

impl Statements {
    /// The prepared form of `sql` on `client` (a transaction or the client).
    pub fn get<C: postgres::GenericClient>(
        &mut self,
        client: &mut C,
        sql: &'static str,
    ) -> Result<Statement, StoreError> {
        let k = sql.as_ptr() as usize;
        if let Some(s) = self.0.get(&k) {
            return Ok(s.clone());
        }
        let s = client.prepare(sql)?;
        self.0.insert(k, s.clone());
        Ok(s)
    }
}

struct Slot {
    client: Client,
    statements: Statements,
    opened: Instant,
}

struct State {
    idle: Vec<Slot>,
    /// Connections open or being opened (idle + checked out).
    open: usize,
}

struct Inner {
    config: postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    size: usize,
    checkout_timeout: Duration,
    max_age: Duration,
    state: Mutex<State>,
    available: Condvar,
    waits: AtomicU64,
    timeouts: AtomicU64,
    in_use: AtomicUsize,
}

/// Cheap to clone: all clones share one pool.
#[derive(Clone)]
pub struct PgPool {
    inner: Arc<Inner>,
}

impl PgPool {
    /// Parses the URL and readies the pool; connections open on demand.
    pub fn open(cfg: &DatabaseConfig, size: usize) -> Result<PgPool, String> {
        let mut target = parse_url(&cfg.url)?;
        let tls = tls_for(&target)?;
        let statement_ms = cfg.statement_timeout.as_millis().max(1);
        target
            .config
            .connect_timeout(cfg.checkout_timeout.max(Duration::from_millis(100)))
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .application_name("portcullis")
            // Bounds every statement, lock waits included, and ends a
            // transaction left idle by a stuck caller.
            .options(&format!(
                "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
                statement_ms,
                statement_ms.saturating_mul(2)
            ));
        Ok(PgPool {
            inner: Arc::new(Inner {
                config: target.config,
                tls,
                size: size.max(1),
                checkout_timeout: cfg.checkout_timeout,
                max_age: cfg.max_connection_age,
                state: Mutex::new(State {
                    idle: Vec::new(),
                    open: 0,
                }),
                available: Condvar::new(),
                waits: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                in_use: AtomicUsize::new(0),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self) -> Result<PgConn, StoreError> {
        self.get_within(self.inner.checkout_timeout)
    }

    /// A connection within `wait`: an idle one, else a new one while fewer
    /// than `size` are open, else the first one given back.
    pub fn get_within(&self, wait: Duration) -> Result<PgConn, StoreError> {
        let deadline = Instant::now() + wait;
        let mut st = self.lock();
        let mut waited = false;
        loop {
            while let Some(slot) = st.idle.pop() {
                if slot.opened.elapsed() < self.inner.max_age && !slot.client.is_closed() {
                    drop(st);
                    return Ok(self.hand_out(slot));
                }
                st.open -= 1;
            }
            if st.open < self.inner.size {
                st.open += 1;
                drop(st);
                return match self.connect() {
                    Ok(slot) => Ok(self.hand_out(slot)),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.inner.available.notify_one();
                        Err(e)
                    }
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.inner.timeouts.fetch_add(1, Ordering::Relaxed);
                return Err(StoreError::PoolExhausted);
            }
            if !waited {
                waited = true;
                self.inner.waits.fetch_add(1, Ordering::Relaxed);
            }
            st = self
                .inner
                .available
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn connect(&self) -> Result<Slot, StoreError> {
        let r = match &self.inner.tls {
            None => self.inner.config.connect(postgres::NoTls),
            Some(tls) => self.inner.config.connect(tls.clone()),
        };
        let client = r.map_err(|e| {
            crate::logging::warn(
                "database: cannot connect to PostgreSQL",
                &[("error", serde_json::json!(e.to_string()))],
            );
            match store_error(e) {
                StoreError::Internal { .. } => StoreError::Unavailable,
                other => other,
            }
        })?;
        Ok(Slot {
            client,
            statements: Statements::default(),
            opened: Instant::now(),
        })
    }

    fn hand_out(&self, slot: Slot) -> PgConn {
        self.inner.in_use.fetch_add(1, Ordering::Relaxed);
        PgConn {
            slot: Some(slot),
            pool: self.clone(),
            broken: false,
        }
    }

    fn give_back(&self, slot: Option<Slot>) {
        self.inner.in_use.fetch_sub(1, Ordering::Relaxed);
        let mut st = self.lock();
        match slot {
            Some(s) if !s.client.is_closed() => st.idle.push(s),
            _ => st.open -= 1,
        }
        drop(st);
        self.inner.available.notify_one();
    }

    /// (checkouts that waited, checkouts that timed out), for metrics.
    pub fn wait_counts(&self) -> (u64, u64) {
        (
            self.inner.waits.load(Ordering::Relaxed),
            self.inner.timeouts.load(Ordering::Relaxed),
        )
    }

    /// Connections checked out now.
    pub fn in_use(&self) -> usize {
        self.inner.in_use.load(Ordering::Relaxed)
    }
}

/// A checked-out connection; `Drop` gives it back (or, when it broke,
/// frees its place for a fresh one).
pub struct PgConn {
    slot: Option<Slot>,
    pool: PgPool,
    broken: bool,
}

impl PgConn {
    fn slot(&mut self) -> &mut Slot {
        self.slot
            .as_mut()
            .expect("a PgConn holds its slot until dropped")
    }

    pub fn client(&mut self) -> &mut Client {
        &mut self.slot().client
    }

    /// The client and its statement cache.
    pub fn parts(&mut self) -> (&mut Client, &mut Statements) {
        let s = self.slot();
        (&mut s.client, &mut s.statements)
    }

    /// Closes this connection instead of giving it back.
    pub fn discard(&mut self) {
        self.broken = true;
    }

    /// After `e`: a connection that may be in an unknown state is not
    /// given back.
    pub fn discard_if_broken(&mut self, e: &StoreError) {
        if matches!(e, StoreError::Unavailable | StoreError::Internal { .. }) {
            self.broken = true;
        }
    }

    /// Runs `f` in a transaction, committed when it returns Ok.
    pub fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut postgres::Transaction<'_>, &mut Statements) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let r = (|| {
            let (client, statements) = self.parts();
            let mut tx = client.transaction()?;
            let out = f(&mut tx, statements)?;
            tx.commit()?;
            Ok(out)
        })();
        if let Err(e) = &r {
            self.discard_if_broken(e);
        }
        r
    }

    /// Runs `f` on the connection (reads), marking it broken on failure.
    pub fn run<T>(
        &mut self,
        f: impl FnOnce(&mut Client, &mut Statements) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let (client, statements) = self.parts();
        let r = f(client, statements);
        if let Err(e) = &r {
            self.discard_if_broken(e);
        }
        r
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        let slot = self.slot.take();
        let keep = !self.broken && !std::thread::panicking();
        self.pool.give_back(if keep { slot } else { None });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_keep_their_tls_mode_and_never_echo_a_password() {
        let t = parse_url(
            "postgres://u:secret@db.example:5433/app?sslmode=verify-full&application_name=x",
        )
        .unwrap();
        assert_eq!(t.ssl, SslMode::VerifyFull);
        assert_eq!(parse_url("postgres://u@h/d").unwrap().ssl, SslMode::Prefer);
        assert_eq!(
            parse_url("postgres://u@h/d?sslmode=disable").unwrap().ssl,
            SslMode::Disable
        );
        for bad in [
            "postgres://u:secret@h/d?sslmode=sometimes",
            "mysql://u:secret@h/d",
        ] {
            let e = parse_url(bad).err().unwrap();
            assert!(!e.contains("secret"), "{}", e);
        }
    }
}
