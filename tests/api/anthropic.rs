//! Anthropic both ways: OpenAI clients on Anthropic deployments (`POST {base}/v1/messages`
//! with `x-api-key` and `anthropic-version`), Anthropic clients (`POST /v1/messages`) on
//! OpenAI deployments and on the built-in `mock`, errors in each surface's own shape,
//! fallbacks across vendors, and bad vendor answers. The mock upstream speaks both wire
//! formats; the first tests check that it does, against the gateway-free rig.

use serde_json::{Value, json};

use crate::helpers::{
    ANTHROPIC_VERSION, TestApp, assert_anthropic_error, assert_anthropic_error_body,
    assert_openai_error, closed_port_url, spawn_app, spawn_app_with, sse_data, sse_events,
    streamed_content, user_message,
};
use crate::mock_upstream::{
    MockUpstream, Reply, anthropic_error, anthropic_message, anthropic_text_events, chunk,
    error_event, message_start, text_block_start, text_delta,
};

const UPSTREAM_OPENAI_TEXT: &str = "Hello from the mock upstream";

/// An Anthropic request body: `max_tokens` and one user message.
fn ask_messages(model: &str, text: &str) -> Value {
    json!({"model": model, "max_tokens": 256,
        "messages": [{"role": "user", "content": text}]})
}

fn ask_chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": user_message(text)})
}

/// Content as a list of blocks/parts: a string is one text block.
fn blocks(content: &Value) -> Vec<Value> {
    match content {
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(items) => items.clone(),
        _ => Vec::new(),
    }
}

/// The text of content in either dialect (a string, or text blocks/parts joined).
fn text_of(content: &Value) -> String {
    blocks(content)
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect()
}

fn roles(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .expect("messages array")
        .iter()
        .map(|m| m["role"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The first block of `type` in an Anthropic message's content.
fn block_of_type(message: &Value, kind: &str) -> Value {
    blocks(&message["content"])
        .into_iter()
        .find(|b| b["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} block in {message}"))
}

/// The get_weather tool as an OpenAI client offers it.
fn openai_tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}}}])
}

/// The get_weather tool as an Anthropic client offers it.
fn anthropic_tools() -> Value {
    json!([{"name": "get_weather", "description": "Current weather in a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
            "required": ["city"]}}])
}

/// A tool_use answer whose input arrives in three pieces when streamed.
fn weather_tool_use() -> Reply {
    Reply::AnthropicToolUse {
        id: "toolu_01".into(),
        name: "get_weather".into(),
        input_json_chunks: vec!["{\"ci".into(), "ty\": \"Par".into(), "is\"}".into()],
        input_tokens: 40,
        output_tokens: 12,
    }
}

/// The chunks of an OpenAI stream, `[DONE]` asserted last and left out.
fn openai_chunks(body: &str) -> Vec<Value> {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).expect("chunk JSON"))
        .collect()
}

fn finish_reasons(chunks: &[Value]) -> Vec<String> {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["finish_reason"].as_str().map(String::from))
        .collect()
}

/// Asserts the documented order of an Anthropic stream (pings ignored): message_start,
/// then content blocks (start, at least one delta, stop), message_delta, message_stop;
/// every event's data carries its name as `type`. Answers the events without pings.
fn assert_anthropic_stream(body: &str) -> Vec<(String, Value)> {
    let events: Vec<(String, Value)> = sse_events(body)
        .into_iter()
        .filter(|(name, _)| name != "ping")
        .collect();
    for (name, data) in &events {
        assert_eq!(data["type"], name.as_str(), "event {name}: {data}");
    }
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"), "{names:?}");
    assert_eq!(
        names[names.len().saturating_sub(2)..],
        ["message_delta", "message_stop"],
        "{names:?}"
    );
    let mut blocks = &names[1..names.len() - 2];
    assert!(!blocks.is_empty(), "at least one content block: {names:?}");
    while !blocks.is_empty() {
        assert_eq!(blocks[0], "content_block_start", "{names:?}");
        let deltas = blocks[1..]
            .iter()
            .take_while(|n| **n == "content_block_delta")
            .count();
        assert!(deltas >= 1, "a block has deltas: {names:?}");
        assert_eq!(
            blocks.get(1 + deltas),
            Some(&"content_block_stop"),
            "{names:?}"
        );
        blocks = &blocks[2 + deltas..];
    }
    let start = &events[0].1["message"];
    assert_eq!(start["role"], "assistant");
    assert_eq!(start["type"], "message");
    events
}

