//! Prompt counts held to the figures the OpenAI API itself reported for the examples of
//! OpenAI's cookbook "How to count tokens with tiktoken" (not to figures computed here).

use serde_json::{Value, json};

use super::*;
use crate::http::openai::dialect;

fn request(body: Value) -> ChatRequest {
    dialect::parse(body.to_string().as_bytes()).unwrap()
}

/// The cookbook's `example_messages` (section 6).
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

/// The cookbook's tools example (section 7).
fn cookbook_tools() -> Value {
    json!({
        "messages": [
            {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
            {"role": "user", "content": "What's the weather like in San Francisco?"}
        ],
        "tools": [{"type": "function", "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {"type": "object", "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "description": "The unit of temperature to return", "enum": ["celsius", "fahrenheit"]}
            }, "required": ["location"]}
        }}]
    })
}

/// Within ±2% of what the API reported.
fn assert_close(counted: u64, reported: u64) {
    let off = counted.abs_diff(reported) as f64 / reported as f64;
    assert!(
        off <= 0.02,
        "counted {counted}, the API reported {reported}"
    );
}

#[test]
fn the_cookbook_messages_count_as_the_openai_api_reported() {
    for (model, reported) in [
        ("gpt-4", 129),
        ("gpt-3.5-turbo", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
    ] {
        let req = request(json!({"model": model, "messages": cookbook_messages()}));
        assert_close(prompt_tokens(model, &req), reported);
    }
}

#[test]
fn the_cookbook_tools_count_as_the_openai_api_reported() {
    for (model, reported) in [
        ("gpt-4", 105),
        ("gpt-3.5-turbo", 105),
        ("gpt-4o", 101),
        ("gpt-4o-mini", 101),
    ] {
        let mut body = cookbook_tools();
        body["model"] = json!(model);
        assert_close(prompt_tokens(model, &request(body)), reported);
    }
}

#[test]
fn model_families_choose_their_encoding() {
    for model in [
        "gpt-4o",
        "gpt-4o-mini-2024-07-18",
        "GPT-4o",
        "azure/gpt-4o",
        "ft:gpt-4o-mini:org::abc",
        "gpt-4.1-nano",
        "gpt-4.5-preview",
        "gpt-5",
        "gpt-5.1-codex",
        "chatgpt-4o-latest",
        "o1",
        "o1-preview",
        "o3-mini",
        "o4-mini",
        "gpt-oss-120b",
    ] {
        assert_eq!(Encoding::for_model(model), Encoding::O200k, "{model}");
    }
    for model in [
        "gpt-4",
        "gpt-4-turbo",
        "gpt-3.5-turbo",
        "gpt-35-turbo",
        "text-embedding-3-small",
        "claude-sonnet-4-5",
        "o100",
        "mock",
        "",
    ] {
        assert_eq!(Encoding::for_model(model), Encoding::Cl100k, "{model}");
    }
    assert_eq!(
        Encoding::for_route("my-deployment", "gpt-4o"),
        Encoding::O200k
    );
    assert_eq!(Encoding::for_route("gpt-4", "gpt-4o"), Encoding::Cl100k);
}

#[test]
fn documented_strings_count_as_tiktoken_says() {
    // The cookbook's `compare_encodings` outputs.
    assert_eq!(Encoding::Cl100k.count("antidisestablishmentarianism"), 6);
    assert_eq!(Encoding::Cl100k.count("2 + 2 = 4"), 7);
    assert_eq!(Encoding::O200k.count("2 + 2 = 4"), 7);
    assert_eq!(Encoding::Cl100k.count("お誕生日おめでとう"), 9);
    assert_eq!(Encoding::O200k.count("お誕生日おめでとう"), 8);
    assert_eq!(Encoding::Cl100k.count("tiktoken is great!"), 6);
}

#[test]
fn roles_are_one_token_in_both_encodings() {
    for encoding in [Encoding::Cl100k, Encoding::O200k] {
        for role in ["system", "user", "assistant", "tool", "developer"] {
            assert_eq!(encoding.count(role), PER_ROLE, "{encoding:?} {role}");
        }
    }
}

#[test]
fn tool_calls_results_and_images_are_counted() {
    let req = request(json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
        ]},
        {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "describe", "arguments": "{\"detail\":\"high\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "A cat on a mat."}
    ]}));
    let e = Encoding::O200k;
    let expected = REPLY_PRIMING
        + 3 * (PER_MESSAGE + PER_ROLE)
        + e.count("What is in this image?")
        + IMAGE_TOKENS
        + e.count("describe")
        + e.count("{\"detail\":\"high\"}")
        + e.count("A cat on a mat.");
    assert_eq!(prompt_tokens("gpt-4o", &req), expected);
}

#[test]
fn nested_tool_schemas_are_not_free() {
    let flat = json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "properties": {"xs": {"type": "array"}}}}}]});
    let mut nested = flat.clone();
    nested["tools"][0]["function"]["parameters"]["properties"]["xs"]["items"] = json!({"type": "object", "properties": {"deeply": {"type": "string", "description": "a long description of a nested field"}}});
    let flat = prompt_tokens("gpt-4o", &request(flat));
    let nested = prompt_tokens("gpt-4o", &request(nested));
    assert!(nested > flat + 10, "{nested} vs {flat}");
}

#[test]
fn embeddings_input_counts_strings_and_token_arrays() {
    let e = Encoding::Cl100k;
    assert_eq!(
        embeddings_tokens("text-embedding-3-small", &json!("hello world")),
        2
    );
    assert_eq!(e.embeddings_tokens(&json!(["hello world", "hi"])), 3);
    assert_eq!(e.embeddings_tokens(&json!([1, 2, 3])), 3);
    assert_eq!(e.embeddings_tokens(&json!([[1, 2], [3, 4, 5]])), 5);
}
