//! `POST /api/chat`: one user turn, answered by the upstream, stored.
//!
//! Body: `{"conversation_id"?, "project_id"?, "message", "model"?,
//! "stream"?, "temperature"?, "max_tokens"?}`; unknown fields are refused.
//! `message`: 1..32000 characters, not blank. `model`: 1..200 characters
//! (default: the conversation's model, else `[upstream] model`).
//! `temperature`: 0..2. `max_tokens`: 1..1000000. `project_id` is used when
//! a conversation is created (no `conversation_id`); with a
//! `conversation_id` it must be absent or name that conversation's project
//! (else 404, as for an unknown id).
//!
//! Order of work: capacity first (a stream slot, global and per client: 503
//! `server_busy` before anything is written), then the conversation (found
//! or created, titled from the message), the user message (stored before
//! the upstream is called), the history, the assistant message, the
//! upstream call. The upstream sees the system prompt and the most recent
//! history that fits `history_max_messages` and `history_max_chars` (oldest
//! dropped first; the new message is always sent).
//!
//! The assistant message is always stored: `complete` with the answer,
//! `partial` with what arrived when the client left or the upstream broke
//! off mid-answer, `error` (empty) when nothing arrived. A streamed answer's
//! row is inserted as `partial` before the upstream is called and updated
//! when the stream ends.
//!
//! Streaming failures: those seen within `Upstream::head_grace` (refused,
//! error status, short timeouts) are plain JSON errors (502/504), like the
//! non-streaming answer; later ones are an `event: error` after `start`.

use std::io;
use std::time::Instant;

use serde_json::{json, Value};

use super::fields::{Body, Field, Kind, Unknown, ID_MAX, MODEL_MAX, TITLE_MAX};
use crate::app::App;
use crate::db::{Message, NewMessage, Owner, Role, Status};
use crate::error::ApiError;
use crate::http::{Ctx, Reply, StreamOut};
use crate::logging;
use crate::sse::{self, Flow, PumpEnd, PumpLimits};
use crate::upstream::{self, views, StreamEvent};

/// Longest user message, in characters.
pub const MESSAGE_MAX: usize = 32_000;
/// Largest `max_tokens` passed on to the upstream.
pub const MAX_TOKENS_MAX: u64 = 1_000_000;
/// Highest `temperature` (OpenAI's range is 0..2).
pub const TEMPERATURE_MAX: f64 = 2.0;

const CONVERSATION_ID: Field = Field::string("conversation_id", 1, ID_MAX)
    .doc("continue this conversation (default: create one)");
const PROJECT_ID: Field = Field::string("project_id", 1, ID_MAX)
    .doc("the new conversation's project; with conversation_id, must name its project");
const MESSAGE: Field = Field::new(
    "message",
    Kind::Text {
        min: 1,
        max: MESSAGE_MAX,
    },
)
.required()
.doc("the user's turn; not blank");
const MODEL: Field = Field::string("model", 1, MODEL_MAX)
    .doc("default: the conversation's model, else `[upstream] model`");
const STREAM: Field = Field::new("stream", Kind::Bool).doc("answer as server-sent events");
const TEMPERATURE: Field = Field::new(
    "temperature",
    Kind::Num {
        min: 0.0,
        max: TEMPERATURE_MAX,
    },
);
const MAX_TOKENS: Field = Field::new(
    "max_tokens",
    Kind::Int {
        min: 1,
        max: MAX_TOKENS_MAX,
    },
);
/// `POST /api/chat`.
pub const BODY: Body = Body {
    name: "ChatRequest",
    fields: &[
        CONVERSATION_ID,
        PROJECT_ID,
        MESSAGE,
        MODEL,
        STREAM,
        TEMPERATURE,
        MAX_TOKENS,
    ],
    unknown: Unknown::Refused,
};
/// A new conversation's title: the message's first line, this long at most.
const AUTO_TITLE_CHARS: usize = 80;
const BUSY: ApiError = ApiError::ServerBusy { retry_after_s: 1 };

