//! Listeners and lifecycle: the Unix socket listener (and its file's mode), and SIGTERM during a stream (run on
//! the real binary: the stream finishes, every usage row is written, the exit code is 0).

use std::time::Duration;

use sea_orm::{EntityTrait, QueryOrder};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{
    Gateway, MASTER_KEY, fresh_database_url, spawn_app_with, spawn_binary, sse_data, user_message,
};
use crate::mock_upstream::{MockUpstream, Reply, chunk, usage_chunk};

#[actix_web::test]
async fn the_unix_socket_listener_serves_a_completion() {
    let socket_dir = tempfile::tempdir().unwrap();
    let socket = socket_dir.path().join("lowart.sock");
    let path = socket.clone();
    let app = spawn_app_with(move |s| s.server.uds = Some(path)).await;
    assert!(app.address.is_empty(), "no TCP listener in UDS mode");

    let body = json!({"model": "mock", "messages": user_message("over a socket")}).to_string();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: lowart\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        app.admin_key,
        body.len()
    );
    let mut stream = tokio::net::UnixStream::connect(&socket).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();

    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let json_start = response.find("\r\n\r\n").unwrap() + 4;
    let answer: Value = serde_json::from_str(&response[json_start..]).unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "over a socket");
    assert_eq!(app.usage_rows().await.len(), 1);
}

#[actix_web::test]
async fn the_socket_file_gets_the_configured_mode() {
    use std::os::unix::fs::PermissionsExt;
    for mode in [0o600, 0o666] {
        let socket_dir = tempfile::tempdir().unwrap();
        let socket = socket_dir.path().join("lowart.sock");
        let path = socket.clone();
        let _app = spawn_app_with(move |s| {
            s.server.uds = Some(path);
            s.server.uds_mode = mode;
        })
        .await;
        let meta = std::fs::metadata(&socket).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{mode:o}");
        tokio::net::UnixStream::connect(&socket).await.unwrap();
    }
}

#[actix_web::test]
async fn sigterm_during_a_stream_lets_it_finish_and_every_usage_row_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let upstream = MockUpstream::start().await;
    let env = [
        ("DATABASE_URL", db_url.as_str()),
        ("LOWART_MASTER_KEY", MASTER_KEY),
        ("LOWART_ADMIN_KEY", admin_key.as_str()),
    ];
    let Gateway {
        mut child,
        address,
        mut logs,
        ..
    } = spawn_binary(&dir, &env).await;
    let client = reqwest::Client::new();

    let res = client
        .post(format!("{address}/admin/models"))
        .bearer_auth(&admin_key)
        .json(&json!({"model_id": "gpt-test", "vendor_type": "OpenAI", "base_url": format!("{}/v1", upstream.address)}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = client
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(&admin_key)
        .json(&json!({"model": "gpt-test", "messages": user_message("first")}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    upstream.push(Reply::Gated {
        events: vec![
            chunk(json!({"role": "assistant", "content": "one "}), Value::Null),
            chunk(json!({"content": "two"}), Value::Null),
            chunk(json!({}), json!("stop")),
            usage_chunk(9, 2),
        ],
        before: 1,
        gate: gate.clone(),
    });
    let mut res = client
        .post(format!("{address}/v1/chat/completions"))
        .bearer_auth(&admin_key)
        .json(&json!({"model": "gpt-test", "stream": true, "messages": user_message("second")}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut received = String::new();
    while !received.contains("one ") {
        let chunk = res.chunk().await.unwrap().expect("the stream is open");
        received.push_str(&String::from_utf8_lossy(&chunk));
    }

    let pid = child.id().unwrap().to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), logs.recv())
            .await
            .unwrap()
            .unwrap();
        if line.contains("SIGTERM") {
            break;
        }
    }
    gate.notify_one();
    while let Some(chunk) = res.chunk().await.unwrap() {
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(res);
    drop(client);

    let data = sse_data(&received);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "{received}"
    );
    assert!(received.contains("two"));
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");

    let db = sea_orm::Database::connect(db_url.as_str()).await.unwrap();
    let rows = lowart::entities::usage::Entity::find()
        .order_by_asc(lowart::entities::usage::Column::Id)
        .all(&db)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(!rows[0].stream && rows[1].stream);
    assert_eq!(rows[1].status, 200);
    assert_eq!(
        (rows[1].prompt_tokens, rows[1].completion_tokens),
        (Some(9), Some(2))
    );
    assert_eq!(rows[1].usage_source, "reported");
    drop(db);
    if let Ok(base) = std::env::var("TEST_DATABASE_URL") {
        crate::helpers::drop_database(base, db_url);
    }
}
