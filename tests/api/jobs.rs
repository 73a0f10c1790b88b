//! Async jobs: `"async": true` on chat, images (the mock vendor and a mock ComfyUI that
//! speaks ComfyUI's API), status and events, artifacts, webhooks, cancellation, ownership,
//! failures that end a job, and jobs that survive SIGTERM and SIGKILL. On SQLite and, with
//! `TEST_DATABASE_URL`, on PostgreSQL.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use serde_json::{Value, json};

use crate::helpers::{
    Gateway, MASTER_KEY, TestApp, drop_test_database, fresh_database_url, spawn_app,
    spawn_app_with, spawn_binary, terminate, user_message,
};
use crate::mock_comfyui::{Behaviour, MockComfy, default_png};
use crate::mock_upstream::Reply;

/// A txt2img workflow in ComfyUI's API format with every placeholder: alone in a string
/// (which takes the value's JSON type) and inside text.
pub fn workflow() -> Value {
    json!({
        "3": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}", "steps": "{{steps}}",
            "cfg": 7, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "masterpiece, {{prompt}}", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{negative_prompt}}", "clip": ["4", 1]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "lowart", "images": ["8", 0]}}
    })
}

fn comfy_deployment(model: &str, base_url: &str, settings: Value) -> Value {
    json!({"model_id": model, "vendor_type": "ComfyUI", "base_url": base_url,
        "workflow": workflow(), "settings": settings})
}

async fn add_comfy(app: &TestApp, model: &str, comfy: &MockComfy, settings: Value) {
    let body = comfy_deployment(model, &comfy.base_url, settings);
    let res = app.post_json("/admin/models", &app.admin_key, &body).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
}

/// Submits `body` to `path` as a job; answers its id.
async fn submit(
    client: &reqwest::Client,
    address: &str,
    path: &str,
    key: &str,
    body: Value,
) -> String {
    let res = client
        .post(format!("{address}{path}"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let location = res.headers()["location"].to_str().unwrap().to_string();
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["status"], "async_started");
    assert_eq!(answer["model"], body["model"]);
    let id = answer["job_id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/jobs/{id}"));
    id
}

async fn image_job(app: &TestApp, key: &str, body: Value) -> String {
    submit(
        &app.client,
        &app.address,
        "/v1/images/generations",
        key,
        body,
    )
    .await
}

