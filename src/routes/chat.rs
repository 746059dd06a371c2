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
//! upstream call.
//!
//! The context window (API.md "History and the context window"): the
//! upstream sees the system prompt and the most recent history that fits
//! `history_max_messages`, `history_max_chars` and, what normally decides,
//! a token budget (`Window`): `context_tokens` minus the answer's
//! `max_tokens` (when the request names none, a quarter of the window, at
//! most `RESERVE_MAX`), minus `tokens::safety_margin` and the reply's
//! opening, counted with the estimate of `tokens.rs`. Oldest turns are
//! dropped first; the system prompt and the new turn are always sent, and a
//! new turn that cannot fit with the system prompt is refused (400 on
//! `message`) before anything is stored or sent. An upstream that still
//! refuses the request for its size (`ApiError::is_context_overflow`) gets
//! it once more with the newest half of the older turns (`History::halved`);
//! a second refusal is answered as it is.
//!
//! The assistant message is always stored: `complete` with the answer and
//! its `finish_reason`, `partial` with what arrived when the client left or
//! the upstream broke off mid-answer, `error` (empty) when nothing arrived
//! (both without `finish_reason`). A streamed answer's row is inserted as
//! `partial` before the upstream is called and updated when the stream ends.
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
use crate::tokens;
use crate::upstream::{self, views, StreamEvent, StreamHandle};
use crate::usage::{Call, Outcome};

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
/// The answer's share of the context window when the request names no
/// `max_tokens`: a quarter of the window, at most this many tokens.
pub const RESERVE_MAX: usize = 4096;
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

/// What the history of one turn may cost, in estimated tokens
/// (`tokens.rs`): the context window less the answer's reserve, the
/// estimate's safety margin and the reply's opening.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub budget: usize,
}

impl Window {
    /// The budget for a window of `context_tokens` and the request's
    /// `max_tokens` (none: a quarter of the window, at most `RESERVE_MAX`).
    /// 400 on `max_tokens` when it leaves no room for a message.
    pub fn new(context_tokens: usize, max_tokens: Option<u64>) -> Result<Window, ApiError> {
        let reserve = match max_tokens {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => (context_tokens / 4).min(RESERVE_MAX),
        };
        let fixed = tokens::safety_margin(context_tokens) + tokens::REPLY_OVERHEAD;
        match context_tokens.checked_sub(reserve.saturating_add(fixed)) {
            Some(budget) if budget > tokens::MESSAGE_OVERHEAD => Ok(Window { budget }),
            _ => Err(ApiError::ValidationFailed {
                field: "max_tokens".into(),
                message: format!(
                    "max_tokens leaves no room for the message in the model's context window \
                     ({} tokens)",
                    context_tokens
                ),
            }),
        }
    }

    /// 400 on `message` when the system prompt and the new turn alone are
    /// over the budget: no history could make the request fit.
    pub fn check_turn(&self, system_prompt: Option<&str>, message: &str) -> Result<(), ApiError> {
        let need = system_prompt
            .filter(|p| !p.is_empty())
            .map_or(0, tokens::message)
            + tokens::message(message);
        if need <= self.budget {
            return Ok(());
        }
        Err(ApiError::ValidationFailed {
            field: "message".into(),
            message: format!(
                "the message is too long for the model's context window: about {} tokens \
                 with the system prompt, {} available",
                need, self.budget
            ),
        })
    }
}

/// The messages sent upstream for one turn.
#[derive(Clone, Debug)]
pub struct History<'a> {
    system: Option<&'a str>,
    /// Oldest first; the last one is the new turn.
    turns: Vec<&'a Message>,
}

/// The history for one turn: the system prompt, then the newest stored
/// messages whose text fits in `max_chars` (counted in characters, the
/// system prompt not included) and, with the system prompt, in
/// `max_tokens` (estimated, `tokens::message`). Failed (`error`) and empty
/// messages are skipped. The newest message (the user's new turn) is
/// always included (`Window::check_turn` refused it if it cannot fit); from
/// there, older ones are added until one does not fit.
pub fn history<'a>(
    system_prompt: Option<&'a str>,
    stored: &'a [Message],
    max_chars: usize,
    max_tokens: usize,
) -> History<'a> {
    let system = system_prompt.filter(|p| !p.is_empty());
    let mut turns: Vec<&Message> = Vec::new();
    let (mut chars, mut used) = (0usize, system.map_or(0, tokens::message));
    let usable = stored
        .iter()
        .rev()
        .filter(|m| m.status != Status::Error && !m.content.is_empty());
    for m in usable {
        let (n, t) = (m.content.chars().count(), tokens::message(&m.content));
        if !turns.is_empty() && (chars + n > max_chars || used + t > max_tokens) {
            break;
        }
        chars += n;
        used += t;
        turns.push(m);
    }
    turns.reverse();
    History { system, turns }
}

