//! Request bodies as data: each body a handler reads is a `Body` (its
//! fields, their JSON types and bounds, whether unknown fields are refused),
//! the handler validates with those `Field`s, and the OpenAPI document is
//! generated from the same values (`routes::openapi`). A bound therefore
//! lives in one constant here or beside its handler, never in prose.
//!
//! | resource | field | rule |
//! |---|---|---|
//! | project | `name` | string, 1..200 characters, required (PATCH: not null) |
//! | project | `description` | string, 0..2000 characters, or null |
//! | conversation | `project_id` | an existing project's id, or null |
//! | conversation | `title` | string, 0..200 characters, or null |
//! | conversation | `model` | string, 1..200 characters, or null |
//! | conversation | `system_prompt` | string, 0..20000 characters, or null |
//!
//! Characters are Unicode scalar values; NUL is refused; unknown fields are
//! refused (`validation_failed` naming the field). An empty `model` is
//! refused everywhere (a model has a name; leave the field out or send
//! null for the default). PATCH follows JSON merge patch: an absent field
//! is left alone, `null` clears it, and an empty object changes nothing
//! (200 with the resource as it is).

use crate::error::ApiError;
use crate::http::Ctx;
use crate::json_body::{self, Fields};

pub const NAME_MAX: usize = 200;
pub const DESCRIPTION_MAX: usize = 2000;
pub const TITLE_MAX: usize = 200;
pub const MODEL_MAX: usize = 200;
pub const SYSTEM_PROMPT_MAX: usize = 20_000;
/// Ids are ours (24 hex characters); anything far longer is not one.
pub const ID_MAX: usize = 128;

/// The JSON type and bounds of one body field.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    /// A string of `min..=max` characters, without NUL.
    Str {
        min: usize,
        max: usize,
    },
    /// A `Str` holding at least one character that is not whitespace
    /// (`char::is_whitespace`).
    Text {
        min: usize,
        max: usize,
    },
    /// A whole number in `min..=max` (a JSON number, never a string).
    Int {
        min: u64,
        max: u64,
    },
    /// A number in `min..=max`.
    Num {
        min: f64,
        max: f64,
    },
    Bool,
    /// Any JSON value, passed on as sent (OpenAI fields the relay forwards).
    Any,
    /// OpenAI `messages`: `1..=max` objects, each with a `role` from
    /// `roles` and a `content` that is a string, an array of parts, null
    /// or absent.
    Messages {
        max: usize,
        roles: &'static [&'static str],
    },
}

/// One field of a request body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Field {
    pub name: &'static str,
    pub kind: Kind,
    /// Must be present (and not null).
    pub required: bool,
    /// `null` is accepted (as "absent", or "clear" in a PATCH).
    pub nullable: bool,
    /// One line for the document; empty when the name says it all.
    pub doc: &'static str,
}

impl Field {
    /// An optional field that may be null.
    pub const fn new(name: &'static str, kind: Kind) -> Field {
        Field {
            name,
            kind,
            required: false,
            nullable: true,
            doc: "",
        }
    }

    pub const fn string(name: &'static str, min: usize, max: usize) -> Field {
        Field::new(name, Kind::Str { min, max })
    }

    /// Required, hence never null.
    pub const fn required(self) -> Field {
        Field {
            required: true,
            nullable: false,
            ..self
        }
    }

    /// Optional, but null is refused.
    pub const fn not_null(self) -> Field {
        Field {
            nullable: false,
            ..self
        }
    }

    pub const fn doc(self, doc: &'static str) -> Field {
        Field { doc, ..self }
    }

    fn str_bounds(&self) -> (usize, usize) {
        match self.kind {
            Kind::Str { min, max } | Kind::Text { min, max } => (min, max),
            _ => (0, usize::MAX),
        }
    }

    /// The string value (absent or null: None), checked against the kind.
    pub fn opt_str(&self, body: &Fields) -> Result<Option<String>, ApiError> {
        let (min, max) = self.str_bounds();
        let value = body.opt_str(self.name, min, max)?;
        if let (Kind::Text { .. }, Some(s)) = (self.kind, &value) {
            if s.trim().is_empty() {
                return Err(ApiError::validation(self.name, "must not be blank"));
            }
        }
        Ok(value)
    }

    /// `opt_str`, present or `validation_failed` naming the field.
    pub fn req_str(&self, body: &Fields) -> Result<String, ApiError> {
        self.opt_str(body)?
            .ok_or_else(|| ApiError::validation(self.name, "is required"))
    }

    /// A PATCH field: absent -> None, null -> Some(None) (refused when the
    /// field is not nullable), a valid string -> Some(Some(s)).
    pub fn patch_str(&self, body: &Fields) -> Result<Option<Option<String>>, ApiError> {
        match body.raw(self.name) {
            None => Ok(None),
            Some(raw) if raw.get() == "null" && !self.nullable => {
                Err(ApiError::validation(self.name, "must not be null"))
            }
            Some(_) => self.opt_str(body).map(Some),
        }
    }

