//! `GET /api/openapi.json`: the OpenAPI 3.1 document of the contract as
//! implemented. It is generated here, by `document`, from the route table
//! (`router::ROUTES`) and the same `Body`/`Field` values and constants the
//! validators use, so a bound cannot be documented apart from the check
//! that enforces it. The served text is a committed snapshot
//! (`src/routes/openapi.json`, compiled in); the test
//! `snapshot_is_up_to_date` fails when it is stale and says how to
//! regenerate it:
//!
//! ```text
//! cargo test --offline -p portcullis --lib write_openapi_snapshot -- --ignored
//! ```
//!
//! Error answers are derived per route from what can refuse it: the host
//! check (421) and the busy queue (503) everywhere; 401 and the per-key
//! limit on key routes; 403 (Origin, CSRF) on unsafe methods; 400/408/413/
//! 415 where a body is read; 400 where a query is; 404 where an id or a
//! `Local` access can miss; 429 where rate limited; 502/504 where the
//! upstream is called.

use serde_json::{json, Map, Value};

use super::fields::{Body, Field, Kind, Unknown, ID_MAX};
use crate::app::App;
use crate::db::page;
use crate::error::{ApiError, Code};
use crate::http::{Ctx, Method, Reply};
use crate::router::{Access, Answer, Query, RouteClass, RouteDef, ROUTES};

/// The committed snapshot of `document()`.
pub const DOCUMENT: &str = include_str!("openapi.json");
#[cfg(test)]
const SNAPSHOT_PATH: &str = "src/routes/openapi.json";
#[cfg(test)]
const REGENERATE: &str =
    "cargo test --offline -p portcullis --lib write_openapi_snapshot -- --ignored";

pub fn get(_app: &App, _ctx: &mut Ctx) -> Result<Reply, ApiError> {
    Ok(Reply::bytes(
        200,
        "application/json",
        DOCUMENT.as_bytes().to_vec(),
    ))
}

/// The snapshot's text: `document()` pretty-printed, one final newline.
pub fn render() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("a Value always serialises");
    text.push('\n');
    text
}

/// The whole document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for def in ROUTES {
        // `{*id}` (a parameter that may span segments) is `{id}` here.
        let item = paths
            .entry(def.path.replace("{*", "{"))
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("path items are objects");
        item.insert(def.method.as_str().to_ascii_lowercase(), operation(def));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "portcullis",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "A hardened chat backend in front of an OpenAI-compatible LLM server. \
    Generated from the route table (src/router.rs) and the validators' constants; do not edit. \
    Every response carries X-Request-Id and the security headers; rate-limited routes carry \
    RateLimit, RateLimit-Policy and RateLimit-Limit/-Remaining/-Reset. Unsafe methods need an \
    allowed Origin (or Referer), the server's own origin, or a valid API key.",
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API key (pcs_...) from `portcullis keys create`",
                },
            },
            "headers": {
                "X-Request-Id": {
                    "description": "The request's id, also in the error body and the logs",
                    "required": true,
                    "schema": {"type": "string", "minLength": 1},
                },
                "Retry-After": {
                    "description": "Whole seconds to wait",
                    "required": true,
                    "schema": {"type": "integer", "minimum": 0},
                },
            },
        },
    })
}

fn operation(def: &RouteDef) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), operation_id(def).into());
    op.insert("summary".into(), def.summary.into());
    let security = match def.access {
        Access::Key | Access::Admin => json!([{"bearerAuth": []}]),
        Access::Public | Access::Local => json!([]),
    };
    op.insert("security".into(), security);
    let params = parameters(def);
    if !params.is_empty() {
        op.insert("parameters".into(), params.into());
    }
    if let Some(body) = def.body {
        op.insert(
            "requestBody".into(),
            json!({
                "required": true,
                "content": {"application/json": {"schema": schema_ref(body.name)}},
            }),
        );
    }
    op.insert("responses".into(), responses(def));
    Value::Object(op)
}

/// `GET /api/projects/{id}` -> `get_api_projects_id`.
fn operation_id(def: &RouteDef) -> String {
    let path: String = def
        .path
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let mut id = format!("{}_{}", def.method.as_str().to_ascii_lowercase(), path);
    while id.contains("__") {
        id = id.replace("__", "_");
    }
    id.trim_end_matches('_').to_string()
}

