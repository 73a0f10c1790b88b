//! Rhai transform scripts: `/admin/scripts`, deployments' request and response scripts
//! (blocking and streamed), hot swaps, the sandbox's limits and time budget, `/test`, and
//! ComfyUI's `workflow(req)`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, assert_openai_error, metric_sample, spawn_app, spawn_app_with, sse_data,
    streamed_content, user_message,
};
use crate::mock_comfyui::{Behaviour, MockComfy, default_png};

async fn save(app: &TestApp, name: &str, source: &str) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/admin/scripts/{name}")))
        .bearer_auth(&app.admin_key)
        .json(&json!({ "source": source }))
        .send()
        .await
        .unwrap()
}

async fn create(app: &TestApp, name: &str, source: &str) -> Value {
    let res = app
        .post_json(
            "/admin/scripts",
            &app.admin_key,
            &json!({"name": name, "source": source}),
        )
        .await;
    assert_eq!(res.status(), 201, "creating a script");
    res.json().await.unwrap()
}

async fn test_call(app: &TestApp, key: &str, name: &str, body: Value) -> reqwest::Response {
    app.post_json(&format!("/admin/scripts/{name}/test"), key, &body)
        .await
}

fn ask(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": user_message(text)})
}

#[actix_web::test]
async fn a_request_script_rewrites_the_body_sent_upstream() {
    let app = spawn_app().await;
    let script = create(
        &app,
        "brief",
        r#"
        fn on_request(req) {
            req.temperature = 0.25;
            req.messages.insert(0, #{ role: "system", content: "Be brief." });
            req.metadata = #{ tagged_by: "rhai", model_was: req.model };
            req
        }"#,
    )
    .await;
    assert_eq!(
        script["functions"],
        json!({"on_request": true, "on_response": false, "workflow": false})
    );
    app.add_openai_model("gpt-s", json!({"request_script": "brief"}))
        .await;

    let res = app.chat(&app.admin_key, &ask("gpt-s", "hello")).await;

    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "Hello from the mock upstream"
    );
    let received = app.upstream.received();
    assert_eq!(received.len(), 1);
    let body = &received[0].body;
    assert_eq!(body["temperature"], 0.25);
    assert_eq!(
        body["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}])
    );
    assert_eq!(
        body["metadata"],
        json!({"tagged_by": "rhai", "model_was": "gpt-s-upstream"})
    );
    // The upstream credential is the gateway's, untouched by the script.
    assert_eq!(
        received[0].authorization.as_deref(),
        Some("Bearer sk-upstream-secret-0123456789")
    );
}

#[actix_web::test]
async fn a_saved_script_is_swapped_in_for_the_next_request() {
    let app = spawn_app().await;
    create(
        &app,
        "tag",
        r#"fn on_request(req) { req.user = "v1"; req }"#,
    )
    .await;
    app.add_openai_model("gpt-s", json!({"request_script": "tag"}))
        .await;
    assert_eq!(
        app.chat(&app.admin_key, &ask("gpt-s", "a")).await.status(),
        200
    );

    let res = save(
        &app,
        "tag",
        r#"fn on_request(req) { req.user = "v2"; req }"#,
    )
    .await;
    assert_eq!(res.status(), 200, "replacing answers 200");
    assert_eq!(
        app.chat(&app.admin_key, &ask("gpt-s", "b")).await.status(),
        200
    );

    let users: Vec<Value> = app
        .upstream
        .received()
        .iter()
        .map(|r| r.body["user"].clone())
        .collect();
    assert_eq!(users, [json!("v1"), json!("v2")]);
    let shown: Value = app
        .get("/admin/scripts/tag", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    assert!(shown["source"].as_str().unwrap().contains("v2"), "{shown}");
    let audit: Value = app
        .get("/admin/audit", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["target_type"] == "script")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["script.update", "script.create"]);
}

const SHOUT: &str = r#"
fn on_response(resp) {
    resp.lowart = "seen";
    if "choices" in resp && resp.choices.len() > 0 {
        let c = resp.choices[0];
        if "message" in c {
            c.message.content = "rewritten: " + c.message.content;
        }
        if "delta" in c && "content" in c.delta && type_of(c.delta.content) == "string" {
            c.delta.content = c.delta.content.to_upper();
        }
        resp.choices[0] = c;
    }
    resp
}"#;

#[actix_web::test]
async fn a_response_script_rewrites_blocking_and_streamed_answers() {
    let app = spawn_app().await;
    create(&app, "shout", SHOUT).await;
    app.add_openai_model("gpt-s", json!({"response_script": "shout"}))
        .await;

    let res = app.chat(&app.admin_key, &ask("gpt-s", "hi")).await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "rewritten: Hello from the mock upstream"
    );
    // OpenAI to OpenAI goes as bytes: the rewritten ones, fields the gateway does not model included.
    assert_eq!(answer["lowart"], "seen");

    let mut streamed = ask("gpt-s", "hi");
    streamed["stream"] = json!(true);
    let res = app.chat(&app.admin_key, &streamed).await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert_eq!(streamed_content(&body), "HELLO FROM THE MOCK UPSTREAM");
    let data = sse_data(&body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    for chunk in &data[..data.len() - 1] {
        let chunk: Value = serde_json::from_str(chunk).unwrap();
        assert_eq!(
            chunk["lowart"], "seen",
            "each chunk went through the script"
        );
    }
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.status == 200), "{rows:?}");
}

