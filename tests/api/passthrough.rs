//! Passthrough routes (SPEC §9) against a small vendor of their own that records what it
//! receives and answers by path: an echo, an SSE stream held after its first event until
//! the test releases it, a request held until released, a stall, an OpenAI answer.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use futures_util::StreamExt;
use lowart::domain::passthrough::RouteSpec;
use sea_orm::EntityTrait;
use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::helpers::{
    TestApp, assert_openai_error, closed_port_url, metric_sample, printed_master_key, run_to_exit,
    spawn_app_with,
};

const SSE_FIRST: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"H\u{e9}\"}}]}\n\n";
const SSE_REST: &str = "data: {\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":2,\"total_tokens\":6}}\n\ndata: [DONE]\n\n";
const OPENAI_ANSWER: &str = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}"#;

#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct VendorState {
    seen: Mutex<Vec<Seen>>,
    /// Signalled when a request reaches `hold`.
    arrived: Notify,
    /// Lets a held request or the held part of a stream go on.
    release: Notify,
}

struct Vendor {
    address: String,
    state: Arc<VendorState>,
}

impl Vendor {
    async fn start() -> Self {
        crate::helpers::install_crypto();
        let state = Arc::new(VendorState::default());
        let data = web::Data::new(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .default_service(web::to(vendor))
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("vendor binds");
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        Self {
            address: format!("http://{addr}"),
            state,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the vendor received a request")
    }
}

async fn vendor(req: HttpRequest, body: Bytes, state: web::Data<Arc<VendorState>>) -> HttpResponse {
    let path = match req.query_string() {
        "" => req.path().to_string(),
        q => format!("{}?{q}", req.path()),
    };
    state.seen.lock().unwrap().push(Seen {
        path: path.clone(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("?").to_string()))
            .collect(),
        body: body.to_vec(),
    });
    let last = req.path().rsplit('/').next().unwrap_or("");
    match last {
        "echo" => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header(("x-up", "kept"))
            .insert_header(("keep-alive", "timeout=5"))
            .insert_header(("proxy-authenticate", "Basic"))
            .body(body),
        "sse" => {
            let state = state.get_ref().clone();
            let parts = futures_util::stream::unfold(0, move |step| {
                let state = state.clone();
                async move {
                    match step {
                        0 => Some((Ok::<_, std::io::Error>(Bytes::from(SSE_FIRST)), 1)),
                        1 => {
                            state.release.notified().await;
                            Some((Ok(Bytes::from(SSE_REST)), 2))
                        }
                        _ => None,
                    }
                }
            });
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .streaming(parts)
        }
        "hold" => {
            state.arrived.notify_one();
            state.release.notified().await;
            HttpResponse::Ok().body("released")
        }
        "stall" => std::future::pending().await,
        "completions" => HttpResponse::Ok()
            .content_type("application/json")
            .body(OPENAI_ANSWER),
        _ => HttpResponse::Ok().json(json!({"path": path})),
    }
}

/// A gateway whose `[[routes]]` are `routes` (`{up}` in `upstream` is the vendor), and a
/// user key.
async fn gateway(
    routes: Value,
    customise: impl FnOnce(&mut lowart::config::Settings) + 'static,
) -> (TestApp, Vendor, String) {
    let vendor = Vendor::start().await;
    let text = routes.to_string().replace("{up}", &vendor.address);
    let specs: Vec<RouteSpec> = serde_json::from_str(&text).expect("route specs");
    let app = spawn_app_with(move |s| {
        s.routes = specs;
        customise(s);
    })
    .await;
    let key = app.user_key("ada", "user", None).await;
    (app, vendor, key)
}

fn route(prefix: &str, path: &str) -> Value {
    json!({"prefix": prefix, "upstream": format!("{{up}}{path}")})
}

#[actix_web::test]
async fn bodies_pass_byte_for_byte_with_the_rest_of_the_path_and_the_query() {
    let (app, vendor, key) = gateway(json!([route("/vendor", "/up")]), |_| {}).await;
    let body: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();

    let res = app
        .client
        .post(app.url("/vendor/v1/echo?a=1&b=%20x"))
        .bearer_auth(&key)
        .header("content-type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-up"], "kept");
    assert!(res.headers().get("keep-alive").is_none());
    assert!(res.headers().get("proxy-authenticate").is_none());
    let answer = res.bytes().await.unwrap();
    assert_eq!(answer.as_ref(), body.as_slice());
    let seen = vendor.last();
    assert_eq!(seen.path, "/up/v1/echo?a=1&b=%20x");
    assert_eq!(seen.body, body);
    let rows = app.usage_rows().await;
    let row = rows.last().unwrap();
    assert_eq!(row.model, "/vendor");
    assert_eq!(row.status, 200);
    assert_eq!(row.request_bytes, Some(70_000));
    assert_eq!(row.response_bytes, Some(70_000));
    assert_eq!(row.prompt_tokens, None);
}