impl<'a> History<'a> {
    /// The chat messages, as sent upstream.
    pub fn messages(&self) -> Vec<Value> {
        let mut out = Vec::with_capacity(self.turns.len() + 1);
        if let Some(p) = self.system {
            out.push(json!({"role": "system", "content": p}));
        }
        out.extend(
            self.turns
                .iter()
                .map(|m| json!({"role": m.role.as_str(), "content": m.content})),
        );
        out
    }

    /// For the one retry after the upstream refused the request as too
    /// long: the newest half (rounded down) of the turns before the new
    /// one, with the system prompt and the new turn. None when there is no
    /// older turn to drop (the same request would be refused again).
    pub fn halved(&self) -> Option<History<'a>> {
        let older = self.turns.len().checked_sub(1).filter(|&n| n > 0)?;
        Some(History {
            system: self.system,
            turns: self.turns[older - older / 2..].to_vec(),
        })
    }
}

/// The `finish_reason` stored and sent for a complete answer: the
/// contract's words as the upstream said them (`function_call`, the old
/// name, is `tool_calls`); an answer that ended without one, or with a word
/// outside the contract, counts as `stop`.
pub fn finish_reason(upstream: Option<&str>) -> &'static str {
    match upstream {
        Some("length") => "length",
        Some("content_filter") => "content_filter",
        Some("tool_calls" | "function_call") => "tool_calls",
        _ => "stop",
    }
}

/// Logs the one retry with half the history (`History::halved`).
fn log_retry(err: &ApiError, messages: usize) {
    logging::warn(
        "upstream refused the request for the context size; retrying with half the history",
        &[
            ("upstream_status", json!(err.status())),
            ("messages", json!(messages)),
        ],
    );
}

/// Where chat turns go upstream.
const CHAT_PATH: &str = "/chat/completions";

