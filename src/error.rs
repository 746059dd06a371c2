//! The one error type of the request path. Its variants are exactly the
//! contract's error codes (docs/contract.md "Errors"); `status` and `code`
//! map them, and `to_body` renders the contract's JSON body. Internal errors
//! are converted at the boundary (`From` impls in the modules that own them)
//! and their private detail is only ever shown with `debug = true`.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    InvalidJson(String),
    ValidationFailed {
        field: String,
        message: String,
    },
    Unauthorized,
    /// 401 at sign-in: the same answer for a wrong name and a wrong
    /// password.
    SignInFailed,
    /// 403: authenticated, but the role or the key does not allow this
    /// (admin route, model not in the key's allowlist, disabled user).
    Forbidden,
    OriginNotAllowed,
    CsrfTokenInvalid,
    NotFound,
    MethodNotAllowed {
        allow: Vec<&'static str>,
    },
    PayloadTooLarge,
    UnsupportedMediaType,
    HostNotAllowed,
    RateLimited {
        retry_after_s: u64,
    },
    /// A token budget (`window`: "day" or "month") is spent until it
    /// renews in `retry_after_s`.
    BudgetExceeded {
        window: &'static str,
        retry_after_s: u64,
    },
    /// A bug; `detail` is logged, and shown only in debug mode.
    Internal {
        detail: String,
    },
    UpstreamUnavailable {
        detail: String,
    },
    UpstreamError {
        detail: String,
    },
    ServerBusy {
        retry_after_s: u64,
    },
    UpstreamTimeout {
        detail: String,
    },
    /// The upstream refused the request as invalid (its 400, 404, 409, 413
    /// or 422): answered with the same status and the upstream's own
    /// message (redacted, at most `UPSTREAM_MESSAGE_MAX` characters; see
    /// `upstream_rejected`), so clients learn why and SDKs do not retry.
    UpstreamRejected {
        status: u16,
        message: String,
        param: Option<String>,
    },
    /// The upstream answered 429: 429 `rate_limited` with its `Retry-After`.
    UpstreamRateLimited {
        retry_after_s: u64,
    },
    /// 404 for a `/v1/...` path this server does not relay; the message
    /// names the path (already cut and redacted, see `unsupported_path`).
    UnsupportedPath {
        path: String,
    },
    /// 408: the head or body did not arrive in time; the connection closes.
    RequestTimeout,
    /// 400: malformed HTTP framing (API.md "HTTP framing"); the connection
    /// closes. `why` names the rule, for logs and debug only.
    BadRequest {
        why: &'static str,
    },
    /// 414: request line over `max_request_line_bytes`.
    UriTooLong,
    /// 417: an `Expect` other than `100-continue`.
    ExpectationFailed,
    /// 431: head over `max_head_bytes` or `max_headers`.
    HeadersTooLarge,
    /// 501: a `Transfer-Encoding` other than exactly `chunked`.
    NotImplemented,
    /// 505: a version other than HTTP/1.0 or HTTP/1.1.
    HttpVersionNotSupported,
}

/// Most characters of an upstream's own message relayed to the client.
pub const UPSTREAM_MESSAGE_MAX: usize = 512;

/// The upstream statuses that mean "this request is invalid" (API.md
/// "Errors: additions"): relayed as `upstream_rejected` with that status.
pub const UPSTREAM_REJECTIONS: [u16; 5] = [400, 404, 409, 413, 422];

/// The contract's error codes (docs/contract.md "Errors"): each with its
/// status, its text and its OpenAI error type, stated once here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    InvalidJson,
    ValidationFailed,
    BadRequest,
    Unauthorized,
    Forbidden,
    OriginNotAllowed,
    CsrfTokenInvalid,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    PayloadTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    ExpectationFailed,
    HostNotAllowed,
    RateLimited,
    BudgetExceeded,
    HeadersTooLarge,
    Internal,
    NotImplemented,
    UpstreamUnavailable,
    UpstreamError,
    ServerBusy,
    UpstreamTimeout,
    HttpVersionNotSupported,
    UpstreamRejected,
}

