//! Users and their keys (API.md "Users, keys and sessions"):
//! `GET /api/me`; a user's own keys (`/api/keys`); and, for admins, every
//! user (`/api/admin/users`) and every user's keys (`/api/admin/keys`;
//! `Access::Admin` in the route table: 403 `forbidden` for a member).
//! Storage scopes each call: a member's key routes pass their own `Owner`,
//! so another user's key id is 404 exactly as an unknown one.

use serde_json::json;

use super::fields::{Body, Field, Kind, Unknown, ID_MAX, MODEL_MAX};
use super::path_id as id;
use crate::app::App;
use crate::db::keys::{NewKey, Revoke};
use crate::db::users::{Role, UserPatch};
use crate::db::{Owner, StoreError};
use crate::error::ApiError;
use crate::http::{Ctx, Reply};

const USER_NAME: Field = Field::string("name", 1, crate::db::users::NAME_MAX_CHARS)
    .required()
    .doc("1 to 64 of A-Z a-z 0-9 . _ @ -");
const ROLE: Field = Field::string("role", 5, 6).doc("`admin` or `member` (default)");
const DISABLED: Field = Field::new("disabled", Kind::Bool);
const PASSWORD: Field = Field::string(
    "password",
    crate::passwords::MIN_BYTES,
    crate::passwords::MAX_BYTES,
)
.doc("8 to 1024 bytes; stored as an Argon2id hash, never returned");
const KEY_NAME: Field = Field::string("name", 1, crate::db::keys::NAME_MAX_CHARS).required();
const EXPIRES_IN_DAYS: Field = Field::new(
    "expires_in_days",
    Kind::Int {
        min: 1,
        max: 36_500,
    },
)
.doc("the key stops working after this many days");
const MODELS: Field = Field::new("models", Kind::Any)
    .doc("an array of model names the key may use (absent or null: any)");
const LIMITS: Field = Field::new("limits", Kind::Any).doc(
    "the user's own limits: `tokens_per_minute`, `tokens_per_day`, `tokens_per_month`, \
     `max_streams`, each a whole number (0: no limit) or null (back to the `[limits]` default); \
     limits not named stay as they are",
);
const USER_ID: Field = Field::string("user_id", 1, ID_MAX).required();
/// `?user_id=` of `GET /api/admin/keys`.
pub const ADMIN_KEYS_USER_ID: Field = USER_ID;
/// Most models one key's allowlist names.
const MODELS_MAX: usize = 100;

/// `POST /api/keys`.
pub const KEY_CREATE: Body = Body {
    name: "KeyCreate",
    fields: &[KEY_NAME, EXPIRES_IN_DAYS, MODELS],
    unknown: Unknown::Refused,
};
/// `POST /api/admin/keys`: as `KeyCreate`, for the user `user_id`.
pub const ADMIN_KEY_CREATE: Body = Body {
    name: "AdminKeyCreate",
    fields: &[USER_ID, KEY_NAME, EXPIRES_IN_DAYS, MODELS],
    unknown: Unknown::Refused,
};
/// `POST /api/admin/users`.
pub const USER_CREATE: Body = Body {
    name: "UserCreate",
    fields: &[USER_NAME, ROLE, PASSWORD],
    unknown: Unknown::Refused,
};
/// `PATCH /api/admin/users/{id}`.
pub const USER_UPDATE: Body = Body {
    name: "UserUpdate",
    fields: &[ROLE, DISABLED, PASSWORD, LIMITS],
    unknown: Unknown::Refused,
};

/// `GET /api/me`: who the caller is and how they authenticated.
pub fn me(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let p = ctx.principal()?;
    let auth = match (app.cfg.auth.mode, &ctx.session) {
        (crate::config::AuthMode::None, _) => "none",
        (_, Some(_)) => "session",
        (crate::config::AuthMode::ApiKey, None) => "key",
    };
    let usage = app.usage.status(&p.user_id)?;
    Ok(Reply::json(
        200,
        &json!({"user": p.to_json(), "auth": auth, "usage": usage}),
    ))
}

