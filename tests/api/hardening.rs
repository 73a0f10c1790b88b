//! Defects found when the gateway was attacked as an outsider would: what a client or an
//! upstream sends must not grow memory without bound, hang a client, slip past a key's
//! limits, or leave a gauge raised; streams end well-formed whatever happens.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Gateway, assert_openai_error, closed_port_url, metric_sample, spawn_app, spawn_app_with,
    spawn_binary, sse_data, streamed_content, user_message,
};
use crate::mock_upstream::{MockUpstream, Reply, chunk};

fn ask_stream(model: &str, text: &str) -> Value {
    json!({"model": model, "stream": true, "messages": user_message(text)})
}

/// The last two `data:` payloads of a stream: its error chunk and `[DONE]`.
fn error_then_done(body: &str) -> Value {
    let events = sse_data(body);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "ends with [DONE]: {body}"
    );
    let error: Value = serde_json::from_str(&events[events.len() - 2]).expect("error chunk");
    assert!(error["error"].is_object(), "an error chunk: {error}");
    error["error"].clone()
}

async fn sample(app: &crate::helpers::TestApp, name: &str) -> f64 {
    metric_sample(&app.client, &app.address, name).await
}

async fn mock_deployment_id(app: &crate::helpers::TestApp) -> String {
    let list: Value = app
        .get("/admin/models", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["model_id"] == "mock")
        .and_then(|d| d["id"].as_str())
        .unwrap()
        .to_string()
}

// 1. The built-in mock echoes at most 16 KiB, frame by frame, and an admin can turn it off.
#[actix_web::test]
async fn the_mock_caps_its_echo_and_an_admin_can_disable_it() {
    let app = spawn_app().await;
    let huge = "word ".repeat(80_000);

    let res = app.chat(&app.admin_key, &ask_stream("mock", &huge)).await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    let content = streamed_content(&body);
    assert!(
        !content.is_empty() && content.len() <= 16 * 1024,
        "streamed echo of {} bytes",
        content.len()
    );
    assert!(
        body.len() < 16 * 1024 * 200,
        "the whole stream stays bounded"
    );

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "mock", "messages": user_message(&huge)}),
        )
        .await;
    let answer: Value = res.json().await.unwrap();
    let echoed = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(echoed.len() <= 16 * 1024);

    let id = mock_deployment_id(&app).await;
    let res = app
        .patch_json(
            &format!("/admin/models/{id}"),
            &app.admin_key,
            &json!({"enabled": false}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let error = assert_openai_error(
        app.chat(
            &app.admin_key,
            &json!({"model": "mock", "messages": user_message("hi")}),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(error["code"], "model_not_found");
}

// 2. An upstream that goes silent after its first content: the documented 30 s default
// idle timeout is real (shortened here through `routing.idle_timeout_ms`).
#[actix_web::test]
async fn a_silent_stream_ends_by_the_default_idle_timeout() {
    let app = spawn_app_with(|s| s.routing.idle_timeout_ms = 300).await;
    app.add_openai_model("gpt-test", json!({})).await;
    app.upstream.push(Reply::Gated {
        events: vec![
            chunk(json!({"role": "assistant", "content": "Hi "}), Value::Null),
            chunk(json!({"content": "never"}), Value::Null),
        ],
        before: 1,
        gate: Arc::new(tokio::sync::Notify::new()),
    });
    let res = tokio::time::timeout(Duration::from_secs(20), async {
        let res = app.chat(&app.admin_key, &ask_stream("gpt-test", "x")).await;
        res.text().await.unwrap()
    })
    .await
    .expect("the stream ends instead of hanging");
    assert_eq!(error_then_done(&res)["code"], "upstream_timeout");
}

// 2. An upstream that never stops (a chunk every 20 ms, never idle) meets the total
// stream deadline.
#[actix_web::test]
async fn an_endless_stream_ends_at_the_stream_deadline() {
    let app = spawn_app_with(|s| s.routing.stream_timeout_ms = 400).await;
    app.add_openai_model("gpt-test", json!({})).await;
    app.upstream.push(Reply::Trickle(Duration::from_millis(20)));
    let body = tokio::time::timeout(Duration::from_secs(20), async {
        let res = app.chat(&app.admin_key, &ask_stream("gpt-test", "x")).await;
        res.text().await.unwrap()
    })
    .await
    .expect("the stream ends instead of running forever");
    assert!(body.contains("tick"), "content flowed first");
    assert_eq!(error_then_done(&body)["code"], "upstream_timeout");
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, 504);
}

// 7. Upstream answers and events beyond the configured caps are malformed, not buffered.
#[actix_web::test]
async fn oversized_upstream_answers_and_events_are_refused() {
    let app = spawn_app_with(|s| {
        s.routing.max_response_bytes = 64 * 1024;
        s.routing.max_event_bytes = 16 * 1024;
        s.routing.max_attempts = 1;
    })
    .await;
    app.add_openai_model("gpt-test", json!({})).await;
    let big = "x".repeat(200 * 1024);

    app.upstream.push(Reply::Json(json!({
        "id": "c", "object": "chat.completion", "created": 1, "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": big},
            "finish_reason": "stop"}]
    })));
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-test", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(
        assert_openai_error(res, 502).await["code"],
        "malformed_response"
    );

    // A huge first event: the stream never commits, the client gets a 502.
    app.upstream.push(Reply::Events(vec![chunk(
        json!({"role": "assistant", "content": big}),
        Value::Null,
    )]));
    let res = app.chat(&app.admin_key, &ask_stream("gpt-test", "x")).await;
    assert_eq!(
        assert_openai_error(res, 502).await["code"],
        "malformed_response"
    );

    // A huge event after the stream committed: an error event, then `[DONE]`.
    app.upstream.push(Reply::Events(vec![
        chunk(json!({"role": "assistant", "content": "ok "}), Value::Null),
        chunk(json!({"content": big}), Value::Null),
    ]));
    let res = app.chat(&app.admin_key, &ask_stream("gpt-test", "x")).await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(body.contains("ok "));
    assert_eq!(error_then_done(&body)["code"], "malformed_response");
}