#[actix_web::test]
async fn sse_is_relayed_byte_for_byte_and_the_first_event_before_the_upstream_ends() {
    let (app, vendor, key) = gateway(json!([route("/vendor", "/up")]), |_| {}).await;

    let res = app
        .client
        .post(app.url("/vendor/sse"))
        .bearer_auth(&key)
        .json(&json!({"stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut chunks = res.bytes_stream();
    let mut got = Vec::new();
    // The vendor holds the rest until released: the first event must arrive on its own.
    while got.len() < SSE_FIRST.len() {
        let chunk = tokio::time::timeout(Duration::from_secs(5), chunks.next())
            .await
            .expect("the first event arrives while the upstream holds the rest")
            .expect("a chunk")
            .unwrap();
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, SSE_FIRST.as_bytes());
    vendor.state.release.notify_one();
    while let Some(chunk) = chunks.next().await {
        got.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(got, format!("{SSE_FIRST}{SSE_REST}").as_bytes());

    let rows = app.usage_rows().await;
    let row = rows.last().unwrap();
    assert!(row.stream);
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens),
        (Some(4), Some(2))
    );
    assert_eq!(row.usage_source, "reported");
    assert_eq!(
        row.response_bytes,
        Some((SSE_FIRST.len() + SSE_REST.len()) as i64)
    );
}

#[actix_web::test]
async fn headers_are_injected_stripped_and_hop_by_hop_ones_dropped() {
    let spec = json!({
        "prefix": "/vendor",
        "upstream": "{up}/up",
        "inject_headers": {"authorization": "Bearer vendor-secret", "x-injected": "yes"},
        "strip_headers": ["x-strip-me"],
        "pass_headers": ["cookie"],
    });
    let (app, vendor, key) = gateway(json!([spec]), |_| {}).await;
    let send = |url: String| {
        app.client
            .get(url)
            .bearer_auth(&key)
            .header("connection", "keep-alive, x-hop-custom")
            .header("x-hop-custom", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic eA==")
            .send()
    };
    // Control: sent straight to the vendor, these headers do arrive.
    assert_eq!(
        send(format!("{}/direct", vendor.address))
            .await
            .unwrap()
            .status(),
        200
    );
    let direct = vendor.last();
    for hop in ["x-hop-custom", "keep-alive", "te", "proxy-authorization"] {
        assert!(direct.header(hop).is_some(), "{hop} is sent by the client");
    }
    assert_eq!(send(app.url("/vendor/hop")).await.unwrap().status(), 200);
    let seen = vendor.last();
    for hop in ["x-hop-custom", "keep-alive", "te", "proxy-authorization"] {
        assert_eq!(seen.header(hop), None, "{hop} reached the upstream");
    }

    let res = app
        .client
        .get(app.url("/vendor/headers"))
        .bearer_auth(&key)
        .header("connection", "keep-alive, x-hop-custom")
        .header("x-hop-custom", "1")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic eA==")
        .header("x-api-key", "client-key")
        .header("x-strip-me", "1")
        .header("x-injected", "from-client")
        .header("cookie", "session=1")
        .header("x-keep", "kept")
        .send()
        .await
        .unwrap();

    assert_eq!(res.status(), 200);
    let seen = vendor.last();
    assert_eq!(seen.header("authorization"), Some("Bearer vendor-secret"));
    assert_eq!(seen.header("x-injected"), Some("yes"));
    assert_eq!(seen.header("cookie"), Some("session=1"));
    assert_eq!(seen.header("x-keep"), Some("kept"));
    for gone in [
        "x-hop-custom",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-api-key",
        "x-strip-me",
    ] {
        assert_eq!(seen.header(gone), None, "{gone} reached the upstream");
    }
    assert!(
        !seen
            .headers
            .iter()
            .any(|(n, v)| n == "authorization" && v.contains(&key)),
        "the client's key reached the upstream"
    );
}

#[actix_web::test]
async fn a_key_in_the_token_header_authenticates_and_is_not_forwarded() {
    let spec = json!({"prefix": "/vendor", "upstream": "{up}/up", "token_header": "x-gw-token"});
    let (app, vendor, key) = gateway(json!([spec]), |_| {}).await;

    let res = app
        .client
        .get(app.url("/vendor/models"))
        .header("x-gw-token", &key)
        .header("authorization", "Bearer meant-for-the-vendor")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let seen = vendor.last();
    assert_eq!(seen.header("x-gw-token"), None);
    assert_eq!(seen.header("authorization"), None);

    let res = app
        .client
        .get(app.url("/vendor/models"))
        .send()
        .await
        .unwrap();
    let error = assert_openai_error(res, 401).await;
    assert_eq!(error["code"], "missing_api_key");
    let res = app
        .client
        .get(app.url("/vendor/models"))
        .header("x-gw-token", "not-a-key")
        .send()
        .await
        .unwrap();
    assert_openai_error(res, 401).await;
    assert_eq!(
        vendor.seen().len(),
        1,
        "refused requests never reach the upstream"
    );
}

#[actix_web::test]
async fn the_longest_prefix_wins_on_segment_boundaries_and_unknown_paths_are_404() {
    let routes = json!([route("/lp", "/a"), route("/lp/deep", "/b")]);
    let (app, _vendor, key) = gateway(routes, |_| {}).await;

    for (path, upstream) in [
        ("/lp/deep/x", "/b/x"),
        ("/lp/deep", "/b"),
        ("/lp/deeper", "/a/deeper"),
        ("/lp/other?q=1", "/a/other?q=1"),
    ] {
        let res = app.get(path, &key).await;
        assert_eq!(res.status(), 200, "{path}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["path"], upstream, "{path}");
    }
    for path in ["/lpx", "/nothing/here"] {
        let res = app.get(path, &key).await;
        let error = assert_openai_error(res, 404).await;
        assert_eq!(error["code"], "route_not_found", "{path}");
    }
    // Metrics label each request by its route's prefix.
    for (route, count) in [("/lp/deep", 2.0), ("/lp", 2.0)] {
        let name =
            format!("http_requests_total{{route=\"{route}\",method=\"GET\",status=\"200\"}}");
        assert_eq!(
            metric_sample(&app.client, &app.address, &name).await,
            count,
            "{route}"
        );
    }
}

#[actix_web::test]
async fn the_rpm_limit_holds_per_key_and_per_route() {
    let routes = json!([
        {"prefix": "/limited", "upstream": "{up}/up", "rpm_limit": 2},
        {"prefix": "/other", "upstream": "{up}/up", "rpm_limit": 2},
    ]);
    let (app, _vendor, key) = gateway(routes, |_| {}).await;
    let second = app.user_key("bob", "user", None).await;

    for _ in 0..2 {
        assert_eq!(app.get("/limited/x", &key).await.status(), 200);
    }
    let res = app.get("/limited/x", &key).await;
    let retry = res.headers()["retry-after"].to_str().unwrap().to_string();
    assert!(retry.parse::<u64>().unwrap() >= 1);
    let error = assert_openai_error(res, 429).await;
    assert_eq!(error["code"], "rate_limited");

    assert_eq!(app.get("/limited/x", &second).await.status(), 200);
    assert_eq!(app.get("/other/x", &key).await.status(), 200);
    let rows = app.usage_rows().await;
    assert_eq!(rows.iter().filter(|r| r.status == 429).count(), 1);
}

#[actix_web::test]
async fn a_route_at_its_concurrency_cap_answers_503_until_a_slot_frees() {
    let routes = json!([{"prefix": "/capped", "upstream": "{up}/up", "max_concurrency": 1}]);
    let (app, vendor, key) = gateway(routes, |_| {}).await;

    let (client, url, held_key) = (app.client.clone(), app.url("/capped/hold"), key.clone());
    let held = actix_web::rt::spawn(async move {
        let res = client.get(url).bearer_auth(held_key).send().await.unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    });
    tokio::time::timeout(Duration::from_secs(5), vendor.state.arrived.notified())
        .await
        .expect("the held request reaches the vendor");

    let res = app.get("/capped/x", &key).await;
    let error = assert_openai_error(res, 503).await;
    assert_eq!(error["code"], "upstream_concurrency_exceeded");

    vendor.state.release.notify_one();
    assert_eq!(held.await.unwrap(), (200, "released".to_string()));
    assert_eq!(app.get("/capped/x", &key).await.status(), 200);
}

#[actix_web::test]
async fn an_upstream_slower_than_the_request_timeout_is_504_and_a_dead_one_502() {
    let dead = closed_port_url();
    let routes = json!([
        {"prefix": "/slow", "upstream": "{up}/up", "request_timeout_ms": 300},
        {"prefix": "/dead", "upstream": dead},
    ]);
    let (app, _vendor, key) = gateway(routes, |_| {}).await;

    let started = std::time::Instant::now();
    let res = app.get("/slow/stall", &key).await;
    let error = assert_openai_error(res, 504).await;
    assert_eq!(error["code"], "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));

    let res = app.get("/dead/x", &key).await;
    assert_openai_error(res, 502).await;

    let rows = app.usage_rows().await;
    let statuses: Vec<i32> = rows.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [504, 502]);
    assert_eq!(rows[0].error_class.as_deref(), Some("upstream_timeout"));
}

#[actix_web::test]
async fn a_body_over_the_limit_is_413_before_or_while_it_streams() {
    let (app, vendor, key) = gateway(json!([route("/vendor", "/up")]), |s| {
        s.server.max_body_bytes = 1024
    })
    .await;

    let res = app
        .client
        .post(app.url("/vendor/echo"))
        .bearer_auth(&key)
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap();
    let error = assert_openai_error(res, 413).await;
    assert_eq!(error["code"], "payload_too_large");

    // Without a declared length the count happens as the body streams.
    let chunks = futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(Bytes::from(vec![7u8; 512]))),
    );
    let res = app
        .client
        .post(app.url("/vendor/echo"))
        .bearer_auth(&key)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_openai_error(res, 413).await;
    assert!(vendor.seen().iter().all(|s| s.body.len() <= 1024));
}

#[actix_web::test]
async fn an_openai_answer_through_a_route_records_its_tokens() {
    let (app, _vendor, key) = gateway(json!([route("/oa", "/up")]), |_| {}).await;
    let body = json!({"model": "gpt-x", "messages": [{"role": "user", "content": "hi"}]});

    let res = app.post_json("/oa/v1/chat/completions", &key, &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), OPENAI_ANSWER);

    let rows = app.usage_rows().await;
    let row = rows.last().unwrap();
    assert_eq!(row.model, "/oa");
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(7), Some(3), Some(10))
    );
    assert_eq!(row.usage_source, "reported");
    assert_eq!(row.request_bytes, Some(body.to_string().len() as i64));
    assert_eq!(row.response_bytes, Some(OPENAI_ANSWER.len() as i64));
    assert!(row.key_id.is_some());
}

