//! `/api/conversations`: create (201), list (newest first, `?project_id=`
//! filter, paginated), get, PATCH, DELETE (204, with its messages), and
//! `/api/conversations/{id}/messages` (oldest first, paginated).
//! Field rules: `fields.rs`.

use serde_json::json;

use super::fields::{Body, Field, Unknown, ID_MAX, MODEL_MAX, SYSTEM_PROMPT_MAX, TITLE_MAX};
use super::path_id as id;
use crate::app::App;
use crate::db::conversations::ConversationPatch;
use crate::db::page::{Kind, PageReq};
use crate::error::ApiError;
use crate::http::{Ctx, Reply};

const PROJECT_ID: Field =
    Field::string("project_id", 1, ID_MAX).doc("an existing project's id (else 404)");
const TITLE: Field = Field::string("title", 0, TITLE_MAX);
const MODEL: Field = Field::string("model", 1, MODEL_MAX)
    .doc("the model chats in this conversation use (default: `[upstream] model`)");
const SYSTEM_PROMPT: Field = Field::string("system_prompt", 0, SYSTEM_PROMPT_MAX);
/// `POST /api/conversations`.
pub const CREATE: Body = Body {
    name: "ConversationCreate",
    fields: &[PROJECT_ID, TITLE, MODEL, SYSTEM_PROMPT],
    unknown: Unknown::Refused,
};
/// `PATCH /api/conversations/{id}`: the same fields; null clears one.
pub const UPDATE: Body = Body {
    name: "ConversationUpdate",
    ..CREATE
};
/// `?project_id=` of the list: only that project's conversations.
pub const LIST_PROJECT_ID: Field = PROJECT_ID;

pub fn create(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = CREATE.read(ctx)?;
    let project_id = PROJECT_ID.opt_str(&body)?;
    let title = TITLE.opt_str(&body)?;
    let model = MODEL.opt_str(&body)?;
    let system_prompt = SYSTEM_PROMPT.opt_str(&body)?;
    let c = app.db.create_conversation(
        ctx.owner()?,
        project_id.as_deref(),
        title.as_deref(),
        model.as_deref(),
        system_prompt.as_deref(),
        &crate::audit::actor(ctx),
    )?;
    Ok(Reply::json(201, &c.to_json()))
}

pub fn list(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let req = PageReq::from_query(|p| ctx.query_param(p), Kind::Conversations)?;
    let project_id = ctx.query_param("project_id");
    if let Some(p) = &project_id {
        if p.is_empty() || p.chars().count() > ID_MAX {
            return Err(ApiError::validation("project_id", "no project has this id"));
        }
    }
    let page = app
        .db
        .list_conversations(ctx.owner()?, project_id.as_deref(), &req)?;
    Ok(Reply::json(200, &page.to_json(|c| c.to_json())))
}

pub fn get(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let c = app.db.get_conversation(ctx.owner()?, id(ctx)?)?;
    Ok(Reply::json(200, &c.to_json()))
}

pub fn update(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = UPDATE.read(ctx)?;
    let patch = ConversationPatch {
        project_id: PROJECT_ID.patch_str(&body)?,
        title: TITLE.patch_str(&body)?,
        model: MODEL.patch_str(&body)?,
        system_prompt: SYSTEM_PROMPT.patch_str(&body)?,
    };
    let c =
        app.db
            .update_conversation(ctx.owner()?, id(ctx)?, &patch, &crate::audit::actor(ctx))?;
    Ok(Reply::json(200, &c.to_json()))
}

pub fn delete(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let id = id(ctx)?.to_string();
    app.db
        .delete_conversation(ctx.owner()?, &id, &crate::audit::actor(ctx))?;
    crate::logging::info("conversation deleted", &[("conversation_id", json!(id))]);
    Ok(Reply::empty(204))
}

pub fn messages(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let req = PageReq::from_query(|p| ctx.query_param(p), Kind::Messages)?;
    let page = app.db.list_messages(ctx.owner()?, id(ctx)?, &req)?;
    Ok(Reply::json(200, &page.to_json(|m| m.to_json())))
}
