//! Inbound TLS on the real binary: certificates made here with rcgen (a CA and a leaf for
//! `localhost`/`127.0.0.1`); a client trusting only the test CA gets a completion over
//! HTTPS; SIGHUP swaps in a new pair for new handshakes while a stream opened before it
//! goes on; a bad pair on SIGHUP keeps the old one; a bad pair at start stops the start.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{
    Gateway, MASTER_KEY, fresh_database_url, lowart_command, spawn_binary, sse_data, user_message,
};
use crate::mock_upstream::{MockUpstream, Reply, chunk, usage_chunk};

/// A test certificate authority.
fn test_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf for `localhost` and `127.0.0.1` signed by `ca`: (certificate PEM, key PEM).
fn leaf(ca: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A client that trusts only `ca`.
fn client_trusting(ca: &CertifiedIssuer<'static, KeyPair>) -> reqwest::Client {
    let root = reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([root])
        .build()
        .unwrap()
}

/// Writes a pair through a temporary file renamed into place (as a certificate manager
/// would), so the gateway never reads half a file.
fn install_pair(dir: &Path, (cert, key): &(String, String)) {
    for (name, contents) in [("cert.pem", cert), ("key.pem", key)] {
        let temp = dir.join(format!("{name}.new"));
        std::fs::write(&temp, contents).unwrap();
        std::fs::rename(&temp, dir.join(name)).unwrap();
    }
}

fn sighup(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Waits for a log line containing `needle`.
async fn wait_for_log(gateway: &mut Gateway, needle: &str) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), gateway.logs.recv())
            .await
            .unwrap_or_else(|_| panic!("no log line with `{needle}`"))
            .expect("the gateway is running");
        if line.contains(needle) {
            return line;
        }
    }
}