#[actix_web::test]
async fn a_route_added_at_runtime_serves_at_once_and_is_gone_once_deleted() {
    let (app, vendor, key) = gateway(json!([route("/fixed", "/up")]), |_| {}).await;
    assert_eq!(app.get("/live/x", &key).await.status(), 404);

    let res = app
        .post_json(
            "/admin/routes",
            &app.admin_key,
            &json!({
                "prefix": "/live",
                "upstream": format!("{}/runtime", vendor.address),
                "inject_headers": {"x-vendor-key": "sealed-value-123"},
            }),
        )
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["source"], "admin");
    assert_eq!(created["inject_headers"], json!(["x-vendor-key"]));
    assert!(!created.to_string().contains("sealed-value-123"));
    let id = created["id"].as_str().unwrap().to_string();

    let res = app.get("/live/x", &key).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["path"], "/runtime/x");
    assert_eq!(
        vendor.last().header("x-vendor-key"),
        Some("sealed-value-123")
    );

    let res = app.get("/admin/routes", &app.admin_key).await;
    let list: Value = res.json().await.unwrap();
    assert!(!list.to_string().contains("sealed-value-123"));
    let sources: Vec<(&str, &str)> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["prefix"].as_str().unwrap(), r["source"].as_str().unwrap()))
        .collect();
    assert_eq!(sources, [("/fixed", "config"), ("/live", "admin")]);

    // The config owns its prefixes; a stored route's values are sealed at rest.
    let res = app
        .post_json(
            "/admin/routes",
            &app.admin_key,
            &json!({"prefix": "/fixed", "upstream": vendor.address}),
        )
        .await;
    assert_openai_error(res, 409).await;
    let res = app
        .patch_json(
            &format!("/admin/routes/{id}"),
            &app.admin_key,
            &json!({"upstream": "http://elsewhere.example"}),
        )
        .await;
    let error = assert_openai_error(res, 400).await;
    assert_eq!(error["param"], "inject_headers");
    let res = app
        .patch_json(
            &format!("/admin/routes/{id}"),
            &app.admin_key,
            &json!({"rpm_limit": 1}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.get("/live/x", &key).await.status(), 200);
    assert_eq!(app.get("/live/x", &key).await.status(), 429);
    let stored = lowart::entities::passthrough_route::Entity::find()
        .all(&app.db().await)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert!(!format!("{stored:?}").contains("sealed-value-123"));

    let res = app
        .delete(&format!("/admin/routes/{id}"), &app.admin_key)
        .await;
    assert_eq!(res.status(), 200);
    let res = app.get("/live/x", &key).await;
    let error = assert_openai_error(res, 404).await;
    assert_eq!(error["code"], "route_not_found");
    let res = app.delete("/admin/routes/config-1", &app.admin_key).await;
    assert_openai_error(res, 409).await;
}

