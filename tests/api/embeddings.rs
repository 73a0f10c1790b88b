//! `POST /v1/embeddings`: relayed to an OpenAI deployment in OpenAI's shape with exact
//! usage, answered by the built-in `mock`, refused for a model no deployment can embed.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_openai_error, spawn_app};
use crate::mock_upstream::{MockUpstream, Reply, embedding_inputs};

async fn embed(app: &TestApp, body: &Value) -> reqwest::Response {
    app.post_json("/v1/embeddings", &app.admin_key, body).await
}

/// Asserts an OpenAI embeddings list of `count` vectors of `dims` floats (any length when
/// `dims` is `None`); answers the vectors.
fn assert_embeddings(body: &Value, count: usize, dims: Option<usize>) -> Vec<Vec<f64>> {
    assert_eq!(body["object"], "list", "{body}");
    let data = body["data"].as_array().expect("data array");
    assert_eq!(data.len(), count, "{body}");
    data.iter()
        .enumerate()
        .map(|(i, item)| {
            assert_eq!(item["object"], "embedding", "{body}");
            assert_eq!(item["index"], i, "{body}");
            let vector: Vec<f64> = item["embedding"]
                .as_array()
                .expect("a float vector")
                .iter()
                .map(|x| x.as_f64().expect("a float"))
                .collect();
            assert!(!vector.is_empty());
            if let Some(dims) = dims {
                assert_eq!(vector.len(), dims, "{body}");
            }
            vector
        })
        .collect()
}

#[actix_web::test]
async fn the_mock_upstream_counts_embedding_inputs_like_openai() {
    assert_eq!(embedding_inputs(&json!("text")), 1);
    assert_eq!(embedding_inputs(&json!(["a", "b"])), 2);
    assert_eq!(embedding_inputs(&json!([1, 2, 3])), 1);
    assert_eq!(embedding_inputs(&json!([[1, 2], [3]])), 2);

    crate::helpers::install_crypto();
    let upstream = MockUpstream::start().await;
    let body: Value = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", upstream.address))
        .json(&json!({"model": "m", "input": ["a", "b", "c"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_embeddings(&body, 3, Some(4));
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 7, "total_tokens": 7})
    );
}

#[actix_web::test]
async fn every_input_shape_is_relayed_with_the_upstream_model_and_encoding_format() {
    let app = spawn_app().await;
    app.add_openai_model("embedder", json!({})).await;
    let inputs = [
        json!("one text"),
        json!(["a", "b"]),
        json!([1, 2, 3]),
        json!([[1, 2], [3]]),
    ];

    for (n, input) in inputs.iter().enumerate() {
        app.upstream.push(Reply::Embeddings {
            dims: 8,
            prompt_tokens: 5,
        });
        let res = embed(
            &app,
            &json!({"model": "embedder", "input": input, "encoding_format": "float"}),
        )
        .await;
        assert_eq!(res.status(), 200, "{input}");
        assert!(res.headers().contains_key("x-request-id"));
        let body: Value = res.json().await.unwrap();
        assert_embeddings(&body, embedding_inputs(input), Some(8));
        assert_eq!(body["usage"]["prompt_tokens"], 5);

        let up = &app.upstream.received()[n];
        assert_eq!(up.path, "/v1/embeddings");
        assert_eq!(
            up.authorization.as_deref(),
            Some("Bearer sk-upstream-secret-0123456789")
        );
        assert_eq!(up.body["model"], "embedder-upstream");
        assert_eq!(up.body["input"], *input);
        assert_eq!(up.body["encoding_format"], "float");
    }
}

#[actix_web::test]
async fn embeddings_usage_is_one_reported_priced_row() {
    let app = spawn_app().await;
    let dep = app
        .add_openai_model("embedder", json!({"price_input_per_mtok": 0.5}))
        .await;
    app.upstream.push(Reply::Embeddings {
        dims: 3,
        prompt_tokens: 9,
    });

    let res = embed(&app, &json!({"model": "embedder", "input": ["a", "b"]})).await;

    assert_eq!(res.status(), 200);
    let request_id = res.headers()["x-request-id"].to_str().unwrap().to_string();
    res.bytes().await.unwrap();
    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.request_id, request_id);
    assert_eq!(row.model, "embedder");
    assert_eq!(row.deployment_id.as_deref(), dep["id"].as_str());
    assert_eq!(row.status, 200);
    assert!(!row.stream);
    assert_eq!(row.usage_source, "reported");
    assert_eq!(
        (row.prompt_tokens, row.completion_tokens, row.total_tokens),
        (Some(9), Some(0), Some(9))
    );
    assert_eq!(row.cost_status, "priced");
    // 9 tokens × $0.50/Mtok = 4.5 µ$, rounded half away from zero.
    assert_eq!(row.cost_micros, Some(5));
    assert_eq!(row.error_class, None);
}

#[actix_web::test]
async fn the_mock_model_embeds_deterministically() {
    let app = spawn_app().await;
    let ask = json!({"model": "mock", "input": ["a b", "c"]});

    let first: Value = embed(&app, &ask).await.json().await.unwrap();
    let second: Value = embed(&app, &ask).await.json().await.unwrap();

    let vectors = assert_embeddings(&first, 2, None);
    assert_eq!(
        vectors,
        assert_embeddings(&second, 2, None),
        "deterministic"
    );
    assert_eq!(vectors[0].len(), vectors[1].len());
    assert!(first["usage"]["prompt_tokens"].as_i64().unwrap() > 0);
    let single: Value = embed(&app, &json!({"model": "mock", "input": "a b"}))
        .await
        .json()
        .await
        .unwrap();
    assert_embeddings(&single, 1, Some(vectors[0].len()));
    assert!(app.upstream.received().is_empty());

    let rows = app.usage_rows().await;
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter()
            .all(|r| r.usage_source == "reported" && r.prompt_tokens.is_some_and(|p| p > 0)),
        "{rows:?}"
    );
}

#[actix_web::test]
async fn embeddings_on_an_anthropic_only_model_are_refused_on_model() {
    let app = spawn_app().await;
    app.add_anthropic_model("claude", json!({})).await;

    let error = assert_openai_error(
        embed(&app, &json!({"model": "claude", "input": "text"})).await,
        400,
    )
    .await;

    assert_eq!(error["param"], "model");
    assert!(app.upstream.received().is_empty(), "nothing sent upstream");
}
