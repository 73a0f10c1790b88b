//! Scale-out: two gateway processes on one fresh PostgreSQL database (these tests run only
//! when `TEST_DATABASE_URL` is set). An admin change made on one instance reaches the
//! other's copies (key cache, routing table) within a second over `LISTEN/NOTIFY`, also
//! when the listener lost its connection; limits are shared (RPM across both within the
//! README's bound, a quota edit on one applies on the other). `spawn_pair` starts the two; each caches keys for
//! an hour, so only the change feed can make them follow.

use std::future::Future;
use std::time::{Duration, Instant};

use reqwest::Method;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{
    Gateway, MASTER_KEY, drop_test_database, fresh_database_url, is_postgres, spawn_binary,
    user_message,
};

/// How soon another instance must follow a change.
const WITHIN: Duration = Duration::from_secs(1);
const HOUR_MS: &str = "3600000";

/// Two gateway processes on one database. Dropping it stops both and drops the database.
pub struct Pair {
    pub a: Gateway,
    pub b: Gateway,
    pub admin_key: String,
    pub db_url: String,
    pub client: reqwest::Client,
    _dirs: (TempDir, TempDir),
}

/// Starts two gateways on one fresh PostgreSQL database (`env` goes to both, after the
/// pair's own variables), one after the other so that one runs the migrations. `None`
/// (with a note) when the tests run on SQLite, whose feed stays within one instance.
pub async fn spawn_pair(env: &[(&str, &str)]) -> Option<Pair> {
    if !is_postgres() {
        eprintln!("scale-out tests need PostgreSQL: set TEST_DATABASE_URL to run them");
        return None;
    }
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let db_url = fresh_database_url(&dirs.0).await;
    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let mut vars = vec![
        ("DATABASE_URL", db_url.as_str()),
        ("LOWART_MASTER_KEY", MASTER_KEY),
        ("LOWART_ADMIN_KEY", admin_key.as_str()),
        ("LOWART_SECURITY__KEY_CACHE_TTL_MS", HOUR_MS),
    ];
    vars.extend_from_slice(env);
    let a = spawn_binary(&dirs.0, &vars).await;
    let b = spawn_binary(&dirs.1, &vars).await;
    Some(Pair {
        a,
        b,
        admin_key,
        db_url,
        client: reqwest::Client::new(),
        _dirs: dirs,
    })
}

impl Drop for Pair {
    fn drop(&mut self) {
        let _ = self.a.child.start_kill();
        let _ = self.b.child.start_kill();
        drop_test_database(&self.db_url);
    }
}

impl Pair {
    /// `method path` on `on` with `key` (and a JSON body).
    pub async fn send(
        &self,
        on: &Gateway,
        method: Method,
        path: &str,
        key: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let mut request = self
            .client
            .request(method, format!("{}{path}", on.address))
            .bearer_auth(key);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.unwrap()
    }

    /// An admin change on `on`: answers its JSON once `status` is checked.
    pub async fn admin(
        &self,
        on: &Gateway,
        method: Method,
        path: &str,
        body: Option<&Value>,
        status: u16,
    ) -> Value {
        let res = self.send(on, method, path, &self.admin_key, body).await;
        assert_eq!(res.status(), status, "{path}");
        res.json().await.unwrap()
    }

    /// Creates a user on `on` and a key for it; answers (key id, secret).
    /// Revokes the key `key_id` on `on`.
    pub async fn revoke(&self, on: &Gateway, key_id: &str) {
        let path = format!("/admin/keys/{key_id}");
        self.admin(on, Method::DELETE, &path, None, 200).await;
    }

    pub async fn user_key(&self, on: &Gateway, user_id: &str) -> (String, String) {
        let user = json!({"user_id": user_id});
        self.admin(on, Method::POST, "/admin/users", Some(&user), 201)
            .await;
        let key = self
            .admin(on, Method::POST, "/admin/keys", Some(&user), 201)
            .await;
        (
            key["id"].as_str().unwrap().to_string(),
            key["key"].as_str().unwrap().to_string(),
        )
    }

    /// The status of `GET /v1/models` on `on` with `key`.
    pub async fn models_status(&self, on: &Gateway, key: &str) -> u16 {
        self.send(on, Method::GET, "/v1/models", key, None)
            .await
            .status()
            .as_u16()
    }

    /// The status of a chat with `model` on `on`, as the admin.
    pub async fn chat_status(&self, on: &Gateway, model: &str) -> u16 {
        let body = json!({"model": model, "messages": user_message("hello")});
        self.send(
            on,
            Method::POST,
            "/v1/chat/completions",
            &self.admin_key,
            Some(&body),
        )
        .await
        .status()
        .as_u16()
    }
}