fn parameters(def: &RouteDef) -> Vec<Value> {
    let mut out = Vec::new();
    for segment in def.path.split('/') {
        let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) else {
            continue;
        };
        let (name, spans) = match name.strip_prefix('*') {
            Some(n) => (n, true),
            None => (name, false),
        };
        let schema = match name {
            _ if spans => json!({
                "type": "string",
                "minLength": 1,
                "maxLength": super::fields::MODEL_MAX,
                "description": "may hold `/` (model ids such as `org/model`)",
            }),
            "asset" => json!({
                "type": "string",
                "enum": super::ui::files().skip(1).map(|(n, _)| n).collect::<Vec<_>>(),
            }),
            _ => json!({"type": "string", "minLength": 1, "maxLength": ID_MAX}),
        };
        out.push(json!({"name": name, "in": "path", "required": true, "schema": schema}));
    }
    for q in def.query {
        out.push(match q {
            Query::Limit => json!({
                "name": "limit",
                "in": "query",
                "description": "Items per page",
                "schema": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": page::MAX_LIMIT,
                    "default": page::DEFAULT_LIMIT,
                },
            }),
            Query::Cursor(kind) => json!({
                "name": "cursor",
                "in": "query",
                "description": "The previous page's next_cursor; empty means the first page",
                "schema": {"type": "string", "pattern": cursor_pattern(*kind)},
            }),
            Query::Field(f) => json!({
                "name": f.name,
                "in": "query",
                "description": f.doc,
                "schema": field_schema(&f.not_null()),
            }),
        });
    }
    out
}

/// The cursors `db::page` issues for `kind`: the hex of
/// `<tag><created_at>.<seq>`, or empty. Tag and separator come from
/// `page::encode` itself; at most 18 digits each, which always fit the
/// i64 that `page::decode` parses (a cursor we issue has 13 and a few).
fn cursor_pattern(kind: page::Kind) -> String {
    let sample = page::encode(
        page::Position {
            created_at: 0,
            seq: 0,
        },
        kind,
    );
    // sample = hex(tag) + hex('0') + hex('.') + hex('0')
    let hex_class = |h: &str| -> String {
        h.chars()
            .map(|c| match c {
                'a'..='f' => format!("[{}{}]", c, c.to_ascii_uppercase()),
                _ => c.to_string(),
            })
            .collect()
    };
    let digit = "(3[0-9]){1,18}";
    format!(
        "^({}{}{}{})?$",
        hex_class(&sample[0..2]),
        digit,
        hex_class(&sample[4..6]),
        digit
    )
}

/// A field naming another resource by id (`*_id`): an unknown one is 404.
fn is_reference(f: &Field) -> bool {
    f.name.ends_with("_id")
}

fn responses(def: &RouteDef) -> Value {
    let mut r = Map::new();
    success(def, &mut r);
    let unsafe_method = matches!(def.method, Method::Post | Method::Patch | Method::Delete);
    let mut bad_request = Vec::new();
    if def.body.is_some() {
        bad_request.push("invalid_json, validation_failed (param and field name it)");
    } else if !def.query.is_empty() {
        bad_request.push("validation_failed (param and field name the parameter)");
    }
    if !bad_request.is_empty() {
        r.insert("400".into(), error(&bad_request.join("; "), None));
    }
    if def.access.needs_key() {
        r.insert("401".into(), error("unauthorized", None));
    }
    let forbidden = match (def.access, unsafe_method) {
        (Access::Admin, true) => {
            Some("forbidden (not an admin, or a disabled user), origin_not_allowed or csrf_token_invalid")
        }
        (Access::Admin, false) => Some("forbidden (not an admin, or a disabled user)"),
        (Access::Key, true) => {
            Some("forbidden (a disabled user), origin_not_allowed or csrf_token_invalid")
        }
        (Access::Key, false) => Some("forbidden (a disabled user)"),
        (_, true) => Some("origin_not_allowed or csrf_token_invalid"),
        (_, false) => None,
    };
    if let Some(why) = forbidden {
        r.insert("403".into(), error(why, None));
    }
    let can_miss = def.path.contains('{')
        || def.access == Access::Local
        || def.answer == Answer::UiFile
        || def.body.is_some_and(|b| b.fields.iter().any(is_reference))
        || def
            .query
            .iter()
            .any(|q| matches!(q, Query::Field(f) if is_reference(f)));
    if can_miss {
        let why = match def.access {
            Access::Local => "not_found (not a loopback client or trusted proxy)",
            _ => "not_found: an unknown id, in the path or named by a `*_id` field",
        };
        r.insert("404".into(), error(why, None));
    }
    if def.body.is_some() {
        r.insert(
            "408".into(),
            error("request_timeout (the body did not arrive in time)", None),
        );
        r.insert("413".into(), error("payload_too_large", None));
        r.insert("415".into(), error("unsupported_media_type", None));
    }
    r.insert("421".into(), error("host_not_allowed", None));
    if def.class != RouteClass::Exempt || def.access.needs_key() {
        r.insert(
            "429".into(),
            error(
                "rate_limited (too many requests, or too many failed keys from this address)",
                Some("Retry-After"),
            ),
        );
    }
    r.insert("500".into(), error("internal", None));
    if def.upstream {
        r.insert(
            "502".into(),
            error("upstream_unavailable or upstream_error", None),
        );
    }
    if def.answer == Answer::Ready {
        r.insert(
            "503".into(),
            json!({
                "description": "the database check failed (Ready), or server_busy (Error)",
                "headers": request_id_header(None),
                "content": {"application/json": {"schema": {"anyOf": [
                    schema_ref("Ready"),
                    schema_ref("Error"),
                ]}}},
            }),
        );
    } else {
        r.insert(
            "503".into(),
            error("server_busy (Retry-After says when to retry)", None),
        );
    }
    if def.upstream {
        r.insert("504".into(), error("upstream_timeout", None));
    }
    Value::Object(r)
}

