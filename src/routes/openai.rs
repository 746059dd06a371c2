//! `POST /v1/chat/completions` and `GET /v1/models`: an OpenAI-compatible
//! relay to the upstream, behind the same filters, rate limits and stream
//! slots as `/api/chat`. Works unmodified with the official OpenAI SDKs
//! (`scripts/openai_sdk_check.py`).
//!
//! The request must be an object with a non-empty `messages` array of
//! objects with a known `role`; `model` defaults to `[upstream] model`. The
//! OpenAI fields in `RELAYED_FIELDS` are passed through as sent; any other
//! field is dropped (not an error: SDKs add new optional fields over time,
//! and we never forward what we have not reviewed). Answers are relayed as
//! the upstream sent them: non-streaming bounded by `max_response_bytes`,
//! streaming re-framed as `data: {...}` events ending with `data: [DONE]`.
//! Errors use the contract's body (`{"error":{"code","message","type",
//! "param","request_id"}}`, which OpenAI SDKs read as an API error); a failure after
//! the stream began is sent as one `data: {"error":...}` event, and the
//! stream ends without `[DONE]` (the SDKs raise it).
//!
//! Nothing here builds a `Value` tree of what a client or the upstream
//! sent: the request's top level is read as raw fields (`json_body`),
//! `messages` is checked element by element with a visitor that stores
//! nothing, and the upstream's copy is written from the raw texts; answers
//! are relayed as the bytes received (`upstream::views`).

use std::collections::BTreeMap;
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
use crate::routes::fields::{Body, Field, Kind, Unknown, MODEL_MAX};
use crate::sse::{self, Flow, PumpEnd, PumpLimits};
use crate::upstream::{self, views, StreamEvent};

/// OpenAI chat-completion fields relayed to the upstream unchanged.
const RELAYED_FIELDS: &[&str] = &[
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "max_completion_tokens",
    "max_tokens",
    "n",
    "parallel_tool_calls",
    "presence_penalty",
    "reasoning_effort",
    "response_format",
    "seed",
    "stop",
    "stream_options",
    "temperature",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "user",
];
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

/// `POST /v1/chat/completions`: `model`, `messages` and `stream` checked,
/// the `RELAYED_FIELDS` passed on as sent, any other field dropped.
pub const BODY: Body = Body {
    name: "OpenAiChatRequest",
    fields: &{
        const ANY: Field = Field::new("", Kind::Any).doc("passed to the upstream as sent");
        let mut all = [ANY; 3 + RELAYED_FIELDS.len()];
        all[0] = MODEL;
        all[1] = MESSAGES;
        all[2] = STREAM;
        let mut i = 0;
        while i < RELAYED_FIELDS.len() {
            all[3 + i].name = RELAYED_FIELDS[i];
            i += 1;
        }
        all
    },
    unknown: Unknown::Dropped,
};