impl Code {
    /// Every code, in status order (for documents and tests).
    pub const ALL: [Code; 26] = [
        Code::InvalidJson,
        Code::ValidationFailed,
        Code::BadRequest,
        Code::UpstreamRejected,
        Code::Unauthorized,
        Code::Forbidden,
        Code::OriginNotAllowed,
        Code::CsrfTokenInvalid,
        Code::NotFound,
        Code::MethodNotAllowed,
        Code::RequestTimeout,
        Code::PayloadTooLarge,
        Code::UriTooLong,
        Code::UnsupportedMediaType,
        Code::ExpectationFailed,
        Code::HostNotAllowed,
        Code::RateLimited,
        Code::BudgetExceeded,
        Code::HeadersTooLarge,
        Code::Internal,
        Code::NotImplemented,
        Code::UpstreamUnavailable,
        Code::UpstreamError,
        Code::ServerBusy,
        Code::UpstreamTimeout,
        Code::HttpVersionNotSupported,
    ];

    /// (status, text, OpenAI type): the one table of the contract's codes.
    const fn row(self) -> (u16, &'static str, &'static str) {
        const INVALID: &str = "invalid_request_error";
        const SERVER: &str = "server_error";
        match self {
            Code::InvalidJson => (400, "invalid_json", INVALID),
            Code::ValidationFailed => (400, "validation_failed", INVALID),
            Code::BadRequest => (400, "bad_request", INVALID),
            // Its status is the upstream's (400, 404, 409, 413 or 422);
            // 400 stands for them in documents.
            Code::UpstreamRejected => (400, "upstream_rejected", INVALID),
            Code::Unauthorized => (401, "unauthorized", "authentication_error"),
            Code::Forbidden => (403, "forbidden", "permission_error"),
            Code::OriginNotAllowed => (403, "origin_not_allowed", "permission_error"),
            Code::CsrfTokenInvalid => (403, "csrf_token_invalid", "permission_error"),
            Code::NotFound => (404, "not_found", "not_found_error"),
            Code::MethodNotAllowed => (405, "method_not_allowed", INVALID),
            Code::RequestTimeout => (408, "request_timeout", INVALID),
            Code::PayloadTooLarge => (413, "payload_too_large", INVALID),
            Code::UriTooLong => (414, "uri_too_long", INVALID),
            Code::UnsupportedMediaType => (415, "unsupported_media_type", INVALID),
            Code::ExpectationFailed => (417, "expectation_failed", INVALID),
            Code::HostNotAllowed => (421, "host_not_allowed", "permission_error"),
            Code::RateLimited => (429, "rate_limited", "rate_limit_error"),
            // OpenAI's own type for a spent quota (its SDKs raise
            // `RateLimitError` for any 429).
            Code::BudgetExceeded => (429, "budget_exceeded", "insufficient_quota"),
            Code::HeadersTooLarge => (431, "headers_too_large", INVALID),
            Code::Internal => (500, "internal", SERVER),
            Code::NotImplemented => (501, "not_implemented", SERVER),
            Code::UpstreamUnavailable => (502, "upstream_unavailable", SERVER),
            Code::UpstreamError => (502, "upstream_error", SERVER),
            Code::ServerBusy => (503, "server_busy", SERVER),
            Code::UpstreamTimeout => (504, "upstream_timeout", SERVER),
            Code::HttpVersionNotSupported => (505, "http_version_not_supported", SERVER),
        }
    }

    pub const fn status(self) -> u16 {
        self.row().0
    }

