//! API keys. Every key belongs to a user (`user_id`), may expire
//! (`expires_at`) and may carry a model allowlist (`models`). A key is
//! `pcs_` + 48 hex characters (192 random bits from the
//! OS CSPRNG); it is shown once when created and only its SHA-256 (hex) is
//! stored, under a UNIQUE index that the auth filter looks it up by. The
//! `prefix` column keeps the first characters so an operator can tell keys
//! apart in `keys list` without the key itself.
//!
//! Valid keys are cached in memory (`KeyCache`), so an authenticated
//! request does not query SQLite. Every key change, here or from the
//! command line in another process, rewrites the key stamp beside the
//! database, and each lookup drops the cache when the stamp changed, so a
//! revoked key is still refused on its very next request. Unknown and
//! revoked keys always reach the database (one indexed read).

use super::Cached;
use std::path::{Path, PathBuf};

use rusqlite::{params, OptionalExtension};
use serde_json::json;

use super::audit_log::{self, Actor, AuditEvent};
use super::reads::{Arg, Reach, Read};
use super::users::{Owner, Principal, Role};
use super::{Sqlite, StoreError};
use crate::secret::Secret;

pub const KEY_PREFIX: &str = "pcs_";
/// Random bytes per key: 192 bits, hex-encoded to 48 characters.
const KEY_RANDOM_BYTES: usize = 24;
const KEY_HEX_CHARS: usize = KEY_RANDOM_BYTES * 2;
/// Characters of the key kept for display (`pcs_` + 8 hex: 32 bits, too
/// few to help guessing the other 160).
const DISPLAY_PREFIX_CHARS: usize = KEY_PREFIX.len() + 8;
pub const NAME_MAX_CHARS: usize = 100;

const INSERT: &str =
    "INSERT INTO api_keys (id, name, prefix, hash, created_at, user_id, expires_at, models)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
/// Whether any key exists: one step, however many there are.
const ANY: &str = "SELECT 1 FROM api_keys LIMIT 1";
macro_rules! columns {
    () => {
        "id, name, prefix, created_at, revoked_at, user_id, expires_at, models"
    };
}
const LIST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM api_keys ORDER BY created_at, id"
);
/// One user's keys (at most `MAX_LISTED`).
const LIST_OF_USER: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM api_keys WHERE user_id = ?1 ORDER BY created_at, id LIMIT ?2"
);
const REVOKED_AT: &str = "SELECT revoked_at, user_id FROM api_keys WHERE id = ?1";
/// The auth filter's lookup, by the UNIQUE index on `hash`, with the
/// key's user.
const BY_HASH: &str = "SELECT k.id, k.hash, k.revoked_at, k.expires_at, k.models,
            u.id, u.name, u.role, u.disabled
     FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.hash = ?1";
/// Keys listed for one user at most (more are never needed in a page).
pub const MAX_LISTED: i64 = 1000;

/// The reads above, for tests/query_plans.rs (`db::reads`).
pub const READS: &[Read] = &[
    Read::bounded("keys::any", ANY, &[]),
    Read {
        name: "keys::list",
        sql: LIST,
        args: &[],
        // `portcullis keys list` prints every key, by design.
        reach: Reach::EveryRow,
    },
    Read::bounded(
        "keys::list_of_user",
        LIST_OF_USER,
        &[Arg::UserId, Arg::Limit],
    ),
    Read::bounded("keys::revoked_at", REVOKED_AT, &[Arg::KeyId]),
    Read::bounded("keys::by_hash", BY_HASH, &[Arg::KeyHash]),
];

/// A stored key, without its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKey {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    pub user_id: String,
    pub expires_at: Option<i64>,
    pub models: Option<Vec<String>>,
}

impl ApiKey {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "user_id": self.user_id,
            "created_at": crate::time::format_millis(self.created_at),
            "expires_at": self.expires_at.map(crate::time::format_millis),
            "revoked_at": self.revoked_at.map(crate::time::format_millis),
            "models": self.models,
        })
    }
}

fn key_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiKey> {
    let models: Option<String> = r.get(7)?;
    Ok(ApiKey {
        id: r.get(0)?,
        name: r.get(1)?,
        prefix: r.get(2)?,
        created_at: r.get(3)?,
        revoked_at: r.get(4)?,
        user_id: r.get::<_, Option<String>>(5)?.unwrap_or_default(),
        expires_at: r.get(6)?,
        models: models.and_then(|m| serde_json::from_str(&m).ok()),
    })
}

