//! Handlers, one module per resource. `dispatch` maps a route to its
//! handler; handlers get the app and the filtered request context.

pub mod health;
pub mod openai;

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};
use crate::router::Route;

pub fn dispatch(app: &App, ctx: &mut Ctx, route: Route) -> Result<Reply, ApiError> {
    match route {
        Route::Health => health::live(app, ctx),
        Route::ChatCompletions => openai::completions(app, ctx),
        Route::Models => openai::models(app, ctx),
        _ => Err(ApiError::NotFound),
    }
}