/// A validated chat request.
struct ChatRequest {
    conversation_id: Option<String>,
    project_id: Option<String>,
    message: String,
    model: Option<String>,
    stream: bool,
    temperature: Option<f64>,
    max_tokens: Option<u64>,
}

fn parse(ctx: &Ctx) -> Result<ChatRequest, ApiError> {
    let body = BODY.read(ctx)?;
    Ok(ChatRequest {
        conversation_id: CONVERSATION_ID.opt_str(&body)?,
        project_id: PROJECT_ID.opt_str(&body)?,
        message: MESSAGE.req_str(&body)?,
        model: MODEL.opt_str(&body)?,
        stream: STREAM.opt_bool(&body)?.unwrap_or(false),
        temperature: TEMPERATURE.opt_f64(&body)?,
        max_tokens: MAX_TOKENS.opt_u64(&body)?,
    })
}

fn auto_title(message: &str) -> String {
    let first = message.trim().lines().next().unwrap_or("").trim();
    first
        .chars()
        .take(AUTO_TITLE_CHARS.min(TITLE_MAX))
        .collect()
}

/// The messages sent upstream: the system prompt, then the newest stored
/// messages whose text fits in `max_chars` (counted in characters, the
/// system prompt not included). Failed (`error`) and empty messages are
/// skipped. The newest message (the user's new turn) is always included;
/// from there, older ones are added until one does not fit.
pub fn history(system_prompt: Option<&str>, stored: &[Message], max_chars: usize) -> Vec<Value> {
    let mut picked: Vec<&Message> = Vec::new();
    let mut used = 0usize;
    let usable = stored
        .iter()
        .rev()
        .filter(|m| m.status != Status::Error && !m.content.is_empty());
    for m in usable {
        let n = m.content.chars().count();
        if !picked.is_empty() && used + n > max_chars {
            break;
        }
        used += n;
        picked.push(m);
    }
    let mut out = Vec::with_capacity(picked.len() + 1);
    if let Some(p) = system_prompt.filter(|p| !p.is_empty()) {
        out.push(json!({"role": "system", "content": p}));
    }
    out.extend(
        picked
            .iter()
            .rev()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content})),
    );
    out
}