/// What a valid key grants: its user, and the models it may use (None:
/// any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub key_id: String,
    pub principal: Principal,
    pub models: Option<Vec<String>>,
    pub expires_at: Option<i64>,
}

/// What a presented key turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyLookup {
    Valid(Grant),
    Revoked {
        id: String,
    },
    /// Past its `expires_at` (401, as a revoked key).
    Expired {
        id: String,
    },
    /// Its user is disabled (403 `forbidden`).
    Disabled {
        id: String,
    },
    Unknown,
}

/// What a new key is.
#[derive(Clone, Debug, Default)]
pub struct NewKey<'a> {
    pub name: &'a str,
    pub user_id: &'a str,
    pub expires_at: Option<i64>,
    pub models: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revoke {
    Revoked,
    AlreadyRevoked,
    NotFound,
}

/// SHA-256 of the key's text, as lower-case hex.
pub fn hash_key(key: &str) -> String {
    crate::ids::hex(ring::digest::digest(&ring::digest::SHA256, key.as_bytes()).as_ref())
}

/// Whether `s` has the shape of a portcullis key (checked before any
/// database work, so junk costs nothing).
pub fn well_formed(s: &str) -> bool {
    s.strip_prefix(KEY_PREFIX).is_some_and(|hex| {
        hex.len() == KEY_HEX_CHARS
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn new_key() -> Secret {
    Secret::new(format!(
        "{}{}",
        KEY_PREFIX,
        crate::ids::random_hex(KEY_RANDOM_BYTES)
    ))
}

/// A key name: 1..100 characters, no control characters.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let n = name.chars().count();
    if n == 0 || n > NAME_MAX_CHARS || name.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            "name",
            format!(
                "must be 1 to {} characters without control characters",
                NAME_MAX_CHARS
            ),
        ));
    }
    Ok(())
}

/// Creates a key on `tx` (inside the caller's transaction) and its
/// `key_created` audit row; the secret is returned once and never stored.
/// The caller bumps the key stamp after the commit (`KeyCache::bump_stamp`).
/// Public for `examples/bulk_load.rs`, which stores keys exactly as this.
/// A new key for `new`: the row to store (with the hash of the secret and
/// the models as JSON text) and the secret, shown once. Both stores call it.
pub(crate) fn mint_key(
    new: &NewKey<'_>,
) -> Result<(ApiKey, Secret, String, Option<String>), StoreError> {
    check_name(new.name)?;
    let secret = new_key();
    let key = ApiKey {
        id: crate::ids::new_id(),
        name: new.name.to_string(),
        prefix: secret.expose_str()[..DISPLAY_PREFIX_CHARS].to_string(),
        created_at: crate::time::now_millis(),
        revoked_at: None,
        user_id: new.user_id.to_string(),
        expires_at: new.expires_at,
        models: new.models.clone(),
    };
    let models = key
        .models
        .as_ref()
        .map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
    let hash = hash_key(secret.expose_str());
    Ok((key, secret, hash, models))
}

/// The audit detail of a created key.
pub(crate) fn created_detail(key: &ApiKey) -> serde_json::Value {
    json!({ "key": key.id, "name": key.name, "user": key.user_id })
}

/// A key row found by its hash (see `judge`).
pub(crate) type KeyRow = (
    String,
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    String,
    String,
    Role,
    bool,
);

/// What a key row found by its hash means: `row` is (id, stored hash,
/// revoked_at, expires_at, models, user id, name, role, disabled). The
/// stored hash is compared in constant time. Expiry is judged by the
/// caller (`lookup_key`), on every use.
pub(crate) fn judge(hash: &str, row: Option<KeyRow>) -> KeyLookup {
    match row {
        Some((id, stored, revoked, expires_at, models, user_id, name, role, disabled))
            if crate::ids::constant_time_eq(stored.as_bytes(), hash.as_bytes()) =>
        {
            if revoked.is_some() {
                KeyLookup::Revoked { id }
            } else if disabled {
                KeyLookup::Disabled { id }
            } else {
                KeyLookup::Valid(Grant {
                    key_id: id,
                    principal: Principal {
                        user_id,
                        name,
                        role,
                    },
                    models: models.and_then(|m| serde_json::from_str(&m).ok()),
                    expires_at,
                })
            }
        }
        _ => KeyLookup::Unknown,
    }
}