#[actix_web::test]
async fn a_runaway_script_fails_its_request_in_time_while_another_is_served() {
    // One HTTP worker: if the script ran on it, nothing else could be served meanwhile.
    let app = spawn_app_with(|s| {
        s.server.workers = 1;
        s.scripts.max_operations = 0;
        s.scripts.timeout_ms = 1_500;
    })
    .await;
    create(&app, "spin", "fn on_request(req) { loop { } }").await;
    app.add_openai_model("gpt-spin", json!({"request_script": "spin"}))
        .await;
    app.add_openai_model("gpt-ok", json!({})).await;

    let started = Instant::now();
    let runaway = {
        let (client, url, key) = (
            app.client.clone(),
            app.url("/v1/chat/completions"),
            app.admin_key.clone(),
        );
        actix_web::rt::spawn(async move {
            let res = client
                .post(url)
                .bearer_auth(key)
                .json(&ask("gpt-spin", "spin"))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (
                status,
                res.json::<Value>().await.unwrap(),
                started.elapsed(),
            )
        })
    };
    // The runaway request is in the gateway (its script running) before the other is sent.
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric_sample(&app.client, &app.address, "gateway_inflight_requests").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the runaway request never arrived"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }

    let res = app.chat(&app.admin_key, &ask("gpt-ok", "hello")).await;

    assert_eq!(res.status(), 200, "served while the script spins");
    assert!(
        !runaway.is_finished(),
        "the other request finished first, the script still running"
    );
    let (status, body, elapsed) = runaway.await.unwrap();
    assert_eq!(status, 500);
    assert_eq!(body["error"]["code"], "script_error");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("script `spin`"), "{message}");
    assert!(message.contains("time budget of 1500 ms"), "{message}");
    assert!(
        elapsed < Duration::from_secs(5),
        "stopped after {elapsed:?}"
    );
    // Nothing reached the upstream for it, and its usage row says why.
    assert_eq!(app.upstream.received().len(), 1);
    let rows = app.usage_rows().await;
    let failed = rows.iter().find(|r| r.model == "gpt-spin").unwrap();
    assert_eq!(failed.status, 500);
    assert_eq!(failed.error_class.as_deref(), Some("script_error"));
}