/// Validates an OpenAI chat request (the body's bytes) and builds the
/// upstream's copy as JSON text: `model`, `messages` and the
/// `RELAYED_FIELDS` as sent, `stream` as a boolean. Returns it, whether
/// it asks for a stream, and the model it names.
pub fn relay_request(
    body: &[u8],
    default_model: &str,
) -> Result<(Vec<u8>, bool, String), ApiError> {
    let fields = BODY.parse(body)?;
    let messages = fields
        .raw("messages")
        .ok_or_else(|| ApiError::validation("messages", "is required"))?;
    check_messages(messages)?;
    let model = MODEL
        .opt_str(&fields)?
        .unwrap_or_else(|| default_model.to_string());
    let stream = STREAM.opt_bool(&fields)?.unwrap_or(false);

    let model_raw = serde_json::value::to_raw_value(&model).map_err(ApiError::internal)?;
    let stream_raw = serde_json::value::to_raw_value(&stream).map_err(ApiError::internal)?;
    let mut out: BTreeMap<&str, &RawValue> = BTreeMap::new();
    out.insert("model", &model_raw);
    out.insert("messages", messages);
    out.insert("stream", &stream_raw);
    for (name, raw) in fields.iter() {
        if RELAYED_FIELDS.contains(&name) {
            out.insert(name, raw);
        }
    }
    if !fields.unknown().is_empty() {
        logging::debug(
            "dropped unknown OpenAI fields",
            &[("fields", json!(fields.unknown()))],
        );
    }
    let text = serde_json::to_vec(&out).map_err(ApiError::internal)?;
    Ok((text, stream, model))
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
pub fn log_stream_end(route: crate::router::Route, outcome: &str, started: Instant) {
    logging::info(
        "stream ended",
        &[
            ("route", json!(route.name())),
            ("outcome", json!(outcome)),
            ("duration_ms", json!(started.elapsed().as_millis() as u64)),
        ],
    );
}

pub fn completions(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let (request, stream, model) = relay_request(&ctx.body, &app.cfg.upstream.model)?;
    // A key with a model allowlist: 403 `forbidden` for any other model.
    ctx.check_model(&model)?;
    if !stream {
        // Waits on a relay thread, not a worker (`server::defer`). The
        // answer is relayed as received: checked, never parsed into a tree.
        let up = app.upstream.clone();
        return Ok(Reply::deferred(Box::new(move || {
            let answer = up.complete(&request)?;
            Ok(Reply::bytes(200, "application/json", answer))
        })));
    }

    let slot = app
        .streams
        .try_acquire(crate::streams::client_key(ctx))
        .ok_or(ApiError::ServerBusy { retry_after_s: 1 })?;
    let mut handle = app.upstream.open_stream(request, &ctx.request_id)?;
    let ping_every = app.cfg.upstream.ping_interval;
    let max_stream = app.cfg.upstream.max_stream;
    let request_id = ctx.request_id.clone();
    let metrics = app.metrics.clone();
    let grace = app.upstream.head_grace();
    Ok(sse::reply(Box::new(move |out| {
        let _slot = slot;
        let started = Instant::now();
        if let Some(code) = sse::open_or_fail(out, &mut handle, grace, &metrics, || {}) {
            log_stream_end(crate::router::Route::ChatCompletions, code, started);
            return;
        }
        let mut outcome = "complete";
        let limits = PumpLimits {
            ping_every,
            deadline: started + max_stream,
        };
        let end = sse::pump(out, &mut handle, &limits, |out, ev| match ev {
            StreamEvent::Opened => Ok(Flow::Continue),
            StreamEvent::Chunk(chunk) => sse::data_raw(out, &chunk.raw).map(|_| Flow::Continue),
            StreamEvent::Done => sse::done_marker(out).map(|_| Flow::Stop),
            StreamEvent::Failed(err) => {
                upstream::log_failure(&err);
                metrics.record_upstream_error(err.code());
                outcome = err.code();
                sse::data(out, &error_value(&err, &request_id)).map(|_| Flow::Stop)
            }
        });
        if end == PumpEnd::ClientGone {
            outcome = "client_gone";
        }
        log_stream_end(crate::router::Route::ChatCompletions, outcome, started);
    })))
}

pub fn models(app: &App, _ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let up = app.upstream.clone();
    let configured = app.cfg.upstream.model.clone();
    Ok(Reply::deferred(Box::new(move || {
        models_reply(&up, &configured)
    })))
}

/// `/v1/models`, on a relay thread: the upstream's list, or the configured
/// model when the upstream cannot list.
fn models_reply(up: &crate::upstream::Upstream, configured: &str) -> Result<Reply, ApiError> {
    let listed = up.models();
    let data = match &listed {
        Ok(bytes) => normalize_models(bytes),
        Err(_) => None,
    };
    let data = data.unwrap_or_else(|| {
        let why = match &listed {
            Err(e) => format!("{}: {}", e.code(), e.detail().unwrap_or("")),
            Ok(_) => "the upstream's model list holds no usable entry".to_string(),
        };
        logging::warn(
            "upstream cannot list models; answering the configured model",
            &[("detail", json!(logging::redact_text(&why)))],
        );
        vec![model_entry(configured, 0, "portcullis")]
    });
    Ok(Reply::json(200, &json!({"object": "list", "data": data})))
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
        relay_request(body.to_string().as_bytes(), "m")
            .map(|(text, stream, _)| (serde_json::from_slice(&text).unwrap(), stream))
    }

    #[test]
    fn relay_request_table() {
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
            relay_request(too_many.as_bytes(), "m"),
            Err(ApiError::ValidationFailed { ref field, .. }) if field == "messages"
        ));
        let (req, stream) = relay(
            &json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}], "name": "n"}], "temperature": 0.2, "evil": 1, "stream": true, "tools": [{"type": "function"}]}),
        )
        .unwrap();
        assert!(stream);
        assert_eq!(req["model"], "m");
        assert_eq!(req["temperature"], 0.2);
        assert_eq!(req["tools"], json!([{"type": "function"}]));
        assert_eq!(req["messages"][0]["name"], "n", "messages relayed as sent");
        assert!(req.get("evil").is_none());
        for bad_json in ["[1]", "{\"messages\":[}", ""] {
            assert!(matches!(
                relay_request(bad_json.as_bytes(), "m"),
                Err(ApiError::InvalidJson(_))
            ));
        }
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
