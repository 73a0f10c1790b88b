//! A mock ComfyUI on its own random port, speaking ComfyUI's real API shapes: `POST /prompt`
//! (200 with `prompt_id`, or 400 with the validation error body), `/ws?clientId=…` (the JSON
//! events of `server.py`/`execution.py`, and a binary preview frame), `/history`,
//! `/history/{prompt_id}`, `/view`, `POST /interrupt`, `GET`/`POST /queue`, `GET /prompt`,
//! `/system_stats`; every route also under `/api`, as ComfyUI serves them. Each submitted
//! prompt runs by its scripted `Behaviour` (default: an image in 3 steps), concurrently with
//! the others, one step every `STEP_INTERVAL`.
//!
//! Unlike ComfyUI, which drops the events of a client that is not connected, the mock keeps
//! every event per client and replays them to each socket that connects with that client
//! id, then sends the live ones: a socket opened late (or by a restarted gateway) sees the
//! whole run.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

/// Between two events of a running prompt: progress is observable, tests stay quick.
const STEP_INTERVAL: Duration = Duration::from_millis(20);

/// How the next submitted prompt behaves.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// execution_start, execution_cached, executing "3", progress 1..=steps (max steps),
    /// executing "9", executed "9" with one image, execution_success, executing null; then
    /// history has the image and `/view` serves `bytes` as image/png.
    Image { steps: u64, bytes: Vec<u8> },
    /// Like `Image`, but holds after the first progress event until `release()` (which
    /// releases every prompt accepted before it) or an interrupt (execution_interrupted,
    /// history `status_str: "error"`, executing null).
    Held { steps: u64, bytes: Vec<u8> },
    /// Accepted, execution_start, then nothing ever (history stays `{}`; interrupts are
    /// recorded but change nothing: a hung server).
    NeverFinishes,
    /// Runs like `Image` over the socket without executed/execution_success; its
    /// `/history/{prompt_id}` answers 200 with text that is not JSON.
    MalformedHistory,
    /// `POST /prompt` answers 200 `{"number": 1}`: no prompt id, nothing runs.
    MalformedSubmit,
    /// `POST /prompt` answers 400 with ComfyUI's validation error body; nothing runs.
    NodeErrors,
    /// execution_start, executing "3", then execution_error (KSampler) with this
    /// exception_message; history `status_str: "error"`.
    Failing(String),
    /// Accepted but stays in the queue (`queue_pending`) until deleted by `POST /queue`;
    /// never runs.
    Queued,
}

/// A valid 1×1 transparent PNG.
pub fn default_png() -> Vec<u8> {
    vec![
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44,
        0x52, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f,
        0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0b, 0x49, 0x44, 0x41, 0x54, 0x78, 0xda, 0x63, 0x60,
        0x00, 0x02, 0x00, 0x00, 0x05, 0x00, 0x01, 0xe9, 0xfa, 0xdc, 0xd8, 0x00, 0x00, 0x00, 0x00,
        0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
    ]
}

