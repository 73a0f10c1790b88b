//! `/metrics` after known traffic has exactly the counts of that traffic; every response
//! carries `x-lowart-overhead-ms`, which excludes time spent waiting on the upstream.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{TestApp, spawn_app, spawn_app_with, user_message};
use crate::mock_upstream::Reply;

/// Samples by `name{label="value",…}` with labels sorted, so the encoder's order does not
/// matter.
fn scrape_text(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let key = match series.split_once('{') {
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
            None => series.to_string(),
        };
        samples.insert(key, value.parse().unwrap_or(f64::NAN));
    }
    samples
}

async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let res = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    scrape_text(&res.text().await.unwrap())
}

fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("no sample {key}"))
}

#[actix_web::test]
async fn metrics_count_exactly_the_traffic_that_happened() {
    let app = spawn_app_with(|s| s.routing.max_attempts = 1).await;
    app.add_openai_model(
        "gpt-test",
        json!({"price_input_per_mtok": 2.0, "price_output_per_mtok": 8.0}),
    )
    .await;
    let ask = |stream: bool, include_usage: bool| {
        json!({"model": "gpt-test", "stream": stream, "stream_options": {"include_usage": include_usage},
            "messages": user_message("hi")})
    };
    for body in [
        ask(false, false),
        ask(false, false),
        ask(true, false),
        ask(true, true),
    ] {
        let res = app.chat(&app.admin_key, &body).await;
        assert_eq!(res.status(), 200);
        res.text().await.unwrap();
    }
    app.upstream
        .push(Reply::Status(500, json!({"error": {"message": "boom"}})));
    assert_eq!(
        app.chat(&app.admin_key, &ask(false, false)).await.status(),
        502
    );
    assert_eq!(
        app.chat(
            &app.admin_key,
            &json!({"model": "nope", "messages": user_message("x")})
        )
        .await
        .status(),
        404
    );
    assert_eq!(
        app.get("/v1/no-such-route", &app.admin_key).await.status(),
        404
    );

    let m = scrape(&app).await;

    let http = |route: &str, method: &str, status: u16| {
        value(
            &m,
            &format!(
                "http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(http("/v1/chat/completions", "POST", 200), 4.0);
    assert_eq!(http("/v1/chat/completions", "POST", 502), 1.0);
    assert_eq!(http("/v1/chat/completions", "POST", 404), 1.0);
    assert_eq!(http("/admin/models", "POST", 201), 1.0);
    assert_eq!(http("unmatched", "GET", 404), 1.0);
    assert_eq!(
        value(
            &m,
            "http_request_duration_seconds_count{method=\"POST\",route=\"/v1/chat/completions\"}"
        ),
        6.0
    );
    assert_eq!(
        value(
            &m,
            "gateway_tokens_total{model=\"gpt-test\",type=\"prompt\"}"
        ),
        44.0
    );
    assert_eq!(
        value(
            &m,
            "gateway_tokens_total{model=\"gpt-test\",type=\"completion\"}"
        ),
        20.0
    );
    let cost = value(&m, "gateway_cost_total{model=\"gpt-test\"}");
    assert_eq!(cost, 4.0 * (11.0 * 2.0 + 5.0 * 8.0) / 1e6, "{cost}");
    assert_eq!(
        value(&m, "gateway_usage_records_total{source=\"reported\"}"),
        4.0
    );
    assert_eq!(
        value(&m, "gateway_usage_records_total{source=\"missing\"}"),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "gateway_request_failures_total{class=\"upstream_5xx\",model=\"gpt-test\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "gateway_time_to_first_token_seconds_count{model=\"gpt-test\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            "gateway_upstream_duration_seconds_count{model=\"gpt-test\"}"
        ),
        5.0
    );
    assert_eq!(value(&m, "gateway_overhead_seconds_count"), 5.0);
    assert_eq!(
        value(&m, "gateway_inflight_requests"),
        0.0,
        "nothing in flight; the scrape itself is not counted"
    );
    assert!(
        !m.keys()
            .any(|k| k.contains("admin\"") || k.contains("user_id")),
        "no user ids in labels"
    );

    let again = scrape(&app).await;
    assert_eq!(
        value(
            &again,
            "http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}"
        ),
        1.0
    );
}

#[actix_web::test]
async fn unpriced_deployments_are_counted() {
    let app = spawn_app().await;
    app.chat(
        &app.admin_key,
        &json!({"model": "mock", "messages": user_message("a b c")}),
    )
    .await;
    let m = scrape(&app).await;
    assert_eq!(
        value(&m, "gateway_unpriced_requests_total{model=\"mock\"}"),
        1.0
    );
    assert_eq!(
        value(
            &m,
            "gateway_tokens_total{model=\"mock\",type=\"completion\"}"
        ),
        3.0
    );
}

#[actix_web::test]
async fn the_metrics_token_guards_metrics_and_metrics_can_be_off() {
    let app = spawn_app_with(|s| {
        s.telemetry.metrics_token = Some(lowart::config::Secret::new("scrape-me"))
    })
    .await;
    assert_eq!(
        app.client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        app.get("/metrics", &app.admin_key).await.status(),
        401,
        "API keys do not open metrics"
    );
    assert_eq!(app.get("/metrics", "scrape-me").await.status(), 200);

    let off = spawn_app_with(|s| s.telemetry.metrics = false).await;
    assert_eq!(
        off.client
            .get(off.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[actix_web::test]
async fn every_response_has_request_id_and_overhead_without_upstream_time() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-slow", json!({})).await;
    app.upstream.push(Reply::Delay(Duration::from_millis(400)));

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-slow", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let overhead: f64 = res.headers()["x-lowart-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (0.0..400.0).contains(&overhead),
        "upstream wait is excluded: {overhead}"
    );

    let inbound = app
        .client
        .get(app.url("/healthz"))
        .header("x-request-id", "req-from-client-42")
        .send()
        .await
        .unwrap();
    assert_eq!(inbound.headers()["x-request-id"], "req-from-client-42");
    assert!(inbound.headers().contains_key("x-lowart-overhead-ms"));
    for res in [
        app.get("/nope", &app.admin_key).await,
        app.get("/admin/users", "bad-key").await,
    ] {
        assert!(res.headers().contains_key("x-request-id"));
        assert!(res.headers().contains_key("x-lowart-overhead-ms"));
    }
}
