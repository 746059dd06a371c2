//! Browser sign-in and sign-out (API.md "Users, keys and sessions").
//!
//! `POST /api/session` `{"name","password"}`: one answer (401, one message)
//! for a wrong name and a wrong password, with the same work behind both
//! (`passwords::verify` checks a decoy hash when there is no user); failed
//! sign-ins count per name and per client address (`login_throttle`, and
//! the address's failed-authentication budget), refused 429 before any
//! hashing once over `auth.login_max_failures` within
//! `auth.login_window_s`. Success sets `portcullis_session` (`HttpOnly;
//! SameSite=Strict; Path=/`, `Secure` with `security.secure_cookies`).
//! `DELETE /api/session` ends the session in the database, so the cookie
//! stops working at once, and clears the cookie.

use std::time::Instant;

use serde_json::json;

use super::fields::{Body, Field, Unknown};
use crate::app::App;
use crate::error::ApiError;
use crate::filters::auth::SESSION_COOKIE;
use crate::http::{Ctx, Reply};

const NAME: Field = Field::string("name", 1, crate::db::users::NAME_MAX_CHARS).required();
const PASSWORD: Field = Field::string("password", 1, crate::passwords::MAX_BYTES).required();
/// `POST /api/session`.
pub const SIGN_IN: Body = Body {
    name: "SignIn",
    fields: &[NAME, PASSWORD],
    unknown: Unknown::Refused,
};

fn cookie(app: &App, value: &str, max_age_s: u64) -> String {
    format!(
        "{}={}; Max-Age={}; Path=/; HttpOnly; SameSite=Strict{}",
        SESSION_COOKIE,
        value,
        max_age_s,
        if app.cfg.security.secure_cookies {
            "; Secure"
        } else {
            ""
        }
    )
}

fn throttled(retry_after_s: u64) -> ApiError {
    ApiError::RateLimited {
        retry_after_s: retry_after_s.max(1),
    }
}

pub fn sign_in(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let now = Instant::now();
    let body = SIGN_IN.read(ctx)?;
    let name = NAME.req_str(&body)?;
    let password = PASSWORD.req_str(&body)?;
    let by_name = format!("name:{}", name);
    let by_addr = format!("addr:{}", crate::filters::client_ip::bucket_key(ctx.client));
    for key in [&by_name, &by_addr] {
        if let Some(wait) = app.login_throttle.refused(key, now) {
            app.audit.auth_failed(ctx, "sign_in_throttled", None);
            return Err(throttled(wait));
        }
    }
    let auth = crate::filters::auth_of(app);
    auth.check_failure_budget(ctx, now)?;

    let found = app.db.password_of(&name)?;
    let (user_id, stored) = match &found {
        Some((id, hash, false)) => (Some(id.as_str()), hash.as_deref()),
        // Unknown or disabled: verify the decoy, answer as a wrong password.
        _ => (None, None),
    };
    let ok = crate::passwords::verify(&password, stored).map_err(|e| match e {
        crate::passwords::PasswordError::Busy => ApiError::ServerBusy { retry_after_s: 1 },
        other => ApiError::internal(format!("{:?}", other)),
    })?;
    let Some(user_id) = user_id.filter(|_| ok) else {
        app.login_throttle.failed(&by_name, now);
        app.login_throttle.failed(&by_addr, now);
        auth.count_failure(ctx, "sign_in", None, now);
        return Err(ApiError::SignInFailed);
    };
    app.login_throttle.succeeded(&by_name);
    let user = app.db.get_user(user_id)?;
    let ttl = app.cfg.auth.session_ttl;
    let token = app.db.create_session(&user.id, ttl.as_millis() as i64)?;
    let mut actor = crate::audit::actor(ctx);
    actor.user_id = Some(user.id.clone());
    actor.session = Some(
        crate::db::keys::hash_key(token.expose_str())
            .chars()
            .take(16)
            .collect(),
    );
    app.db
        .record_audit(crate::db::AuditEvent::SignedIn, &actor, &json!({}))?;
    crate::logging::info("signed in", &[("user", json!(user.id))]);
    Ok(
        Reply::json(200, &json!({"user": user.principal().to_json()}))
            .with_header("Set-Cookie", cookie(app, token.expose_str(), ttl.as_secs()))
            .with_header("Cache-Control", "no-store"),
    )
}

pub fn sign_out(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    if let Some(hash) = &ctx.session {
        app.db.end_session(hash)?;
        app.db.record_audit(
            crate::db::AuditEvent::SignedOut,
            &crate::audit::actor(ctx),
            &json!({}),
        )?;
    }
    Ok(Reply::empty(204).with_header("Set-Cookie", cookie(app, "", 0)))
}