fn success(def: &RouteDef, r: &mut Map<String, Value>) {
    let headers = request_id_header(None);
    let (status, value) = match def.answer {
        Answer::Json(status, schema) => (
            status,
            json!({
                "description": schema,
                "headers": headers,
                "content": {"application/json": {"schema": schema_ref(schema)}},
            }),
        ),
        Answer::Page(schema) => (
            200,
            json!({
                "description": format!("a page of {}", schema),
                "headers": headers,
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["items", "next_cursor"],
                    "properties": {
                        "items": {"type": "array", "items": schema_ref(schema)},
                        "next_cursor": {"type": ["string", "null"]},
                    },
                }}},
            }),
        ),
        Answer::Empty(status) => (status, json!({"description": "done", "headers": headers})),
        Answer::JsonOrStream(schema, events) => (
            200,
            json!({
                "description": "JSON, or with \"stream\": true a text/event-stream \
                    (`: ping` comments while the upstream is silent)",
                "headers": headers,
                "content": {
                    "application/json": {"schema": schema_ref(schema)},
                    "text/event-stream": {"schema": {
                        "description": "one event; `data` is JSON text, or `[DONE]` ending an OpenAI stream",
                        "type": "object",
                        "required": ["data"],
                        "properties": {
                            "event": {"enum": events},
                            "data": {"type": "string"},
                            "id": {"type": "string"},
                            "retry": {"type": "integer"},
                        },
                    }},
                },
            }),
        ),
        Answer::UiFile => {
            let files: Vec<(&str, &str)> = super::ui::files().collect();
            let media: Vec<&str> = match def.path {
                "/" => files.iter().take(1).map(|(_, m)| *m).collect(),
                "/favicon.ico" => vec![super::ui::FAVICON_TYPE],
                _ => files.iter().skip(1).map(|(_, m)| *m).collect(),
            };
            let mut content = Map::new();
            for m in media {
                content.insert(m.into(), json!({"schema": {"type": "string"}}));
            }
            r.insert(
                "304".into(),
                json!({"description": "unchanged (If-None-Match)", "headers": headers}),
            );
            (
                200,
                json!({"description": "the file (ETag)", "headers": headers, "content": content}),
            )
        }
        Answer::Text => (
            200,
            json!({
                "description": "Prometheus text exposition format",
                "headers": headers,
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }),
        ),
        Answer::Ready => (
            200,
            json!({
                "description": "ready",
                "headers": headers,
                "content": {"application/json": {"schema": schema_ref("Ready")}},
            }),
        ),
    };
    r.insert(status.to_string(), value);
}

fn request_id_header(extra: Option<&str>) -> Value {
    let mut h = Map::new();
    h.insert(
        "X-Request-Id".into(),
        json!({"$ref": "#/components/headers/X-Request-Id"}),
    );
    if let Some(name) = extra {
        h.insert(
            name.into(),
            json!({"$ref": format!("#/components/headers/{}", name)}),
        );
    }
    Value::Object(h)
}

