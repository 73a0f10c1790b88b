//! Breakers, fallbacks, retries, load balancing and caps, against a mock upstream told to
//! fail.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_openai_error, spawn_app, spawn_app_with, user_message};
use crate::mock_upstream::{Reply, chunk};

fn ask(model: &str) -> Value {
    json!({"model": model, "messages": user_message("hi")})
}

async fn breakers(app: &TestApp) -> Vec<Value> {
    let body: Value = app
        .get("/admin/breakers", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    body["data"].as_array().unwrap().clone()
}

fn dead_base_url() -> String {
    format!("{}/v1", crate::helpers::closed_port_url())
}

async fn add_model(app: &TestApp, body: Value) -> String {
    let res = app.post_json("/admin/models", &app.admin_key, &body).await;
    assert_eq!(res.status(), 201, "{body}");
    res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[actix_web::test]
async fn the_breaker_opens_stops_traffic_and_a_probe_after_the_cool_down_closes_it() {
    let app = spawn_app_with(|s| s.routing.max_attempts = 1).await;
    let breaker = json!({"window_size": 10, "minimum_calls": 3, "failure_rate_threshold": 0.5,
        "open_ms": 300, "half_open_probes": 1});
    let dep = app
        .add_openai_model("flaky", json!({"breaker": breaker}))
        .await;
    let id = dep["id"].as_str().unwrap();
    for _ in 0..3 {
        app.upstream
            .push(Reply::Status(500, json!({"error": {"message": "down"}})));
    }
    for _ in 0..3 {
        assert_eq!(app.chat(&app.admin_key, &ask("flaky")).await.status(), 502);
    }

    let view = breakers(&app)
        .await
        .into_iter()
        .find(|b| b["deployment_id"] == id)
        .unwrap();
    assert_eq!(view["state"], "open");
    assert_eq!(view["window_failures"], 3);
    assert!(view["opened_at"].is_i64());
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(&format!("gateway_breaker_state{{deployment=\"{id}\"}} 1")));

    let error = assert_openai_error(app.chat(&app.admin_key, &ask("flaky")).await, 503).await;
    assert_eq!(error["code"], "no_healthy_deployment");
    assert_eq!(
        app.upstream.received().len(),
        3,
        "nothing reached the deployment while open"
    );

    // The cool-down is the behaviour under test: wait it out.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        app.chat(&app.admin_key, &ask("flaky")).await.status(),
        200,
        "the probe"
    );
    assert_eq!(app.upstream.received().len(), 4);
    let view = breakers(&app)
        .await
        .into_iter()
        .find(|b| b["deployment_id"] == id)
        .unwrap();
    assert_eq!(view["state"], "closed");
}

#[actix_web::test]
async fn operators_can_hold_a_breaker_open_and_release_it() {
    let app = spawn_app().await;
    let dep = app.add_openai_model("gpt-test", json!({})).await;
    let id = dep["id"].as_str().unwrap();
    let hold = |state: &'static str| {
        app.client
            .put(app.url(&format!("/admin/breakers/{id}")))
            .bearer_auth(&app.admin_key)
            .json(&json!({"state": state}))
            .send()
    };
    let res = hold("open").await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["forced"], true);
    assert_eq!(
        app.chat(&app.admin_key, &ask("gpt-test")).await.status(),
        503
    );
    hold("closed").await.unwrap();
    assert_eq!(
        app.chat(&app.admin_key, &ask("gpt-test")).await.status(),
        200
    );
    hold("auto").await.unwrap();
    let audit: Value = app
        .get("/admin/audit", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    let overrides = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "breaker.override")
        .count();
    assert_eq!(overrides, 3);
}

#[actix_web::test]
async fn a_fallback_serves_every_request_through_a_total_outage_of_the_primary() {
    let app = spawn_app().await;
    add_model(
        &app,
        json!({"model_id": "primary", "vendor_type": "OpenAI", "base_url": dead_base_url(),
        "breaker": {"minimum_calls": 2, "window_size": 4, "open_ms": 60000}}),
    )
    .await;
    app.add_openai_model("backup", json!({})).await;
    assert_eq!(
        app.set_fallbacks("primary", &["backup"]).await.status(),
        200
    );

    for _ in 0..10 {
        let res = app.chat(&app.admin_key, &ask("primary")).await;
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["x-lowart-model"], "backup");
    }
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 10, "one usage row per request");
    assert!(rows.iter().all(|r| r.status == 200 && r.model == "primary"));
    assert_eq!(rows[0].attempts, 2, "primary failed, backup answered");
    assert_eq!(
        rows[9].attempts, 1,
        "the open breaker skips the primary without an attempt"
    );
}

