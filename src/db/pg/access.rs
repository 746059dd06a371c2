//! Users, API keys, sessions and the audit trail on PostgreSQL. Keys and
//! sessions are looked up in the database on every request (no cache; see
//! the module doc of `pg`), so what one instance revokes, disables or ends
//! every instance refuses on its next request.

use std::path::Path;

use postgres::Row;
use serde_json::{json, Value};

use super::conn::Statements;
use super::content::rows;
use super::Postgres;
use crate::db::audit_log::{Actor, AuditEvent, AuditRow};
use crate::db::keys::{self, ApiKey, KeyLookup, NewKey, Revoke};
use crate::db::sessions::{self, SessionLookup};
use crate::db::store;
use crate::db::users::{self, Owner, Role, User, UserLimits, UserPatch};
use crate::db::StoreError;
use crate::secret::Secret;

fn parse_role(s: &str) -> Result<Role, StoreError> {
    s.parse()
        .map_err(|()| StoreError::internal("database: a row holds an unknown role"))
}

// --- audit ---

const A_INSERT: &str =
    "INSERT INTO audit (time, event, request_id, key_id, client, detail, user_id, session)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const A_SINCE: &str = "SELECT id, time, event, request_id, key_id, client, detail, user_id, session
     FROM audit WHERE time >= $1 ORDER BY time, id LIMIT $2";
const A_NEWEST: &str =
    "SELECT id, time, event, request_id, key_id, client, detail, user_id, session
     FROM audit ORDER BY time DESC, id DESC LIMIT $1";

pub fn insert_audit(
    tx: &mut postgres::Transaction<'_>,
    st: &mut Statements,
    time: i64,
    event: AuditEvent,
    actor: &Actor,
    detail: &Value,
) -> Result<(), StoreError> {
    let s = st.get(tx, A_INSERT)?;
    tx.execute(
        &s,
        &[
            &time,
            &event.as_str(),
            &actor.request_id,
            &actor.key_id,
            &actor.client,
            &detail.to_string(),
            &actor.user_id,
            &actor.session,
        ],
    )?;
    Ok(())
}

fn audit_row(r: &Row) -> Result<AuditRow, StoreError> {
    let detail: Option<String> = r.get(6);
    Ok(AuditRow {
        id: r.get(0),
        time: r.get(1),
        event: r
            .get::<_, &str>(2)
            .parse()
            .map_err(|()| StoreError::internal("database: unknown audit event"))?,
        actor: Actor {
            request_id: r.get(3),
            key_id: r.get(4),
            client: r.get(5),
            user_id: r.get(7),
            session: r.get(8),
        },
        detail: detail
            .and_then(|d| serde_json::from_str(&d).ok())
            .unwrap_or(Value::Null),
    })
}

impl store::AuditTrail for Postgres {
    fn record_audit(
        &self,
        event: AuditEvent,
        actor: &Actor,
        detail: &Value,
    ) -> Result<(), StoreError> {
        self.write(|tx, st| insert_audit(tx, st, crate::time::now_millis(), event, actor, detail))
    }

    fn record_audit_batch(
        &self,
        rows: &[(i64, AuditEvent, Actor, Value)],
    ) -> Result<(), StoreError> {
        self.write(|tx, st| {
            for (time, event, actor, detail) in rows {
                insert_audit(tx, st, *time, *event, actor, detail)?;
            }
            Ok(())
        })
    }

    fn audit_rows(&self, since: Option<i64>, limit: usize) -> Result<Vec<AuditRow>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let out = self.conn()?.run(|c, st| match since {
            Some(t) => rows(c, st, A_SINCE, &[&t, &limit], audit_row),
            None => {
                let mut v = rows(c, st, A_NEWEST, &[&limit], audit_row)?;
                v.reverse();
                Ok(v)
            }
        })?;
        out.into_iter().collect()
    }
}

// --- users ---

const U_GET: &str = "SELECT id, name, role, disabled, password_hash IS NOT NULL, created_at, tokens_per_minute, tokens_per_day, tokens_per_month, max_streams FROM users WHERE id = $1";
const U_BY_NAME: &str = "SELECT id, name, role, disabled, password_hash IS NOT NULL, created_at, tokens_per_minute, tokens_per_day, tokens_per_month, max_streams FROM users WHERE name = $1";
const U_LIST: &str = "SELECT id, name, role, disabled, password_hash IS NOT NULL, created_at, tokens_per_minute, tokens_per_day, tokens_per_month, max_streams FROM users ORDER BY created_at, seq";
const U_FIRST_ADMIN: &str = "SELECT id, name, role, disabled, password_hash IS NOT NULL, created_at, tokens_per_minute, tokens_per_day, tokens_per_month, max_streams FROM users
     WHERE role = 'admin' AND disabled = 0 ORDER BY created_at, seq LIMIT 1";