async fn get_job(client: &reqwest::Client, address: &str, key: &str, id: &str) -> Value {
    let res = client
        .get(format!("{address}/v1/jobs/{id}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// The job once `ready` holds for it, asked again as long as it does not (a state the
/// job reaches on its own, with no event to wait for).
async fn job_until(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    id: &str,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    loop {
        let job = get_job(client, address, key, id).await;
        if ready(&job) {
            return job;
        }
        tokio::task::yield_now().await;
    }
}

fn has_prompt_id(job: &Value) -> bool {
    job["upstream"]["prompt_id"].is_string()
}

/// The statuses an events stream told, `done` for its last event.
fn statuses(events: &[(String, Value)]) -> Vec<&str> {
    events
        .iter()
        .map(|(e, d)| {
            if e == "done" {
                "done"
            } else {
                d["status"].as_str().unwrap()
            }
        })
        .collect()
}

/// A job's events, open: every change from here on reaches it.
async fn open_events(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    id: &str,
) -> reqwest::Response {
    let res = client
        .get(format!("{address}/v1/jobs/{id}/events"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    res
}

/// The job's events from now to its end: `(event, data)`, the last one `done`.
async fn follow(
    client: &reqwest::Client,
    address: &str,
    key: &str,
    id: &str,
) -> Vec<(String, Value)> {
    read_events(open_events(client, address, key, id).await).await
}

async fn read_events(res: reqwest::Response) -> Vec<(String, Value)> {
    let body = tokio::time::timeout(Duration::from_secs(60), res.text())
        .await
        .expect("the events end with the job")
        .unwrap();
    let events = crate::helpers::sse_events(&body);
    assert_eq!(
        events.last().map(|(e, _)| e.as_str()),
        Some("done"),
        "{body}"
    );
    events
}

/// Waits for the job's end through its events; answers the final job.
async fn finished(app: &TestApp, key: &str, id: &str) -> Value {
    let events = follow(&app.client, &app.address, key, id).await;
    events.last().unwrap().1.clone()
}

#[actix_web::test]
async fn an_async_chat_job_runs_through_the_relay_and_is_billed_once() {
    // One job at a time: a held image job keeps the chat job queued until it is released.
    let app = spawn_app_with(|s| s.jobs.max_running = 1).await;
    let comfy = MockComfy::start().await;
    add_comfy(&app, "sd", &comfy, json!({})).await;
    comfy.script(Behaviour::Held {
        steps: 2,
        bytes: default_png(),
    });
    image_job(
        &app,
        &app.admin_key,
        json!({"model": "sd", "prompt": "first", "async": true}),
    )
    .await;
    comfy.wait_running(1).await;
    app.add_openai_model("gpt-jobs", json!({})).await;
    app.upstream.push(Reply::Text {
        content: "done later".into(),
        prompt_tokens: 11,
        completion_tokens: 3,
    });
    let body =
        json!({"model": "gpt-jobs", "messages": user_message("write slowly"), "async": true});
    let id = submit(
        &app.client,
        &app.address,
        "/v1/chat/completions",
        &app.admin_key,
        body,
    )
    .await;
    let events = open_events(&app.client, &app.address, &app.admin_key, &id).await;
    comfy.release();
    let events = read_events(events).await;
    let statuses = statuses(&events);
    assert_eq!(statuses, ["queued", "running", "succeeded", "done"]);
    let job = events.last().unwrap().1.clone();
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["kind"], "chat_completion");
    assert_eq!(job["progress"], 1.0);
    assert_eq!(job["result"]["object"], "chat.completion");
    assert_eq!(
        job["result"]["choices"][0]["message"]["content"],
        "done later"
    );
    // The vendor never sees the gateway's job fields.
    let received = app.upstream.received();
    assert_eq!(received.len(), 1);
    assert!(
        received[0].body.get("async").is_none(),
        "{:?}",
        received[0].body
    );
    // One usage row, under the job's id, with the vendor's figures.
    app.store
        .send(lowart::actors::store::FlushUsage)
        .await
        .unwrap();
    let rows = app.usage_rows().await;
    let row = rows
        .iter()
        .find(|r| r.request_id == id)
        .expect("a usage row for the job");
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens),
        (Some(11), Some(3))
    );
    assert_eq!(row.status, 200);
    // Anthropic's endpoint makes Anthropic-shaped results.
    let body = json!({"model": "mock", "max_tokens": 50, "messages": user_message("hello"), "async": true});
    let id = submit(
        &app.client,
        &app.address,
        "/v1/messages",
        &app.admin_key,
        body,
    )
    .await;
    let job = finished(&app, &app.admin_key, &id).await;
    assert_eq!(job["kind"], "message");
    assert_eq!(job["result"]["type"], "message", "{job}");
    // An async job does not stream.
    let body =
        json!({"model": "mock", "messages": user_message("x"), "async": true, "stream": true});
    let res = app
        .post_json("/v1/chat/completions", &app.admin_key, &body)
        .await;
    let error = crate::helpers::assert_openai_error(res, 400).await;
    assert_eq!(error["param"], "stream");
    // Jobs list, newest first.
    let list: Value = app
        .get("/v1/jobs?limit=1", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list["data"][0]["id"], id);
    assert_eq!(list["has_more"], true);
    let next = list["next_before"].as_str().unwrap();
    let page: Value = app
        .get(&format!("/v1/jobs?limit=10&before={next}"), &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    // The chat job, then the image job that went first.
    let kinds: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["chat_completion", "image"]);
    assert_eq!(page["has_more"], false);
}

#[actix_web::test]
async fn a_comfyui_job_waits_its_turn_reports_progress_and_stores_the_image() {
    let app = spawn_app_with(|s| s.jobs.max_running_per_model = 1).await;
    let comfy = MockComfy::start().await;
    add_comfy(&app, "sd", &comfy, json!({"poll_interval_ms": 100})).await;
    let first_png: Vec<u8> = default_png().into_iter().chain(*b"first").collect();
    let second_png: Vec<u8> = default_png().into_iter().chain(*b"second").collect();
    comfy.script(Behaviour::Held {
        steps: 4,
        bytes: first_png.clone(),
    });
    comfy.script(Behaviour::Image {
        steps: 4,
        bytes: second_png.clone(),
    });
    let first = image_job(
        &app,
        &app.admin_key,
        json!({"model": "sd", "prompt": "a red fox",
        "size": "512x768", "seed": 1234, "steps": 12, "negative_prompt": "blurry", "async": true}),
    )
    .await;
    comfy.wait_running(1).await;
    // One job of `sd` at a time: the second waits, queued.
    let second = image_job(
        &app,
        &app.admin_key,
        json!({"model": "sd", "prompt": "a cat", "async": true}),
    )
    .await;
    let queued = get_job(&app.client, &app.address, &app.admin_key, &second).await;
    assert_eq!(queued["status"], "queued");
    let running = get_job(&app.client, &app.address, &app.admin_key, &first).await;
    assert_eq!(running["status"], "running");
    // Both followed from before the release on.
    let watching = open_events(&app.client, &app.address, &app.admin_key, &second).await;
    let watching = actix_web::rt::spawn(read_events(watching));
    let first_events = open_events(&app.client, &app.address, &app.admin_key, &first).await;
    let first_events = actix_web::rt::spawn(read_events(first_events));
    comfy.release();
    let first_events = first_events.await.unwrap();
    let job = &first_events.last().unwrap().1;
    assert_eq!(job["status"], "succeeded", "{job}");
    // The progress the mock reported (steps 2..4 of 4 after the hold), in order, then done.
    let progress: Vec<f64> = first_events
        .iter()
        .filter(|(e, _)| e == "status")
        .filter_map(|(_, d)| d["progress"].as_f64())
        .collect();
    assert!(
        progress.contains(&0.5) && progress.contains(&1.0),
        "{progress:?}"
    );
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    // The artifact is the mock's bytes, served with its content type.
    assert_eq!(job["artifacts"][0]["content_type"], "image/png");
    assert_eq!(
        job["result"]["data"][0]["url"],
        format!("/v1/jobs/{first}/artifacts/0")
    );
    let res = app
        .get(&format!("/v1/jobs/{first}/artifacts/0"), &app.admin_key)
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
    assert_eq!(res.bytes().await.unwrap().to_vec(), first_png);
    let missing = app
        .get(&format!("/v1/jobs/{first}/artifacts/1"), &app.admin_key)
        .await;
    assert_eq!(missing.status(), 404);
    // The second ran once the first was done: queued, running, succeeded.
    let second_events = watching.await.unwrap();
    let statuses = statuses(&second_events);
    assert_eq!(statuses.first(), Some(&"queued"), "{statuses:?}");
    assert!(statuses.contains(&"running"), "{statuses:?}");
    assert_eq!(
        &statuses[statuses.len() - 2..],
        ["succeeded", "done"],
        "{statuses:?}"
    );
    let res = app
        .get(&format!("/v1/jobs/{second}/artifacts/0"), &app.admin_key)
        .await;
    assert_eq!(res.bytes().await.unwrap().to_vec(), second_png);
    // Placeholders filled with their JSON types; text keeps its words around them.
    let submitted = comfy.submissions();
    assert_eq!(submitted.len(), 2);
    let w = &submitted[0];
    assert_eq!(w["3"]["inputs"]["seed"], json!(1234));
    assert_eq!(w["3"]["inputs"]["steps"], json!(12));
    assert_eq!(w["5"]["inputs"]["width"], json!(512));
    assert_eq!(w["5"]["inputs"]["height"], json!(768));
    assert_eq!(w["6"]["inputs"]["text"], json!("masterpiece, a red fox"));
    assert_eq!(w["7"]["inputs"]["text"], json!("blurry"));
    assert_eq!(w["3"]["inputs"]["cfg"], json!(7));
    assert!(
        submitted[1]["3"]["inputs"]["seed"].is_u64(),
        "a random seed is still a number"
    );
    assert_eq!(comfy.executions(), 2);
    // A ComfyUI model does not chat.
    let chat = json!({"model": "sd", "messages": user_message("hi")});
    let res = app
        .post_json("/v1/chat/completions", &app.admin_key, &chat)
        .await;
    crate::helpers::assert_openai_error(res, 400).await;
}

#[actix_web::test]
async fn synchronous_images_answer_urls_or_base64_of_the_stored_artifacts() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/v1/images/generations",
            &app.admin_key,
            &json!({"model": "mock", "prompt": "a boat", "n": 2}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let job_id = res.headers()["x-lowart-job-id"]
        .to_str()
        .unwrap()
        .to_string();
    let answer: Value = res.json().await.unwrap();
    let data = answer["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    let url = data[1]["url"].as_str().unwrap();
    assert_eq!(url, format!("{}/v1/jobs/{job_id}/artifacts/1", app.address));
    let bytes = app
        .client
        .get(url)
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&bytes[..4], b"\x89PNG");
    let res = app
        .post_json(
            "/v1/images/generations",
            &app.admin_key,
            &json!({"model": "mock", "prompt": "a boat", "response_format": "b64_json"}),
        )
        .await;
    let answer: Value = res.json().await.unwrap();
    let b64 = answer["data"][0]["b64_json"].as_str().unwrap();
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(png, bytes.to_vec());
    // Bad requests name their parameter; unknown models are 404.
    for (body, param) in [
        (json!({"model": "mock"}), "prompt"),
        (json!({"model": "mock", "prompt": "x", "n": 0}), "n"),
        (
            json!({"model": "mock", "prompt": "x", "size": "huge"}),
            "size",
        ),
        (
            json!({"model": "mock", "prompt": "x", "webhook_url": "http://127.0.0.1:1/"}),
            "webhook_url",
        ),
    ] {
        let res = app
            .post_json("/v1/images/generations", &app.admin_key, &body)
            .await;
        let error = crate::helpers::assert_openai_error(res, 400).await;
        assert_eq!(error["param"], param);
    }
    let res = app
        .post_json(
            "/v1/images/generations",
            &app.admin_key,
            &json!({"model": "nope", "prompt": "x"}),
        )
        .await;
    crate::helpers::assert_openai_error(res, 404).await;
    // Another user's job, its artifacts and its events are not there for them; admins list all.
    let other = app.user_key("someone", "user", None).await;
    for path in [
        format!("/v1/jobs/{job_id}"),
        format!("/v1/jobs/{job_id}/artifacts/0"),
        format!("/v1/jobs/{job_id}/events"),
    ] {
        let res = app.get(&path, &other).await;
        crate::helpers::assert_openai_error(res, 404).await;
    }
    let res = app.delete(&format!("/v1/jobs/{job_id}"), &other).await;
    crate::helpers::assert_openai_error(res, 404).await;
    let theirs: Value = app.get("/v1/jobs", &other).await.json().await.unwrap();
    assert_eq!(theirs["data"], json!([]));
    let all: Value = app
        .get("/admin/jobs?kind=image&status=succeeded", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    let res = app.get("/admin/jobs", &other).await;
    crate::helpers::assert_openai_error(res, 403).await;
    let res = app.get("/admin/jobs?status=done", &app.admin_key).await;
    crate::helpers::assert_openai_error(res, 400).await;
}

/// One request a receiver got: its headers and body.
type Delivery = (Vec<(String, String)>, String);

/// A webhook receiver: records each request's headers and body; answers 200.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Delivery>>>,
    arrived: Arc<tokio::sync::Notify>,
    /// How many requests are refused before the first is taken.
    refuse: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    /// Takes every request from now on.
    fn accept(&self) {
        self.refuse.store(0, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A receiver that answers 503 to its first `refuse` requests.
async fn receiver(refuse: usize) -> Receiver {
    let got: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let arrived = Arc::new(tokio::sync::Notify::new());
    let refuse = Arc::new(std::sync::atomic::AtomicUsize::new(refuse));
    let (g, a, r) = (got.clone(), arrived.clone(), refuse.clone());
    let server = HttpServer::new(move || {
        let (g, a, r) = (g.clone(), a.clone(), r.clone());
        App::new().default_service(web::to(move |req: HttpRequest, body: String| {
            let (g, a, r) = (g.clone(), a.clone(), r.clone());
            async move {
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                    .collect();
                let count = {
                    let mut got = g.lock().unwrap();
                    got.push((headers, body));
                    got.len()
                };
                if count <= r.load(std::sync::atomic::Ordering::SeqCst) {
                    return HttpResponse::ServiceUnavailable().finish();
                }
                a.notify_one();
                HttpResponse::Ok().finish()
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let url = format!("http://{}/hooks/lowart", server.addrs()[0]);
    actix_web::rt::spawn(server.run());
    Receiver {
        url,
        got,
        arrived,
        refuse,
    }
}

#[actix_web::test]
async fn a_webhook_arrives_once_with_a_standard_webhooks_signature() {
    let app = spawn_app().await;
    let hook = receiver(0).await;
    let key = app.user_key("hooked", "user", None).await;
    let id = image_job(
        &app,
        &key,
        json!({"model": "mock", "prompt": "x", "async": true,
        "webhook_url": hook.url}),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(30), hook.arrived.notified())
        .await
        .expect("the webhook arrives");
    // Delivered and recorded as such; never sent again.
    let job = finished(&app, &key, &id).await;
    assert_eq!(job["status"], "succeeded");
    let job = job_until(&app.client, &app.address, &key, &id, |j| {
        j["webhook"]["status"] != "pending"
    })
    .await;
    assert_eq!(job["webhook"]["status"], "delivered");
    let got = hook.got.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    let (headers, body) = &got[0];
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let payload: Value = serde_json::from_str(body).unwrap();
    assert_eq!(payload["type"], "job.succeeded");
    assert_eq!(payload["data"]["id"], id);
    assert_eq!(payload["data"]["status"], "succeeded");
    // Verified as a receiver would: the key's secret, `{id}.{timestamp}.{body}`, HMAC-SHA256.
    let secret: Value = app
        .get("/v1/webhook_secret", &key)
        .await
        .json()
        .await
        .unwrap();
    let secret = secret["secret"]
        .as_str()
        .unwrap()
        .strip_prefix("whsec_")
        .unwrap()
        .to_string();
    let secret = base64::engine::general_purpose::STANDARD
        .decode(secret)
        .unwrap();
    let signed = format!(
        "{}.{}.{}",
        header("webhook-id"),
        header("webhook-timestamp"),
        body
    );
    let signature = header("webhook-signature");
    let tag = base64::engine::general_purpose::STANDARD
        .decode(signature.strip_prefix("v1,").unwrap())
        .unwrap();
    let key_ring = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    ring::hmac::verify(&key_ring, signed.as_bytes(), &tag).expect("the signature verifies");
    let age = chrono::Utc::now().timestamp() - header("webhook-timestamp").parse::<i64>().unwrap();
    assert!((0..60).contains(&age));
    // A refused delivery is retried (after a second) with the same id, then delivered.
    let flaky = receiver(1).await;
    let id = image_job(
        &app,
        &key,
        json!({"model": "mock", "prompt": "y", "async": true,
        "webhook_url": flaky.url}),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(30), flaky.arrived.notified())
        .await
        .expect("delivered on a retry");
    let got = flaky.got.lock().unwrap().clone();
    assert_eq!(got.len(), 2);
    let ids: Vec<String> = got
        .iter()
        .map(|(h, _)| h.iter().find(|(k, _)| k == "webhook-id").unwrap().1.clone())
        .collect();
    assert_eq!(ids, [format!("msg_{id}"), format!("msg_{id}")]);
    // Another key has another secret.
    let other: Value = app
        .get("/v1/webhook_secret", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    assert_ne!(
        other["secret"]
            .as_str()
            .unwrap()
            .strip_prefix("whsec_")
            .unwrap(),
        base64::engine::general_purpose::STANDARD.encode(&secret)
    );
}

#[actix_web::test]
async fn cancelling_a_running_comfyui_job_interrupts_it_and_a_queued_one_never_runs() {
    let app = spawn_app_with(|s| s.jobs.max_running_per_model = 1).await;
    let comfy = MockComfy::start().await;
    add_comfy(&app, "sd", &comfy, json!({})).await;
    comfy.script(Behaviour::Held {
        steps: 4,
        bytes: default_png(),
    });
    let running = image_job(
        &app,
        &app.admin_key,
        json!({"model": "sd", "prompt": "x", "async": true}),
    )
    .await;
    comfy.wait_running(1).await;
    let queued = image_job(
        &app,
        &app.admin_key,
        json!({"model": "sd", "prompt": "y", "async": true}),
    )
    .await;
    // The queued one is cancelled at once.
    let res = app
        .delete(&format!("/v1/jobs/{queued}"), &app.admin_key)
        .await;
    assert_eq!(res.status(), 200);
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["status"], "cancelled");
    // The running one: ComfyUI is told to stop it, then it ends cancelled.
    let res = app
        .delete(&format!("/v1/jobs/{running}"), &app.admin_key)
        .await;
    assert_eq!(res.status(), 200);
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["status"], "cancelled", "{job}");
    assert_eq!(job["error"]["code"], "cancelled");
    let submitted = comfy.submissions();
    assert_eq!(submitted.len(), 1, "the queued job never reached ComfyUI");
    let interrupts = comfy.interrupts();
    assert_eq!(interrupts.len(), 1, "{interrupts:?}");
    assert!(!interrupts[0].is_empty(), "the interrupt names the prompt");
    // A finished job stays as it was.
    let res = app
        .delete(&format!("/v1/jobs/{running}"), &app.admin_key)
        .await;
    let again: Value = res.json().await.unwrap();
    assert_eq!(again["status"], "cancelled");
    assert_eq!(again["finished_at"], job["finished_at"]);
    // A job whose prompt still waits in ComfyUI's own queue is taken out of it.
    comfy.script(Behaviour::Queued);
    let waiting = image_job(
        &app,
        &app.admin_key,
        json!({"model": "sd", "prompt": "z", "async": true}),
    )
    .await;
    let job = job_until(
        &app.client,
        &app.address,
        &app.admin_key,
        &waiting,
        has_prompt_id,
    )
    .await;
    let prompt_id = job["upstream"]["prompt_id"].as_str().unwrap().to_string();
    let res = app
        .delete(&format!("/v1/jobs/{waiting}"), &app.admin_key)
        .await;
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(
        comfy.queue_deletes().contains(&prompt_id),
        "{:?}",
        comfy.queue_deletes()
    );
}

#[actix_web::test]
async fn comfyui_failures_end_the_job_failed_with_a_clear_error() {
    let app = spawn_app_with(|s| {
        s.jobs.max_artifact_bytes = 1000;
        s.routing.max_attempts = 1;
    })
    .await;
    let comfy = MockComfy::start().await;
    add_comfy(
        &app,
        "sd",
        &comfy,
        json!({"timeout_ms": 1500, "poll_interval_ms": 100}),
    )
    .await;
    let cases = [
        (Behaviour::MalformedSubmit, "malformed_response", ""),
        (Behaviour::NodeErrors, "invalid_request", ""),
        (Behaviour::MalformedHistory, "malformed_response", ""),
        (
            Behaviour::Failing("CUDA out of memory".into()),
            "upstream_5xx",
            "CUDA out of memory",
        ),
        (
            Behaviour::NeverFinishes,
            "upstream_timeout",
            "did not finish",
        ),
        (
            Behaviour::Image {
                steps: 1,
                bytes: vec![7; 5000],
            },
            "malformed_response",
            "max_artifact_bytes",
        ),
    ];
    for (behaviour, code, words) in cases {
        comfy.script(behaviour.clone());
        let id = image_job(
            &app,
            &app.admin_key,
            json!({"model": "sd", "prompt": "x", "async": true}),
        )
        .await;
        let job = finished(&app, &app.admin_key, &id).await;
        assert_eq!(job["status"], "failed", "{behaviour:?}: {job}");
        assert_eq!(job["error"]["code"], code, "{behaviour:?}: {job}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(
            !message.is_empty() && message.contains(words),
            "{behaviour:?}: {message}"
        );
        assert!(job["finished_at"].is_i64());
        assert_eq!(job["artifacts"], json!([]));
    }
    // The hung prompt was interrupted when its time ran out.
    assert!(!comfy.interrupts().is_empty());
}

/// Runs the gateway binary on `db_url` (in `dir`) with short job leases.
async fn gateway(dir: &tempfile::TempDir, db_url: &str, admin_key: &str) -> Gateway {
    spawn_binary(
        dir,
        &[
            ("DATABASE_URL", db_url),
            ("LOWART_MASTER_KEY", MASTER_KEY),
            ("LOWART_ADMIN_KEY", admin_key),
            ("LOWART_JOBS__LEASE_MS", "1500"),
            ("LOWART_JOBS__POLL_MS", "100"),
            ("LOWART_JOBS__WEBHOOK_TIMEOUT_MS", "1000"),
        ],
    )
    .await
}

async fn kill_hard(gateway: &mut Gateway) {
    gateway.child.start_kill().unwrap();
    gateway.child.wait().await.unwrap();
}

#[actix_web::test]
async fn jobs_running_at_sigterm_and_at_sigkill_finish_after_a_restart() {
    crate::helpers::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let client = reqwest::Client::new();
    let comfy = MockComfy::start().await;
    for (signal, bytes) in [
        ("SIGTERM", b"after term".to_vec()),
        ("SIGKILL", b"after kill".to_vec()),
    ] {
        let mut gw = gateway(&dir, &db_url, &admin_key).await;
        if signal == "SIGTERM" {
            let res = client
                .post(format!("{}/admin/models", gw.address))
                .bearer_auth(&admin_key)
                .json(&comfy_deployment(
                    "sd",
                    &comfy.base_url,
                    json!({"poll_interval_ms": 100}),
                ))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 201);
        }
        comfy.script(Behaviour::Held {
            steps: 2,
            bytes: bytes.clone(),
        });
        let before = comfy.executions();
        let body = json!({"model": "sd", "prompt": signal, "async": true});
        let id = submit(
            &client,
            &gw.address,
            "/v1/images/generations",
            &admin_key,
            body,
        )
        .await;
        comfy.wait_running(before + 1).await;
        // Stopped once the job has saved its prompt id (it does so as ComfyUI takes it).
        job_until(&client, &gw.address, &admin_key, &id, has_prompt_id).await;
        if signal == "SIGTERM" {
            assert!(terminate(&mut gw.child).await.success());
        } else {
            kill_hard(&mut gw).await;
        }
        let gw = gateway(&dir, &db_url, &admin_key).await;
        comfy.release();
        let events = follow(&client, &gw.address, &admin_key, &id).await;
        let job = &events.last().unwrap().1;
        assert_eq!(job["status"], "succeeded", "{signal}: {job}");
        // Followed again, not submitted again.
        assert_eq!(comfy.executions(), before + 1, "{signal}");
        let res = client
            .get(format!("{}/v1/jobs/{id}/artifacts/0", gw.address))
            .bearer_auth(&admin_key)
            .send()
            .await
            .unwrap();
        assert_eq!(res.bytes().await.unwrap().to_vec(), bytes);
        let mut gw = gw;
        assert!(terminate(&mut gw.child).await.success());
    }
    drop_test_database(&db_url);
}

/// The model `sd` on a mock ComfyUI, registered through `on`.
async fn pair_comfy(pair: &crate::scale_out::Pair, comfy: &MockComfy) {
    let body = comfy_deployment("sd", &comfy.base_url, json!({"poll_interval_ms": 100}));
    pair.admin(
        &pair.a,
        reqwest::Method::POST,
        "/admin/models",
        Some(&body),
        201,
    )
    .await;
}

const PAIR_ENV: [(&str, &str); 3] = [
    ("LOWART_JOBS__LEASE_MS", "1500"),
    ("LOWART_JOBS__POLL_MS", "100"),
    ("LOWART_JOBS__MAX_RUNNING_PER_MODEL", "8"),
];

#[actix_web::test]
async fn two_instances_run_a_hundred_jobs_each_exactly_once() {
    let Some(pair) = crate::scale_out::spawn_pair(&PAIR_ENV).await else {
        return;
    };
    let comfy = MockComfy::start().await;
    pair_comfy(&pair, &comfy).await;
    // Submitted to both, alternately: each instance also claims what the other queued.
    let mut ids = Vec::new();
    for i in 0..100 {
        let on = if i % 2 == 0 { &pair.a } else { &pair.b };
        let body = json!({"model": "sd", "prompt": format!("image {i}"), "seed": i, "async": true});
        ids.push(
            submit(
                &pair.client,
                &on.address,
                "/v1/images/generations",
                &pair.admin_key,
                body,
            )
            .await,
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let on = if i % 3 == 0 { &pair.b } else { &pair.a };
        let events = follow(&pair.client, &on.address, &pair.admin_key, id).await;
        let job = &events.last().unwrap().1;
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "claimed once: {job}");
    }
    // Each prompt reached ComfyUI once: 100 submissions, 100 distinct seeds.
    assert_eq!(comfy.executions(), 100);
    let mut seeds: Vec<u64> = comfy
        .submissions()
        .iter()
        .map(|w| w["3"]["inputs"]["seed"].as_u64().unwrap())
        .collect();
    seeds.sort_unstable();
    seeds.dedup();
    assert_eq!(seeds.len(), 100);
}

#[actix_web::test]
async fn a_job_of_an_instance_that_dies_is_taken_over_after_its_lease() {
    let Some(mut pair) = crate::scale_out::spawn_pair(&PAIR_ENV).await else {
        return;
    };
    let comfy = MockComfy::start().await;
    pair_comfy(&pair, &comfy).await;
    comfy.script(Behaviour::Held {
        steps: 2,
        bytes: b"survived".to_vec(),
    });
    let body = json!({"model": "sd", "prompt": "hold on", "async": true});
    let id = submit(
        &pair.client,
        &pair.a.address,
        "/v1/images/generations",
        &pair.admin_key,
        body,
    )
    .await;
    comfy.wait_running(1).await;
    job_until(
        &pair.client,
        &pair.b.address,
        &pair.admin_key,
        &id,
        has_prompt_id,
    )
    .await;
    // Whoever runs it says so in its log; that instance dies.
    let runs_on_a = {
        let mut found = None;
        while found.is_none() {
            tokio::select! {
                Some(line) = pair.a.logs.recv() => {
                    if line.contains("job started") && line.contains(&id) { found = Some(true) }
                }
                Some(line) = pair.b.logs.recv() => {
                    if line.contains("job started") && line.contains(&id) { found = Some(false) }
                }
            }
        }
        found == Some(true)
    };
    let (dead, alive) = if runs_on_a {
        (&mut pair.a, &pair.b.address)
    } else {
        (&mut pair.b, &pair.a.address)
    };
    kill_hard(dead).await;
    let alive = alive.clone();
    let events = open_events(&pair.client, &alive, &pair.admin_key, &id).await;
    comfy.release();
    let events = read_events(events).await;
    let job = &events.last().unwrap().1;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["attempts"], 2, "claimed again after the lease: {job}");
    assert_eq!(comfy.executions(), 1, "followed, not submitted again");
    let res = pair
        .client
        .get(format!("{alive}/v1/jobs/{id}/artifacts/0"))
        .bearer_auth(&pair.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.bytes().await.unwrap().to_vec(), b"survived");
}

#[actix_web::test]
async fn large_artifacts_are_files_and_old_jobs_go_with_their_files() {
    let app = spawn_app_with(|s| s.jobs.inline_artifact_bytes = 16).await;
    let comfy = MockComfy::start().await;
    add_comfy(&app, "sd", &comfy, json!({"poll_interval_ms": 100})).await;
    let big: Vec<u8> = default_png().into_iter().chain(vec![42; 4096]).collect();
    comfy.script(Behaviour::Image {
        steps: 1,
        bytes: big.clone(),
    });
    let id = image_job(
        &app,
        &app.admin_key,
        json!({"model": "sd", "prompt": "x", "async": true}),
    )
    .await;
    assert_eq!(
        finished(&app, &app.admin_key, &id).await["status"],
        "succeeded"
    );
    // Above the inline size: a file in jobs.artifact_dir, served as the bytes.
    let file = app.dir.path().join("artifacts").join(format!("{id}-0"));
    assert_eq!(std::fs::read(&file).unwrap(), big);
    let res = app
        .get(&format!("/v1/jobs/{id}/artifacts/0"), &app.admin_key)
        .await;
    assert_eq!(res.bytes().await.unwrap().to_vec(), big);
    // Retention: finished jobs older than the cut go, their files with them; others stay.
    let young = image_job(
        &app,
        &app.admin_key,
        json!({"model": "mock", "prompt": "y", "async": true}),
    )
    .await;
    let young_job = finished(&app, &app.admin_key, &young).await;
    let cut = young_job["finished_at"].as_i64().unwrap();
    let purged = app
        .store
        .send(lowart::actors::store::PurgeJobs {
            finished_before: cut,
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(purged, 1);
    assert!(!file.exists());
    let res = app.get(&format!("/v1/jobs/{id}"), &app.admin_key).await;
    assert_eq!(res.status(), 404);
    let res = app
        .get(&format!("/v1/jobs/{young}/artifacts/0"), &app.admin_key)
        .await;
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn an_openai_images_deployment_gets_the_body_and_its_image_is_stored() {
    let app = spawn_app().await;
    app.add_openai_model("img", json!({})).await;
    let png: Vec<u8> = default_png().into_iter().chain(*b"from openai").collect();
    app.upstream.push(Reply::Json(json!({
        "created": 1_700_000_000,
        "data": [{"b64_json": base64::engine::general_purpose::STANDARD.encode(&png),
            "revised_prompt": "a tidy desk"}],
        "usage": {"input_tokens": 9, "output_tokens": 272, "total_tokens": 281},
    })));
    let body =
        json!({"model": "img", "prompt": "a desk", "size": "1024x1024", "response_format": "url"});
    let res = app
        .post_json("/v1/images/generations", &app.admin_key, &body)
        .await;
    assert_eq!(res.status(), 200);
    let job_id = res.headers()["x-lowart-job-id"]
        .to_str()
        .unwrap()
        .to_string();
    let answer: Value = res.json().await.unwrap();
    assert_eq!(answer["data"][0]["revised_prompt"], "a tidy desk");
    let url = answer["data"][0]["url"].as_str().unwrap();
    let bytes = app
        .client
        .get(url)
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(bytes.to_vec(), png);
    // The vendor got the client's body with its own model and without response_format.
    let received = app.upstream.received();
    assert!(
        received[0].path.ends_with("/v1/images/generations"),
        "{}",
        received[0].path
    );
    assert_eq!(
        received[0].body,
        json!({"model": "img-upstream", "prompt": "a desk", "size": "1024x1024"})
    );
    // Billed from the vendor's usage, under the job's id.
    app.store
        .send(lowart::actors::store::FlushUsage)
        .await
        .unwrap();
    let rows = app.usage_rows().await;
    let row = rows.iter().find(|r| r.request_id == job_id).unwrap();
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens),
        (Some(9), Some(272))
    );
}

#[actix_web::test]
async fn a_webhook_still_refused_when_the_gateway_dies_is_delivered_after_the_restart() {
    crate::helpers::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let client = reqwest::Client::new();
    let hook = receiver(usize::MAX).await;
    let mut gw = gateway(&dir, &db_url, &admin_key).await;
    let body = json!({"model": "mock", "prompt": "x", "async": true, "webhook_url": hook.url});
    let id = submit(
        &client,
        &gw.address,
        "/v1/images/generations",
        &admin_key,
        body,
    )
    .await;
    // Refused once: the delivery is due again after a second.
    job_until(&client, &gw.address, &admin_key, &id, |j| {
        j["webhook"]["attempts"].as_i64() >= Some(1) && j["webhook"]["status"] == "pending"
    })
    .await;
    kill_hard(&mut gw).await;
    hook.accept();
    let mut gw = gateway(&dir, &db_url, &admin_key).await;
    tokio::time::timeout(Duration::from_secs(30), hook.arrived.notified())
        .await
        .expect("delivered by the restarted gateway");
    let job = job_until(&client, &gw.address, &admin_key, &id, |j| {
        j["webhook"]["status"] != "pending"
    })
    .await;
    assert_eq!(job["webhook"]["status"], "delivered", "{job}");
    assert!(job["webhook"]["attempts"].as_i64().unwrap() >= 2, "{job}");
    assert!(terminate(&mut gw.child).await.success());
    drop_test_database(&db_url);
}