#[actix_web::test]
async fn a_three_level_chain_with_the_first_two_down_is_served_by_the_third() {
    let app = spawn_app().await;
    for model in ["first", "second"] {
        add_model(
            &app,
            json!({"model_id": model, "vendor_type": "OpenAI", "base_url": dead_base_url()}),
        )
        .await;
    }
    app.add_openai_model("third", json!({})).await;
    assert_eq!(app.set_fallbacks("first", &["second"]).await.status(), 200);
    assert_eq!(app.set_fallbacks("second", &["third"]).await.status(), 200);

    let res = app.chat(&app.admin_key, &ask("first")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-lowart-model"], "third");
    assert_eq!(res.headers()["x-lowart-attempts"], "3");
}

#[actix_web::test]
async fn fallback_cycles_are_refused() {
    let app = spawn_app().await;
    assert_eq!(app.set_fallbacks("a", &["b"]).await.status(), 200);
    assert_eq!(app.set_fallbacks("b", &["c"]).await.status(), 200);
    let error = assert_openai_error(app.set_fallbacks("c", &["a"]).await, 400).await;
    assert_eq!(error["param"], "fallbacks");
    assert!(error["message"].as_str().unwrap().contains("cycle"));
    assert_openai_error(app.set_fallbacks("a", &["a"]).await, 400).await;
}

#[actix_web::test]
async fn a_two_to_one_weighted_pair_splits_traffic_two_to_one() {
    let app = spawn_app().await;
    let heavy = add_model(
        &app,
        json!({"model_id": "pair", "vendor_type": "Mock", "weight": 2}),
    )
    .await;
    add_model(
        &app,
        json!({"model_id": "pair", "vendor_type": "Mock", "weight": 1}),
    )
    .await;

    let counts: HashMap<String, usize> = futures_util::stream::iter(0..3000)
        .map(|_| async {
            let res = app.chat(&app.admin_key, &ask("pair")).await;
            assert_eq!(res.status(), 200);
            res.headers()["x-lowart-deployment"]
                .to_str()
                .unwrap()
                .to_string()
        })
        .buffer_unordered(16)
        .fold(HashMap::new(), |mut counts, id| async move {
            *counts.entry(id).or_insert(0) += 1;
            counts
        })
        .await;
    let share = counts[&heavy] as f64 / 3000.0;
    assert!(
        (share - 2.0 / 3.0).abs() <= 0.05 * 2.0 / 3.0,
        "heavy share {share}"
    );
}

#[actix_web::test]
async fn retries_honour_retry_after_and_the_deadline() {
    let app = spawn_app_with(|s| s.routing.max_attempts = 2).await;
    app.add_openai_model("limited", json!({})).await;
    app.upstream.push(Reply::RateLimited(1));
    let started = Instant::now();
    let res = app.chat(&app.admin_key, &ask("limited")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-lowart-attempts"], "2");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited for Retry-After"
    );

    let app = spawn_app_with(|s| {
        s.routing.max_attempts = 5;
        s.routing.deadline_ms = 300;
    })
    .await;
    app.add_openai_model("slow", json!({"request_timeout_ms": 5000}))
        .await;
    for _ in 0..5 {
        app.upstream.push(Reply::Delay(Duration::from_secs(10)));
    }
    let started = Instant::now();
    let error = assert_openai_error(app.chat(&app.admin_key, &ask("slow")).await, 504).await;
    assert_eq!(error["code"], "upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the deadline bounds the retries"
    );
}

#[actix_web::test]
async fn a_client_disconnect_mid_stream_closes_the_upstream_stream() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-test", json!({})).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    app.upstream.push(Reply::Gated {
        events: vec![
            chunk(
                json!({"role": "assistant", "content": "first "}),
                Value::Null,
            ),
            chunk(json!({"content": "never"}), Value::Null),
        ],
        before: 1,
        gate,
    });
    let dropped = app.upstream.stream_dropped();
    let client = reqwest::Client::new();
    let mut res = client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"model": "gpt-test", "stream": true, "messages": user_message("hi")}))
        .send()
        .await
        .unwrap();
    let first = res.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("first"));
    drop(res);
    drop(client);

    tokio::time::timeout(Duration::from_secs(10), dropped.notified())
        .await
        .expect("the upstream stream was closed");
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, 499);
    assert_eq!(rows[0].usage_source, "partial");
}