pub fn chat(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let req = parse(ctx)?;
    // Capacity before any write: a refused request leaves no trace.
    let slot = match req.stream {
        true => Some(
            app.streams
                .try_acquire(crate::streams::client_key(ctx))
                .ok_or(BUSY)?,
        ),
        false => None,
    };

    // Every storage call below, also on the stream's or relay's side, is
    // scoped to the caller.
    let owner_id = ctx.owner()?.id().to_string();
    let owner = Owner::of(&owner_id);
    let conversation = match &req.conversation_id {
        Some(id) => {
            let c = app.db.get_conversation(owner, id)?;
            // No such conversation in that project: an unknown id (404).
            if req.project_id.is_some() && req.project_id != c.project_id {
                return Err(ApiError::NotFound);
            }
            c
        }
        None => {
            let title = auto_title(&req.message);
            app.db.create_conversation(
                owner,
                req.project_id.as_deref(),
                Some(&title),
                req.model.as_deref(),
                None,
                &crate::audit::actor(ctx),
            )?
        }
    };
    let model = req
        .model
        .clone()
        .or_else(|| conversation.model.clone())
        .unwrap_or_else(|| app.cfg.upstream.model.clone());
    ctx.check_model(&model)?;
    let user = app.db.insert_message(
        owner,
        &NewMessage {
            conversation_id: &conversation.id,
            role: Role::User,
            content: &req.message,
            status: Status::Complete,
            model: None,
            usage: None,
        },
    )?;
    let cfg = &app.cfg.upstream;
    let stored = app
        .db
        .recent_messages(owner, &conversation.id, cfg.history_max_messages)?;
    let messages = history(
        conversation.system_prompt.as_deref(),
        &stored,
        cfg.history_max_chars,
    );
    let mut extra: Vec<(&str, Value)> = Vec::new();
    if let Some(t) = req.temperature {
        extra.push(("temperature", json!(t)));
    }
    if let Some(n) = req.max_tokens {
        extra.push(("max_tokens", json!(n)));
    }
    if req.stream {
        extra.push(("stream_options", json!({"include_usage": true})));
    }
    let upstream_req = upstream::chat_request(&model, messages, req.stream, &extra);

    let Some(slot) = slot else {
        let (up, db) = (app.upstream.clone(), app.db.clone());
        let (conversation_id, user_id) = (conversation.id.clone(), user.id.clone());
        let owner_id = owner_id.clone();
        return Ok(Reply::deferred(Box::new(move || {
            // Only the content and usage are read from the answer.
            let answered = up.complete(&upstream_req).and_then(|a| {
                let parts = views::answer_parts(&a).unwrap_or_default();
                let content = parts.content.filter(|c| !c.is_empty()).ok_or_else(|| {
                    ApiError::UpstreamError {
                        detail: "answer without message content".into(),
                    }
                })?;
                Ok((content, parts.usage))
            });
            let (content, status, usage) = match &answered {
                Ok((c, u)) => (c.as_str(), Status::Complete, u.as_ref()),
                Err(_) => ("", Status::Error, None),
            };
            let assistant = db.insert_message(
                Owner::of(&owner_id),
                &NewMessage {
                    conversation_id: &conversation_id,
                    role: Role::Assistant,
                    content,
                    status,
                    model: Some(&model),
                    usage,
                },
            )?;
            answered?;
            Ok(Reply::json(
                200,
                &json!({"conversation_id": conversation_id, "user_message_id": user_id, "message": assistant.to_json()}),
            ))
        })));
    };

    let assistant = app.db.insert_message(
        owner,
        &NewMessage {
            conversation_id: &conversation.id,
            role: Role::Assistant,
            content: "",
            status: Status::Partial,
            model: Some(&model),
            usage: None,
        },
    )?;
    let mut handle = match app.upstream.open_stream(upstream_req, &ctx.request_id) {
        Ok(h) => h,
        Err(e) => {
            store_end(app, owner, &assistant.id, "", Status::Error);
            return Err(e);
        }
    };
    let start = json!({"conversation_id": conversation.id, "user_message_id": user.id, "message_id": assistant.id});
    let app_db = app.db.clone();
    let metrics = app.metrics.clone();
    let ping_every = cfg.ping_interval;
    let max_stream = cfg.max_stream;
    let grace = app.upstream.head_grace();
    Ok(sse::reply(Box::new(move |out: &mut StreamOut| {
        let _slot = slot;
        let started = Instant::now();
        let store_error = || {
            let id = start["message_id"].as_str().unwrap_or_default();
            if let Err(e) = app_db.update_message(Owner::of(&owner_id), id, "", Status::Error, None)
            {
                log_store_failure(e);
            }
        };
        if let Some(code) = sse::open_or_fail(out, &mut handle, grace, &metrics, store_error) {
            super::openai::log_stream_end(crate::router::Route::Chat, code, started);
            return;
        }
        let mut answer = Answer::default();
        let limits = PumpLimits {
            ping_every,
            deadline: started + max_stream,
        };
        let end = match sse::event(out, "start", &start) {
            Ok(()) => sse::pump(out, &mut handle, &limits, |out, ev| {
                answer.on_event(out, ev, &start["message_id"])
            }),
            Err(_) => {
                handle.abort();
                PumpEnd::ClientGone
            }
        };
        let (status, outcome) = match (&end, &answer.failed) {
            (PumpEnd::ClientGone, _) => (Status::Partial, "client_gone"),
            (PumpEnd::Finished, None) => (Status::Complete, "complete"),
            (PumpEnd::Finished, Some(_)) if answer.text.is_empty() => {
                (Status::Error, "upstream_failed")
            }
            (PumpEnd::Finished, Some(_)) => (Status::Partial, "upstream_failed"),
        };
        if let Some(err) = &answer.failed {
            metrics.record_upstream_error(err.code());
        }
        let id = start["message_id"].as_str().unwrap_or_default();
        if let Err(e) = app_db.update_message(
            Owner::of(&owner_id),
            id,
            &answer.text,
            status,
            answer.usage.as_ref(),
        ) {
            log_store_failure(e);
        }
        super::openai::log_stream_end(crate::router::Route::Chat, outcome, started);
    })))
}

