//! `/metrics/summary`: requests per route and per key after known traffic, the metrics
//! token, 404 when metrics are off, and current and peak in-flight with held streams.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_openai_error, spawn_app, spawn_app_with, user_message};
use crate::mock_upstream::{Reply, chunk};

async fn summary(app: &TestApp) -> Value {
    let res = app
        .client
        .get(app.url("/metrics/summary"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

fn route<'a>(summary: &'a Value, route: &str) -> &'a Value {
    summary["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == route)
        .unwrap_or_else(|| panic!("no route {route} in {summary}"))
}

#[actix_web::test]
async fn requests_are_counted_per_route_and_per_key_without_the_key() {
    let app = spawn_app().await;
    let alice = app.user_key("alice", "user", None).await;
    let ask = json!({"model": "mock", "messages": user_message("hi")});
    for key in [
        &app.admin_key,
        &app.admin_key,
        &app.admin_key,
        &alice,
        &alice,
    ] {
        let res = app.chat(key, &ask).await;
        assert_eq!(res.status(), 200);
    }
    let res = app.get("/v1/models", &alice).await;
    assert_eq!(res.status(), 200);
    // Unauthenticated: counted under its route, under no key.
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&ask)
        .send()
        .await
        .unwrap();
    assert_openai_error(res, 401).await;
    let res = app.get("/no/such/path", &alice).await;
    assert_openai_error(res, 404).await;

    let report = summary(&app).await;
    let chat = route(&report, "/v1/chat/completions");
    assert_eq!(chat["requests_1h"], 6, "{report}");
    assert_eq!(chat["requests_24h"], 6, "{report}");
    assert_eq!(route(&report, "/v1/models")["requests_1h"], 1);
    assert_eq!(route(&report, "unmatched")["requests_1h"], 1);
    // user_key: one user and one key created by the admin.
    assert_eq!(route(&report, "/admin/users")["requests_1h"], 1);
    // Scrapes and the summary itself are not counted.
    assert!(
        report["routes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| !r["route"].as_str().unwrap().starts_with("/metrics")),
        "{report}"
    );

    let keys = report["keys"].as_array().unwrap();
    let alice_row = keys.iter().find(|k| k["user_id"] == "alice").unwrap();
    // Two completions and the model list; the 404 went through no extractor.
    assert_eq!(alice_row["requests_1h"], 3, "{report}");
    assert_eq!(alice_row["requests_24h"], 3, "{report}");
    assert!(
        alice_row["key_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let admin_row = keys.iter().find(|k| k["user_id"] != "alice").unwrap();
    // Three completions, plus creating alice and her key.
    assert_eq!(admin_row["requests_1h"], 5, "{report}");
    assert_eq!(keys.len(), 2, "{report}");
    let total: u64 = report["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["requests_1h"].as_u64().unwrap())
        .sum();
    assert_eq!(report["requests_1h"], total);
    // Keys are labelled by id, never by the key itself.
    let text = report.to_string();
    assert!(!text.contains(&alice) && !text.contains(&app.admin_key));
}

#[actix_web::test]
async fn the_metrics_token_guards_the_summary_and_metrics_off_hides_it() {
    let app = spawn_app_with(|s| {
        s.telemetry.metrics_token = Some(lowart::config::Secret::new("scrape-token-0123"))
    })
    .await;
    let res = app
        .client
        .get(app.url("/metrics/summary"))
        .send()
        .await
        .unwrap();
    assert_openai_error(res, 401).await;
    // Instead of the token: a key of role admin, operator or viewer (the console), not a
    // user's, not an unknown one.
    let res = app.get("/metrics/summary", &app.admin_key).await;
    assert_eq!(res.status(), 200);
    let viewer = app.user_key("watcher", "viewer", None).await;
    assert_eq!(app.get("/metrics/summary", &viewer).await.status(), 200);
    let user = app.user_key("someone", "user", None).await;
    let error = assert_openai_error(app.get("/metrics/summary", &user).await, 403).await;
    assert_eq!(error["code"], "admin_forbidden");
    let res = app.get("/metrics/summary", "lw-not-a-key").await;
    assert_openai_error(res, 401).await;
    // `/metrics` itself still takes the token only.
    assert_openai_error(app.get("/metrics", &app.admin_key).await, 401).await;
    let res = app.get("/metrics/summary", "scrape-token-0123").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert!(body["routes"].is_array() && body["inflight"]["current"].is_number());

    let off = spawn_app_with(|s| s.telemetry.metrics = false).await;
    let res = off
        .chat(
            &off.admin_key,
            &json!({"model": "mock", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = off
        .client
        .get(off.url("/metrics/summary"))
        .send()
        .await
        .unwrap();
    let error = assert_openai_error(res, 404).await;
    assert_eq!(error["code"], "route_not_found");
}

#[actix_web::test]
async fn held_streams_show_as_current_and_peak_in_flight() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-test", json!({})).await;
    let before = summary(&app).await;
    assert_eq!(before["inflight"]["current"], 0, "{before}");

    let gates: Vec<Arc<tokio::sync::Notify>> = (0..2)
        .map(|_| Arc::new(tokio::sync::Notify::new()))
        .collect();
    for gate in &gates {
        app.upstream.push(Reply::Gated {
            events: vec![
                chunk(
                    json!({"role": "assistant", "content": "held "}),
                    Value::Null,
                ),
                chunk(json!({}), json!("stop")),
            ],
            before: 1,
            gate: gate.clone(),
        });
    }
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut res = app
            .chat(
                &app.admin_key,
                &json!({"model": "gpt-test", "stream": true, "messages": user_message("hold")}),
            )
            .await;
        assert_eq!(res.status(), 200);
        let mut received = String::new();
        while !received.contains("held ") {
            let chunk = res.chunk().await.unwrap().expect("the stream is open");
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
        streams.push(res);
    }

    let during = summary(&app).await;
    assert_eq!(during["inflight"]["current"], 2, "{during}");
    assert_eq!(during["inflight"]["peak_1h"], 2, "{during}");
    assert_eq!(during["inflight"]["peak_24h"], 2, "{during}");

    for gate in &gates {
        gate.notify_one();
    }
    for mut res in streams {
        while res.chunk().await.unwrap().is_some() {}
    }
    // The count is given back as each body ends: poll until it is.
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let report = summary(&app).await;
        if report["inflight"]["current"] == 0 {
            break report;
        }
        assert!(Instant::now() < deadline, "still in flight: {report}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(after["inflight"]["peak_1h"], 2, "{after}");
    assert_eq!(
        route(&after, "/v1/chat/completions")["requests_1h"],
        2,
        "{after}"
    );
}
