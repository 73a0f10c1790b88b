//! The edge's security defects: revocation racing the key cache, admin bodies read before
//! authentication, key guessing, loose database files, the `Bearer` scheme's case, 405 on
//! a known path, SQLite PRAGMAs on every pooled connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::helpers::{TestApp, assert_openai_error, is_postgres, spawn_app_with, test_settings};

const HOUR_MS: u64 = 3_600_000;

/// Creates a user with a key; answers (key id, secret).
async fn user_with_key(app: &TestApp, user_id: &str) -> (String, String) {
    let res = app
        .post_json(
            "/admin/users",
            &app.admin_key,
            &json!({"user_id": user_id, "role": "user"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = app
        .post_json("/admin/keys", &app.admin_key, &json!({"user_id": user_id}))
        .await;
    assert_eq!(res.status(), 201);
    let key: Value = res.json().await.unwrap();
    (
        key["id"].as_str().unwrap().to_string(),
        key["key"].as_str().unwrap().to_string(),
    )
}

async fn models_status(app: &TestApp, key: &str) -> u16 {
    app.get("/v1/models", key).await.status().as_u16()
}

#[actix_web::test]
async fn a_key_revoked_under_concurrent_use_is_refused_by_every_request_sent_after_the_revoke() {
    let app = Arc::new(
        spawn_app_with(|s| {
            s.security.key_cache_ttl_ms = HOUR_MS;
            // The revoked key is looked up again and again here; that is not guessing.
            s.security.auth_failures_per_minute = 0;
        })
        .await,
    );
    // Admin changes running alongside keep the cache cold, so lookups of the key are in
    // flight when its revocation commits: the window where a stale answer could land.
    let churn_stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (app, stop) = (app.clone(), churn_stop.clone());
        actix_web::rt::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let res = app
                    .post_json(
                        "/admin/users",
                        &app.admin_key,
                        &json!({"user_id": format!("churn-{n}")}),
                    )
                    .await;
                assert_eq!(res.status(), 201);
            }
        })
    };
    for round in 0..8 {
        let (key_id, key) = user_with_key(&app, &format!("racer-{round}")).await;
        let revoked = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let warmed_up = Arc::new(Notify::new());
        let mut requesters = Vec::new();
        for _ in 0..8 {
            let (app, key, revoked, served, warmed_up) = (
                app.clone(),
                key.clone(),
                revoked.clone(),
                served.clone(),
                warmed_up.clone(),
            );
            requesters.push(actix_web::rt::spawn(async move {
                let mut after_revoke = Vec::new();
                while after_revoke.len() < 40 {
                    let sent_after_revoke = revoked.load(Ordering::SeqCst);
                    let status = models_status(&app, &key).await;
                    if sent_after_revoke {
                        after_revoke.push(status);
                    } else {
                        assert!(status == 200 || status == 401, "{status}");
                        if status == 200 && served.fetch_add(1, Ordering::SeqCst) + 1 == 40 {
                            warmed_up.notify_one();
                        }
                    }
                }
                after_revoke
            }));
        }
        warmed_up.notified().await;
        let res = app
            .delete(&format!("/admin/keys/{key_id}"), &app.admin_key)
            .await;
        assert_eq!(res.status(), 200);
        revoked.store(true, Ordering::SeqCst);
        for requester in requesters {
            let statuses = requester.await.unwrap();
            assert!(
                statuses.iter().all(|s| *s == 401),
                "round {round}: a request sent after the revocation answered was served: {statuses:?}"
            );
        }
    }
    churn_stop.store(true, Ordering::SeqCst);
    churn.await.unwrap();
}