// 10. A key limited to `cheap` is not answered by `mock` through cheap's fallback chain.
#[actix_web::test]
async fn fallbacks_stay_within_the_keys_models() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/admin/models",
            &app.admin_key,
            &json!({"model_id": "cheap", "vendor_type": "OpenAI",
                "base_url": format!("{}/v1", closed_port_url())}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(app.set_fallbacks("cheap", &["mock"]).await.status(), 200);
    let limited = app.user_key("alice", "user", Some(vec!["cheap"])).await;
    let ask = json!({"model": "cheap", "messages": user_message("secret")});

    let error = assert_openai_error(app.chat(&limited, &ask).await, 502).await;
    assert_eq!(error["code"], "connect");

    let res = app.chat(&app.admin_key, &ask).await;
    assert_eq!(res.status(), 200, "an unrestricted key may fall back");
    assert_eq!(res.headers()["x-lowart-model"], "mock");
}

// 12. A stream that fails after OpenAI's role-only first chunk has said nothing yet: it
// can still fail over, and the client sees one clean answer.
#[actix_web::test]
async fn a_stream_fails_over_after_a_role_only_first_chunk() {
    let app = spawn_app().await;
    app.add_openai_model("primary", json!({})).await;
    assert_eq!(app.set_fallbacks("primary", &["mock"]).await.status(), 200);
    let role_only = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    app.upstream.push(Reply::Truncated(vec![role_only.clone()]));
    app.upstream.push(Reply::Events(vec![
        role_only,
        json!({"error": {"message": "overloaded", "type": "server_error"}}),
    ]));

    for _ in 0..2 {
        let res = app
            .chat(&app.admin_key, &ask_stream("primary", "hello there"))
            .await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-lowart-model"], "mock");
        assert_eq!(res.headers()["x-lowart-attempts"], "2");
        let body = res.text().await.unwrap();
        let events = sse_data(&body);
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        assert!(!body.contains("\"error\""), "no error event: {body}");
        assert_eq!(streamed_content(&body), "hello there");
    }
}

// 13. A huge model name is refused short, and an inbound request id is kept only when sane.
#[actix_web::test]
async fn identifiers_from_clients_are_bounded_and_sanitised() {
    let app = spawn_app().await;
    let huge = "m".repeat(1_000_000);
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": huge, "messages": user_message("hi")}),
        )
        .await;
    let error = assert_openai_error(res, 400).await;
    assert_eq!(error["param"], "model");
    assert!(error["message"].as_str().unwrap().len() < 200);

    let send = |id: &'static str| {
        app.client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.admin_key)
            .header("x-request-id", id)
            .json(&json!({"model": "mock", "messages": user_message("hi")}))
            .send()
    };
    let hostile = send("<script>alert(1)</script>").await.unwrap();
    let replaced = hostile.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(uuid::Uuid::parse_str(&replaced).is_ok(), "{replaced}");
    let sane = send("trace-42.a:b_c").await.unwrap();
    assert_eq!(sane.headers()["x-request-id"], "trace-42.a:b_c");

    let rows = app.usage_rows().await;
    let ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(ids, vec![replaced.as_str(), "trace-42.a:b_c"]);
    assert!(
        rows.iter().all(|r| r.model == "mock"),
        "no huge model stored"
    );
}