/// The text of an Anthropic stream's text_delta events, joined.
fn streamed_text(events: &[(String, Value)]) -> String {
    events
        .iter()
        .filter(|(n, d)| n == "content_block_delta" && d["delta"]["type"] == "text_delta")
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect()
}

fn message_delta_of(events: &[(String, Value)]) -> Value {
    events
        .iter()
        .find(|(n, _)| n == "message_delta")
        .map(|(_, d)| d.clone())
        .expect("a message_delta event")
}

/// Asserts a blocking Anthropic answer with one text block; answers the body.
async fn assert_text_message(res: reqwest::Response, text: &str) -> Value {
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.expect("message JSON");
    assert_eq!(body["type"], "message", "{body}");
    assert_eq!(body["role"], "assistant", "{body}");
    assert!(
        body["id"].as_str().is_some_and(|id| !id.is_empty()),
        "{body}"
    );
    assert_eq!(text_of(&body["content"]), text, "{body}");
    assert!(
        blocks(&body["content"]).iter().all(|b| b["type"] == "text"),
        "{body}"
    );
    assert_eq!(body["stop_reason"], "end_turn", "{body}");
    body
}

// The rig itself: the mock upstream speaks the Messages API as documented.

#[actix_web::test]
async fn the_mock_upstream_speaks_anthropic_messages_blocking_and_streamed() {
    crate::helpers::install_crypto();
    let upstream = MockUpstream::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/messages", upstream.address);
    let post = |body: Value| {
        client
            .post(&url)
            .header("x-api-key", "sk-ant-test")
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(&body)
            .send()
    };

    let body: Value = post(ask_messages("claude", "hi"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["type"], "message");
    assert_eq!(
        text_of(&body["content"]),
        "Hello from the mock Anthropic upstream"
    );
    assert_eq!(
        body["usage"],
        json!({"input_tokens": 13, "output_tokens": 6})
    );

    let mut streamed = ask_messages("claude", "hi");
    streamed["stream"] = json!(true);
    let res = post(streamed.clone()).await.unwrap();
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = assert_anthropic_stream(&res.text().await.unwrap());
    assert_eq!(
        streamed_text(&events),
        "Hello from the mock Anthropic upstream"
    );
    assert_eq!(message_delta_of(&events)["usage"]["output_tokens"], 6);

    upstream.push(weather_tool_use());
    let events = assert_anthropic_stream(&post(streamed).await.unwrap().text().await.unwrap());
    assert_eq!(events[1].1["content_block"]["type"], "tool_use");
    let json: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(json, "{\"city\": \"Paris\"}");
    assert_eq!(
        message_delta_of(&events)["delta"]["stop_reason"],
        "tool_use"
    );

    upstream.push(Reply::Status(
        529,
        anthropic_error("overloaded_error", "Overloaded"),
    ));
    let res = post(ask_messages("claude", "hi")).await.unwrap();
    assert_eq!(res.status(), 529);
    assert_anthropic_error_body(&res.json().await.unwrap());

    upstream.push(stream_cut_mid_event());
    let cut = post(ask_messages("claude", "hi"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let (complete, partial) = cut.rsplit_once("\n\n").unwrap();
    assert!(partial.starts_with("event: content_block_delta\ndata: {"));
    assert_eq!(
        sse_events(complete).len(),
        3,
        "three whole events before the cut"
    );

    let received = upstream.received();
    assert_eq!(received.len(), 5);
    assert_eq!(received[0].path, "/v1/messages");
    assert_eq!(received[0].x_api_key.as_deref(), Some("sk-ant-test"));
    assert_eq!(
        received[0].anthropic_version.as_deref(),
        Some(ANTHROPIC_VERSION)
    );
}

// OpenAI clients on an Anthropic deployment.

#[actix_web::test]
async fn an_openai_client_reaches_anthropic_with_its_headers_and_the_system_prompt_hoisted() {
    let app = spawn_app().await;
    let dep = app.add_anthropic_model("claude", json!({})).await;
    app.upstream.push(Reply::AnthropicText {
        content: "Bonjour".into(),
        input_tokens: 21,
        output_tokens: 3,
    });

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "claude", "max_tokens": 100, "temperature": 0.3, "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "hello"}]}),
        )
        .await;

    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["x-lowart-deployment"],
        dep["id"].as_str().unwrap()
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], "Bonjour");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["usage"]["prompt_tokens"], 21);
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert_eq!(body["usage"]["total_tokens"], 24);

    let received = app.upstream.received();
    assert_eq!(received.len(), 1);
    let up = &received[0];
    assert_eq!(up.path, "/v1/messages");
    assert_eq!(up.x_api_key.as_deref(), Some("sk-ant-test"));
    assert_eq!(up.anthropic_version.as_deref(), Some(ANTHROPIC_VERSION));
    assert_eq!(up.body["model"], "claude-sonnet-4-5");
    assert_eq!(up.body["max_tokens"], 100);
    assert_eq!(up.body["temperature"], 0.3);
    assert_eq!(text_of(&up.body["system"]), "Answer in French.");
    assert_eq!(roles(&up.body["messages"]), ["user"], "no system message");
    assert_eq!(text_of(&up.body["messages"][0]["content"]), "hello");

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.model, "claude");
    assert_eq!(row.deployment_id.as_deref(), dep["id"].as_str());
    assert_eq!(row.status, 200);
    assert_eq!(row.usage_source, "reported");
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(21), Some(3), Some(24))
    );
}

