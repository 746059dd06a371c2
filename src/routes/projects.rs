//! `/api/projects`: create (201), list (newest first, paginated), get,
//! PATCH, DELETE (204; removes the project's conversations and messages).
//! Field rules: `fields.rs`.

use serde_json::json;

use super::fields::{patch_str, DESCRIPTION_MAX, NAME_MAX};
use super::path_id as id;
use crate::app::App;
use crate::db::page::{Kind, PageReq};
use crate::db::projects::ProjectPatch;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};
use crate::json_body::strict_object;

const FIELDS: &[&str] = &["name", "description"];

pub fn create(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = strict_object(ctx, FIELDS)?;
    let name = body.req_str("name", 1, NAME_MAX)?;
    let description = body.opt_str("description", 0, DESCRIPTION_MAX)?;
    let p = app.db.create_project(&name, description.as_deref())?;
    Ok(Reply::json(201, &p.to_json()))
}

pub fn list(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let req = PageReq::from_query(|p| ctx.query_param(p), Kind::Projects)?;
    let page = app.db.list_projects(&req)?;
    Ok(Reply::json(200, &page.to_json(|p| p.to_json())))
}

pub fn get(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    Ok(Reply::json(200, &app.db.get_project(id(ctx)?)?.to_json()))
}

pub fn update(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = strict_object(ctx, FIELDS)?;
    let name = match patch_str(&body, "name", 1, NAME_MAX)? {
        Some(None) => return Err(ApiError::validation("name", "must not be null")),
        other => other.flatten(),
    };
    let patch = ProjectPatch {
        name,
        description: patch_str(&body, "description", 0, DESCRIPTION_MAX)?,
    };
    let p = app.db.update_project(id(ctx)?, &patch)?;
    Ok(Reply::json(200, &p.to_json()))
}

pub fn delete(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let id = id(ctx)?.to_string();
    app.db.delete_project(&id, &crate::audit::actor(ctx))?;
    crate::logging::info("project deleted", &[("project_id", json!(id))]);
    Ok(Reply::empty(204))
}
