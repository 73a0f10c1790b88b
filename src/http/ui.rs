//! The web console at `/ui`: the files under `ui/` compiled into the binary (build.rs lists
//! them as `include_bytes!`), nothing read from disk or the network at run time.
//!
//! `index.html` answers `/ui`, `/ui/` and every `/ui/<path>` that is not a file (the
//! console's own routes), with `no-cache`. Each quoted `"/ui/<file>"` in it is rewritten,
//! once, to `/ui/assets/<hash>/<file>` (the first 16 hex digits of the file's SHA-256),
//! which is served as immutable for a year; a stale or unknown hash is a 404
//! `route_not_found`. Every answer carries the console's Content-Security-Policy. The files
//! hold no data, so loading them needs no key; the console's data calls carry one.

use std::collections::HashMap;
use std::sync::LazyLock;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::crypto::sha256_hex;
use crate::error::{ApiError, ErrorKind};

/// Every file under `ui/`: its path relative to `ui/` and its bytes.
static FILES: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/ui_files.rs"));

/// The policy of every `/ui` answer: scripts, styles, fonts and connections from this
/// origin only (`connect-src 'self'` covers same-origin WebSockets), no inline code.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = "index.html";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

struct Asset {
    bytes: &'static [u8],
    hash: String,
    content_type: &'static str,
}

struct Console {
    /// By path relative to `ui/`.
    assets: HashMap<&'static str, Asset>,
    /// `index.html` with its references rewritten to hashed URLs.
    index: Vec<u8>,
}

/// Hashed and rewritten on first use (once per process).
static CONSOLE: LazyLock<Console> = LazyLock::new(|| {
    let assets: HashMap<&'static str, Asset> = FILES
        .iter()
        .map(|&(path, bytes)| {
            let mut hash = sha256_hex(bytes);
            hash.truncate(16);
            let asset = Asset {
                bytes,
                hash,
                content_type: content_type(path),
            };
            (path, asset)
        })
        .collect();
    let index = assets
        .get(INDEX)
        .map(|a| rewrite(&String::from_utf8_lossy(a.bytes), &assets).into_bytes())
        .unwrap_or_else(|| {
            b"<!doctype html><title>Lowart</title><p>This build has no console (ui/ was empty)."
                .to_vec()
        });
    Console { assets, index }
});

/// `index.html` with each quoted `/ui/<file>` naming a known file replaced by its hashed
/// URL; anything else is left as written.
fn rewrite(html: &str, assets: &HashMap<&'static str, Asset>) -> String {
    const PREFIX: &str = "/ui/";
    let mut out = String::with_capacity(html.len() + 256);
    let mut rest = html;
    while let Some(at) = rest.find(PREFIX) {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let quote = before
            .chars()
            .next_back()
            .filter(|c| matches!(c, '"' | '\''));
        let path_end = from[PREFIX.len()..]
            .find(|c: char| Some(c) == quote || matches!(c, '"' | '\'' | '?' | '#' | ' ' | '>'))
            .map_or(from.len(), |i| i + PREFIX.len());
        let path = &from[PREFIX.len()..path_end];
        match assets
            .get(path)
            .filter(|_| quote.is_some() && path != INDEX)
        {
            Some(asset) => out.push_str(&format!("/ui/assets/{}/{path}", asset.hash)),
            None => out.push_str(&from[..path_end]),
        }
        rest = &from[path_end..];
    }
    out.push_str(rest);
    out
}

fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("woff2") => "font/woff2",
        Some("txt" | "md") | None => "text/plain; charset=utf-8",
        _ => {
            // LICENSE files and the like have no extension; anything else is bytes.
            if path.rsplit('/').next().is_some_and(|n| !n.contains('.')) {
                "text/plain; charset=utf-8"
            } else {
                "application/octet-stream"
            }
        }
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    for path in ["/ui", "/ui/{tail:.*}"] {
        cfg.service(
            web::resource(path)
                .route(web::get().to(serve))
                .route(web::head().to(serve))
                .default_service(web::to(|req: HttpRequest| async move {
                    secured(super::method_not_allowed(req, &["get", "head"]).await)
                })),
        );
    }
}

/// `GET`/`HEAD` `/ui…`.
pub async fn serve(req: HttpRequest) -> HttpResponse {
    let console = &*CONSOLE;
    let tail = req
        .path()
        .strip_prefix("/ui")
        .unwrap_or_default()
        .trim_start_matches('/');
    let response = if let Some(hashed) = tail.strip_prefix("assets/") {
        match hashed
            .split_once('/')
            .filter(|(_, path)| *path != INDEX)
            .and_then(|(hash, path)| console.assets.get(path).filter(|a| a.hash == hash))
        {
            Some(asset) => file(asset.bytes, asset.content_type, IMMUTABLE),
            None => HttpResponse::from_error(ApiError::new(
                ErrorKind::RouteNotFound,
                format!("no console asset at {}", req.path()),
            )),
        }
    } else {
        match console.assets.get(tail).filter(|_| tail != INDEX) {
            // The file under its own name, for development: never cached.
            Some(asset) => file(asset.bytes, asset.content_type, "no-cache"),
            None => file(&console.index, "text/html; charset=utf-8", "no-cache"),
        }
    };
    // A HEAD gets the same head; actix sends no body for it.
    secured(response)
}

fn file(bytes: &[u8], content_type: &'static str, cache: &'static str) -> HttpResponse {
    HttpResponse::build(StatusCode::OK)
        .insert_header((header::CONTENT_TYPE, content_type))
        .insert_header((header::CACHE_CONTROL, cache))
        .body(bytes.to_vec())
}

/// The console's security headers, on every `/ui` answer (errors included).
fn secured(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assets() -> HashMap<&'static str, Asset> {
        [("app.js", "aaaa"), ("vendor/u.js", "bbbb")]
            .into_iter()
            .map(|(p, h)| {
                let asset = Asset {
                    bytes: b"",
                    hash: h.to_string(),
                    content_type: content_type(p),
                };
                (p, asset)
            })
            .collect()
    }

    #[test]
    fn quoted_references_to_known_files_are_hashed() {
        let html = r#"<script src="/ui/app.js"></script><script src='/ui/vendor/u.js'></script>
<a href="/ui/users">x</a> /ui/app.js <link href="/ui/app.js.map">"#;
        let out = rewrite(html, &assets());
        assert_eq!(
            out,
            r#"<script src="/ui/assets/aaaa/app.js"></script><script src='/ui/assets/bbbb/vendor/u.js'></script>
<a href="/ui/users">x</a> /ui/app.js <link href="/ui/app.js.map">"#
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type("app.js"), "text/javascript; charset=utf-8");
        assert_eq!(content_type("vendor/LICENSE"), "text/plain; charset=utf-8");
        assert_eq!(content_type("x.bin"), "application/octet-stream");
    }
}
