//! JSON request bodies: content type (415), syntax and shape (400
//! `invalid_json`), unknown fields and typed field access (400
//! `validation_failed` naming the field). Lengths count characters, not
//! bytes.
//!
//! Memory is bounded by the body's bytes, not by what it holds: the body is
//! never turned into a `serde_json::Value` tree. `object` walks the top
//! level once, keeping each known field as borrowed raw text (`RawValue`)
//! and skipping every other value without storing it (serde_json's
//! `ignore_value`, which keeps one byte per nesting level); each field is
//! then parsed into its own type when asked for. A 10 MiB
//! `{"name":"x","pad":[0,0,...]}` costs no more than its bytes.
//!
//! Nesting deeper than serde_json's `Value` limit (127 levels) is an
//! `invalid_json` wherever it occurs, as before (`nesting_ok`), so a deep
//! value is neither a stack overflow here nor relayed to the upstream.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ApiError;
use crate::http::Ctx;

/// Deepest nesting accepted: what `serde_json::Value` accepted, so bodies
/// are refused exactly as before the typed parsing.
pub const MAX_NESTING: usize = 127;
/// Unknown field names kept for the log (first ones, in body order).
const UNKNOWN_KEPT: usize = 16;
/// A field name shown in an error or log is cut to this many characters.
const FIELD_NAME_CHARS: usize = 64;

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

/// The top level of a JSON object body: the known fields as raw text (the
/// last one wins when a name repeats, as in a `Value` map) and the names of
/// the others.
#[derive(Debug)]
pub struct Fields<'a> {
    known: Vec<(&'static str, &'a RawValue)>,
    /// The alphabetically first unknown name (what a sorted map reported).
    first_unknown: Option<String>,
    /// The first `UNKNOWN_KEPT` unknown names, in body order.
    unknown: Vec<String>,
    /// A known name that appeared more than once.
    repeated: Option<&'static str>,
}

/// Parses the body as a JSON object whose fields of interest are `known`.
/// Other fields are skipped (see `Fields::reject_unknown`). 400
/// `invalid_json` for an empty body, bad UTF-8 or syntax, nesting over
/// `MAX_NESTING`, or a value that is not an object.
pub fn object<'a>(ctx: &'a Ctx, known: &[&'static str]) -> Result<Fields<'a>, ApiError> {
    parse_object(&ctx.body, known)
}

/// `object`, refusing unknown fields: for our own `/api` routes.
pub fn strict_object<'a>(ctx: &'a Ctx, known: &[&'static str]) -> Result<Fields<'a>, ApiError> {
    let fields = object(ctx, known)?;
    fields.reject_unknown()?;
    Ok(fields)
}

/// `object` over bytes.
pub fn parse_object<'a>(body: &'a [u8], known: &[&'static str]) -> Result<Fields<'a>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::InvalidJson("the body is empty".into()));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::InvalidJson("the body is not valid UTF-8".into()))?;
    if !nesting_ok(text.as_bytes(), MAX_NESTING) {
        return Err(ApiError::InvalidJson(format!(
            "nesting deeper than {} levels",
            MAX_NESTING
        )));
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let fields = de
        .deserialize_map(FieldsVisitor { known })
        .and_then(|f| de.end().map(|_| f))
        .map_err(|e| {
            // serde_json's message holds only line/column and the kind of
            // error; a data error here can only be a non-object.
            if e.is_data() {
                ApiError::InvalidJson("expected a JSON object".into())
            } else {
                ApiError::InvalidJson(e.to_string())
            }
        })?;
    Ok(fields)
}

/// Whether no array or object in `json` is nested deeper than `max` (a
/// byte scan that skips strings; it assumes nothing about validity, the
/// parser checks that).
pub fn nesting_ok(json: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// Whether `json` (valid JSON text) is an object, by its first byte.
pub fn is_object_text(json: &str) -> bool {
    json.trim_start().starts_with('{')
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

struct FieldsVisitor<'k> {
    known: &'k [&'static str],
}

/// A top-level key: one of ours (no allocation), or another name.
enum Key {
    Known(&'static str),
    Unknown(String),
}

struct KeySeed<'k> {
    known: &'k [&'static str],
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Key;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeySeed<'_> {
    type Value = Key;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
        Ok(match self.known.iter().find(|k| **k == v) {
            Some(k) => Key::Known(k),
            None => Key::Unknown(truncate(v, FIELD_NAME_CHARS)),
        })
    }
}

