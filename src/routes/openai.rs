//! The OpenAI-compatible relay: `POST /v1/chat/completions`,
//! `/v1/completions`, `/v1/embeddings`, `/v1/responses` (streaming and
//! not), `GET /v1/models` and `GET /v1/models/{id}`, behind the same
//! filters, rate limits and stream slots as `/api/chat`. Works unmodified
//! with the official OpenAI SDKs (`scripts/openai_sdk_check.py`).
//!
//! A request is forwarded as the client sent it, byte for byte, except
//! for what the relay must set: a missing `model` becomes `[upstream]
//! model` (see `prepare`). The relay reads only what it needs (`model`
//! for the key's allowlist, `stream`, the route's required fields, chat
//! `messages` for a clear 400) and never re-serialises what it does not
//! understand, so vendor parameters (`top_k`, `grammar`,
//! `chat_template_kwargs`) arrive as sent. Answers are relayed as the
//! upstream sent them: non-streaming bounded by `max_response_bytes`,
//! streaming re-framed event by event (`data:` lines, the event's name
//! when it has one) and ended with `data: [DONE]` (chat and text
//! completions) or the terminal event (responses). Errors use the
//! contract's body (`{"error":{"code","message","type","param",
//! "request_id"}}`, which OpenAI SDKs read as an API error); an upstream's
//! refusal keeps its status and message (`upstream_rejected`); a failure
//! after the stream began is sent as one error event, and the stream ends
//! without `[DONE]` (the SDKs raise it).
//!
//! Nothing here builds a `Value` tree of what a client or the upstream
//! sent: the request's top level is read as raw fields (`json_body`),
//! `messages` is checked element by element with a visitor that stores
//! nothing, and answers are relayed as the bytes received
//! (`upstream::views`).

use std::fmt;
use std::time::Instant;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::app::App;
use crate::db::Role;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};
use crate::json_body;
use crate::logging;
use crate::router::Route;
use crate::routes::fields::{Body, Field, Kind, Unknown, MODEL_MAX};
use crate::sse::{self, Flow, PumpEnd, PumpLimits};
use crate::tokens;
use crate::upstream::{self, views, StreamEvent};
use crate::upstreams::Upstreams;
use crate::usage::{Call, Outcome};

/// Roles a relayed message may have: the stored roles (`db::Role`) and
/// those only OpenAI's API knows (relayed, never stored).
pub const ROLES: &[&str] = &[
    Role::System.as_str(),
    "developer",
    Role::User.as_str(),
    Role::Assistant.as_str(),
    "tool",
    "function",
];
/// Most messages one relayed request may carry.
pub const MAX_MESSAGES: usize = 10_000;

const MODEL: Field = Field::string("model", 1, MODEL_MAX).doc("default: `[upstream] model`");
const MESSAGES: Field = Field::new(
    "messages",
    Kind::Messages {
        max: MAX_MESSAGES,
        roles: ROLES,
    },
)
.required();
const STREAM: Field = Field::new("stream", Kind::Bool);
const PROMPT: Field = Field::new("prompt", Kind::Any)
    .required()
    .doc("passed to the upstream as sent");
const INPUT: Field = Field::new("input", Kind::Any).doc("passed to the upstream as sent");
const MAX_TOKENS: Field = Field::new("max_tokens", Kind::Any)
    .doc("passed as sent; a whole number is what the call is admitted for under the token limits");
const MAX_COMPLETION_TOKENS: Field = Field::new("max_completion_tokens", Kind::Any)
    .doc("passed as sent; as `max_tokens` for the token limits");
const MAX_OUTPUT_TOKENS: Field = Field::new("max_output_tokens", Kind::Any)
    .doc("passed as sent; as `max_tokens` for the token limits");
const STREAM_OPTIONS: Field = Field::new("stream_options", Kind::Any).doc(
    "passed as sent, with `include_usage` set for accounting; the usage chunk that adds \
     reaches the client only when it asked for it",
);