async fn completion(client: &reqwest::Client, address: &str, key: &str) -> reqwest::Result<Value> {
    client
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(key)
        .json(&json!({"model": "mock", "messages": user_message("over TLS")}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

#[actix_web::test]
async fn https_serves_a_completion_and_sighup_swaps_the_certificate_without_dropping_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let upstream = MockUpstream::start().await;
    let first_ca = test_ca("Lowart test CA one");
    install_pair(dir.path(), &leaf(&first_ca));
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let env = [
        ("DATABASE_URL", db_url.as_str()),
        ("LOWART_MASTER_KEY", MASTER_KEY),
        ("LOWART_ADMIN_KEY", admin_key.as_str()),
        ("LOWART_SERVER__TLS_CERT", cert.to_str().unwrap()),
        ("LOWART_SERVER__TLS_KEY", key.to_str().unwrap()),
    ];
    let mut gateway = spawn_binary(&dir, &env).await;
    let address = gateway.address.replace("http://", "https://");

    // Over HTTPS with the test CA: a completion from the built-in mock model.
    let first = client_trusting(&first_ca);
    let answer = completion(&first, &address, &admin_key).await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "over TLS");
    // Plain HTTP is not served on the TLS port.
    let plain = reqwest::Client::new()
        .get(format!("{}/healthz", gateway.address))
        .send()
        .await;
    assert!(
        plain.is_err() || plain.is_ok_and(|r| !r.status().is_success()),
        "plain HTTP must not be answered successfully"
    );

    // A stream opened before the reload, held open by the upstream.
    let res = first
        .post(format!("{address}/admin/models"))
        .bearer_auth(&admin_key)
        .json(&json!({"model_id": "gpt-test", "vendor_type": "OpenAI",
            "base_url": format!("{}/v1", upstream.address)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let gate = Arc::new(tokio::sync::Notify::new());
    upstream.push(Reply::Gated {
        events: vec![
            chunk(
                json!({"role": "assistant", "content": "before "}),
                Value::Null,
            ),
            chunk(json!({"content": "after"}), Value::Null),
            chunk(json!({}), json!("stop")),
            usage_chunk(5, 2),
        ],
        before: 1,
        gate: gate.clone(),
    });
    let mut stream = first
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(&admin_key)
        .json(&json!({"model": "gpt-test", "stream": true, "messages": user_message("hold")}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut received = String::new();
    while !received.contains("before ") {
        let chunk = stream.chunk().await.unwrap().expect("the stream is open");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }

    // A new pair from another CA, then SIGHUP.
    let second_ca = test_ca("Lowart test CA two");
    install_pair(dir.path(), &leaf(&second_ca));
    sighup(&gateway.child);
    wait_for_log(&mut gateway, "TLS certificate reloaded").await;

    // New handshakes get the new certificate: a client trusting only the new CA gets in,
    // a new client trusting only the old CA does not.
    let second = client_trusting(&second_ca);
    let answer = completion(&second, &address, &admin_key).await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "over TLS");
    let error = completion(&client_trusting(&first_ca), &address, &admin_key)
        .await
        .unwrap_err();
    assert!(error.is_connect() || error.is_request(), "{error:?}");

    // The stream opened before the reload was not dropped: it finishes.
    gate.notify_one();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(received.contains("after"), "{received}");
    assert_eq!(
        sse_data(&received).last().map(String::as_str),
        Some("[DONE]")
    );

    // A broken pair on SIGHUP is reported and the pair in use stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    sighup(&gateway.child);
    let line = wait_for_log(&mut gateway, "not reloaded").await;
    assert!(line.contains("cert.pem"), "{line}");
    let fresh = client_trusting(&second_ca);
    completion(&fresh, &address, &admin_key).await.unwrap();

    crate::helpers::terminate(&mut gateway.child).await;
    if let Ok(base) = std::env::var("TEST_DATABASE_URL") {
        crate::helpers::drop_database(base, db_url);
    }
}

/// Runs `lowart serve` (or another command) in `dir` with the TLS pair named and answers
/// its exit status and stderr.
fn run_with_pair(dir: &TempDir, args: &[&str], cert: &Path, key: &Path) -> (bool, String) {
    let db = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("lowart.db").display()
    );
    let output = lowart_command()
        .args(args)
        .current_dir(dir.path())
        .env("LOWART_SERVER__LISTEN", "127.0.0.1:0")
        .env("LOWART_SERVER__TLS_CERT", cert)
        .env("LOWART_SERVER__TLS_KEY", key)
        .env("DATABASE_URL", db)
        .env("LOWART_MASTER_KEY", MASTER_KEY)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_bad_pair_at_start_stops_serve_and_check_config_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = test_ca("Lowart test CA");
    let (cert_pem, key_pem) = leaf(&ca);
    let (_, other_key_pem) = leaf(&ca);
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let other_key = dir.path().join("other-key.pem");
    let garbage = dir.path().join("garbage.pem");
    let missing = dir.path().join("missing.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    std::fs::write(&key, key_pem).unwrap();
    std::fs::write(&other_key, other_key_pem).unwrap();
    std::fs::write(&garbage, "hello").unwrap();

    for args in [&["serve"][..], &["check-config"][..]] {
        let (ok, stderr) = run_with_pair(&dir, args, &missing, &key);
        assert!(!ok, "{args:?}: {stderr}");
        assert!(
            stderr.contains("server.tls_cert") && stderr.contains("missing.pem"),
            "{args:?}: {stderr}"
        );

        let (ok, stderr) = run_with_pair(&dir, args, &garbage, &key);
        assert!(!ok, "{args:?}: {stderr}");
        assert!(stderr.contains("garbage.pem"), "{args:?}: {stderr}");

        let (ok, stderr) = run_with_pair(&dir, args, &cert, &garbage);
        assert!(!ok, "{args:?}: {stderr}");
        assert!(
            stderr.contains("server.tls_key") && stderr.contains("garbage.pem"),
            "{args:?}: {stderr}"
        );

        let (ok, stderr) = run_with_pair(&dir, args, &cert, &other_key);
        assert!(!ok, "{args:?}: {stderr}");
        assert!(
            stderr.contains("does not match") && stderr.contains("other-key.pem"),
            "{args:?}: {stderr}"
        );
    }
    // A good pair passes check-config.
    let (ok, stderr) = run_with_pair(&dir, &["check-config"], &cert, &key);
    assert!(ok, "{stderr}");
    // Nothing was created by the failed starts: TLS is checked before the database.
    assert!(!dir.path().join("lowart.db").exists());
}

#[test]
fn tls_needs_both_files_and_a_tcp_listener() {
    let output = lowart_command()
        .arg("check-config")
        .env("LOWART_SERVER__TLS_CERT", "/tmp/cert.pem")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.tls_key"), "{stderr}");

    let output = lowart_command()
        .arg("check-config")
        .env("LOWART_SERVER__TLS_CERT", "/tmp/cert.pem")
        .env("LOWART_SERVER__TLS_KEY", "/tmp/key.pem")
        .env("LISTEN_MODE", "UDS")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("server.tls_cert") && stderr.contains("Unix socket"),
        "{stderr}"
    );
}
