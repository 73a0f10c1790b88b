//! The web console at `/ui`: index.html and its assets from the binary, hashed URLs with
//! long caching, the Content-Security-Policy on every answer, the page weight; the
//! browser's ways in: the bus WebSocket with the key as a subprotocol, `/metrics/summary`
//! with an admin/operator/viewer key.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{TestApp, assert_openai_error, spawn_app, spawn_app_with};

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

fn assert_secured(res: &reqwest::Response, what: &str) {
    let h = res.headers();
    assert_eq!(h["content-security-policy"], CSP, "{what}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
}

async fn index(app: &TestApp, path: &str) -> String {
    let res = app.client.get(app.url(path)).send().await.unwrap();
    assert_eq!(res.status(), 200, "{path}");
    assert_secured(&res, path);
    assert_eq!(res.headers()["cache-control"], "no-cache", "{path}");
    assert_eq!(
        res.headers()["content-type"],
        "text/html; charset=utf-8",
        "{path}"
    );
    res.text().await.unwrap()
}

/// The `src`/`href` values of `html` that point under `/ui/`.
fn references(html: &str) -> Vec<String> {
    let pattern = regex::Regex::new(r#"(?:src|href)\s*=\s*["'](/ui/[^"'#?]+)["']"#).unwrap();
    pattern
        .captures_iter(html)
        .map(|c| c[1].to_string())
        .collect()
}

fn expected_type(path: &str) -> &'static str {
    if path.ends_with(".js") || path.ends_with(".mjs") {
        "text/javascript; charset=utf-8"
    } else if path.ends_with(".css") {
        "text/css; charset=utf-8"
    } else if path.ends_with(".svg") {
        "image/svg+xml"
    } else if path.ends_with(".png") {
        "image/png"
    } else if path.ends_with(".ico") {
        "image/x-icon"
    } else if path.ends_with(".woff2") {
        "font/woff2"
    } else if path.ends_with(".json") {
        "application/json"
    } else {
        panic!("an asset of a type this test does not know: {path}")
    }
}

#[actix_web::test]
async fn the_console_is_served_from_the_binary_with_hashed_immutable_assets_and_a_strict_csp() {
    let app = spawn_app().await;
    let html = index(&app, "/ui").await;
    assert_eq!(index(&app, "/ui/").await, html);
    // The console's own routes answer the same page.
    assert_eq!(index(&app, "/ui/users/alice").await, html);
    assert!(html.contains("<html"), "{html}");
    // No inline code: scripts only by `src`, no handlers, no `style=`.
    let inline_script = regex::Regex::new(r"<script(?:\s[^>]*)?>\s*[^<\s]").unwrap();
    assert!(!inline_script.is_match(&html), "inline script in {html}");
    assert!(!html.contains("onclick=") && !html.contains(" style="));

    let refs = references(&html);
    assert!(
        refs.iter().any(|r| r.ends_with(".js")),
        "a script: {refs:?}"
    );
    assert!(
        refs.iter().any(|r| r.ends_with(".css")),
        "a style: {refs:?}"
    );
    let mut weight = html.len();
    for reference in &refs {
        // Every local reference is rewritten to a hashed URL.
        let rest = reference
            .strip_prefix("/ui/assets/")
            .unwrap_or_else(|| panic!("{reference} is not hashed"));
        let (hash, path) = rest.split_once('/').unwrap();
        assert!(
            hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()),
            "{reference}"
        );
        let res = app.client.get(app.url(reference)).send().await.unwrap();
        assert_eq!(res.status(), 200, "{reference}");
        assert_secured(&res, reference);
        assert_eq!(
            res.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{reference}"
        );
        assert_eq!(
            res.headers()["content-type"],
            expected_type(path),
            "{reference}"
        );
        let body = res.bytes().await.unwrap();
        // The same bytes as the file in the repository.
        let on_disk = std::fs::read(format!("{}/ui/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        assert_eq!(body.as_ref(), on_disk.as_slice(), "{reference}");
        weight += body.len();

        // HEAD works; a wrong hash is a 404 in the gateway's shape, still with the CSP.
        let res = app.client.head(app.url(reference)).send().await.unwrap();
        assert_eq!(res.status(), 200, "HEAD {reference}");
        let wrong = format!("/ui/assets/0000000000000000/{path}");
        let res = app.client.get(app.url(&wrong)).send().await.unwrap();
        assert_secured(&res, &wrong);
        let error = assert_openai_error(res, 404).await;
        assert_eq!(error["code"], "route_not_found");
    }
    // The first load, uncompressed, stays under 300 KB.
    assert!(weight < 300 * 1024, "index and assets weigh {weight} bytes");

    // An unknown asset path is a 404; HEAD of the page works; other methods are 405.
    let res = app
        .client
        .get(app.url("/ui/assets/0123456789abcdef/nope.js"))
        .send()
        .await
        .unwrap();
    assert_openai_error(res, 404).await;
    // The page itself is never served as an immutable asset, even under its own hash.
    let page = std::fs::read(format!("{}/ui/index.html", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let hash = &lowart::crypto::sha256_hex(&page)[..16];
    let res = app
        .client
        .get(app.url(&format!("/ui/assets/{hash}/index.html")))
        .send()
        .await
        .unwrap();
    assert_openai_error(res, 404).await;
    let res = app.client.head(app.url("/ui")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_secured(&res, "HEAD /ui");
    let res = app.client.post(app.url("/ui")).send().await.unwrap();
    assert_secured(&res, "POST /ui");
    assert_eq!(res.headers()["allow"], "GET, HEAD");
    assert_openai_error(res, 405).await;

    // The console is not part of the API document.
    let doc: Value = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .all(|p| !p.starts_with("/ui"))
    );
}

fn ws_request(
    app: &TestApp,
    protocols: &str,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let url = format!("{}/v1/bus/ws", app.address.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", protocols.parse().unwrap());
    request
}

#[actix_web::test]
async fn browsers_present_the_bus_key_as_a_websocket_subprotocol() {
    let app = spawn_app().await;
    let alice = app.user_key("alice", "user", None).await;
    let (mut socket, res) =
        tokio_tungstenite::connect_async(ws_request(&app, &format!("lowart.bearer, {alice}")))
            .await
            .expect("the key as a subprotocol is accepted");
    // The answer selects the marker protocol and never echoes the key.
    assert_eq!(res.headers()["sec-websocket-protocol"], "lowart.bearer");
    // The connection is alice's: her approvals topic is hers to follow.
    socket
        .send(Message::text(
            json!({"op": "subscribe", "topic": "approvals.alice", "ref": 1}).to_string(),
        ))
        .await
        .unwrap();
    let answer = loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .expect("readable");
        if let Message::Text(text) = frame {
            break serde_json::from_str::<Value>(text.as_str()).unwrap();
        }
    };
    assert_eq!(answer["op"], "ok", "{answer}");
    assert_eq!(answer["ref"], 1);

    // A wrong key is refused before the upgrade; so is the marker without a key.
    for offered in [
        "lowart.bearer, lw-not-a-key".to_string(),
        "lowart.bearer".into(),
    ] {
        match tokio_tungstenite::connect_async(ws_request(&app, &offered)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                assert_eq!(res.status(), 401, "{offered}")
            }
            other => panic!("expected 401 for {offered}, got {other:?}"),
        }
    }
}

#[actix_web::test]
async fn the_summary_takes_an_admin_key_and_refuses_a_user_key() {
    let app = spawn_app_with(|s| {
        s.telemetry.metrics_token = Some(lowart::config::Secret::new("scrape-token-ui"))
    })
    .await;
    let res = app.get("/metrics/summary", &app.admin_key).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert!(body["inflight"]["current"].is_number(), "{body}");
    let operator = app.user_key("ops", "operator", None).await;
    assert_eq!(app.get("/metrics/summary", &operator).await.status(), 200);
    let user = app.user_key("bob", "user", None).await;
    let error = assert_openai_error(app.get("/metrics/summary", &user).await, 403).await;
    assert_eq!(error["code"], "admin_forbidden");
}

#[actix_web::test]
async fn a_key_reads_its_own_users_usage_summary_and_keys_and_nobody_elses() {
    let app = spawn_app().await;
    let alice = app.user_key("alice", "user", None).await;
    let body = json!({"model": "mock", "messages": crate::helpers::user_message("hi")});
    for key in [&alice, &alice, &app.admin_key] {
        assert_eq!(app.chat(key, &body).await.status(), 200);
    }
    app.usage_rows().await;

    // Her usage per model and per key: her two requests, not the admin's.
    let res = app.get("/v1/usage/summary?group_by=model", &alice).await;
    assert_eq!(res.status(), 200);
    let summary: Value = res.json().await.unwrap();
    assert_eq!(summary["data"].as_array().unwrap().len(), 1, "{summary}");
    assert_eq!(summary["data"][0]["group"], "mock");
    assert_eq!(summary["data"][0]["requests"], 2);
    let res = app.get("/v1/usage/summary?group_by=user", &alice).await;
    let by_user: Value = res.json().await.unwrap();
    assert_eq!(by_user["data"][0]["group"], "alice", "{by_user}");
    assert_eq!(by_user["data"].as_array().unwrap().len(), 1);
    // Asking for another user's is refused; so is a bad group.
    let res = app
        .get("/v1/usage/summary?group_by=model&user_id=admin", &alice)
        .await;
    let error = assert_openai_error(res, 400).await;
    assert_eq!(error["param"], "user_id");
    let res = app.get("/v1/usage/summary?group_by=week", &alice).await;
    assert_openai_error(res, 400).await;

    // Her keys, never their secrets; not the admin's.
    let second = app
        .post_json(
            "/admin/keys",
            &app.admin_key,
            &json!({"user_id": "alice", "name": "second"}),
        )
        .await;
    assert_eq!(second.status(), 201);
    let res = app.get("/v1/keys", &alice).await;
    assert_eq!(res.status(), 200);
    let keys: Value = res.json().await.unwrap();
    let keys = keys["data"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(
        keys.iter()
            .all(|k| k["user_id"] == "alice" && k.get("key").is_none())
    );
    assert!(!serde_json::to_string(keys).unwrap().contains(&alice));
    assert_openai_error(
        app.client.get(app.url("/v1/keys")).send().await.unwrap(),
        401,
    )
    .await;
}
