//! Exact money and the usage API: cost is tokens × price to the micro-dollar, unpriced
//! deployments are marked and counted, `/admin/usage` lists rows newest first with
//! filters and a cursor, `/admin/usage/summary` (read from the hourly rollups) agrees
//! exactly with the rows for every grouping, a key holder reads its own usage at
//! `/v1/usage` and nobody else's, and the metrics read the same figures as the rows.

use std::collections::BTreeMap;

use lowart::actors::store::{GetUserSpend, ReplayUsageSpill};
use lowart::domain::usage::{CostStatus, TokenUsage, UsageRecord, UsageSource};
use lowart::entities::usage;
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_openai_error, drop_test_database, fresh_database_url, metric_sample, spawn_app,
    spawn_app_with, usage_spill_file, user_message,
};
use crate::mock_upstream::Reply;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

fn priced() -> Value {
    json!({"price_input_per_mtok": 2.5, "price_output_per_mtok": 10.0})
}

fn text(prompt_tokens: i64, completion_tokens: i64) -> Reply {
    Reply::Text {
        content: "an answer".into(),
        prompt_tokens,
        completion_tokens,
    }
}

async fn chat_as(app: &TestApp, key: &str, model: &str) -> u16 {
    let res = app
        .chat(
            key,
            &json!({"model": model, "messages": user_message("hi")}),
        )
        .await;
    let status = res.status().as_u16();
    res.text().await.unwrap();
    status
}

/// A new key for `user_id` (created if absent, with `role`): its secret and its id.
async fn new_key(app: &TestApp, user_id: &str, role: &str) -> (String, String) {
    app.post_json(
        "/admin/users",
        &app.admin_key,
        &json!({"user_id": user_id, "role": role}),
    )
    .await;
    let res = app
        .post_json("/admin/keys", &app.admin_key, &json!({"user_id": user_id}))
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    (
        body["key"].as_str().unwrap().to_string(),
        body["id"].as_str().unwrap().to_string(),
    )
}

async fn get_json(app: &TestApp, path: &str, key: &str) -> Value {
    let res = app.get(path, key).await;
    assert_eq!(res.status(), 200, "GET {path}");
    res.json().await.unwrap()
}

/// Traffic from two users (three keys) on two priced models, with token counts that
/// differ per request, and one upstream failure (on a `spawn_one_attempt` gateway).
async fn mixed_traffic(app: &TestApp) -> BTreeMap<&'static str, (String, String)> {
    app.add_openai_model("gpt-a", priced()).await;
    app.add_openai_model(
        "gpt-b",
        json!({"price_input_per_mtok": 0.15, "price_output_per_mtok": 0.6}),
    )
    .await;
    let keys = BTreeMap::from([
        ("alice-1", new_key(app, "alice", "user").await),
        ("alice-2", new_key(app, "alice", "user").await),
        ("bob", new_key(app, "bob", "user").await),
    ]);
    let plan: [(&str, &str, Reply); 7] = [
        ("alice-1", "gpt-a", text(1_234, 567)),
        ("alice-1", "gpt-b", text(333, 77)),
        ("alice-2", "gpt-a", text(10, 1)),
        ("bob", "gpt-a", text(7, 3)),
        (
            "bob",
            "gpt-a",
            Reply::Status(500, json!({"error": {"message": "boom"}})),
        ),
        ("bob", "gpt-b", text(1_000, 1_000)),
        ("alice-1", "gpt-a", text(42, 42)),
    ];
    for (key, model, reply) in plan {
        let failing = matches!(reply, Reply::Status(..));
        app.upstream.push(reply);
        let status = chat_as(app, &keys[key].0, model).await;
        assert_eq!(status, if failing { 502 } else { 200 });
    }
    keys
}

/// A gateway that tries each request once, so one scripted failure is one failed row.
async fn spawn_one_attempt() -> TestApp {
    spawn_app_with(|s| s.routing.max_attempts = 1).await
}

