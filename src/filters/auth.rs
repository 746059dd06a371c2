//! Filter 5: API-key authentication.
//!
//! In `api_key` mode every route that is not auth-exempt (health, CSRF
//! token, UI, OpenAPI, metrics; OPTIONS never gets here) needs
//! `Authorization: Bearer pcs_...`. The key is checked for shape, hashed
//! (SHA-256) and looked up by hash; the stored hash is compared in constant
//! time. Missing, malformed, unknown and revoked keys all answer the same
//! 401 `unauthorized`; the reason goes to the audit trail (aggregated per
//! client per minute), never the key. There is no cache, so a key revoked
//! with `portcullis keys revoke` is refused on its next request.

use crate::app::App;
use crate::config::AuthMode;
use crate::db::keys::{self, KeyLookup};
use crate::error::ApiError;
use crate::http::Ctx;

/// Why a request was refused (for the audit trail).
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    Missing,
    Malformed,
}

/// The presented key: exactly one `Authorization` header, scheme `Bearer`
/// (any case), a well-formed key.
fn presented_key(ctx: &Ctx) -> Result<&str, Refusal> {
    let values = ctx.header_all("authorization");
    let value = match values.as_slice() {
        [] => return Err(Refusal::Missing),
        [one] => *one,
        _ => return Err(Refusal::Malformed),
    };
    let (scheme, key) = value.trim().split_once(' ').ok_or(Refusal::Malformed)?;
    let key = key.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || !keys::well_formed(key) {
        return Err(Refusal::Malformed);
    }
    Ok(key)
}

pub fn check(app: &App, ctx: &mut Ctx) -> Result<(), ApiError> {
    if app.cfg.auth.mode == AuthMode::None {
        return Ok(());
    }
    // An unrouted request never reaches here; if one did, it needs a key.
    if ctx.route.is_some_and(|r| r.auth_exempt()) {
        return Ok(());
    }
    let key = match presented_key(ctx) {
        Ok(k) => k,
        Err(r) => {
            let reason = if r == Refusal::Missing {
                "missing"
            } else {
                "malformed"
            };
            app.audit.auth_failed(ctx, reason, None);
            return Err(ApiError::Unauthorized);
        }
    };
    match app.db.lookup_key(key)? {
        KeyLookup::Valid { id } => {
            ctx.key_id = Some(id);
            Ok(())
        }
        KeyLookup::Revoked { id } => {
            app.audit.auth_failed(ctx, "revoked", Some(&id));
            Err(ApiError::Unauthorized)
        }
        KeyLookup::Unknown => {
            app.audit.auth_failed(ctx, "unknown", None);
            Err(ApiError::Unauthorized)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Method;

    fn ctx(headers: &[&str]) -> Ctx {
        let mut c = Ctx::new(Method::Get, "/api/projects", "127.0.0.1".parse().unwrap());
        for h in headers {
            c = c.with_header("authorization", h);
        }
        c
    }

    #[test]
    fn header_shape_table() {
        let key = format!("pcs_{}", "0f".repeat(24));
        let ok = [
            format!("Bearer {}", key),
            format!("bearer  {} ", key),
            format!("BEARER {}", key),
        ];
        for h in &ok {
            assert_eq!(presented_key(&ctx(&[h])), Ok(key.as_str()), "{}", h);
        }
        assert_eq!(presented_key(&ctx(&[])), Err(Refusal::Missing));
        let bad = [
            key.clone(),
            format!("Basic {}", key),
            "Bearer".to_string(),
            "Bearer ".to_string(),
            format!("Bearer {}x", key),
            "Bearer sk-abc".to_string(),
        ];
        for h in &bad {
            assert_eq!(presented_key(&ctx(&[h])), Err(Refusal::Malformed), "{}", h);
        }
        let twice = format!("Bearer {}", key);
        assert_eq!(
            presented_key(&ctx(&[&twice, &twice])),
            Err(Refusal::Malformed)
        );
    }
}