/// The Argon2id hash of an optional `password` field.
fn password_hash(body: &crate::json_body::Fields) -> Result<Option<String>, ApiError> {
    let Some(pw) = PASSWORD.opt_str(body)? else {
        return Ok(None);
    };
    crate::passwords::hash(&pw).map(Some).map_err(|e| match e {
        crate::passwords::PasswordError::Length => {
            ApiError::validation("password", "must be 8 to 1024 bytes")
        }
        crate::passwords::PasswordError::Busy => ApiError::ServerBusy { retry_after_s: 1 },
        crate::passwords::PasswordError::Internal(d) => ApiError::internal(d),
    })
}

fn parse_role(s: &str) -> Result<Role, ApiError> {
    s.parse()
        .map_err(|()| ApiError::validation("role", "must be admin or member"))
}

/// A key from a `KeyCreate` body, for `user_id`.
fn new_key<'a>(
    body: &crate::json_body::Fields,
    name: &'a str,
    user_id: &'a str,
) -> Result<NewKey<'a>, ApiError> {
    let days = EXPIRES_IN_DAYS.opt_u64(body)?;
    let models = match body.raw("models").map(|r| r.get()) {
        None | Some("null") => None,
        Some(raw) => {
            let list: Vec<String> = serde_json::from_str(raw)
                .map_err(|_| ApiError::validation("models", "must be an array of model names"))?;
            let bad = list.is_empty()
                || list.len() > MODELS_MAX
                || list
                    .iter()
                    .any(|m| m.is_empty() || m.chars().count() > MODEL_MAX);
            if bad {
                return Err(ApiError::validation(
                    "models",
                    format!(
                        "must name 1 to {} models of 1 to {} characters",
                        MODELS_MAX, MODEL_MAX
                    ),
                ));
            }
            Some(list)
        }
    };
    Ok(NewKey {
        name,
        user_id,
        expires_at: days.map(|d| crate::time::now_millis() + d as i64 * 86_400_000),
        models,
    })
}

/// A new key's answer: the key itself, shown this once.
fn created(key: &crate::db::keys::ApiKey, secret: &crate::secret::Secret) -> Reply {
    let mut v = key.to_json();
    v["key"] = json!(secret.expose_str());
    Reply::json(201, &v)
}

fn revoked(r: Revoke) -> Result<Reply, ApiError> {
    match r {
        Revoke::Revoked | Revoke::AlreadyRevoked => Ok(Reply::empty(204)),
        Revoke::NotFound => Err(ApiError::NotFound),
    }
}

/// `GET /api/keys`: the caller's keys (never the keys themselves).
pub fn keys_list(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let keys = app.db.list_user_keys(ctx.owner()?)?;
    Ok(Reply::json(
        200,
        &json!({"items": keys.iter().map(|k| k.to_json()).collect::<Vec<_>>()}),
    ))
}

/// `POST /api/keys`: a key for the caller.
pub fn keys_create(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = KEY_CREATE.read(ctx)?;
    let name = KEY_NAME.req_str(&body)?;
    let owner = ctx.owner()?;
    let new = new_key(&body, &name, owner.id())?;
    let (key, secret) = app.db.create_key(&new, &crate::audit::actor(ctx))?;
    Ok(created(&key, &secret))
}

/// `DELETE /api/keys/{id}`: revokes one of the caller's keys.
pub fn keys_delete(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let r = app
        .db
        .revoke_key(id(ctx)?, Some(ctx.owner()?), &crate::audit::actor(ctx))?;
    revoked(r)
}

/// `GET /api/admin/users`.
pub fn admin_users_list(app: &App, _ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let users = app.db.list_users()?;
    Ok(Reply::json(
        200,
        &json!({"items": users.iter().map(|u| u.to_json()).collect::<Vec<_>>()}),
    ))
}

/// `POST /api/admin/users`.
pub fn admin_users_create(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = USER_CREATE.read(ctx)?;
    let name = USER_NAME.req_str(&body)?;
    let role = match ROLE.opt_str(&body)? {
        Some(r) => parse_role(&r)?,
        None => Role::Member,
    };
    let hash = password_hash(&body)?;
    let user = app
        .db
        .create_user(&name, role, hash.as_deref(), &crate::audit::actor(ctx))?;
    Ok(Reply::json(201, &user.to_json()))
}