#[actix_web::test]
async fn a_revocation_whose_store_call_fails_or_times_out_still_clears_the_key_cache() {
    let app = spawn_app_with(|s| s.security.key_cache_ttl_ms = HOUR_MS).await;
    let (key_id, key) = user_with_key(&app, "late").await;
    assert_eq!(
        models_status(&app, &key).await,
        200,
        "the key is now cached"
    );

    // Another connection revokes the key in a transaction it keeps open: the gateway's
    // revocation waits for its lock and gives up (SQLite: busy, 500, unless the ask times
    // out first; PostgreSQL: the ask times out, 503).
    let db = app.db().await;
    let txn = db.begin().await.unwrap();
    txn.execute_unprepared(&format!(
        "UPDATE api_keys SET revoked_at = 1 WHERE id = '{key_id}'"
    ))
    .await
    .unwrap();
    let res = app
        .delete(&format!("/admin/keys/{key_id}"), &app.admin_key)
        .await;
    let status = res.status().as_u16();
    assert!(status == 500 || status == 503, "{status}");
    assert_openai_error(res, status).await;

    if is_postgres() {
        // The gateway's revocation is still waiting for the row lock: the key still
        // works, and this lookup caches it again.
        assert_eq!(models_status(&app, &key).await, 200);
    }
    txn.commit().await.unwrap();
    if status == 500 {
        // The store announced its failed write (its outcome unknown) before answering, and
        // nothing looked the key up since.
        assert_eq!(models_status(&app, &key).await, 401);
    } else {
        // The ask timed out with the store's write still waiting for the lock. It ends
        // now (committing, or failing), and the store announces it then: the cache is
        // cleared again. Nothing outside can wait for that, so poll, with a deadline far
        // below the cache's hour.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match models_status(&app, &key).await {
                401 => break,
                200 => assert!(
                    Instant::now() < deadline,
                    "a revocation that ended after its answer left the key cached"
                ),
                other => panic!("unexpected {other}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[actix_web::test]
async fn admin_bodies_are_read_only_after_authentication() {
    let app = spawn_app_with(|_| {}).await;
    let viewer = app.user_key("vera", "viewer", None).await;
    let bad_body = json!({"bogus": 1});
    for path in [
        "/admin/users",
        "/admin/keys",
        "/admin/models",
        "/admin/users/quota",
    ] {
        let res = app.post_json(path, "lw-wrong-key", &bad_body).await;
        let error = assert_openai_error(res, 401).await;
        assert_eq!(error["code"], "invalid_api_key", "{path}");
        assert!(
            !error["message"].as_str().unwrap().contains("field"),
            "{path}"
        );
        let res = app.post_json(path, &viewer, &bad_body).await;
        assert_eq!(
            assert_openai_error(res, 403).await["code"],
            "admin_forbidden",
            "{path}"
        );
    }
    let res = app
        .patch_json("/admin/users/vera", "lw-wrong-key", &bad_body)
        .await;
    assert_openai_error(res, 401).await;

    // A body that never finishes arriving is not waited for before the key is checked.
    let never_ending =
        futures_util::stream::once(async { Ok::<_, std::io::Error>(bytes_of(r#"{"user_id":"#)) })
            .chain(futures_util::stream::pending());
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        app.client
            .post(app.url("/admin/users"))
            .bearer_auth("lw-wrong-key")
            .header("content-type", "application/json")
            .header("content-length", "1000000")
            .body(reqwest::Body::wrap_stream(never_ending))
            .send(),
    )
    .await
    .expect("answered without reading the body")
    .unwrap();
    assert_openai_error(res, 401).await;

    // An authorised caller still gets the same body errors as before.
    let res = app
        .post_json("/admin/users", &app.admin_key, &bad_body)
        .await;
    let error = assert_openai_error(res, 400).await;
    assert_eq!(error["code"], "invalid_request");
    assert_eq!(error["param"], "bogus");
    let res = app
        .client
        .post(app.url("/admin/keys"))
        .bearer_auth(&app.admin_key)
        .header("content-type", "application/json")
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert_eq!(assert_openai_error(res, 400).await["code"], "invalid_json");
    let res = app
        .client
        .post(app.url("/admin/keys"))
        .bearer_auth(&app.admin_key)
        .header("content-type", "text/plain")
        .body(r#"{"user_id":"vera"}"#)
        .send()
        .await
        .unwrap();
    let error = assert_openai_error(res, 400).await;
    assert_eq!(error["code"], "invalid_request");
    assert!(error["message"].as_str().unwrap().contains("Content-Type"));
    let res = app
        .post_json("/admin/keys", &app.admin_key, &json!({"name": "no user"}))
        .await;
    assert_eq!(assert_openai_error(res, 400).await["param"], "user_id");
    let res = app
        .post_json("/admin/keys", &app.admin_key, &json!({"user_id": "vera"}))
        .await;
    assert_eq!(res.status(), 201);
}

fn bytes_of(s: &'static str) -> actix_web::web::Bytes {
    actix_web::web::Bytes::from_static(s.as_bytes())
}

#[actix_web::test]
async fn guessing_keys_is_throttled_per_address_while_known_keys_keep_working() {
    let app = spawn_app_with(|s| s.security.auth_failures_per_minute = 5).await;
    let (_, valid) = user_with_key(&app, "honest").await;
    let (_, not_yet_cached) = user_with_key(&app, "newcomer").await;
    assert_eq!(models_status(&app, &valid).await, 200);
    for n in 0..5 {
        let res = app.get("/v1/models", &format!("lw-guess-{n}")).await;
        assert_eq!(
            assert_openai_error(res, 401).await["code"],
            "invalid_api_key"
        );
    }
    let res = app.get("/v1/models", "lw-guess-5").await;
    let retry_after: u64 = res
        .headers()
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    let error = assert_openai_error(res, 429).await;
    assert_eq!(error["code"], "too_many_auth_failures");
    assert_eq!(error["type"], "rate_limit_error");
    // Chat and admin are guarded the same way.
    let res = app
        .post_json("/admin/users", "lw-guess-6", &json!({"user_id": "x"}))
        .await;
    assert_eq!(
        assert_openai_error(res, 429).await["code"],
        "too_many_auth_failures"
    );

    // Keys the cache knows answer as before: the valid one works, a guess already looked
    // up is still a 401; a key the cache does not know waits like any guess.
    assert_eq!(models_status(&app, &valid).await, 200);
    assert_eq!(models_status(&app, "lw-guess-0").await, 401);
    assert_eq!(models_status(&app, &not_yet_cached).await, 429);
}

/// Sends a `GET /v1/models` over the Unix socket; answers the status line.
async fn uds_models(socket: &std::path::Path, key: &str) -> String {
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let request = format!(
        "GET /v1/models HTTP/1.1\r\nHost: lowart\r\nAuthorization: Bearer {key}\r\n\
         Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.lines().next().unwrap_or_default().to_string()
}

#[actix_web::test]
async fn unix_socket_clients_count_as_one_address() {
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("lowart.sock");
    let path = socket.clone();
    let app = spawn_app_with(move |s| {
        s.server.uds = Some(path);
        s.security.auth_failures_per_minute = 2;
    })
    .await;
    assert!(
        uds_models(&socket, "lw-a")
            .await
            .starts_with("HTTP/1.1 401")
    );
    assert!(
        uds_models(&socket, "lw-b")
            .await
            .starts_with("HTTP/1.1 401")
    );
    assert!(
        uds_models(&socket, "lw-c")
            .await
            .starts_with("HTTP/1.1 429")
    );
    assert!(
        uds_models(&socket, &app.admin_key)
            .await
            .starts_with("HTTP/1.1 429")
    );
}

#[cfg(unix)]
fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[actix_web::test]
async fn the_sqlite_files_are_private_whether_new_or_existing() {
    use std::os::unix::fs::PermissionsExt;
    if is_postgres() {
        return;
    }
    // A new database: the file, its WAL and shared memory are 0600 whatever the umask.
    let app = spawn_app_with(|_| {}).await;
    app.user_key("someone", "user", None).await;
    let files = app.sqlite_files();
    let names: Vec<_> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for suffix in ["lowart.db", "lowart.db-wal", "lowart.db-shm"] {
        assert!(names.iter().any(|n| n == suffix), "{suffix} in {names:?}");
    }
    for file in &files {
        assert_eq!(mode_of(file), 0o600, "{}", file.display());
    }

    // An existing database left readable by everyone is tightened at start.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("old.db");
    let wal = dir.path().join("old.db-wal");
    for file in [&db, &wal] {
        std::fs::write(file, b"").unwrap();
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let url = format!("sqlite://{}?mode=rwc", db.display());
    let app = spawn_app_with(move |s| s.database.url = lowart::config::Secret::new(url)).await;
    app.user_key("someone", "user", None).await;
    for file in [&db, &wal, &dir.path().join("old.db-shm")] {
        assert_eq!(mode_of(file), 0o600, "{}", file.display());
    }
}

#[actix_web::test]
async fn sqlite_pragmas_hold_on_every_pooled_connection() {
    if is_postgres() {
        return;
    }
    crate::helpers::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
    let mut settings = test_settings(&dir, &url, "unused");
    settings.database.max_connections = 4;
    let db = lowart::startup::connect_and_migrate(&settings)
        .await
        .unwrap();
    // Four transactions at once hold four distinct connections of the pool.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(db.begin().await.unwrap());
    }
    for txn in &held {
        let pragma = |name: &str| {
            Statement::from_string(sea_orm::DatabaseBackend::Sqlite, format!("PRAGMA {name}"))
        };
        let row = txn
            .query_one_raw(pragma("foreign_keys"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get_by_index::<i32>(0).unwrap(), 1, "foreign_keys");
        let row = txn
            .query_one_raw(pragma("synchronous"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            row.try_get_by_index::<i32>(0).unwrap(),
            1,
            "synchronous=NORMAL"
        );
        let row = txn
            .query_one_raw(pragma("journal_mode"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(row.try_get_by_index::<String>(0).unwrap(), "wal");
    }
}

#[actix_web::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app_with(|s| {
        s.telemetry.metrics_token = Some(lowart::config::Secret::new("scrape-me"))
    })
    .await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let res = app
            .client
            .get(app.url("/v1/models"))
            .header("authorization", format!("{scheme} {}", app.admin_key))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{scheme}");
        let res = app
            .client
            .get(app.url("/metrics"))
            .header("authorization", format!("{scheme} scrape-me"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "metrics, {scheme}");
    }
    let res = app
        .client
        .get(app.url("/v1/models"))
        .header("authorization", format!("Bearer\t {}", app.admin_key))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "tab after the scheme");
}

#[actix_web::test]
async fn a_known_path_with_a_wrong_method_is_405_and_an_unknown_path_404() {
    let app = spawn_app_with(|_| {}).await;
    let cases = [
        (reqwest::Method::GET, "/v1/chat/completions", "POST"),
        (reqwest::Method::POST, "/v1/models", "GET"),
        (reqwest::Method::POST, "/healthz", "GET"),
        (reqwest::Method::DELETE, "/admin/users", "POST, GET"),
        (
            reqwest::Method::PUT,
            "/admin/users/bob",
            "GET, PATCH, DELETE",
        ),
        (reqwest::Method::GET, "/admin/keys/key_1", "DELETE"),
        (reqwest::Method::GET, "/admin/users/quota", "POST"),
        (reqwest::Method::POST, "/admin/audit", "GET"),
    ];
    for (method, path, allow) in cases {
        let res = app
            .client
            .request(method.clone(), app.url(path))
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.headers().get("allow").and_then(|v| v.to_str().ok()),
            Some(allow),
            "{method} {path}"
        );
        let error = assert_openai_error(res, 405).await;
        assert_eq!(error["code"], "method_not_allowed", "{method} {path}");
        assert_eq!(error["type"], "invalid_request_error");
    }
    for path in ["/v1/nothing-here", "/admin/nothing", "/nothing"] {
        let res = app.get(path, &app.admin_key).await;
        assert_eq!(
            assert_openai_error(res, 404).await["code"],
            "route_not_found",
            "{path}"
        );
    }
}
