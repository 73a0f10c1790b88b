//! The test rig: `spawn_app()` starts the real gateway on a random port against a fresh
//! database (a SQLite file, or a fresh PostgreSQL database when `TEST_DATABASE_URL` is
//! set) and a scripted mock upstream (OpenAI and Anthropic) on its own random port.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use actix::Addr;
use lowart::actors::store::{FlushUsage, StoreActor};
use lowart::config::{Secret, Settings};
use lowart::startup::Application;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryOrder};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::mock_upstream::MockUpstream;

pub const MASTER_KEY: &str = "8f1c2a3b4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub admin_key: String,
    pub store: Addr<StoreActor>,
    pub db_url: String,
    pub dir: TempDir,
    pub upstream: MockUpstream,
}

/// A database for one test: a file in `dir`, or a new database on `TEST_DATABASE_URL`.
pub async fn fresh_database_url(dir: &TempDir) -> String {
    match std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(base) => {
            let name = format!("lowart_test_{}", uuid::Uuid::new_v4().simple());
            let admin = Database::connect(base.as_str())
                .await
                .expect("connect to TEST_DATABASE_URL");
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
                .await
                .expect("create test database");
            let _ = admin.close().await;
            let (without_query, query) = match base.split_once('?') {
                Some((b, q)) => (b.to_string(), format!("?{q}")),
                None => (base.clone(), String::new()),
            };
            let host_start = without_query.find("://").map_or(0, |i| i + 3);
            match without_query[host_start..].find('/') {
                Some(i) => format!("{}/{name}{query}", &without_query[..host_start + i]),
                None => format!("{without_query}/{name}{query}"),
            }
        }
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("lowart.db").display()
        ),
    }
}

pub fn is_postgres() -> bool {
    std::env::var("TEST_DATABASE_URL").is_ok_and(|u| !u.is_empty())
}

/// Settings for a test: random port, one worker, the given database, fixed master key.
pub fn test_settings(dir: &TempDir, db_url: &str, admin_key: &str) -> Settings {
    let mut s = Settings::default();
    s.server.listen = "127.0.0.1:0".into();
    s.server.workers = 1;
    s.server.shutdown_grace_ms = 5_000;
    s.database.url = Secret::new(db_url);
    s.database.max_connections = 4;
    s.security.master_key = Some(Secret::new(MASTER_KEY));
    s.security.master_key_file = dir.path().join("lowart.key");
    s.security.admin_key = Some(Secret::new(admin_key));
    s.database.usage_spill_file = usage_spill_file(dir);
    s.jobs.artifact_dir = dir.path().join("artifacts");
    s
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// reqwest (rustls without a built-in provider) needs ring installed before any client.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub async fn spawn_app_with(customise: impl FnOnce(&mut Settings)) -> TestApp {
    install_crypto();
    let dir = tempfile::tempdir().expect("temp dir");
    let db_url = fresh_database_url(&dir).await;
    let admin_key = lowart::crypto::generate_api_key().expect("admin key");
    let mut settings = test_settings(&dir, &db_url, &admin_key);
    customise(&mut settings);
    let upstream = MockUpstream::start().await;
    let app = Application::build(settings, false)
        .await
        .expect("gateway starts");
    let address = match app.local_addr() {
        Some(addr) => format!("http://{addr}"),
        None => String::new(),
    };
    let store = app.store();
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        admin_key,
        store,
        db_url,
        dir,
        upstream,
    }
}

impl Drop for TestApp {
    /// Drops the test's PostgreSQL database so repeated runs leave nothing behind.
    fn drop(&mut self) {
        drop_test_database(&self.db_url);
    }
}

/// Drops `db_url` when the tests run on PostgreSQL (a SQLite file goes with its dir).
pub fn drop_test_database(db_url: &str) {
    if let Some(base) = std::env::var("TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        drop_database(base, db_url.to_string());
    }
}

