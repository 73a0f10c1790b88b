//! Limits enforced: RPM and TPM in a sliding window (per user, or per key with its own
//! RPM), token quotas and budgets, reservations under concurrency, `x-ratelimit-*` on every
//! answer and 429 with `Retry-After`; keys limited to models.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use serde_json::{Value, json};

use crate::helpers::{
    Gateway, TestApp, assert_openai_error, fresh_database_url, spawn_app, spawn_binary, terminate,
    user_message,
};

/// Creates `user_id` with these limits (fields of `POST /admin/users`) and a key for it;
/// `key_fields` go into `POST /admin/keys`.
async fn limited_key(app: &TestApp, user_id: &str, limits: Value, key_fields: Value) -> String {
    let mut user = json!({"user_id": user_id});
    merge(&mut user, &limits);
    let res = app.post_json("/admin/users", &app.admin_key, &user).await;
    assert_eq!(res.status(), 201, "creating a user");
    let mut key = json!({"user_id": user_id});
    merge(&mut key, &key_fields);
    let res = app.post_json("/admin/keys", &app.admin_key, &key).await;
    assert_eq!(res.status(), 201, "creating a key");
    let body: Value = res.json().await.unwrap();
    body["key"].as_str().unwrap().to_string()
}

fn merge(into: &mut Value, from: &Value) {
    if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
        for (k, v) in b {
            a.insert(k.clone(), v.clone());
        }
    }
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

fn mock_chat() -> Value {
    json!({"model": "mock", "messages": user_message("hi")})
}

/// The upstream's default answer costs 11 prompt + 5 completion tokens.
const UPSTREAM_TOKENS: i64 = 16;

fn upstream_chat(max_tokens: u32) -> Value {
    json!({"model": "gpt", "messages": user_message("hi"), "max_tokens": max_tokens})
}

fn tokens_of(rows: &[lowart::entities::usage::Model]) -> i64 {
    rows.iter().filter_map(|r| r.total_tokens).sum()
}

#[actix_web::test]
async fn rpm_3_refuses_the_fourth_request_with_retry_after_and_rate_headers() {
    let app = spawn_app().await;
    let key = limited_key(&app, "alice", json!({"rpm_limit": 3}), json!({})).await;
    for remaining in [2, 1, 0] {
        let res = app.chat(&key, &mock_chat()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "x-ratelimit-limit-requests").unwrap(), "3");
        assert_eq!(
            header(&res, "x-ratelimit-remaining-requests").unwrap(),
            remaining.to_string()
        );
        let reset = header(&res, "x-ratelimit-reset-requests").unwrap();
        assert!(reset.ends_with('s'), "a duration like `59.5s`: {reset}");
        assert!(
            header(&res, "x-ratelimit-limit-tokens").is_none(),
            "no TPM limit"
        );
    }
    let res = app.chat(&key, &mock_chat()).await;
    let retry_after: u64 = header(&res, "retry-after").unwrap().parse().unwrap();
    assert!((1..=61).contains(&retry_after), "{retry_after}");
    assert_eq!(header(&res, "x-ratelimit-remaining-requests").unwrap(), "0");
    let error = assert_openai_error(res, 429).await;
    assert_eq!(error["code"], "rate_limited");
    assert_eq!(error["type"], "rate_limit_error");
    // The refusal is recorded, like every request.
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 4);
    assert_eq!(rows[3].status, 429);
    assert_eq!(rows[3].error_class.as_deref(), Some("rate_limited"));
}

