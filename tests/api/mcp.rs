//! MCP tools under supervision: real MCP servers (`mcp-server-time` from PyPI in a
//! throwaway virtualenv, and the rmcp-based `examples/mcp_test_server.rs`), a scripted mock
//! model, the tool loop with `auto`/`block`/`confirm`, confirmations blocking and streamed,
//! approvals on the bus, `/mcp` with rmcp's client, restarts and process groups.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rmcp::ServiceExt;
use rmcp::model::CallToolRequestParams;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{
    MASTER_KEY, TestApp, fresh_database_url, spawn_app_with, spawn_binary, sse_data, sse_events,
    terminate, user_message,
};
use crate::mcp_support::{
    anthropic_tool_use_reply, openai_tool_call_reply, process_alive, test_server_bin,
    time_server_command, wait_until_dead,
};
use crate::mock_upstream::Reply;

fn kit() -> String {
    test_server_bin().to_string_lossy().into_owned()
}

/// A gateway that may run the test server (and `mcp-server-time` when given), with a
/// model `tooly` on the mock upstream.
async fn mcp_app(time: Option<&str>) -> TestApp {
    let mut allowed = vec![kit()];
    allowed.extend(time.map(str::to_string));
    let app = spawn_app_with(move |s| {
        s.mcp.allowed_commands = allowed;
        s.mcp.start_timeout_ms = 20_000;
        s.mcp.max_restart_backoff_ms = 200;
    })
    .await;
    app.add_openai_model("tooly", json!({})).await;
    app
}

async fn register(app: &TestApp, body: Value) -> reqwest::Response {
    app.post_json("/admin/mcp/register", &app.admin_key, &body)
        .await
}

/// Registers the test server as `kit` with these policies.
async fn register_kit(app: &TestApp, policies: Value) -> Value {
    let res = register(
        app,
        json!({"name": "kit", "command": kit(), "policies": policies,
            "default_policy": "auto", "call_timeout_ms": 1500}),
    )
    .await;
    assert_eq!(res.status(), 201);
    res.json().await.unwrap()
}

fn tool_names(server: &Value) -> Vec<String> {
    server["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["prefixed"].as_str().unwrap().to_string())
        .collect()
}

async fn server_info(app: &TestApp, name: &str) -> Value {
    let list: Value = app
        .get("/admin/mcp", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or(Value::Null)
}

/// The messages the mock model received on its `n`-th call.
fn received_messages(app: &TestApp, n: usize) -> Vec<Value> {
    let received = app.upstream.received();
    let body = received[n].body.clone();
    body["messages"].as_array().unwrap().clone()
}

fn tool_message<'a>(messages: &'a [Value], call_id: &str) -> &'a str {
    messages
        .iter()
        .find(|m| m["role"] == "tool" && m["tool_call_id"] == call_id)
        .and_then(|m| m["content"].as_str())
        .unwrap_or_else(|| panic!("no tool result for {call_id} in {messages:?}"))
}

/// `POST /v1/tools/confirm` as `key`.
async fn confirm(
    app: &TestApp,
    key: &str,
    session: &str,
    approved_ids: Value,
) -> reqwest::Response {
    app.post_json(
        "/v1/tools/confirm",
        key,
        &json!({"session_id": session, "approved_ids": approved_ids}),
    )
    .await
}

fn text_reply(text: &str) -> Reply {
    Reply::Text {
        content: text.into(),
        prompt_tokens: 20,
        completion_tokens: 4,
    }
}