/// An expired key is refused as such, whether it came from a cache or not.
pub(crate) fn unless_expired(found: KeyLookup) -> KeyLookup {
    match found {
        KeyLookup::Valid(g) if g.expires_at.is_some_and(|t| t <= crate::time::now_millis()) => {
            KeyLookup::Expired { id: g.key_id }
        }
        other => other,
    }
}

/// Creates a key on `tx` (inside the caller's transaction) and its
/// `key_created` audit row; the secret is returned once and never stored.
/// The caller bumps the key stamp after the commit (`KeyCache::bump_stamp`).
/// Public for `examples/bulk_load.rs`, which stores keys exactly as this.
pub fn insert_key(
    tx: &rusqlite::Connection,
    new: &NewKey<'_>,
    actor: &Actor,
) -> Result<(ApiKey, Secret), StoreError> {
    let (key, secret, hash, models) = mint_key(new)?;
    tx.execute_cached(
        INSERT,
        params![
            key.id,
            key.name,
            key.prefix,
            hash,
            key.created_at,
            key.user_id,
            key.expires_at,
            models
        ],
    )?;
    audit_log::insert(tx, AuditEvent::KeyCreated, actor, &created_detail(&key))?;
    Ok((key, secret))
}

impl super::store::ApiKeys for Sqlite {
    /// Creates a key; the secret is returned once and never stored.
    fn create_key(&self, new: &NewKey<'_>, actor: &Actor) -> Result<(ApiKey, Secret), StoreError> {
        let r = self.write(|tx| insert_key(tx, new, actor));
        self.key_cache.bump_stamp();
        r
    }

    /// When no key exists at all, creates one and writes it to `file`
    /// (mode 0600) before committing, so a key is never stored that nobody
    /// can read. Returns whether a key was created.
    fn ensure_first_key(&self, file: &Path) -> Result<bool, String> {
        let r = self.write(|tx| {
            if tx
                .query_row_cached(ANY, [], |_| Ok(()))
                .optional()?
                .is_some()
            {
                return Ok(false);
            }
            // The admin every database has (schema migration 2).
            let admin = super::users::by_name_in(tx, super::users::UPGRADE_ADMIN)?
                .ok_or_else(|| StoreError::internal("the admin user is missing"))?
                .id;
            let (_, secret) = insert_key(
                tx,
                &NewKey {
                    name: "first",
                    user_id: &admin,
                    ..NewKey::default()
                },
                &Actor {
                    client: Some("startup".into()),
                    ..Actor::default()
                },
            )?;
            let mut contents = secret.expose().to_vec();
            contents.push(b'\n');
            crate::data_files::replace(file, &contents).map_err(|e| {
                StoreError::internal(format!("cannot write {}: {}", file.display(), e))
            })?;
            Ok(true)
        });
        self.key_cache.bump_stamp();
        r.map_err(|e| format!("cannot create the first API key: {}", e))
    }