/// Polls `probe` until it answers `want`; fails with the last answer once `deadline`
/// passes. Answers how long it took from `since`.
pub async fn eventually<F, Fut>(since: Instant, deadline: Duration, want: u16, probe: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: Future<Output = u16>,
{
    loop {
        let got = probe().await;
        if got == want {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < deadline,
            "still {got} (not {want}) {:?} after the change",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn a_key_revoked_on_one_instance_is_refused_by_the_other_within_a_second() {
    let Some(pair) = spawn_pair(&[]).await else {
        return;
    };
    let (key_id, key) = pair.user_key(&pair.a, "ada").await;
    assert_eq!(pair.models_status(&pair.b, &key).await, 200, "B caches it");

    pair.revoke(&pair.a, &key_id).await;
    let answered = Instant::now();
    assert_eq!(pair.models_status(&pair.a, &key).await, 401, "A at once");
    eventually(answered, WITHIN, 401, || pair.models_status(&pair.b, &key)).await;
}

#[actix_web::test]
async fn a_user_disabled_on_one_instance_is_refused_by_the_other_within_a_second() {
    let Some(pair) = spawn_pair(&[]).await else {
        return;
    };
    let (_, key) = pair.user_key(&pair.a, "bob").await;
    assert_eq!(pair.models_status(&pair.b, &key).await, 200, "B caches it");

    pair.admin(&pair.a, Method::DELETE, "/admin/users/bob", None, 200)
        .await;
    let answered = Instant::now();
    eventually(answered, WITHIN, 401, || pair.models_status(&pair.b, &key)).await;
}

#[actix_web::test]
async fn a_model_added_or_edited_on_one_instance_is_served_by_the_other_within_a_second() {
    let Some(pair) = spawn_pair(&[]).await else {
        return;
    };
    assert_eq!(pair.chat_status(&pair.b, "late-model").await, 404);

    let added = json!({"model_id": "late-model", "vendor_type": "Mock"});
    let deployment = pair
        .admin(&pair.a, Method::POST, "/admin/models", Some(&added), 201)
        .await;
    let answered = Instant::now();
    eventually(answered, WITHIN, 200, || {
        pair.chat_status(&pair.b, "late-model")
    })
    .await;

    let path = format!("/admin/models/{}", deployment["id"].as_str().unwrap());
    let renamed = json!({"model_id": "renamed-model"});
    pair.admin(&pair.a, Method::PATCH, &path, Some(&renamed), 200)
        .await;
    let answered = Instant::now();
    eventually(answered, WITHIN, 200, || {
        pair.chat_status(&pair.b, "renamed-model")
    })
    .await;
    assert_eq!(pair.chat_status(&pair.b, "late-model").await, 404);

    assert_eq!(pair.chat_status(&pair.b, "gone-model").await, 404);
    let chain = json!({"fallbacks": ["renamed-model"]});
    let path = "/admin/models/gone-model/fallbacks";
    pair.admin(&pair.a, Method::PUT, path, Some(&chain), 200)
        .await;
    let answered = Instant::now();
    eventually(answered, WITHIN, 200, || {
        pair.chat_status(&pair.b, "gone-model")
    })
    .await;
}

/// The process ids of the change listeners' connections that listen (their first
/// statement is the `LISTEN`, any later one the listener's ping), oldest first.
async fn listening_backends(db_url: &str) -> Vec<i32> {
    let db = Database::connect(db_url).await.unwrap();
    let rows = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = $1 AND (query LIKE 'LISTEN %' OR query = 'SELECT 1') \
             ORDER BY backend_start",
            [lowart::actors::store::CHANGE_LISTENER_NAME.into()],
        ))
        .await
        .unwrap();
    let _ = db.close().await;
    rows.iter()
        .map(|r| r.try_get::<i32>("", "pid").unwrap())
        .collect()
}

#[actix_web::test]
async fn a_listener_that_loses_its_connection_catches_up_and_keeps_following() {
    let Some(pair) = spawn_pair(&[]).await else {
        return;
    };
    let before = listening_backends(&pair.db_url).await;
    assert_eq!(before.len(), 2, "one listener per instance");
    let (key_id, key) = pair.user_key(&pair.a, "cy").await;
    assert_eq!(pair.models_status(&pair.b, &key).await, 200, "B caches it");

    // Both listeners' connections are cut, and a change commits while they come back:
    // B learns of it by its notice or, if that fell in the gap, by the `All` a listener
    // announces once it listens again.
    let db = Database::connect(pair.db_url.as_str()).await.unwrap();
    let cut = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND application_name = $1",
            [lowart::actors::store::CHANGE_LISTENER_NAME.into()],
        ))
        .await
        .unwrap();
    assert_eq!(cut.len(), 2);
    let _ = db.close().await;
    pair.revoke(&pair.a, &key_id).await;
    let answered = Instant::now();
    eventually(answered, WITHIN, 401, || pair.models_status(&pair.b, &key)).await;

    // Once both listen on new connections, a change reaches B by its notice again.
    let reconnected = Instant::now();
    loop {
        let now = listening_backends(&pair.db_url).await;
        if now.len() == 2 && now.iter().all(|pid| !before.contains(pid)) {
            break;
        }
        assert!(
            reconnected.elapsed() < Duration::from_secs(10),
            "the listeners did not reconnect: {now:?} (before {before:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(pair.chat_status(&pair.b, "after-outage").await, 404);
    let added = json!({"model_id": "after-outage", "vendor_type": "Mock"});
    pair.admin(&pair.a, Method::POST, "/admin/models", Some(&added), 201)
        .await;
    let answered = Instant::now();
    eventually(answered, WITHIN, 200, || {
        pair.chat_status(&pair.b, "after-outage")
    })
    .await;
}

/// A mock chat as `key` on `on`: its status and code (when refused).
async fn limited_chat(pair: &Pair, on: &Gateway, key: &str) -> (u16, Option<String>) {
    let body = json!({"model": "mock", "messages": [{"role": "user", "content": "hi"}]});
    let res = pair
        .send(on, Method::POST, "/v1/chat/completions", key, Some(&body))
        .await;
    let status = res.status().as_u16();
    let body: Value = res.json().await.unwrap();
    let code = body["error"]["code"].as_str().map(str::to_string);
    (status, code)
}

/// Sets `user_id`'s limits (`limits`, fields of a user PATCH) on A.
async fn set_limits(pair: &Pair, user_id: &str, limits: Value) {
    let path = format!("/admin/users/{user_id}");
    pair.admin(&pair.a, Method::PATCH, &path, Some(&limits), 200)
        .await;
}

#[actix_web::test]
async fn a_shared_rpm_limit_holds_across_both_instances() {
    let Some(pair) = spawn_pair(&[]).await else {
        return;
    };
    // Under 40 requests a minute every lease is one request: the README's bound
    // L + N·(k − 1) is exactly L.
    let (_, key) = pair.user_key(&pair.a, "rita").await;
    set_limits(&pair, "rita", json!({"rpm_limit": 4})).await;
    let mut admitted = 0;
    for i in 0..12 {
        let on = if i % 2 == 0 { &pair.a } else { &pair.b };
        match limited_chat(&pair, on, &key).await {
            (200, _) => admitted += 1,
            (429, code) => assert_eq!(code.as_deref(), Some("rate_limited")),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(admitted, 4, "the limit across both instances");
    // Concurrent requests on both at once: still none beyond the limit.
    let (_, key) = pair.user_key(&pair.a, "sam").await;
    set_limits(&pair, "sam", json!({"rpm_limit": 10})).await;
    let answers = futures_util::future::join_all(
        (0..30).map(|i| limited_chat(&pair, if i % 2 == 0 { &pair.a } else { &pair.b }, &key)),
    )
    .await;
    let admitted = answers.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(admitted, 10, "{answers:?}");
}

#[actix_web::test]
async fn a_quota_edit_on_one_instance_applies_on_the_other() {
    let Some(pair) = spawn_pair(&[]).await else {
        return;
    };
    let (_, key) = pair.user_key(&pair.a, "tom").await;
    set_limits(&pair, "tom", json!({"token_quota": 1})).await;
    let (status, code) = limited_chat(&pair, &pair.b, &key).await;
    assert_eq!((status, code.as_deref()), (429, Some("insufficient_quota")));
    set_limits(&pair, "tom", json!({"token_quota": 1_000_000})).await;
    let answered = Instant::now();
    eventually(answered, WITHIN, 200, || async {
        limited_chat(&pair, &pair.b, &key).await.0
    })
    .await;
    // And lowered again: B refuses within a second.
    set_limits(&pair, "tom", json!({"token_quota": 1})).await;
    let answered = Instant::now();
    eventually(answered, WITHIN, 429, || async {
        limited_chat(&pair, &pair.b, &key).await.0
    })
    .await;
}