fn default_behaviour() -> Behaviour {
    Behaviour::Image {
        steps: 3,
        bytes: default_png(),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Pending,
    Running,
    Done,
    /// Removed from the queue before it ran.
    Deleted,
}

struct Prompt {
    id: String,
    number: u64,
    client_id: String,
    workflow: Value,
    behaviour: Behaviour,
    phase: Phase,
    interrupted: bool,
    /// `State::releases` when it was accepted: a later `release()` lets it go on.
    releases_before: u64,
    /// The `[event, data]` pairs ComfyUI keeps in the history `status.messages`.
    messages: Vec<Value>,
    outputs: Value,
    /// Set once the prompt is over: the history entry exists from then on.
    status: Option<Value>,
}

impl Prompt {
    /// ComfyUI's queue item: `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
    fn queue_item(&self) -> Value {
        json!([self.number, self.id, self.workflow, {"client_id": self.client_id}, ["9"]])
    }

    fn history_entry(&self) -> Option<Value> {
        let status = self.status.clone()?;
        Some(json!({
            "prompt": self.queue_item(),
            "outputs": self.outputs,
            "status": status,
            "meta": {"9": {"node_id": "9", "display_node": "9", "parent_node": null,
                "real_node_id": "9"}}
        }))
    }
}

enum Frame {
    Text(String),
    Binary(Bytes),
}

/// One client id: every text event sent to it, and its open sockets.
#[derive(Default)]
struct Client {
    log: Vec<String>,
    sockets: Vec<mpsc::UnboundedSender<Frame>>,
}

#[derive(Default)]
struct State {
    scripted: VecDeque<Behaviour>,
    submissions: Vec<Value>,
    executions: usize,
    interrupts: Vec<String>,
    queue_deletes: Vec<String>,
    history_polls: usize,
    prompts: Vec<Prompt>,
    clients: HashMap<String, Client>,
    /// `(filename, subfolder, type)` → bytes, for `/view`.
    files: HashMap<(String, String, String), Vec<u8>>,
    submitted: u64,
    releases: u64,
}

impl State {
    fn prompt(&mut self, id: &str) -> Option<&mut Prompt> {
        self.prompts.iter_mut().find(|p| p.id == id)
    }

    fn in_phase(&self, phase: Phase) -> impl Iterator<Item = &Prompt> {
        self.prompts.iter().filter(move |p| p.phase == phase)
    }

    fn queue_remaining(&self) -> usize {
        self.in_phase(Phase::Running).count() + self.in_phase(Phase::Pending).count()
    }

    /// Sends `{"type": kind, "data": data}` to the prompt's client (logged for sockets to
    /// come); the events ComfyUI keeps in history get a timestamp and are kept too.
    fn emit(&mut self, id: &str, kind: &str, mut data: Value) {
        let Some(prompt) = self.prompt(id) else {
            return;
        };
        if matches!(
            kind,
            "execution_start"
                | "execution_cached"
                | "execution_success"
                | "execution_error"
                | "execution_interrupted"
        ) {
            data["timestamp"] = json!(chrono::Utc::now().timestamp_millis());
            prompt.messages.push(json!([kind, data]));
        }
        let client_id = prompt.client_id.clone();
        let text = json!({"type": kind, "data": data}).to_string();
        let client = self.clients.entry(client_id).or_default();
        client.log.push(text.clone());
        client
            .sockets
            .retain(|socket| socket.send(Frame::Text(text.clone())).is_ok());
    }

    /// A preview: ComfyUI's binary frame (event 1, image type 2 = PNG), live sockets only.
    fn preview(&mut self, id: &str, bytes: &[u8]) {
        let Some(client_id) = self.prompt(id).map(|p| p.client_id.clone()) else {
            return;
        };
        let mut frame = vec![0, 0, 0, 1, 0, 0, 0, 2];
        frame.extend_from_slice(bytes);
        let frame = Bytes::from(frame);
        let client = self.clients.entry(client_id).or_default();
        client
            .sockets
            .retain(|socket| socket.send(Frame::Binary(frame.clone())).is_ok());
    }

    /// Ends a prompt: its history entry appears.
    fn finish(&mut self, id: &str, success: bool) {
        if let Some(prompt) = self.prompt(id) {
            prompt.phase = Phase::Done;
            prompt.status = Some(json!({
                "status_str": if success { "success" } else { "error" },
                "completed": success,
                "messages": prompt.messages,
            }));
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// How many prompts have started running.
    started: watch::Sender<usize>,
    /// Bumped by `release()` and by every interrupt.
    wake: watch::Sender<u64>,
}

impl Shared {
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    fn poke(&self) {
        self.wake.send_modify(|n| *n += 1);
    }
}

#[derive(Clone)]
pub struct MockComfy {
    pub base_url: String,
    shared: Arc<Shared>,
}

impl MockComfy {
    pub async fn start() -> Self {
        crate::helpers::install_crypto();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            started: watch::channel(0).0,
            wake: watch::channel(0).0,
        });
        let data = web::Data::from(shared.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
                .service(web::scope("/api").configure(routes))
                .configure(routes)
        })
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .expect("mock ComfyUI binds");
        let addr = server.addrs()[0];
        actix_web::rt::spawn(server.run());
        Self {
            base_url: format!("http://{addr}"),
            shared,
        }
    }

    /// Queues the behaviour of the next submitted prompt; with none queued, a prompt runs
    /// `Behaviour::Image { steps: 3, bytes: default_png() }`.
    pub fn script(&self, behaviour: Behaviour) {
        self.shared.with(|s| s.scripted.push_back(behaviour));
    }

    /// The `prompt` workflows received by `POST /prompt`, in order (refused ones too).
    pub fn submissions(&self) -> Vec<Value> {
        self.shared.with(|s| s.submissions.clone())
    }

    /// Prompts accepted by `POST /prompt` (given a prompt id).
    pub fn executions(&self) -> usize {
        self.shared.with(|s| s.executions)
    }

    /// The prompt ids `POST /interrupt` named, in order ("" for a body without one).
    pub fn interrupts(&self) -> Vec<String> {
        self.shared.with(|s| s.interrupts.clone())
    }

    /// The prompt ids `POST /queue` asked to delete, in order.
    pub fn queue_deletes(&self) -> Vec<String> {
        self.shared.with(|s| s.queue_deletes.clone())
    }

    /// Requests to `/history` and `/history/{prompt_id}`.
    pub fn history_polls(&self) -> usize {
        self.shared.with(|s| s.history_polls)
    }

    /// Resolves once `n` prompts have started running (sent execution_start).
    pub async fn wait_running(&self, n: usize) {
        let mut started = self.shared.started.subscribe();
        let _ = started.wait_for(|count| *count >= n).await;
    }

    /// Lets every `Held` prompt accepted so far go on.
    pub fn release(&self) {
        self.shared.with(|s| s.releases += 1);
        self.shared.poke();
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/prompt", web::post().to(post_prompt))
        .route("/prompt", web::get().to(get_prompt))
        .route("/ws", web::get().to(socket))
        .route("/history", web::get().to(all_history))
        .route("/history/{prompt_id}", web::get().to(one_history))
        .route("/view", web::get().to(view))
        .route("/interrupt", web::post().to(interrupt))
        .route("/queue", web::get().to(get_queue))
        .route("/queue", web::post().to(post_queue))
        .route("/system_stats", web::get().to(system_stats));
}

async fn post_prompt(shared: web::Data<Shared>, body: Bytes) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let Some(workflow) = body.get("prompt").cloned() else {
        return HttpResponse::BadRequest().json(json!({
            "error": {"type": "no_prompt", "message": "No prompt provided", "details":
                "No prompt provided", "extra_info": {}},
            "node_errors": {}
        }));
    };
    let client_id = body
        .get("client_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let accepted = shared.with(|s| {
        s.submissions.push(workflow.clone());
        s.submitted += 1;
        let number = s.submitted;
        let behaviour = s.scripted.pop_front().unwrap_or_else(default_behaviour);
        match behaviour {
            Behaviour::MalformedSubmit => {
                return Err((200, json!({"number": number})));
            }
            Behaviour::NodeErrors => {
                return Err((400, validation_error()));
            }
            _ => {}
        }
        let id = uuid::Uuid::new_v4().to_string();
        s.executions += 1;
        let queued = matches!(behaviour, Behaviour::Queued);
        s.prompts.push(Prompt {
            id: id.clone(),
            number,
            client_id,
            workflow,
            behaviour,
            phase: Phase::Pending,
            interrupted: false,
            releases_before: s.releases,
            messages: Vec::new(),
            outputs: json!({}),
            status: None,
        });
        Ok((id, number, queued))
    });
    match accepted {
        Ok((id, number, queued)) => {
            if !queued {
                actix_web::rt::spawn(run(shared.into_inner(), id.clone()));
            }
            HttpResponse::Ok().json(json!({"prompt_id": id, "number": number, "node_errors": {}}))
        }
        Err((200, body)) => HttpResponse::Ok().json(body),
        Err((_, body)) => HttpResponse::BadRequest().json(body),
    }
}

