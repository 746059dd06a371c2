//! Handlers, one module per resource. `dispatch` maps a route to its
//! handler; handlers get the app and the filtered request context.

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
pub mod ui;

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};
use crate::router::Route;

/// The `{id}` of a route's path (a route without one is not found).
pub fn path_id(ctx: &Ctx) -> Result<&str, ApiError> {
    ctx.params
        .first()
        .map(String::as_str)
        .ok_or(ApiError::NotFound)
}

pub fn dispatch(app: &App, ctx: &mut Ctx, route: Route) -> Result<Reply, ApiError> {
    match route {
        Route::Health => health::live(app, ctx),
        Route::Metrics => metrics::get(app, ctx),
        Route::OpenApi => openapi::get(app, ctx),
        Route::Ui => ui::index(app, ctx),
        Route::UiAsset => ui::asset(app, ctx),
        Route::Chat => chat::chat(app, ctx),
        Route::ChatCompletions => openai::completions(app, ctx),
        Route::Models => openai::models(app, ctx),
        Route::HealthReady => ready::ready(app, ctx),
        Route::ProjectsCreate => projects::create(app, ctx),
        Route::ProjectsList => projects::list(app, ctx),
        Route::ProjectGet => projects::get(app, ctx),
        Route::ProjectUpdate => projects::update(app, ctx),
        Route::ProjectDelete => projects::delete(app, ctx),
        Route::ConversationsCreate => conversations::create(app, ctx),
        Route::ConversationsList => conversations::list(app, ctx),
        Route::ConversationGet => conversations::get(app, ctx),
        Route::ConversationUpdate => conversations::update(app, ctx),
        Route::ConversationDelete => conversations::delete(app, ctx),
        Route::MessagesList => conversations::messages(app, ctx),
        Route::CsrfToken => csrf::token(app, ctx),
    }
}