#[actix_web::test]
async fn cost_is_tokens_times_price_to_the_micro_dollar() {
    let app = spawn_app().await;
    let dep = app.add_openai_model("gpt-a", priced()).await;
    app.upstream.push(text(1_234, 567));
    assert_eq!(chat_as(&app, &app.admin_key, "gpt-a").await, 200);

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    // 1,234 × $2.50/Mtok + 567 × $10/Mtok = 3,085 + 5,670 µ$.
    assert_eq!(rows[0].cost_micros, Some(8_755));
    assert_eq!(rows[0].cost_status, "priced");
    let page = get_json(&app, "/admin/usage", &app.admin_key).await;
    let row = &page["data"][0];
    assert_eq!(row["cost_micros"], 8_755);
    assert_eq!(row["cost_usd"], 0.008755);
    assert_eq!(row["cost_status"], "priced");
    assert_eq!(row["usage_source"], "reported");
    assert_eq!(row["deployment_id"], dep["id"]);
    assert_eq!(
        (
            row["prompt_tokens"].clone(),
            row["completion_tokens"].clone()
        ),
        (json!(1_234), json!(567))
    );
    assert_eq!(page["next"], Value::Null);
}

#[actix_web::test]
async fn unpriced_rows_are_marked_and_counted() {
    let app = spawn_app().await;
    app.add_openai_model("free", json!({})).await;
    for _ in 0..2 {
        assert_eq!(chat_as(&app, &app.admin_key, "free").await, 200);
    }

    let rows = app.usage_rows().await;
    assert!(
        rows.iter()
            .all(|r| r.cost_status == "unpriced" && r.cost_micros.is_none())
    );
    let page = get_json(&app, "/admin/usage?model=free", &app.admin_key).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 2);
    assert_eq!(page["data"][0]["cost_usd"], Value::Null);
    assert_eq!(page["data"][0]["cost_status"], "unpriced");
    let unpriced = metric_sample(
        &app.client,
        &app.address,
        "gateway_unpriced_requests_total{model=\"free\"}",
    )
    .await;
    assert_eq!(unpriced, 2.0);
    let summary = get_json(&app, "/admin/usage/summary?group_by=model", &app.admin_key).await;
    assert_eq!(summary["data"][0]["group"], "free");
    assert_eq!(summary["data"][0]["requests"], 2);
    assert_eq!(summary["data"][0]["cost_micros"], 0);
}

/// Every row `/admin/usage?<query>` lists, following `next` with pages of `limit`.
async fn all_pages(app: &TestApp, query: &str, limit: usize) -> Vec<Value> {
    let mut rows = Vec::new();
    let mut path = format!("/admin/usage?limit={limit}{query}");
    loop {
        let page = get_json(app, &path, &app.admin_key).await;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= limit);
        rows.extend(data.iter().cloned());
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(data.len(), limit, "a page before the last is full");
                path = format!("/admin/usage?limit={limit}{query}&before={next}");
            }
            None => break,
        }
    }
    rows
}

fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter().map(|r| r["id"].as_i64().unwrap()).collect()
}

/// The ids of `rows` that `keep` keeps, newest first.
fn newest_first(rows: &[usage::Model], keep: impl Fn(&usage::Model) -> bool) -> Vec<i64> {
    let mut kept: Vec<&usage::Model> = rows.iter().filter(|r| keep(r)).collect();
    kept.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.id)));
    kept.iter().map(|r| r.id).collect()
}

