//! JSON request bodies: content type (415), syntax and shape (400
//! `invalid_json`), unknown fields and typed field access (400
//! `validation_failed` naming the field). Lengths count characters, not
//! bytes. serde_json refuses nesting deeper than 128 levels, so a deeply
//! nested body is an `invalid_json`, not a stack overflow.

use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::http::Ctx;

/// True when the request declares `application/json` (parameters allowed).
pub fn is_json_content_type(ctx: &Ctx) -> bool {
    ctx.header("content-type")
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/json")
        })
        .unwrap_or(false)
}

/// 415 unless the request says its body is JSON.
pub fn require_json_content_type(ctx: &Ctx) -> Result<(), ApiError> {
    if is_json_content_type(ctx) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Parses the body as a JSON object.
pub fn object(ctx: &Ctx) -> Result<Map<String, Value>, ApiError> {
    if ctx.body.is_empty() {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    let value: Value = serde_json::from_slice(&ctx.body).map_err(|e| {
        // serde_json's message holds only line/column and the kind of error.
        ApiError::InvalidJson(e.to_string())
    })?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::InvalidJson("expected a JSON object".into())),
    }
}

/// Refuses fields not in `allowed`, naming the first one.
pub fn reject_unknown(map: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::validation(&truncate(k, 64), "unknown field")),
        None => Ok(()),
    }
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// A required string of `min..=max` characters.
pub fn req_str(
    map: &Map<String, Value>,
    field: &str,
    min: usize,
    max: usize,
) -> Result<String, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Err(ApiError::validation(field, "is required")),
        Some(_) => opt_str(map, field, min, max).map(|v| v.unwrap_or_default()),
    }
}

/// An optional string (absent or null: None) of `min..=max` characters.
pub fn opt_str(
    map: &Map<String, Value>,
    field: &str,
    min: usize,
    max: usize,
) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let n = s.chars().count();
            if n < min {
                Err(ApiError::validation(
                    field,
                    format!("must be at least {} characters", min),
                ))
            } else if n > max {
                Err(ApiError::validation(
                    field,
                    format!("must be at most {} characters", max),
                ))
            } else if s.contains('\0') {
                Err(ApiError::validation(
                    field,
                    "must not contain NUL characters",
                ))
            } else {
                Ok(Some(s.clone()))
            }
        }
        Some(_) => Err(ApiError::validation(field, "must be a string")),
    }
}

pub fn opt_bool(map: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::validation(field, "must be true or false")),
    }
}

/// An optional number within `min..=max`.
pub fn opt_f64(
    map: &Map<String, Value>,
    field: &str,
    min: f64,
    max: f64,
) -> Result<Option<f64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v >= min && v <= max => Ok(Some(v)),
            _ => Err(ApiError::validation(
                field,
                format!("must be a number from {} to {}", min, max),
            )),
        },
        Some(_) => Err(ApiError::validation(field, "must be a number")),
    }
}

/// An optional whole number within `min..=max`.
pub fn opt_u64(
    map: &Map<String, Value>,
    field: &str,
    min: u64,
    max: u64,
) -> Result<Option<u64>, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if v >= min && v <= max => Ok(Some(v)),
            _ => Err(ApiError::validation(
                field,
                format!("must be a whole number from {} to {}", min, max),
            )),
        },
        Some(_) => Err(ApiError::validation(field, "must be a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Method;

    fn ctx(body: &str) -> Ctx {
        let mut c = Ctx::new(Method::Post, "/x", "127.0.0.1".parse().unwrap())
            .with_header("content-type", "application/json; charset=utf-8");
        c.body = body.as_bytes().to_vec();
        c
    }

    #[test]
    fn body_shape_table() {
        assert!(object(&ctx("{\"a\":1}")).is_ok());
        for bad in ["", "[1]", "{", "nul", "\"s\"", "{\"a\":1}x"] {
            assert!(
                matches!(object(&ctx(bad)), Err(ApiError::InvalidJson(_))),
                "{:?}",
                bad
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(object(&ctx(&deep)), Err(ApiError::InvalidJson(_))));
        let bad_utf8 = {
            let mut c = ctx("");
            c.body = vec![b'{', b'"', 0xff, b'"', b':', b'1', b'}'];
            c
        };
        assert!(matches!(object(&bad_utf8), Err(ApiError::InvalidJson(_))));
    }

    #[test]
    fn content_type_table() {
        assert!(require_json_content_type(&ctx("{}")).is_ok());
        let plain = Ctx::new(Method::Post, "/x", "127.0.0.1".parse().unwrap())
            .with_header("content-type", "text/plain");
        assert_eq!(
            require_json_content_type(&plain),
            Err(ApiError::UnsupportedMediaType)
        );
        let none = Ctx::new(Method::Post, "/x", "127.0.0.1".parse().unwrap());
        assert_eq!(
            require_json_content_type(&none),
            Err(ApiError::UnsupportedMediaType)
        );
    }

    #[test]
    fn fields_table() {
        let m = object(&ctx(r#"{"name":"ab","n":5,"t":0.5,"b":true,"x":1}"#)).unwrap();
        assert_eq!(
            reject_unknown(&m, &["name", "n", "t", "b"]),
            Err(ApiError::validation("x", "unknown field"))
        );
        assert_eq!(req_str(&m, "name", 1, 2).unwrap(), "ab");
        assert!(req_str(&m, "name", 3, 9).is_err());
        assert!(req_str(&m, "missing", 1, 9).is_err());
        assert!(opt_str(&m, "n", 1, 9).is_err());
        assert_eq!(opt_u64(&m, "n", 1, 10).unwrap(), Some(5));
        assert!(opt_u64(&m, "t", 0, 10).is_err());
        assert_eq!(opt_f64(&m, "t", 0.0, 2.0).unwrap(), Some(0.5));
        assert_eq!(opt_bool(&m, "b").unwrap(), Some(true));
        let e = req_str(&m, "missing", 1, 9).unwrap_err();
        assert!(matches!(e, ApiError::ValidationFailed { ref field, .. } if field == "missing"));
    }
}