/// Builds and runs another gateway with `settings` (e.g. on a `TestApp`'s database);
/// answers its base URL.
pub async fn serve(settings: Settings) -> String {
    let app = Application::build(settings, false)
        .await
        .expect("gateway starts");
    let address = format!("http://{}", app.local_addr().expect("a TCP listener"));
    actix_web::rt::spawn(app.run_until_stopped());
    address
}

/// `DROP DATABASE … WITH (FORCE)` for a database made by `fresh_database_url`, on a thread
/// of its own (the caller may be inside a runtime).
pub fn drop_database(base: String, url: String) {
    let Some(name) = url
        .rsplit('/')
        .next()
        .map(|n| n.split('?').next().unwrap_or(n).to_string())
    else {
        return;
    };
    if !name.starts_with("lowart_test_") {
        return;
    }
    let _ = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            if let Ok(admin) = Database::connect(base.as_str()).await {
                let _ = admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await;
                let _ = admin.close().await;
            }
        });
    })
    .join();
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post_json(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn get(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn delete(&self, path: &str, key: &str) -> reqwest::Response {
        self.client
            .delete(self.url(path))
            .bearer_auth(key)
            .send()
            .await
            .expect("request sent")
    }

    pub async fn patch_json(&self, path: &str, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .patch(self.url(path))
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// Registers an OpenAI deployment pointing at the mock upstream; answers its JSON.
    pub async fn add_openai_model(&self, model_id: &str, extra: Value) -> Value {
        let mut body = json!({
            "model_id": model_id,
            "vendor_type": "OpenAI",
            "base_url": format!("{}/v1", self.upstream.address),
            "api_key": "sk-upstream-secret-0123456789",
            "upstream_model": format!("{model_id}-upstream"),
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let res = self
            .post_json("/admin/models", &self.admin_key, &body)
            .await;
        assert_eq!(res.status(), 201, "creating a deployment");
        res.json().await.expect("deployment JSON")
    }

    /// Creates a user with `role` and a key for it (optionally limited to `models`).
    pub async fn user_key(&self, user_id: &str, role: &str, models: Option<Vec<&str>>) -> String {
        let res = self
            .post_json(
                "/admin/users",
                &self.admin_key,
                &json!({"user_id": user_id, "role": role}),
            )
            .await;
        assert_eq!(res.status(), 201, "creating a user");
        let res = self
            .post_json(
                "/admin/keys",
                &self.admin_key,
                &json!({"user_id": user_id, "models": models}),
            )
            .await;
        assert_eq!(res.status(), 201, "creating a key");
        let body: Value = res.json().await.expect("key JSON");
        body["key"].as_str().expect("key in answer").to_string()
    }

    pub async fn chat(&self, key: &str, body: &Value) -> reqwest::Response {
        self.post_json("/v1/chat/completions", key, body).await
    }

    pub async fn db(&self) -> DatabaseConnection {
        Database::connect(self.db_url.as_str())
            .await
            .expect("connect to the test database")
    }

    /// Every usage row, after the gateway has written all it buffered.
    pub async fn usage_rows(&self) -> Vec<lowart::entities::usage::Model> {
        self.store.send(FlushUsage).await.expect("store answers");
        lowart::entities::usage::Entity::find()
            .order_by_asc(lowart::entities::usage::Column::Id)
            .all(&self.db().await)
            .await
            .expect("usage rows")
    }

    pub fn sqlite_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.dir.path())
            .expect("temp dir listing")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("lowart.db"))
            })
            .collect()
    }
}

/// Reads an SSE body into its `data:` payloads.
pub fn sse_data(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|block| {
            let lines: Vec<&str> = block
                .lines()
                .filter_map(|l| {
                    l.strip_prefix("data:")
                        .map(|d| d.strip_prefix(' ').unwrap_or(d))
                })
                .collect();
            (!lines.is_empty()).then(|| lines.join("\n"))
        })
        .collect()
}

/// Asserts the status and a JSON body, and answers the body.
async fn json_error_body(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status(), status, "status");
    assert!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json")),
        "error content type"
    );
    let body: Value = res.json().await.expect("error body is JSON");
    body
}

