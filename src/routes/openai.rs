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
//! Errors use the contract's body (`{"error":{"code","message",
//! "request_id"}}`, which OpenAI SDKs read as an API error); a failure after
//! the stream began is sent as one `data: {"error":...}` event, and the
//! stream ends without `[DONE]` (the SDKs raise it).

use std::time::Instant;

use serde_json::{json, Map, Value};

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};
use crate::json_body;
use crate::logging;
use crate::sse::{self, Flow, PumpEnd};
use crate::upstream::{self, StreamEvent};

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
const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];
/// Most messages one relayed request may carry.
const MAX_MESSAGES: usize = 10_000;
const MAX_MODEL_CHARS: usize = 200;

/// Validates an OpenAI chat request and builds the upstream's copy.
/// Returns it and whether it asks for a stream.
pub fn relay_request(
    body: &Map<String, Value>,
    default_model: &str,
) -> Result<(Value, bool), ApiError> {
    let messages = match body.get("messages") {
        Some(Value::Array(m)) if !m.is_empty() && m.len() <= MAX_MESSAGES => m,
        Some(Value::Array(_)) => {
            return Err(ApiError::validation(
                "messages",
                format!("must hold 1 to {} messages", MAX_MESSAGES),
            ))
        }
        Some(_) => return Err(ApiError::validation("messages", "must be an array")),
        None => return Err(ApiError::validation("messages", "is required")),
    };
    for (i, m) in messages.iter().enumerate() {
        let field = format!("messages[{}].role", i);
        let role = m
            .as_object()
            .ok_or_else(|| ApiError::validation(&format!("messages[{}]", i), "must be an object"))?
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::validation(&field, "is required"))?;
        if !ROLES.contains(&role) {
            return Err(ApiError::validation(
                &field,
                format!("must be one of {}", ROLES.join(", ")),
            ));
        }
        match m.get("content") {
            None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(ApiError::validation(
                    &format!("messages[{}].content", i),
                    "must be a string, an array of parts or null",
                ))
            }
        }
    }
    let model = json_body::opt_str(body, "model", 1, MAX_MODEL_CHARS)?
        .unwrap_or_else(|| default_model.to_string());
    let stream = json_body::opt_bool(body, "stream")?.unwrap_or(false);
    let mut out = Map::new();
    out.insert("model".into(), json!(model));
    out.insert("messages".into(), Value::Array(messages.clone()));
    out.insert("stream".into(), json!(stream));
    for f in RELAYED_FIELDS {
        if let Some(v) = body.get(*f) {
            out.insert((*f).to_string(), v.clone());
        }
    }
    let dropped: Vec<&str> = body
        .keys()
        .map(String::as_str)
        .filter(|k| !RELAYED_FIELDS.contains(k) && !["model", "messages", "stream"].contains(k))
        .take(16)
        .collect();
    if !dropped.is_empty() {
        logging::debug(
            "dropped unknown OpenAI fields",
            &[("fields", json!(dropped))],
        );
    }
    Ok((Value::Object(out), stream))
}

/// The contract's error body, as a JSON value (for in-stream errors).
pub fn error_value(err: &ApiError, request_id: &str) -> Value {
    json!({"error": {"code": err.code(), "message": err.message(), "request_id": request_id}})
}

/// Logs how a stream ended (the access log line was written when the head
/// went out).
pub fn log_stream_end(route: &str, outcome: &str, started: Instant) {
    logging::info(
        "stream ended",
        &[
            ("route", json!(route)),
            ("outcome", json!(outcome)),
            ("duration_ms", json!(started.elapsed().as_millis() as u64)),
        ],
    );
}

pub fn completions(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let body = json_body::object(ctx)?;
    let (request, stream) = relay_request(&body, &app.cfg.upstream.model)?;
    if !stream {
        // Waits on a relay thread, not a worker (`server::defer`).
        let up = app.upstream.clone();
        return Ok(Reply::deferred(Box::new(move || {
            let answer = up.complete(&request)?;
            Ok(Reply::json(200, &answer))
        })));
    }

    let slot = app
        .streams
        .try_acquire()
        .ok_or(ApiError::ServerBusy { retry_after_s: 1 })?;
    let mut handle = app.upstream.open_stream(&request, &ctx.request_id)?;
    let ping_every = app.cfg.upstream.ping_interval;
    let request_id = ctx.request_id.clone();
    let metrics = app.metrics.clone();
    let grace = app.upstream.head_grace();
    Ok(sse::reply(Box::new(move |out| {
        let _slot = slot;
        let started = Instant::now();
        if let Some(code) = sse::open_or_fail(out, &mut handle, grace, &metrics) {
            log_stream_end("/v1/chat/completions", code, started);
            return;
        }
        let mut outcome = "complete";
        let end = sse::pump(out, &mut handle, ping_every, |out, ev| match ev {
            StreamEvent::Opened => Ok(Flow::Continue),
            StreamEvent::Chunk(chunk) => sse::data(out, &chunk).map(|_| Flow::Continue),
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
        log_stream_end("/v1/chat/completions", outcome, started);
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
        Ok(list) => normalize_models(list),
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

/// The upstream's list in OpenAI's shape; None when it holds no model.
fn normalize_models(list: &Value) -> Option<Vec<Value>> {
    let entries = list
        .get("data")
        .or_else(|| list.get("models"))?
        .as_array()?;
    let out: Vec<Value> = entries
        .iter()
        .filter_map(|e| {
            let id = e.get("id").or_else(|| e.get("name"))?.as_str()?;
            if id.is_empty() || id.chars().count() > MAX_MODEL_CHARS {
                return None;
            }
            let created = e.get("created").and_then(Value::as_i64).unwrap_or(0);
            let owned_by = e
                .get("owned_by")
                .and_then(Value::as_str)
                .unwrap_or("upstream");
            Some(model_entry(id, created, owned_by))
        })
        .take(1000)
        .collect();
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn relay_request_table() {
        let bad = [
            (json!({}), "messages"),
            (json!({"messages": []}), "messages"),
            (json!({"messages": "hi"}), "messages"),
            (json!({"messages": [1]}), "messages[0]"),
            (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
            (
                json!({"messages": [{"role": "root", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
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
            match relay_request(&obj(body.clone()), "m") {
                Err(ApiError::ValidationFailed { field: f, .. }) => {
                    assert_eq!(f, field, "{}", body)
                }
                other => panic!("{} -> {:?}", body, other.map(|_| ())),
            }
        }
        let (req, stream) = relay_request(
            &obj(json!({"messages": [{"role": "user", "content": "x"}], "temperature": 0.2, "evil": 1, "stream": true})),
            "default-model",
        )
        .unwrap();
        assert!(stream);
        assert_eq!(req["model"], "default-model");
        assert_eq!(req["temperature"], 0.2);
        assert!(req.get("evil").is_none());
    }

    #[test]
    fn model_lists_are_normalized() {
        let l = normalize_models(
            &json!({"object": "list", "data": [{"id": "a", "created": 5}, {"x": 1}]}),
        )
        .unwrap();
        assert_eq!(l, vec![model_entry("a", 5, "upstream")]);
        let ollama = normalize_models(&json!({"models": [{"name": "llama3"}]})).unwrap();
        assert_eq!(ollama[0]["id"], "llama3");
        assert!(normalize_models(&json!({"data": []})).is_none());
        assert!(normalize_models(&json!([1])).is_none());
    }
}
