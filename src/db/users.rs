//! Users: who owns keys, projects and conversations. A user has a unique
//! name, a role (`admin` or `member`), may be disabled (its keys and
//! sessions are refused on their next request; its data is kept) and may
//! have a password (an Argon2id hash, never returned).
//!
//! Ownership is enforced here, in storage: every read and write of
//! projects, conversations and messages takes an `Owner`, and its SQL
//! filters on `owner_id`, so a handler cannot forget it. Another user's id
//! is `NotFound`, exactly as an unknown one.

use rusqlite::{params, OptionalExtension, Row};
use serde_json::json;

use super::audit_log::{self, Actor, AuditEvent};
use super::reads::{Arg, Reach, Read};
use super::{Cached, Sqlite, StoreError};

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Member,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Admin, Role::Member];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }
}

text_enum!(Role);

/// The user a request acts for, as the auth filter found it (by key, by
/// session, or the built-in `local` user in auth mode `none`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// The owner of everything this principal reads and writes.
    pub fn owner(&self) -> Owner<'_> {
        Owner(&self.user_id)
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn to_json(&self) -> serde_json::Value {
        json!({ "id": self.user_id, "name": self.name, "role": self.role.as_str() })
    }
}

/// The user whose rows a storage call may touch (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner<'a>(&'a str);

impl<'a> Owner<'a> {
    /// For the command line and tests; requests get theirs from
    /// `Principal::owner`.
    pub fn of(user_id: &'a str) -> Owner<'a> {
        Owner(user_id)
    }

    pub fn id(&self) -> &'a str {
        self.0
    }
}

/// A stored user (never its password hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub disabled: bool,
    pub has_password: bool,
    pub created_at: i64,
    /// The user's own token limits (None: the `[limits]` default).
    pub limits: UserLimits,
}

/// The per-user limits' names (API.md "Usage, token limits and budgets"),
/// in the order of `UserLimits` and of their columns.
pub const LIMIT_NAMES: [&str; 4] = [
    "tokens_per_minute",
    "tokens_per_day",
    "tokens_per_month",
    "max_streams",
];

/// A user's own limits, by `LIMIT_NAMES`; None: the `[limits]` default
/// (0 is "no limit", as there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserLimits(pub [Option<u64>; 4]);

impl UserLimits {
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        for (name, v) in LIMIT_NAMES.iter().zip(self.0) {
            m.insert(name.to_string(), json!(v));
        }
        serde_json::Value::Object(m)
    }
}

impl User {
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "id": self.id,
            "name": self.name,
            "role": self.role.as_str(),
            "disabled": self.disabled,
            "has_password": self.has_password,
            "created_at": crate::time::format_millis(self.created_at),
            "limits": self.limits.to_json(),
        })
    }

    pub fn principal(&self) -> Principal {
        Principal {
            user_id: self.id.clone(),
            name: self.name.clone(),
            role: self.role,
        }
    }
}

/// A PATCH of a user (admin route, CLI).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserPatch {
    pub role: Option<Role>,
    pub disabled: Option<bool>,
    /// A new Argon2id hash (hashed by the caller, off the writer).
    pub password_hash: Option<String>,
    /// Limits to change, by `LIMIT_NAMES`: `Some(None)` goes back to the
    /// default, `None` leaves the limit as it is.
    pub limits: [Option<Option<u64>>; 4],
}

/// The name every database made before users existed gives its data to.
pub const UPGRADE_ADMIN: &str = "admin";
/// The built-in user of auth mode `none`.
pub const LOCAL_USER: &str = "local";
pub const NAME_MAX_CHARS: usize = 64;

macro_rules! columns {
    () => {
        "id, name, role, disabled, password_hash IS NOT NULL, created_at, \
         tokens_per_minute, tokens_per_day, tokens_per_month, max_streams"
    };
}
const GET: &str = concat!("SELECT ", columns!(), " FROM users WHERE id = ?1");
const BY_NAME: &str = concat!("SELECT ", columns!(), " FROM users WHERE name = ?1");
const LIST: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM users ORDER BY created_at, seq"
);
/// The first enabled admin by age (keys made without `--user` go to it).
const FIRST_ADMIN: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM users WHERE role = 'admin' AND disabled = 0 ORDER BY created_at, seq LIMIT 1"
);
const PASSWORD_OF: &str = "SELECT id, password_hash, disabled FROM users WHERE name = ?1";
pub const INSERT: &str =
    "INSERT INTO users (id, name, role, password_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5)";

