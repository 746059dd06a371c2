//! `GET /`, `GET /ui/{asset}` and `GET /favicon.ico`: the built-in chat
//! page, compiled into the binary (no build step, no CDN). Its CSP allows
//! only same-origin scripts, styles and fetches, with no inline code;
//! assets carry ETags and are revalidated (`Cache-Control: no-cache`),
//! answering 304 when unchanged. The icon, which browsers ask for on their
//! own and never revalidate eagerly, is cached for a day. `ui = false`
//! turns all of it off (404).

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
        name: "markdown.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../ui/markdown.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../ui/app.css"),
    },
];

/// The page's icon, served at `/favicon.ico` (where browsers look for it
/// unasked) and linked from the page: a 32x32 PNG in an ICO.
const FAVICON: Asset = Asset {
    name: "favicon.ico",
    content_type: "image/x-icon",
    body: include_bytes!("../ui/favicon.ico"),
};
/// The icon changes only with a release: a day in caches is harmless.
const FAVICON_CACHE: &str = "public, max-age=86400";

/// The icon's media type (for the document).
pub const FAVICON_TYPE: &str = FAVICON.content_type;

/// The page's files as (name, media type without parameters); the first
/// is the page itself (`GET /`), the others are served at `/ui/{name}`.
pub fn files() -> impl Iterator<Item = (&'static str, &'static str)> {
    ASSETS.iter().map(|a| {
        let media = a.content_type.split(';').next().unwrap_or("").trim();
        (a.name, media)
    })
}

/// A strong ETag: the start of the bytes' SHA-256.
fn etag_of(body: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, body);
    format!("\"{}\"", crate::ids::hex(&d.as_ref()[..12]))
}

/// The assets' ETags, computed once from the embedded bytes.
fn etags() -> &'static Vec<String> {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| ASSETS.iter().map(|a| etag_of(a.body)).collect())
}

fn favicon_etag() -> &'static str {
    static ETAG: OnceLock<String> = OnceLock::new();
    ETAG.get_or_init(|| etag_of(FAVICON.body))
}

/// The asset, or 304 when the client's copy (`If-None-Match`) is current.
fn serve(ctx: &Ctx, asset: &Asset, etag: &str, cache: &'static str) -> Reply {
    let fresh = ctx
        .header("if-none-match")
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let reply = if fresh {
        Reply::empty(304)
    } else {
        Reply::bytes(200, asset.content_type, asset.body.to_vec())
    };
    reply
        .with_header("ETag", etag.to_string())
        .with_header("Cache-Control", cache)
        .with_header("Content-Security-Policy", UI_CSP)
}

pub fn index(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    if !app.cfg.server.ui {
        return Err(ApiError::NotFound);
    }
    Ok(serve(ctx, &ASSETS[0], &etags()[0], "no-cache"))
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
        Some(i) => Ok(serve(ctx, &ASSETS[i], &etags()[i], "no-cache")),
        None => Err(ApiError::NotFound),
    }
}

pub fn favicon(app: &App, ctx: &mut Ctx) -> Result<Reply, ApiError> {
    if !app.cfg.server.ui {
        return Err(ApiError::NotFound);
    }
    Ok(serve(ctx, &FAVICON, favicon_etag(), FAVICON_CACHE))
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
        for script in ASSETS.iter().filter(|a| a.name.ends_with(".js")) {
            let js = std::str::from_utf8(script.body).unwrap();
            let name = script.name;
            for banned in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(
                    !js.contains(banned),
                    "{name}: {banned} (build DOM nodes from text)"
                );
            }
            assert!(
                html.contains(&format!("<script src=\"/ui/{name}\" defer></script>")),
                "{name} is loaded by the page"
            );
        }
        assert!(
            html.contains("<link rel=\"icon\" href=\"/favicon.ico\""),
            "the page names its icon, so browsers ask for nothing else"
        );
    }

    #[test]
    fn favicon_is_an_ico() {
        assert_eq!(&FAVICON.body[..4], &[0, 0, 1, 0], "ICO header, one image");
        assert!(FAVICON.body.len() < 4096, "a small icon");
    }

    #[test]
    fn etags_are_stable_and_distinct() {
        let e = etags();
        assert_eq!(e.len(), ASSETS.len());
        assert_ne!(e[0], e[1]);
        assert_eq!(e, etags());
        assert!(!e.iter().any(|t| t == favicon_etag()));
    }
}
