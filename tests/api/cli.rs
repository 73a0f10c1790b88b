//! The command line as a newcomer meets it: first start with nothing configured,
//! `check-config`, `migrate`, `keys create`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{
    Gateway, MASTER_KEY, drop_test_database, fresh_database_url, install_crypto,
    lowart_command as lowart, serve, spawn_binary, terminate, test_settings, user_message,
};

#[actix_web::test]
async fn first_start_creates_everything_prints_an_admin_key_once_and_serves_mock() {
    let dir = tempfile::tempdir().unwrap();
    let Gateway {
        mut child,
        address,
        mut stdout,
        ..
    } = spawn_binary(&dir, &[]).await;
    let admin_key = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), stdout.recv())
            .await
            .unwrap()
            .expect("key printed");
        if let Some(key) = line.split_whitespace().find(|w| w.starts_with("lw-")) {
            break key.to_string();
        }
    };
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(&admin_key)
        .json(&json!({"model": "mock", "messages": user_message("Hello, Lowart")}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "Hello, Lowart");
    assert!(
        client
            .get(format!("{address}/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .is_success()
    );
    drop(client);
    assert!(terminate(&mut child).await.success());

    assert!(dir.path().join("lowart.db").exists());
    let key_file = dir.path().join("lowart.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&key_file).unwrap().len(), 64);

    // The second start keeps the key and prints none.
    let Gateway {
        mut child,
        address,
        mut stdout,
        ..
    } = spawn_binary(&dir, &[]).await;
    let res = reqwest::Client::new()
        .get(format!("{address}/v1/models"))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(terminate(&mut child).await.success());
    while let Some(line) = stdout.recv().await {
        assert!(!line.contains("lw-"), "a second key was printed: {line}");
    }
}

#[test]
fn check_config_masks_secrets_and_names_a_bad_key() {
    let dir = tempfile::tempdir().unwrap();
    let good = lowart()
        .current_dir(dir.path())
        .arg("check-config")
        .env(
            "LOWART_ADMIN_KEY",
            "lw-very-secret-admin-key-at-least-32-chars",
        )
        .env("LOWART_SERVER__LISTEN", "0.0.0.0:9999")
        .output()
        .unwrap();
    assert!(good.status.success());
    let printed = String::from_utf8_lossy(&good.stdout);
    let effective: Value = serde_json::from_str(&printed).unwrap();
    assert_eq!(effective["server"]["listen"], "0.0.0.0:9999");
    assert_eq!(effective["security"]["admin_key"], "***");
    assert!(!printed.contains("very-secret"));

    std::fs::write(
        dir.path().join("bad.toml"),
        "[server]\nlisten = 'nowhere'\n",
    )
    .unwrap();
    let bad = lowart()
        .current_dir(dir.path())
        .args(["--config", "bad.toml", "check-config"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("server.listen"));

    std::fs::write(dir.path().join("typo.toml"), "[databse]\nurl = 'x'\n").unwrap();
    let typo = lowart()
        .current_dir(dir.path())
        .args(["--config", "typo.toml", "check-config"])
        .output()
        .unwrap();
    assert!(!typo.status.success());
    assert!(String::from_utf8_lossy(&typo.stderr).contains("databse"));

    let unset = lowart()
        .current_dir(dir.path())
        .arg("check-config")
        .env("LOWART_DATABASE__URL", "${LOWART_TEST_NOT_SET}")
        .output()
        .unwrap();
    assert!(!unset.status.success());
    let message = String::from_utf8_lossy(&unset.stderr);
    assert!(
        message.contains("database.url") && message.contains("LOWART_TEST_NOT_SET"),
        "{message}"
    );
}

#[test]
fn migrate_creates_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = lowart()
        .current_dir(dir.path())
        .arg("migrate")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}/m.db?mode=rwc", dir.path().display()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = std::fs::read(dir.path().join("m.db")).unwrap_or_default();
    let wal = std::fs::read(dir.path().join("m.db-wal")).unwrap_or_default();
    let all = [db, wal].concat();
    for table in [
        "users",
        "api_keys",
        "deployments",
        "model_fallbacks",
        "usage",
        "audit_log",
    ] {
        let needle = format!("CREATE TABLE \"{table}\"");
        assert!(
            all.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{table}"
        );
    }
}

/// `lowart keys create …` on `db_url` from `dir`: (success, stdout, stderr).
fn keys_create(dir: &tempfile::TempDir, db_url: &str, args: &[&str]) -> (bool, String, String) {
    let out = lowart()
        .current_dir(dir.path())
        .args(["keys", "create"])
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("LOWART_MASTER_KEY", MASTER_KEY)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[actix_web::test]
async fn keys_create_on_a_fresh_database_prints_a_key_the_gateway_then_accepts() {
    install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let (ok, stdout, stderr) = keys_create(
        &dir,
        &db_url,
        &[
            "--user",
            "alice",
            "--name",
            "laptop",
            "--models",
            "mock,other-model",
            "--rpm",
            "30",
            "--expires-at",
            "2999-01-01T00:00:00Z",
        ],
    );
    assert!(ok, "{stderr}");
    let key = stdout.trim().to_string();
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the key on stdout: {stdout}"
    );
    assert!(key.starts_with("lw-") && key.len() == 67, "{key}");
    assert!(
        stderr.contains("key_") && stderr.contains(&key[..10]),
        "{stderr}"
    );
    assert!(stderr.contains("new user `alice`"), "{stderr}");
    assert!(!stderr.contains(&key), "the key is printed once");

    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let address = serve(test_settings(&dir, &db_url, &admin_key)).await;
    let client = reqwest::Client::new();
    let chat = |key: String| {
        client
            .post(format!("{address}/v1/chat/completions"))
            .bearer_auth(key)
            .json(&json!({"model": "mock", "messages": user_message("made on the CLI")}))
            .send()
    };
    let res = chat(key.clone()).await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "made on the CLI");

    let admin_get = |path: &str| {
        client
            .get(format!("{address}{path}"))
            .bearer_auth(&admin_key)
            .send()
    };
    let user: Value = admin_get("/admin/users/alice")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(user["role"], "user");
    let keys: Value = admin_get("/admin/keys?user_id=alice")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let info = &keys["data"][0];
    assert_eq!(info["name"], "laptop");
    assert_eq!(info["models"], json!(["mock", "other-model"]));
    assert_eq!(info["rpm_limit"], 30);
    assert_eq!(info["expires_at"], 32_472_144_000_000_i64);
    assert_eq!(info["prefix"], &key[..10]);

    // A second key for the same user, beside the running gateway, works at once.
    let (ok, second, stderr) = keys_create(&dir, &db_url, &["--user", "alice"]);
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("user `alice`") && !stderr.contains("new user"),
        "{stderr}"
    );
    assert_ne!(second.trim(), key);
    assert_eq!(chat(second.trim().to_string()).await.unwrap().status(), 200);

    let audit: Value = admin_get("/admin/audit")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let by_cli: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor_user_id"] == "cli")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(by_cli, ["key.create", "key.create", "user.create"]);
    drop(client);
    drop_test_database(&db_url);
}

#[test]
fn keys_create_refuses_bad_arguments_clearly_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/k.db?mode=rwc", dir.path().display());
    for (args, expected) in [
        (
            &["--user", "a", "--models", "mock,,b"][..],
            "must not be empty",
        ),
        (&["--user", "a", "--models", ""][..], "must not be empty"),
        (&["--user", "a", "--bogus"][..], "--bogus"),
        (&["--models", "mock"][..], "--user"),
        (&["--user", "  "][..], "must not be empty"),
        (&["--user", "a", "--rpm", "lots"][..], "--rpm"),
        (
            &["--user", "a", "--expires-at", "1800000000"][..],
            "Unix seconds",
        ),
        (
            &["--user", "a", "--expires-at", "2001-01-01T00:00:00Z"][..],
            "not in the future",
        ),
    ] {
        let (ok, stdout, stderr) = keys_create(&dir, &db_url, args);
        assert!(!ok, "{args:?} succeeded");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(!dir.path().join("k.db").exists(), "no database was opened");
}