impl<'de> Visitor<'de> for FieldsVisitor<'_> {
    type Value = Fields<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
        let mut out = Fields {
            known: Vec::new(),
            first_unknown: None,
            unknown: Vec::new(),
            repeated: None,
        };
        while let Some(key) = map.next_key_seed(KeySeed { known: self.known })? {
            match key {
                Key::Known(name) => {
                    let raw: &'de RawValue = map.next_value()?;
                    let before = out.known.len();
                    out.known.retain(|(n, _)| *n != name);
                    if out.known.len() != before {
                        out.repeated.get_or_insert(name);
                    }
                    out.known.push((name, raw));
                }
                Key::Unknown(name) => {
                    map.next_value::<IgnoredAny>()?;
                    if out.first_unknown.as_ref().is_none_or(|f| name < *f) {
                        out.first_unknown = Some(name.clone());
                    }
                    if out.unknown.len() < UNKNOWN_KEPT && !out.unknown.contains(&name) {
                        out.unknown.push(name);
                    }
                }
            }
        }
        Ok(out)
    }
}

impl<'a> Fields<'a> {
    /// Refuses fields not asked for, naming the first one (alphabetically).
    pub fn reject_unknown(&self) -> Result<(), ApiError> {
        match &self.first_unknown {
            Some(k) => Err(ApiError::validation(k, "unknown field")),
            None => Ok(()),
        }
    }

    /// Refuses a body that names a known field twice. Where the body is
    /// forwarded as sent (the OpenAI relay), a repeated `model` could be
    /// read one way here and another way upstream (parsers differ on which
    /// one wins), so it is refused rather than guessed.
    pub fn reject_repeated(&self) -> Result<(), ApiError> {
        match self.repeated {
            Some(name) => Err(ApiError::validation(name, "appears more than once")),
            None => Ok(()),
        }
    }

    /// Names of fields not asked for (the first few), for the log.
    pub fn unknown(&self) -> &[String] {
        &self.unknown
    }