#[actix_web::test]
async fn max_tokens_is_always_sent_to_anthropic() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;

    let res = app.chat(&app.admin_key, &ask_chat("claude", "hi")).await;

    assert_eq!(res.status(), 200);
    let body = &app.upstream.received()[0].body;
    assert!(
        body["max_tokens"].as_u64().is_some_and(|n| n > 0),
        "Anthropic requires max_tokens: {body}"
    );
}

#[actix_web::test]
async fn a_multi_turn_conversation_reaches_anthropic_turn_by_turn() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "claude", "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "My name is Ada."},
                {"role": "assistant", "content": "Hello Ada."},
                {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]}]}),
        )
        .await;

    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "Hello from the mock Anthropic upstream"
    );
    let up = &app.upstream.received()[0].body;
    assert_eq!(text_of(&up["system"]), "Be brief.");
    assert_eq!(roles(&up["messages"]), ["user", "assistant", "user"]);
    let texts: Vec<String> = up["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| text_of(&m["content"]))
        .collect();
    assert_eq!(texts, ["My name is Ada.", "Hello Ada.", "What is my name?"]);
}

#[actix_web::test]
async fn openai_tools_become_anthropic_tools_and_tool_use_comes_back_as_tool_calls() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;
    app.upstream.push(weather_tool_use());

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "claude", "messages": user_message("weather in Paris?"),
                "tools": openai_tools()}),
        )
        .await;

    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_01");
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let arguments: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"city": "Paris"}));
    assert_eq!(choice["message"]["tool_calls"].as_array().unwrap().len(), 1);

    let up = &app.upstream.received()[0].body;
    assert_eq!(
        up["tools"],
        json!([{"name": "get_weather", "description": "Current weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}])
    );
    let rows = app.usage_rows().await;
    assert_eq!(
        (rows[0].prompt_tokens, rows[0].completion_tokens),
        (Some(40), Some(12))
    );
}

#[actix_web::test]
async fn a_tool_call_round_trip_becomes_tool_use_and_tool_result_blocks() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;
    app.upstream.push(Reply::AnthropicText {
        content: "It is sunny in Paris.".into(),
        input_tokens: 60,
        output_tokens: 7,
    });

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "claude", "tools": openai_tools(), "messages": [
                {"role": "user", "content": "weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_01",
                    "type": "function", "function": {"name": "get_weather",
                    "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "sunny, 21C"}]}),
        )
        .await;

    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "It is sunny in Paris."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let up = &app.upstream.received()[0].body;
    assert_eq!(roles(&up["messages"]), ["user", "assistant", "user"]);
    let tool_use = block_of_type(&up["messages"][1], "tool_use");
    assert_eq!(tool_use["id"], "toolu_01");
    assert_eq!(tool_use["name"], "get_weather");
    assert_eq!(tool_use["input"], json!({"city": "Paris"}));
    let result = block_of_type(&up["messages"][2], "tool_result");
    assert_eq!(result["tool_use_id"], "toolu_01");
    assert_eq!(text_of(&result["content"]), "sunny, 21C");
}

#[actix_web::test]
async fn a_streamed_anthropic_answer_reaches_an_openai_client_as_chunks_with_usage() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;
    app.upstream.push(Reply::AnthropicText {
        content: "streamed from Claude".into(),
        input_tokens: 17,
        output_tokens: 4,
    });

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "claude", "stream": true, "stream_options": {"include_usage": true},
                "messages": user_message("hi")}),
        )
        .await;

    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = res.text().await.unwrap();
    assert_eq!(streamed_content(&text), "streamed from Claude");
    let chunks = openai_chunks(&text);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk"),
        "{chunks:?}"
    );
    assert_eq!(finish_reasons(&chunks), ["stop"]);
    let usage = chunks
        .iter()
        .find(|c| c["usage"].is_object())
        .expect("the usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], 17);
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(app.upstream.received()[0].body["stream"], true);

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].stream);
    assert_eq!(rows[0].status, 200);
    assert_eq!(rows[0].usage_source, "reported");
    assert_eq!(
        (rows[0].prompt_tokens, rows[0].completion_tokens),
        (Some(17), Some(4))
    );
    assert!(rows[0].ttft_ms.is_some());
}