/// What a streamed answer accumulates.
#[derive(Default)]
struct Answer {
    text: String,
    finish_reason: Option<String>,
    usage: Option<Value>,
    failed: Option<ApiError>,
}

impl Answer {
    /// Turns one upstream event into the contract's events.
    fn on_event(
        &mut self,
        out: &mut StreamOut,
        ev: StreamEvent,
        message_id: &Value,
    ) -> io::Result<Flow> {
        match ev {
            StreamEvent::Opened => Ok(Flow::Continue),
            StreamEvent::Chunk(chunk) => {
                let parts = chunk.parts;
                if parts.usage.is_some() {
                    self.usage = parts.usage;
                }
                if parts.finish_reason.is_some() {
                    self.finish_reason = parts.finish_reason;
                }
                if let Some(piece) = parts.content.filter(|c| !c.is_empty()) {
                    self.text.push_str(&piece);
                    sse::event(out, "delta", &json!({"content": piece}))?;
                }
                Ok(Flow::Continue)
            }
            StreamEvent::Done => {
                let done = json!({
                    "message_id": message_id,
                    "finish_reason": self.finish_reason.as_deref().unwrap_or("stop"),
                    "usage": self.usage,
                });
                sse::event(out, "done", &done)?;
                Ok(Flow::Stop)
            }
            StreamEvent::Failed(err) => {
                upstream::log_failure(&err);
                let body = json!({"code": err.code(), "message": err.message()});
                self.failed = Some(err);
                sse::event(out, "error", &body)?;
                Ok(Flow::Stop)
            }
        }
    }
}

/// Final update of an assistant message; a failure is logged (the reply
/// already reflects the upstream outcome).
fn store_end(app: &App, owner: Owner, id: &str, content: &str, status: Status) {
    if let Err(e) = app.db.update_message(owner, id, content, status, None) {
        log_store_failure(e);
    }
}

fn log_store_failure(e: crate::db::StoreError) {
    let e = ApiError::from(e);
    logging::error(
        "cannot store the assistant message",
        &[
            ("code", json!(e.code())),
            (
                "detail",
                json!(logging::redact_text(e.detail().unwrap_or(""))),
            ),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(role: &str, content: &str, status: &str) -> Message {
        Message {
            id: String::new(),
            conversation_id: String::new(),
            role: role.parse().unwrap(),
            content: content.into(),
            status: status.parse().unwrap(),
            model: None,
            created_at: 0,
            usage: None,
        }
    }

    fn contents(v: &[Value]) -> Vec<&str> {
        v.iter().map(|m| m["content"].as_str().unwrap()).collect()
    }

    #[test]
    fn history_drops_oldest_first_and_keeps_the_new_turn() {
        let stored = vec![
            msg("user", "aaaa", "complete"),
            msg("assistant", "bbbb", "complete"),
            msg("assistant", "", "error"),
            msg("user", "cc", "complete"),
            msg("assistant", "dd", "partial"),
            msg("user", "new", "complete"),
        ];
        let table: Vec<(usize, Vec<&str>)> = vec![
            (100, vec!["sys", "aaaa", "bbbb", "cc", "dd", "new"]),
            (11, vec!["sys", "bbbb", "cc", "dd", "new"]),
            (10, vec!["sys", "cc", "dd", "new"]),
            (7, vec!["sys", "cc", "dd", "new"]),
            (6, vec!["sys", "dd", "new"]),
            (1, vec!["sys", "new"]),
        ];
        for (max, want) in table {
            assert_eq!(
                contents(&history(Some("sys"), &stored, max)),
                want,
                "max_chars {}",
                max
            );
        }
        let none = history(None, &stored[5..], 1);
        assert_eq!(none, vec![json!({"role": "user", "content": "new"})]);
    }

    #[test]
    fn titles_come_from_the_first_line() {
        assert_eq!(auto_title("  Hello there\nsecond line"), "Hello there");
        assert_eq!(
            auto_title(&"x".repeat(500)).chars().count(),
            AUTO_TITLE_CHARS
        );
    }
}
