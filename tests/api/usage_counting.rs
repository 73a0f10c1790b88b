//! Exact usage in every case (SPEC §5): the vendor's figures when it sends them (`reported`,
//! streamed or not, a zero included), the gateway's own count when it sends none
//! (`counted`), what was streamed to a client that went away (`partial`).
//!
//! The figures the counts are held to come from outside the code under test: the prompt
//! tokens the OpenAI API reported for the example messages of OpenAI's cookbook "How to
//! count tokens with tiktoken" (129 with gpt-4's encoding, 124 with gpt-4o's), and the
//! tiktoken counts the cookbook prints ("2 + 2 = 4": 7 tokens in both encodings;
//! "tiktoken is great!": 6 tokens in cl100k_base).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lowart::entities::usage;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, streamed_content};
use crate::mock_upstream::{Reply, chunk};

/// The cookbook's `example_messages`.
fn cookbook_messages() -> Value {
    json!([
        {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English."},
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
        {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage."},
        {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do better."},
        {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client deliverable."}
    ])
}

/// The OpenAI API's prompt tokens for the cookbook's messages, by model family.
fn reported_prompt(model: &str) -> i64 {
    if model.starts_with("gpt-4o") {
        124
    } else {
        129
    }
}

/// An answer whose tiktoken count the cookbook prints: 7 tokens in both encodings.
const ANSWER: &str = "2 + 2 = 4";
const ANSWER_TOKENS: i64 = 7;

fn ask(model: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": cookbook_messages()})
}

/// `counted` is within ±2% of `reported`.
fn assert_within_two_percent(counted: Option<i64>, reported: i64, what: &str) {
    let counted = counted.unwrap_or_else(|| panic!("{what}: no figure"));
    assert!(
        (counted - reported).abs() * 50 <= reported,
        "{what}: counted {counted}, the vendor's figure is {reported}"
    );
}

/// The usage rows once there are `n`, polling with a deadline.
async fn rows_when(app: &TestApp, n: usize) -> Vec<usage::Model> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = app.usage_rows().await;
        if rows.len() >= n {
            return rows;
        }
        assert!(Instant::now() < deadline, "{n} usage row(s) within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn complete(app: &TestApp, body: &Value) -> String {
    let res = app.chat(&app.admin_key, body).await;
    assert_eq!(res.status(), 200);
    res.text().await.unwrap()
}

#[actix_web::test]
async fn a_streamed_and_a_blocking_answer_are_billed_identically_from_the_vendors_figures() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-4", json!({})).await;
    for _ in 0..2 {
        app.upstream.push(Reply::Text {
            content: ANSWER.into(),
            prompt_tokens: 129,
            completion_tokens: ANSWER_TOKENS,
        });
    }

    let blocking: Value =
        serde_json::from_str(&complete(&app, &ask("gpt-4", false)).await).unwrap();
    let streamed = complete(&app, &ask("gpt-4", true)).await;

    assert_eq!(blocking["choices"][0]["message"]["content"], ANSWER);
    assert_eq!(streamed_content(&streamed), ANSWER);
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.usage_source, "reported");
        assert_eq!(
            (row.prompt_tokens, row.completion_tokens, row.total_tokens),
            (Some(129), Some(ANSWER_TOKENS), Some(129 + ANSWER_TOKENS))
        );
    }
    assert_eq!((rows[0].stream, rows[1].stream), (false, true));
}

#[actix_web::test]
async fn without_usage_from_the_vendor_both_are_counted_within_two_percent_of_its_figures() {
    let app = spawn_app().await;
    for model in ["gpt-4", "gpt-4o"] {
        app.add_openai_model(model, json!({})).await;
        app.upstream.push(Reply::TextWithoutUsage(ANSWER.into()));
        app.upstream.push(Reply::TextWithoutUsage(ANSWER.into()));

        let blocking = complete(&app, &ask(model, false)).await;
        let streamed = complete(&app, &ask(model, true)).await;

        assert!(blocking.contains(ANSWER), "{blocking}");
        assert_eq!(streamed_content(&streamed), ANSWER);
    }
    // The upstream was asked for usage in the stream; it sent none.
    assert!(
        app.upstream
            .received()
            .iter()
            .filter(|r| r.body["stream"] == true)
            .all(|r| r.body["stream_options"]["include_usage"] == true)
    );

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 4);
    for row in &rows {
        let reported = reported_prompt(&row.model);
        assert_eq!(row.status, 200);
        assert_eq!(row.usage_source, "counted", "{}", row.model);
        assert_within_two_percent(row.prompt_tokens, reported, "prompt tokens");
        assert_within_two_percent(row.completion_tokens, ANSWER_TOKENS, "completion tokens");
        assert_eq!(
            row.total_tokens,
            Some(row.prompt_tokens.unwrap() + row.completion_tokens.unwrap())
        );
    }
    // A stream and a blocking call of the same answer are billed the same.
    assert_eq!(rows[0].prompt_tokens, rows[1].prompt_tokens);
    assert_eq!(rows[0].completion_tokens, rows[1].completion_tokens);
    assert_eq!(rows[2].completion_tokens, rows[3].completion_tokens);
}

