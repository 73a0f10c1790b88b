//! Counting tokens the way OpenAI does, for when a vendor reports no usage (or the client
//! left before it did) and for admission (reserving a prompt's tokens before the call).
//!
//! The encoding follows the model family: `o200k_base` for gpt-4o, gpt-4.1, gpt-4.5,
//! gpt-5, chatgpt-4o, gpt-oss and the o1/o3/o4 reasoning models; `cl100k_base` for gpt-4,
//! gpt-3.5, the text-embedding models and anything unknown. Claude models count with
//! `cl100k_base` too: Anthropic's tokenizer is not public, so counts for Claude are an
//! approximation (the gateway uses Anthropic's own figures whenever it sends them, which
//! it does for every complete answer).
//!
//! Each vocabulary is a table embedded at build time (`build.rs`), indexed the first time
//! something is counted with it (milliseconds; an index of about 3 MiB for cl100k_base
//! and 6 MiB for o200k_base): a gateway that never counts never pays for it.
//!
//! A chat prompt is counted as OpenAI's cookbook ("How to count tokens with tiktoken")
//! does: 3 tokens per message, 1 for its role, its text, 1 more per `name`, 3 for the
//! reply's priming; tool definitions by the cookbook's `num_tokens_for_tools`. Images are
//! counted as a fixed `IMAGE_TOKENS`.

mod bpe;
mod stream;

use std::fmt::Write as _;
use std::sync::OnceLock;

use serde_json::Value;

use crate::domain::canonical::{ChatRequest, Dialect, Part, Tool};
use bpe::{Bpe, Vocabulary};
pub use stream::StreamCounter;

/// Tokens every message costs besides its content (`<|start|>{role}\n … <|end|>\n`).
const PER_MESSAGE: u64 = 3;
/// A role is one token in both vocabularies.
const PER_ROLE: u64 = 1;
/// A message's `name`, besides the name's own tokens.
const PER_NAME: u64 = 1;
/// Every reply is primed with `<|start|>assistant<|message|>`.
const REPLY_PRIMING: u64 = 3;
/// An image, whatever its size: OpenAI's price of a 1024×1024 image at high detail
/// (85 + 4 tiles × 170). The gateway does not fetch or decode images to count them.
pub const IMAGE_TOKENS: u64 = 765;

/// A tiktoken encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Cl100k,
    O200k,
}

/// Model families and their encodings, by name prefix (a family name is followed by the
/// end of the name, `-`, `.` or `:`).
const FAMILIES: &[(&str, Encoding)] = &[
    ("gpt-4o", Encoding::O200k),
    ("gpt-4.1", Encoding::O200k),
    ("gpt-4.5", Encoding::O200k),
    ("gpt-5", Encoding::O200k),
    ("chatgpt-4o", Encoding::O200k),
    ("gpt-oss", Encoding::O200k),
    ("o1", Encoding::O200k),
    ("o3", Encoding::O200k),
    ("o4", Encoding::O200k),
    ("gpt-4", Encoding::Cl100k),
    ("gpt-3.5", Encoding::Cl100k),
    ("gpt-35", Encoding::Cl100k),
    ("text-embedding", Encoding::Cl100k),
    ("davinci-002", Encoding::Cl100k),
    ("babbage-002", Encoding::Cl100k),
];

impl Encoding {
    /// The encoding of `model`'s family; `cl100k_base` when the family is unknown.
    pub fn for_model(model: &str) -> Self {
        Self::known(model).unwrap_or(Self::Cl100k)
    }

    /// The encoding of a deployment's upstream model, else of the model the client asked
    /// for (a deployment may hide the real model behind any name), else `cl100k_base`.
    pub fn for_route(upstream_model: &str, requested: &str) -> Self {
        Self::known(upstream_model)
            .or_else(|| Self::known(requested))
            .unwrap_or(Self::Cl100k)
    }

    /// The encoding of a model family this module knows (`azure/gpt-4o`, `ft:gpt-4o-mini:…`
    /// and `GPT-4o` are gpt-4o).
    fn known(model: &str) -> Option<Self> {
        let name = model.rsplit('/').next().unwrap_or(model);
        let name = name.strip_prefix("ft:").unwrap_or(name).as_bytes();
        FAMILIES.iter().find_map(|(family, encoding)| {
            let family = family.as_bytes();
            let prefix = name.get(..family.len())?;
            let follows = name.get(family.len()).copied();
            (prefix.eq_ignore_ascii_case(family)
                && matches!(follows, None | Some(b'-' | b'.' | b':')))
            .then_some(*encoding)
        })
    }