/// How a relayed route's answer streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Streaming {
    /// Never (`/v1/embeddings`): the request is relayed as a whole.
    No,
    /// `data: {chunk}` events ending with `data: [DONE]` (chat and text
    /// completions).
    Chunks,
    /// Named events (`event: response.output_text.delta`) ending with a
    /// terminal event and no `[DONE]` (the Responses API).
    Events,
}

/// A relayed `/v1` POST route: where it goes upstream, the fields the
/// relay reads (checked; every other field is forwarded as sent, unread),
/// and how its answer streams.
pub struct Relay {
    pub upstream_path: &'static str,
    pub body: Body,
    pub streaming: Streaming,
}

/// `POST /v1/chat/completions`.
pub const CHAT: Relay = Relay {
    upstream_path: "/chat/completions",
    body: Body {
        name: "OpenAiChatRequest",
        fields: &[
            MODEL,
            MESSAGES,
            STREAM,
            STREAM_OPTIONS,
            MAX_TOKENS,
            MAX_COMPLETION_TOKENS,
        ],
        unknown: Unknown::Passed,
    },
    streaming: Streaming::Chunks,
};

/// `POST /v1/completions` (text completions, the legacy API).
pub const COMPLETIONS: Relay = Relay {
    upstream_path: "/completions",
    body: Body {
        name: "OpenAiCompletionRequest",
        fields: &[MODEL, PROMPT, STREAM, STREAM_OPTIONS, MAX_TOKENS],
        unknown: Unknown::Passed,
    },
    streaming: Streaming::Chunks,
};

/// `POST /v1/embeddings`.
pub const EMBEDDINGS: Relay = Relay {
    upstream_path: "/embeddings",
    body: Body {
        name: "OpenAiEmbeddingRequest",
        fields: &[MODEL, INPUT.required()],
        unknown: Unknown::Passed,
    },
    streaming: Streaming::No,
};

/// `POST /v1/responses` (what Codex and LangChain's `use_responses_api`
/// speak).
pub const RESPONSES: Relay = Relay {
    upstream_path: "/responses",
    body: Body {
        name: "OpenAiResponsesRequest",
        fields: &[MODEL, INPUT, STREAM, MAX_OUTPUT_TOKENS],
        unknown: Unknown::Passed,
    },
    streaming: Streaming::Events,
};

/// A relayed request, ready to send.
pub struct Prepared {
    /// The body for the upstream: the client's bytes, unchanged but for
    /// what the relay must set (a missing `model`, `include_usage`).
    pub body: Vec<u8>,
    pub stream: bool,
    pub model: String,
    /// The answer's token cap the request names (`max_tokens`,
    /// `max_completion_tokens`, `max_output_tokens`), for admission.
    pub max_tokens: Option<u64>,
    /// The stream's usage chunk is ours (the relay asked for it): it is
    /// not relayed.
    pub strip_usage: bool,
}

/// Where the body's `stream_options` stands on `include_usage`.
enum UsageAsk {
    /// `include_usage: true`: the client wants the usage chunk.
    Asked,
    /// No `stream_options`: `stream_options` is added.
    NoOptions,
    /// `stream_options` without `include_usage`: it is added to them (the
    /// byte range of the object).
    Missing(std::ops::Range<usize>),
    /// `include_usage` is something else (false, null) or `stream_options`
    /// is not an object: that value's range becomes `true` (or the options
    /// `{"include_usage":true}`).
    Replace(std::ops::Range<usize>, &'static str),
}

#[derive(serde::Deserialize)]
struct StreamOptionsView<'a> {
    #[serde(borrow, default)]
    include_usage: Option<&'a RawValue>,
}

/// The byte range of `part` (borrowed from `body`) within `body`.
fn range_in(body: &[u8], part: &str) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start + part.len();
    (body.get(start..end) == Some(part.as_bytes())).then_some(start..end)
}