#[actix_web::test]
async fn usage_rows_are_filtered_and_paged_newest_first() {
    let app = spawn_one_attempt().await;
    let keys = mixed_traffic(&app).await;
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 7);

    for limit in [1, 2, 3, 100] {
        assert_eq!(
            ids(&all_pages(&app, "", limit).await),
            newest_first(&rows, |_| true)
        );
    }
    let alice_2 = &keys["alice-2"].1;
    let cases: Vec<(String, Vec<i64>)> = vec![
        (
            "&user_id=alice".into(),
            newest_first(&rows, |r| r.user_id.as_deref() == Some("alice")),
        ),
        (
            format!("&key_id={alice_2}"),
            newest_first(&rows, |r| r.key_id.as_deref() == Some(alice_2.as_str())),
        ),
        (
            "&model=gpt-b".into(),
            newest_first(&rows, |r| r.model == "gpt-b"),
        ),
        (
            "&status=error".into(),
            newest_first(&rows, |r| r.status >= 400),
        ),
        (
            "&status=502".into(),
            newest_first(&rows, |r| r.status == 502),
        ),
        ("&status=ok".into(), newest_first(&rows, |r| r.status < 400)),
        (
            "&user_id=bob&model=gpt-a".into(),
            newest_first(&rows, |r| {
                r.user_id.as_deref() == Some("bob") && r.model == "gpt-a"
            }),
        ),
    ];
    for (query, expected) in cases {
        assert!(!expected.is_empty(), "{query} selects something");
        assert_eq!(ids(&all_pages(&app, &query, 2).await), expected, "{query}");
    }
    // since is inclusive and until exclusive, in milliseconds or RFC 3339.
    let mut times: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
    times.sort_unstable();
    let (since, until) = (times[2], times[5]);
    let expected = newest_first(&rows, |r| r.created_at >= since && r.created_at < until);
    assert_eq!(
        ids(&all_pages(&app, &format!("&since={since}&until={until}"), 2).await),
        expected
    );
    let rfc3339 = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    assert_eq!(
        ids(&all_pages(
            &app,
            &format!("&since={}&until={}", rfc3339(since), rfc3339(until)),
            2
        )
        .await),
        expected
    );
    let failed = &all_pages(&app, "&status=error", 10).await[0];
    assert_eq!(failed["error_class"], "upstream_5xx");
    assert_eq!(failed["cost_status"], "unknown");
}

#[actix_web::test]
async fn bad_usage_parameters_are_400_naming_the_parameter() {
    let app = spawn_app().await;
    for (path, param) in [
        ("/admin/usage?limit=0", "limit"),
        ("/admin/usage?limit=1001", "limit"),
        ("/admin/usage?limit=ten", "limit"),
        ("/admin/usage?status=fine", "status"),
        ("/admin/usage?status=42", "status"),
        ("/admin/usage?since=yesterday", "since"),
        ("/admin/usage?since=2000&until=1000", "until"),
        ("/admin/usage?before=12", "before"),
        ("/admin/usage?user_id=", "user_id"),
        ("/admin/usage?colour=red", "colour"),
        ("/admin/usage/summary", "group_by"),
        ("/admin/usage/summary?group_by=week", "group_by"),
        ("/admin/usage/summary?group_by=day&until=now", "until"),
    ] {
        let error = assert_openai_error(app.get(path, &app.admin_key).await, 400).await;
        assert_eq!(error["type"], "invalid_request_error", "{path}");
        assert_eq!(error["param"], param, "{path}");
    }
}

#[derive(Debug, Default, PartialEq)]
struct Totals {
    requests: i64,
    errors: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    total_tokens: i64,
    cost_micros: i64,
}

fn totals_of<'a>(rows: impl Iterator<Item = &'a usage::Model>) -> Totals {
    let mut t = Totals::default();
    for r in rows {
        t.requests += 1;
        t.errors += i64::from(r.status >= 400);
        t.prompt_tokens += r.prompt_tokens.unwrap_or(0);
        t.completion_tokens += r.completion_tokens.unwrap_or(0);
        t.total_tokens += r.total_tokens.unwrap_or(0);
        t.cost_micros += r.cost_micros.unwrap_or(0);
    }
    t
}