#[actix_web::test]
async fn streamed_tool_use_arrives_as_tool_call_argument_deltas() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;
    app.upstream.push(weather_tool_use());

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "claude", "stream": true, "messages": user_message("weather?"),
                "tools": openai_tools()}),
        )
        .await;

    assert_eq!(res.status(), 200);
    let chunks = openai_chunks(&res.text().await.unwrap());
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert!(
        calls.len() >= 3,
        "one delta per input_json_delta: {calls:?}"
    );
    assert!(calls.iter().all(|c| c["index"] == 0), "{calls:?}");
    assert_eq!(calls[0]["id"], "toolu_01");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert_eq!(arguments, "{\"city\": \"Paris\"}");
    assert_eq!(finish_reasons(&chunks), ["tool_calls"]);
    let rows = app.usage_rows().await;
    assert_eq!(
        (rows[0].prompt_tokens, rows[0].completion_tokens),
        (Some(40), Some(12))
    );
}

#[actix_web::test]
async fn cache_tokens_count_in_the_prompt_and_are_recorded_apart() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;
    let usage = json!({"input_tokens": 10, "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20, "output_tokens": 5});
    app.upstream.push(Reply::Json(anthropic_message(
        json!([{"type": "text", "text": "cached"}]),
        "end_turn",
        usage.clone(),
    )));
    app.upstream
        .push(Reply::AnthropicEvents(anthropic_text_events(
            "cached too",
            usage,
            5,
        )));

    let res = app.chat(&app.admin_key, &ask_chat("claude", "hi")).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "cached");
    assert_eq!(body["usage"]["prompt_tokens"], 130, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 5);
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "claude", "stream": true, "messages": user_message("hi")}),
        )
        .await;
    assert_eq!(streamed_content(&res.text().await.unwrap()), "cached too");

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.usage_source, "reported");
        assert_eq!(
            (row.prompt_tokens, row.completion_tokens, row.total_tokens),
            (Some(130), Some(5), Some(135))
        );
    }
    assert_eq!(
        app.usage_cache_tokens().await,
        [(Some(100), Some(20)), (Some(100), Some(20))]
    );
}

// Anthropic clients.