/// Asserts the OpenAI error shape and answers the error object.
pub async fn assert_openai_error(res: reqwest::Response, status: u16) -> Value {
    let body = json_error_body(res, status).await;
    let error = body.get("error").expect("`error` object").clone();
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {body}"
    );
    assert!(error["type"].is_string(), "type: {body}");
    assert!(error["code"].is_string(), "code: {body}");
    assert!(
        error.as_object().is_some_and(|o| o.contains_key("param")),
        "param: {body}"
    );
    error
}

pub fn user_message(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

/// The gateway binary running as a child process.
pub struct Gateway {
    pub child: tokio::process::Child,
    pub address: String,
    /// Its log lines (JSON), as they come.
    pub logs: mpsc::UnboundedReceiver<String>,
    /// Its stdout lines, as they come; the channel closes when the process exits.
    pub stdout: mpsc::UnboundedReceiver<String>,
}

fn forward_lines(
    pipe: impl tokio::io::AsyncRead + Unpin + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    actix_web::rt::spawn(async move {
        let mut lines = BufReader::new(pipe).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Runs the binary in `dir` on a random port with `env` (and none of the caller's Lowart
/// variables); answers once it logs its address.
pub async fn spawn_binary(dir: &TempDir, env: &[(&str, &str)]) -> Gateway {
    install_crypto();
    let mut command = tokio::process::Command::from(lowart_command());
    command.current_dir(dir.path());
    command
        .env("LOWART_SERVER__LISTEN", "127.0.0.1:0")
        .env("LOWART_SERVER__WORKERS", "1")
        .env("LOWART_TELEMETRY__LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("the binary starts");
    let stderr = child.stderr.take().expect("stderr");
    let stdout = child.stdout.take().expect("stdout");
    let mut logs = forward_lines(stderr);
    let stdout_lines = forward_lines(stdout);
    let address = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), logs.recv())
            .await
            .expect("the gateway logs its address")
            .expect("the gateway is running");
        let Ok(log) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if let Some(addr) = log["fields"]["addr"].as_str() {
            break format!("http://{addr}");
        }
    };
    Gateway {
        child,
        address,
        logs,
        stdout: stdout_lines,
    }
}

/// Sends SIGTERM and waits for the exit status.
pub async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill runs");
    assert!(killed.success());
    tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("exits in time")
        .expect("exit status")
}

/// An `http://127.0.0.1:PORT` where nothing listens (the port was just freed).
pub fn closed_port_url() -> String {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    url
}

/// The test's usage spill file (inside its temp dir, so tests never share one).
pub fn usage_spill_file(dir: &TempDir) -> PathBuf {
    dir.path().join("lowart-usage.spill.jsonl")
}

/// The value of the unlabelled sample `name` in `address`'s `/metrics`.
pub async fn metric_sample(client: &reqwest::Client, address: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{address}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
        .trim()
        .parse()
        .expect("a number")
}

impl TestApp {
    /// `PUT /admin/models/{model}/fallbacks` as the admin.
    pub async fn set_fallbacks(&self, model: &str, fallbacks: &[&str]) -> reqwest::Response {
        self.client
            .put(self.url(&format!("/admin/models/{model}/fallbacks")))
            .bearer_auth(&self.admin_key)
            .json(&serde_json::json!({"fallbacks": fallbacks}))
            .send()
            .await
            .expect("request sent")
    }
}

/// The variables of the caller's environment that would steer the binary.
const CALLER_LOWART_VARS: &[&str] = &[
    "DATABASE_URL",
    "LOWART_MASTER_KEY",
    "LOWART_NEW_MASTER_KEY",
    "LOWART_ADMIN_KEY",
    "LOWART_CONFIG",
    "LISTEN_MODE",
];

/// The gateway binary, without the caller's Lowart variables.
pub fn lowart_command() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_lowart"));
    for var in CALLER_LOWART_VARS {
        command.env_remove(var);
    }
    command
}

/// The text of a streamed answer: its chunks' `delta.content`, joined.
pub fn streamed_content(body: &str) -> String {
    sse_data(body)
        .iter()
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect()
}

/// The Anthropic API version every Anthropic request carries.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

impl TestApp {
    /// Registers an Anthropic deployment on the mock upstream (which answers
    /// `{base_url}/v1/messages`), upstream model `claude-sonnet-4-5`; `extra` overrides
    /// any field (e.g. `base_url`). Answers its JSON.
    pub async fn add_anthropic_model(&self, model_id: &str, extra: Value) -> Value {
        let mut body = json!({
            "model_id": model_id,
            "vendor_type": "Anthropic",
            "base_url": self.upstream.address,
            "api_key": "sk-ant-test",
            "upstream_model": "claude-sonnet-4-5",
        });
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let res = self
            .post_json("/admin/models", &self.admin_key, &body)
            .await;
        assert_eq!(res.status(), 201, "creating an Anthropic deployment");
        res.json().await.expect("deployment JSON")
    }

    /// `POST /v1/messages` as an Anthropic client: `x-api-key` and `anthropic-version`.
    pub async fn messages(&self, key: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url("/v1/messages"))
            .header("x-api-key", key)
            .header("anthropic-version", ANTHROPIC_VERSION)
            .json(body)
            .send()
            .await
            .expect("request sent")
    }

    /// `(cache_read_tokens, cache_write_tokens)` of every usage row, in order, read with
    /// plain SQL (the columns are newer than some entity versions).
    pub async fn usage_cache_tokens(&self) -> Vec<(Option<i64>, Option<i64>)> {
        self.store.send(FlushUsage).await.expect("store answers");
        let db = self.db().await;
        let rows = db
            .query_all_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT cache_read_tokens, cache_write_tokens FROM usage ORDER BY id",
            ))
            .await
            .expect("usage cache columns");
        rows.iter()
            .map(|r| {
                (
                    r.try_get::<Option<i64>>("", "cache_read_tokens")
                        .expect("cache_read_tokens"),
                    r.try_get::<Option<i64>>("", "cache_write_tokens")
                        .expect("cache_write_tokens"),
                )
            })
            .collect()
    }
}

