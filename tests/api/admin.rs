//! The admin API: key lifecycle, roles, secrets at rest, audit log.

use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

use crate::helpers::{assert_openai_error, is_postgres, spawn_app, user_message};

#[actix_web::test]
async fn a_key_works_until_revoked_and_is_refused_on_the_very_next_request() {
    let app = spawn_app().await;
    let res = app
        .post_json("/admin/users", &app.admin_key, &json!({"user_id": "carol"}))
        .await;
    assert_eq!(res.status(), 201);
    let res = app
        .post_json(
            "/admin/keys",
            &app.admin_key,
            &json!({"user_id": "carol", "name": "laptop"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let created: Value = res.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_string();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(key.len(), 67);
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    let body = json!({"model": "mock", "messages": user_message("x")});

    assert_eq!(app.chat(&key, &body).await.status(), 200);
    assert_eq!(
        app.chat(&key, &body).await.status(),
        200,
        "served from the cache"
    );
    let listed: Value = app
        .get("/admin/keys?user_id=carol", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(
        !listed.to_string().contains(&key),
        "the secret is never listed"
    );
    assert!(listed["data"][0].get("key").is_none());

    let res = app
        .delete(&format!("/admin/keys/{id}"), &app.admin_key)
        .await;
    assert_eq!(res.status(), 200);
    let revoked: Value = res.json().await.unwrap();
    assert!(revoked["revoked_at"].is_i64());

    let error = assert_openai_error(app.chat(&key, &body).await, 401).await;
    assert_eq!(error["code"], "invalid_api_key");
}

#[actix_web::test]
async fn expired_keys_and_disabled_users_are_refused() {
    let app = spawn_app().await;
    app.post_json("/admin/users", &app.admin_key, &json!({"user_id": "dave"}))
        .await;
    let res = app
        .post_json(
            "/admin/keys",
            &app.admin_key,
            &json!({"user_id": "dave", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    let expired = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"model": "mock", "messages": user_message("x")});
    assert_eq!(
        assert_openai_error(app.chat(&expired, &body).await, 401).await["code"],
        "key_expired"
    );

    let res = app
        .post_json("/admin/keys", &app.admin_key, &json!({"user_id": "dave"}))
        .await;
    let live = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(app.chat(&live, &body).await.status(), 200);
    assert_eq!(
        app.delete("/admin/users/dave", &app.admin_key)
            .await
            .status(),
        200
    );
    assert_openai_error(app.chat(&live, &body).await, 401).await;

    let res = app
        .post_json("/admin/keys", &app.admin_key, &json!({"user_id": "nobody"}))
        .await;
    assert_openai_error(res, 404).await;
}

#[actix_web::test]
async fn a_viewer_can_read_the_admin_api_but_not_change_it() {
    let app = spawn_app().await;
    let viewer = app.user_key("vera", "viewer", None).await;
    let user = app.user_key("ursula", "user", None).await;

    for path in [
        "/admin/users",
        "/admin/users/vera",
        "/admin/keys",
        "/admin/models",
        "/admin/audit",
    ] {
        assert_eq!(
            app.get(path, &viewer).await.status(),
            200,
            "viewer reads {path}"
        );
        let error = assert_openai_error(app.get(path, &user).await, 403).await;
        assert_eq!(error["code"], "admin_forbidden");
    }
    let writes = [
        ("/admin/users", json!({"user_id": "x"})),
        (
            "/admin/users/quota",
            json!({"user_id": "x", "rpm_limit": 5}),
        ),
        ("/admin/keys", json!({"user_id": "vera"})),
        (
            "/admin/models",
            json!({"model_id": "m", "vendor_type": "mock"}),
        ),
    ];
    for (path, body) in writes {
        assert_openai_error(app.post_json(path, &viewer, &body).await, 403).await;
    }
    let res = app
        .patch_json("/admin/users/vera", &viewer, &json!({"role": "admin"}))
        .await;
    assert_openai_error(res, 403).await;
    let users: Value = app
        .get("/admin/users", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    assert!(
        users["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| u["user_id"] != "x")
    );
    // A viewer's key still serves chat.
    assert_eq!(
        app.chat(
            &viewer,
            &json!({"model": "mock", "messages": user_message("x")})
        )
        .await
        .status(),
        200
    );
}

#[actix_web::test]
async fn users_can_be_updated_and_quota_upserted() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/admin/users/quota",
            &app.admin_key,
            &json!({"user_id": "user_123", "rpm_limit": 100, "token_quota": 5000000}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let user: Value = res.json().await.unwrap();
    assert_eq!(
        (user["rpm_limit"].as_i64(), user["token_quota"].as_i64()),
        (Some(100), Some(5_000_000))
    );
    let res = app
        .patch_json(
            "/admin/users/user_123",
            &app.admin_key,
            &json!({"name": "Ops", "rpm_limit": null}),
        )
        .await;
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["name"], "Ops");
    assert!(user["rpm_limit"].is_null());
    assert_eq!(user["token_quota"], 5_000_000);
    let res = app
        .post_json(
            "/admin/users",
            &app.admin_key,
            &json!({"user_id": "user_123"}),
        )
        .await;
    assert_openai_error(res, 409).await;
    let res = app
        .post_json("/admin/users", &app.admin_key, &json!({"role": "wizard"}))
        .await;
    assert_eq!(assert_openai_error(res, 400).await["param"], "role");
    let res = app
        .post_json("/admin/users", &app.admin_key, &json!({"usr_id": "typo"}))
        .await;
    assert_eq!(assert_openai_error(res, 400).await["param"], "usr_id");
}

#[actix_web::test]
async fn deployment_keys_are_sealed_at_rest_never_returned_and_sent_upstream() {
    let app = spawn_app().await;
    let secret = "sk-upstream-secret-0123456789";
    let created = app.add_openai_model("gpt-test", json!({})).await;
    assert!(!created.to_string().contains(secret));
    assert!(created.get("api_key").is_none());
    assert_eq!(created["has_api_key"], true);
    let listed = app
        .get("/admin/models", &app.admin_key)
        .await
        .text()
        .await
        .unwrap();
    assert!(!listed.contains(secret) && listed.contains("gpt-test"));
    let audit = app
        .get("/admin/audit", &app.admin_key)
        .await
        .text()
        .await
        .unwrap();
    assert!(!audit.contains(secret));

    app.chat(
        &app.admin_key,
        &json!({"model": "gpt-test", "messages": user_message("x")}),
    )
    .await;
    assert_eq!(
        app.upstream.received()[0].authorization.as_deref(),
        Some(format!("Bearer {secret}").as_str())
    );

    if is_postgres() {
        let db = app.db().await;
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT d::text AS t FROM deployments d UNION ALL SELECT a::text FROM audit_log a",
            ))
            .await
            .unwrap();
        assert!(rows.len() >= 2);
        for row in rows {
            let text: String = row.try_get("", "t").unwrap();
            assert!(
                !text.contains(secret),
                "clear secret in the database: {text}"
            );
        }
    } else {
        let files = app.sqlite_files();
        assert!(!files.is_empty());
        let mut scanned = 0;
        for file in files {
            let bytes = std::fs::read(&file).unwrap();
            scanned += bytes.len();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "clear secret in {}",
                file.display()
            );
        }
        assert!(scanned > 0);
    }
}

#[actix_web::test]
async fn every_admin_mutation_is_audited() {
    let app = spawn_app().await;
    app.post_json("/admin/users", &app.admin_key, &json!({"user_id": "erin"}))
        .await;
    let key: Value = app
        .post_json("/admin/keys", &app.admin_key, &json!({"user_id": "erin"}))
        .await
        .json()
        .await
        .unwrap();
    app.delete(
        &format!("/admin/keys/{}", key["id"].as_str().unwrap()),
        &app.admin_key,
    )
    .await;
    let dep = app.add_openai_model("gpt-test", json!({})).await;
    let id = dep["id"].as_str().unwrap();
    app.patch_json(
        &format!("/admin/models/{id}"),
        &app.admin_key,
        &json!({"weight": 3}),
    )
    .await;
    app.delete(&format!("/admin/models/{id}"), &app.admin_key)
        .await;

    let audit: Value = app
        .get("/admin/audit", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for expected in [
        "user.create",
        "key.create",
        "key.revoke",
        "model.create",
        "model.update",
        "model.delete",
    ] {
        assert!(actions.contains(&expected), "{expected} in {actions:?}");
    }
    let by_admin = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor_user_id"] == "admin")
        .count();
    assert_eq!(by_admin, 6);
}
