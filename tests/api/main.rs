//! Integration tests: the real gateway on a random port (or a Unix socket) against a mock
//! upstream (OpenAI and Anthropic wire formats) on its own random port, on SQLite, and on
//! PostgreSQL when `TEST_DATABASE_URL` is set.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod admin;
mod anthropic;
mod bus;
mod chat;
mod cli;
mod edge;
mod embeddings;
mod errors;
mod hardening;
mod helpers;
mod install;
mod jobs;
mod keys;
mod listeners;
mod mcp;
mod mcp_store;
mod mcp_support;
mod metrics;
mod mock_comfyui;
mod mock_upstream;
mod openapi;
mod passthrough;
mod quota;
mod resilience;
mod scale_out;
mod scripts;
mod summary;
mod tls;
mod tracing_export;
mod ui;
mod usage_api;
mod usage_counting;
mod usage_spill;