#[actix_web::test]
async fn a_script_that_does_not_compile_is_refused_with_its_position() {
    let app = spawn_app().await;
    let broken = "fn on_request(req) {\n    let x = ;\n    req\n}";

    let res = app
        .post_json(
            "/admin/scripts",
            &app.admin_key,
            &json!({"name": "broken", "source": broken}),
        )
        .await;

    let error = assert_openai_error(res, 400).await;
    assert_eq!(error["param"], "source");
    assert_eq!(error["type"], "invalid_request_error");
    assert_eq!(error["line"], 2);
    assert!(error["column"].as_u64().is_some_and(|c| c > 0), "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("does not compile"),
        "{error}"
    );
    let error = assert_openai_error(save(&app, "broken", broken).await, 400).await;
    assert_eq!(error["line"], 2);
    // Nothing was stored.
    assert_openai_error(app.get("/admin/scripts/broken", &app.admin_key).await, 404).await;
    let bad_name = app
        .post_json(
            "/admin/scripts",
            &app.admin_key,
            &json!({"name": "a b", "source": "fn on_request(r) { r }"}),
        )
        .await;
    assert_eq!(assert_openai_error(bad_name, 400).await["param"], "name");
}

#[actix_web::test]
async fn test_runs_a_stored_script_and_answers_its_output_or_its_error() {
    let app = spawn_app().await;
    create(
        &app,
        "both",
        r#"
        fn on_request(req) { req.n = req.n * 2; req }
        fn on_response(resp) { resp.done = true; resp }
        fn picky(req) { if req.n > 10 { throw "n is too large"; } req }
        "#,
    )
    .await;
    let viewer = app.user_key("watcher", "viewer", None).await;

    let res = test_call(&app, &app.admin_key, "both", json!({"input": {"n": 21}})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap(),
        json!({"output": {"n": 42}})
    );
    let res = test_call(
        &app,
        &app.admin_key,
        "both",
        json!({"input": {"x": 1}, "function": "on_response"}),
    )
    .await;
    assert_eq!(
        res.json::<Value>().await.unwrap()["output"],
        json!({"x": 1, "done": true})
    );

    let thrown = test_call(
        &app,
        &app.admin_key,
        "both",
        json!({"input": {"n": 11}, "function": "picky"}),
    )
    .await;
    let error = assert_openai_error(thrown, 500).await;
    assert_eq!(error["code"], "script_error");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("n is too large"),
        "{error}"
    );
    let missing = test_call(
        &app,
        &app.admin_key,
        "both",
        json!({"input": {}, "function": "workflow"}),
    )
    .await;
    let error = assert_openai_error(missing, 500).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("defines no `fn workflow(x)`"),
        "{error}"
    );
    assert_openai_error(
        test_call(&app, &app.admin_key, "nope", json!({"input": {}})).await,
        404,
    )
    .await;
    let not_a_map = test_call(&app, &app.admin_key, "both", json!({"input": [1]})).await;
    assert_eq!(assert_openai_error(not_a_map, 400).await["param"], "input");
    // A viewer reads scripts but neither runs nor writes them.
    assert_eq!(app.get("/admin/scripts", &viewer).await.status(), 200);
    let listed: Value = app
        .get("/admin/scripts", &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["name"], "both");
    assert!(listed["data"][0].get("source").is_none(), "{listed}");
    assert_openai_error(
        test_call(&app, &viewer, "both", json!({"input": {}})).await,
        403,
    )
    .await;
    let res = app
        .post_json(
            "/admin/scripts",
            &viewer,
            &json!({"name": "x", "source": "fn on_request(r) { r }"}),
        )
        .await;
    assert_openai_error(res, 403).await;
}

#[actix_web::test]
async fn a_script_cannot_reach_files_or_modules() {
    let app = spawn_app().await;
    create(
        &app,
        "snoop",
        r#"fn on_request(req) { import "/etc/passwd" as secrets; req }"#,
    )
    .await;
    create(
        &app,
        "open",
        r#"fn on_request(req) { req.data = open_file("/etc/passwd"); req }"#,
    )
    .await;
    app.add_openai_model("gpt-snoop", json!({"request_script": "snoop"}))
        .await;

    let res = app.chat(&app.admin_key, &ask("gpt-snoop", "x")).await;

    let error = assert_openai_error(res, 500).await;
    assert_eq!(error["code"], "script_error");
    assert!(
        error["message"].as_str().unwrap().contains("/etc/passwd"),
        "the module was not found: {error}"
    );
    assert!(!error["message"].as_str().unwrap().contains("root:"));
    assert!(app.upstream.received().is_empty(), "nothing went upstream");
    let res = test_call(&app, &app.admin_key, "open", json!({"input": {}})).await;
    let error = assert_openai_error(res, 500).await;
    assert!(
        error["message"].as_str().unwrap().contains("open_file"),
        "no such function: {error}"
    );
}