const U_INSERT: &str =
    "INSERT INTO users (id, name, role, password_hash, created_at) VALUES ($1, $2, $3, $4, $5)";

fn user(r: &Row) -> Result<User, StoreError> {
    let lim = |i: usize| r.get::<_, Option<i64>>(i).map(|v| v.max(0) as u64);
    Ok(User {
        id: r.get(0),
        name: r.get(1),
        role: parse_role(r.get(2))?,
        disabled: r.get::<_, i64>(3) != 0,
        has_password: r.get(4),
        created_at: r.get(5),
        limits: UserLimits([lim(6), lim(7), lim(8), lim(9)]),
    })
}

fn one_user<C: postgres::GenericClient>(
    c: &mut C,
    st: &mut Statements,
    sql: &'static str,
    arg: &str,
) -> Result<Option<User>, StoreError> {
    rows(c, st, sql, &[&arg], user)?.pop().transpose()
}

fn insert_user(
    tx: &mut postgres::Transaction<'_>,
    st: &mut Statements,
    name: &str,
    role: Role,
    password_hash: Option<&str>,
    actor: &Actor,
) -> Result<User, StoreError> {
    users::check_name(name)?;
    if one_user(tx, st, U_BY_NAME, name)?.is_some() {
        return Err(users::name_taken());
    }
    let u = users::new_user(name, role, password_hash.is_some());
    let s = st.get(tx, U_INSERT)?;
    // A concurrent insert of the same name (another instance) fails the
    // UNIQUE constraint: that is the same "taken".
    tx.execute(
        &s,
        &[
            &u.id,
            &u.name,
            &role.as_str(),
            &password_hash,
            &u.created_at,
        ],
    )
    .map_err(|e| match e.code() {
        Some(c) if *c == postgres::error::SqlState::UNIQUE_VIOLATION => users::name_taken(),
        _ => e.into(),
    })?;
    insert_audit(
        tx,
        st,
        crate::time::now_millis(),
        AuditEvent::UserCreated,
        actor,
        &users::created_detail(&u),
    )?;
    Ok(u)
}

impl store::Users for Postgres {
    fn create_user(
        &self,
        name: &str,
        role: Role,
        password_hash: Option<&str>,
        actor: &Actor,
    ) -> Result<User, StoreError> {
        self.write(|tx, st| insert_user(tx, st, name, role, password_hash, actor))
    }

    fn ensure_user(&self, name: &str, role: Role) -> Result<User, StoreError> {
        self.write(|tx, st| match one_user(tx, st, U_BY_NAME, name)? {
            Some(u) => Ok(u),
            None => insert_user(
                tx,
                st,
                name,
                role,
                None,
                &Actor {
                    client: Some("startup".into()),
                    ..Actor::default()
                },
            ),
        })
    }

    fn get_user(&self, id: &str) -> Result<User, StoreError> {
        self.conn()?
            .run(|c, st| one_user(c, st, U_GET, id))?
            .ok_or(StoreError::NotFound)
    }

    fn user_by_name(&self, name: &str) -> Result<User, StoreError> {
        self.conn()?
            .run(|c, st| one_user(c, st, U_BY_NAME, name))?
            .ok_or(StoreError::NotFound)
    }

    fn list_users(&self) -> Result<Vec<User>, StoreError> {
        self.conn()?
            .run(|c, st| rows(c, st, U_LIST, &[], user))?
            .into_iter()
            .collect()
    }

    fn first_admin(&self) -> Result<User, StoreError> {
        self.conn()?
            .run(|c, st| rows(c, st, U_FIRST_ADMIN, &[], user))?
            .pop()
            .transpose()?
            .ok_or(StoreError::NotFound)
    }

    fn password_of(
        &self,
        name: &str,
    ) -> Result<Option<(String, Option<String>, bool)>, StoreError> {
        Ok(self
            .conn()?
            .run(|c, st| {
                rows(
                    c,
                    st,
                    "SELECT id, password_hash, disabled FROM users WHERE name = $1",
                    &[&name],
                    |r| (r.get(0), r.get(1), r.get::<_, i64>(2) != 0),
                )
            })?
            .pop())
    }