fn totals_in(answer: &Value) -> Totals {
    let n = |f: &str| {
        answer[f]
            .as_i64()
            .unwrap_or_else(|| panic!("{f} in {answer}"))
    };
    let cost_usd = answer["cost_usd"].as_f64().unwrap();
    assert_eq!(cost_usd, n("cost_micros") as f64 / 1e6, "{answer}");
    Totals {
        requests: n("requests"),
        errors: n("errors"),
        prompt_tokens: n("prompt_tokens"),
        completion_tokens: n("completion_tokens"),
        total_tokens: n("total_tokens"),
        cost_micros: n("cost_micros"),
    }
}

fn day_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .format("%Y-%m-%d")
        .to_string()
}

/// Checks `/admin/usage/summary?group_by=<group_by><query>` against `rows` grouped by
/// `group`.
async fn assert_summary_matches(
    app: &TestApp,
    rows: &[usage::Model],
    group_by: &str,
    query: &str,
    group: impl Fn(&usage::Model) -> String,
) {
    let mut expected: BTreeMap<String, Vec<&usage::Model>> = BTreeMap::new();
    for r in rows {
        expected.entry(group(r)).or_default().push(r);
    }
    let path = format!("/admin/usage/summary?group_by={group_by}{query}");
    let answer = get_json(app, &path, &app.admin_key).await;
    let data = answer["data"].as_array().unwrap();
    let groups: Vec<&str> = data.iter().map(|g| g["group"].as_str().unwrap()).collect();
    assert_eq!(
        groups,
        expected.keys().map(String::as_str).collect::<Vec<_>>(),
        "{path}"
    );
    for entry in data {
        let rows = &expected[entry["group"].as_str().unwrap()];
        assert_eq!(
            totals_in(entry),
            totals_of(rows.iter().copied()),
            "{path}: {entry}"
        );
        let (p50, p95) = (
            entry["latency_ms"]["p50"].as_f64().unwrap(),
            entry["latency_ms"]["p95"].as_f64().unwrap(),
        );
        let slowest = rows.iter().map(|r| r.latency_ms).max().unwrap();
        assert!(0.0 <= p50 && p50 <= p95, "{path}: {entry}");
        // Within the bucket of the slowest row (1-2-5 bounds: at most 2.5× up).
        assert!(p95 <= (slowest.max(1) * 5 / 2) as f64, "{path}: {entry}");
    }
}

async fn assert_every_summary_matches(app: &TestApp, rows: &[usage::Model]) {
    let name = |v: &Option<String>| v.clone().unwrap_or_default();
    assert_summary_matches(app, rows, "model", "", |r| r.model.clone()).await;
    assert_summary_matches(app, rows, "user", "", |r| name(&r.user_id)).await;
    assert_summary_matches(app, rows, "key", "", |r| name(&r.key_id)).await;
    assert_summary_matches(app, rows, "day", "", |r| day_of(r.created_at)).await;
}

#[actix_web::test]
async fn summaries_agree_exactly_with_the_rows_for_every_grouping() {
    let app = spawn_one_attempt().await;
    mixed_traffic(&app).await;
    let rows = app.usage_rows().await;
    assert_every_summary_matches(&app, &rows).await;

    let alice: Vec<usage::Model> = rows
        .iter()
        .filter(|r| r.user_id.as_deref() == Some("alice"))
        .cloned()
        .collect();
    assert_summary_matches(&app, &alice, "model", "&user_id=alice", |r| r.model.clone()).await;
    let gpt_b: Vec<usage::Model> = rows
        .iter()
        .filter(|r| r.model == "gpt-b")
        .cloned()
        .collect();
    assert_summary_matches(&app, &gpt_b, "user", "&model=gpt-b", |r| {
        r.user_id.clone().unwrap_or_default()
    })
    .await;

    let spend = app
        .store
        .send(GetUserSpend {
            user_id: "alice".into(),
        })
        .await
        .unwrap()
        .unwrap();
    let expected = totals_of(alice.iter());
    assert_eq!(
        (spend.tokens, spend.cost_micros),
        (expected.total_tokens, expected.cost_micros)
    );
    assert!(spend.cost_micros > 8_755);
}

