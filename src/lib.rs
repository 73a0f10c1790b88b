//! Lowart: an OpenAI-compatible AI API gateway built as an actor system on actix.
//! See ARCHITECTURE.md for the map.

pub mod actors;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod domain;
pub mod entities;
pub mod error;
pub mod http;
pub mod install;
pub mod master_key;
pub mod providers;
pub mod relay;
pub mod scripts;
pub mod startup;
pub mod telemetry;
pub mod tls;
