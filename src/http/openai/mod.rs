//! The OpenAI-compatible client API.

pub mod chat_completions;
pub mod models;