fn error(description: &str, header: Option<&str>) -> Value {
    json!({
        "description": description,
        "headers": request_id_header(header),
        "content": {"application/json": {"schema": schema_ref("Error")}},
    })
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{}", name)})
}

/// Characters `char::is_whitespace` (what the validators trim) calls
/// white space, as a regex class body.
const WHITE_SPACE: &str =
    "\\u0009-\\u000d\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";

/// The JSON Schema of one body field: exactly what `Field`'s getters accept.
pub fn field_schema(f: &Field) -> Value {
    let mut s = Map::new();
    let base = match f.kind {
        Kind::Str { .. } | Kind::Text { .. } => "string",
        Kind::Int { .. } => "integer",
        Kind::Num { .. } => "number",
        Kind::Bool => "boolean",
        Kind::Messages { .. } => "array",
        Kind::Any => "",
    };
    if !base.is_empty() {
        let ty = if f.nullable {
            json!([base, "null"])
        } else {
            json!(base)
        };
        s.insert("type".into(), ty);
    }
    if !f.doc.is_empty() {
        s.insert("description".into(), f.doc.into());
    }
    match f.kind {
        Kind::Str { min, max } => {
            if min > 0 {
                s.insert("minLength".into(), min.into());
            }
            s.insert("maxLength".into(), max.into());
            s.insert("pattern".into(), "^[^\\u0000]*$".into());
        }
        Kind::Text { min, max } => {
            if min > 0 {
                s.insert("minLength".into(), min.into());
            }
            s.insert("maxLength".into(), max.into());
            s.insert(
                "pattern".into(),
                format!("^[^\\u0000]*[^\\u0000{}][^\\u0000]*$", WHITE_SPACE).into(),
            );
        }
        Kind::Int { min, max } => {
            s.insert("minimum".into(), min.into());
            s.insert("maximum".into(), max.into());
        }
        Kind::Num { min, max } => {
            s.insert("minimum".into(), min.into());
            s.insert("maximum".into(), max.into());
        }
        Kind::Bool | Kind::Any => {}
        Kind::Messages { max, roles } => {
            s.insert("minItems".into(), 1.into());
            s.insert("maxItems".into(), max.into());
            s.insert(
                "items".into(),
                json!({
                    "type": "object",
                    "required": ["role"],
                    "properties": {
                        "role": {"type": "string", "enum": roles},
                        "content": {
                            "type": ["string", "array", "null"],
                            "description": "text, or an array of content parts",
                        },
                    },
                }),
            );
        }
    }
    Value::Object(s)
}

/// The JSON Schema of a request body.
pub fn body_schema(body: &Body) -> Value {
    let mut props = Map::new();
    for f in body.fields {
        props.insert(f.name.into(), field_schema(f));
    }
    let required: Vec<&str> = body
        .fields
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    let mut s = json!({
        "type": "object",
        "properties": props,
        "additionalProperties": body.unknown != Unknown::Refused,
    });
    if !required.is_empty() {
        s["required"] = json!(required);
    }
    match body.unknown {
        Unknown::Dropped => s["description"] = "Other fields are dropped, never forwarded".into(),
        Unknown::Passed => {
            s["description"] =
                "Other fields (vendor parameters included) are forwarded to the upstream unchanged"
                    .into()
        }
        Unknown::Refused => {}
    }
    s
}

/// Every error code the server can answer, and the OpenAI error types
/// they map to (`error::Code`, the one table of codes).
fn error_codes() -> (Vec<&'static str>, Vec<&'static str>) {
    let codes = Code::ALL.iter().map(|c| c.as_str()).collect();
    let mut types: Vec<&str> = Code::ALL.iter().map(|c| c.error_type()).collect();
    types.sort_unstable();
    types.dedup();
    (codes, types)
}