#[actix_web::test]
async fn an_anthropic_client_gets_a_message_from_an_openai_deployment() {
    let app = spawn_app().await;
    let dep = app.add_openai_model("gpt-test", json!({})).await;
    let mut ask = ask_messages("gpt-test", "hi");
    ask["system"] = json!("Be terse.");

    let res = app.messages(&app.admin_key, &ask).await;

    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()["x-lowart-deployment"],
        dep["id"].as_str().unwrap()
    );
    let body = assert_text_message(res, UPSTREAM_OPENAI_TEXT).await;
    assert_eq!(body["usage"]["input_tokens"], 11);
    assert_eq!(body["usage"]["output_tokens"], 5);
    let received = app.upstream.received();
    assert_eq!(received.len(), 1);
    let up = &received[0];
    assert_eq!(up.path, "/v1/chat/completions");
    assert_eq!(
        up.authorization.as_deref(),
        Some("Bearer sk-upstream-secret-0123456789")
    );
    assert_eq!(up.body["model"], "gpt-test-upstream");
    assert_eq!(roles(&up.body["messages"]), ["system", "user"]);
    assert_eq!(text_of(&up.body["messages"][0]["content"]), "Be terse.");
    assert_eq!(text_of(&up.body["messages"][1]["content"]), "hi");

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].usage_source, "reported");
    assert_eq!(
        (rows[0].prompt_tokens, rows[0].completion_tokens),
        (Some(11), Some(5))
    );
}

#[actix_web::test]
async fn an_anthropic_client_streams_from_an_openai_deployment_in_the_documented_order() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-test", json!({})).await;
    let mut ask = ask_messages("gpt-test", "hi");
    ask["stream"] = json!(true);

    let res = app.messages(&app.admin_key, &ask).await;

    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = assert_anthropic_stream(&res.text().await.unwrap());
    assert_eq!(streamed_text(&events), UPSTREAM_OPENAI_TEXT);
    let delta = message_delta_of(&events);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 5);
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].stream);
    assert_eq!(rows[0].usage_source, "reported");
    assert_eq!(
        (rows[0].prompt_tokens, rows[0].completion_tokens),
        (Some(11), Some(5))
    );
}

#[actix_web::test]
async fn the_mock_model_answers_anthropic_clients_blocking_and_streamed() {
    let app = spawn_app().await;

    let res = app
        .messages(&app.admin_key, &ask_messages("mock", "echo me please"))
        .await;
    let body = assert_text_message(res, "echo me please").await;
    assert!(body["usage"]["input_tokens"].as_i64().unwrap() > 0);
    assert_eq!(body["usage"]["output_tokens"], 3);

    let mut ask = ask_messages("mock", "echo me please");
    ask["stream"] = json!(true);
    let res = app.messages(&app.admin_key, &ask).await;
    assert_eq!(res.status(), 200);
    let events = assert_anthropic_stream(&res.text().await.unwrap());
    assert_eq!(streamed_text(&events), "echo me please");
    let delta = message_delta_of(&events);
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 3);

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.usage_source == "reported" && r.completion_tokens == Some(3))
    );
}

#[actix_web::test]
async fn the_mock_model_calls_the_first_tool_then_echoes_the_tool_result() {
    let app = spawn_app().await;
    let mut ask = ask_messages("mock", "weather in Paris?");
    ask["tools"] = anthropic_tools();

    let res = app.messages(&app.admin_key, &ask).await;
    assert_eq!(res.status(), 200);
    let first: Value = res.json().await.unwrap();
    assert_eq!(first["stop_reason"], "tool_use", "{first}");
    let tool_use = block_of_type(&first, "tool_use");
    assert_eq!(tool_use["id"], "toolu_mock_0");
    assert_eq!(tool_use["name"], "get_weather");
    assert_eq!(tool_use["input"], json!({"input": "weather in Paris?"}));

    ask["stream"] = json!(true);
    let events = assert_anthropic_stream(
        &app.messages(&app.admin_key, &ask)
            .await
            .text()
            .await
            .unwrap(),
    );
    let start = events
        .iter()
        .find(|(n, _)| n == "content_block_start")
        .map(|(_, d)| d["content_block"].clone())
        .unwrap();
    assert_eq!(start["type"], "tool_use");
    assert_eq!(start["id"], "toolu_mock_0");
    assert_eq!(start["name"], "get_weather");
    let json: String = events
        .iter()
        .filter(|(_, d)| d["delta"]["type"] == "input_json_delta")
        .filter_map(|(_, d)| d["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        json!({"input": "weather in Paris?"})
    );
    assert_eq!(
        message_delta_of(&events)["delta"]["stop_reason"],
        "tool_use"
    );

    let mut answer = ask_messages("mock", "weather in Paris?");
    answer["tools"] = anthropic_tools();
    answer["messages"] = json!([
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": first["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_mock_0",
            "content": "sunny, 21C"}]}]);
    let res = app.messages(&app.admin_key, &answer).await;
    assert_text_message(res, "sunny, 21C").await;
}

