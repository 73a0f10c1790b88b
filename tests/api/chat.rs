//! Chat completions through an OpenAI deployment, blocking and streamed, with exact usage.

use serde_json::{Value, json};

use crate::helpers::{spawn_app, sse_data, user_message};
use crate::mock_upstream::{Reply, chunk, usage_chunk};

#[actix_web::test]
async fn blocking_completion_is_relayed_and_its_usage_recorded_exactly() {
    let app = spawn_app().await;
    let dep = app
        .add_openai_model(
            "gpt-test",
            json!({"price_input_per_mtok": 2.0, "price_output_per_mtok": 8.0}),
        )
        .await;

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-test", "messages": user_message("hi"), "temperature": 0.2}),
        )
        .await;

    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the mock upstream"
    );
    let received = app.upstream.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].path, "/v1/chat/completions");
    assert_eq!(received[0].body["model"], "gpt-test-upstream");
    assert_eq!(received[0].body["temperature"], 0.2);
    assert_eq!(
        received[0].authorization.as_deref(),
        Some("Bearer sk-upstream-secret-0123456789")
    );

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.request_id, request_id);
    assert_eq!(row.model, "gpt-test");
    assert_eq!(row.deployment_id.as_deref(), dep["id"].as_str());
    assert_eq!(row.user_id.as_deref(), Some("admin"));
    assert!(row.key_id.is_some());
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(11), Some(5), Some(16))
    );
    assert_eq!(row.status, 200);
    assert!(!row.stream);
    assert_eq!(row.usage_source, "reported");
    assert_eq!(row.cost_status, "priced");
    // 11 × $2/Mtok + 5 × $8/Mtok, in micro-dollars.
    assert_eq!(row.cost_micros, Some(11 * 2 + 5 * 8));
    assert!(row.latency_ms >= 0 && row.overhead_ms >= 0.0);
    assert!(row.overhead_ms <= row.latency_ms as f64 + 1.0);
    assert_eq!(row.ttft_ms, None);
    assert_eq!(row.error_class, None);
}

#[actix_web::test]
async fn streamed_completion_is_relayed_event_by_event_without_usage_unless_asked() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-test", json!({})).await;

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-test", "stream": true, "messages": user_message("hi")}),
        )
        .await;

    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = sse_data(&res.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello from the mock upstream");
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none_or(Value::is_null)),
        "usage hidden"
    );
    assert_eq!(
        app.upstream.received()[0].body["stream_options"]["include_usage"],
        true
    );

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].prompt_tokens, rows[0].completion_tokens),
        (Some(11), Some(5))
    );
    assert!(rows[0].stream);
    assert_eq!(rows[0].status, 200);
    assert_eq!(rows[0].usage_source, "reported");
    assert!(rows[0].ttft_ms.is_some());
    assert_eq!(rows[0].cost_status, "unpriced");
}

#[actix_web::test]
async fn include_usage_adds_the_usage_chunk_before_done() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-test", json!({})).await;

    let body = json!({"model": "gpt-test", "stream": true, "stream_options": {"include_usage": true},
        "messages": user_message("hi")});
    let res = app.chat(&app.admin_key, &body).await;

    let data = sse_data(&res.text().await.unwrap());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let usage: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["prompt_tokens"], 11);
    assert_eq!(usage["usage"]["completion_tokens"], 5);
    assert_eq!(usage["choices"], json!([]));
}

#[actix_web::test]
async fn the_builtin_mock_model_answers_blocking_and_streamed() {
    let app = spawn_app().await;

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "mock", "messages": user_message("echo me please")}),
        )
        .await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "echo me please");

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "mock", "stream": true, "messages": user_message("echo me please")}),
        )
        .await;
    let data = sse_data(&res.text().await.unwrap());
    let words: Vec<String> = data[..data.len() - 1]
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .filter(|w| !w.is_empty())
        .collect();
    assert_eq!(words, vec!["echo ", "me ", "please"]);
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.usage_source == "reported" && r.completion_tokens == Some(3))
    );
}