#[actix_web::test]
async fn a_client_that_disconnects_mid_stream_is_billed_partial_for_what_was_streamed() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-4", json!({})).await;
    // "tiktoken is great!" is 6 tokens (cl100k_base); the rest never leaves the upstream.
    app.upstream.push(Reply::Gated {
        events: vec![
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "tiktoken"}), Value::Null),
            chunk(json!({"content": " is"}), Value::Null),
            chunk(json!({"content": " great!"}), Value::Null),
            chunk(json!({"content": " And much more follows"}), Value::Null),
        ],
        before: 4,
        gate: Arc::new(tokio::sync::Notify::new()),
    });
    let client = reqwest::Client::new();
    let mut res = client
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&app.admin_key)
        .json(&ask("gpt-4", true))
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    while !seen.contains("great!") {
        let bytes = res.chunk().await.unwrap().expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&bytes));
    }
    drop(res);
    drop(client);

    let rows = rows_when(&app, 1).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.status, 499);
    assert_eq!(row.error_class.as_deref(), Some("client_closed"));
    assert_eq!(row.usage_source, "partial");
    assert_eq!(row.completion_tokens, Some(6));
    assert_within_two_percent(row.prompt_tokens, 129, "prompt tokens");
}

#[actix_web::test]
async fn an_explicit_zero_from_the_vendor_stays_zero() {
    let app = spawn_app().await;
    app.add_openai_model("gpt-4", json!({})).await;
    for _ in 0..2 {
        app.upstream.push(Reply::Text {
            content: ANSWER.into(),
            prompt_tokens: 0,
            completion_tokens: 0,
        });
    }

    complete(&app, &ask("gpt-4", false)).await;
    complete(&app, &ask("gpt-4", true)).await;

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row.usage_source, "reported");
        assert_eq!(
            (row.prompt_tokens, row.completion_tokens),
            (Some(0), Some(0))
        );
    }
}

#[actix_web::test]
async fn anthropic_answers_stay_reported_through_both_surfaces() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;
    for _ in 0..3 {
        app.upstream.push(Reply::AnthropicText {
            content: "Hello from Claude".into(),
            input_tokens: 13,
            output_tokens: 6,
        });
    }
    let messages = |stream: bool| {
        json!({"model": "claude", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]})
    };

    for stream in [false, true] {
        let res = app.messages(&app.admin_key, &messages(stream)).await;
        assert_eq!(res.status(), 200);
        assert!(res.text().await.unwrap().contains("Claude"));
    }
    let streamed = complete(&app, &ask("claude", true)).await;
    assert_eq!(streamed_content(&streamed), "Hello from Claude");

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 3);
    for row in &rows {
        assert_eq!(row.usage_source, "reported");
        assert_eq!(
            (row.prompt_tokens, row.completion_tokens),
            (Some(13), Some(6))
        );
    }
}

#[actix_web::test]
async fn embeddings_without_usage_count_their_input() {
    let app = spawn_app().await;
    app.add_openai_model("text-embedding-3-small", json!({}))
        .await;
    app.upstream.push(Reply::EmbeddingsWithoutUsage { dims: 3 });
    app.upstream.push(Reply::EmbeddingsWithoutUsage { dims: 3 });

    for input in [json!("tiktoken is great!"), json!([[1, 2, 3], [4, 5]])] {
        let res = app
            .post_json(
                "/v1/embeddings",
                &app.admin_key,
                &json!({"model": "text-embedding-3-small", "input": input}),
            )
            .await;
        assert_eq!(res.status(), 200);
        res.bytes().await.unwrap();
    }

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.usage_source == "counted"));
    // Six tokens (the cookbook's figure), then five token ids.
    assert_eq!(
        (rows[0].prompt_tokens, rows[0].completion_tokens),
        (Some(6), Some(0))
    );
    assert_eq!(rows[1].prompt_tokens, Some(5));
}