#[actix_web::test]
async fn bad_routes_are_refused_naming_the_field() {
    let (app, _vendor, _key) = gateway(json!([]), |_| {}).await;
    for (body, param) in [
        (json!({"prefix": "/v1/x", "upstream": "http://h"}), "prefix"),
        (json!({"prefix": "nope", "upstream": "http://h"}), "prefix"),
        (json!({"prefix": "/a", "upstream": "ftp://h"}), "upstream"),
        (
            json!({"prefix": "/a", "upstream": "http://h", "strip_headers": ["a b"]}),
            "strip_headers",
        ),
    ] {
        let res = app.post_json("/admin/routes", &app.admin_key, &body).await;
        let error = assert_openai_error(res, 400).await;
        assert_eq!(error["param"], param, "{body}");
    }
    let key = app.user_key("eve", "user", None).await;
    let res = app
        .post_json(
            "/admin/routes",
            &key,
            &json!({"prefix": "/a", "upstream": "http://h"}),
        )
        .await;
    assert_openai_error(res, 403).await;
}

#[actix_web::test]
async fn a_key_limited_to_models_reaches_only_the_routes_it_names() {
    let routes = json!([route("/allowed", "/up"), route("/denied", "/up")]);
    let (app, _vendor, _key) = gateway(routes, |_| {}).await;
    let limited = app.user_key("lim", "user", Some(vec!["/allowed"])).await;

    assert_eq!(app.get("/allowed/x", &limited).await.status(), 200);
    let error = assert_openai_error(app.get("/denied/x", &limited).await, 403).await;
    assert_eq!(error["code"], "model_not_permitted");
}

