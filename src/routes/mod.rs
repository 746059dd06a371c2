//! Handlers, one module per resource. `dispatch` runs a route's handler
//! from the route table (`router::ROUTES`); handlers get the app and the
//! filtered request context.

pub mod chat;
pub mod conversations;
pub mod csrf;
pub mod fields;
pub mod health;
pub mod metrics;
pub mod openai;
pub mod openapi;
pub mod projects;
pub mod ready;
pub mod session;
pub mod ui;
pub mod usage;
pub mod users;

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};
use crate::router::{Access, Route};

/// The `{id}` of a route's path (a route without one is not found).
pub fn path_id(ctx: &Ctx) -> Result<&str, ApiError> {
    ctx.params
        .first()
        .map(String::as_str)
        .ok_or(ApiError::NotFound)
}

/// Runs the route's handler from the table (`router::ROUTES`). A
/// `Access::Local` route answers 404 to anyone but loopback clients and
/// trusted proxies, so its existence is not advertised.
pub fn dispatch(app: &App, ctx: &mut Ctx, route: Route) -> Result<Reply, ApiError> {
    let def = route.def();
    if def.access == Access::Local && !is_local(app, ctx) {
        return Err(ApiError::NotFound);
    }
    if def.access == Access::Admin {
        ctx.require_admin()?;
    }
    (def.handler)(app, ctx)
}

/// A loopback client, or a trusted proxy itself (a scraper on the proxy
/// host).
fn is_local(app: &App, ctx: &Ctx) -> bool {
    let client = crate::filters::client_ip::canonical(ctx.client);
    client.is_loopback() || app.cfg.security.trusted_proxies.contains(client)
}