/// The reads above, for tests/query_plans.rs (`db::reads`).
pub const READS: &[Read] = &[
    Read::bounded("users::get", GET, &[Arg::UserId]),
    Read::bounded("users::by_name", BY_NAME, &[Arg::UserName]),
    Read {
        name: "users::list",
        sql: LIST,
        args: &[],
        // The admin list and `portcullis users list` show every user.
        reach: Reach::EveryRow,
    },
    Read::bounded("users::first_admin", FIRST_ADMIN, &[]),
    Read::bounded("users::password_of", PASSWORD_OF, &[Arg::UserName]),
];

/// The user named `name`, inside a transaction.
pub(crate) fn by_name_in(
    tx: &rusqlite::Connection,
    name: &str,
) -> Result<Option<User>, StoreError> {
    Ok(tx.query_row_cached(BY_NAME, [name], from_row).optional()?)
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        name: r.get(1)?,
        role: r.get(2)?,
        disabled: r.get(3)?,
        has_password: r.get(4)?,
        created_at: r.get(5)?,
        limits: UserLimits([
            opt_u64(r, 6)?,
            opt_u64(r, 7)?,
            opt_u64(r, 8)?,
            opt_u64(r, 9)?,
        ]),
    })
}

fn opt_u64(r: &Row<'_>, i: usize) -> rusqlite::Result<Option<u64>> {
    Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
}

/// A user name: 1..64 of `[A-Za-z0-9._@-]`.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= NAME_MAX_CHARS
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            "name",
            format!("must be 1 to {} of A-Z a-z 0-9 . _ @ -", NAME_MAX_CHARS),
        ))
    }
}

/// Creates a user on `tx` with its audit row. A taken name is `Conflict`.
pub fn insert_user(
    tx: &rusqlite::Connection,
    name: &str,
    role: Role,
    password_hash: Option<&str>,
    actor: &Actor,
) -> Result<User, StoreError> {
    check_name(name)?;
    if tx
        .query_row_cached(BY_NAME, [name], from_row)
        .optional()?
        .is_some()
    {
        return Err(name_taken());
    }
    let user = new_user(name, role, password_hash.is_some());
    tx.execute_cached(
        INSERT,
        params![
            user.id,
            user.name,
            user.role,
            password_hash,
            user.created_at
        ],
    )?;
    audit_log::insert(tx, AuditEvent::UserCreated, actor, &created_detail(&user))?;
    Ok(user)
}

/// The refusal of a name another user has.
pub(crate) fn name_taken() -> StoreError {
    StoreError::invalid("name", "is taken")
}

/// A new user's row (both stores).
pub(crate) fn new_user(name: &str, role: Role, has_password: bool) -> User {
    User {
        id: crate::ids::new_id(),
        name: name.to_string(),
        role,
        disabled: false,
        has_password,
        created_at: crate::time::now_millis(),
        limits: UserLimits::default(),
    }
}

pub(crate) fn created_detail(user: &User) -> serde_json::Value {
    json!({ "user": user.id, "name": user.name, "role": user.role.as_str() })
}

/// Applies `patch`'s role, disabled flag and limits to `u` (the password
/// is the caller's: it is stored, never kept in `User`).
pub(crate) fn apply_patch(u: &mut User, patch: &UserPatch) {
    if let Some(role) = patch.role {
        u.role = role;
    }
    if let Some(d) = patch.disabled {
        u.disabled = d;
    }
    for (i, change) in patch.limits.iter().enumerate() {
        if let Some(v) = change {
            u.limits.0[i] = *v;
        }
    }
    if patch.password_hash.is_some() {
        u.has_password = true;
    }
}

/// The audit detail of an update (what changed; never the password).
pub(crate) fn updated_detail(u: &User, patch: &UserPatch) -> serde_json::Value {
    json!({
        "user": u.id,
        "role": patch.role.map(Role::as_str),
        "disabled": patch.disabled,
        "password_changed": patch.password_hash.is_some(),
        "limits": patch.limits.iter().any(Option::is_some).then(|| u.limits.to_json()),
    })
}

