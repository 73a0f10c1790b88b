//! The admin API under `/admin`: users, keys, models (deployments), audit log, usage. Reads need
//! admin, operator or viewer; model changes admin or operator; user and key changes admin.
//! Every change is audited by the store in the change's own transaction, and the store
//! answers once this instance's copies (key cache, routing table) follow the change: the
//! handlers clear and reload nothing themselves. Bodies are read by the handler, after the
//! role extractor accepted the caller.

pub mod audit;
pub mod keys;
pub mod mcp;
pub mod models;
pub mod resilience;
pub mod routes;
pub mod scripts;
pub mod usage;
pub mod users;

use actix_web::web;

use crate::http::resource;

/// `/users/quota` is registered before `/users/{user_id}`: `quota` is not a user id here.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource!("/users", post => users::create_user, get => users::list_users))
        .service(resource!("/users/quota", post => users::set_quota))
        .service(resource!(
            "/users/{user_id}",
            get => users::get_user,
            patch => users::update_user,
            delete => users::disable_user,
        ))
        .service(resource!("/keys", post => keys::create_key, get => keys::list_keys))
        .service(resource!("/keys/{id}", delete => keys::revoke_key))
        .service(resource!(
            "/models",
            post => models::create_model,
            get => models::list_models,
        ))
        .service(resource!(
            "/models/{id}",
            patch => models::update_model,
            delete => models::delete_model,
        ))
        .service(resource!("/models/{model_id}/fallbacks", put => resilience::set_fallbacks))
        .service(resource!("/breakers", get => resilience::list_breakers))
        .service(resource!("/breakers/{deployment_id}", put => resilience::override_breaker))
        .service(resource!("/audit", get => audit::list_audit))
        .service(resource!("/usage", get => usage::list_usage))
        .service(resource!("/usage/summary", get => usage::usage_summary))
        .service(resource!("/jobs", get => crate::http::jobs::admin_list_jobs))
        .service(resource!("/mcp", get => mcp::list))
        .service(resource!("/mcp/register", post => mcp::register))
        .service(resource!("/mcp/{name}", delete => mcp::delete))
        .service(resource!("/mcp/{name}/tools/{tool}/policy", put => mcp::set_policy))
        .service(resource!("/routes", get => routes::list, post => routes::create))
        .service(resource!(
            "/routes/{id}",
            patch => routes::update,
            delete => routes::delete,
        ))
        .service(resource!(
            "/scripts",
            post => scripts::create_script,
            get => scripts::list_scripts,
        ))
        .service(resource!(
            "/scripts/{name}",
            put => scripts::replace_script,
            get => scripts::get_script,
            delete => scripts::delete_script,
        ))
        .service(resource!("/scripts/{name}/test", post => scripts::test_script));
}