    /// A whole number. As in JSON Schema, `64.0` is the integer 64; `64.5`
    /// and `"64"` are not integers.
    pub fn opt_u64(&self, body: &Fields) -> Result<Option<u64>, ApiError> {
        let Kind::Int { min, max } = self.kind else {
            return Err(ApiError::internal(format!("{} is not an Int", self.name)));
        };
        let refused = || {
            ApiError::validation(
                self.name,
                format!("must be a whole number from {} to {}", min, max),
            )
        };
        match body.opt_u64(self.name, min, max) {
            Ok(n) => Ok(n),
            Err(e) => match body.opt_f64(self.name, min as f64, max as f64) {
                Ok(Some(v)) if v.fract() == 0.0 => Ok(Some(v as u64)),
                Ok(_) => Err(refused()),
                Err(_) => Err(e),
            },
        }
    }

    pub fn opt_f64(&self, body: &Fields) -> Result<Option<f64>, ApiError> {
        match self.kind {
            Kind::Num { min, max } => body.opt_f64(self.name, min, max),
            _ => Err(ApiError::internal(format!("{} is not a Num", self.name))),
        }
    }

    pub fn opt_bool(&self, body: &Fields) -> Result<Option<bool>, ApiError> {
        body.opt_bool(self.name)
    }
}

/// What happens to a body field that is not listed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unknown {
    /// 400 `validation_failed` naming it (our own `/api` routes).
    Refused,
    /// Skipped, never forwarded.
    Dropped,
    /// Forwarded as sent, unread (the OpenAI relay: SDKs and model servers
    /// add fields of their own, such as `top_k` or `grammar`).
    Passed,
}

/// A JSON object request body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Body {
    /// Its schema's name in the OpenAPI document's components.
    pub name: &'static str,
    pub fields: &'static [Field],
    pub unknown: Unknown,
}

impl Body {
    /// The listed field names (what `json_body` keeps).
    pub fn names(&self) -> Vec<&'static str> {
        self.fields.iter().map(|f| f.name).collect()
    }

    /// Reads the request's body as this object: 400 `invalid_json` for
    /// what is not a JSON object, `validation_failed` for an unknown field
    /// when `Unknown::Refused`.
    pub fn read<'a>(&self, ctx: &'a Ctx) -> Result<Fields<'a>, ApiError> {
        self.parse(&ctx.body)
    }

    /// `read` over bytes.
    pub fn parse<'a>(&self, body: &'a [u8]) -> Result<Fields<'a>, ApiError> {
        let fields = json_body::parse_object(body, &self.names())?;
        if self.unknown == Unknown::Refused {
            fields.reject_unknown()?;
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: Body = Body {
        name: "T",
        fields: &[
            Field::string("a", 0, 5),
            Field::string("b", 1, 5).not_null(),
            Field::string("d", 1, 5),
            Field::new("m", Kind::Text { min: 1, max: 9 }),
            Field::new("n", Kind::Int { min: 1, max: 9 }),
        ],
        unknown: Unknown::Refused,
    };

    fn field(name: &str) -> &'static Field {
        BODY.fields.iter().find(|f| f.name == name).unwrap()
    }

    #[test]
    fn patch_field_table() {
        let m = BODY.parse(br#"{"a":null,"b":"x","d":""}"#).unwrap();
        assert_eq!(field("m").patch_str(&m).unwrap(), None, "absent");
        assert_eq!(field("a").patch_str(&m).unwrap(), Some(None), "null clears");
        assert_eq!(field("b").patch_str(&m).unwrap(), Some(Some("x".into())));
        assert!(field("d").patch_str(&m).is_err(), "too short");
        let null_b = BODY.parse(br#"{"b":null}"#).unwrap();
        assert_eq!(
            field("b").patch_str(&null_b),
            Err(ApiError::validation("b", "must not be null"))
        );
    }

    #[test]
    fn kinds_are_checked_as_documented() {
        let m = BODY.parse(br#"{"m":" \n\u3000","n":"5"}"#).unwrap();
        assert_eq!(
            field("m").opt_str(&m),
            Err(ApiError::validation("m", "must not be blank"))
        );
        assert!(field("n").opt_u64(&m).is_err(), "a string is not a number");
        let m = BODY.parse(br#"{"m":" x ","n":9}"#).unwrap();
        assert_eq!(field("m").req_str(&m).unwrap(), " x ");
        assert_eq!(field("n").opt_u64(&m).unwrap(), Some(9));
        for (n, want) in [("9.0", Some(9)), ("9.5", None), ("10.0", None), ("0", None)] {
            let body = format!(r#"{{"n":{}}}"#, n);
            let m = BODY.parse(body.as_bytes()).unwrap();
            assert_eq!(field("n").opt_u64(&m).ok().flatten(), want, "{}", n);
        }
        assert_eq!(
            BODY.parse(br#"{"zz":1}"#).unwrap_err(),
            ApiError::validation("zz", "unknown field")
        );
    }
}
