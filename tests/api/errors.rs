//! Every error status of the client API, in the OpenAI error shape; malformed input never
//! panics the server or drops the connection.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{
    assert_anthropic_error, assert_openai_error, spawn_app, spawn_app_with, user_message,
};
use crate::mock_upstream::Reply;

#[actix_web::test]
async fn invalid_bodies_are_400_with_the_offending_param() {
    let app = spawn_app().await;
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("{not json", "invalid_json", None),
        ("[1,2]", "invalid_request", None),
        (
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            "invalid_request",
            Some("model"),
        ),
        (
            r#"{"model":42,"messages":[]}"#,
            "invalid_request",
            Some("model"),
        ),
        (r#"{"model":"mock"}"#, "invalid_request", Some("messages")),
        (
            r#"{"model":"mock","messages":{}}"#,
            "invalid_request",
            Some("messages"),
        ),
        (
            r#"{"model":"mock","messages":[]}"#,
            "invalid_request",
            Some("messages"),
        ),
        (
            r#"{"model":"mock","messages":["hi"]}"#,
            "invalid_request",
            Some("messages[0]"),
        ),
        (
            r#"{"model":"mock","messages":[{"content":"x"}]}"#,
            "invalid_request",
            Some("messages[0].role"),
        ),
        (
            r#"{"model":"mock","messages":[{"role":"user","content":5}]}"#,
            "invalid_request",
            Some("messages[0].content"),
        ),
        (
            r#"{"model":"mock","messages":[{"role":"user"}],"stream":"yes"}"#,
            "invalid_request",
            Some("stream"),
        ),
        (
            r#"{"model":"mock","messages":[{"role":"user"}],"max_tokens":"10"}"#,
            "invalid_request",
            Some("max_tokens"),
        ),
        (
            r#"{"model":"mock","messages":[{"role":"user"}],"temperature":"hot"}"#,
            "invalid_request",
            Some("temperature"),
        ),
        (
            r#"{"model":"mock","messages":[{"role":"user"}],"stream_options":{"include_usage":1}}"#,
            "invalid_request",
            Some("stream_options.include_usage"),
        ),
    ];
    for (body, code, param) in cases {
        let res = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.admin_key)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let error = assert_openai_error(res, 400).await;
        assert_eq!(error["code"], code, "{body}");
        assert_eq!(error["param"].as_str(), param, "{body}");
    }
}

#[actix_web::test]
async fn hostile_bodies_get_4xx_and_the_server_keeps_serving() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 64 * 1024).await;
    let deep = "[".repeat(10_000) + "]".repeat(10_000).as_str();
    let bodies: Vec<Vec<u8>> = vec![
        vec![],
        b"null".to_vec(),
        b"\xff\xfe\x00garbage".to_vec(),
        deep.into_bytes(),
        format!(
            r#"{{"model":"{}","messages":[{{"role":"user","content":"x"}}]}}"#,
            "m".repeat(10_000)
        )
        .into_bytes(),
        br#"{"model":"mock","messages":[{"role":"user","content":"x"}],"n":1e400}"#.to_vec(),
    ];
    for body in bodies {
        let res = app
            .client
            .post(app.url("/v1/chat/completions"))
            .bearer_auth(&app.admin_key)
            .body(body)
            .send()
            .await
            .expect("the connection is not dropped");
        let status = res.status().as_u16();
        assert!((400..500).contains(&status), "{status}");
        assert_openai_error(res, status).await;
    }
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "mock", "messages": user_message("still here")}),
        )
        .await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn oversized_bodies_are_413() {
    let app = spawn_app_with(|s| s.server.max_body_bytes = 1024).await;
    let body = json!({"model": "mock", "messages": user_message(&"x".repeat(2048))});
    let error = assert_openai_error(app.chat(&app.admin_key, &body).await, 413).await;
    assert_eq!(error["code"], "payload_too_large");
    let res = app
        .post_json(
            "/admin/users",
            &app.admin_key,
            &json!({"name": "y".repeat(2048)}),
        )
        .await;
    assert_openai_error(res, 413).await;
}