#[actix_web::test]
async fn an_anthropic_client_reaches_an_anthropic_deployment_with_its_body_kept() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;
    let mut ask = ask_messages("claude", "hi");
    ask["top_k"] = json!(5);
    ask["metadata"] = json!({"user_id": "u-42"});
    ask["system"] = json!([{"type": "text", "text": "Be terse."}]);

    let res = app.messages(&app.admin_key, &ask).await;

    assert_text_message(res, "Hello from the mock Anthropic upstream").await;
    let up = &app.upstream.received()[0];
    assert_eq!(up.path, "/v1/messages");
    assert_eq!(
        up.x_api_key.as_deref(),
        Some("sk-ant-test"),
        "the deployment's key, never the client's"
    );
    assert_eq!(up.anthropic_version.as_deref(), Some(ANTHROPIC_VERSION));
    let mut expected = ask.clone();
    expected["model"] = json!("claude-sonnet-4-5");
    for field in [
        "model",
        "max_tokens",
        "messages",
        "system",
        "top_k",
        "metadata",
    ] {
        assert_eq!(up.body[field], expected[field], "{field}");
    }
}

#[actix_web::test]
async fn messages_accepts_a_bearer_key_too() {
    let app = spawn_app().await;
    let key = app.user_key("alice", "user", None).await;

    let res = app
        .client
        .post(app.url("/v1/messages"))
        .bearer_auth(&key)
        .header("anthropic-version", ANTHROPIC_VERSION)
        .json(&ask_messages("mock", "via bearer"))
        .send()
        .await
        .unwrap();

    assert_text_message(res, "via bearer").await;
    let rows = app.usage_rows().await;
    assert_eq!(rows[0].user_id.as_deref(), Some("alice"));
}

// Errors, each in its surface's shape.

#[actix_web::test]
async fn messages_errors_come_in_anthropic_shape() {
    let app = spawn_app().await;

    let error = assert_anthropic_error(
        app.messages(&app.admin_key, &ask_messages("no-such-model", "x"))
            .await,
        404,
    )
    .await;
    assert_eq!(error["type"], "not_found_error");

    let res = app
        .client
        .post(app.url("/v1/messages"))
        .header("anthropic-version", ANTHROPIC_VERSION)
        .json(&ask_messages("mock", "x"))
        .send()
        .await
        .unwrap();
    let error = assert_anthropic_error(res, 401).await;
    assert_eq!(error["type"], "authentication_error");
    let error = assert_anthropic_error(
        app.messages("lw-wrong", &ask_messages("mock", "x")).await,
        401,
    )
    .await;
    assert_eq!(error["type"], "authentication_error");

    for bad in [
        json!({"model": "mock", "messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "mock", "max_tokens": 10, "messages": "x"}),
        json!({"model": "mock", "max_tokens": 10}),
    ] {
        let error = assert_anthropic_error(app.messages(&app.admin_key, &bad).await, 400).await;
        assert_eq!(error["type"], "invalid_request_error", "{bad}");
    }
}

#[actix_web::test]
async fn an_overloaded_anthropic_upstream_is_reported_to_each_client_in_its_shape() {
    let app = spawn_app_with(|s| s.routing.max_attempts = 1).await;
    app.add_anthropic_model("claude", json!({})).await;
    let overloaded = || Reply::Status(529, anthropic_error("overloaded_error", "Overloaded"));

    app.upstream.push(overloaded());
    let error = assert_openai_error(
        app.chat(&app.admin_key, &ask_chat("claude", "hi")).await,
        502,
    )
    .await;
    assert_eq!(error["code"], "overloaded");

    app.upstream.push(overloaded());
    let res = app
        .messages(&app.admin_key, &ask_messages("claude", "hi"))
        .await;
    assert!(res.status().is_server_error(), "{}", res.status());
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert_anthropic_error_body(&res.json().await.unwrap());

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    assert!(
        rows.iter()
            .all(|r| r.error_class.as_deref() == Some("overloaded")),
        "{rows:?}"
    );
    assert_eq!(
        app.upstream.received().len(),
        2,
        "no retry with one attempt"
    );
}

/// A stream that breaks after content: text, then an `error` event.
fn stream_with_error_event() -> Reply {
    Reply::AnthropicEvents(vec![
        message_start(json!({"input_tokens": 9, "output_tokens": 1})),
        text_block_start(0),
        text_delta(0, "partial "),
        error_event("overloaded_error", "Overloaded"),
    ])
}

/// A stream cut in the middle of an event, after content.
fn stream_cut_mid_event() -> Reply {
    Reply::AnthropicCut {
        events: vec![
            message_start(json!({"input_tokens": 9, "output_tokens": 1})),
            text_block_start(0),
            text_delta(0, "partial "),
        ],
        partial: "event: content_block_delta\ndata: {\"type\": \"content_block_delta\", \"ind"
            .into(),
    }
}

/// Asserts an OpenAI stream that carried `partial ` and then ended with an error chunk and
/// `[DONE]`; answers the error object.
fn assert_openai_stream_error(body: &str) -> Value {
    assert_eq!(streamed_content(body), "partial ");
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let error: Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    let error = error.get("error").expect("an error chunk").clone();
    assert!(error["code"].is_string(), "{error}");
    assert!(error["message"].is_string(), "{error}");
    error
}

#[actix_web::test]
async fn an_error_event_after_content_ends_the_openai_stream_with_an_error_chunk_and_done() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;
    app.upstream.push(stream_with_error_event());

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "claude", "stream": true, "messages": user_message("hi")}),
        )
        .await;

    assert_eq!(res.status(), 200);
    assert_openai_stream_error(&res.text().await.unwrap());
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    assert!(rows[0].status >= 500, "{:?}", rows[0]);
    assert_eq!(app.upstream.received().len(), 1, "no splice after commit");
}

