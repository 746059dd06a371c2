//! `GET /api/csrf-token`: a fresh CSRF token for browser clients,
//! `{"token":"...","expires_in":<csrf_token_ttl_s>,"signed_in":bool}`
//! (`signed_in`: the request carries a live session, or auth mode is
//! `none`; the page asks `/api/me` only then, so a first visit makes no
//! request that fails). Served whether or not
//! `csrf_tokens` is on (a token is harmless when it is not required). Auth
//! exempt, rate limited as `other`; never cached (`Cache-Control: no-store`).

use serde_json::json;

use crate::app::App;
use crate::error::ApiError;
use crate::filters::csrf;
use crate::http::{Ctx, Reply};

pub fn token(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    let ttl_s = app.cfg.security.csrf_token_ttl.as_secs();
    // Signed in (a live session cookie): the token is bound to the session.
    let session = match ctx.cookie(crate::filters::auth::SESSION_COOKIE) {
        Some(token) => match app
            .db
            .lookup_session(token, app.cfg.auth.session_idle.as_millis() as i64)?
        {
            crate::db::sessions::SessionLookup::Valid { hash, .. } => Some(hash),
            crate::db::sessions::SessionLookup::Invalid => None,
        },
        None => None,
    };
    let signed_in = session.is_some() || app.cfg.auth.mode == crate::config::AuthMode::None;
    let binding = session.unwrap_or_default();
    let token = csrf::issue_for(&app.csrf_secret, csrf::now_unix(), ttl_s, &binding);
    Ok(Reply::json(
        200,
        &json!({ "token": token, "expires_in": ttl_s, "signed_in": signed_in }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_a_token_that_verifies_with_the_configured_ttl() {
        let mut c = crate::config::Config::default();
        c.security.csrf_token_ttl = std::time::Duration::from_secs(120);
        c.server.data_dir = std::env::temp_dir().join(format!(
            "portcullis-csrf-route-{}",
            crate::ids::random_hex(6)
        ));
        let app = App::new(c.clone()).unwrap();
        let mut ctx = Ctx::new(
            crate::http::Method::Get,
            "/api/csrf-token",
            "127.0.0.1".parse().unwrap(),
        );
        let r = token(&app, &mut ctx).unwrap();
        assert_eq!(r.status, 200);
        let crate::http::Body::Bytes(body) = &r.body else {
            panic!("{:?}", r.body)
        };
        let v: serde_json::Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["expires_in"], 120);
        assert_eq!(v["signed_in"], false, "no session cookie");
        let t = v["token"].as_str().unwrap();
        assert!(csrf::verify(&app.csrf_secret, t, csrf::now_unix()));
        assert!(!csrf::verify(&app.csrf_secret, t, csrf::now_unix() + 121));
        app.stop_background();
        let _ = std::fs::remove_dir_all(&c.server.data_dir);
    }
}
