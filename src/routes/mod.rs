//! Handlers, one module per resource. `dispatch` maps a route to its
//! handler; handlers get the app and the filtered request context.

pub mod health;
pub mod metrics;
pub mod openapi;
pub mod ui;

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};
use crate::router::Route;

pub fn dispatch(app: &App, ctx: &mut Ctx, route: Route) -> Result<Reply, ApiError> {
    match route {
        Route::Health => health::live(app, ctx),
        Route::Metrics => metrics::get(app, ctx),
        Route::OpenApi => openapi::get(app, ctx),
        Route::Ui => ui::index(app, ctx),
        Route::UiAsset => ui::asset(app, ctx),
        _ => Err(ApiError::NotFound),
    }
}