/// `PATCH /api/admin/users/{id}`: role, disabled. Takes effect on the
/// user's next request.
pub fn admin_users_update(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = USER_UPDATE.read(ctx)?;
    let patch = UserPatch {
        role: ROLE.opt_str(&body)?.map(|r| parse_role(&r)).transpose()?,
        disabled: DISABLED.opt_bool(&body)?,
        password_hash: password_hash(&body)?,
        limits: limits_patch(&body)?,
    };
    let user = app
        .db
        .update_user(id(ctx)?, &patch, &crate::audit::actor(ctx))?;
    if patch.limits.iter().any(Option::is_some) {
        app.usage.set_limits(&user.id, user.limits);
    }
    Ok(Reply::json(200, &user.to_json()))
}

/// Largest limit a user may be given.
const LIMIT_MAX: u64 = 1_000_000_000_000;

/// The `limits` object of a user PATCH as written: a limit absent
/// (None), null (`Some(None)`) or a number. Unknown names stop the parse
/// at once (`deny_unknown_fields`): nothing of a huge object is kept.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default, deserialize_with = "present")]
    tokens_per_minute: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    tokens_per_day: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    tokens_per_month: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    max_streams: Option<Option<u64>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u64>>, D::Error> {
    serde::Deserialize::deserialize(d).map(Some)
}

/// The `limits` of a user PATCH, by `LIMIT_NAMES` (see `UserPatch`).
fn limits_patch(body: &crate::json_body::Fields) -> Result<[Option<Option<u64>>; 4], ApiError> {
    let Some(raw) = body.raw("limits") else {
        return Ok([None; 4]);
    };
    let bad = || {
        ApiError::validation(
            "limits",
            format!(
                "must be an object of {}, each a whole number from 0 to {} (0: no limit) or null (the default)",
                crate::db::users::LIMIT_NAMES.join(", "),
                LIMIT_MAX
            ),
        )
    };
    if !crate::json_body::is_object_text(raw.get()) {
        return Err(bad());
    }
    let b: LimitsBody = serde_json::from_str(raw.get()).map_err(|_| bad())?;
    let out = [
        b.tokens_per_minute,
        b.tokens_per_day,
        b.tokens_per_month,
        b.max_streams,
    ];
    if out.iter().flatten().flatten().any(|v| *v > LIMIT_MAX) {
        return Err(bad());
    }
    Ok(out)
}

/// `DELETE /api/admin/users/{id}`: disables the user (data kept).
pub fn admin_users_delete(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let patch = UserPatch {
        disabled: Some(true),
        ..UserPatch::default()
    };
    app.db
        .update_user(id(ctx)?, &patch, &crate::audit::actor(ctx))?;
    Ok(Reply::empty(204))
}

/// `GET /api/admin/keys?user_id=`: one user's keys.
pub fn admin_keys_list(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let user_id = ctx
        .query_param("user_id")
        .filter(|u| !u.is_empty() && u.len() <= ID_MAX)
        .ok_or_else(|| ApiError::validation("user_id", "is required"))?;
    let user = app.db.get_user(&user_id)?;
    let keys = app.db.list_user_keys(Owner::of(&user.id))?;
    Ok(Reply::json(
        200,
        &json!({"items": keys.iter().map(|k| k.to_json()).collect::<Vec<_>>()}),
    ))
}

/// `POST /api/admin/keys`: a key for any user.
pub fn admin_keys_create(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = ADMIN_KEY_CREATE.read(ctx)?;
    let user_id = USER_ID.req_str(&body)?;
    let name = KEY_NAME.req_str(&body)?;
    let user = match app.db.get_user(&user_id) {
        Err(StoreError::NotFound) => return Err(ApiError::NotFound),
        other => other?,
    };
    let new = new_key(&body, &name, &user.id)?;
    let (key, secret) = app.db.create_key(&new, &crate::audit::actor(ctx))?;
    Ok(created(&key, &secret))
}

/// `DELETE /api/admin/keys/{id}`: revokes any user's key.
pub fn admin_keys_delete(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let r = app
        .db
        .revoke_key(id(ctx)?, None, &crate::audit::actor(ctx))?;
    revoked(r)
}