#[actix_web::test]
async fn a_burst_straddling_a_minute_boundary_gets_the_limit_not_twice_it() {
    let app = spawn_app().await;
    let key = limited_key(&app, "bursty", json!({"rpm_limit": 3}), json!({})).await;
    // A fixed window would start afresh on the minute: wait until 1.5 s before one, send
    // a burst, then another just after it.
    let ms_in_minute =
        |now: SystemTime| (now.duration_since(UNIX_EPOCH).unwrap().as_millis() % 60_000) as u64;
    let until_before = (58_500 + 60_000 - ms_in_minute(SystemTime::now())) % 60_000;
    tokio::time::sleep(Duration::from_millis(until_before)).await;
    let mut admitted = 0;
    for _ in 0..6 {
        if app.chat(&key, &mock_chat()).await.status() == 200 {
            admitted += 1;
        }
    }
    let after = (60_000 + 300 - ms_in_minute(SystemTime::now())) % 60_000;
    tokio::time::sleep(Duration::from_millis(after)).await;
    let mut retry_after = Vec::new();
    for _ in 0..6 {
        let res = app.chat(&key, &mock_chat()).await;
        if res.status() == 200 {
            admitted += 1;
        } else {
            assert_eq!(res.status(), 429);
            retry_after.push(header(&res, "retry-after").unwrap().parse::<u64>().unwrap());
        }
    }
    assert_eq!(admitted, 3, "the limit over both sides of the boundary");
    // Room returns a minute after the first burst, not at the boundary.
    assert!(retry_after.iter().all(|s| *s >= 55), "{retry_after:?}");
}

#[actix_web::test]
async fn a_keys_own_rpm_overrides_its_users() {
    let app = spawn_app().await;
    let own = limited_key(
        &app,
        "carol",
        json!({"rpm_limit": 1}),
        json!({"rpm_limit": 2}),
    )
    .await;
    let res = app
        .post_json("/admin/keys", &app.admin_key, &json!({"user_id": "carol"}))
        .await;
    let shared = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..2 {
        let res = app.chat(&own, &mock_chat()).await;
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "x-ratelimit-limit-requests").unwrap(), "2");
    }
    assert_openai_error(app.chat(&own, &mock_chat()).await, 429).await;
    // The key with its own limit did not spend its user's.
    let res = app.chat(&shared, &mock_chat()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "x-ratelimit-limit-requests").unwrap(), "1");
    assert_openai_error(app.chat(&shared, &mock_chat()).await, 429).await;
}

#[actix_web::test]
async fn tpm_counts_tokens_in_the_window_and_shows_them() {
    let app = spawn_app().await;
    app.add_openai_model("gpt", json!({})).await;
    let key = limited_key(&app, "dave", json!({"tpm_limit": 60}), json!({})).await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let res = app.chat(&key, &upstream_chat(10)).await;
        assert_eq!(header(&res, "x-ratelimit-limit-tokens").unwrap(), "60");
        assert!(header(&res, "x-ratelimit-remaining-tokens").is_some());
        if res.status() == 429 {
            assert!(header(&res, "retry-after").is_some());
            assert_eq!(assert_openai_error(res, 429).await["code"], "rate_limited");
            statuses.push(429);
            break;
        }
        assert_eq!(res.status(), 200);
        statuses.push(200);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    let spent = tokens_of(&app.usage_rows().await);
    // What was admitted fits the limit, but for what the last request used beyond its
    // reservation.
    assert!(spent <= 60 + UPSTREAM_TOKENS, "{spent}");
    // A request that alone needs more than the limit can never pass.
    let res = app.chat(&key, &upstream_chat(1_000)).await;
    let error = assert_openai_error(res, 429).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("more than the limit"),
        "{error}"
    );
}

