//! The admin API under `/admin`: users, keys, models (deployments), audit log. Reads need
//! admin, operator or viewer; model changes admin or operator; user and key changes admin.
//! Every change is audited by the store in the change's own transaction. Bodies are read
//! by the handler, after the role extractor accepted the caller.

pub mod audit;
pub mod keys;
pub mod models;
pub mod resilience;
pub mod users;

use actix::prelude::*;
use actix_web::web;

use crate::actors::ASK_TIMEOUT;
use crate::actors::store::{StoreActor, StoreError};
use crate::error::ApiError;
use crate::http::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/users", web::post().to(users::create_user))
        .route("/users", web::get().to(users::list_users))
        .route("/users/quota", web::post().to(users::set_quota))
        .route("/users/{user_id}", web::get().to(users::get_user))
        .route("/users/{user_id}", web::patch().to(users::update_user))
        .route("/users/{user_id}", web::delete().to(users::disable_user))
        .route("/keys", web::post().to(keys::create_key))
        .route("/keys", web::get().to(keys::list_keys))
        .route("/keys/{id}", web::delete().to(keys::revoke_key))
        .route("/models", web::post().to(models::create_model))
        .route("/models", web::get().to(models::list_models))
        .route("/models/{id}", web::patch().to(models::update_model))
        .route("/models/{id}", web::delete().to(models::delete_model))
        .route(
            "/models/{model_id}/fallbacks",
            web::put().to(resilience::set_fallbacks),
        )
        .route("/breakers", web::get().to(resilience::list_breakers))
        .route(
            "/breakers/{deployment_id}",
            web::put().to(resilience::override_breaker),
        )
        .route("/audit", web::get().to(audit::list_audit));
}

/// Sends a change of users or keys to the store and clears the key cache whatever the
/// answer (a lookup that raced the change must not outlive it). If the store does not
/// answer within `ASK_TIMEOUT`, the change may still commit: the cache is cleared again
/// when the store answers.
pub(crate) async fn change_grants<M, T>(state: &AppState, msg: M) -> Result<T, ApiError>
where
    M: Message<Result = Result<T, StoreError>> + Send + 'static,
    T: Send + 'static,
    StoreActor: Handler<M>,
{
    let mut reply = Box::pin(state.store.send(msg));
    let answer = tokio::time::timeout(ASK_TIMEOUT, &mut reply).await;
    state.keys.invalidate();
    match answer {
        Ok(result) => Ok(result??),
        Err(_) => {
            let keys = state.keys.clone();
            actix_web::rt::spawn(async move {
                let _ = reply.await;
                keys.invalidate();
            });
            Err(MailboxError::Timeout.into())
        }
    }
}