    /// The vocabulary, loaded on first use (`None` only if tiktoken-rs's embedded data
    /// could not be read, which its own tests rule out).
    fn bpe(self) -> Option<&'static Bpe> {
        static CL100K: OnceLock<Option<Bpe>> = OnceLock::new();
        static O200K: OnceLock<Option<Bpe>> = OnceLock::new();
        match self {
            Self::Cl100k => CL100K.get_or_init(|| Bpe::load(Vocabulary::Cl100k)),
            Self::O200k => O200K.get_or_init(|| Bpe::load(Vocabulary::O200k)),
        }
        .as_ref()
    }

    /// Tokens of `text` (tiktoken's `encode_ordinary(text).len()`).
    pub fn count(self, text: &str) -> u64 {
        match self.bpe() {
            Some(bpe) => bpe.count(text),
            // Never expected; a usual 4 bytes a token rather than a silent zero.
            None => text.len().div_ceil(4) as u64,
        }
    }

    /// Tokens of a chat request's prompt, as OpenAI counts them (see the module's doc).
    pub fn prompt_tokens(self, request: &ChatRequest) -> u64 {
        let mut tokens = REPLY_PRIMING;
        for message in &request.messages {
            tokens += PER_MESSAGE + PER_ROLE + self.content_tokens(&message.content);
        }
        // The canonical message keeps no `name`: it is read from the client's own body.
        if request.native.dialect == Dialect::OpenAI
            && let Some(Value::Array(messages)) = request.native.body.get("messages")
        {
            for name in messages
                .iter()
                .filter_map(|m| m.get("name").and_then(Value::as_str))
            {
                tokens += PER_NAME + self.count(name);
            }
        }
        tokens + self.tools_tokens(&request.tools)
    }

    /// Tokens of content parts: text, tool calls (name and arguments), tool results, and
    /// `IMAGE_TOKENS` per image. Also what a complete answer's content costs.
    pub fn content_tokens(self, parts: &[Part]) -> u64 {
        parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => self.count(text),
                Part::Image(_) => IMAGE_TOKENS,
                Part::ToolCall {
                    name, arguments, ..
                } => self.count(name) + self.count(arguments),
                Part::ToolResult { content, .. } => self.count(content),
            })
            .sum()
    }

    /// Tool definitions, by the cookbook's `num_tokens_for_tools`: per function a header
    /// and `name:description`, per property `name:type:description` and its enum values,
    /// and a footer. What that rendering leaves out (nested schemas, `items`, …) is
    /// counted as its JSON, so nothing a client sends is free.
    fn tools_tokens(self, tools: &[Tool]) -> u64 {
        if tools.is_empty() {
            return 0;
        }
        let function_start: u64 = match self {
            Self::O200k => 7,
            Self::Cl100k => 10,
        };
        const PROPERTIES_START: u64 = 3;
        const PER_PROPERTY: u64 = 3;
        const ENUM_START: i64 = -3;
        const PER_ENUM_VALUE: u64 = 3;
        const FUNCTIONS_END: u64 = 12;
        let mut line = String::new();
        let mut tokens = FUNCTIONS_END;
        for tool in tools {
            let description = tool.description.as_deref().unwrap_or("");
            line.clear();
            let _ = write!(
                line,
                "{}:{}",
                tool.name,
                description.strip_suffix('.').unwrap_or(description)
            );
            tokens += function_start + self.count(&line);
            let Some(properties) = tool
                .parameters
                .get("properties")
                .and_then(Value::as_object)
                .filter(|p| !p.is_empty())
            else {
                continue;
            };
            tokens += PROPERTIES_START;
            for (key, schema) in properties {
                tokens += PER_PROPERTY;
                if let Some(values) = schema.get("enum").and_then(Value::as_array) {
                    tokens = tokens.saturating_add_signed(ENUM_START);
                    for value in values {
                        tokens += PER_ENUM_VALUE + self.json_text_tokens(value);
                    }
                }
                let kind = schema.get("type");
                let description = schema
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                line.clear();
                let _ = match kind {
                    Some(Value::String(kind)) => write!(line, "{key}:{kind}:"),
                    Some(other) => write!(line, "{key}:{other}:"),
                    None => write!(line, "{key}::"),
                };
                line.push_str(description.strip_suffix('.').unwrap_or(description));
                tokens += self.count(&line);
                if let Some(schema) = schema.as_object() {
                    for (k, v) in schema {
                        if !matches!(k.as_str(), "type" | "description" | "enum") {
                            tokens += self.count(k) + self.json_text_tokens(v);
                        }
                    }
                }
            }
        }
        tokens
    }

    /// A JSON value's tokens: a string's text, anything else as JSON.
    fn json_text_tokens(self, value: &Value) -> u64 {
        match value {
            Value::String(s) => self.count(s),
            other => self.count(&other.to_string()),
        }
    }

    /// Tokens of an embeddings `input`: a string, an array of strings, a token-id array
    /// (its length) or an array of token-id arrays. OpenAI reports exactly this.
    pub fn embeddings_tokens(self, input: &Value) -> u64 {
        match input {
            Value::String(text) => self.count(text),
            Value::Array(items) if items.iter().all(Value::is_number) => items.len() as u64,
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(text) => self.count(text),
                    Value::Array(ids) => ids.len() as u64,
                    _ => 0,
                })
                .sum(),
            _ => 0,
        }
    }
}

/// Tokens of `request`'s prompt for `model` (admission reserves them before the call).
pub fn prompt_tokens(model: &str, request: &ChatRequest) -> u64 {
    Encoding::for_model(model).prompt_tokens(request)
}

/// Tokens of an embeddings request's `input` for `model`.
pub fn embeddings_tokens(model: &str, input: &Value) -> u64 {
    Encoding::for_model(model).embeddings_tokens(input)
}

#[cfg(test)]
mod tests;