fn spilled_row(i: i64, created_at: i64, latency_ms: i64) -> UsageRecord {
    let tokens = 100 + i;
    UsageRecord {
        request_id: format!("spilled-{i}"),
        user_id: Some(format!("user-{}", i % 3)),
        key_id: Some(format!("key-{}", i % 4)),
        model: format!("model-{}", i % 2),
        deployment_id: Some("dep".into()),
        usage: Some(TokenUsage {
            prompt: tokens,
            completion: i,
            total: tokens + i,
            ..TokenUsage::default()
        }),
        cost_micros: Some(tokens * 3 + i),
        cost_status: CostStatus::Priced,
        status: if i % 5 == 0 { 429 } else { 200 },
        error_class: None,
        latency_ms,
        overhead_ms: 0.2,
        ttft_ms: None,
        stream: false,
        usage_source: UsageSource::Reported,
        created_at,
        attempts: 1,
        request_bytes: None,
        response_bytes: None,
    }
}

#[actix_web::test]
async fn replayed_rows_over_several_days_roll_up_exactly_with_old_spill_lines() {
    let app = spawn_app().await;
    // Rows over three days and many hours, with latencies across the buckets; every
    // third one as the gateway wrote spill lines before costs were micro-dollars.
    let start = (chrono::Utc::now().timestamp_millis() / DAY_MS - 3) * DAY_MS;
    let mut lines = String::new();
    for i in 0..60i64 {
        let row = spilled_row(
            i,
            start + i * 71 * 60_000,
            [3, 40, 700, 12_000][i as usize % 4],
        );
        let mut line = serde_json::to_value(&row).unwrap();
        if i % 3 == 0 {
            let micros = line.as_object_mut().unwrap().remove("cost_micros").unwrap();
            line["cost_usd"] = json!(micros.as_i64().unwrap() as f64 / 1e6);
        }
        lines.push_str(&format!("{line}\n"));
    }
    std::fs::write(usage_spill_file(&app.dir), lines).unwrap();
    let replayed = app.store.send(ReplayUsageSpill).await.unwrap().unwrap();
    assert_eq!(replayed, 60);

    let rows = app.usage_rows().await;
    let by_request: BTreeMap<&str, &usage::Model> =
        rows.iter().map(|r| (r.request_id.as_str(), r)).collect();
    for i in 0..60i64 {
        let row = spilled_row(i, 0, 0);
        assert_eq!(
            by_request[row.request_id.as_str()].cost_micros,
            row.cost_micros
        );
    }
    assert_every_summary_matches(&app, &rows).await;
    // Hour granularity: `since` counts from the start of its hour, `until` to its end;
    // whole days are read from the daily rollups, the hours around them from the hourly.
    let hour = |t: i64| t - t % HOUR_MS;
    for (since, until) in [
        (
            start + DAY_MS + 10 * 60_000,
            start + 2 * DAY_MS + 10 * 60_000,
        ),
        (
            start + 13 * HOUR_MS + 7 * 60_000,
            start + 2 * DAY_MS + 5 * HOUR_MS + 60_000,
        ),
        (start + 3 * HOUR_MS, start + 9 * HOUR_MS + 1),
    ] {
        let window: Vec<usage::Model> = rows
            .iter()
            .filter(|r| hour(r.created_at) >= hour(since) && hour(r.created_at) < until)
            .cloned()
            .collect();
        assert!(window.len() > 3 && window.len() < 60, "{}", window.len());
        let query = format!("&since={since}&until={until}");
        assert_summary_matches(&app, &window, "day", &query, |r| day_of(r.created_at)).await;
        assert_summary_matches(&app, &window, "user", &query, |r| {
            r.user_id.clone().unwrap_or_default()
        })
        .await;
    }
    // The buckets separate fast from slow: a model's p50 and p95 differ.
    let summary = get_json(&app, "/admin/usage/summary?group_by=model", &app.admin_key).await;
    let latency = &summary["data"][0]["latency_ms"];
    assert!(latency["p50"].as_f64().unwrap() < latency["p95"].as_f64().unwrap());
}

