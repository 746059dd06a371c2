//! `GET /health/ready`: readiness. The database check is one cheap query
//! bounded by `ready_timeout_s` (interrupted past it, see `db::ready`);
//! 503 when it fails. The upstream is reported but never fails readiness:
//! a model server that is down is a degraded chat, not a dead backend.

use serde_json::{json, Value};

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
}

/// The upstream's reachability (a bounded, cached TCP connect).
fn upstream_check(app: &App) -> Value {
    app.upstream.reachability(app.cfg.database.ready_timeout)
}

pub fn ready(app: &App, _ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let (database, ok) = match app.db.check_ready(app.cfg.database.ready_timeout) {
        Ok(latency) => (
            json!({ "status": "ok", "latency_ms": millis(latency) }),
            true,
        ),
        Err((why, latency)) => {
            let mut fields = vec![("reason", json!(why.code()))];
            if let crate::db::ready::ReadyFailure::Error(detail) = &why {
                fields.push(("detail", json!(crate::logging::redact_text(detail))));
            }
            crate::logging::warn("readiness: database check failed", &fields);
            (
                json!({ "status": "fail", "latency_ms": millis(latency), "error": why.code() }),
                false,
            )
        }
    };
    let body = json!({
        "status": if ok { "ok" } else { "fail" },
        "checks": { "database": database, "upstream": upstream_check(app) },
    });
    Ok(Reply::json(if ok { 200 } else { 503 }, &body))
}
