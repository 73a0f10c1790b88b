//! The admin API: key lifecycle, roles, secrets at rest, audit log.

use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

use crate::helpers::{
    assert_openai_error, drop_test_database, fresh_database_url, install_crypto, is_postgres,
    serve, spawn_app, test_settings, user_message,
};

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

#[actix_web::test]
async fn a_model_patch_merges_into_the_deployment_and_its_audit_never_holds_the_key() {
    let app = spawn_app().await;
    let dep = app
        .add_openai_model(
            "gpt-test",
            json!({"weight": 3, "price_input_per_mtok": 1.5, "breaker": {"open_ms": 1000}}),
        )
        .await;
    let path = format!("/admin/models/{}", dep["id"].as_str().unwrap());
    assert_eq!(dep["settings"], json!({}));

    // One field (and one field of the breaker) changes; every other one stays.
    let res = app
        .patch_json(
            &path,
            &app.admin_key,
            &json!({"priority": 2, "breaker": {"minimum_calls": 7}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let patched: Value = res.json().await.unwrap();
    assert_eq!(patched["priority"], 2);
    assert_eq!(patched["breaker"]["minimum_calls"], 7);
    assert_eq!(patched["breaker"]["open_ms"], 1000);
    for field in [
        "model_id",
        "vendor_type",
        "base_url",
        "upstream_model",
        "weight",
        "price_input_per_mtok",
        "enabled",
        "has_api_key",
        "settings",
    ] {
        assert_eq!(patched[field], dep[field], "{field}");
    }

    // `null` clears an optional field and resets one with a default.
    let res = app
        .patch_json(
            &path,
            &app.admin_key,
            &json!({"upstream_model": null, "weight": null, "price_input_per_mtok": null}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let cleared: Value = res.json().await.unwrap();
    assert_eq!(cleared["upstream_model"], Value::Null);
    assert_eq!(cleared["price_input_per_mtok"], Value::Null);
    assert_eq!(cleared["weight"], 1);
    assert_eq!(cleared["priority"], 2);
    app.chat(
        &app.admin_key,
        &json!({"model": "gpt-test", "messages": user_message("x")}),
    )
    .await;
    assert_eq!(app.upstream.received()[0].body["model"], "gpt-test");

    // Unknown fields, at the top or inside an object, are a 400 naming them; nothing changes.
    for (body, param) in [
        (json!({"priority": 5, "wieght": 2}), "wieght"),
        (
            json!({"priority": 5, "breaker": {"opn_ms": 1}}),
            "breaker.opn_ms",
        ),
        (
            json!({"priority": 5, "settings": {"version": "1"}}),
            "settings.version",
        ),
        (json!({"priority": "high"}), "priority"),
    ] {
        let res = app.patch_json(&path, &app.admin_key, &body).await;
        assert_eq!(
            assert_openai_error(res, 400).await["param"],
            param,
            "{body}"
        );
    }
    let listed: Value = app
        .get("/admin/models", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    let stored = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == dep["id"])
        .unwrap()
        .clone();
    assert_eq!(stored, cleared, "refused patches change nothing");

    // A new key is audited as "set", a cleared one as "cleared"; the secret never is.
    let rotated = "sk-rotated-upstream-secret-987654321";
    let res = app
        .patch_json(&path, &app.admin_key, &json!({"api_key": rotated}))
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .patch_json(&path, &app.admin_key, &json!({"api_key": null}))
        .await;
    let keyless: Value = res.json().await.unwrap();
    assert_eq!(keyless["has_api_key"], false);
    let audit: Value = app
        .get("/admin/audit", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    let text = audit.to_string();
    assert!(!text.contains(rotated) && !text.contains("sk-upstream-secret"));
    let updates: Vec<&Value> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "model.update")
        .map(|e| &e["details"])
        .collect();
    for expected in [
        json!({"priority": 2, "breaker": {"minimum_calls": 7}}),
        json!({"upstream_model": null, "weight": null, "price_input_per_mtok": null}),
        json!({"api_key": "set"}),
        json!({"api_key": "cleared"}),
    ] {
        assert!(updates.contains(&&expected), "{expected} in {updates:?}");
    }
    assert_eq!(updates.len(), 4, "refused patches are not audited");
    let created = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "model.create")
        .unwrap();
    assert_eq!(created["details"]["api_key"], "set");
}

#[actix_web::test]
async fn upgrading_moves_each_deployments_settings_into_its_config_and_back() {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::Database;
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let breaker = json!({"window_size": 10, "window_ms": 0, "failure_rate_threshold": 0.5,
        "minimum_calls": 3, "open_ms": 1000, "half_open_probes": 1});
    let db = Database::connect(db_url.as_str()).await.unwrap();
    // A database as the previous release left it.
    Migrator::up(&db, Some(8)).await.unwrap();
    db.execute_unprepared(&format!(
        "INSERT INTO deployments (id, model_id, vendor_type, base_url, upstream_model, weight, \
         priority, price_input_per_mtok, price_output_per_mtok, connect_timeout_ms, \
         request_timeout_ms, max_concurrency, enabled, idle_timeout_ms, breaker, created_at, \
         updated_at) VALUES \
         ('dep_old', 'old-model', 'OpenAI', 'https://api.openai.com/v1', 'gpt-4o', 4, 1, 2.5, \
          NULL, 5000, NULL, 8, true, 7000, '{breaker}', 1, 2), \
         ('dep_plain', 'plain', 'Mock', NULL, NULL, 1, 0, NULL, NULL, NULL, NULL, NULL, false, \
          NULL, NULL, 3, 4);"
    ))
    .await
    .unwrap();

    let configs = |db: sea_orm::DatabaseConnection| async move {
        let rows = db
            .query_all_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT config FROM deployments ORDER BY id",
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|r| serde_json::from_str(&r.try_get::<String>("", "config").unwrap()).unwrap())
            .collect::<Vec<Value>>()
    };
    Migrator::up(&db, None).await.unwrap();
    let moved = json!({"base_url": "https://api.openai.com/v1", "upstream_model": "gpt-4o",
        "weight": 4, "priority": 1, "price_input_per_mtok": 2.5, "connect_timeout_ms": 5000,
        "max_concurrency": 8, "idle_timeout_ms": 7000, "breaker": breaker});
    let plain = json!({"weight": 1, "priority": 0});
    assert_eq!(configs(db.clone()).await, [moved.clone(), plain.clone()]);

    // Down to migration 8 and up again: the same values.
    let after_config = Migrator::get_migration_files().len() - 9;
    Migrator::down(&db, Some(u32::try_from(after_config + 1).unwrap()))
        .await
        .unwrap();
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT weight, max_concurrency, idle_timeout_ms, price_output_per_mtok, breaker \
             FROM deployments WHERE id = 'dep_old'",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i32>("", "weight").unwrap(), 4);
    assert_eq!(
        row.try_get::<Option<i32>>("", "max_concurrency").unwrap(),
        Some(8)
    );
    assert_eq!(
        row.try_get::<Option<i64>>("", "idle_timeout_ms").unwrap(),
        Some(7000)
    );
    assert_eq!(
        row.try_get::<Option<f64>>("", "price_output_per_mtok")
            .unwrap(),
        None
    );
    let text = row
        .try_get::<Option<String>>("", "breaker")
        .unwrap()
        .unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), breaker);
    Migrator::up(&db, None).await.unwrap();
    assert_eq!(configs(db.clone()).await, [moved, plain]);
    db.close().await.unwrap();

    // The gateway reads them as they were.
    let admin = lowart::crypto::generate_api_key().unwrap();
    let address = serve(test_settings(&dir, &db_url, &admin)).await;
    let listed: Value = reqwest::Client::new()
        .get(format!("{address}/admin/models"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let data = listed["data"].as_array().unwrap();
    assert_eq!(data.len(), 2, "{listed}");
    let old = data.iter().find(|d| d["id"] == "dep_old").unwrap();
    for (field, value) in [
        ("model_id", json!("old-model")),
        ("vendor_type", json!("OpenAI")),
        ("upstream_model", json!("gpt-4o")),
        ("weight", json!(4)),
        ("priority", json!(1)),
        ("price_input_per_mtok", json!(2.5)),
        ("price_output_per_mtok", Value::Null),
        ("connect_timeout_ms", json!(5000)),
        ("request_timeout_ms", Value::Null),
        ("max_concurrency", json!(8)),
        ("idle_timeout_ms", json!(7000)),
        ("breaker", breaker.clone()),
        ("enabled", json!(true)),
        ("has_api_key", json!(false)),
        ("settings", json!({})),
        ("created_at", json!(1)),
    ] {
        assert_eq!(old[field], value, "{field}");
    }
    let plain = data.iter().find(|d| d["id"] == "dep_plain").unwrap();
    assert_eq!(plain["enabled"], false);
    assert_eq!(plain["vendor_type"], "Mock");
    assert_eq!(plain["weight"], 1);
    drop_test_database(&db_url);
}