#[actix_web::test]
async fn tpm_is_charged_what_requests_use_not_what_they_reserve() {
    let app = spawn_app().await;
    app.add_openai_model("gpt", json!({})).await;
    // Without `max_tokens` a request reserves 1,024 completion tokens, and uses 16.
    let key = limited_key(&app, "tess", json!({"tpm_limit": 3_000}), json!({})).await;
    let body = json!({"model": "gpt", "messages": user_message("hi")});
    for i in 0..10 {
        let res = app.chat(&key, &body).await;
        assert_eq!(res.status(), 200, "request {i}");
    }
    let res = app.chat(&key, &body).await;
    let remaining: i64 = header(&res, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    // Ten settled requests and this one's reservation are counted.
    assert!(
        remaining > 3_000 - 11 * UPSTREAM_TOKENS - 1_100,
        "{remaining}"
    );
}

#[actix_web::test]
async fn a_spent_token_quota_is_insufficient_quota_until_raised() {
    let app = spawn_app().await;
    app.add_openai_model("gpt", json!({})).await;
    let key = limited_key(&app, "erin", json!({"token_quota": 100}), json!({})).await;
    let mut refused = None;
    for _ in 0..10 {
        let res = app.chat(&key, &upstream_chat(20)).await;
        if res.status() != 200 {
            refused = Some(res);
            break;
        }
    }
    let res = refused.expect("the quota ran out");
    assert!(header(&res, "retry-after").is_some());
    let error = assert_openai_error(res, 429).await;
    assert_eq!(error["code"], "insufficient_quota");
    assert_eq!(error["type"], "insufficient_quota");
    let spent = tokens_of(&app.usage_rows().await);
    assert!(spent <= 100, "reservations covered every answer: {spent}");
    assert!(
        spent > 100 - 2 * (UPSTREAM_TOKENS + 20),
        "not refused early: {spent}"
    );
    // Raising the quota applies to the very next request.
    let res = app
        .patch_json(
            "/admin/users/erin",
            &app.admin_key,
            &json!({"token_quota": 1000}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(app.chat(&key, &upstream_chat(20)).await.status(), 200);
}

#[actix_web::test]
async fn a_spent_budget_is_insufficient_quota() {
    let app = spawn_app().await;
    // 11 × 2 + 5 × 4 = 42 micro-dollars a request.
    app.add_openai_model(
        "gpt",
        json!({"price_input_per_mtok": 2.0, "price_output_per_mtok": 4.0}),
    )
    .await;
    let key = limited_key(&app, "frank", json!({"budget_usd": 0.0002}), json!({})).await;
    let mut ok = 0;
    let mut refused = None;
    for _ in 0..10 {
        let res = app.chat(&key, &upstream_chat(8)).await;
        if res.status() == 200 {
            ok += 1;
        } else {
            refused = Some(res);
            break;
        }
    }
    let error = assert_openai_error(refused.expect("the budget ran out"), 429).await;
    assert_eq!(error["code"], "insufficient_quota");
    let rows = app.usage_rows().await;
    let micros: i64 = rows.iter().filter_map(|r| r.cost_micros).sum();
    assert_eq!(micros, 42 * ok, "tokens × price, to the micro-dollar");
    assert!(micros <= 200 && micros > 200 - 2 * 42, "{ok} requests");
    // The user's recorded spend is the sum of its rows, exactly.
    let own: Value = app.get("/v1/usage", &key).await.json().await.unwrap();
    assert_eq!(own["usage"]["user"]["all_time"]["cost_micros"], micros);
    let budget = &own["limits"]["budget_usd"];
    assert_eq!(budget["limit"], 0.0002);
    assert_eq!(budget["used"], micros as f64 / 1e6);
    assert_eq!(budget["micros"]["used"], micros);
}

#[actix_web::test]
async fn fifty_concurrent_requests_overshoot_a_quota_by_no_more_than_their_reservations() {
    let app = spawn_app().await;
    app.add_openai_model("gpt", json!({})).await;
    // Each request reserves its prompt + 20 tokens: more than the 16 it uses, so the
    // spend may not pass the quota at all.
    let key = limited_key(&app, "gina", json!({"token_quota": 300}), json!({})).await;
    let body = upstream_chat(20);
    let answers = join_all((0..50).map(|_| app.chat(&key, &body))).await;
    let mut ok = 0i64;
    for res in answers {
        match res.status().as_u16() {
            200 => ok += 1,
            429 => assert_eq!(
                assert_openai_error(res, 429).await["code"],
                "insufficient_quota"
            ),
            other => panic!("unexpected status {other}"),
        }
    }
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 50, "one row per request");
    let spent = tokens_of(&rows);
    assert_eq!(
        spent,
        ok * UPSTREAM_TOKENS,
        "the rows are what was admitted"
    );
    assert!(spent <= 300, "overshoot beyond the reservations: {spent}");
    assert!(ok >= 300 / 40, "admitted while reservations fit: {ok}");
    assert!(ok < 50, "the quota refused some");
}

#[actix_web::test]
async fn a_stream_carries_the_rate_headers_and_an_unlimited_caller_none() {
    let app = spawn_app().await;
    let key = limited_key(
        &app,
        "hank",
        json!({"rpm_limit": 100, "tpm_limit": 100_000}),
        json!({}),
    )
    .await;
    let mut body = mock_chat();
    body["stream"] = json!(true);
    let res = app.chat(&key, &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "x-ratelimit-remaining-requests").unwrap(),
        "99"
    );
    assert_eq!(header(&res, "x-ratelimit-limit-tokens").unwrap(), "100000");
    let remaining: u64 = header(&res, "x-ratelimit-remaining-tokens")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        remaining < 100_000,
        "the reservation is counted: {remaining}"
    );
    res.text().await.unwrap();
    let res = app.chat(&app.admin_key, &mock_chat()).await;
    assert_eq!(res.status(), 200);
    assert!(header(&res, "x-ratelimit-limit-requests").is_none());
}