#[actix_web::test]
async fn registration_is_refused_outside_the_allow_list_and_tools_list_in_a_stable_order() {
    let time = time_server_command().expect("mcp-server-time from PyPI");
    let time = time.to_string_lossy().into_owned();
    let app = mcp_app(Some(&time)).await;
    let res = register(
        &app,
        json!({"name": "sh", "command": "/bin/sh", "args": ["-c", "id"]}),
    )
    .await;
    let err = crate::helpers::assert_openai_error(res, 400).await;
    assert_eq!(err["param"], "command");
    let res = register(&app, json!({"name": "bad__name", "command": kit()})).await;
    assert_eq!(res.status(), 400);

    let kit = register_kit(&app, json!({})).await;
    assert_eq!(kit["status"], "running");
    assert_eq!(
        tool_names(&kit),
        [
            "kit__add",
            "kit__delete_record",
            "kit__echo",
            "kit__fail",
            "kit__hang",
            "kit__pid",
            "kit__spawn_sleeper"
        ]
    );
    let res = register(
        &app,
        json!({"name": "time", "command": time, "args": ["--local-timezone", "UTC"],
            "default_policy": "auto"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let time: Value = res.json().await.unwrap();
    assert_eq!(
        tool_names(&time),
        ["time__convert_time", "time__get_current_time"]
    );
    let res = register(&app, json!({"name": "kit", "command": crate::mcp::kit()})).await;
    assert_eq!(res.status(), 409);

    // The model is offered both servers' tools, server by server, each by name.
    app.upstream.push(text_reply("no tools needed"));
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "tooly", "messages": user_message("hi"),
                "mcp_servers": ["time", "kit"]}),
        )
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let received: Value = app.upstream.received()[0].body.clone();
    let offered: Vec<&str> = received["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered[0], "kit__add");
    assert_eq!(offered[7], "time__convert_time");
    assert_eq!(offered.len(), 9);
    assert!(
        received.get("mcp_servers").is_none(),
        "the gateway's field stays with it"
    );
    // The audit log has the registration, never the environment.
    let audit = app
        .get("/admin/audit", &app.admin_key)
        .await
        .text()
        .await
        .unwrap();
    assert!(audit.contains("mcp.register"));
}

#[actix_web::test]
async fn auto_tools_run_and_block_tools_are_refused_with_the_model_told() {
    let time = time_server_command().expect("mcp-server-time from PyPI");
    let time = time.to_string_lossy().into_owned();
    let app = mcp_app(Some(&time)).await;
    register_kit(&app, json!({"delete_record": "block"})).await;
    let res = register(
        &app,
        json!({"name": "time", "command": time, "args": ["--local-timezone", "UTC"],
            "default_policy": "auto"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    app.upstream.push(Reply::Json(openai_tool_call_reply(&[
        ("c1", "kit__echo", json!({"text": "hello tools"})),
        ("c2", "kit__delete_record", json!({"id": "7"})),
        ("c3", "time__get_current_time", json!({"timezone": "UTC"})),
    ])));
    app.upstream.push(text_reply("all done"));
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "tooly", "messages": user_message("use tools"),
                "mcp_servers": ["kit", "time"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["choices"][0]["message"]["content"], "all done");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let messages = received_messages(&app, 1);
    assert_eq!(tool_message(&messages, "c1"), "hello tools");
    assert!(tool_message(&messages, "c2").contains("blocked"));
    assert!(
        tool_message(&messages, "c3").contains("UTC"),
        "{messages:?}"
    );
    // The assistant's calls precede the results.
    let assistant = messages.iter().find(|m| m["role"] == "assistant").unwrap();
    assert_eq!(assistant["tool_calls"].as_array().unwrap().len(), 3);
    // One usage row per model call.
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    let metrics = reqwest::get(app.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"gateway_mcp_tool_calls_total{server="kit",tool="echo",outcome="ok"} 1"#),
        "{metrics}"
    );
}

/// A socket subscribed to `approvals.<user>`.
async fn approvals(
    app: &TestApp,
    key: &str,
    user: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let url = format!("{}/v1/bus/ws", app.address.replacen("http", "ws", 1));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let frame = json!({"op": "subscribe", "topic": format!("approvals.{user}"), "ref": 1});
    socket.send(Message::text(frame.to_string())).await.unwrap();
    loop {
        let Some(Ok(Message::Text(text))) = socket.next().await else {
            continue;
        };
        let v: Value = serde_json::from_str(text.as_str()).unwrap();
        if v["op"] == "ok" {
            return socket;
        }
    }
}

async fn next_payload(
    socket: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("an approval message in time");
        if let Some(Ok(Message::Text(text))) = frame {
            let v: Value = serde_json::from_str(text.as_str()).unwrap();
            if v["op"] == "message" {
                return v["payload"].clone();
            }
        }
    }
}

#[actix_web::test]
async fn confirm_then_approve_or_deny_once_owned_by_the_user_and_announced_on_the_bus() {
    let app = mcp_app(None).await;
    register_kit(&app, json!({"delete_record": "confirm"})).await;
    let alice = app.user_key("alice", "user", None).await;
    let bob = app.user_key("bob", "user", None).await;
    let mut console = approvals(&app, &app.admin_key, "alice").await;

    app.upstream.push(Reply::Json(openai_tool_call_reply(&[
        ("d1", "kit__delete_record", json!({"id": "42"})),
        ("e1", "kit__echo", json!({"text": "ran first"})),
    ])));
    let body =
        json!({"model": "tooly", "messages": user_message("delete 42"), "mcp_servers": ["kit"]});
    let res = app.chat(&alice, &body).await;
    assert_eq!(res.status(), 200);
    let held: Value = res.json().await.unwrap();
    assert_eq!(held["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(held["status"], "require_confirmation");
    let session = held["session_id"].as_str().unwrap().to_string();
    assert_eq!(held["pending_calls"].as_array().unwrap().len(), 1);
    assert_eq!(held["pending_calls"][0]["name"], "kit__delete_record");
    assert_eq!(held["pending_calls"][0]["arguments"]["id"], "42");

    let announced = next_payload(&mut console).await;
    assert_eq!(announced["type"], "approval.pending");
    assert_eq!(announced["session_id"], session.as_str());

    let listed: Value = app
        .get("/v1/tools/sessions", &alice)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["session_id"], session.as_str());
    let listed: Value = app
        .get("/v1/tools/sessions", &bob)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 0);
    let res = confirm(&app, &bob, &session, json!(["d1"])).await;
    assert_eq!(res.status(), 404);

    app.upstream.push(text_reply("record 42 is gone"));
    let res = confirm(&app, &alice, &session, json!(["d1"])).await;
    assert_eq!(res.status(), 200);
    let done: Value = res.json().await.unwrap();
    assert_eq!(
        done["choices"][0]["message"]["content"],
        "record 42 is gone"
    );
    let messages = received_messages(&app, 1);
    assert_eq!(tool_message(&messages, "d1"), "deleted 42");
    assert_eq!(tool_message(&messages, "e1"), "ran first");
    let resolved = next_payload(&mut console).await;
    assert_eq!(resolved["type"], "approval.resolved");

    // Replayed: refused.
    let res = confirm(&app, &alice, &session, json!(["d1"])).await;
    assert_eq!(res.status(), 409);

    // Denied: the model is told.
    app.upstream.push(Reply::Json(openai_tool_call_reply(&[(
        "d2",
        "kit__delete_record",
        json!({"id": "43"}),
    )])));
    let held: Value = app.chat(&alice, &body).await.json().await.unwrap();
    let session = held["session_id"].as_str().unwrap();
    app.upstream.push(text_reply("I was not allowed"));
    let res = confirm(&app, &alice, session, json!([])).await;
    let done: Value = res.json().await.unwrap();
    assert_eq!(
        done["choices"][0]["message"]["content"],
        "I was not allowed"
    );
    let messages = received_messages(&app, 3);
    assert!(tool_message(&messages, "d2").contains("denied"));

    // An approval under a policy that changed since does not hold.
    app.upstream.push(Reply::Json(openai_tool_call_reply(&[(
        "d3",
        "kit__delete_record",
        json!({"id": "44"}),
    )])));
    let held: Value = app.chat(&alice, &body).await.json().await.unwrap();
    let session = held["session_id"].as_str().unwrap();
    let res = app
        .client
        .put(app.url("/admin/mcp/kit/tools/delete_record/policy"))
        .bearer_auth(&app.admin_key)
        .json(&json!({"policy": "confirm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    app.upstream.push(text_reply("policy changed"));
    let res = confirm(&app, &alice, session, json!(["d3"])).await;
    assert_eq!(res.status(), 200);
    let messages = received_messages(&app, 5);
    assert!(
        tool_message(&messages, "d3").contains("policy changed"),
        "{messages:?}"
    );
}

#[actix_web::test]
async fn a_streamed_request_ends_with_the_calls_and_the_session_and_the_confirm_streams() {
    let app = mcp_app(None).await;
    register_kit(&app, json!({"delete_record": "confirm"})).await;
    app.upstream.push(Reply::Json(openai_tool_call_reply(&[(
        "s1",
        "kit__delete_record",
        json!({"id": "9"}),
    )])));
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "tooly", "messages": user_message("delete 9"),
                "mcp_servers": ["kit"], "stream": true}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(chunks.iter().any(
        |c| c["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "kit__delete_record"
    ));
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
    let last = chunks.last().unwrap();
    assert_eq!(last["status"], "require_confirmation");
    let session = last["session_id"].as_str().unwrap();

    app.upstream.push(text_reply("deleted nine"));
    let res = app
        .post_json(
            "/v1/tools/confirm",
            &app.admin_key,
            &json!({"session_id": session, "approved_ids": ["s1"], "stream": true}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    assert_eq!(crate::helpers::streamed_content(&text), "deleted nine");
}

async fn mcp_client(
    app: &TestApp,
    key: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    mcp_client_at(&app.address, key).await
}

/// An MCP client (rmcp's streamable-HTTP client) of the gateway at `address`.
async fn mcp_client_at(
    address: &str,
    key: &str,
) -> rmcp::service::RunningService<rmcp::RoleClient, ()> {
    let config = StreamableHttpClientTransportConfig::with_uri(format!("{address}/mcp"))
        .auth_header(key.to_string());
    let transport = StreamableHttpClientTransport::with_client(reqwest::Client::new(), config);
    ().serve(transport)
        .await
        .expect("an MCP session with the gateway")
}

async fn call(
    client: &rmcp::service::RunningService<rmcp::RoleClient, ()>,
    name: &str,
    arguments: Value,
) -> (bool, String) {
    let mut params = CallToolRequestParams::new(name.to_string());
    params.arguments = arguments.as_object().cloned();
    let result = client.call_tool(params).await.expect("a tool result");
    let text = result
        .content
        .iter()
        .filter_map(|c| match c {
            rmcp::model::ContentBlock::Text(t) => Some(t.text.clone()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("");
    (result.is_error == Some(true), text)
}

fn pending_session(text: &str) -> String {
    let start = text.find("ts_").expect("the error names the session");
    text[start..].split('`').next().unwrap().to_string()
}

#[actix_web::test]
async fn the_mcp_endpoint_lists_and_calls_tools_and_an_approval_binds_to_the_arguments() {
    let app = mcp_app(None).await;
    register_kit(&app, json!({"delete_record": "confirm", "fail": "block"})).await;
    let carol = app.user_key("carol", "user", None).await;
    let client = mcp_client(&app, &carol).await;
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(
        names.contains(&"kit__echo") && names.contains(&"kit__delete_record"),
        "{names:?}"
    );

    assert_eq!(
        call(&client, "kit__add", json!({"a": 2, "b": 3})).await,
        (false, "5".into())
    );
    let (error, text) = call(&client, "kit__fail", json!({})).await;
    assert!(error && text.contains("blocked"));
    let (error, text) = call(&client, "kit__delete_record", json!({"id": "1"})).await;
    assert!(error, "{text}");
    let session = pending_session(&text);
    let sessions: Value = app
        .get("/v1/tools/sessions", &carol)
        .await
        .json()
        .await
        .unwrap();
    let call_id = sessions["data"][0]["pending_calls"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let res = confirm(&app, &carol, &session, json!([call_id])).await;
    assert_eq!(res.status(), 200);
    // Other arguments: not approved.
    let (error, _) = call(&client, "kit__delete_record", json!({"id": "2"})).await;
    assert!(error);
    // The approved call runs, once.
    assert_eq!(
        call(&client, "kit__delete_record", json!({"id": "1"})).await,
        (false, "deleted 1".into())
    );
    let (error, _) = call(&client, "kit__delete_record", json!({"id": "1"})).await;
    assert!(error, "an approval is used once");
    // Without a key: 401.
    let res = reqwest::Client::new()
        .post(app.url("/mcp"))
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let _ = client.cancel().await;
}

#[actix_web::test]
async fn a_killed_server_restarts_and_its_process_group_dies_on_delete() {
    let app = mcp_app(None).await;
    register_kit(&app, json!({})).await;
    let first = server_info(&app, "kit").await["pid"].as_u64().unwrap() as u32;
    assert!(process_alive(first));
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status();
    let mut restarted = Value::Null;
    for _ in 0..500 {
        let info = server_info(&app, "kit").await;
        if info["status"] == "running" && info["pid"].as_u64().is_some_and(|p| p as u32 != first) {
            restarted = info;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(restarted["restarts"].as_u64().unwrap() >= 1, "{restarted}");
    let server = restarted["pid"].as_u64().unwrap() as u32;
    let client = mcp_client(&app, &app.admin_key).await;
    let (_, sleeper) = call(&client, "kit__spawn_sleeper", json!({})).await;
    let sleeper: u32 = sleeper.trim().parse().unwrap();
    assert!(process_alive(sleeper));
    let res = app.delete("/admin/mcp/kit", &app.admin_key).await;
    assert_eq!(res.status(), 200);
    assert!(wait_until_dead(server, Duration::from_secs(10)).await);
    assert!(
        wait_until_dead(sleeper, Duration::from_secs(10)).await,
        "the server's child dies with its group"
    );
    assert_eq!(server_info(&app, "kit").await, Value::Null);
    let _ = client.cancel().await;
}

#[actix_web::test]
async fn a_servers_children_die_when_the_gateway_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let allowed = format!("[\"{}\"]", kit());
    let mut gateway = spawn_binary(
        &dir,
        &[
            ("DATABASE_URL", &db_url),
            ("LOWART_MASTER_KEY", MASTER_KEY),
            ("LOWART_ADMIN_KEY", &admin_key),
            ("LOWART_MCP__ALLOWED_COMMANDS", &allowed),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}/admin/mcp/register", gateway.address))
        .bearer_auth(&admin_key)
        .json(&json!({"name": "kit", "command": kit(), "default_policy": "auto"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let server = res.json::<Value>().await.unwrap()["pid"].as_u64().unwrap() as u32;
    let mcp = mcp_client_at(&gateway.address, &admin_key).await;
    let (_, sleeper) = call(&mcp, "kit__spawn_sleeper", json!({})).await;
    let sleeper: u32 = sleeper.trim().parse().unwrap();
    assert!(process_alive(sleeper));
    assert!(terminate(&mut gateway.child).await.success());
    assert!(wait_until_dead(server, Duration::from_secs(10)).await);
    assert!(wait_until_dead(sleeper, Duration::from_secs(10)).await);

    // The registration outlives the process: the next start runs the server again.
    let mut gateway = spawn_binary(
        &dir,
        &[
            ("DATABASE_URL", &db_url),
            ("LOWART_MASTER_KEY", MASTER_KEY),
            ("LOWART_ADMIN_KEY", &admin_key),
            ("LOWART_MCP__ALLOWED_COMMANDS", &allowed),
        ],
    )
    .await;
    let mut listed = Value::Null;
    for _ in 0..1000 {
        listed = client
            .get(format!("{}/admin/mcp", gateway.address))
            .bearer_auth(&admin_key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if listed["data"][0]["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mcp = mcp_client_at(&gateway.address, &admin_key).await;
    assert_eq!(
        call(&mcp, "kit__echo", json!({"text": "back"})).await,
        (false, "back".into())
    );
    let again = listed["data"][0]["pid"].as_u64().unwrap() as u32;
    assert!(terminate(&mut gateway.child).await.success());
    assert!(wait_until_dead(again, Duration::from_secs(10)).await);
    crate::helpers::drop_test_database(&db_url);
}

#[actix_web::test]
async fn servers_that_exit_print_garbage_or_hang_give_clear_errors_and_the_gateway_serves_on() {
    let app = mcp_app(None).await;
    let res = register(
        &app,
        json!({"name": "quits", "command": kit(), "args": ["--exit-at-start"]}),
    )
    .await;
    let err = crate::helpers::assert_openai_error(res, 502).await;
    assert_eq!(err["code"], "mcp_server_failed");
    assert!(err["message"].as_str().unwrap().contains("exit"), "{err}");
    let res = register(
        &app,
        json!({"name": "noisy", "command": kit(), "args": ["--garbage"]}),
    )
    .await;
    let err = crate::helpers::assert_openai_error(res, 502).await;
    assert!(
        err["message"].as_str().unwrap().contains("handshake"),
        "{err}"
    );
    assert_eq!(server_info(&app, "quits").await, Value::Null);

    register_kit(&app, json!({})).await;
    app.upstream.push(Reply::Json(openai_tool_call_reply(&[(
        "h1",
        "kit__hang",
        json!({}),
    )])));
    app.upstream.push(text_reply("the tool hung"));
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "tooly", "messages": user_message("hang"), "mcp_servers": ["kit"]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let messages = received_messages(&app, 1);
    assert!(tool_message(&messages, "h1").contains("did not answer within 1500 ms"));
    // An unknown server is a 400 naming the field.
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "tooly", "messages": user_message("x"), "mcp_servers": ["nope"]}),
        )
        .await;
    let err = crate::helpers::assert_openai_error(res, 400).await;
    assert_eq!(err["param"], "mcp_servers");
    assert_eq!(app.get("/healthz", &app.admin_key).await.status(), 200);
}

#[actix_web::test]
async fn the_loop_speaks_anthropic_both_ways_blocking_and_streamed() {
    let app = mcp_app(None).await;
    app.add_anthropic_model("claudy", json!({})).await;
    register_kit(&app, json!({"delete_record": "confirm"})).await;

    // An Anthropic client and an Anthropic vendor.
    app.upstream.push(Reply::Json(anthropic_tool_use_reply(&[(
        "tu1",
        "kit__echo",
        json!({"text": "hey"}),
    )])));
    app.upstream.push(Reply::AnthropicText {
        content: "fine".into(),
        input_tokens: 30,
        output_tokens: 2,
    });
    let body = json!({"model": "claudy", "max_tokens": 100, "mcp_servers": ["kit"],
        "messages": [{"role": "user", "content": "echo hey"}]});
    let res = app.messages(&app.admin_key, &body).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["content"][0]["text"], "fine");
    assert_eq!(answer["stop_reason"], "end_turn");
    let sent = app.upstream.received()[1].body.clone();
    let turns = sent["messages"].as_array().unwrap();
    assert_eq!(turns[1]["content"][0]["type"], "tool_use");
    assert_eq!(turns[2]["content"][0]["type"], "tool_result");
    assert_eq!(turns[2]["content"][0]["tool_use_id"], "tu1");
    assert_eq!(turns[2]["content"][0]["content"], "hey");
    assert_eq!(sent["tools"][2]["name"], "kit__echo");

    // Streamed, with a confirmation: `message_delta` carries the session, then the end.
    app.upstream.push(Reply::Json(anthropic_tool_use_reply(&[(
        "tu2",
        "kit__delete_record",
        json!({"id": "5"}),
    )])));
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let res = app.messages(&app.admin_key, &streamed).await;
    assert_eq!(res.status(), 200);
    let events = sse_events(&res.text().await.unwrap());
    assert_eq!(events.last().unwrap().0, "message_stop");
    let held = events
        .iter()
        .find(|(name, data)| name == "message_delta" && data["status"] == "require_confirmation")
        .expect("a message_delta with the session");
    assert_eq!(held.1["delta"]["stop_reason"], "tool_use");
    let session = held.1["session_id"].as_str().unwrap().to_string();
    assert!(
        events
            .iter()
            .any(|(_, d)| d["content_block"]["name"] == "kit__delete_record")
    );
    app.upstream.push(Reply::AnthropicText {
        content: "deleted five".into(),
        input_tokens: 30,
        output_tokens: 2,
    });
    let res = confirm(&app, &app.admin_key, &session, json!(["tu2"])).await;
    assert_eq!(res.status(), 200);
    let events = sse_events(&res.text().await.unwrap());
    let text: String = events
        .iter()
        .filter_map(|(_, d)| d["delta"]["text"].as_str())
        .collect();
    assert_eq!(
        text, "deleted five",
        "the confirm streams as the request did"
    );

    // An OpenAI client of the Anthropic vendor: translated both ways.
    app.upstream.push(Reply::Json(anthropic_tool_use_reply(&[(
        "tu3",
        "kit__add",
        json!({"a": 1, "b": 2}),
    )])));
    app.upstream.push(Reply::AnthropicText {
        content: "three".into(),
        input_tokens: 30,
        output_tokens: 2,
    });
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "claudy", "messages": user_message("add"), "mcp_servers": ["kit"]}),
        )
        .await;
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "three");
    let sent = app.upstream.received()[5].body.clone();
    let last = sent["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["content"][0]["type"], "tool_result");
    assert_eq!(last["content"][0]["content"], "3");
}

#[actix_web::test]
async fn a_model_configured_with_servers_offers_their_tools_and_http_servers_work() {
    let upstream_app = mcp_app(None).await;
    register_kit(&upstream_app, json!({})).await;
    // Another gateway reaches the first one's `/mcp` as a streamable-HTTP server, with
    // the key as a (sealed) header.
    let app = spawn_app_with(|s| s.mcp.allow_http = true).await;
    let res = register(
        &app,
        json!({"name": "remote", "url": format!("{}/mcp", upstream_app.address),
            "headers": {"Authorization": format!("Bearer {}", upstream_app.admin_key)},
            "default_policy": "auto"}),
    )
    .await;
    assert_eq!(res.status(), 201);
    let remote: Value = res.json().await.unwrap();
    assert!(
        tool_names(&remote).contains(&"remote__kit__echo".to_string()),
        "{remote}"
    );
    assert_eq!(remote["secret_names"], json!(["Authorization"]));
    assert!(!remote.to_string().contains(&upstream_app.admin_key));

    app.add_openai_model("tooly", json!({"mcp_servers": ["remote"]}))
        .await;
    app.upstream.push(Reply::Json(openai_tool_call_reply(&[(
        "r1",
        "remote__kit__echo",
        json!({"text": "over http"}),
    )])));
    app.upstream.push(text_reply("relayed"));
    let res = app
        .chat(
            &app.admin_key,
            &json!({"model": "tooly", "messages": user_message("go")}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], "relayed");
    assert_eq!(tool_message(&received_messages(&app, 1), "r1"), "over http");
}