    pub const fn as_str(self) -> &'static str {
        self.row().1
    }

    pub const fn error_type(self) -> &'static str {
        self.row().2
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ApiError {
    pub fn validation(field: &str, message: impl Into<String>) -> ApiError {
        ApiError::ValidationFailed {
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub fn internal(detail: impl fmt::Display) -> ApiError {
        ApiError::Internal {
            detail: detail.to_string(),
        }
    }

    /// The contract code of this error (its status, text and type follow).
    pub fn kind(&self) -> Code {
        use ApiError::*;
        match self {
            InvalidJson(_) => Code::InvalidJson,
            ValidationFailed { .. } => Code::ValidationFailed,
            Unauthorized => Code::Unauthorized,
            Forbidden => Code::Forbidden,
            SignInFailed => Code::Unauthorized,
            OriginNotAllowed => Code::OriginNotAllowed,
            CsrfTokenInvalid => Code::CsrfTokenInvalid,
            NotFound => Code::NotFound,
            MethodNotAllowed { .. } => Code::MethodNotAllowed,
            RequestTimeout => Code::RequestTimeout,
            PayloadTooLarge => Code::PayloadTooLarge,
            UnsupportedMediaType => Code::UnsupportedMediaType,
            HostNotAllowed => Code::HostNotAllowed,
            RateLimited { .. } => Code::RateLimited,
            BudgetExceeded { .. } => Code::BudgetExceeded,
            Internal { .. } => Code::Internal,
            UpstreamUnavailable { .. } => Code::UpstreamUnavailable,
            UpstreamError { .. } => Code::UpstreamError,
            ServerBusy { .. } => Code::ServerBusy,
            UpstreamTimeout { .. } => Code::UpstreamTimeout,
            UpstreamRejected { .. } => Code::UpstreamRejected,
            UpstreamRateLimited { .. } => Code::RateLimited,
            UnsupportedPath { .. } => Code::NotFound,
            BadRequest { .. } => Code::BadRequest,
            UriTooLong => Code::UriTooLong,
            ExpectationFailed => Code::ExpectationFailed,
            HeadersTooLarge => Code::HeadersTooLarge,
            NotImplemented => Code::NotImplemented,
            HttpVersionNotSupported => Code::HttpVersionNotSupported,
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            ApiError::UpstreamRejected { status, .. } => *status,
            _ => self.kind().status(),
        }
    }

    /// The code's text, as the JSON body and the logs show it.
    pub fn code(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The OpenAI error type that fits (API.md "Errors: additions"), so
    /// OpenAI SDKs read our errors natively.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::UpstreamRejected { status: 404, .. } => Code::NotFound.error_type(),
            _ => self.kind().error_type(),
        }
    }

    /// The offending field, if one is to blame.
    pub fn param(&self) -> Option<&str> {
        match self {
            ApiError::ValidationFailed { field, .. } => Some(field),
            ApiError::UpstreamRejected { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// An upstream's refusal: `message` is the upstream's own text, which
    /// may quote anything (our key, the prompt), so it is redacted first
    /// and then cut to `UPSTREAM_MESSAGE_MAX` characters (cutting first
    /// could split a secret so that redaction no longer sees it).
    pub fn upstream_rejected(status: u16, message: &str, param: Option<&str>) -> ApiError {
        let cut = |s: &str, max: usize| match s.char_indices().nth(max) {
            Some((i, _)) => s[..i].to_string(),
            None => s.to_string(),
        };
        let message = scrub_addresses(&crate::logging::redact_text(message.trim()));
        let message = if message.is_empty() {
            format!("status {}", status)
        } else {
            cut(&message, UPSTREAM_MESSAGE_MAX)
        };
        ApiError::UpstreamRejected {
            status,
            message,
            param: param.map(|p| cut(&crate::logging::redact_text(p), 128)),
        }
    }

    /// 404 for an unsupported `/v1/...` path, naming it (cut and redacted:
    /// a path may carry what a client should not have put there).
    pub fn unsupported_path(path: &str) -> ApiError {
        let path = crate::logging::log_path(path, "").into_owned();
        let path = match path.char_indices().nth(200) {
            Some((i, _)) => format!("{}...", &path[..i]),
            None => path,
        };
        ApiError::UnsupportedPath { path }
    }

    /// Whether the upstream refused the request for not fitting the
    /// model's context window (llama.cpp: "the request exceeds the
    /// available context size"; OpenAI and vLLM: "maximum context length";
    /// Ollama and others: "context length", "too long", "too many tokens").
    pub fn is_context_overflow(&self) -> bool {
        let ApiError::UpstreamRejected { message, .. } = self else {
            return false;
        };
        let m = message.to_ascii_lowercase();
        m.contains("context_length_exceeded")
            || (m.contains("context") && (m.contains("exceed") || m.contains("length")))
            || m.contains("too many tokens")
            || m.contains("prompt is too long")
    }

    /// The answer the HTTP layer writes itself for `status` (a refused
    /// head, a slow head or read-ahead body, the connection cap).
    pub fn from_refusal(status: u16, why: &'static str) -> ApiError {
        match status {
            408 => ApiError::RequestTimeout,
            413 => ApiError::PayloadTooLarge,
            414 => ApiError::UriTooLong,
            417 => ApiError::ExpectationFailed,
            431 => ApiError::HeadersTooLarge,
            501 => ApiError::NotImplemented,
            503 => ApiError::ServerBusy { retry_after_s: 1 },
            505 => ApiError::HttpVersionNotSupported,
            _ => ApiError::BadRequest { why },
        }
    }

    /// The human message: fixed text per variant, never internals.
    pub fn message(&self) -> String {
        use ApiError::*;
        match self {
            InvalidJson(why) => format!(
                "request body is not valid JSON of the expected shape: {}",
                why
            ),
            ValidationFailed { field, message } => format!("{}: {}", field, message),
            Unauthorized => "a valid API key is required (Authorization: Bearer <key>)".into(),
            Forbidden => "this caller may not do this".into(),
            SignInFailed => "the name or the password is wrong".into(),
            OriginNotAllowed => "the request's origin is not allowed".into(),
            CsrfTokenInvalid => "the CSRF token is missing, invalid or expired".into(),
            NotFound => "not found".into(),
            MethodNotAllowed { .. } => "method not allowed for this path".into(),
            RequestTimeout => "the request did not arrive in time".into(),
            BadRequest { .. } => "the request is not valid HTTP/1.1 framing".into(),
            UriTooLong => "the request line is too long".into(),
            ExpectationFailed => "only Expect: 100-continue is supported".into(),
            HeadersTooLarge => "the request headers are too large".into(),
            NotImplemented => "only Transfer-Encoding: chunked is supported".into(),
            HttpVersionNotSupported => "only HTTP/1.0 and HTTP/1.1 are supported".into(),
            PayloadTooLarge => "request body is too large".into(),
            UnsupportedMediaType => {
                "request body must be sent as Content-Type: application/json".into()
            }
            HostNotAllowed => "the Host header names a host this server does not serve".into(),
            RateLimited { retry_after_s } => {
                format!("rate limit exceeded; retry in {} s", retry_after_s)
            }
            BudgetExceeded {
                window,
                retry_after_s,
            } => format!(
                "your token budget for this {} is spent; it renews in {} s",
                window, retry_after_s
            ),
            Internal { .. } => "internal error".into(),
            UpstreamUnavailable { .. } => "the model server is unavailable".into(),
            UpstreamError { .. } => "the model server returned an error".into(),
            ServerBusy { .. } => "the server is busy; retry shortly".into(),
            UpstreamTimeout { .. } => "the model server did not answer in time".into(),
            UpstreamRejected { message, .. } => {
                format!("the model server refused the request: {}", message)
            }
            UpstreamRateLimited { retry_after_s } => format!(
                "the model server is rate limiting requests; retry in {} s",
                retry_after_s
            ),
            UnsupportedPath { path } => format!("{} is not supported by this server", path),
        }
    }

    /// Private detail, for logs and debug mode only.
    pub fn detail(&self) -> Option<&str> {
        use ApiError::*;
        match self {
            Internal { detail }
            | UpstreamUnavailable { detail }
            | UpstreamError { detail }
            | UpstreamTimeout { detail } => Some(detail),
            BadRequest { why } => Some(why),
            _ => None,
        }
    }

    /// Extra response headers the contract asks for.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::MethodNotAllowed { allow } => vec![("Allow", allow.join(", "))],
            ApiError::RateLimited { retry_after_s }
            | ApiError::UpstreamRateLimited { retry_after_s }
            | ApiError::BudgetExceeded { retry_after_s, .. }
            | ApiError::ServerBusy { retry_after_s } => {
                vec![("Retry-After", retry_after_s.to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// `{"error":{"code","message","request_id"[,"field"][,"detail"]}}`.
    pub fn to_body(&self, request_id: &str, debug: bool) -> Vec<u8> {
        let mut err = serde_json::Map::new();
        err.insert("code".into(), self.code().into());
        err.insert("message".into(), self.message().into());
        err.insert("type".into(), self.error_type().into());
        err.insert("param".into(), self.param().into());
        err.insert("request_id".into(), request_id.into());
        if let ApiError::ValidationFailed { field, .. } = self {
            err.insert("field".into(), field.as_str().into());
        }
        if debug {
            if let Some(d) = self.detail() {
                err.insert("detail".into(), crate::logging::redact_text(d).into());
            }
        }
        let body = serde_json::json!({ "error": err });
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// `text` with URLs and IPv4 addresses (with their ports) replaced by
/// `[address]`: an upstream's message may name hosts of its network, and
/// answers never show addresses (API.md "Errors").
fn scrub_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let lower = rest.get(..8).unwrap_or(rest).to_ascii_lowercase();
        let url = lower.starts_with("http://") || lower.starts_with("https://");
        let at_word_start = !out.ends_with(|c: char| c.is_ascii_alphanumeric() || c == '.');
        let ip = at_word_start && ipv4_len(rest) > 0;
        if url || ip {
            let end = if url {
                rest.find(|c: char| {
                    c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')' | ',')
                })
                .unwrap_or(rest.len())
            } else {
                let n = ipv4_len(rest);
                let port = rest[n..]
                    .strip_prefix(':')
                    .map(|p| p.bytes().take_while(u8::is_ascii_digit).count())
                    .filter(|d| *d > 0)
                    .map_or(0, |d| d + 1);
                n + port
            };
            out.push_str("[address]");
            rest = &rest[end..];
            continue;
        }
        let c = rest.chars().next().expect("not empty");
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// Length of a dotted IPv4 address at the start of `s` (0 when none).
fn ipv4_len(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 0;
    for part in 0..4 {
        let digits = b[i..]
            .iter()
            .take(3)
            .take_while(|c| c.is_ascii_digit())
            .count();
        if digits == 0 {
            return 0;
        }
        i += digits;
        if part < 3 {
            if b.get(i) != Some(&b'.') {
                return 0;
            }
            i += 1;
        }
    }
    if b.get(i).is_some_and(|c| {
        c.is_ascii_digit() || *c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)
    }) {
        return 0;
    }
    i
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl std::error::Error for ApiError {}

/// The one boundary between storage and the contract: every `StoreError`
/// reaching the request path becomes an `ApiError` here and nowhere else
/// (storage never imports this module; ARCHITECTURE.md "Invariants").
/// Load (pool exhausted, busy lock, full disk) is 503 `server_busy` with
/// `Retry-After`, as the write was rolled back and may succeed later.
impl From<crate::db::StoreError> for ApiError {
    fn from(e: crate::db::StoreError) -> ApiError {
        use crate::db::StoreError::*;
        /// Seconds a client is asked to wait after a busy database.
        const RETRY_AFTER_S: u64 = 1;
        match e {
            NotFound => ApiError::NotFound,
            // A `project_id` naming no project is an unknown id: 404, as
            // in a path (docs/contract.md "Errors"; issue 11, schemathesis).
            UnknownProject => ApiError::NotFound,
            Invalid { field, message } => ApiError::validation(field, message),
            InvalidCursor => ApiError::validation("cursor", "is not a cursor from this list"),
            PoolExhausted | Busy | DiskFull | Unavailable => ApiError::ServerBusy {
                retry_after_s: RETRY_AFTER_S,
            },
            Internal { detail } => ApiError::Internal { detail },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_messages_are_redacted_scrubbed_and_cut() {
        let e = ApiError::upstream_rejected(
            400,
            "Invalid model name passed in model=x. Key sk-abcdefghijklmnopqrstuvwxyz012345 at http://10.0.0.5:4000/v1 (host 192.168.1.20:8080), version 1.2.3.4.5",
            Some("model"),
        );
        let ApiError::UpstreamRejected {
            status,
            message,
            param,
        } = &e
        else {
            panic!()
        };
        assert_eq!(*status, 400);
        assert_eq!(param.as_deref(), Some("model"));
        assert!(
            message.starts_with("Invalid model name passed in model=x."),
            "{}",
            message
        );
        for gone in ["sk-abc", "10.0.0.5", "192.168", "8080"] {
            assert!(!message.contains(gone), "{}", message);
        }
        assert!(
            message.contains("version 1.2.3.4.5"),
            "not an address: {}",
            message
        );
        assert_eq!(e.status(), 400);
        assert_eq!(e.code(), "upstream_rejected");
        assert!(e.message().contains("Invalid model name"));
        let long = ApiError::upstream_rejected(422, &"é".repeat(2000), None);
        let ApiError::UpstreamRejected { message, .. } = &long else {
            panic!()
        };
        assert_eq!(message.chars().count(), UPSTREAM_MESSAGE_MAX);
        assert_eq!(
            ApiError::upstream_rejected(404, "nope", None).error_type(),
            "not_found_error"
        );
        assert!(ApiError::upstream_rejected(
            400,
            "the request exceeds the available context size, try increasing it",
            None
        )
        .is_context_overflow());
        assert!(
            !ApiError::upstream_rejected(400, "Invalid model name", None).is_context_overflow()
        );
    }

    #[test]
    fn every_variant_maps_to_contract_status_and_code() {
        let table: Vec<(ApiError, u16, &str)> = vec![
            (ApiError::InvalidJson("x".into()), 400, "invalid_json"),
            (
                ApiError::validation("name", "too long"),
                400,
                "validation_failed",
            ),
            (ApiError::Unauthorized, 401, "unauthorized"),
            (ApiError::Forbidden, 403, "forbidden"),
            (ApiError::OriginNotAllowed, 403, "origin_not_allowed"),
            (ApiError::CsrfTokenInvalid, 403, "csrf_token_invalid"),
            (ApiError::NotFound, 404, "not_found"),
            (
                ApiError::MethodNotAllowed { allow: vec!["GET"] },
                405,
                "method_not_allowed",
            ),
            (ApiError::PayloadTooLarge, 413, "payload_too_large"),
            (
                ApiError::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (ApiError::HostNotAllowed, 421, "host_not_allowed"),
            (
                ApiError::RateLimited { retry_after_s: 3 },
                429,
                "rate_limited",
            ),
            (ApiError::internal("boom"), 500, "internal"),
            (
                ApiError::UpstreamUnavailable {
                    detail: String::new(),
                },
                502,
                "upstream_unavailable",
            ),
            (
                ApiError::UpstreamError {
                    detail: String::new(),
                },
                502,
                "upstream_error",
            ),
            (
                ApiError::ServerBusy { retry_after_s: 1 },
                503,
                "server_busy",
            ),
            (
                ApiError::UpstreamTimeout {
                    detail: String::new(),
                },
                504,
                "upstream_timeout",
            ),
            (ApiError::RequestTimeout, 408, "request_timeout"),
            (ApiError::BadRequest { why: "x" }, 400, "bad_request"),
            (ApiError::UriTooLong, 414, "uri_too_long"),
            (ApiError::ExpectationFailed, 417, "expectation_failed"),
            (ApiError::HeadersTooLarge, 431, "headers_too_large"),
            (ApiError::NotImplemented, 501, "not_implemented"),
            (
                ApiError::HttpVersionNotSupported,
                505,
                "http_version_not_supported",
            ),
        ];
        for (status, _, _) in [
            (400u16, 0, 0),
            (408, 0, 0),
            (414, 0, 0),
            (417, 0, 0),
            (431, 0, 0),
            (501, 0, 0),
            (503, 0, 0),
            (505, 0, 0),
        ] {
            assert_eq!(ApiError::from_refusal(status, "x").status(), status);
        }
        for (e, status, code) in table {
            assert_eq!((e.status(), e.code()), (status, code));
        }
        // Every code is listed once, in status order.
        for pair in Code::ALL.windows(2) {
            assert!(pair[0].status() <= pair[1].status(), "{:?}", pair);
        }
        let mut texts: Vec<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), Code::ALL.len());
    }

    #[test]
    fn detail_only_in_debug_and_never_in_message() {
        let e = ApiError::internal("SELECT * FROM secrets at /var/lib/x");
        let plain = String::from_utf8(e.to_body("r1", false)).unwrap();
        assert!(
            !plain.contains("SELECT") && !plain.contains("/var/lib"),
            "{}",
            plain
        );
        let dbg = String::from_utf8(e.to_body("r1", true)).unwrap();
        assert!(dbg.contains("\"detail\""), "{}", dbg);
        let v: serde_json::Value = serde_json::from_str(&plain).unwrap();
        assert_eq!(v["error"]["code"], "internal");
        assert_eq!(v["error"]["type"], "server_error");
        assert_eq!(v["error"]["param"], serde_json::Value::Null);
        assert_eq!(v["error"]["request_id"], "r1");
    }

    #[test]
    fn validation_names_the_field() {
        let v: serde_json::Value =
            serde_json::from_slice(&ApiError::validation("name", "required").to_body("r", false))
                .unwrap();
        assert_eq!(v["error"]["field"], "name");
    }
}
