//! `GET /health`: liveness, no database. (`/health/ready` lives with storage.)

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};

pub fn live(_app: &App, _ctx: &mut Ctx) -> Result<Reply, ApiError> {
    const BODY: &str = concat!(
        "{\"status\":\"ok\",\"version\":\"",
        env!("CARGO_PKG_VERSION"),
        "\"}"
    );
    Ok(Reply::bytes(
        200,
        "application/json",
        BODY.as_bytes().to_vec(),
    ))
}