fn usage_ask(body: &[u8], options: Option<&RawValue>) -> Option<UsageAsk> {
    let Some(raw) = options else {
        return Some(UsageAsk::NoOptions);
    };
    let whole = range_in(body, raw.get())?;
    if !json_body::is_object_text(raw.get()) {
        return Some(UsageAsk::Replace(whole, "{\"include_usage\":true}"));
    }
    let view: StreamOptionsView = serde_json::from_str(raw.get()).ok()?;
    Some(match view.include_usage {
        Some(v) if v.get() == "true" => UsageAsk::Asked,
        Some(v) => UsageAsk::Replace(range_in(body, v.get())?, "true"),
        None => UsageAsk::Missing(whole),
    })
}

fn splice(mut body: Vec<u8>, range: std::ops::Range<usize>, with: &[u8]) -> Vec<u8> {
    body.splice(range, with.iter().copied());
    body
}

/// Checks what the relay needs of a request body (an object; `model` a
/// string, `stream` a boolean, each at most once; the route's required
/// fields present; chat `messages` well formed) and returns the body to
/// send: the same bytes, with `"model"` added at the front when the client
/// named none. Nothing else is read, rewritten or dropped, so vendor
/// parameters (`top_k`, `min_p`, `grammar`, `chat_template_kwargs`) reach
/// the upstream byte for byte.
pub fn prepare(relay: &Relay, body: Vec<u8>, default_model: &str) -> Result<Prepared, ApiError> {
    let (model, stream, max_tokens, ask) = {
        let fields = relay.body.parse(&body)?;
        fields.reject_repeated()?;
        for f in relay.body.fields.iter().filter(|f| f.required) {
            if fields.value(f.name).is_none() {
                return Err(ApiError::validation(f.name, "is required"));
            }
        }
        if let Some(messages) = fields.raw("messages") {
            check_messages(messages)?;
        }
        let stream = match relay.streaming {
            Streaming::No => false,
            _ => STREAM.opt_bool(&fields)?.unwrap_or(false),
        };
        // The answer's cap, when the request names a whole number (else
        // the upstream's business: relayed as sent).
        let max_tokens = ["max_tokens", "max_completion_tokens", "max_output_tokens"]
            .iter()
            .find_map(|f| fields.value(f).and_then(|r| r.get().parse::<u64>().ok()));
        let ask = match (relay.streaming, stream) {
            (Streaming::Chunks, true) => usage_ask(&body, fields.raw("stream_options")),
            _ => None,
        };
        (MODEL.opt_str(&fields)?, stream, max_tokens, ask)
    };
    // Ask a stream for its usage (what the limits settle with).
    let strip_usage = matches!(
        ask,
        Some(UsageAsk::NoOptions | UsageAsk::Missing(_) | UsageAsk::Replace(..))
    );
    let body = match ask {
        Some(UsageAsk::NoOptions) => {
            insert_field(body, "stream_options", "{\"include_usage\":true}")
        }
        Some(UsageAsk::Missing(r)) => {
            let options = insert_field(body[r.clone()].to_vec(), "include_usage", "true");
            splice(body, r, &options)
        }
        Some(UsageAsk::Replace(r, with)) => splice(body, r, with.as_bytes()),
        Some(UsageAsk::Asked) | None => body,
    };
    let (body, model) = match model {
        Some(m) => (body, m),
        None => {
            let value = serde_json::to_string(default_model).map_err(ApiError::internal)?;
            (
                insert_field(body, "model", &value),
                default_model.to_string(),
            )
        }
    };
    Ok(Prepared {
        body,
        stream,
        model,
        max_tokens,
        strip_usage,
    })
}

/// `body` (a JSON object's text) with `"name":value` added as its first
/// member; every other byte stays as it was.
pub fn insert_field(body: Vec<u8>, name: &str, value: &str) -> Vec<u8> {
    let Some(open) = body.iter().position(|b| !b.is_ascii_whitespace()) else {
        return body;
    };
    let empty = body[open + 1..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'}');
    let mut out = Vec::with_capacity(body.len() + name.len() + value.len() + 4);
    out.extend_from_slice(&body[..=open]);
    out.push(b'"');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(value.as_bytes());
    if !empty {
        out.push(b',');
    }
    out.extend_from_slice(&body[open + 1..]);
    out
}