#[actix_web::test]
async fn a_user_reads_its_own_usage_and_nobody_elses() {
    let app = spawn_one_attempt().await;
    let keys = mixed_traffic(&app).await;
    let rows = app.usage_rows().await;
    let (alice_1, alice_1_id) = &keys["alice-1"];

    let mine = get_json(&app, "/v1/usage", alice_1).await;
    assert_eq!(mine["user_id"], "alice");
    assert_eq!(mine["role"], "user");
    assert_eq!(mine["key_id"], alice_1_id.as_str());
    let alice = totals_of(
        rows.iter()
            .filter(|r| r.user_id.as_deref() == Some("alice")),
    );
    let key = totals_of(
        rows.iter()
            .filter(|r| r.key_id.as_deref() == Some(alice_1_id.as_str())),
    );
    assert_ne!(alice, key, "the user has two keys");
    let usage = &mine["usage"];
    assert_eq!(totals_in(&usage["user"]["all_time"]), alice);
    assert_eq!(totals_in(&usage["key"]["all_time"]), key);
    let today = day_of(chrono::Utc::now().timestamp_millis());
    if rows.iter().all(|r| day_of(r.created_at) == today) {
        assert_eq!(usage["day"], today);
        assert_eq!(totals_in(&usage["user"]["today"]), alice);
        assert_eq!(totals_in(&usage["key"]["today"]), key);
    }
    let bob = get_json(&app, "/v1/usage", &keys["bob"].0).await;
    assert_eq!(bob["user_id"], "bob");
    assert_eq!(
        totals_in(&bob["usage"]["user"]["all_time"]),
        totals_of(rows.iter().filter(|r| r.user_id.as_deref() == Some("bob")))
    );
    // `/v1/usage` takes no parameters that could point at someone else, and the admin
    // usage API is closed to a `user` key.
    let other = get_json(&app, "/v1/usage?user_id=bob", alice_1).await;
    assert_eq!(other["user_id"], "alice");
    for path in ["/admin/usage", "/admin/usage/summary?group_by=user"] {
        let error = assert_openai_error(app.get(path, alice_1).await, 403).await;
        assert_eq!(error["code"], "admin_forbidden");
    }
    let viewer = new_key(&app, "auditor", "viewer").await.0;
    assert_eq!(app.get("/admin/usage", &viewer).await.status(), 200);
    assert_eq!(app.get("/v1/usage", "not-a-key").await.status(), 401);
}

async fn sample(app: &TestApp, name: &str) -> f64 {
    metric_sample(&app.client, &app.address, name).await
}

#[actix_web::test]
async fn cost_and_token_metrics_read_the_same_figures_as_the_rows() {
    let app = spawn_one_attempt().await;
    mixed_traffic(&app).await;
    // A streamed answer with usage, and one that reports cached prompt tokens.
    let key = &app.admin_key;
    let res = app
        .chat(
            key,
            &json!({"model": "gpt-a", "stream": true, "stream_options": {"include_usage": true},
                "messages": user_message("one two three")}),
        )
        .await;
    assert_eq!(res.status(), 200);
    res.text().await.unwrap();
    app.upstream.push(Reply::Json(json!({
        "id": "c1", "object": "chat.completion", "created": 0, "model": "gpt-b-upstream",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 2, "total_tokens": 22,
            "prompt_tokens_details": {"cached_tokens": 16}}
    })));
    assert_eq!(chat_as(&app, key, "gpt-b").await, 200);
    let rows = app.usage_rows().await;

    for model in ["gpt-a", "gpt-b"] {
        let of_model = || rows.iter().filter(|r| r.model == model);
        let totals = totals_of(of_model());
        assert_eq!(
            sample(&app, &format!("gateway_cost_total{{model=\"{model}\"}}")).await,
            totals.cost_micros as f64 / 1e6,
            "{model}"
        );
        for (kind, expected) in [
            ("prompt", totals.prompt_tokens),
            ("completion", totals.completion_tokens),
        ] {
            assert_eq!(
                sample(
                    &app,
                    &format!("gateway_tokens_total{{model=\"{model}\",type=\"{kind}\"}}")
                )
                .await,
                expected as f64,
                "{model} {kind}"
            );
        }
    }
    let cached: i64 = rows.iter().filter_map(|r| r.cache_read_tokens).sum();
    assert_eq!(cached, 16);
    assert_eq!(
        metric_sample(
            &app.client,
            &app.address,
            "gateway_tokens_total{model=\"gpt-b\",type=\"cache_read\"}"
        )
        .await,
        16.0
    );
}

