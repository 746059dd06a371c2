//! Usage reports (API.md "Usage, token limits and budgets"):
//! `GET /api/usage` (the caller's own calls) and `GET /api/admin/usage`
//! (everyone's, or one user's with `user_id`), over `[since, until)`
//! (RFC 3339; default the last 30 days), grouped by day, model, key or
//! user. Rows still queued by the recorder are written first, so a
//! report holds every settled call.

use serde_json::json;

use super::fields::{Field, ID_MAX};
use crate::app::App;
use crate::db::usage::{GroupBy, UsageQuery};
use crate::error::ApiError;
use crate::http::{Ctx, Reply};
use crate::time::DAY_MS;

pub const SINCE: Field =
    Field::string("since", 10, 40).doc("RFC 3339 time or date (default: 30 days before `until`)");
pub const UNTIL: Field = Field::string("until", 10, 40).doc("RFC 3339 time or date (default: now)");
pub const GROUP_BY: Field =
    Field::string("group_by", 3, 5).doc("`day` (default), `model` or `key`; admins also `user`");
pub const USER_ID: Field =
    Field::string("user_id", 1, ID_MAX).doc("only this user's calls (admin; default: everyone's)");

/// The default window: 30 days.
const DEFAULT_DAYS: i64 = 30;
/// The longest window one report may cover.
const MAX_DAYS: i64 = 3660;

/// `GET /api/usage`.
pub fn own(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let user = ctx.principal()?.user_id.clone();
    report(app, ctx, Some(user), false)
}

/// `GET /api/admin/usage`.
pub fn admin(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let user = ctx
        .query_param(USER_ID.name)
        .filter(|u| !u.is_empty() && u.len() <= ID_MAX);
    if let Some(u) = &user {
        app.db.get_user(u)?;
    }
    report(app, ctx, user, true)
}

fn time_param(ctx: &Ctx, field: &Field) -> Result<Option<i64>, ApiError> {
    match ctx.query_param(field.name).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => crate::time::parse_rfc3339(&v).map(Some).ok_or_else(|| {
            ApiError::validation(
                field.name,
                "must be an RFC 3339 time (2026-12-01T00:00:00Z) or a date (2026-12-01)",
            )
        }),
    }
}

fn report(app: &App, ctx: &Ctx, user_id: Option<String>, admin: bool) -> Result<Reply, ApiError> {
    let until = time_param(ctx, &UNTIL)?.unwrap_or_else(crate::time::now_millis);
    let since = time_param(ctx, &SINCE)?.unwrap_or(until - DEFAULT_DAYS * DAY_MS);
    if since > until {
        return Err(ApiError::validation("since", "must not be after `until`"));
    }
    if until - since > MAX_DAYS * DAY_MS {
        return Err(ApiError::validation(
            "since",
            format!("a report covers at most {} days", MAX_DAYS),
        ));
    }
    let group_by = match ctx.query_param(GROUP_BY.name).filter(|v| !v.is_empty()) {
        None => GroupBy::Day,
        Some(g) => GroupBy::parse(&g)
            .filter(|g| admin || *g != GroupBy::User)
            .ok_or_else(|| {
                ApiError::validation(
                    "group_by",
                    match admin {
                        true => "must be day, model, key or user",
                        false => "must be day, model or key",
                    },
                )
            })?,
    };
    app.usage.flush();
    let items = app.db.usage_report(&UsageQuery {
        since_ms: since,
        until_ms: until,
        user_id: user_id.as_deref(),
        group_by,
    })?;
    Ok(Reply::json(
        200,
        &json!({
            "since": crate::time::format_millis(since),
            "until": crate::time::format_millis(until),
            "group_by": group_by.as_str(),
            "items": items.iter().map(|i| i.to_json()).collect::<Vec<_>>(),
        }),
    ))
}
