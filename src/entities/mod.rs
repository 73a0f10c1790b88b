//! SeaORM entities, one file per table. Storage types only: they never appear in an HTTP
//! response (see `http::dto` for the wire types). Times are Unix milliseconds.

pub mod api_key;
pub mod audit_log;
pub mod bus_fanout;
pub mod bus_group;
pub mod bus_message;
pub mod deployment;
pub mod job;
pub mod job_artifact;
pub mod mcp_server;
pub mod model_fallback;
pub mod passthrough_route;
pub mod quota_counter;
pub mod script;
pub mod tool_session;
pub mod usage;
pub mod usage_daily;
pub mod usage_hourly;
pub mod user;