#[actix_web::test]
async fn the_migration_turns_dollars_into_micro_dollars_and_rolls_up_stored_rows() {
    use migration::{Migrator, MigratorTrait};
    crate::helpers::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let url = fresh_database_url(&dir).await;
    let db = Database::connect(url.as_str()).await.unwrap();
    Migrator::up(&db, Some(10)).await.unwrap();
    let hour = 1_764_669_600_000i64;
    for (i, (user, cost, status, latency)) in [
        ("'u'", "0.000062", 200, 3),
        ("'u'", "0.0000045", 200, 150),
        ("'u'", "NULL", 502, 20_000),
        ("NULL", "0.25", 200, 7),
    ]
    .into_iter()
    .enumerate()
    {
        db.execute_unprepared(&format!(
            "INSERT INTO \"usage\" (request_id, user_id, key_id, model, prompt_tokens, \
             completion_tokens, total_tokens, cost_usd, cost_status, status, latency_ms, \
             overhead_ms, stream, usage_source, created_at, attempts) VALUES \
             ('r{i}', {user}, 'k', 'm', 10, 5, 15, {cost}, 'priced', {status}, {latency}, \
             0.5, false, 'reported', {}, 1)",
            hour + i as i64 * 1_000
        ))
        .await
        .unwrap();
    }
    Migrator::up(&db, None).await.unwrap();

    let costs: Vec<Option<i64>> = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT cost_micros FROM \"usage\" ORDER BY id",
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get("", "cost_micros").unwrap())
        .collect();
    assert_eq!(costs, [Some(62), Some(5), None, Some(250_000)]);
    let rollups = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT user_id, requests, errors, total_tokens, cost_micros, latency_ms_sum, \
             latency_le_5, latency_le_10, latency_le_200, latency_le_20000 \
             FROM usage_hourly ORDER BY user_id",
        ))
        .await
        .unwrap();
    let read = |i: usize, c: &str| rollups[i].try_get::<i64>("", c).unwrap();
    assert_eq!(rollups.len(), 2);
    assert_eq!(rollups[0].try_get::<String>("", "user_id").unwrap(), "");
    assert_eq!(rollups[1].try_get::<String>("", "user_id").unwrap(), "u");
    assert_eq!(
        [
            "requests",
            "errors",
            "total_tokens",
            "cost_micros",
            "latency_ms_sum"
        ]
        .map(|c| read(1, c)),
        [3, 1, 45, 67, 20_153]
    );
    assert_eq!(
        [
            "latency_le_5",
            "latency_le_10",
            "latency_le_200",
            "latency_le_20000"
        ]
        .map(|c| read(1, c)),
        [1, 0, 1, 1]
    );
    assert_eq!(read(0, "latency_le_10"), 1);
    let daily = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT day, user_id, requests, cost_micros, latency_le_200 FROM usage_daily \
             ORDER BY user_id",
        ))
        .await
        .unwrap();
    assert_eq!(daily.len(), 2);
    assert_eq!(
        ["day", "requests", "cost_micros", "latency_le_200"]
            .map(|c| daily[1].try_get::<i64>("", c).unwrap()),
        [hour - hour % DAY_MS, 3, 67, 1]
    );
    let _ = db.close().await;
    drop_test_database(&url);
}