#[actix_web::test]
async fn an_sse_answer_silent_past_the_idle_timeout_ends_after_its_first_event() {
    let spec = json!({"prefix": "/vendor", "upstream": "{up}/up", "idle_timeout_ms": 300});
    let (app, _vendor, key) = gateway(json!([spec]), |_| {}).await;

    let res = app.get("/vendor/sse", &key).await;
    assert_eq!(res.status(), 200);
    // The vendor never sends the rest: the body ends (broken) after the first event.
    let mut chunks = res.bytes_stream();
    let mut got = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => got.extend_from_slice(&chunk),
                Err(_) => break,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream ended within the idle timeout");
    assert_eq!(got, SSE_FIRST.as_bytes());
    let rows = app.usage_rows().await;
    let row = rows.last().unwrap();
    assert_eq!(row.error_class.as_deref(), Some("upstream_timeout"));
    assert_eq!(row.response_bytes, Some(SSE_FIRST.len() as i64));
}

#[actix_web::test]
async fn dot_segments_are_refused_before_the_upstream() {
    let (app, vendor, key) = gateway(json!([route("/vendor", "/up/public")]), |_| {}).await;
    for path in ["/vendor/../secret", "/vendor/%2e%2e/secret"] {
        let res = app
            .client
            .get(format!("{}{path}", app.address))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        // reqwest may resolve a plain `..` itself; either way nothing reaches the vendor
        // outside `/up/public`.
        assert_ne!(res.status(), 200, "{path}");
    }
    assert!(
        vendor
            .seen()
            .iter()
            .all(|s| s.path.starts_with("/up/public")),
        "{:?}",
        vendor.seen()
    );
}