/// ComfyUI's answer to a workflow naming a checkpoint it does not have.
fn validation_error() -> Value {
    json!({
        "error": {"type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
        "node_errors": {"4": {
            "errors": [{"type": "value_not_in_list", "message": "Value not in list",
                "details": "ckpt_name: 'missing.safetensors' not in ['v1-5-pruned-emaonly.safetensors']",
                "extra_info": {"input_name": "ckpt_name", "input_config": null,
                    "received_value": "missing.safetensors"}}],
            "dependent_outputs": ["9"],
            "class_type": "CheckpointLoaderSimple"
        }}
    })
}

/// Runs one accepted prompt by its behaviour.
async fn run(shared: Arc<Shared>, id: String) {
    let Some(behaviour) = shared.with(|s| {
        let prompt = s.prompt(&id)?;
        prompt.phase = Phase::Running;
        let behaviour = prompt.behaviour.clone();
        s.emit(&id, "execution_start", json!({"prompt_id": id}));
        Some(behaviour)
    }) else {
        return;
    };
    shared.started.send_modify(|n| *n += 1);
    let (steps, bytes, held, complete) = match behaviour {
        Behaviour::NeverFinishes => return,
        Behaviour::Failing(message) => return fail(&shared, &id, message).await,
        Behaviour::Image { steps, bytes } => (steps, bytes, false, true),
        Behaviour::Held { steps, bytes } => (steps, bytes, true, true),
        Behaviour::MalformedHistory => (3, default_png(), false, false),
        Behaviour::MalformedSubmit | Behaviour::NodeErrors | Behaviour::Queued => return,
    };
    let node = |node: &str| json!({"node": node, "display_node": node, "prompt_id": id});
    shared.with(|s| {
        s.emit(
            &id,
            "execution_cached",
            json!({"nodes": [], "prompt_id": id}),
        );
        s.emit(&id, "executing", node("3"));
    });
    if held && steps == 0 && !hold(&shared, &id).await {
        return interrupted(&shared, &id);
    }
    for step in 1..=steps {
        tokio::time::sleep(STEP_INTERVAL).await;
        if shared.with(|s| s.prompt(&id).is_some_and(|p| p.interrupted)) {
            return interrupted(&shared, &id);
        }
        shared.with(|s| {
            let progress = json!({"value": step, "max": steps, "prompt_id": id, "node": "3"});
            s.emit(&id, "progress", progress);
            if step == 1 {
                s.preview(&id, &bytes);
            }
        });
        if held && step == 1 && !hold(&shared, &id).await {
            return interrupted(&shared, &id);
        }
    }
    tokio::time::sleep(STEP_INTERVAL).await;
    shared.with(|s| {
        s.emit(&id, "executing", node("9"));
        if !complete {
            // Malformed history: the run ends without its output; history answers garbage.
            if let Some(prompt) = s.prompt(&id) {
                prompt.phase = Phase::Done;
            }
            s.emit(
                &id,
                "executing",
                json!({"node": null, "display_node": null, "prompt_id": id}),
            );
            return;
        }
        let number = s.prompt(&id).map_or(0, |p| p.number);
        let filename = format!("ComfyUI_{number:05}_.png");
        let image = json!({"filename": filename, "subfolder": "", "type": "output"});
        s.files
            .insert((filename, String::new(), "output".into()), bytes);
        if let Some(prompt) = s.prompt(&id) {
            prompt.outputs = json!({"9": {"images": [image]}});
        }
        let executed = json!({"node": "9", "display_node": "9", "output": {"images": [image]},
            "prompt_id": id});
        s.emit(&id, "executed", executed);
        // ComfyUI's order: execution_success, the history entry, then executing null.
        s.emit(&id, "execution_success", json!({"prompt_id": id}));
        s.finish(&id, true);
        s.emit(
            &id,
            "executing",
            json!({"node": null, "display_node": null, "prompt_id": id}),
        );
    });
}

/// Waits for a release or an interrupt; false when interrupted.
async fn hold(shared: &Shared, id: &str) -> bool {
    let mut wake = shared.wake.subscribe();
    loop {
        wake.borrow_and_update();
        let (released, interrupted) = shared.with(|s| {
            let releases = s.releases;
            s.prompt(id).map_or((false, true), |p| {
                (releases > p.releases_before, p.interrupted)
            })
        });
        if interrupted {
            return false;
        }
        if released {
            return true;
        }
        if wake.changed().await.is_err() {
            return false;
        }
    }
}

fn interrupted(shared: &Shared, id: &str) {
    shared.with(|s| {
        s.emit(
            id,
            "execution_interrupted",
            json!({"prompt_id": id, "node_id": "3", "node_type": "KSampler",
                "executed": ["4", "5", "6", "7"]}),
        );
        s.finish(id, false);
        s.emit(
            id,
            "executing",
            json!({"node": null, "display_node": null, "prompt_id": id}),
        );
    });
}

async fn fail(shared: &Shared, id: &str, message: String) {
    shared.with(|s| {
        s.emit(
            id,
            "execution_cached",
            json!({"nodes": [], "prompt_id": id}),
        );
        s.emit(
            id,
            "executing",
            json!({"node": "3", "display_node": "3", "prompt_id": id}),
        );
    });
    tokio::time::sleep(STEP_INTERVAL).await;
    shared.with(|s| {
        s.emit(
            id,
            "execution_error",
            json!({"prompt_id": id, "node_id": "3", "node_type": "KSampler",
                "executed": ["4", "5", "6", "7"], "exception_message": message,
                "exception_type": "RuntimeError",
                "traceback": ["  File \"execution.py\", line 1, in execute\n"],
                "current_inputs": {}, "current_outputs": {}}),
        );
        s.finish(id, false);
        s.emit(
            id,
            "executing",
            json!({"node": null, "display_node": null, "prompt_id": id}),
        );
    });
}

/// `/ws?clientId=…`: a `status` frame, every event already sent to this client, then the
/// live ones.
async fn socket(
    shared: web::Data<Shared>,
    req: HttpRequest,
    body: web::Payload,
    query: web::Query<HashMap<String, String>>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, mut session, mut incoming) = actix_ws::handle(&req, body)?;
    let client_id = query
        .get("clientId")
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let (tx, mut rx) = mpsc::unbounded_channel();
    shared.with(|s| {
        let status = json!({"type": "status", "data": {"status": {"exec_info":
            {"queue_remaining": s.queue_remaining()}}, "sid": client_id}});
        let _ = tx.send(Frame::Text(status.to_string()));
        let client = s.clients.entry(client_id).or_default();
        for text in &client.log {
            let _ = tx.send(Frame::Text(text.clone()));
        }
        client.sockets.push(tx);
    });
    actix_web::rt::spawn(async move {
        loop {
            tokio::select! {
                frame = rx.recv() => {
                    let sent = match frame {
                        Some(Frame::Text(text)) => session.text(text).await,
                        Some(Frame::Binary(bytes)) => session.binary(bytes).await,
                        None => break,
                    };
                    if sent.is_err() {
                        break;
                    }
                }
                message = incoming.recv() => match message {
                    Some(Ok(actix_ws::Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(actix_ws::Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {}
                },
            }
        }
        let _ = session.close(None).await;
    });
    Ok(response)
}

async fn one_history(shared: web::Data<Shared>, path: web::Path<String>) -> HttpResponse {
    let id = path.into_inner();
    let answer = shared.with(|s| {
        s.history_polls += 1;
        let prompt = s.prompt(&id)?;
        if matches!(prompt.behaviour, Behaviour::MalformedHistory) {
            return Some(Err(()));
        }
        prompt.history_entry().map(Ok)
    });
    match answer {
        Some(Err(())) => HttpResponse::Ok()
            .content_type("application/json")
            .body("<html><body>502 Bad Gateway</body></html>{\"truncated\": "),
        Some(Ok(entry)) => HttpResponse::Ok().json(json!({ id: entry })),
        None => HttpResponse::Ok().json(json!({})),
    }
}

async fn all_history(shared: web::Data<Shared>) -> HttpResponse {
    let all = shared.with(|s| {
        s.history_polls += 1;
        let entries = s
            .prompts
            .iter()
            .filter(|p| !matches!(p.behaviour, Behaviour::MalformedHistory))
            .filter_map(|p| Some((p.id.clone(), p.history_entry()?)));
        Value::Object(entries.collect())
    });
    HttpResponse::Ok().json(all)
}

async fn view(
    shared: web::Data<Shared>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let field = |name: &str, default: &str| {
        query
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let key = (
        field("filename", ""),
        field("subfolder", ""),
        field("type", "output"),
    );
    match shared.with(|s| s.files.get(&key).cloned()) {
        Some(bytes) => HttpResponse::Ok()
            .content_type("image/png")
            .insert_header(("Content-Disposition", format!("filename=\"{}\"", key.0)))
            .body(bytes),
        None => HttpResponse::NotFound().finish(),
    }
}

/// `{"prompt_id": …}` interrupts that prompt if it runs; a body without one interrupts
/// whatever runs (ComfyUI's older, untargeted interrupt).
async fn interrupt(shared: web::Data<Shared>, body: Bytes) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = body
        .get("prompt_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    shared.with(|s| {
        s.interrupts.push(id.clone());
        for prompt in s.prompts.iter_mut() {
            if prompt.phase == Phase::Running && (id.is_empty() || prompt.id == id) {
                prompt.interrupted = true;
            }
        }
    });
    shared.poke();
    HttpResponse::Ok().finish()
}

/// `{"delete": [ids]}` removes those prompts if still queued; `{"clear": true}` all queued.
async fn post_queue(shared: web::Data<Shared>, body: Bytes) -> HttpResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or_default();
    let clear = body.get("clear").and_then(Value::as_bool) == Some(true);
    let delete: Vec<String> = body
        .get("delete")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|id| id.as_str().map(str::to_string))
        .collect();
    shared.with(|s| {
        s.queue_deletes.extend(delete.iter().cloned());
        for prompt in s.prompts.iter_mut() {
            if prompt.phase == Phase::Pending && (clear || delete.contains(&prompt.id)) {
                prompt.phase = Phase::Deleted;
            }
        }
    });
    HttpResponse::Ok().finish()
}

