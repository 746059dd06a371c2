//! The filter chain of docs/contract.md, in contract order. Each filter is
//! a plain function in its own module with its own tests; `run` is the one
//! place the order is stated. Filter 1 (request id) runs in `server.rs`
//! before this, since every answer (even a refusal) needs the id; filter 9
//! (`headers::decorate`) runs on the way out of every response.

pub mod auth;
pub mod body_limit;
pub mod client_ip;
pub mod csrf;
pub mod headers;
pub mod host;
pub mod origin;
pub mod rate_limit;
pub mod request_id;

use std::time::Instant;

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Method, Reply};

/// Runs filters 2-8. `Ok(Some(reply))` answers now (a CORS preflight);
/// `Ok(None)` lets the handler run; an error is the answer.
pub fn run(app: &App, ctx: &mut Ctx) -> Result<Option<Reply>, ApiError> {
    let sec = &app.cfg.security;
    host::check(ctx.header("host"), &sec.allowed_hosts)?;
    body_limit::check_declared(ctx, sec.max_body_bytes)?;
    ctx.client = client_ip::resolve(
        ctx.peer,
        &ctx.header_all("x-forwarded-for"),
        &sec.trusted_proxies,
    );

    match crate::router::resolve(ctx.method, &ctx.path)? {
        Some((route, params)) => {
            ctx.route = Some(route);
            ctx.params = params;
        }
        None => return origin::preflight(ctx, &sec.allowed_origins).map(Some),
    }
    if ctx.method == Method::Options {
        return origin::preflight(ctx, &sec.allowed_origins).map(Some);
    }

    let now = Instant::now();
    auth_of(app).check(ctx, now)?;
    match app.db.shared() {
        Some(shared) => {
            rate_limit::check_shared(shared, &app.cfg.rate_limit, app.db.limits_fail_open(), ctx)
        }
        None => rate_limit::check(&app.limiter, ctx, now),
    }
    .inspect_err(|e| {
        if !matches!(e, crate::error::ApiError::RateLimited { .. }) {
            return;
        }
        // Counted in memory, written as one audit row per client a minute.
        app.audit
            .rate_limited(ctx, &rate_limit::Identity::of(ctx).to_string());
    })?;
    origin::check(
        ctx,
        &sec.allowed_origins,
        &sec.trusted_proxies,
        ctx.key_id.is_some(),
    )?;
    csrf::check(sec.csrf_tokens, &app.csrf_secret, ctx, csrf::now_unix())?;
    Ok(None)
}

/// Authentication with the App's parts (filter 5; the sign-in route uses
/// its failure budget too).
pub fn auth_of(app: &App) -> auth::Auth<'_> {
    auth::Auth {
        mode: app.cfg.auth.mode,
        local: app.local_user.as_ref(),
        keys: &app.db,
        sessions: &app.db,
        session_idle_ms: app.cfg.auth.session_idle.as_millis() as i64,
        failures: &app.auth_failures,
        log: app,
    }
}

/// Failed authentications go to the audit trail (aggregated per client per
/// minute) and the metrics.
impl auth::FailureLog for App {
    fn auth_failed(&self, ctx: &Ctx, reason: &'static str, key_id: Option<&str>) {
        self.audit.auth_failed(ctx, reason, key_id);
        self.metrics.record_auth_refusal(reason);
    }
}