/// Reads an SSE body into `(event name, data)` pairs; the name is `message` when a block
/// has no `event:` line, the data is JSON (or a string when it is not JSON).
pub fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = Some(n.trim().to_string());
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            if name.is_none() && data.is_empty() {
                return None;
            }
            let text = data.join("\n");
            let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Some((name.unwrap_or_else(|| "message".into()), value))
        })
        .collect()
}

/// Asserts Anthropic's error shape (`{"type":"error","error":{"type","message"}}`) and
/// answers the error object.
pub async fn assert_anthropic_error(res: reqwest::Response, status: u16) -> Value {
    let body = json_error_body(res, status).await;
    assert_anthropic_error_body(&body)
}

/// Checks an Anthropic error body (HTTP or an `error` stream event); answers `error`.
pub fn assert_anthropic_error_body(body: &Value) -> Value {
    assert_eq!(body["type"], "error", "{body}");
    let error = body.get("error").expect("`error` object").clone();
    assert!(error["type"].is_string(), "error.type: {body}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error.message: {body}"
    );
    error
}

/// The binary without the caller's Lowart variables, in `dir`, with `env`.
pub fn lowart_in(dir: &TempDir, env: &[(&str, &str)]) -> std::process::Command {
    let mut command = lowart_command();
    command
        .current_dir(dir.path())
        .env("LOWART_SERVER__LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied());
    command
}

/// Runs the binary to its exit (killed after 60 s, which fails the caller's assertions).
pub async fn run_to_exit(
    dir: &TempDir,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut command = tokio::process::Command::from(lowart_in(dir, env));
    command.args(args).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the command exits")
        .unwrap()
}

/// The new master key `lowart rotate-master-key` printed (64 hex digits).
pub fn printed_master_key(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
        .expect("the new key is printed")
        .to_string()
}
