//! The Anthropic Messages client API (`/v1/messages`).

pub mod dialect;
