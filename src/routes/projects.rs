//! `/api/projects`: create (201), list (newest first, paginated), get,
//! PATCH, DELETE (204; removes the project's conversations and messages).
//! Field rules: `fields.rs`.

use serde_json::json;

use super::fields::{Body, Field, Unknown, DESCRIPTION_MAX, NAME_MAX};
use super::path_id as id;
use crate::app::App;
use crate::db::page::{Kind, PageReq};
use crate::db::projects::ProjectPatch;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};

const NAME: Field = Field::string("name", 1, NAME_MAX).required();
/// In a PATCH: optional, but a project always has a name.
const NAME_PATCH: Field = Field::string("name", 1, NAME_MAX).not_null();
const DESCRIPTION: Field = Field::string("description", 0, DESCRIPTION_MAX);
/// `POST /api/projects`.
pub const CREATE: Body = Body {
    name: "ProjectCreate",
    fields: &[NAME, DESCRIPTION],
    unknown: Unknown::Refused,
};
/// `PATCH /api/projects/{id}`: as `CREATE`, every field optional, `name`
/// never null.
pub const UPDATE: Body = Body {
    name: "ProjectUpdate",
    fields: &[NAME_PATCH, DESCRIPTION],
    unknown: Unknown::Refused,
};

pub fn create(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = CREATE.read(ctx)?;
    let name = NAME.req_str(&body)?;
    let description = DESCRIPTION.opt_str(&body)?;
    let p = app.db.create_project(
        ctx.owner()?,
        &name,
        description.as_deref(),
        &crate::audit::actor(ctx),
    )?;
    Ok(Reply::json(201, &p.to_json()))
}

pub fn list(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let req = PageReq::from_query(|p| ctx.query_param(p), Kind::Projects)?;
    let page = app.db.list_projects(ctx.owner()?, &req)?;
    Ok(Reply::json(200, &page.to_json(|p| p.to_json())))
}

pub fn get(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let p = app.db.get_project(ctx.owner()?, id(ctx)?)?;
    Ok(Reply::json(200, &p.to_json()))
}

pub fn update(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = UPDATE.read(ctx)?;
    let patch = ProjectPatch {
        name: NAME_PATCH.patch_str(&body)?.flatten(),
        description: DESCRIPTION.patch_str(&body)?,
    };
    let p = app
        .db
        .update_project(ctx.owner()?, id(ctx)?, &patch, &crate::audit::actor(ctx))?;
    Ok(Reply::json(200, &p.to_json()))
}

pub fn delete(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let id = id(ctx)?.to_string();
    app.db
        .delete_project(ctx.owner()?, &id, &crate::audit::actor(ctx))?;
    crate::logging::info("project deleted", &[("project_id", json!(id))]);
    Ok(Reply::empty(204))
}