#[actix_web::test]
async fn a_route_added_on_one_instance_serves_on_the_other_within_a_second() {
    use crate::scale_out::{eventually, spawn_pair};
    use reqwest::Method;
    let Some(pair) = spawn_pair(&[]).await else {
        return;
    };
    let vendor = Vendor::start().await;
    let (_, key) = pair.user_key(&pair.a, "ada").await;
    let status = || async {
        pair.send(&pair.b, Method::GET, "/shared/x", &key, None)
            .await
            .status()
            .as_u16()
    };
    assert_eq!(status().await, 404);

    let body = json!({"prefix": "/shared", "upstream": format!("{}/up", vendor.address)});
    let created = pair
        .admin(&pair.a, Method::POST, "/admin/routes", Some(&body), 201)
        .await;
    eventually(
        std::time::Instant::now(),
        Duration::from_secs(1),
        200,
        status,
    )
    .await;

    let path = format!("/admin/routes/{}", created["id"].as_str().unwrap());
    pair.admin(&pair.a, Method::DELETE, &path, None, 200).await;
    eventually(
        std::time::Instant::now(),
        Duration::from_secs(1),
        404,
        status,
    )
    .await;
}

#[actix_web::test]
async fn a_client_that_leaves_mid_stream_gets_a_499_row_and_frees_the_routes_slot() {
    let spec = json!({"prefix": "/vendor", "upstream": "{up}/up", "max_concurrency": 1});
    let (app, _vendor, key) = gateway(json!([spec]), |_| {}).await;

    let res = app.get("/vendor/sse", &key).await;
    let mut chunks = res.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(5), chunks.next())
        .await
        .expect("the first event arrives")
        .unwrap()
        .unwrap();
    assert!(!first.is_empty());
    drop(chunks);

    let since = std::time::Instant::now();
    loop {
        let rows = app.usage_rows().await;
        if let Some(row) = rows.iter().find(|r| r.status == 499) {
            assert_eq!(row.error_class.as_deref(), Some("client_closed"));
            assert!(row.response_bytes.unwrap() > 0);
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "no 499 row: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.get("/vendor/x", &key).await.status(), 200);
}

#[actix_web::test]
async fn injected_headers_survive_a_master_key_rotation() {
    use crate::helpers::{
        MASTER_KEY, drop_test_database, fresh_database_url, spawn_binary, terminate,
    };
    let vendor = Vendor::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let admin = lowart::crypto::generate_api_key().unwrap();
    let env = [
        ("DATABASE_URL", db_url.as_str()),
        ("LOWART_ADMIN_KEY", admin.as_str()),
        ("LOWART_MASTER_KEY", MASTER_KEY),
    ];
    let client = reqwest::Client::new();
    let mut gateway = spawn_binary(&dir, &env).await;
    let body = json!({
        "prefix": "/sealed",
        "upstream": format!("{}/up", vendor.address),
        "inject_headers": {"x-vendor-key": "vk-before-rotation"},
    });
    let res = client
        .post(format!("{}/admin/routes", gateway.address))
        .bearer_auth(&admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert!(terminate(&mut gateway.child).await.success());

    let out = run_to_exit(&dir, &env, &["rotate-master-key"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = printed_master_key(&out);

    let rotated = [env[0], env[1], ("LOWART_MASTER_KEY", new.as_str())];
    let gateway = spawn_binary(&dir, &rotated).await;
    let res = client
        .get(format!("{}/sealed/x", gateway.address))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        vendor.last().header("x-vendor-key"),
        Some("vk-before-rotation")
    );
    drop(gateway);
    drop_test_database(&db_url);
}
