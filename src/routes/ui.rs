//! `GET /` and `GET /ui/{asset}`: the built-in chat page, compiled into the
//! binary (no build step, no CDN). Its CSP allows only same-origin scripts,
//! styles and fetches, with no inline code; assets carry ETags and are
//! revalidated (`Cache-Control: no-cache`), answering 304 when unchanged.
//! `ui = false` turns all of it off (404).

use std::sync::OnceLock;

use crate::app::App;
use crate::error::ApiError;
use crate::http::{Ctx, Reply};

pub const UI_CSP: &str =
    "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'";

struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../ui/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../ui/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../ui/app.css"),
    },
];

/// The page's files as (name, media type without parameters); the first
/// is the page itself (`GET /`), the others are served at `/ui/{name}`.
pub fn files() -> impl Iterator<Item = (&'static str, &'static str)> {
    ASSETS.iter().map(|a| {
        let media = a.content_type.split(';').next().unwrap_or("").trim();
        (a.name, media)
    })
}

/// Strong ETags, computed once from the embedded bytes.
fn etags() -> &'static Vec<String> {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let d = ring::digest::digest(&ring::digest::SHA256, a.body);
                format!("\"{}\"", crate::ids::hex(&d.as_ref()[..12]))
            })
            .collect()
    })
}

fn serve(ctx: &Ctx, index: usize) -> Reply {
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let fresh = ctx
        .header("if-none-match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let reply = if fresh {
        Reply::empty(304)
    } else {
        Reply::bytes(200, asset.content_type, asset.body.to_vec())
    };
    reply
        .with_header("ETag", etag.clone())
        .with_header("Cache-Control", "no-cache")
        .with_header("Content-Security-Policy", UI_CSP)
}

pub fn index(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    if !app.cfg.server.ui {
        return Err(ApiError::NotFound);
    }
    Ok(serve(ctx, 0))
}

pub fn asset(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    if !app.cfg.server.ui {
        return Err(ApiError::NotFound);
    }
    let name = ctx.params.first().map(String::as_str).unwrap_or("");
    match ASSETS
        .iter()
        .position(|a| a.name == name && a.name != "index.html")
    {
        Some(i) => Ok(serve(ctx, i)),
        None => Err(ApiError::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_has_no_inline_script_or_style_and_uses_only_self_assets() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap();
        assert!(!html.contains("<style"), "inline style breaks the CSP");
        assert!(
            !html.contains(" style="),
            "inline style attribute breaks the CSP"
        );
        for tag in html.split("<script").skip(1) {
            assert!(
                tag.trim_start().starts_with("src=\"/ui/"),
                "inline or foreign script: {}",
                tag
            );
        }
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "no CDN"
        );
        let js = std::str::from_utf8(ASSETS[1].body).unwrap();
        assert!(!js.contains("innerHTML"), "render with textContent only");
        assert!(!js.contains("eval("));
    }

    #[test]
    fn etags_are_stable_and_distinct() {
        let e = etags();
        assert_eq!(e.len(), ASSETS.len());
        assert_ne!(e[0], e[1]);
        assert_eq!(e, etags());
    }
}
