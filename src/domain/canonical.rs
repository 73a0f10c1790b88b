//! The gateway's canonical chat model: what every inbound dialect parses into and every
//! vendor adapter translates from, and the canonical events a streamed answer is decoded
//! into. Plain data, no I/O.
//!
//! A request also keeps the body as the client sent it (`native`): a vendor that speaks
//! the client's dialect gets that body with only the model replaced, so fields the gateway
//! does not model still reach it.

use serde_json::{Map, Value};

use crate::domain::usage::TokenUsage;
use crate::error::ApiError;
use crate::providers::UpstreamFailure;

/// The longest model name accepted: it is stored in usage rows and echoed in errors.
pub const MAX_MODEL_BYTES: usize = 256;

/// Validates the `model` field of any dialect's request.
pub fn model_name(value: Option<&Value>) -> Result<String, ApiError> {
    match value {
        Some(Value::String(m)) if m.len() > MAX_MODEL_BYTES => Err(ApiError::invalid(
            "model",
            format!("`model` must be at most {MAX_MODEL_BYTES} bytes"),
        )),
        Some(Value::String(m)) if m.chars().any(char::is_control) => Err(ApiError::invalid(
            "model",
            "`model` must not contain control characters",
        )),
        Some(Value::String(m)) if !m.is_empty() => Ok(m.clone()),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(ApiError::invalid(
            "model",
            "you must provide a model parameter",
        )),
        Some(_) => Err(ApiError::invalid("model", "`model` must be a string")),
    }
}

/// A wire format for chat: the client's (inbound) or a vendor's (outbound).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// OpenAI chat completions (`/v1/chat/completions`).
    OpenAI,
    /// Anthropic Messages (`/v1/messages`).
    Anthropic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    /// Results of tool calls (OpenAI's `tool` role; Anthropic puts them in a user turn).
    Tool,
}

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// An `http(s):` URL (or a `data:` URL as OpenAI clients send them).
    Url(String),
    /// Base64 bytes of `media_type`.
    Base64 { media_type: String, data: String },
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Image(ImageSource),
    /// A call the assistant made; `arguments` is JSON text (as OpenAI carries it).
    ToolCall {
        id: String,
        name: String,
        arguments: String,
    },
    /// The result of the call `call_id`.
    ToolResult {
        call_id: String,
        content: String,
        is_error: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub role: Role,
    pub content: Vec<Part>,
}

impl Message {
    /// The text parts, joined by a space.
    pub fn text(&self) -> String {
        let texts: Vec<&str> = self
            .content
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(t.as_str()),
                Part::ToolResult { content, .. } => Some(content.as_str()),
                _ => None,
            })
            .collect();
        texts.join(" ")
    }
}

/// A tool the model may call; `parameters` is a JSON Schema object.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    Auto,
    None,
    /// Some tool must be called (OpenAI `required`, Anthropic `any`).
    Required,
    /// This tool must be called.
    Tool(String),
}

/// A validated chat request, whatever dialect it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    /// The public model name asked for.
    pub model: String,
    /// In order; `System` messages may appear anywhere (Anthropic gets them hoisted).
    pub messages: Vec<Message>,
    pub tools: Vec<Tool>,
    pub tool_choice: Option<ToolChoice>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub stream: bool,
    /// The client asked for usage in the stream (OpenAI `stream_options.include_usage`;
    /// Anthropic streams always carry it).
    pub include_usage: bool,
    /// The body as the client sent it, in its dialect.
    pub native: Native,
}

/// The client's own body, kept for a vendor that speaks the same dialect.
#[derive(Debug, Clone, PartialEq)]
pub struct Native {
    pub dialect: Dialect,
    pub body: Map<String, Value>,
}

impl ChatRequest {
    /// The text of the last user message (the mock vendor echoes it).
    pub fn last_user_text(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(Message::text)
            .unwrap_or_default()
    }

    /// Every message's text, joined by a space (for the mock's token estimate).
    pub fn all_text(&self) -> String {
        let texts: Vec<String> = self.messages.iter().map(Message::text).collect();
        texts.join(" ")
    }
}

