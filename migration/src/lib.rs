//! Every schema change of Lowart, in order. Each migration uses SeaORM's schema helpers so
//! one file serves SQLite and PostgreSQL. Times are Unix milliseconds (`BIGINT`).

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_users;
mod m20261122_000002_create_api_keys;
mod m20261122_000003_create_deployments;
mod m20261122_000004_create_model_fallbacks;
mod m20261122_000005_create_usage;
mod m20261122_000006_create_audit_log;
mod m20261122_000007_add_resilience_settings;
mod m20261130_000008_api_key_prefix_and_bootstrap;
mod m20261201_000009_deployment_config;
mod m20261201_000010_usage_cache_tokens;
mod m20261202_000011_usage_cost_micros_and_rollups;
mod m20261202_000012_quota_counters;
mod m20261203_000013_jobs;
mod m20261204_000014_agent_bus;
mod m20261205_000015_mcp;
mod m20261206_000016_scripts;
mod m20261206_000017_passthrough_routes;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_users::Migration),
            Box::new(m20261122_000002_create_api_keys::Migration),
            Box::new(m20261122_000003_create_deployments::Migration),
            Box::new(m20261122_000004_create_model_fallbacks::Migration),
            Box::new(m20261122_000005_create_usage::Migration),
            Box::new(m20261122_000006_create_audit_log::Migration),
            Box::new(m20261122_000007_add_resilience_settings::Migration),
            Box::new(m20261130_000008_api_key_prefix_and_bootstrap::Migration),
            Box::new(m20261201_000009_deployment_config::Migration),
            Box::new(m20261201_000010_usage_cache_tokens::Migration),
            Box::new(m20261202_000011_usage_cost_micros_and_rollups::Migration),
            Box::new(m20261202_000012_quota_counters::Migration),
            Box::new(m20261203_000013_jobs::Migration),
            Box::new(m20261204_000014_agent_bus::Migration),
            Box::new(m20261205_000015_mcp::Migration),
            Box::new(m20261206_000016_scripts::Migration),
            Box::new(m20261206_000017_passthrough_routes::Migration),
        ]
    }
}