// 17. In flight means until the last byte; a client that hangs up before the headers
// leaves the gauge as it found it.
#[actix_web::test]
async fn the_inflight_gauge_follows_streams_and_dropped_requests() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-test", json!({})).await;
    assert_eq!(sample(&app, "gateway_inflight_requests").await, 0.0);

    app.upstream.push(Reply::Hang);
    let dropped = app.upstream.stream_dropped();
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gone = impatient
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"model": "gpt-test", "messages": user_message("x")}))
        .send()
        .await;
    assert!(gone.is_err(), "the client gave up");
    drop(impatient);
    tokio::time::timeout(Duration::from_secs(10), dropped.notified())
        .await
        .expect("the gateway hung up on the upstream");
    assert_eq!(sample(&app, "gateway_inflight_requests").await, 0.0);

    let gates = [
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    ];
    let mut streams = Vec::new();
    for gate in &gates {
        app.upstream.push(Reply::Gated {
            events: vec![
                chunk(json!({"role": "assistant", "content": "a "}), Value::Null),
                chunk(json!({"content": "b"}), json!("stop")),
            ],
            before: 1,
            gate: gate.clone(),
        });
        let mut res = app.chat(&app.admin_key, &ask_stream("gpt-test", "x")).await;
        let first = res.chunk().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).contains("a "));
        streams.push(res);
    }
    assert_eq!(sample(&app, "gateway_inflight_requests").await, 2.0);
    for gate in &gates {
        gate.notify_one();
    }
    for res in streams {
        assert!(res.text().await.unwrap().contains("[DONE]"));
    }
    assert_eq!(sample(&app, "gateway_inflight_requests").await, 0.0);
}

// 15. SIGTERM with a stream still open when the grace period ends: the client gets an
// error event and `[DONE]`, the process exits 0.
#[actix_web::test]
async fn shutdown_ends_open_streams_well_formed() {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let Gateway {
        mut child, address, ..
    } = spawn_binary(
        &dir,
        &[
            ("LOWART_ADMIN_KEY", admin_key.as_str()),
            ("LOWART_SERVER__SHUTDOWN_GRACE_MS", "1000"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{address}/admin/models"))
        .bearer_auth(&admin_key)
        .json(&json!({"model_id": "gpt-test", "vendor_type": "OpenAI",
            "base_url": format!("{}/v1", upstream.address)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    upstream.push(Reply::Gated {
        events: vec![
            chunk(json!({"role": "assistant", "content": "Hi "}), Value::Null),
            chunk(json!({"content": "never"}), Value::Null),
        ],
        before: 1,
        gate: Arc::new(tokio::sync::Notify::new()),
    });
    let mut res = client
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(&admin_key)
        .json(&ask_stream("gpt-test", "x"))
        .send()
        .await
        .unwrap();
    let first = res.chunk().await.unwrap().unwrap();
    let mut body = String::from_utf8_lossy(&first).to_string();
    assert!(body.contains("Hi "));

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let rest = tokio::time::timeout(Duration::from_secs(30), res.text())
        .await
        .expect("the stream ends")
        .expect("the stream ends well-formed, not cut");
    body.push_str(&rest);
    assert_eq!(error_then_done(&body)["code"], "shutting_down");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit 0 after SIGTERM");
}

// 16. Usage batches of ever new sizes are written as INSERTs of a few fixed sizes (the
// bound on what the driver keeps prepared is the unit test `batches_are_written_with_a_
// handful_of_statement_shapes`; `lowart-bench -- soak` shows the memory). Through the real
// server: batches of many sizes, some split into several INSERTs in one transaction, each
// land whole and once.
#[actix_web::test]
async fn usage_batches_of_any_size_land_whole_and_once() {
    let app = spawn_app_with(|s| {
        s.database.usage_batch_size = 300;
        s.database.usage_flush_ms = 3_600_000;
    })
    .await;
    let ask = json!({"model": "mock", "messages": user_message("hi")});
    let mut sent = 0;
    for burst in [1usize, 2, 3, 7, 129, 255, 257, 300, 301] {
        let statuses: Vec<u16> = futures_util::future::join_all(
            (0..burst).map(|_| async { app.chat(&app.admin_key, &ask).await.status().as_u16() }),
        )
        .await;
        assert!(statuses.iter().all(|s| *s == 200));
        sent += burst;
        // The flush makes a batch of this burst (a burst of 300 or more fills one on its own).
        let rows = app.usage_rows().await;
        assert_eq!(rows.len(), sent, "after a burst of {burst}");
    }
    let rows = app.usage_rows().await;
    let mut ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), sent, "each row once");
}