/// Why the model stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A natural end or a stop sequence (OpenAI `stop`; Anthropic `end_turn`,
    /// `stop_sequence`, `pause_turn`).
    Stop,
    /// The token limit (`length`; `max_tokens`).
    Length,
    /// The model called tools (`tool_calls`; `tool_use`).
    ToolCalls,
    /// The vendor withheld content (`content_filter`; `refusal`).
    ContentFilter,
}

impl FinishReason {
    pub fn openai(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
        }
    }

    pub fn from_openai(s: &str) -> Self {
        match s {
            "length" => Self::Length,
            "tool_calls" | "function_call" => Self::ToolCalls,
            "content_filter" => Self::ContentFilter,
            _ => Self::Stop,
        }
    }

    pub fn anthropic(self) -> &'static str {
        match self {
            Self::Stop => "end_turn",
            Self::Length => "max_tokens",
            Self::ToolCalls => "tool_use",
            Self::ContentFilter => "refusal",
        }
    }

    pub fn from_anthropic(s: &str) -> Self {
        match s {
            "max_tokens" | "model_context_window_exceeded" => Self::Length,
            "tool_use" => Self::ToolCalls,
            "refusal" => Self::ContentFilter,
            _ => Self::Stop,
        }
    }
}

/// A complete (blocking) answer.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The vendor's id for the answer.
    pub id: String,
    /// The model that answered, as the vendor names it.
    pub model: String,
    /// Text and tool calls, in order.
    pub content: Vec<Part>,
    pub finish: Option<FinishReason>,
    pub usage: Option<TokenUsage>,
}

impl ChatResponse {
    /// The answer as the events of a stream that says the same (for a client that asked
    /// for a stream of an answer the gateway holds whole); `Done` is left to the caller.
    pub fn events(&self) -> Vec<ChatEvent> {
        let mut events = vec![ChatEvent::Start {
            id: self.id.clone(),
            model: self.model.clone(),
        }];
        let mut calls = 0;
        for part in &self.content {
            match part {
                Part::Text(text) => events.push(ChatEvent::Text(text.clone())),
                Part::ToolCall {
                    id,
                    name,
                    arguments,
                } => {
                    events.push(ChatEvent::ToolCallStart {
                        index: calls,
                        id: id.clone(),
                        name: name.clone(),
                    });
                    events.push(ChatEvent::ToolCallArguments {
                        index: calls,
                        delta: arguments.clone(),
                    });
                    calls += 1;
                }
                Part::Image(_) | Part::ToolResult { .. } => {}
            }
        }
        events.push(ChatEvent::Finish(self.finish.unwrap_or(FinishReason::Stop)));
        if let Some(usage) = &self.usage {
            events.push(ChatEvent::Usage(*usage));
        }
        events
    }
}

/// One step of a streamed answer. A stream is: `Start`, then text and tool-call events,
/// then `Finish` and `Usage` (either order), then `Done`.
#[derive(Debug, Clone, PartialEq)]
pub enum ChatEvent {
    Start {
        id: String,
        model: String,
    },
    Text(String),
    /// Tool call number `index` (0-based, in the order the calls started) begins.
    ToolCallStart {
        index: usize,
        id: String,
        name: String,
    },
    /// More JSON text of tool call `index`'s arguments.
    ToolCallArguments {
        index: usize,
        delta: String,
    },
    Usage(TokenUsage),
    Finish(FinishReason),
    /// The upstream ended the stream properly.
    Done,
}

impl ChatEvent {
    /// Whether the event commits a stream to its deployment: anything but `Start` (a
    /// role-only preamble may still be followed by a failure that can fail over).
    pub fn commits(&self) -> bool {
        !matches!(self, Self::Start { .. })
    }
}

/// Decodes one vendor's stream: one upstream SSE event at a time into canonical events.
/// Stateful (Anthropic numbers content blocks, tool calls are counted), never I/O.
pub trait StreamDecoder {
    /// Appends what `event` says to `out`; an error event or an undecodable one is an
    /// `Err` (the relay fails the attempt, or ends a committed stream).
    fn decode(
        &mut self,
        event: &crate::domain::sse::SseEvent,
        out: &mut Vec<ChatEvent>,
    ) -> Result<(), UpstreamFailure>;
}