    fn update_user(&self, id: &str, patch: &UserPatch, actor: &Actor) -> Result<User, StoreError> {
        self.write(|tx, st| {
            let s = st.get(tx, "SELECT 1 FROM users WHERE id = $1 FOR UPDATE")?;
            tx.query_opt(&s, &[&id])?.ok_or(StoreError::NotFound)?;
            let mut u = one_user(tx, st, U_GET, id)?.ok_or(StoreError::NotFound)?;
            users::apply_patch(&mut u, patch);
            let l = |i: usize| u.limits.0[i].map(|v| v as i64);
            let s = st.get(
                tx,
                "UPDATE users SET role = $2, disabled = $3, tokens_per_minute = $4, tokens_per_day = $5, \
                 tokens_per_month = $6, max_streams = $7 WHERE id = $1",
            )?;
            tx.execute(
                &s,
                &[
                    &u.id,
                    &u.role.as_str(),
                    &i64::from(u.disabled),
                    &l(0),
                    &l(1),
                    &l(2),
                    &l(3),
                ],
            )?;
            if let Some(hash) = &patch.password_hash {
                let s = st.get(tx, "UPDATE users SET password_hash = $2 WHERE id = $1")?;
                tx.execute(&s, &[&u.id, hash])?;
            }
            if u.disabled || patch.password_hash.is_some() {
                let s = st.get(tx, "DELETE FROM sessions WHERE user_id = $1")?;
                tx.execute(&s, &[&u.id])?;
            }
            insert_audit(
                tx,
                st,
                crate::time::now_millis(),
                AuditEvent::UserUpdated,
                actor,
                &users::updated_detail(&u, patch),
            )?;
            Ok(u)
        })
    }
}

// --- keys ---

const K_INSERT: &str =
    "INSERT INTO api_keys (id, name, prefix, hash, created_at, user_id, expires_at, models)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";
const K_LIST: &str = "SELECT id, name, prefix, created_at, revoked_at, user_id, expires_at, models FROM api_keys ORDER BY created_at, id";
const K_LIST_OF_USER: &str =
    "SELECT id, name, prefix, created_at, revoked_at, user_id, expires_at, models FROM api_keys
     WHERE user_id = $1 ORDER BY created_at, id LIMIT $2";
const K_BY_HASH: &str =
    "SELECT k.id, k.hash, k.revoked_at, k.expires_at, k.models, u.id, u.name, u.role, u.disabled
     FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.hash = $1";

fn api_key(r: &Row) -> ApiKey {
    let models: Option<String> = r.get(7);
    ApiKey {
        id: r.get(0),
        name: r.get(1),
        prefix: r.get(2),
        created_at: r.get(3),
        revoked_at: r.get(4),
        user_id: r.get::<_, Option<String>>(5).unwrap_or_default(),
        expires_at: r.get(6),
        models: models.and_then(|m| serde_json::from_str(&m).ok()),
    }
}

fn insert_key(
    tx: &mut postgres::Transaction<'_>,
    st: &mut Statements,
    new: &NewKey<'_>,
    actor: &Actor,
) -> Result<(ApiKey, Secret), StoreError> {
    let (key, secret, hash, models) = keys::mint_key(new)?;
    let s = st.get(tx, K_INSERT)?;
    tx.execute(
        &s,
        &[
            &key.id,
            &key.name,
            &key.prefix,
            &hash,
            &key.created_at,
            &key.user_id,
            &key.expires_at,
            &models,
        ],
    )?;
    insert_audit(
        tx,
        st,
        crate::time::now_millis(),
        AuditEvent::KeyCreated,
        actor,
        &keys::created_detail(&key),
    )?;
    Ok((key, secret))
}

impl store::ApiKeys for Postgres {
    fn create_key(&self, new: &NewKey<'_>, actor: &Actor) -> Result<(ApiKey, Secret), StoreError> {
        self.write(|tx, st| insert_key(tx, st, new, actor))
    }