/// Checks `messages` (its raw text) without storing it: an array of 1 to
/// `MAX_MESSAGES` objects, each with a known string `role` and a `content`
/// that is a string, an array of parts, null or absent.
fn check_messages(raw: &RawValue) -> Result<(), ApiError> {
    let count_error = || {
        ApiError::validation(
            "messages",
            format!("must hold 1 to {} messages", MAX_MESSAGES),
        )
    };
    // First the count (as a `Vec` length was checked before any element).
    let mut count = Count(0);
    if serde_json::Deserializer::from_str(raw.get())
        .deserialize_seq(&mut count)
        .is_err()
    {
        return Err(ApiError::validation("messages", "must be an array"));
    }
    if count.0 == 0 || count.0 > MAX_MESSAGES {
        return Err(count_error());
    }
    let mut check = Check(None);
    let parsed = serde_json::Deserializer::from_str(raw.get()).deserialize_seq(&mut check);
    match (check.0, parsed) {
        (Some(e), _) => Err(e),
        (None, Ok(())) => Ok(()),
        (None, Err(e)) => Err(ApiError::internal(format!("messages: {}", e))),
    }
}

/// Counts an array's elements, skipping them.
struct Count(usize);

impl<'de> Visitor<'de> for &mut Count {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {
            self.0 += 1;
        }
        Ok(())
    }
}

/// Checks each message in turn; the first problem is kept here and stops
/// the walk (as a serde error that the caller then ignores).
struct Check(Option<ApiError>);

impl<'de> Visitor<'de> for &mut Check {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while let Some(raw) = seq.next_element::<&RawValue>()? {
            if let Err(e) = check_message(i, raw) {
                self.0 = Some(e);
                return Err(de::Error::custom("invalid message"));
            }
            i += 1;
        }
        Ok(())
    }
}

/// What a message's check needs: its role (when a string) and the JSON
/// type of its content.
#[derive(Default)]
struct MessageShape {
    role: Option<String>,
    content_ok: bool,
}