impl super::store::Users for Sqlite {
    fn create_user(
        &self,
        name: &str,
        role: Role,
        password_hash: Option<&str>,
        actor: &Actor,
    ) -> Result<User, StoreError> {
        self.write(|tx| insert_user(tx, name, role, password_hash, actor))
    }

    /// The user named `name`, created with `role` if missing (the `local`
    /// user of auth mode `none`).
    fn ensure_user(&self, name: &str, role: Role) -> Result<User, StoreError> {
        self.write(
            |tx| match tx.query_row_cached(BY_NAME, [name], from_row).optional()? {
                Some(u) => Ok(u),
                None => insert_user(
                    tx,
                    name,
                    role,
                    None,
                    &Actor {
                        client: Some("startup".into()),
                        ..Actor::default()
                    },
                ),
            },
        )
    }

    fn get_user(&self, id: &str) -> Result<User, StoreError> {
        self.conn()?
            .query_row_cached(GET, [id], from_row)
            .optional()?
            .ok_or(StoreError::NotFound)
    }

    fn user_by_name(&self, name: &str) -> Result<User, StoreError> {
        self.conn()?
            .query_row_cached(BY_NAME, [name], from_row)
            .optional()?
            .ok_or(StoreError::NotFound)
    }

    /// Every user, oldest first.
    fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let conn = self.conn()?;
        let mut st = conn.prepare_cached(LIST)?;
        let rows = st.query_map([], from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The oldest enabled admin (keys made without an owner go to it).
    fn first_admin(&self) -> Result<User, StoreError> {
        self.conn()?
            .query_row_cached(FIRST_ADMIN, [], from_row)
            .optional()?
            .ok_or(StoreError::NotFound)
    }

    /// (user id, password hash, disabled) of the user named `name`, for
    /// sign-in.
    fn password_of(
        &self,
        name: &str,
    ) -> Result<Option<(String, Option<String>, bool)>, StoreError> {
        Ok(self
            .conn()?
            .query_row_cached(PASSWORD_OF, [name], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?)
    }

    /// Applies a PATCH. Disabling, or changing the role, takes effect on
    /// the user's next request, also in other processes: the key stamp is
    /// rewritten (cached keys are dropped) and a disabled user's sessions
    /// are ended.
    fn update_user(&self, id: &str, patch: &UserPatch, actor: &Actor) -> Result<User, StoreError> {
        let r = self.write(|tx| {
            let mut u = tx
                .query_row_cached(GET, [id], from_row)
                .optional()?
                .ok_or(StoreError::NotFound)?;
            apply_patch(&mut u, patch);
            tx.execute_cached(
                "UPDATE users SET role = ?2, disabled = ?3 WHERE id = ?1",
                params![u.id, u.role, u.disabled],
            )?;
            if patch.limits.iter().any(Option::is_some) {
                tx.execute_cached(
                    "UPDATE users SET tokens_per_minute = ?2, tokens_per_day = ?3, \
                     tokens_per_month = ?4, max_streams = ?5 WHERE id = ?1",
                    params![
                        u.id,
                        u.limits.0[0].map(|v| v as i64),
                        u.limits.0[1].map(|v| v as i64),
                        u.limits.0[2].map(|v| v as i64),
                        u.limits.0[3].map(|v| v as i64)
                    ],
                )?;
            }
            if let Some(hash) = &patch.password_hash {
                tx.execute_cached(
                    "UPDATE users SET password_hash = ?2 WHERE id = ?1",
                    params![u.id, hash],
                )?;
            }
            if u.disabled || patch.password_hash.is_some() {
                tx.execute_cached("DELETE FROM sessions WHERE user_id = ?1", [&u.id])?;
            }
            audit_log::insert(
                tx,
                AuditEvent::UserUpdated,
                actor,
                &updated_detail(&u, patch),
            )?;
            Ok(u)
        });
        self.key_cache.bump_stamp();
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "alice", "a.b_c-d@e", &"x".repeat(64)] {
            assert!(check_name(ok).is_ok(), "{}", ok);
        }
        for bad in ["", "a b", "ä", "a/b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{}", bad);
        }
    }
}
