//! The client API's vendor bodies, described by the fields the gateway reads and writes.
//! OpenAI's and Anthropic's own schemas are far larger: any other field is allowed and
//! reaches an upstream of the same dialect unchanged, and an answer relayed from such an
//! upstream carries the upstream's own fields too.

use serde_json::Value;
use utoipa::ToSchema;

/// An OpenAI chat-completions request. Fields the gateway does not model are forwarded
/// unchanged to OpenAI-compatible deployments.
#[derive(ToSchema)]
#[schema(example = json!({"model": "mock", "messages": [{"role": "user", "content": "Hello"}]}))]
pub struct ChatCompletionRequest {
    /// A model name known to the gateway (see `GET /v1/models`), at most 256 bytes.
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// Answer as server-sent events (`data: {chunk}` … `data: [DONE]`).
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u32>,
    #[schema(minimum = 1)]
    pub n: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    /// A string or an array of strings.
    pub stop: Option<Value>,
    pub tools: Option<Vec<ChatTool>>,
    /// `none`, `auto`, `required`, or `{"type": "function", "function": {"name": …}}`.
    pub tool_choice: Option<Value>,
}

#[derive(ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with the request's token usage.
    pub include_usage: Option<bool>,
}

/// One message of an OpenAI conversation.
#[derive(ToSchema)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant`, `tool` or `function`.
    pub role: String,
    /// A string, or an array of parts (`{"type": "text", "text"}`,
    /// `{"type": "image_url", "image_url": {"url"}}`); `null` on an assistant message that
    /// only calls tools.
    pub content: Option<Value>,
    /// On an assistant message: the tool calls it made.
    #[schema(value_type = Vec<Object>)]
    pub tool_calls: Option<Vec<Value>>,
    /// On a `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

/// `{"type": "function", "function": {"name", "description", "parameters"}}`.
#[derive(ToSchema)]
pub struct ChatTool {
    /// `function`.
    #[schema(rename = "type")]
    pub kind: String,
    #[schema(value_type = Object)]
    pub function: Value,
}

/// A `chat.completion` (blocking answer). A stream sends `chat.completion.chunk` objects
/// instead, as `text/event-stream`.
#[derive(ToSchema)]
pub struct ChatCompletion {
    pub id: String,
    /// `chat.completion`.
    pub object: String,
    /// Unix seconds.
    pub created: i64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Option<ChatUsage>,
}

#[derive(ToSchema)]
pub struct ChatChoice {
    pub index: u32,
    /// `{"role": "assistant", "content": string|null, "tool_calls"?: [...]}`.
    #[schema(value_type = Object)]
    pub message: Value,
    /// `stop`, `length`, `tool_calls` or `content_filter`.
    pub finish_reason: Option<String>,
}

#[derive(ToSchema)]
pub struct ChatUsage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

/// An Anthropic Messages API request. Fields the gateway does not model are forwarded
/// unchanged to Anthropic deployments.
#[derive(ToSchema)]
#[schema(example = json!({"model": "mock", "max_tokens": 256,
    "messages": [{"role": "user", "content": "Hello"}]}))]
pub struct MessagesRequest {
    pub model: String,
    #[schema(minimum = 1)]
    pub max_tokens: u32,
    /// `{"role": "user"|"assistant", "content": string | [content blocks]}`: text, image,
    /// `tool_use` and `tool_result` blocks.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    /// A string or an array of text blocks.
    pub system: Option<Value>,
    /// Answer as server-sent events (`message_start`, `content_block_*`, `message_delta`,
    /// `message_stop`).
    pub stream: Option<bool>,
    /// `{"name", "description", "input_schema"}` each.
    #[schema(value_type = Vec<Object>)]
    pub tools: Option<Vec<Value>>,
    /// `{"type": "auto"|"any"|"none"}` or `{"type": "tool", "name"}`.
    #[schema(value_type = Object)]
    pub tool_choice: Option<Value>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop_sequences: Option<Vec<String>>,
}

/// A `message` (blocking answer).
#[derive(ToSchema)]
pub struct MessagesResponse {
    pub id: String,
    /// `message`.
    #[schema(rename = "type")]
    pub kind: String,
    /// `assistant`.
    pub role: String,
    pub model: String,
    /// `text` and `tool_use` blocks.
    #[schema(value_type = Vec<Object>)]
    pub content: Vec<Value>,
    /// `end_turn`, `max_tokens`, `stop_sequence` or `tool_use`.
    pub stop_reason: Option<String>,
    pub stop_sequence: Option<String>,
    /// `input_tokens`, `output_tokens`, and the cache counts when known.
    #[schema(value_type = Object)]
    pub usage: Value,
}

/// An OpenAI embeddings request, relayed to OpenAI-compatible deployments.
#[derive(ToSchema)]
#[schema(example = json!({"model": "mock", "input": ["first text", "second text"]}))]
pub struct EmbeddingsRequest {
    pub model: String,
    /// A string, an array of strings, an array of token ids or an array of token-id
    /// arrays; none empty.
    pub input: Value,
    /// `float` (default) or `base64`.
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
}

/// An embeddings answer: `{"object": "list", "data": [{"object": "embedding", "index",
/// "embedding"}], "model", "usage"}`.
#[derive(ToSchema)]
pub struct EmbeddingsResponse {
    pub object: String,
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
    pub model: String,
    /// `prompt_tokens`, `total_tokens`.
    #[schema(value_type = Object)]
    pub usage: Value,
}