#[actix_web::test]
async fn scripts_over_the_sandbox_limits_fail_with_script_error() {
    let app = spawn_app_with(|s| {
        s.scripts.max_string_bytes = 1_000;
        s.scripts.max_call_levels = 16;
        s.scripts.max_operations = 50_000;
    })
    .await;
    for (name, source, says) in [
        (
            "grow",
            r#"fn on_request(req) { let s = "x"; loop { s += s; } }"#,
            "too large",
        ),
        (
            "deep",
            "fn down(n) { down(n + 1) } fn on_request(req) { down(0) }",
            "stack overflow",
        ),
        (
            "busy",
            "fn on_request(req) { let n = 0; loop { n += 1; } }",
            "too many operations",
        ),
    ] {
        create(&app, name, source).await;
        let res = test_call(&app, &app.admin_key, name, json!({"input": {}})).await;
        let error = assert_openai_error(res, 500).await;
        assert_eq!(error["code"], "script_error");
        let message = error["message"].as_str().unwrap().to_lowercase();
        assert!(message.contains(&format!("script `{name}`")), "{message}");
        assert!(message.contains(says), "{name}: {message}");
    }
}

#[actix_web::test]
async fn deployments_and_scripts_refer_to_each_other_safely() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/admin/models",
            &app.admin_key,
            &json!({"model_id": "m", "vendor_type": "OpenAI",
                "base_url": format!("{}/v1", app.upstream.address), "request_script": "absent"}),
        )
        .await;
    assert_eq!(
        assert_openai_error(res, 400).await["param"],
        "request_script"
    );
    let res = app
        .post_json(
            "/admin/models",
            &app.admin_key,
            &json!({"model_id": "m", "vendor_type": "Mock", "request_script": "absent"}),
        )
        .await;
    assert_eq!(
        assert_openai_error(res, 400).await["param"],
        "request_script"
    );
    create(&app, "kept", "fn on_response(r) { r }").await;
    let deployment = app
        .add_openai_model("gpt-k", json!({"response_script": "kept"}))
        .await;

    let res = app.delete("/admin/scripts/kept", &app.admin_key).await;

    let error = assert_openai_error(res, 409).await;
    let id = deployment["id"].as_str().unwrap();
    assert!(
        error["message"].as_str().unwrap().contains(id),
        "names the deployment: {error}"
    );
    let res = app
        .patch_json(
            &format!("/admin/models/{id}"),
            &app.admin_key,
            &json!({"response_script": null}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app.delete("/admin/scripts/kept", &app.admin_key).await;
    assert_eq!(res.status(), 200);
    assert_openai_error(app.delete("/admin/scripts/kept", &app.admin_key).await, 404).await;
    let listed: Value = app
        .get("/admin/scripts", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"], json!([]));
}

#[actix_web::test]
async fn a_comfyui_workflow_script_builds_the_workflow_submitted() {
    let app = spawn_app().await;
    let comfy = MockComfy::start().await;
    create(
        &app,
        "wf",
        r#"
        fn workflow(req) {
            let w = req.template;
            w["6"].inputs.text = "scripted: " + req.prompt;
            w["7"].inputs.text = req.negative_prompt;
            w["3"].inputs.seed = 7;
            w["3"].inputs.steps = req.steps + 1;
            w["5"].inputs.width = req.width;
            w["5"].inputs.height = req.height;
            w["5"].inputs.batch_size = req.n;
            w
        }"#,
    )
    .await;
    let res = app
        .post_json(
            "/admin/models",
            &app.admin_key,
            &json!({"model_id": "sd", "vendor_type": "ComfyUI", "base_url": comfy.base_url,
                "workflow": crate::jobs::workflow(), "request_script": "wf"}),
        )
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    comfy.script(Behaviour::Image {
        steps: 2,
        bytes: default_png(),
    });

    let res = app
        .post_json(
            "/v1/images/generations",
            &app.admin_key,
            &json!({"model": "sd", "prompt": "a fox", "size": "512x768", "steps": 9,
                "negative_prompt": "blurry"}),
        )
        .await;

    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let submitted = comfy.submissions();
    assert_eq!(submitted.len(), 1);
    let w = &submitted[0];
    assert_eq!(w["6"]["inputs"]["text"], "scripted: a fox");
    assert_eq!(w["7"]["inputs"]["text"], "blurry");
    assert_eq!(w["3"]["inputs"]["seed"], 7);
    assert_eq!(w["3"]["inputs"]["steps"], 10);
    assert_eq!(w["5"]["inputs"]["width"], 512);
    assert_eq!(w["5"]["inputs"]["height"], 768);
    assert_eq!(w["5"]["inputs"]["batch_size"], 1);
    assert_eq!(w["4"]["inputs"]["ckpt_name"], "sd15.safetensors");
}

#[actix_web::test]
async fn a_script_saved_on_one_instance_runs_on_the_other_within_a_second() {
    use crate::scale_out::{eventually, spawn_pair};
    use reqwest::Method;
    let Some(pair) = spawn_pair(&[]).await else {
        return;
    };
    let run_on_b = || async {
        let body = json!({"input": {"n": 1}});
        let res = pair
            .send(
                &pair.b,
                Method::POST,
                "/admin/scripts/swap/test",
                &pair.admin_key,
                Some(&body),
            )
            .await;
        let status = res.status().as_u16();
        let output: Value = res.json().await.unwrap();
        (status, output)
    };
    assert_eq!(run_on_b().await.0, 404);

    let v1 = json!({"name": "swap", "source": "fn on_request(r) { r.v = 1; r }"});
    pair.admin(&pair.a, Method::POST, "/admin/scripts", Some(&v1), 201)
        .await;
    let answered = Instant::now();
    eventually(answered, Duration::from_secs(1), 200, || async {
        run_on_b().await.0
    })
    .await;
    assert_eq!(run_on_b().await.1["output"], json!({"n": 1, "v": 1}));

    let v2 = json!({"source": "fn on_request(r) { r.v = 2; r }"});
    pair.admin(&pair.a, Method::PUT, "/admin/scripts/swap", Some(&v2), 200)
        .await;
    let answered = Instant::now();
    loop {
        let (_, output) = run_on_b().await;
        if output["output"]["v"] == 2 {
            break;
        }
        assert!(
            answered.elapsed() < Duration::from_secs(1),
            "B still runs {output}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_web::test]
async fn an_anthropic_stream_is_rewritten_event_by_event_keeping_its_event_names() {
    let app = spawn_app().await;
    create(
        &app,
        "upper",
        r#"
        fn on_response(resp) {
            if resp["type"] == "content_block_delta" && resp.delta["type"] == "text_delta" {
                resp.delta.text = resp.delta.text.to_upper();
            }
            if resp["type"] == "message" {
                resp.content[0].text = resp.content[0].text.to_upper();
            }
            resp
        }"#,
    )
    .await;
    app.add_anthropic_model("claude", json!({"response_script": "upper"}))
        .await;

    let res = app
        .messages(
            &app.admin_key,
            &json!({"model": "claude", "max_tokens": 100, "stream": true,
                "messages": user_message("hi")}),
        )
        .await;

    assert_eq!(res.status(), 200);
    let events = crate::helpers::sse_events(&res.text().await.unwrap());
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "content_block_delta")
        .map(|(_, d)| d["delta"]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(text, "HELLO FROM THE MOCK ANTHROPIC UPSTREAM");
    // Blocking, through the OpenAI dialect: decoded from the rewritten answer.
    let res = app.chat(&app.admin_key, &ask("claude", "hi")).await;
    let answer: Value = res.json().await.unwrap();
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        "HELLO FROM THE MOCK ANTHROPIC UPSTREAM"
    );
}