#[actix_web::test]
async fn a_stream_cut_mid_event_ends_the_openai_stream_with_malformed_response() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;
    app.upstream.push(stream_cut_mid_event());

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "claude", "stream": true, "messages": user_message("hi")}),
        )
        .await;

    let error = assert_openai_stream_error(&res.text().await.unwrap());
    assert_eq!(error["code"], "malformed_response");
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].status, 502);
    assert_eq!(rows[0].error_class.as_deref(), Some("malformed_response"));
}

/// Asserts an Anthropic stream that carried `partial ` and then ended with an `error`
/// event (and nothing after it).
fn assert_anthropic_stream_error(body: &str) {
    let events: Vec<(String, Value)> = sse_events(body)
        .into_iter()
        .filter(|(n, _)| n != "ping")
        .collect();
    assert_eq!(streamed_text(&events), "partial ", "{events:?}");
    let (name, data) = events.last().expect("events");
    assert_eq!(name, "error", "{events:?}");
    assert_anthropic_error_body(data);
    assert!(
        !events.iter().any(|(n, _)| n == "message_stop"),
        "{events:?}"
    );
}

#[actix_web::test]
async fn anthropic_clients_get_an_error_event_when_a_stream_breaks_after_content() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;
    app.add_openai_model("gpt-test", json!({})).await;
    app.upstream.push(stream_with_error_event());
    app.upstream.push(stream_cut_mid_event());
    app.upstream.push(Reply::Truncated(vec![chunk(
        json!({"role": "assistant", "content": "partial "}),
        Value::Null,
    )]));

    for model in ["claude", "claude", "gpt-test"] {
        let mut ask = ask_messages(model, "hi");
        ask["stream"] = json!(true);
        let res = app.messages(&app.admin_key, &ask).await;
        assert_eq!(res.status(), 200, "{model}");
        assert_anthropic_stream_error(&res.text().await.unwrap());
    }
    assert_eq!(app.usage_rows().await.len(), 3);
}

// Fallbacks across vendors.

/// Model `primary` (Anthropic, on `primary_base`) falls back to `backup` (OpenAI, on the
/// app's mock); answers the backup's deployment id.
async fn anthropic_primary_with_openai_backup(app: &TestApp, primary_base: &str) -> String {
    app.add_anthropic_model("primary", json!({"base_url": primary_base}))
        .await;
    let backup = app.add_openai_model("backup", json!({})).await;
    assert_eq!(
        app.set_fallbacks("primary", &["backup"]).await.status(),
        200
    );
    backup["id"].as_str().unwrap().to_string()
}