    /// Every key, oldest first (never the key itself).
    fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare(LIST)?;
        let rows = st.query_map([], key_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// One user's keys, oldest first (at most `MAX_LISTED`).
    fn list_user_keys(&self, owner: Owner) -> Result<Vec<ApiKey>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(LIST_OF_USER)?;
        let rows = st.query_map(params![owner.id(), MAX_LISTED], key_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Revokes a key at once (the next request with it is refused). With
    /// `only_of`, a key of another user is `NotFound`.
    fn revoke_key(
        &self,
        id: &str,
        only_of: Option<Owner>,
        actor: &Actor,
    ) -> Result<Revoke, StoreError> {
        let r = self.revoke_in_db(id, only_of, actor);
        // After the commit: a server that sees the new stamp finds the key
        // revoked in the database.
        self.key_cache.bump_stamp();
        r
    }

    /// Looks a presented key up: a valid key already seen under the
    /// current key stamp comes from `KeyCache`; any other is looked up by
    /// its hash (indexed) and the stored hash compared in constant time.
    fn lookup_key(&self, presented: &str) -> Result<KeyLookup, StoreError> {
        let hash = hash_key(presented);
        let stamp = self.key_cache.current_stamp();
        let found = match self.key_cache.get(&hash, stamp) {
            Some(grant) => KeyLookup::Valid(grant),
            None => {
                let found = self.lookup_key_in_db(&hash)?;
                if let KeyLookup::Valid(grant) = &found {
                    self.key_cache.put(hash, grant.clone(), stamp);
                }
                found
            }
        };
        Ok(unless_expired(found))
    }
}

impl Sqlite {
    fn revoke_in_db(
        &self,
        id: &str,
        only_of: Option<Owner>,
        actor: &Actor,
    ) -> Result<Revoke, StoreError> {
        self.write(|tx| {
            let row: Option<(Option<i64>, Option<String>)> = tx
                .query_row_cached(REVOKED_AT, [id], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let revoked = match (row, only_of) {
                (Some((_, user)), Some(owner)) if user.as_deref() != Some(owner.id()) => None,
                (row, _) => row.map(|(at, _)| at),
            };
            match revoked {
                None => Ok(Revoke::NotFound),
                Some(Some(_)) => Ok(Revoke::AlreadyRevoked),
                Some(None) => {
                    tx.execute_cached(
                        "UPDATE api_keys SET revoked_at = ?2 WHERE id = ?1",
                        params![id, crate::time::now_millis()],
                    )?;
                    audit_log::insert(tx, AuditEvent::KeyRevoked, actor, &json!({ "key": id }))?;
                    Ok(Revoke::Revoked)
                }
            }
        })
    }

    fn lookup_key_in_db(&self, hash: &str) -> Result<KeyLookup, StoreError> {
        let row: Option<KeyRow> = self
            .conn()?
            .query_row_cached(BY_HASH, [hash], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })
            .optional()?;
        Ok(judge(hash, row))
    }
}

/// Valid keys recently seen, so an authenticated request does not query
/// SQLite. Correctness rests on the key stamp: a file beside the database
/// that every key change (create, revoke, here or from the CLI in another
/// process) rewrites after its commit. Each lookup stats the file (one
/// cheap system call); when its modification time differs from the one the
/// cache was filled under, the cache is dropped. So a key revoked with the
/// CLI is refused on its next request, as without a cache. Only valid keys
/// are cached (unknown ones always reach the database), at most
/// `KEY_CACHE_MAX` of them.
pub struct KeyCache {
    stamp_path: PathBuf,
    inner: std::sync::Mutex<(
        Option<std::time::SystemTime>,
        std::collections::HashMap<String, Grant>,
    )>,
}

const KEY_CACHE_MAX: usize = 4096;

impl KeyCache {
    pub fn new(db_path: &Path) -> KeyCache {
        let mut name = db_path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(crate::data_files::KEY_STAMP_SUFFIX);
        KeyCache {
            stamp_path: db_path.with_file_name(name),
            inner: std::sync::Mutex::new((None, std::collections::HashMap::new())),
        }
    }

    /// The stamp's current modification time (None: no stamp yet).
    pub fn current_stamp(&self) -> Option<std::time::SystemTime> {
        std::fs::metadata(&self.stamp_path)
            .and_then(|m| m.modified())
            .ok()
    }

    fn get(&self, hash: &str, stamp: Option<std::time::SystemTime>) -> Option<Grant> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.0 != stamp {
            inner.0 = stamp;
            inner.1.clear();
            return None;
        }
        inner.1.get(hash).cloned()
    }

    /// Caches a valid key found under `stamp` (read before the query), unless
    /// the keys changed meanwhile.
    fn put(&self, hash: String, grant: Grant, stamp: Option<std::time::SystemTime>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.0 != stamp {
            return;
        }
        if inner.1.len() >= KEY_CACHE_MAX {
            inner.1.clear();
        }
        inner.1.insert(hash, grant);
    }

    /// Marks a key change for every process using this database.
    pub fn bump_stamp(&self) {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        // Replaced, never written through a link (`data_files`).
        if let Err(e) = crate::data_files::replace(&self.stamp_path, nanos.to_string().as_bytes()) {
            crate::logging::error(
                "cannot write the key stamp; running servers may accept a revoked key until restarted",
                &[("error", json!(e.to_string()))],
            );
        }
        // This process drops its cache at once, whatever the clock says.
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.0 = None;
        inner.1.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_cache_follows_the_stamp_and_refuses_stale_fills() {
        let dir = std::env::temp_dir().join(format!("pc-keycache-{}", crate::ids::random_hex(6)));
        std::fs::create_dir_all(&dir).unwrap();
        let cache = KeyCache::new(&dir.join("x.db"));
        let s0 = cache.current_stamp();
        assert_eq!(s0, None);
        assert_eq!(cache.get("h", s0), None);
        let grant = Grant {
            key_id: "id1".into(),
            principal: Principal {
                user_id: "u1".into(),
                name: "alice".into(),
                role: Role::Member,
            },
            models: None,
            expires_at: None,
        };
        cache.put("h".into(), grant.clone(), s0);
        assert_eq!(cache.get("h", s0).map(|g| g.key_id), Some("id1".into()));
        // A key change elsewhere: the stamp moves, the cache empties.
        cache.bump_stamp();
        let s1 = cache.current_stamp();
        assert!(s1.is_some());
        assert_eq!(cache.get("h", s1), None);
        // A fill that began under the old stamp is refused.
        cache.put("h".into(), grant, s0);
        assert_eq!(cache.get("h", s1), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    use crate::db::testing::temp_db;

    #[test]
    fn keys_are_long_random_and_stored_only_as_hashes() {
        let db = temp_db();
        let me = db.user_by_name("admin").unwrap().id;
        let o = crate::db::Owner::of(&me);
        let (key, secret) = db
            .create_key(
                &NewKey {
                    name: "ci",
                    user_id: o.id(),
                    ..NewKey::default()
                },
                &Actor::cli(),
            )
            .unwrap();
        let text = secret.expose_str();
        assert!(well_formed(text), "{}", text);
        assert_eq!(text.len(), 4 + 48);
        assert!(text.starts_with(&key.prefix));
        let stored: String = db
            .sqlite()
            .unwrap()
            .conn()
            .unwrap()
            .query_row_cached(
                "SELECT group_concat(id || name || prefix || hash) FROM api_keys",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(!stored.contains(text) && stored.contains(&hash_key(text)));
        match db.lookup_key(text).unwrap() {
            KeyLookup::Valid(g) => {
                assert_eq!(g.key_id, key.id);
                assert_eq!(
                    (g.principal.name.as_str(), g.principal.role),
                    ("admin", Role::Admin)
                );
            }
            other => panic!("{:?}", other),
        }
        let last = if text.ends_with('0') { '1' } else { '0' };
        let other = format!("{}{}", &text[..text.len() - 1], last);
        assert_eq!(db.lookup_key(&other).unwrap(), KeyLookup::Unknown);
        assert_eq!(
            db.revoke_key(&key.id, None, &Actor::cli()).unwrap(),
            Revoke::Revoked
        );
        assert_eq!(
            db.revoke_key(&key.id, None, &Actor::cli()).unwrap(),
            Revoke::AlreadyRevoked
        );
        assert_eq!(
            db.revoke_key("nope", None, &Actor::cli()).unwrap(),
            Revoke::NotFound
        );
        assert_eq!(
            db.lookup_key(text).unwrap(),
            KeyLookup::Revoked { id: key.id.clone() }
        );
        assert!(db.list_keys().unwrap()[0].revoked_at.is_some());
    }

    #[test]
    fn shape_table() {
        let good = format!("pcs_{}", "a1".repeat(24));
        assert!(well_formed(&good));
        for bad in [
            "".to_string(),
            "pcs_".into(),
            format!("pcs_{}", "A1".repeat(24)),
            format!("pcs_{}", "a1".repeat(25)),
            format!("sk-{}", "a1".repeat(24)),
            format!("pcs_{}g", "a1".repeat(23)),
        ] {
            assert!(!well_formed(&bad), "{}", bad);
        }
        assert!(
            check_name("").is_err()
                && check_name("a\nb").is_err()
                && check_name(&"x".repeat(101)).is_err()
        );
    }

    #[test]
    fn first_key_is_written_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let db = temp_db();
        let file =
            std::env::temp_dir().join(format!("portcullis-first-{}", crate::ids::random_hex(6)));
        assert!(db.ensure_first_key(&file).unwrap());
        assert!(!db.ensure_first_key(&file).unwrap());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(matches!(
            db.lookup_key(text.trim()).unwrap(),
            KeyLookup::Valid { .. }
        ));
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let _ = std::fs::remove_file(&file);
    }
}