    fn ensure_first_key(&self, file: &Path) -> Result<bool, String> {
        self.write(|tx, st| {
            // Instances starting together: one creates the key.
            let s = st.get(tx, "SELECT pg_advisory_xact_lock($1)")?;
            tx.execute(&s, &[&0x7063_0010_i64])?;
            if tx
                .query_opt("SELECT 1 FROM api_keys LIMIT 1", &[])?
                .is_some()
            {
                return Ok(false);
            }
            let admin = one_user(tx, st, U_BY_NAME, users::UPGRADE_ADMIN)?
                .ok_or_else(|| StoreError::internal("the admin user is missing"))?
                .id;
            let (_, secret) = insert_key(
                tx,
                st,
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
        })
        .map_err(|e| format!("cannot create the first API key: {}", e))
    }

    fn list_keys(&self) -> Result<Vec<ApiKey>, StoreError> {
        self.conn()?.run(|c, st| rows(c, st, K_LIST, &[], api_key))
    }

    fn list_user_keys(&self, owner: Owner) -> Result<Vec<ApiKey>, StoreError> {
        self.conn()?.run(|c, st| {
            rows(
                c,
                st,
                K_LIST_OF_USER,
                &[&owner.id(), &keys::MAX_LISTED],
                api_key,
            )
        })
    }

    fn revoke_key(
        &self,
        id: &str,
        only_of: Option<Owner>,
        actor: &Actor,
    ) -> Result<Revoke, StoreError> {
        self.write(|tx, st| {
            let s = st.get(
                tx,
                "SELECT revoked_at, user_id FROM api_keys WHERE id = $1 FOR UPDATE",
            )?;
            let row: Option<(Option<i64>, Option<String>)> =
                tx.query_opt(&s, &[&id])?.map(|r| (r.get(0), r.get(1)));
            let revoked = match (row, only_of) {
                (Some((_, user)), Some(owner)) if user.as_deref() != Some(owner.id()) => None,
                (row, _) => row.map(|(at, _)| at),
            };
            match revoked {
                None => Ok(Revoke::NotFound),
                Some(Some(_)) => Ok(Revoke::AlreadyRevoked),
                Some(None) => {
                    let s = st.get(tx, "UPDATE api_keys SET revoked_at = $2 WHERE id = $1")?;
                    tx.execute(&s, &[&id, &crate::time::now_millis()])?;
                    insert_audit(
                        tx,
                        st,
                        crate::time::now_millis(),
                        AuditEvent::KeyRevoked,
                        actor,
                        &json!({ "key": id }),
                    )?;
                    Ok(Revoke::Revoked)
                }
            }
        })
    }

    fn lookup_key(&self, presented: &str) -> Result<KeyLookup, StoreError> {
        let hash = keys::hash_key(presented);
        let row = self.conn()?.run(|c, st| {
            rows(c, st, K_BY_HASH, &[&hash], |r| {
                Ok((
                    r.get(0),
                    r.get(1),
                    r.get(2),
                    r.get(3),
                    r.get(4),
                    r.get(5),
                    r.get(6),
                    parse_role(r.get(7))?,
                    r.get::<_, i64>(8) != 0,
                ))
            })?
            .pop()
            .transpose()
        })?;
        Ok(keys::unless_expired(keys::judge(&hash, row)))
    }
}

// --- sessions ---

impl store::Sessions for Postgres {
    fn create_session(&self, user_id: &str, ttl_ms: i64) -> Result<Secret, StoreError> {
        let (token, hash) = sessions::new_token();
        let now = crate::time::now_millis();
        self.write(|tx, st| {
            let s = st.get(
                tx,
                "INSERT INTO sessions (hash, user_id, created_at, last_used_at, expires_at) VALUES ($1, $2, $3, $3, $4)",
            )?;
            tx.execute(&s, &[&hash, &user_id, &now, &now.saturating_add(ttl_ms)])?;
            Ok(())
        })?;
        Ok(token)
    }

    fn lookup_session(&self, token: &str, idle_ms: i64) -> Result<SessionLookup, StoreError> {
        if !sessions::well_formed(token) {
            return Ok(SessionLookup::Invalid);
        }
        let hash = keys::hash_key(token);
        let mut c = self.conn()?;
        let row = c.run(|c, st| {
            rows(
                c,
                st,
                "SELECT s.hash, s.last_used_at, s.expires_at, u.id, u.name, u.role, u.disabled
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.hash = $1",
                &[&hash],
                |r| {
                    Ok((
                        r.get(0),
                        r.get(1),
                        r.get(2),
                        r.get(3),
                        r.get(4),
                        parse_role(r.get(5))?,
                        r.get::<_, i64>(6) != 0,
                    ))
                },
            )?
            .pop()
            .transpose()
        })?;
        let now = crate::time::now_millis();
        let Some((principal, touch)) = sessions::judge(&hash, row, idle_ms, now) else {
            return Ok(SessionLookup::Invalid);
        };
        if touch {
            c.run(|c, st| {
                let s = st.get(c, "UPDATE sessions SET last_used_at = $2 WHERE hash = $1")?;
                c.execute(&s, &[&hash, &now])?;
                Ok(())
            })?;
        }
        Ok(SessionLookup::Valid { principal, hash })
    }

    fn end_session(&self, hash: &str) -> Result<(), StoreError> {
        self.write(|tx, st| {
            let s = st.get(tx, "DELETE FROM sessions WHERE hash = $1")?;
            tx.execute(&s, &[&hash])?;
            Ok(())
        })
    }
}