fn schemas() -> Value {
    let time =
        json!({"type": "string", "format": "date-time", "example": "2026-11-23T15:29:03.123Z"});
    let opt_str = json!({"type": ["string", "null"]});
    let (codes, types) = error_codes();
    let mut s = json!({
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message", "type", "param", "request_id"],
                "properties": {
                    "code": {"type": "string", "enum": codes},
                    "message": {"type": "string", "description": "for humans; never internals"},
                    "type": {"type": "string", "enum": types, "description": "the OpenAI error type that fits"},
                    "param": {"type": ["string", "null"], "description": "the offending field, or null"},
                    "request_id": {"type": "string"},
                    "field": {"type": "string", "description": "validation_failed: the offending field (as param)"},
                    "detail": {"type": "string", "description": "only with debug = true"},
                },
            }},
        },
        "Health": {
            "type": "object",
            "required": ["status", "version"],
            "properties": {"status": {"enum": ["ok"]}, "version": {"type": "string"}},
        },
        "Ready": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"enum": ["ok", "fail"]},
                "checks": {"type": "object", "properties": {
                    "database": {"type": "object"},
                    "upstream": {"type": "object"},
                }},
            },
        },
        "OpenApi": {
            "type": "object",
            "required": ["openapi", "info", "paths"],
            "description": "this document",
        },
        "CsrfToken": {
            "type": "object",
            "required": ["token", "expires_in", "signed_in"],
            "properties": {
                "token": {"type": "string"},
                "expires_in": {"type": "integer", "description": "seconds"},
                "signed_in": {"type": "boolean", "description": "the request carries a live session, or auth mode is none: whether `/api/me` will answer"},
            },
        },
        "Project": {
            "type": "object",
            "required": ["id", "name", "description", "created_at", "updated_at"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "description": opt_str,
                "created_at": time,
                "updated_at": time,
            },
        },
        "Conversation": {
            "type": "object",
            "required": ["id", "project_id", "title", "model", "system_prompt", "created_at", "updated_at"],
            "properties": {
                "id": {"type": "string"},
                "project_id": opt_str,
                "title": opt_str,
                "model": opt_str,
                "system_prompt": opt_str,
                "created_at": time,
                "updated_at": time,
            },
        },
        "Message": {
            "type": "object",
            "required": ["id", "conversation_id", "role", "content", "status", "model", "created_at", "finish_reason"],
            "properties": {
                "id": {"type": "string"},
                "conversation_id": {"type": "string"},
                "role": {"enum": ["system", "user", "assistant"]},
                "content": {"type": "string"},
                "status": {"enum": ["complete", "partial", "error"]},
                "model": opt_str,
                "created_at": time,
                "usage": {"type": ["object", "null"]},
                "finish_reason": {
                    "enum": ["stop", "length", "content_filter", "tool_calls", null],
                    "description": "why a complete answer ended (`length`: cut at the length limit); null for user turns and while partial or on error",
                },
            },
        },
        "SignedIn": {
            "type": "object",
            "required": ["user"],
            "properties": {"user": schema_ref("Principal")},
        },
        "Me": {
            "type": "object",
            "required": ["user", "auth", "usage"],
            "properties": {
                "user": schema_ref("Principal"),
                "auth": {"enum": ["key", "session", "none"]},
                "usage": {
                    "type": "object",
                    "description": "the caller's limits in force (0: none) and tokens spent today and this month (UTC)",
                    "required": ["limits", "today", "month", "in_flight_tokens", "streams"],
                    "properties": {
                        "limits": schema_ref("Limits"),
                        "today": {"type": "object", "properties": {"tokens": {"type": "integer"}, "day": {"type": "string", "format": "date"}}},
                        "month": {"type": "object", "properties": {"tokens": {"type": "integer"}, "from": {"type": "string", "format": "date"}}},
                        "in_flight_tokens": {"type": "integer", "description": "reserved by calls not yet settled"},
                        "streams": {"type": "integer"},
                    },
                },
            },
        },
        "Limits": {
            "type": "object",
            "properties": {
                "tokens_per_minute": {"type": ["integer", "null"]},
                "tokens_per_day": {"type": ["integer", "null"]},
                "tokens_per_month": {"type": ["integer", "null"]},
                "max_streams": {"type": ["integer", "null"]},
            },
        },
        "UsageReport": {
            "type": "object",
            "required": ["since", "until", "group_by", "items"],
            "properties": {
                "since": time,
                "until": time,
                "group_by": {"enum": ["day", "model", "key", "user"]},
                "items": {"type": "array", "items": {
                    "type": "object",
                    "required": ["group", "requests", "prompt_tokens", "completion_tokens"],
                    "properties": {
                        "group": {"type": ["string", "null"], "description": "the day (YYYY-MM-DD), model, key id (null: no key) or user id"},
                        "requests": {"type": "integer"},
                        "prompt_tokens": {"type": "integer"},
                        "completion_tokens": {"type": "integer"},
                    },
                }},
            },
        },
        "Principal": {
            "type": "object",
            "required": ["id", "name", "role"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "role": {"enum": ["admin", "member"]},
            },
        },
        "User": {
            "type": "object",
            "required": ["id", "name", "role", "disabled", "has_password", "created_at"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "role": {"enum": ["admin", "member"]},
                "disabled": {"type": "boolean"},
                "has_password": {"type": "boolean"},
                "created_at": time,
                "limits": {"description": "the user's own limits; null: the `[limits]` default", "allOf": [schema_ref("Limits")]},
            },
        },
        "UserList": {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": schema_ref("User")}},
        },
        "Key": {
            "type": "object",
            "required": ["id", "name", "prefix", "user_id", "created_at", "expires_at", "revoked_at", "models"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "prefix": {"type": "string", "description": "the key's first characters, to tell keys apart"},
                "user_id": {"type": "string"},
                "created_at": time,
                "expires_at": {"type": ["string", "null"], "format": "date-time"},
                "revoked_at": {"type": ["string", "null"], "format": "date-time"},
                "models": {"type": ["array", "null"], "items": {"type": "string"}},
            },
        },
        "KeyList": {
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": schema_ref("Key")}},
        },
        "KeyCreated": {
            "description": "a Key with the key itself, shown only this once",
            "allOf": [schema_ref("Key"), {
                "type": "object",
                "required": ["key"],
                "properties": {"key": {"type": "string"}},
            }],
        },
        "ChatReply": {
            "type": "object",
            "required": ["conversation_id", "user_message_id", "message"],
            "properties": {
                "conversation_id": {"type": "string"},
                "user_message_id": {"type": "string"},
                "message": schema_ref("Message"),
            },
        },
        "ChatCompletion": {
            "type": "object",
            "description": "the upstream's chat.completion, relayed as received",
        },
        "Completion": {
            "type": "object",
            "description": "the upstream's text_completion, relayed as received",
        },
        "EmbeddingList": {
            "type": "object",
            "description": "the upstream's embedding list, relayed as received",
        },
        "Response": {
            "type": "object",
            "description": "the upstream's Responses API response, relayed as received",
        },
        "Model": {
            "type": "object",
            "required": ["id", "object"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"enum": ["list"]},
                "data": {"type": "array", "items": schema_ref("Model")},
            },
        },
    });
    for def in ROUTES {
        if let Some(body) = def.body {
            s[body.name] = body_schema(body);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::Route;

    #[test]
    fn snapshot_is_up_to_date() {
        let fresh = render();
        if fresh != DOCUMENT {
            panic!(
                "{} is stale: the route table or a field constant changed.\n\
                 Regenerate it with:\n    {}\nand commit the result.",
                SNAPSHOT_PATH, REGENERATE
            );
        }
    }

    /// Writes the snapshot (see the module doc).
    #[test]
    #[ignore = "writes src/routes/openapi.json; run on purpose"]
    fn write_openapi_snapshot() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SNAPSHOT_PATH);
        std::fs::write(&path, render()).expect("write the snapshot");
        eprintln!("wrote {}", path.display());
    }

    #[test]
    fn document_has_every_route_of_the_table_and_nothing_else() {
        let doc = document();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                documented.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let mut routed: Vec<(String, String)> = ROUTES
            .iter()
            .map(|d| (d.method.as_str().to_string(), d.path.replace("{*", "{")))
            .collect();
        documented.sort();
        routed.sort();
        assert_eq!(documented, routed);
        let ids: std::collections::BTreeSet<String> = ROUTES.iter().map(operation_id).collect();
        assert_eq!(ids.len(), ROUTES.len(), "operation ids are unique");
    }

    #[test]
    fn every_error_code_of_the_contract_is_in_the_error_schema() {
        let doc = document();
        let err = &doc["components"]["schemas"]["Error"]["properties"]["error"];
        let codes = err["properties"]["code"]["enum"].as_array().unwrap();
        for code in [
            "invalid_json",
            "validation_failed",
            "unauthorized",
            "origin_not_allowed",
            "csrf_token_invalid",
            "not_found",
            "method_not_allowed",
            "payload_too_large",
            "unsupported_media_type",
            "host_not_allowed",
            "rate_limited",
            "internal",
            "upstream_unavailable",
            "upstream_error",
            "server_busy",
            "upstream_timeout",
            "bad_request",
            "request_timeout",
            "not_implemented",
            "http_version_not_supported",
        ] {
            assert!(codes.iter().any(|c| c == code), "{} missing", code);
        }
        for field in ["code", "message", "type", "param", "request_id"] {
            assert!(
                err["required"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|f| f == field),
                "{}",
                field
            );
        }
        // The body the server writes matches the schema's required fields.
        let body: Value =
            serde_json::from_slice(&ApiError::validation("name", "x").to_body("r1", false))
                .unwrap();
        for field in ["code", "message", "type", "param", "request_id"] {
            assert!(body["error"].get(field).is_some(), "{}", field);
        }
    }

    /// The validators' constants reach the document (issue 11's findings).
    #[test]
    fn bounds_come_from_the_validators_constants() {
        let doc = document();
        let s = &doc["components"]["schemas"];
        let chat = &s["ChatRequest"]["properties"];
        assert_eq!(
            chat["message"]["maxLength"],
            super::super::chat::MESSAGE_MAX
        );
        assert_eq!(chat["message"]["minLength"], 1);
        assert_eq!(chat["max_tokens"]["type"], json!(["integer", "null"]));
        assert_eq!(
            chat["max_tokens"]["maximum"],
            super::super::chat::MAX_TOKENS_MAX
        );
        assert_eq!(chat["conversation_id"]["maxLength"], ID_MAX);
        assert_eq!(s["ProjectCreate"]["properties"]["name"]["maxLength"], 200);
        for body in ["ConversationCreate", "ConversationUpdate", "ChatRequest"] {
            assert_eq!(s[body]["properties"]["model"]["minLength"], 1, "{}", body);
        }
        let v1 = &s["OpenAiChatRequest"]["properties"];
        assert_eq!(v1["model"]["minLength"], 1);
        assert_eq!(
            v1["messages"]["maxItems"],
            super::super::openai::MAX_MESSAGES
        );
        assert_eq!(
            v1["messages"]["items"]["properties"]["role"]["enum"],
            json!(super::super::openai::ROLES)
        );
        let limit = &doc["paths"]["/api/projects"]["get"]["parameters"][0]["schema"];
        assert_eq!(
            (limit["minimum"].clone(), limit["maximum"].clone()),
            (json!(1), json!(200))
        );
    }

    #[test]
    fn cursor_pattern_describes_the_cursors_the_lists_issue() {
        assert_eq!(
            cursor_pattern(page::Kind::Projects),
            "^(70(3[0-9]){1,18}2[eE](3[0-9]){1,18})?$"
        );
        let c = page::encode(
            page::Position {
                created_at: 1_795_447_743_123,
                seq: 42,
            },
            page::Kind::Messages,
        );
        assert!(c.starts_with("6d") && c.contains("2e"), "{}", c);
        assert!(cursor_pattern(page::Kind::Messages).starts_with("^(6[dD]"));
    }

    #[test]
    fn white_space_class_is_what_trim_removes() {
        let listed: Vec<char> = (0..=0x10FFFFu32)
            .filter_map(char::from_u32)
            .filter(|c| c.is_whitespace())
            .collect();
        let mut from_class = Vec::new();
        let class = WHITE_SPACE.replace("\\u", "");
        let mut rest = class.as_str();
        while !rest.is_empty() {
            let lo = u32::from_str_radix(&rest[..4], 16).unwrap();
            rest = &rest[4..];
            let hi = match rest.strip_prefix('-') {
                Some(r) => {
                    let hi = u32::from_str_radix(&r[..4], 16).unwrap();
                    rest = &r[4..];
                    hi
                }
                None => lo,
            };
            from_class.extend((lo..=hi).filter_map(char::from_u32));
        }
        assert_eq!(from_class, listed);
    }

    #[test]
    fn access_and_errors_follow_the_table() {
        let doc = document();
        for route in Route::ALL {
            let d = route.def();
            let op =
                &doc["paths"][d.path.replace("{*", "{")][d.method.as_str().to_ascii_lowercase()];
            let has = |status: &str| op["responses"].get(status).is_some();
            assert_eq!(has("401"), d.access.needs_key(), "{}", d.path);
            assert_eq!(
                op["security"].as_array().unwrap().is_empty(),
                route.auth_exempt()
            );
            assert_eq!(op.get("requestBody").is_some(), route.takes_body());
            assert_eq!(has("502"), d.upstream, "{}", d.path);
        }
    }
}
