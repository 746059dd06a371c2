//! Handlers, one module per resource. `dispatch` maps a route to its
//! handler; handlers get the app and the filtered request context.

pub mod csrf;
pub mod health;

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};
use crate::router::Route;

pub fn dispatch(app: &App, ctx: &mut Ctx, route: Route) -> Result<Reply, ApiError> {
    match route {
        Route::Health => health::live(app, ctx),
        Route::CsrfToken => csrf::token(app, ctx),
        _ => Err(ApiError::NotFound),
    }
}
