//! The MCP test kit: the test MCP server (`examples/mcp_test_server.rs`), a real third-party
//! server (`mcp-server-time` from PyPI, in a throwaway virtualenv under the target
//! directory), process checks for the children the gateway spawns, and scripted model
//! replies that ask for tool calls (OpenAI and Anthropic shapes).
#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject};
use rmcp::transport::TokioChildProcess;
use serde_json::{Value, json};

use crate::mock_upstream::anthropic_message;

/// `target/<profile>`: the test binary runs from `target/<profile>/deps`.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary sits in <target>/<profile>/deps")
        .to_path_buf()
}

/// The target directory (`CARGO_TARGET_DIR` or `target`), as this test binary was built in.
fn target_dir() -> PathBuf {
    profile_dir()
        .parent()
        .expect("the profile directory sits in the target directory")
        .to_path_buf()
}

/// The variables cargo sets for the crate it runs (this test binary). A cargo started from
/// a test must not inherit them: build scripts that watch them (ring's watches
/// `CARGO_MANIFEST_DIR` and `OUT_DIR`) would run again, and every later `cargo test` would
/// rebuild half the dependency tree over that build.
fn set_by_cargo_for_this_run(key: &str) -> bool {
    key.starts_with("CARGO_PKG_")
        || key.starts_with("CARGO_BIN_")
        || matches!(
            key,
            "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "OUT_DIR"
        )
}

/// The built test MCP server, `<target>/<profile>/examples/mcp_test_server`. Built once per
/// test process (`cargo build --example mcp_test_server`, into this binary's own target
/// directory and profile), so that a `cargo test --test api` run, which does not build the
/// examples, never runs a missing or stale server; when it is fresh the build is a no-op.
pub fn test_server_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(build_test_server).clone()
}

fn build_test_server() -> PathBuf {
    let profile_dir = profile_dir();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(other) => other.to_string(),
    };
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args([
            "build",
            "--example",
            "mcp_test_server",
            "--profile",
            &profile,
        ])
        .env("CARGO_TARGET_DIR", target_dir())
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    for (key, _) in std::env::vars_os() {
        if set_by_cargo_for_this_run(&key.to_string_lossy()) {
            cargo.env_remove(&key);
        }
    }
    let output = cargo.output().expect("cargo runs");
    assert!(
        output.status.success(),
        "building the test MCP server failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let bin = profile_dir.join("examples").join("mcp_test_server");
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

/// Runs a setup command; `Err` with its output when it cannot start or fails.
fn run(command: &mut Command, what: &str) -> Result<(), String> {
    let output = command
        .output()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// Creates `<target>/test-venvs/mcp-time` (`python3 -m venv`, then
/// `pip install mcp-server-time`) unless a previous run finished it (its `.ready` marker).
/// Creation holds a file lock beside the venv, so parallel test processes create it once.
fn create_time_venv() -> Result<PathBuf, String> {
    let venvs = target_dir().join("test-venvs");
    let venv = venvs.join("mcp-time");
    let bin = venv.join("bin").join("mcp-server-time");
    let ready = venv.join(".ready");
    if ready.exists() {
        return Ok(bin);
    }
    std::fs::create_dir_all(&venvs).map_err(|e| format!("{}: {e}", venvs.display()))?;
    let lock_path = venvs.join("mcp-time.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    lock.lock()
        .map_err(|e| format!("locking {}: {e}", lock_path.display()))?;
    if ready.exists() {
        return Ok(bin); // another process made it while this one waited
    }
    let started = Instant::now();
    eprintln!(
        "creating the mcp-server-time virtualenv in {}",
        venv.display()
    );
    match std::fs::remove_dir_all(&venv) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing a half-made {}: {e}", venv.display())),
    }
    run(
        Command::new("python3").args(["-m", "venv"]).arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(venv.join("bin").join("pip")).args(["install", "--quiet", "mcp-server-time"]),
        "pip install mcp-server-time",
    )?;
    if !bin.exists() {
        return Err(format!("pip installed no {}", bin.display()));
    }
    File::create(&ready).map_err(|e| format!("{}: {e}", ready.display()))?;
    eprintln!(
        "the mcp-server-time virtualenv took {:.1?}",
        started.elapsed()
    );
    Ok(bin)
}

/// The `mcp-server-time` executable (a real MCP server over stdio, from PyPI), in a
/// virtualenv under the target directory, made on first use and reused across runs.
/// `Err` says why it could not be made (no python3, no pip, no PyPI): each test decides
/// whether that fails it or skips it, loudly.
pub fn time_server_command() -> Result<PathBuf, String> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    VENV.get_or_init(|| {
        let made = create_time_venv();
        if let Err(why) = &made {
            eprintln!("no mcp-server-time: {why}");
        }
        made
    })
    .clone()
}

/// Whether the process lives: `/proc/<pid>` exists and it is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) state …`: the name may hold spaces and parentheses, so the state is the
    // first field after the last `)`.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    state.is_some_and(|s| s != "Z")
}