    /// A field's raw JSON text, when present (`null` included).
    pub fn raw(&self, field: &str) -> Option<&'a RawValue> {
        self.known
            .iter()
            .find(|(n, _)| *n == field)
            .map(|(_, r)| *r)
    }

    /// A field's raw text, None when absent or null.
    pub fn value(&self, field: &str) -> Option<&'a RawValue> {
        self.raw(field).filter(|r| r.get() != "null")
    }

    /// The fields present, in body order (null included).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &'a RawValue)> + '_ {
        self.known.iter().copied()
    }

    /// A required string of `min..=max` characters.
    pub fn req_str(&self, field: &str, min: usize, max: usize) -> Result<String, ApiError> {
        self.opt_str(field, min, max)?
            .ok_or_else(|| ApiError::validation(field, "is required"))
    }

    /// An optional string (absent or null: None) of `min..=max` characters.
    pub fn opt_str(&self, field: &str, min: usize, max: usize) -> Result<Option<String>, ApiError> {
        let Some(raw) = self.value(field) else {
            return Ok(None);
        };
        let s: String = serde_json::from_str(raw.get())
            .map_err(|_| ApiError::validation(field, "must be a string"))?;
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
            Ok(Some(s))
        }
    }

    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        self.value(field)
            .map(|raw| {
                serde_json::from_str(raw.get())
                    .map_err(|_| ApiError::validation(field, "must be true or false"))
            })
            .transpose()
    }

    fn number(&self, field: &str, what: &str) -> Result<Option<serde_json::Number>, ApiError> {
        self.value(field)
            .map(|raw| {
                serde_json::from_str(raw.get())
                    .map_err(|_| ApiError::validation(field, format!("must be {}", what)))
            })
            .transpose()
    }

    /// An optional number within `min..=max`.
    pub fn opt_f64(&self, field: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        match self.number(field, "a number")? {
            None => Ok(None),
            Some(n) => match n.as_f64() {
                Some(v) if v >= min && v <= max => Ok(Some(v)),
                _ => Err(ApiError::validation(
                    field,
                    format!("must be a number from {} to {}", min, max),
                )),
            },
        }
    }

    /// An optional whole number within `min..=max`.
    pub fn opt_u64(&self, field: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        match self.number(field, "a whole number")? {
            None => Ok(None),
            Some(n) => match n.as_u64() {
                Some(v) if v >= min && v <= max => Ok(Some(v)),
                _ => Err(ApiError::validation(
                    field,
                    format!("must be a whole number from {} to {}", min, max),
                )),
            },
        }
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

    const ALL: &[&str] = &["name", "n", "t", "b", "a"];

    #[test]
    fn body_shape_table() {
        assert!(object(&ctx("{\"a\":1}"), ALL).is_ok());
        assert!(object(&ctx(" {\"zz\":[1,{\"q\":null}]} "), ALL).is_ok());
        for bad in [
            "",
            "[1]",
            "{",
            "nul",
            "\"s\"",
            "{\"a\":1}x",
            "{\"zz\":[1,}",
            "{\"a\":tru}",
            "{\"zz\":\"\\q\"}",
            "{\"a\":1,}",
        ] {
            assert!(
                matches!(object(&ctx(bad), ALL), Err(ApiError::InvalidJson(_))),
                "{:?}",
                bad
            );
        }
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            object(&ctx(&deep), ALL),
            Err(ApiError::InvalidJson(_))
        ));
        let bad_utf8 = |bytes: &[u8]| {
            let mut c = ctx("");
            c.body = bytes.to_vec();
            matches!(object(&c, ALL), Err(ApiError::InvalidJson(_)))
        };
        assert!(bad_utf8(&[b'{', b'"', 0xff, b'"', b':', b'1', b'}']));
        assert!(
            bad_utf8(b"{\"zz\":\"\xff\"}"),
            "bad UTF-8 in a skipped value"
        );
    }

    #[test]
    fn nesting_limit_is_what_value_accepted() {
        // An unknown field's value is skipped, yet still depth-checked.
        let nested = |n: usize| format!("{{\"zz\":{}{}}}", "[".repeat(n - 1), "]".repeat(n - 1));
        for n in [2, 100, MAX_NESTING] {
            let v = serde_json::from_str::<serde_json::Value>(&nested(n));
            assert!(v.is_ok(), "Value takes depth {}", n);
            assert!(object(&ctx(&nested(n)), ALL).is_ok(), "depth {}", n);
        }
        for n in [MAX_NESTING + 1, 10_000] {
            let v = serde_json::from_str::<serde_json::Value>(&nested(n));
            assert!(v.is_err(), "Value refuses depth {}", n);
            assert!(
                matches!(object(&ctx(&nested(n)), ALL), Err(ApiError::InvalidJson(_))),
                "depth {}",
                n
            );
        }
        // Brackets inside strings do not count.
        let quoted = format!("{{\"zz\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert!(object(&ctx(&quoted), ALL).is_ok());
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
        let c = ctx(r#"{"name":"ab","n":5,"t":0.5,"b":true,"y":[1],"x":1}"#);
        let m = object(&c, &["name", "n", "t", "b"]).unwrap();
        assert_eq!(
            m.reject_unknown(),
            Err(ApiError::validation("x", "unknown field"))
        );
        assert_eq!(m.unknown(), ["y".to_string(), "x".to_string()]);
        assert_eq!(m.req_str("name", 1, 2).unwrap(), "ab");
        assert!(m.req_str("name", 3, 9).is_err());
        assert!(m.req_str("missing", 1, 9).is_err());
        assert!(m.opt_str("n", 1, 9).is_err());
        assert_eq!(m.opt_u64("n", 1, 10).unwrap(), Some(5));
        assert!(m.opt_u64("t", 0, 10).is_err());
        assert_eq!(m.opt_f64("t", 0.0, 2.0).unwrap(), Some(0.5));
        assert_eq!(m.opt_bool("b").unwrap(), Some(true));
        assert!(m.opt_bool("n").is_err());
        assert!(m.opt_f64("b", 0.0, 1.0).is_err());
        let e = m.req_str("missing", 1, 9).unwrap_err();
        assert!(matches!(e, ApiError::ValidationFailed { ref field, .. } if field == "missing"));
    }

    #[test]
    fn strings_are_unescaped_and_counted_in_characters() {
        let c = ctx(r#"{"name":"\u00e9\u00e9\n","a":null,"n":"a\u0000b"}"#);
        let m = strict_object(&c, ALL).unwrap();
        assert_eq!(m.opt_str("name", 3, 3).unwrap().as_deref(), Some("éé\n"));
        assert_eq!(m.opt_str("a", 1, 3).unwrap(), None);
        assert!(m.req_str("a", 1, 3).is_err(), "null is not a value");
        assert!(m.opt_str("n", 0, 9).is_err(), "NUL refused");
        let dup = ctx(r#"{"name":"first","name":"second"}"#);
        let m = strict_object(&dup, ALL).unwrap();
        assert_eq!(m.req_str("name", 1, 9).unwrap(), "second", "last wins");
    }
}