impl<'de> Visitor<'de> for &mut MessageShape {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.content_ok = true;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "role" => {
                    let raw: &RawValue = map.next_value()?;
                    self.role = serde_json::from_str::<String>(raw.get()).ok();
                }
                "content" => {
                    let raw: &RawValue = map.next_value()?;
                    self.content_ok =
                        matches!(raw.get().as_bytes().first(), Some(b'"' | b'[' | b'n'));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

fn check_message(i: usize, raw: &RawValue) -> Result<(), ApiError> {
    let field = format!("messages[{}].role", i);
    let mut shape = MessageShape::default();
    if !json_body::is_object_text(raw.get())
        || serde_json::Deserializer::from_str(raw.get())
            .deserialize_map(&mut shape)
            .is_err()
    {
        return Err(ApiError::validation(
            &format!("messages[{}]", i),
            "must be an object",
        ));
    }
    let role = shape
        .role
        .ok_or_else(|| ApiError::validation(&field, "is required"))?;
    if !ROLES.contains(&role.as_str()) {
        return Err(ApiError::validation(
            &field,
            format!("must be one of {}", ROLES.join(", ")),
        ));
    }
    if !shape.content_ok {
        return Err(ApiError::validation(
            &format!("messages[{}].content", i),
            "must be a string, an array of parts or null",
        ));
    }
    Ok(())
}

/// The contract's error body, as a JSON value (for in-stream errors): with
/// `type` and `param` like every error body, so the SDKs read it natively.
pub fn error_value(err: &ApiError, request_id: &str) -> Value {
    json!({"error": {
        "code": err.code(),
        "message": err.message(),
        "type": err.error_type(),
        "param": err.param(),
        "request_id": request_id,
    }})
}

/// Logs how a stream ended (the access log line was written when the head
/// went out).
pub fn log_stream_end(route: Route, outcome: &str, started: Instant) {
    logging::info(
        "stream ended",
        &[
            ("route", json!(route.name())),
            ("outcome", json!(outcome)),
            ("duration_ms", json!(started.elapsed().as_millis() as u64)),
        ],
    );
}

pub fn chat_completions(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    relay(app, ctx, &CHAT, Route::ChatCompletions)
}

pub fn completions(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    relay(app, ctx, &COMPLETIONS, Route::Completions)
}

pub fn embeddings(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    relay(app, ctx, &EMBEDDINGS, Route::Embeddings)
}

pub fn responses(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    relay(app, ctx, &RESPONSES, Route::Responses)
}

/// Relays one `/v1` POST: checked (`prepare`), the key's model allowlist
/// applied, then sent as a whole (answered once the upstream's answer is
/// complete, on the connection's thread without a seat) or streamed (a
/// stream slot, cancellation when the client goes, pings while the
/// upstream is silent, `max_stream_s`).
fn relay(app: &App, ctx: &mut Ctx, relay: &'static Relay, route: Route) -> Result<Reply, ApiError> {
    let body = std::mem::take(&mut ctx.body);
    let Prepared {
        body,
        stream,
        model,
        max_tokens,
        strip_usage,
    } = prepare(relay, body, &app.cfg.upstream.model)?;
    // A key with a model allowlist: 403 `forbidden` for any other model.
    ctx.check_model(&model)?;
    let slot = match stream {
        true => Some(
            app.streams
                .try_acquire(crate::streams::client_key(ctx))
                .ok_or(ApiError::ServerBusy { retry_after_s: 1 })?,
        ),
        false => None,
    };
    // The user's token limits, on the request's estimate.
    let ticket = app.usage.admit(Call {
        user_id: &ctx.principal()?.user_id,
        key_id: ctx.key_id.as_deref(),
        model: &model,
        route: route.name(),
        prompt: tokens::estimate_json(&body) as u64,
        max_tokens: match relay.streaming {
            Streaming::No => Some(0),
            _ => max_tokens,
        },
        stream,
    })?;
    let Some(slot) = slot else {
        // Waits without a seat (`server::defer`). The answer is relayed as
        // received: checked, never parsed into a tree.
        let up = app.upstreams.clone();
        return Ok(Reply::deferred(Box::new(move || {
            let mut tried = upstream::Tried::default();
            let answer = up.relay(&model, relay.upstream_path, &body, &mut tried);
            ticket.settle(answer_outcome(tried, &answer));
            Ok(Reply::bytes(200, "application/json", answer?))
        })));
    };

    let mut handle =
        app.upstreams
            .open_stream(&model, relay.upstream_path, body, &ctx.request_id)?;
    let ping_every = app.cfg.upstream.ping_interval;
    let max_stream = app.cfg.upstream.max_stream;
    let request_id = ctx.request_id.clone();
    let metrics = app.metrics.clone();
    let grace = app.upstreams.head_grace();
    let events = relay.streaming == Streaming::Events;
    Ok(sse::reply(Box::new(move |out| {
        let _slot = slot;
        let started = Instant::now();
        let mut spent = Outcome::default();
        let opened = handle.wait_opened(grace);
        match &opened {
            Ok(accepted) => spent.accepted = *accepted,
            Err(e) => spent.status = e.status(),
        }
        if let Some(code) = sse::answer_opening(out, opened, &metrics, || {}) {
            spent.tried = handle.tried();
            ticket.settle(spent);
            log_stream_end(route, code, started);
            return;
        }
        let mut generated = tokens::Counter::default();
        let mut outcome = "complete";
        let limits = PumpLimits {
            ping_every,
            deadline: started + max_stream,
        };
        let end = sse::pump(out, &mut handle, &limits, |out, ev| match ev {
            StreamEvent::Opened => {
                spent.accepted = true;
                Ok(Flow::Continue)
            }
            StreamEvent::Chunk(chunk) => {
                let parts = &chunk.parts;
                for text in [&parts.content, &parts.other_text].into_iter().flatten() {
                    generated.add(text);
                }
                if let Some(u) = &parts.usage {
                    spent.counts = views::token_counts(u).or(spent.counts);
                    // The chunk the relay asked for: not the client's.
                    if strip_usage && parts.bare {
                        return Ok(Flow::Continue);
                    }
                }
                sse::event_raw(out, chunk.event.as_deref(), &chunk.raw).map(|_| Flow::Continue)
            }
            // The Responses API ends with its terminal event, not `[DONE]`.
            StreamEvent::Done if events => Ok(Flow::Stop),
            StreamEvent::Done => sse::done_marker(out).map(|_| Flow::Stop),
            StreamEvent::Failed(err) => {
                upstream::log_failure(&err);
                metrics.record_upstream_error(err.code());
                outcome = err.code();
                spent.status = err.status();
                if events {
                    // The Responses API's own error event: its fields at
                    // the top, `type` "error".
                    let value = json!({
                        "type": "error",
                        "code": err.code(),
                        "message": err.message(),
                        "param": err.param(),
                        "request_id": request_id,
                    });
                    sse::event(out, "error", &value).map(|_| Flow::Stop)
                } else {
                    sse::data(out, &error_value(&err, &request_id)).map(|_| Flow::Stop)
                }
            }
        });
        if end == PumpEnd::ClientGone {
            outcome = "client_gone";
            spent.status = CLIENT_GONE;
        }
        if spent.status == 0 {
            spent.status = 200;
        }
        spent.tried = handle.tried();
        spent.generated = generated.tokens() as u64;
        ticket.settle(spent);
        log_stream_end(route, outcome, started);
    })))
}

/// The status a call is recorded with when its client left first (as
/// nginx logs it).
pub const CLIENT_GONE: u16 = 499;

/// How a non-streaming call ended, for its usage row: the answer's
/// `usage` (or the estimate of its text), or the failure's status; a
/// call whose client hung up (`relays`) is 499 and charged its prompt.
pub fn answer_outcome(tried: upstream::Tried, answer: &Result<Vec<u8>, ApiError>) -> Outcome {
    match answer {
        Ok(bytes) => {
            // The usage alone, without a tree; the text only without it.
            let counts = views::answer_counts(bytes);
            let mut generated = tokens::Counter::default();
            if counts.is_none() {
                let parts = views::answer_parts(bytes).unwrap_or_default();
                for text in [&parts.content, &parts.other_text].into_iter().flatten() {
                    generated.add(text);
                }
            }
            Outcome {
                tried,
                status: 200,
                counts,
                accepted: true,
                generated: generated.tokens() as u64,
            }
        }
        Err(e) => {
            let gone = upstream::scope_aborted();
            Outcome {
                tried,
                status: if gone { CLIENT_GONE } else { e.status() },
                accepted: gone,
                ..Outcome::default()
            }
        }
    }
}

pub fn models(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let up = app.upstreams.clone();
    let configured = app.cfg.upstream.model.clone();
    let allowed = ctx.key_models.clone();
    Ok(Reply::deferred(Box::new(move || {
        let mut data = model_list(&up, &configured)?;
        // A key limited to some models sees only those.
        if let Some(allowed) = allowed {
            data.retain(|m| allowed.iter().any(|a| m["id"] == a.as_str()));
        }
        Ok(Reply::json(200, &json!({"object": "list", "data": data})))
    })))
}

/// `GET /v1/models/{id}`: the entry of `/v1/models` with that id (ids may
/// hold `/`), 404 when it is not listed or not allowed to the key.
pub fn model(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let id = ctx.params.first().cloned().unwrap_or_default();
    if ctx.check_model(&id).is_err() {
        return Err(ApiError::NotFound);
    }
    let up = app.upstreams.clone();
    let configured = app.cfg.upstream.model.clone();
    Ok(Reply::deferred(Box::new(move || {
        model_list(&up, &configured)?
            .into_iter()
            .find(|m| m["id"] == id.as_str())
            .map(|m| Reply::json(200, &m))
            .ok_or(ApiError::NotFound)
    })))
}

/// The models in OpenAI's shape: the union of the upstreams' lists, each
/// model once (the first upstream, in section order, that lists it wins).
/// A named upstream contributes only models it serves (others would not
/// be routed to it). An upstream without a list (or an ejected one, not
/// asked) contributes the names it is configured with: the default its
/// configured model. An upstream that fails is left out (and logged); when
/// every one fails, that is the answer, not a list of models that then
/// fail to answer.
fn model_list(ups: &Upstreams, configured: &str) -> Result<Vec<Value>, ApiError> {
    let mut out: Vec<Value> = Vec::new();
    let mut first_err = None;
    let mut any = false;
    for m in ups.members() {
        let is_default = m.name == crate::upstreams::DEFAULT_NAME;
        let listed = if ups.is_ejected(m) {
            Ok(None)
        } else {
            m.client.models()
        };
        let entries = match listed {
            Ok(bytes) => {
                any = true;
                match bytes.as_deref().and_then(normalize_models) {
                    Some(l) if is_default => l,
                    Some(l) => l
                        .into_iter()
                        .filter(|e| e["id"].as_str().is_some_and(|id| m.cfg().serves(id)))
                        .collect(),
                    None => configured_entries(m, is_default.then_some(configured)),
                }
            }
            Err(e) => {
                logging::warn(
                    "an upstream cannot list its models",
                    &[
                        ("upstream", json!(m.name)),
                        ("code", json!(e.code())),
                        (
                            "detail",
                            json!(logging::redact_text(e.detail().unwrap_or(""))),
                        ),
                    ],
                );
                first_err.get_or_insert(e);
                continue;
            }
        };
        for e in entries {
            if out.len() < MAX_MODELS && !out.iter().any(|o| o["id"] == e["id"]) {
                out.push(e);
            }
        }
    }
    match (any, first_err) {
        (false, Some(e)) => Err(e),
        _ => Ok(out),
    }
}

/// What an upstream without a model list offers: the exact names of its
/// `models` (patterns name no model), and `configured` for the default.
fn configured_entries(m: &crate::upstreams::Member, configured: Option<&str>) -> Vec<Value> {
    logging::info(
        "an upstream lists no models; answering the models it is configured with",
        &[("upstream", json!(m.name))],
    );
    configured
        .into_iter()
        .chain(
            m.cfg()
                .models
                .iter()
                .map(String::as_str)
                .filter(|p| !p.ends_with('*')),
        )
        .map(|id| model_entry(id, 0, "portcullis"))
        .collect()
}

fn model_entry(id: &str, created: i64, owned_by: &str) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": owned_by})
}

/// Most models listed.
const MAX_MODELS: usize = 1000;

/// The upstream's list (its bytes) in OpenAI's shape; None when it holds
/// no usable model.
fn normalize_models(list: &[u8]) -> Option<Vec<Value>> {
    let out: Vec<Value> = views::model_entries(list, MAX_MODELS, MODEL_MAX)
        .into_iter()
        .map(|e| {
            model_entry(
                &e.id,
                e.created,
                e.owned_by.as_deref().unwrap_or("upstream"),
            )
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(body: &Value) -> Result<(Value, bool), ApiError> {
        prepare(&CHAT, body.to_string().into_bytes(), "m")
            .map(|p| (serde_json::from_slice(&p.body).unwrap(), p.stream))
    }

    #[test]
    fn prepare_table() {
        let bad = [
            (json!({}), "messages"),
            (json!({"messages": null}), "messages"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": [1]}), "messages[0]"),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
            (json!({"messages": [{"role": 5}]}), "messages[0].role"),
            (
                json!({"messages": [{"role": "root", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"messages": [{"role": "user"}, {"role": "user", "content": {}}]}),
                "messages[1].content",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "model": 3}),
                "model",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stream": "yes"}),
                "stream",
            ),
        ];
        for (body, field) in bad {
            match relay(&body) {
                Err(ApiError::ValidationFailed { field: f, .. }) => {
                    assert_eq!(f, field, "{}", body)
                }
                other => panic!("{} -> {:?}", body, other.map(|_| ())),
            }
        }
        let too_many = format!(
            "{{\"messages\":[{}]}}",
            vec!["{\"role\":\"user\"}"; MAX_MESSAGES + 1].join(",")
        );
        assert!(matches!(
            prepare(&CHAT, too_many.into_bytes(), "m"),
            Err(ApiError::ValidationFailed { ref field, .. }) if field == "messages"
        ));
        for bad_json in ["[1]", "{\"messages\":[}", ""] {
            assert!(matches!(
                prepare(&CHAT, bad_json.as_bytes().to_vec(), "m"),
                Err(ApiError::InvalidJson(_))
            ));
        }
        // A repeated `model` could be read differently upstream: refused.
        let twice = br#"{"model":"a","messages":[{"role":"user","content":"x"}],"model":"b"}"#;
        assert!(matches!(
            prepare(&CHAT, twice.to_vec(), "m"),
            Err(ApiError::ValidationFailed { ref field, .. }) if field == "model"
        ));
        // Each route's required field.
        for (route, field) in [(&COMPLETIONS, "prompt"), (&EMBEDDINGS, "input")] {
            assert!(matches!(
                prepare(route, b"{\"model\":\"x\"}".to_vec(), "m"),
                Err(ApiError::ValidationFailed { field: ref f, .. }) if f == field
            ));
        }
        // Embeddings never stream, whatever the body says.
        let p = prepare(&EMBEDDINGS, br#"{"input":"x","stream":true}"#.to_vec(), "m").unwrap();
        assert!(!p.stream);
        let p = prepare(&RESPONSES, br#"{"input":"x","stream":true}"#.to_vec(), "m").unwrap();
        assert!(p.stream);
    }

    #[test]
    fn bodies_are_forwarded_byte_for_byte() {
        // Vendor fields, odd spacing, key order, escapes and number forms
        // all survive: the bytes are the client's.
        let sent = br#"{ "model" : "x",  "messages":[{"role":"user","content":"caf\u00e9"}],
            "grammar":"root ::= \"yes\" | \"no\"", "top_k": 1.50e1, "min_p":0.05,
            "chat_template_kwargs":{"enable_thinking":false}, "evil": [1,2] }"#;
        let p = prepare(&CHAT, sent.to_vec(), "default").unwrap();
        assert_eq!(p.body, sent.to_vec());
        assert_eq!(p.model, "x");
        // Without a model, only `"model":"default",` is added at the front.
        let sent = br#"  {"messages":[{"role":"user","content":"hi"}],"top_k":40}"#;
        let p = prepare(&CHAT, sent.to_vec(), "def\"ault").unwrap();
        assert_eq!(
            String::from_utf8(p.body).unwrap(),
            r#"  {"model":"def\"ault","messages":[{"role":"user","content":"hi"}],"top_k":40}"#
        );
        assert_eq!(p.model, "def\"ault");
        assert_eq!(
            insert_field(b"{ }".to_vec(), "a", "1"),
            b"{\"a\":1 }".to_vec()
        );
    }

    #[test]
    fn model_lists_are_normalized() {
        let list =
            json!({"object": "list", "data": [{"id": "a", "created": 5}, {"x": 1}, {"id": ""}]});
        let l = normalize_models(list.to_string().as_bytes()).unwrap();
        assert_eq!(l, vec![model_entry("a", 5, "upstream")]);
        let ollama = normalize_models(br#"{"models": [{"name": "llama3"}]}"#).unwrap();
        assert_eq!(ollama[0]["id"], "llama3");
        assert!(normalize_models(br#"{"data": []}"#).is_none());
        assert!(normalize_models(b"[1]").is_none());
    }
}
