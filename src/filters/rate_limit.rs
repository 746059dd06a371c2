//! Filter 6: token-bucket rate limiting (placeholder).

use crate::app::App;
use crate::error::ApiError;
use crate::http::Ctx;

pub fn check(app: &App, ctx: &mut Ctx) -> Result<(), ApiError> {
    let _ = (app, ctx);
    Ok(())
}