/// Polls `process_alive` every 20 ms until the process is gone; false if it still lives
/// after `within`.
pub async fn wait_until_dead(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !process_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An OpenAI chat completion asking for these tool calls, `(call id, tool name,
/// arguments)`, for `Reply::Json`.
pub fn openai_tool_call_reply(calls: &[(&str, &str, Value)]) -> Value {
    let tool_calls: Vec<Value> = calls
        .iter()
        .map(|(id, name, arguments)| {
            json!({"id": id, "type": "function",
                "function": {"name": name, "arguments": arguments.to_string()}})
        })
        .collect();
    json!({
        "id": "chatcmpl-tools", "object": "chat.completion", "created": 1, "model": "upstream",
        "choices": [{"index": 0,
            "message": {"role": "assistant", "content": null, "tool_calls": tool_calls},
            "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    })
}

/// An Anthropic Message asking for these tool calls, `(tool_use id, tool name, input)`,
/// for `Reply::Json`.
pub fn anthropic_tool_use_reply(calls: &[(&str, &str, Value)]) -> Value {
    let content: Vec<Value> = calls
        .iter()
        .map(
            |(id, name, input)| json!({"type": "tool_use", "id": id, "name": name, "input": input}),
        )
        .collect();
    anthropic_message(
        Value::Array(content),
        "tool_use",
        json!({"input_tokens": 10, "output_tokens": 5}),
    )
}

const LIMIT: Duration = Duration::from_secs(20);

fn args(v: Value) -> JsonObject {
    match v {
        Value::Object(o) => o,
        other => panic!("arguments must be an object, not {other}"),
    }
}

fn text_of(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
        .collect()
}

#[tokio::test]
async fn test_kit_servers_speak_mcp() {
    // The test server: its tools, a round trip, a tool error; the child ends with the
    // client.
    let bin = test_server_bin();
    let transport = TokioChildProcess::new(tokio::process::Command::new(&bin)).unwrap();
    let client = tokio::time::timeout(LIMIT, ().serve(transport))
        .await
        .unwrap()
        .unwrap();
    let mut names: Vec<String> = client
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "add",
            "delete_record",
            "echo",
            "fail",
            "hang",
            "pid",
            "spawn_sleeper"
        ]
    );
    let echoed = client
        .call_tool(
            CallToolRequestParams::new("echo").with_arguments(args(json!({"text": "héllo"}))),
        )
        .await
        .unwrap();
    assert_eq!(text_of(&echoed), "héllo");
    assert_ne!(echoed.is_error, Some(true));
    let sum = client
        .call_tool(
            CallToolRequestParams::new("add").with_arguments(args(json!({"a": 2, "b": 3.5}))),
        )
        .await
        .unwrap();
    assert_eq!(text_of(&sum), "5.5");
    let failed = client
        .call_tool(CallToolRequestParams::new("fail"))
        .await
        .unwrap();
    assert_eq!(failed.is_error, Some(true));
    assert_eq!(text_of(&failed), "it failed");
    let pid: u32 = text_of(
        &client
            .call_tool(CallToolRequestParams::new("pid"))
            .await
            .unwrap(),
    )
    .parse()
    .unwrap();
    assert!(process_alive(pid));
    client.cancel().await.unwrap();
    assert!(
        wait_until_dead(pid, Duration::from_secs(10)).await,
        "the test server outlived its client"
    );

    // A server that exits at once never finishes the handshake.
    let mut exiting = tokio::process::Command::new(&bin);
    exiting.arg("--exit-at-start");
    let transport = TokioChildProcess::new(exiting).unwrap();
    let served = tokio::time::timeout(LIMIT, ().serve(transport))
        .await
        .unwrap();
    assert!(served.is_err(), "a server that exited at start was served");

    // A real third-party server from PyPI.
    let time_server = time_server_command()
        .unwrap_or_else(|why| panic!("mcp-server-time is needed for this test: {why}"));
    let transport = TokioChildProcess::new(tokio::process::Command::new(&time_server)).unwrap();
    let client = tokio::time::timeout(LIMIT, ().serve(transport))
        .await
        .unwrap()
        .unwrap();
    let tools = client.list_all_tools().await.unwrap();
    assert!(tools.iter().any(|t| t.name == "get_current_time"));
    let now = client
        .call_tool(
            CallToolRequestParams::new("get_current_time")
                .with_arguments(args(json!({"timezone": "UTC"}))),
        )
        .await
        .unwrap();
    assert_ne!(now.is_error, Some(true));
    // The text is the result as indented JSON: `{"timezone": "UTC", "datetime": …}`.
    let answer: Value = serde_json::from_str(&text_of(&now)).unwrap();
    assert_eq!(answer["timezone"], "UTC");
    assert!(
        answer["datetime"]
            .as_str()
            .is_some_and(|d| d.ends_with("+00:00"))
    );
    client.cancel().await.unwrap();
}