#[actix_web::test]
async fn missing_unknown_and_malformed_keys_are_401() {
    let app = spawn_app().await;
    let body = json!({"model": "mock", "messages": user_message("x")});
    let res = app
        .client
        .post(app.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        assert_openai_error(res, 401).await["code"],
        "missing_api_key"
    );
    let error = assert_openai_error(app.chat("lw-not-a-real-key", &body).await, 401).await;
    assert_eq!(error["code"], "invalid_api_key");
    let res = app
        .client
        .get(app.url("/v1/models"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .send()
        .await
        .unwrap();
    assert_openai_error(res, 401).await;
    let res = app
        .client
        .get(app.url("/v1/models"))
        .header("x-api-key", &app.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "x-api-key is accepted");
}

#[actix_web::test]
async fn a_key_limited_to_other_models_is_403_and_the_attempt_recorded() {
    let app = spawn_app().await;
    let key = app.user_key("bob", "user", Some(vec!["other"])).await;
    let res = app
        .chat(
            &key,
            &json!({"model": "mock", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(
        assert_openai_error(res, 403).await["code"],
        "model_not_permitted"
    );
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, 403);
    assert_eq!(rows[0].usage_source, "missing");
    assert_eq!(rows[0].user_id.as_deref(), Some("bob"));
}

#[actix_web::test]
async fn unknown_models_and_routes_are_404() {
    let app = spawn_app().await;
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "nope", "messages": user_message("x")}),
        )
        .await;
    let error = assert_openai_error(res, 404).await;
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(error["param"], "model");
    assert_openai_error(app.get("/v1/nothing-here", &app.admin_key).await, 404).await;
    assert_openai_error(app.get("/v1/chat/completions", &app.admin_key).await, 405).await;
    assert_openai_error(app.get("/admin/users/ghost", &app.admin_key).await, 404).await;
}

#[actix_web::test]
async fn upstream_failures_are_502_with_their_class_and_recorded() {
    let app = spawn_app_with(|s| s.routing.max_attempts = 1).await;
    app.add_openai_model("gpt-test", json!({})).await;
    app.upstream.push(Reply::Status(
        500,
        json!({"error": {"message": "boom", "type": "server_error"}}),
    ));
    app.upstream.push(Reply::Status(
        401,
        json!({"error": {"message": "bad key sk-upstream", "type": "invalid_request_error"}}),
    ));
    let body = json!({"model": "gpt-test", "messages": user_message("x")});

    let error = assert_openai_error(app.chat(&app.admin_key, &body).await, 502).await;
    assert_eq!(error["code"], "upstream_5xx");
    let error = assert_openai_error(app.chat(&app.admin_key, &body).await, 502).await;
    assert_eq!(error["code"], "auth");
    assert!(
        !error.to_string().contains("sk-upstream"),
        "vendor detail is not leaked"
    );

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].status, 502);
    assert_eq!(rows[0].error_class.as_deref(), Some("upstream_5xx"));
    assert_eq!(rows[1].error_class.as_deref(), Some("auth"));
}

#[actix_web::test]
async fn client_caused_upstream_errors_keep_their_4xx() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-test", json!({})).await;
    app.upstream.push(Reply::Status(
        400,
        json!({"error": {"message": "This model's maximum context length is 8192 tokens",
        "type": "invalid_request_error", "code": "context_length_exceeded"}}),
    ));
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-test", "messages": user_message("x")}),
        )
        .await;
    let error = assert_openai_error(res, 400).await;
    assert_eq!(error["code"], "context_overflow");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("maximum context length")
    );
}

#[actix_web::test]
async fn an_unreachable_upstream_is_502_connect() {
    let app = spawn_app().await;
    let base_url = format!("{}/v1", crate::helpers::closed_port_url());
    let body = json!({"model_id": "dead", "vendor_type": "openai", "base_url": base_url});
    assert_eq!(
        app.post_json("/admin/models", &app.admin_key, &body)
            .await
            .status(),
        201
    );
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "dead", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(assert_openai_error(res, 502).await["code"], "connect");
}

#[actix_web::test]
async fn a_slow_upstream_is_504_after_request_timeout_ms() {
    let app = spawn_app_with(|s| s.routing.max_attempts = 1).await;
    app.add_openai_model("gpt-slow", json!({"request_timeout_ms": 200}))
        .await;
    app.upstream.push(Reply::Delay(Duration::from_secs(10)));
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-slow", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(
        assert_openai_error(res, 504).await["code"],
        "upstream_timeout"
    );
    let rows = app.usage_rows().await;
    assert_eq!(rows[0].status, 504);
    assert_eq!(rows[0].error_class.as_deref(), Some("timeout"));
}

#[actix_web::test]
async fn a_deployment_at_its_concurrency_cap_is_503() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-one", json!({"max_concurrency": 1}))
        .await;
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    app.upstream.push(Reply::Gated {
        events: vec![crate::mock_upstream::chunk(
            json!({"content": "a"}),
            serde_json::Value::Null,
        )],
        before: 1,
        gate: gate.clone(),
    });
    let first = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-one", "stream": true, "messages": user_message("x")}),
        )
        .await;
    assert_eq!(first.status(), 200);

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-one", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(
        assert_openai_error(res, 503).await["code"],
        "upstream_concurrency_exceeded"
    );

    gate.notify_one();
    assert!(first.text().await.unwrap().ends_with("data: [DONE]\n\n"));
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-one", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn unreadable_openai_answers_are_502_malformed_response_in_each_dialect() {
    let app = spawn_app_with(|s| s.routing.max_attempts = 1).await;
    // Bad answers count against the breaker, rightly; this test looks at each on its own.
    app.add_openai_model("gpt-test", json!({"breaker": {"minimum_calls": 100}}))
        .await;
    let bad = || {
        [
            Reply::Raw {
                content_type: "application/json",
                body: r#"{"id":"x","choices":[{"message":"#.into(),
            },
            Reply::Json(json!({"id": "x", "object": "chat.completion", "model": "m"})),
            Reply::Raw {
                content_type: "text/html",
                body: "<html><body><h1>502 Bad Gateway</h1></body></html>".into(),
            },
        ]
    };
    for reply in bad() {
        app.upstream.push(reply);
        let res = app
            .chat(
                &app.admin_key,
                &json!({"model": "gpt-test", "messages": user_message("hi")}),
            )
            .await;
        let error = assert_openai_error(res, 502).await;
        assert_eq!(error["code"], "malformed_response");
    }
    for reply in bad() {
        app.upstream.push(reply);
        let res = app
            .messages(
                &app.admin_key,
                &json!({"model": "gpt-test", "max_tokens": 10, "messages": user_message("hi")}),
            )
            .await;
        let error = assert_anthropic_error(res, 502).await;
        assert_eq!(error["type"], "api_error");
    }
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 6);
    assert!(
        rows.iter()
            .all(|r| r.status == 502 && r.error_class.as_deref() == Some("malformed_response"))
    );
}
