//! The command line as a newcomer meets it: first start with nothing configured,
//! `check-config`, `migrate`.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Gateway, lowart_command as lowart, spawn_binary, terminate, user_message};

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