async fn get_queue(shared: web::Data<Shared>) -> HttpResponse {
    let queue = shared.with(|s| {
        let items = |phase| {
            s.in_phase(phase)
                .map(Prompt::queue_item)
                .collect::<Vec<_>>()
        };
        json!({"queue_running": items(Phase::Running), "queue_pending": items(Phase::Pending)})
    });
    HttpResponse::Ok().json(queue)
}

async fn get_prompt(shared: web::Data<Shared>) -> HttpResponse {
    let remaining = shared.with(|s| s.queue_remaining());
    HttpResponse::Ok().json(json!({"exec_info": {"queue_remaining": remaining}}))
}

async fn system_stats() -> HttpResponse {
    HttpResponse::Ok().json(json!({
        "system": {"os": "posix", "ram_total": 34359738368u64, "ram_free": 17179869184u64,
            "comfyui_version": "0.3.60", "python_version": "3.12.3", "pytorch_version": "2.8.0",
            "embedded_python": false, "argv": ["main.py", "--listen"]},
        "devices": [{"name": "mock", "type": "cpu", "index": null, "vram_total": 0,
            "vram_free": 0, "torch_vram_total": 0, "torch_vram_free": 0}]
    }))
}

#[actix_web::test]
async fn mock_comfyui_runs_a_prompt_over_ws_and_history() {
    use futures_util::StreamExt;
    use lowart::providers::comfyui::{self, HistoryState, OutputFile, WsEvent};
    use tokio_tungstenite::tungstenite::Message;

    let comfy = MockComfy::start().await;
    let client_id = "self-test";
    let url = comfyui::ws_url(&comfy.base_url, client_id).unwrap();
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let http = reqwest::Client::new();
    let workflow = json!({"3": {"class_type": "KSampler", "inputs": {"seed": 42}}});

    let req = comfyui::prompt_request(&comfy.base_url, workflow.clone(), client_id).unwrap();
    let answer = http
        .post(req.url)
        .headers(req.headers)
        .body(req.body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let prompt_id = comfyui::decode_submitted(status, &answer.bytes().await.unwrap()).unwrap();
    let mut events = Vec::new();
    let mut previews = 0;
    let read = async {
        while let Some(frame) = socket.next().await {
            let text = match frame.unwrap() {
                Message::Text(text) => text,
                Message::Binary(_) => {
                    previews += 1;
                    continue;
                }
                _ => continue,
            };
            match comfyui::decode_ws(text.as_str(), &prompt_id).unwrap() {
                WsEvent::Ignored => {}
                WsEvent::Finished => break,
                event => events.push(event),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the prompt finishes");

    let image = OutputFile {
        filename: "ComfyUI_00001_.png".into(),
        subfolder: String::new(),
        kind: "output".into(),
    };
    assert_eq!(
        events,
        vec![
            WsEvent::Started,
            WsEvent::Progress { value: 1, max: 3 },
            WsEvent::Progress { value: 2, max: 3 },
            WsEvent::Progress { value: 3, max: 3 },
            WsEvent::Executed(vec![image.clone()]),
            WsEvent::Succeeded,
        ]
    );
    assert_eq!(previews, 1);
    let history = http
        .get(comfyui::history_url(&comfy.base_url, &prompt_id))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(
        comfyui::decode_history(&history, &prompt_id),
        Ok(HistoryState::Succeeded(vec![image.clone()]))
    );
    let view = http
        .get(comfyui::view_url(&comfy.base_url, &image).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(view.headers()["content-type"], "image/png");
    assert_eq!(view.bytes().await.unwrap().to_vec(), default_png());
    assert_eq!(comfy.submissions(), vec![workflow]);
    assert_eq!((comfy.executions(), comfy.history_polls()), (1, 1));
}