/// One request in each dialect, blocking and streamed, each answered by the backup.
async fn assert_each_dialect_served_by(app: &TestApp, backup: &str) {
    let res = app.chat(&app.admin_key, &ask_chat("primary", "hi")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-lowart-deployment"], backup);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        body["choices"][0]["message"]["content"],
        UPSTREAM_OPENAI_TEXT
    );

    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "primary", "stream": true, "messages": user_message("hi")}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-lowart-deployment"], backup);
    let text = res.text().await.unwrap();
    assert_eq!(streamed_content(&text), UPSTREAM_OPENAI_TEXT);
    assert!(
        openai_chunks(&text)
            .iter()
            .all(|c| c.get("error").is_none()),
        "one clean answer"
    );

    let res = app
        .messages(&app.admin_key, &ask_messages("primary", "hi"))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-lowart-deployment"], backup);
    assert_text_message(res, UPSTREAM_OPENAI_TEXT).await;

    let mut ask = ask_messages("primary", "hi");
    ask["stream"] = json!(true);
    let res = app.messages(&app.admin_key, &ask).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-lowart-deployment"], backup);
    let events = assert_anthropic_stream(&res.text().await.unwrap());
    assert_eq!(streamed_text(&events), UPSTREAM_OPENAI_TEXT);
    assert_eq!(
        events.iter().filter(|(n, _)| n == "message_start").count(),
        1
    );

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter().all(|r| r.status == 200
            && r.model == "primary"
            && r.deployment_id.as_deref() == Some(backup)),
        "{rows:?}"
    );
}

#[actix_web::test]
async fn an_overloaded_anthropic_primary_falls_back_to_openai_for_both_dialects() {
    let app = spawn_app().await;
    let overloaded = MockUpstream::start().await;
    for _ in 0..8 {
        overloaded.push(Reply::Status(
            529,
            anthropic_error("overloaded_error", "Overloaded"),
        ));
    }
    let backup = anthropic_primary_with_openai_backup(&app, &overloaded.address).await;

    assert_each_dialect_served_by(&app, &backup).await;

    let tried = overloaded.received();
    assert_eq!(tried.len(), 4, "the primary was tried once per request");
    assert!(tried.iter().all(|r| r.path == "/v1/messages"));
    assert_eq!(app.upstream.received().len(), 4);
}

#[actix_web::test]
async fn an_unreachable_anthropic_primary_falls_back_to_openai_for_both_dialects() {
    let app = spawn_app().await;
    let backup = anthropic_primary_with_openai_backup(&app, &closed_port_url()).await;

    assert_each_dialect_served_by(&app, &backup).await;
}

// Bad vendor answers.

#[actix_web::test]
async fn malformed_anthropic_answers_are_502_and_the_gateway_stays_healthy() {
    let app = spawn_app_with(|s| s.routing.max_attempts = 1).await;
    // Three bad answers in five calls would open the default breaker: that is right, but
    // this test is about each answer on its own.
    app.add_anthropic_model("claude", json!({"breaker": {"minimum_calls": 100}}))
        .await;
    let bad_answers = [
        Reply::Raw {
            content_type: "application/json",
            body: "{\"id\": \"msg_01\", \"type\": \"message\", \"content\": [{\"ty".into(),
        },
        Reply::Json(
            json!({"id": "msg_01", "type": "message", "role": "assistant",
            "model": "claude-sonnet-4-5", "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 1}}),
        ),
        Reply::Raw {
            content_type: "text/html",
            body: "<!doctype html><html><body><h1>502 Bad Gateway</h1></body></html>".into(),
        },
    ];

    for bad in bad_answers {
        app.upstream.push(bad);
        let error = assert_openai_error(
            app.chat(&app.admin_key, &ask_chat("claude", "hi")).await,
            502,
        )
        .await;
        assert_eq!(error["code"], "malformed_response");

        let res = app.chat(&app.admin_key, &ask_chat("claude", "again")).await;
        assert_eq!(res.status(), 200, "the next request works");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "Hello from the mock Anthropic upstream"
        );
    }
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 6);
    let failed: Vec<Option<&str>> = rows
        .iter()
        .filter(|r| r.status == 502)
        .map(|r| r.error_class.as_deref())
        .collect();
    assert_eq!(failed, [Some("malformed_response"); 3]);
}