pub fn chat(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let req = parse(ctx)?;
    let cfg = &app.cfg.upstream;
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
    let existing = match &req.conversation_id {
        Some(id) => {
            let c = app.db.get_conversation(owner, id)?;
            // No such conversation in that project: an unknown id (404).
            if req.project_id.is_some() && req.project_id != c.project_id {
                return Err(ApiError::NotFound);
            }
            Some(c)
        }
        None => None,
    };
    let model = req
        .model
        .clone()
        .or_else(|| existing.as_ref().and_then(|c| c.model.clone()))
        .unwrap_or_else(|| app.cfg.upstream.model.clone());
    // The window of the smallest upstream that may answer this model.
    let window = Window::new(app.upstreams.context_tokens(&model), req.max_tokens)?;
    // A turn that cannot fit is refused before anything is stored (a new
    // conversation has no system prompt yet).
    let system_prompt = existing.as_ref().and_then(|c| c.system_prompt.as_deref());
    window.check_turn(system_prompt, &req.message)?;
    ctx.check_model(&model)?;
    // The token limits, before anything is stored: admitted on the new
    // turn and the system prompt, then reserved for the whole history once
    // it is built (`Ticket::set_prompt`).
    let turn = tokens::message(&req.message)
        + system_prompt.map_or(0, tokens::message)
        + tokens::REPLY_OVERHEAD;
    let mut ticket = app.usage.admit(Call {
        user_id: &owner_id,
        key_id: ctx.key_id.as_deref(),
        model: &model,
        route: crate::router::Route::Chat.name(),
        prompt: turn as u64,
        max_tokens: req.max_tokens,
        stream: req.stream,
    })?;
    let conversation = match existing {
        Some(c) => c,
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
    let user = app.db.insert_message(
        owner,
        &NewMessage {
            conversation_id: &conversation.id,
            role: Role::User,
            content: &req.message,
            status: Status::Complete,
            model: None,
            usage: None,
            finish_reason: None,
        },
    )?;
    let stored = app
        .db
        .recent_messages(owner, &conversation.id, cfg.history_max_messages)?;
    let history = history(
        conversation.system_prompt.as_deref(),
        &stored,
        cfg.history_max_chars,
        window.budget,
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
    let build = |h: &History| upstream::chat_request(&model, h.messages(), req.stream, &extra);
    let upstream_req = build(&history);
    ticket.set_prompt(tokens::estimate_json(&upstream_req) as u64);
    // The one retry's request, built now: the stored messages are not kept.
    let retry_req = history.halved().map(|h| (build(&h), h.turns.len()));

    let Some(slot) = slot else {
        let (up, db) = (app.upstreams.clone(), app.db.clone());
        let (conversation_id, user_id) = (conversation.id.clone(), user.id.clone());
        let owner_id = owner_id.clone();
        return Ok(Reply::deferred(Box::new(move || {
            let mut tried = upstream::Tried::default();
            let first = Instant::now();
            let mut answered = up.relay(&model, CHAT_PATH, &upstream_req, &mut tried);
            if let (Err(e), Some((body, n))) = (&answered, &retry_req) {
                if e.is_context_overflow() {
                    log_retry(e, *n);
                    tried.failed(e, first);
                    answered = up.relay(&model, CHAT_PATH, body, &mut tried);
                }
            }
            ticket.settle(super::openai::answer_outcome(tried, &answered));
            // Only the content, usage and finish reason are read.
            let answered = answered.and_then(|a| {
                let parts = views::answer_parts(&a).unwrap_or_default();
                let content = parts.content.filter(|c| !c.is_empty()).ok_or_else(|| {
                    ApiError::UpstreamError {
                        detail: "answer without message content".into(),
                    }
                })?;
                let finish = finish_reason(parts.finish_reason.as_deref());
                Ok((content, parts.usage, finish))
            });
            let (content, status, usage, finish) = match &answered {
                Ok((c, u, f)) => (c.as_str(), Status::Complete, u.as_ref(), Some(*f)),
                Err(_) => ("", Status::Error, None, None),
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
                    finish_reason: finish,
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
            finish_reason: None,
        },
    )?;
    let request_id = ctx.request_id.clone();
    let mut handle = match app
        .upstreams
        .open_stream(&model, CHAT_PATH, upstream_req, &request_id)
    {
        Ok(h) => h,
        Err(e) => {
            store_end(app, owner, &assistant.id, "", Status::Error);
            return Err(e);
        }
    };
    let start = json!({"conversation_id": conversation.id, "user_message_id": user.id, "message_id": assistant.id});
    let app_db = app.db.clone();
    let up = app.upstreams.clone();
    let metrics = app.metrics.clone();
    let ping_every = cfg.ping_interval;
    let max_stream = cfg.max_stream;
    let grace = up.head_grace();
    Ok(sse::reply(Box::new(move |out: &mut StreamOut| {
        let _slot = slot;
        let started = Instant::now();
        let mut retry = retry_req;
        let reopen = |handle: &mut StreamHandle, body: Vec<u8>| {
            up.open_stream(&model, CHAT_PATH, body, &request_id)
                .map(|h| *handle = h)
        };
        let store_error = || {
            let id = start["message_id"].as_str().unwrap_or_default();
            if let Err(e) =
                app_db.update_message(Owner::of(&owner_id), id, "", Status::Error, None, None)
            {
                log_store_failure(e);
            }
        };
        // The one retry for the context size is invisible to the client: it
        // happens only before any `delta` was written. First phase: a
        // refusal seen within the grace, before even the response head went
        // out (a second refusal is then answered as plain JSON, as usual).
        let mut opened = handle.wait_opened(grace);
        // The attempts of streams replaced by the retry (each a usage row).
        let mut earlier: Vec<upstream::FailedAttempt> = Vec::new();
        let moved_on =
            |earlier: &mut Vec<upstream::FailedAttempt>, handle: &StreamHandle, status| {
                let t = handle.tried();
                earlier.extend(t.failed);
                earlier.push(upstream::FailedAttempt {
                    upstream: t.upstream,
                    status,
                    latency_ms: started.elapsed().as_millis() as u64,
                });
            };
        let tried = |earlier: &[upstream::FailedAttempt], handle: &StreamHandle| {
            let mut t = handle.tried();
            t.failed.splice(0..0, earlier.iter().cloned());
            t
        };
        if let Err(e) = &opened {
            if let Some((body, n)) = retry.take().filter(|_| e.is_context_overflow()) {
                log_retry(e, n);
                moved_on(&mut earlier, &handle, e.status());
                opened = reopen(&mut handle, body).and_then(|()| handle.wait_opened(grace));
            }
        }
        let refused = opened.as_ref().err().map(ApiError::status);
        let accepted = matches!(opened, Ok(true));
        if let Some(code) = sse::answer_opening(out, opened, &metrics, store_error) {
            ticket.settle(Outcome {
                tried: tried(&earlier, &handle),
                status: refused.unwrap_or(502),
                ..Outcome::default()
            });
            super::openai::log_stream_end(crate::router::Route::Chat, code, started);
            return;
        }
        let mut answer = Answer {
            retry,
            accepted,
            ..Answer::default()
        };
        let limits = PumpLimits {
            ping_every,
            deadline: started + max_stream,
        };
        let end = match sse::event(out, "start", &start) {
            Ok(()) => {
                let mut end = sse::pump(out, &mut handle, &limits, |out, ev| {
                    answer.on_event(out, ev, &start["message_id"])
                });
                // Second phase: a refusal after the head and `start` (which do
                // not change with the retry) but before any delta, when
                // `Answer::on_event` stopped the pump for it without writing;
                // the new stream is pumped in the old one's place.
                if let Some((body, status)) = answer.retry_now.take() {
                    moved_on(&mut earlier, &handle, status);
                    end = match reopen(&mut handle, body) {
                        Ok(()) => sse::pump(out, &mut handle, &limits, |out, ev| {
                            answer.on_event(out, ev, &start["message_id"])
                        }),
                        Err(e) => {
                            match answer.on_event(out, StreamEvent::Failed(e), &Value::Null) {
                                Ok(_) => PumpEnd::Finished,
                                Err(_) => PumpEnd::ClientGone,
                            }
                        }
                    };
                }
                end
            }
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
        ticket.settle(Outcome {
            tried: tried(&earlier, &handle),
            status: match (&end, &answer.failed) {
                (PumpEnd::ClientGone, _) => super::openai::CLIENT_GONE,
                (_, Some(err)) => err.status(),
                _ => 200,
            },
            counts: answer.usage.as_ref().and_then(views::token_counts),
            accepted: answer.accepted,
            generated: answer.generated.tokens() as u64,
        });
        let finish =
            (status == Status::Complete).then(|| finish_reason(answer.finish_reason.as_deref()));
        let id = start["message_id"].as_str().unwrap_or_default();
        if let Err(e) = app_db.update_message(
            Owner::of(&owner_id),
            id,
            &answer.text,
            status,
            answer.usage.as_ref(),
            finish,
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
    /// The request with half the history and its number of messages,
    /// while the one retry is unused.
    retry: Option<(Vec<u8>, usize)>,
    /// Set (from `retry`, with the refusal's status) when the upstream
    /// refused for the context size before any delta went out: the stream
    /// thread sends it and goes on pumping, and the client sees no trace
    /// of the first attempt.
    retry_now: Option<(Vec<u8>, u16)>,
    /// The upstream took the request (for the usage row).
    accepted: bool,
    /// What it generated, estimated (when it sends no usage).
    generated: tokens::Counter,
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
            StreamEvent::Opened => {
                self.accepted = true;
                Ok(Flow::Continue)
            }
            StreamEvent::Chunk(chunk) => {
                let parts = chunk.parts;
                for text in [&parts.content, &parts.other_text].into_iter().flatten() {
                    self.generated.add(text);
                }
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
                    "finish_reason": finish_reason(self.finish_reason.as_deref()),
                    "usage": self.usage,
                });
                sse::event(out, "done", &done)?;
                Ok(Flow::Stop)
            }
            StreamEvent::Failed(err) if err.is_context_overflow() && self.text.is_empty() => {
                match self.retry.take() {
                    Some((body, n)) => {
                        log_retry(&err, n);
                        self.retry_now = Some((body, err.status()));
                        Ok(Flow::Stop)
                    }
                    None => self.fail(out, err),
                }
            }
            StreamEvent::Failed(err) => self.fail(out, err),
        }
    }

    /// The upstream failed: an `error` event ends the stream.
    fn fail(&mut self, out: &mut StreamOut, err: ApiError) -> io::Result<Flow> {
        upstream::log_failure(&err);
        let body = json!({"code": err.code(), "message": err.message()});
        self.failed = Some(err);
        sse::event(out, "error", &body)?;
        Ok(Flow::Stop)
    }
}

/// Final update of an assistant message; a failure is logged (the reply
/// already reflects the upstream outcome).
fn store_end(app: &App, owner: Owner, id: &str, content: &str, status: Status) {
    if let Err(e) = app
        .db
        .update_message(owner, id, content, status, None, None)
    {
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
            finish_reason: None,
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
                contents(&history(Some("sys"), &stored, max, usize::MAX).messages()),
                want,
                "max_chars {}",
                max
            );
        }
        let none = history(None, &stored[5..], 1, usize::MAX).messages();
        assert_eq!(none, vec![json!({"role": "user", "content": "new"})]);
    }

    #[test]
    fn the_token_budget_drops_oldest_first_and_counts_the_system_prompt() {
        // 30 ASCII characters are 10 tokens, plus the message overhead.
        let per = 10 + tokens::MESSAGE_OVERHEAD;
        let text = |c: char| c.to_string().repeat(30);
        let (a, b, c, new) = (text('a'), text('b'), text('c'), text('n'));
        let stored = vec![
            msg("user", &a, "complete"),
            msg("assistant", &b, "complete"),
            msg("user", &c, "complete"),
            msg("user", &new, "complete"),
        ];
        let sys = "s".repeat(30);
        let table: Vec<(usize, Vec<&str>)> = vec![
            (5 * per, vec![&sys, &a, &b, &c, &new]),
            (5 * per - 1, vec![&sys, &b, &c, &new]),
            (3 * per, vec![&sys, &c, &new]),
            (2 * per, vec![&sys, &new]),
            // The new turn goes even over the budget (`check_turn` refuses it first).
            (0, vec![&sys, &new]),
        ];
        for (budget, want) in table {
            let got = history(Some(&sys), &stored, usize::MAX, budget).messages();
            assert_eq!(contents(&got), want, "budget {}", budget);
        }
    }

    #[test]
    fn halving_keeps_the_system_prompt_the_new_turn_and_the_newest_half() {
        let stored: Vec<Message> = ["1", "2", "3", "4", "5", "new"]
            .iter()
            .map(|t| msg("user", t, "complete"))
            .collect();
        let h = history(Some("sys"), &stored, usize::MAX, usize::MAX);
        let half = h.halved().unwrap();
        assert_eq!(contents(&half.messages()), ["sys", "4", "5", "new"]);
        let quarter = half.halved().unwrap();
        assert_eq!(contents(&quarter.messages()), ["sys", "5", "new"]);
        let alone = quarter.halved().unwrap();
        assert_eq!(contents(&alone.messages()), ["sys", "new"]);
        assert!(alone.halved().is_none(), "nothing left to drop");
    }

    #[test]
    fn the_window_reserves_the_answer_and_refuses_what_cannot_fit() {
        // 8192: a quarter (2048) for the answer, 819 margin, 3 for the reply.
        assert_eq!(
            Window::new(8192, None).unwrap().budget,
            8192 - 2048 - 819 - 3
        );
        assert_eq!(
            Window::new(8192, Some(100)).unwrap().budget,
            8192 - 100 - 819 - 3
        );
        // A large window reserves at most RESERVE_MAX when max_tokens is absent.
        let big = Window::new(1_000_000, None).unwrap().budget;
        assert_eq!(big, 1_000_000 - RESERVE_MAX - 100_000 - 3);
        for max_tokens in [8192, 8000, u64::MAX] {
            let e = Window::new(8192, Some(max_tokens)).unwrap_err();
            assert!(
                matches!(&e, ApiError::ValidationFailed { field, .. } if field == "max_tokens"),
                "{:?}",
                e
            );
        }
        let w = Window::new(512, None).unwrap();
        assert_eq!(w.budget, 512 - 128 - 51 - 3);
        assert!(w.check_turn(None, &"x".repeat(900)).is_ok());
        let e = w.check_turn(None, &"x".repeat(1200)).unwrap_err();
        assert!(
            matches!(&e, ApiError::ValidationFailed { field, .. } if field == "message"),
            "{:?}",
            e
        );
        // The system prompt counts.
        assert!(w
            .check_turn(Some(&"s".repeat(600)), &"x".repeat(600))
            .is_err());
    }

    #[test]
    fn finish_reasons_are_the_contracts_words() {
        let table = [
            (Some("stop"), "stop"),
            (Some("length"), "length"),
            (Some("content_filter"), "content_filter"),
            (Some("tool_calls"), "tool_calls"),
            (Some("function_call"), "tool_calls"),
            (Some("eos_token"), "stop"),
            (None, "stop"),
        ];
        for (upstream, want) in table {
            assert_eq!(finish_reason(upstream), want, "{:?}", upstream);
        }
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