#[actix_web::test]
async fn a_key_limited_to_a_model_is_refused_others_and_does_not_see_them() {
    let app = spawn_app().await;
    app.add_openai_model("gpt", json!({})).await;
    let key = app.user_key("ivy", "user", Some(vec!["gpt"])).await;
    assert_eq!(app.chat(&key, &upstream_chat(5)).await.status(), 200);
    let error = assert_openai_error(app.chat(&key, &mock_chat()).await, 403).await;
    assert_eq!(error["code"], "model_not_permitted");
    let models: Value = app.get("/v1/models", &key).await.json().await.unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["gpt"]);
    // A model that does not exist is 404 for every key, limited or not.
    for k in [&key, &app.admin_key] {
        let body = json!({"model": "nope", "messages": user_message("x")});
        let error = assert_openai_error(app.chat(k, &body).await, 404).await;
        assert_eq!(error["code"], "model_not_found");
    }
}

/// Each HTTP worker admits through a quota actor of its own (a shard leasing from the
/// shared counters like an instance): with two workers an RPM limit under 40 still admits
/// exactly the limit, and at a graceful stop every shard gives back the units it leased
/// and did not use, so the shared token counter holds exactly what the requests used.
#[actix_web::test]
async fn two_workers_admit_exactly_the_limit_and_give_back_unused_units_at_shutdown() {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let Gateway {
        mut child, address, ..
    } = spawn_binary(
        &dir,
        &[
            ("DATABASE_URL", db_url.as_str()),
            ("LOWART_ADMIN_KEY", admin_key.as_str()),
            ("LOWART_SERVER__WORKERS", "2"),
        ],
    )
    .await;
    let admin = reqwest::Client::new();
    let res = admin
        .post(format!("{address}/admin/users"))
        .bearer_auth(&admin_key)
        .json(&json!({"user_id": "shards", "rpm_limit": 6, "token_quota": 1_000_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = admin
        .post(format!("{address}/admin/keys"))
        .bearer_auth(&admin_key)
        .json(&json!({"user_id": "shards"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let key = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();

    // A client (and so a connection) per request: the connections spread over both workers.
    let sent = (0..10).map(|_| {
        let (address, key) = (address.clone(), key.clone());
        async move {
            reqwest::Client::new()
                .post(format!("{address}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&mock_chat())
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let mut statuses = join_all(sent).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429, 429, 429]);

    assert!(
        terminate(&mut child).await.success(),
        "exit 0 after SIGTERM"
    );
    let db = sea_orm::Database::connect(&db_url).await.unwrap();
    let used = lowart::entities::quota_counter::Entity::find_by_id("tokens:user:shards")
        .one(&db)
        .await
        .unwrap()
        .expect("the token counter exists")
        .used;
    let rows = lowart::entities::usage::Entity::find()
        .filter(lowart::entities::usage::Column::UserId.eq("shards"))
        .all(&db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 10, "a usage row per request");
    assert!(tokens_of(&rows) > 0);
    assert_eq!(
        used,
        tokens_of(&rows),
        "leases of 50,000 units went back: the counter holds what was used"
    );
}
