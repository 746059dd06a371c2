//! Field limits of the stored resources, in one place (the OpenAPI
//! document and the tests use the same numbers), and the PATCH helper.
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
//! refused (`validation_failed` naming the field). PATCH follows JSON merge
//! patch: an absent field is left alone, `null` clears it, and an empty
//! object changes nothing (200 with the resource as it is).

use crate::error::ApiError;
use crate::json_body::Fields;

pub const NAME_MAX: usize = 200;
pub const DESCRIPTION_MAX: usize = 2000;
pub const TITLE_MAX: usize = 200;
pub const MODEL_MAX: usize = 200;
pub const SYSTEM_PROMPT_MAX: usize = 20_000;
/// Ids are ours (24 hex characters); anything far longer is not one.
pub const ID_MAX: usize = 128;

/// A PATCH field: absent -> None, null -> Some(None), a valid string ->
/// Some(Some(s)).
pub fn patch_str(
    body: &Fields,
    field: &str,
    min: usize,
    max: usize,
) -> Result<Option<Option<String>>, ApiError> {
    match body.raw(field) {
        None => Ok(None),
        Some(_) => body.opt_str(field, min, max).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_field_table() {
        let body = r#"{"a":null,"b":"x","c":5,"d":""}"#;
        let m = crate::json_body::parse_object(body.as_bytes(), &["a", "b", "c", "d"]).unwrap();
        assert_eq!(patch_str(&m, "missing", 0, 5).unwrap(), None);
        assert_eq!(patch_str(&m, "a", 0, 5).unwrap(), Some(None));
        assert_eq!(patch_str(&m, "b", 0, 5).unwrap(), Some(Some("x".into())));
        assert!(patch_str(&m, "c", 0, 5).is_err());
        assert!(patch_str(&m, "d", 1, 5).is_err());
    }
}
