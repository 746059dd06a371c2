//! `GET /health/ready`: readiness. The database check is one cheap query
//! bounded by `ready_timeout_s` (interrupted past it, see `db::ready`);
//! 503 when it fails. Each upstream is checked (`Upstream::reachability`:
//! `GET /models` with its key, cached) and reported by name under
//! `checks.upstreams` (the default's also as `checks.upstream`); the
//! top-level `status` is `fail` when no upstream is ok, but only the
//! database makes the answer 503: a model server that is down is a
//! degraded chat, not a dead backend to take out of a load balancer.

use serde_json::{json, Value};

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};

fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0
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
    // Which store, and (shared store) what limits do while it is away:
    // `closed` refuses with 503, `open` admits unchecked.
    let mut database = database;
    database["backend"] = json!(app.db.backend());
    if app.db.shared().is_some() {
        database["limits"] = json!(if app.db.limits_fail_open() {
            "fail_open"
        } else {
            "fail_closed"
        });
    }
    let upstreams = app.upstreams.readiness(app.cfg.database.ready_timeout);
    let any_upstream = upstreams.values().any(|v| v["status"] == "ok");
    let default = upstreams
        .get(crate::upstreams::DEFAULT_NAME)
        .cloned()
        .unwrap_or(Value::Null);
    let body = json!({
        "status": if ok && any_upstream { "ok" } else { "fail" },
        "checks": { "database": database, "upstream": default, "upstreams": upstreams },
    });
    Ok(Reply::json(if ok { 200 } else { 503 }, &body))
}