#[actix_web::test]
async fn tool_calls_pass_through_blocking_and_streamed() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-test", json!({})).await;
    let tool_call = json!({"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}});
    app.upstream.push(Reply::Json(json!({
        "id": "chatcmpl-up", "object": "chat.completion", "created": 1, "model": "upstream",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [tool_call]},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}
    })));
    app.upstream.push(Reply::Events(vec![
        chunk(json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": ""}}]}), Value::Null),
        chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":\"Paris\"}"}}]}), Value::Null),
        chunk(json!({}), json!("tool_calls")),
        usage_chunk(20, 7),
    ]));
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-test", "messages": user_message("weather?"), "tools": tools}),
        )
        .await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["tool_calls"][0], tool_call);
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");

    let res = app
        .chat(&app.admin_key, &json!({"model": "gpt-test", "stream": true, "messages": user_message("weather?"), "tools": tools}))
        .await;
    let data = sse_data(&res.text().await.unwrap());
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(
        first["choices"][0]["delta"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    let second: Value = serde_json::from_str(&data[1]).unwrap();
    assert_eq!(
        second["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"Paris\"}"
    );
    assert_eq!(app.upstream.received()[1].body["tools"], tools);

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.prompt_tokens == Some(20) && r.completion_tokens == Some(7))
    );
}

#[actix_web::test]
async fn a_stream_cut_by_the_upstream_ends_with_an_error_event_and_done() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-test", json!({})).await;
    app.upstream.push(Reply::Truncated(vec![chunk(
        json!({"role": "assistant", "content": "partial "}),
        Value::Null,
    )]));

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-test", "stream": true, "messages": user_message("hi")}),
        )
        .await;

    let data = sse_data(&res.text().await.unwrap());
    assert_eq!(data.len(), 3, "{data:?}");
    let error: Value = serde_json::from_str(&data[1]).unwrap();
    assert_eq!(error["error"]["code"], "malformed_response");
    assert_eq!(data[2], "[DONE]");
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, 502);
    assert_eq!(rows[0].error_class.as_deref(), Some("malformed_response"));
    assert_eq!(rows[0].usage_source, "missing");
    assert_eq!(rows[0].prompt_tokens, None);
}

#[actix_web::test]
async fn models_list_shows_only_what_the_key_may_use() {
    let app = spawn_app().await;
    app.add_openai_model("model-a", json!({})).await;
    app.add_openai_model("model-b", json!({})).await;
    let limited = app.user_key("alice", "user", Some(vec!["model-a"])).await;

    let ids = |body: Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    };
    let all: Value = app
        .get("/v1/models", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["object"], "list");
    assert_eq!(ids(all), vec!["mock", "model-a", "model-b"]);
    let some: Value = app.get("/v1/models", &limited).await.json().await.unwrap();
    assert_eq!(ids(some), vec!["model-a"]);
    assert_eq!(
        app.chat(
            &limited,
            &json!({"model": "model-a", "messages": user_message("x")})
        )
        .await
        .status(),
        200
    );
}

#[actix_web::test]
async fn deployment_edits_apply_to_the_next_request_without_restart() {
    let app = spawn_app().await;
    let dep = app.add_openai_model("gpt-test", json!({})).await;
    let id = dep["id"].as_str().unwrap();

    let res = app
        .patch_json(
            &format!("/admin/models/{id}"),
            &app.admin_key,
            &json!({"upstream_model": "renamed"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    app.chat(
        &app.admin_key,
        &json!({"model": "gpt-test", "messages": user_message("x")}),
    )
    .await;
    assert_eq!(app.upstream.received()[0].body["model"], "renamed");

    let res = app
        .patch_json(
            &format!("/admin/models/{id}"),
            &app.admin_key,
            &json!({"enabled": false}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-test", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(res.status(), 404);

    let res = app
        .patch_json(
            &format!("/admin/models/{id}"),
            &app.admin_key,
            &json!({"enabled": true, "model_id": "gpt-new"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-new", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(res.status(), 200);

    assert_eq!(
        app.delete(&format!("/admin/models/{id}"), &app.admin_key)
            .await
            .status(),
        200
    );
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "gpt-new", "messages": user_message("x")}),
        )
        .await;
    assert_eq!(res.status(), 404);
}
