//! The OpenAI-compatible client API.

pub mod chat_completions;
pub mod dialect;
pub mod embeddings;
pub mod images;
pub mod models;
pub mod usage;