#[actix_web::test]
async fn the_global_concurrency_cap_answers_503_and_frees_its_slot_when_a_stream_ends() {
    let app = spawn_app_with(|s| s.server.max_concurrency = 1).await;
    app.add_openai_model("gpt-test", json!({})).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    app.upstream.push(Reply::Gated {
        events: vec![chunk(json!({"content": "a"}), Value::Null)],
        before: 1,
        gate: gate.clone(),
    });
    let streaming = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-test", "stream": true, "messages": user_message("x")}),
        )
        .await;
    assert_eq!(streaming.status(), 200);

    let error = assert_openai_error(app.chat(&app.admin_key, &ask("gpt-test")).await, 503).await;
    assert_eq!(error["code"], "downstream_concurrency_exceeded");
    assert_eq!(
        app.client
            .get(app.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "health is exempt"
    );

    gate.notify_one();
    streaming.text().await.unwrap();
    assert_eq!(
        app.chat(&app.admin_key, &ask("gpt-test")).await.status(),
        200
    );
}

#[actix_web::test]
async fn chaos_a_flapping_primary_with_a_healthy_fallback_shows_no_5xx_and_one_row_per_request() {
    let app = spawn_app().await;
    app.add_openai_model(
        "primary",
        json!({"breaker": {"minimum_calls": 5, "window_size": 10, "open_ms": 50}}),
    )
    .await;
    add_model(&app, json!({"model_id": "backup", "vendor_type": "Mock"})).await;
    assert_eq!(
        app.set_fallbacks("primary", &["backup"]).await.status(),
        200
    );
    app.upstream.flap(40);

    let statuses: Vec<u16> = futures_util::stream::iter(0..3000)
        .map(|_| async {
            let res = app.chat(&app.admin_key, &ask("primary")).await;
            let status = res.status().as_u16();
            res.bytes().await.unwrap();
            status
        })
        .buffer_unordered(32)
        .collect()
        .await;

    let errors = statuses.iter().filter(|s| **s >= 500).count();
    assert_eq!(errors, 0, "client-visible 5xx");
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 3000);
    let mut ids: Vec<&str> = rows.iter().map(|r| r.request_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3000, "exactly one row per request");
    // The first 40 answers are healthy, and the breaker (minimum 5 calls, half of the
    // last 10 failing) cannot open before 5 failures: the primary saw both, whatever the
    // timing. How many probes it took after that depends on the machine's speed.
    assert!(
        app.upstream.received().len() >= 45,
        "the primary took real traffic, failures included"
    );
}

#[actix_web::test]
async fn a_stream_that_stalls_after_its_first_event_ends_with_a_timeout_error_and_done() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-test", json!({"idle_timeout_ms": 200}))
        .await;
    app.upstream.push(Reply::Gated {
        events: vec![
            chunk(
                json!({"role": "assistant", "content": "first "}),
                Value::Null,
            ),
            chunk(json!({"content": "never"}), Value::Null),
        ],
        before: 1,
        gate: Arc::new(tokio::sync::Notify::new()),
    });
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-test", "stream": true, "messages": user_message("hi")}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let data = crate::helpers::sse_data(&res.text().await.unwrap());
    assert_eq!(data.len(), 3, "{data:?}");
    assert!(data[0].contains("first"));
    let error: Value = serde_json::from_str(&data[1]).unwrap();
    assert_eq!(error["error"]["code"], "upstream_timeout");
    assert_eq!(data[2], "[DONE]");
    let rows = app.usage_rows().await;
    assert_eq!(
        (rows[0].status, rows[0].error_class.as_deref()),
        (504, Some("timeout"))
    );
}
