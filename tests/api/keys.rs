//! Secrets and keys: where a provider key may be sent (`base_url` changes, the upstream host
//! allow-list), prices, what a key's `prefix` discloses, the bootstrap admin key's life
//! cycle, and the master key's (a lost key file, `lowart rotate-master-key`).

use std::path::Path;

use lowart::config::{ModelSeed, Secret};
use lowart::startup::Application;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{
    Gateway, MASTER_KEY, assert_openai_error, drop_test_database, fresh_database_url,
    install_crypto, lowart_in, printed_master_key, run_to_exit, serve, spawn_app, spawn_app_with,
    spawn_binary, terminate, test_settings, user_message,
};
use crate::mock_upstream::MockUpstream;

const UPSTREAM_SECRET: &str = "sk-upstream-secret-0123456789";

/// A deployment of the mock upstream, created through `base_url` on `address`.
async fn deployment(client: &reqwest::Client, address: &str, admin: &str, base: &str) -> Value {
    let res = client
        .post(format!("{address}/admin/models"))
        .bearer_auth(admin)
        .json(&json!({"model_id": "gpt-test", "vendor_type": "OpenAI",
            "base_url": format!("{base}/v1"), "api_key": UPSTREAM_SECRET}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

#[actix_web::test]
async fn moving_base_url_of_a_deployment_with_a_key_needs_the_key_again() {
    let app = spawn_app().await;
    let dep = app.add_openai_model("gpt-test", json!({})).await;
    let path = format!("/admin/models/{}", dep["id"].as_str().unwrap());
    let operator = app.user_key("olga", "operator", None).await;
    let elsewhere = "http://collector.attacker.invalid/v1";

    for key in [&operator, &app.admin_key] {
        let res = app
            .patch_json(&path, key, &json!({"base_url": elsewhere}))
            .await;
        assert_eq!(assert_openai_error(res, 400).await["param"], "api_key");
    }
    let listed: Value = app
        .get("/admin/models", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"][0]["base_url"], dep["base_url"],
        "nothing changed"
    );
    assert_eq!(listed["data"][0]["has_api_key"], true);
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-test", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.upstream.received().len(),
        1,
        "still the configured upstream"
    );

    // The same base_url is no move; other fields need no key.
    let res = app
        .patch_json(
            &path,
            &operator,
            &json!({"base_url": dep["base_url"], "weight": 2}),
        )
        .await;
    assert_eq!(res.status(), 200);
    // With the key in the same body the move is allowed, and so is clearing the key.
    let other = MockUpstream::start().await;
    let res = app
        .patch_json(
            &path,
            &operator,
            &json!({"base_url": format!("{}/v1", other.address), "api_key": "sk-other-key"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    app.chat(
        &app.admin_key,
        &json!({"model": "gpt-test", "messages": user_message("x")}),
    )
    .await;
    assert_eq!(
        other.received()[0].authorization.as_deref(),
        Some("Bearer sk-other-key")
    );
    let res = app
        .patch_json(
            &path,
            &operator,
            &json!({"base_url": elsewhere, "api_key": null}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let moved: Value = res.json().await.unwrap();
    assert_eq!(moved["has_api_key"], false);
    // Without a stored key there is nothing to protect.
    let res = app
        .patch_json(&path, &operator, &json!({"base_url": dep["base_url"]}))
        .await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn upstream_hosts_limit_where_deployments_point() {
    let app = spawn_app_with(|s| {
        s.security.upstream_hosts = vec!["127.0.0.1".into(), "*.openai.example".into()];
    })
    .await;
    let create = |base_url: &str| {
        json!({"model_id": "gpt-x", "vendor_type": "OpenAI", "base_url": base_url,
            "api_key": UPSTREAM_SECRET})
    };
    for refused in [
        "https://api.attacker.test/v1",
        "https://openai.example/v1",
        "https://api.openai.example.attacker.test/v1",
        "https://api.openai.example@attacker.test/v1",
        "ftp://api.openai.example/v1",
    ] {
        let res = app
            .post_json("/admin/models", &app.admin_key, &create(refused))
            .await;
        assert_eq!(
            assert_openai_error(res, 400).await["param"],
            "base_url",
            "{refused}"
        );
    }
    let dep = app.add_openai_model("gpt-test", json!({})).await;
    let path = format!("/admin/models/{}", dep["id"].as_str().unwrap());
    let res = app
        .patch_json(
            &path,
            &app.admin_key,
            &json!({"base_url": "https://attacker.test/v1", "api_key": "sk-x"}),
        )
        .await;
    assert_eq!(assert_openai_error(res, 400).await["param"], "base_url");
    let res = app
        .patch_json(
            &path,
            &app.admin_key,
            &json!({"base_url": "https://eu.openai.example/v1", "api_key": "sk-x"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let listed: Value = app
        .get("/admin/models", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["data"].as_array().unwrap().len(),
        2,
        "mock + gpt-test"
    );

    // A seed pointing elsewhere stops the start, naming the field.
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let mut settings = test_settings(&dir, &db_url, &lowart::crypto::generate_api_key().unwrap());
    settings.security.upstream_hosts = vec!["api.openai.com".into()];
    settings.models = vec![seed("https://attacker.test/v1", None)];
    let err = Application::build(settings, false)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("base_url"), "{err}");
    drop_test_database(&db_url);
}

/// A `[[models]]` seed, read as the configuration file is.
fn seed(base_url: &str, price_input: Option<f64>) -> ModelSeed {
    serde_json::from_value(json!({"model_id": "seeded", "vendor_type": "OpenAI",
        "base_url": base_url, "api_key": UPSTREAM_SECRET, "price_input_per_mtok": price_input}))
    .unwrap()
}

#[actix_web::test]
async fn negative_and_non_finite_prices_are_refused() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/admin/models",
            &app.admin_key,
            &json!({"model_id": "cheap", "vendor_type": "Mock", "price_input_per_mtok": -1.0}),
        )
        .await;
    assert_eq!(
        assert_openai_error(res, 400).await["param"],
        "price_input_per_mtok"
    );
    let dep = app
        .add_openai_model("gpt-test", json!({"price_output_per_mtok": 2.5}))
        .await;
    let path = format!("/admin/models/{}", dep["id"].as_str().unwrap());
    let res = app
        .patch_json(
            &path,
            &app.admin_key,
            &json!({"price_output_per_mtok": -0.5}),
        )
        .await;
    assert_eq!(
        assert_openai_error(res, 400).await["param"],
        "price_output_per_mtok"
    );
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
        .find(|d| d["model_id"] == "gpt-test")
        .unwrap()
        .clone();
    assert_eq!(stored["price_output_per_mtok"], 2.5);
    let res = app
        .patch_json(
            &path,
            &app.admin_key,
            &json!({"price_output_per_mtok": 0.0}),
        )
        .await;
    assert_eq!(res.status(), 200);

    // Seeds: refused at start (the store) and by the configuration check (non-finite too).
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let mut settings = test_settings(&dir, &db_url, &lowart::crypto::generate_api_key().unwrap());
    settings.models = vec![seed(&format!("{}/v1", app.upstream.address), Some(-3.0))];
    let err = Application::build(settings, false)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("price_input_per_mtok"), "{err}");
    drop_test_database(&db_url);
    for price in ["-3.0", "inf", "nan"] {
        std::fs::write(
            dir.path().join("prices.toml"),
            format!(
                "[[models]]\nmodel_id = 'a'\nvendor_type = 'OpenAI'\nbase_url = 'https://api.openai.com/v1'\nprice_input_per_mtok = {price}\n"
            ),
        )
        .unwrap();
        let out = lowart_in(&dir, &[])
            .args(["--config", "prices.toml", "check-config"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{price}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("models[0].price_input_per_mtok"),
            "{stderr}"
        );
    }
    std::fs::write(
        dir.path().join("hosts.toml"),
        "[security]\nupstream_hosts = ['api.openai.com']\n[[models]]\nmodel_id = 'a'\nvendor_type = 'OpenAI'\nbase_url = 'https://attacker.test/v1'\n",
    )
    .unwrap();
    let out = lowart_in(&dir, &[])
        .args(["--config", "hosts.toml", "check-config"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("models[0].base_url"));
}

#[actix_web::test]
async fn only_generated_keys_show_a_prefix() {
    let chosen = "chosen-admin-key-0123456789-abcdefghij";
    let app = spawn_app_with(|s| s.security.admin_key = Some(Secret::new(chosen))).await;
    let viewer_key = {
        let res = app
            .post_json(
                "/admin/users",
                chosen,
                &json!({"user_id": "vera", "role": "viewer"}),
            )
            .await;
        assert_eq!(res.status(), 201);
        let res = app
            .post_json("/admin/keys", chosen, &json!({"user_id": "vera"}))
            .await;
        assert_eq!(res.status(), 201);
        let created: Value = res.json().await.unwrap();
        let key = created["key"].as_str().unwrap().to_string();
        assert_eq!(created["prefix"].as_str(), key.get(..10));
        key
    };
    let listed = app
        .get("/admin/keys", &viewer_key)
        .await
        .text()
        .await
        .unwrap();
    let audit = app
        .get("/admin/audit", &viewer_key)
        .await
        .text()
        .await
        .unwrap();
    for shown in [&listed, &audit] {
        assert!(
            !shown.contains(&chosen[..6]),
            "part of the admin key shown: {shown}"
        );
    }
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let bootstrap = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["user_id"] == "admin")
        .unwrap();
    assert_eq!(bootstrap["prefix"], Value::Null);
    let vera = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["user_id"] == "vera")
        .unwrap();
    assert_eq!(vera["prefix"].as_str(), viewer_key.get(..10));
}

#[actix_web::test]
async fn short_bootstrap_admin_keys_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let short = [("LOWART_ADMIN_KEY", "lw-very-secret-admin-key")];
    let out = lowart_in(&dir, &short)
        .arg("check-config")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("security.admin_key"));
    let out = run_to_exit(&dir, &short, &["serve"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("security.admin_key"), "{stderr}");
    assert!(!stderr.contains("very-secret"), "{stderr}");
    assert!(
        !dir.path().join("lowart.db").exists(),
        "nothing was started"
    );
}

#[actix_web::test]
async fn a_new_bootstrap_admin_key_revokes_the_one_it_replaces() {
    let app = spawn_app().await;
    let first = app.admin_key.clone();
    // A key an admin made for the admin user is no bootstrap key: it survives.
    let res = app
        .post_json(
            "/admin/keys",
            &first,
            &json!({"user_id": "admin", "name": "ops"}),
        )
        .await;
    let made: Value = res.json().await.unwrap();
    let made = made["key"].as_str().unwrap().to_string();

    let second = lowart::crypto::generate_api_key().unwrap();
    let restarted = start(&app.dir, &app.db_url, &second).await;
    let client = reqwest::Client::new();
    let status = |key: String| {
        let restarted = restarted.clone();
        async move { list_keys(&restarted, &key).await.status() }
    };
    assert_eq!(
        status(first.clone()).await,
        401,
        "the replaced key is revoked"
    );
    assert_eq!(status(second.clone()).await, 200);
    assert_eq!(status(made.clone()).await, 200);

    let keys: Value = list_keys(&restarted, &second).await.json().await.unwrap();
    let bootstrap: Vec<&Value> = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"] == "bootstrap")
        .collect();
    assert_eq!(bootstrap.len(), 2);
    assert!(bootstrap[0]["revoked_at"].is_i64());
    assert!(bootstrap[1]["revoked_at"].is_null());
    let audit: Value = client
        .get(format!("{restarted}/admin/audit"))
        .bearer_auth(&second)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let revoked = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "key.revoke")
        .expect("the revocation is audited");
    assert_eq!(revoked["target_id"], bootstrap[0]["id"]);
    assert_eq!(revoked["actor_user_id"], "system");

    // Starting again with the same key changes nothing.
    let again = start(&app.dir, &app.db_url, &second).await;
    assert_eq!(list_keys(&again, &second).await.status(), 200);
    // Configuring a key made through the admin API registers nothing and revokes nothing.
    let ordinary = start(&app.dir, &app.db_url, &made).await;
    for key in [&second, &made] {
        assert_eq!(list_keys(&ordinary, key).await.status(), 200);
    }
}

/// `GET {address}/admin/keys` with `key`.
async fn list_keys(address: &str, key: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{address}/admin/keys"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

async fn start(dir: &TempDir, db_url: &str, admin_key: &str) -> String {
    serve(test_settings(dir, db_url, admin_key)).await
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Starts the binary, sends one chat to `gpt-test`, stops it; answers the Authorization
/// the upstream received.
async fn chat_through_binary(
    dir: &TempDir,
    env: &[(&str, &str)],
    admin: &str,
    upstream: &MockUpstream,
    create_base: Option<&str>,
) -> Option<String> {
    let Gateway {
        mut child, address, ..
    } = spawn_binary(dir, env).await;
    let client = reqwest::Client::new();
    if let Some(base) = create_base {
        deployment(&client, &address, admin, base).await;
    }
    let res = client
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(admin)
        .json(&json!({"model": "gpt-test", "messages": user_message("x")}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    drop(client);
    assert!(terminate(&mut child).await.success());
    upstream
        .received()
        .last()
        .and_then(|r| r.authorization.clone())
}

#[actix_web::test]
async fn rotate_master_key_reseals_under_a_new_key_file_and_a_lost_key_file_stops_the_start() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let admin = lowart::crypto::generate_api_key().unwrap();
    let env = [
        ("DATABASE_URL", db_url.as_str()),
        ("LOWART_ADMIN_KEY", admin.as_str()),
    ];
    let upstream = MockUpstream::start().await;
    let expected = format!("Bearer {UPSTREAM_SECRET}");

    let sent = chat_through_binary(&dir, &env, &admin, &upstream, Some(&upstream.address)).await;
    assert_eq!(sent.as_deref(), Some(expected.as_str()));
    let key_file = dir.path().join("lowart.key");
    let old = std::fs::read_to_string(&key_file).unwrap();

    let out = run_to_exit(&dir, &env, &["rotate-master-key"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(new.len(), 64);
    assert_ne!(new, old);
    assert_eq!(mode(&key_file), 0o600);
    let old_id = lowart::crypto::MasterKey::from_hex(&old)
        .unwrap()
        .id()
        .to_string();
    let backup = dir.path().join(format!("lowart.key.{old_id}.bak"));
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), old);
    assert_eq!(mode(&backup), 0o600);
    assert!(!dir.path().join("lowart.key.new").exists());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains(&new) && !stdout.contains(&old), "{stdout}");

    let sent = chat_through_binary(&dir, &env, &admin, &upstream, None).await;
    assert_eq!(
        sent.as_deref(),
        Some(expected.as_str()),
        "the same key after a restart"
    );
    assert_eq!(upstream.received().len(), 2);

    // Interrupted between the commit and the rename: the error points at the staged key.
    let staged = dir.path().join("lowart.key.new");
    std::fs::rename(&key_file, &staged).unwrap();
    std::fs::write(&key_file, &old).unwrap();
    let out = run_to_exit(&dir, &env, &["serve"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lowart.key.new holds that key"), "{stderr}");
    std::fs::rename(&staged, &key_file).unwrap();

    // The old key no longer opens the database.
    let out = run_to_exit(
        &dir,
        &[env[0], env[1], ("LOWART_MASTER_KEY", old.as_str())],
        &["serve"],
    )
    .await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sealed under master key"));

    std::fs::remove_file(&key_file).unwrap();
    let out = run_to_exit(&dir, &env, &["serve"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist") && stderr.contains("Restore the key file"),
        "{stderr}"
    );
    assert!(!key_file.exists(), "no new key file was created");
    let out = run_to_exit(&dir, &env, &["rotate-master-key"]).await;
    assert!(!out.status.success(), "nothing to rotate without the key");
    assert!(!key_file.exists());
    drop_test_database(&db_url);
}

#[actix_web::test]
async fn rotating_a_configured_master_key_prints_the_new_one_once() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let admin = lowart::crypto::generate_api_key().unwrap();
    let env = [
        ("DATABASE_URL", db_url.as_str()),
        ("LOWART_ADMIN_KEY", admin.as_str()),
        ("LOWART_MASTER_KEY", MASTER_KEY),
    ];
    let upstream = MockUpstream::start().await;
    let expected = format!("Bearer {UPSTREAM_SECRET}");
    chat_through_binary(&dir, &env, &admin, &upstream, Some(&upstream.address)).await;

    let out = run_to_exit(&dir, &env, &["rotate-master-key"]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let new = printed_master_key(&out);
    assert!(stdout.contains("LOWART_MASTER_KEY"), "{stdout}");
    assert!(!dir.path().join("lowart.key").exists(), "no key file");

    let out = run_to_exit(&dir, &env, &["serve"]).await;
    assert!(!out.status.success(), "the old key is refused");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("sealed under master key"), "{stderr}");
    let rotated = [env[0], env[1], ("LOWART_MASTER_KEY", new.as_str())];
    let sent = chat_through_binary(&dir, &rotated, &admin, &upstream, None).await;
    assert_eq!(sent.as_deref(), Some(expected.as_str()));

    // An explicit key is taken as given.
    let explicit = MASTER_KEY.replace('8', "9");
    let out = run_to_exit(
        &dir,
        &[
            rotated[0],
            rotated[1],
            rotated[2],
            ("LOWART_NEW_MASTER_KEY", explicit.as_str()),
        ],
        &["rotate-master-key"],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&explicit));
    let again = [env[0], env[1], ("LOWART_MASTER_KEY", explicit.as_str())];
    let sent = chat_through_binary(&dir, &again, &admin, &upstream, None).await;
    assert_eq!(sent.as_deref(), Some(expected.as_str()));
    drop_test_database(&db_url);
}

#[actix_web::test]
async fn upgrading_hides_bootstrap_prefixes_and_marks_bootstrap_keys() {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::{ConnectionTrait, Database};
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let chosen = "chosen-admin-key-0123456789-abcdefghij";
    let made = lowart::crypto::generate_api_key().unwrap();
    {
        // A database as the previous release left it.
        let db = Database::connect(db_url.as_str()).await.unwrap();
        Migrator::up(&db, Some(7)).await.unwrap();
        db.execute_unprepared(&format!(
            "INSERT INTO users (id, role, disabled, created_at, updated_at) \
             VALUES ('admin', 'admin', false, 1, 1); \
             INSERT INTO api_keys (id, user_id, name, key_hash, prefix, created_at) VALUES \
             ('key_old_bootstrap', 'admin', 'bootstrap', '{}', '{}', 1), \
             ('key_made', 'admin', 'ops', '{}', '{}', 2); \
             INSERT INTO audit_log (actor_user_id, action, target_type, target_id, created_at) \
             VALUES ('system', 'key.bootstrap', 'api_key', 'key_old_bootstrap', 1);",
            lowart::crypto::hash_api_key_hex(chosen),
            &chosen[..10],
            lowart::crypto::hash_api_key_hex(&made),
            &made[..10],
        ))
        .await
        .unwrap();
        db.close().await.unwrap();
    }

    let upgraded = start(&dir, &db_url, chosen).await;
    let keys: Value = list_keys(&upgraded, chosen).await.json().await.unwrap();
    let prefixes: Vec<&Value> = keys["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| &k["prefix"])
        .collect();
    assert_eq!(prefixes, [&Value::Null, &json!(&made[..10])], "{keys}");

    let next = lowart::crypto::generate_api_key().unwrap();
    let replaced = start(&dir, &db_url, &next).await;
    assert_eq!(list_keys(&replaced, chosen).await.status(), 401);
    assert_eq!(list_keys(&replaced, &made).await.status(), 200);
    assert_eq!(list_keys(&replaced, &next).await.status(), 200);
    drop_test_database(&db_url);
}
