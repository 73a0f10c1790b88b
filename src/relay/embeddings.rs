//! Embeddings on the relay: the client's OpenAI body goes to an OpenAI-compatible
//! deployment with only the model replaced (or to the in-process mock), and the vendor's
//! `usage` is billed through the same routing, breakers and usage row as chat.

use std::sync::Arc;
use std::time::Instant;

use actix_web::web::Bytes;
use serde_json::{Map, Value};

use super::accounting::{Accounting, Prompt};
use super::{
    Admitted, Call, Limits, Relay, Reply, RequestInfo, attempt_timeout, read_answer, send, target,
};
use crate::actors::router::Route;
use crate::domain::breaker::CallResult;
use crate::domain::tokens::Encoding;
use crate::error::ApiError;
use crate::providers::{FailureClass, UpstreamFailure};
use crate::scripts::Scripts;

/// A validated embeddings request.
pub struct EmbeddingsRequest {
    pub model: String,
    /// The body as the client sent it (`input` validated).
    pub body: Map<String, Value>,
}

/// One embeddings request on the relay (shared with its usage row).
struct EmbeddingsCall<'a> {
    req: &'a Arc<EmbeddingsRequest>,
}

impl Call for EmbeddingsCall<'_> {
    type Answer = Bytes;

    fn serves(&self, route: &Route) -> bool {
        route.vendor.serves_embeddings()
    }

    fn demand_tokens(&self, route: &Route, _: u64) -> (u64, u64) {
        let encoding = Encoding::for_route(&route.upstream_model, &self.req.model);
        let input = self
            .req
            .body
            .get("input")
            .unwrap_or(&serde_json::Value::Null);
        (encoding.embeddings_tokens(input), 0)
    }

    fn prompt(&self) -> Prompt {
        Prompt::Embeddings(self.req.clone())
    }

    async fn attempt(
        &self,
        acc: &mut Accounting,
        route: &Arc<Route>,
        deadline: Instant,
        limits: Limits,
        _: &Scripts,
    ) -> Result<Bytes, UpstreamFailure> {
        let req: &EmbeddingsRequest = self.req;
        let bytes = if let Some(bytes) = route.vendor.local_embeddings(&req.body, &req.model) {
            Bytes::from(bytes)
        } else {
            let url = route.embeddings_url.as_ref().ok_or_else(|| {
                UpstreamFailure::new(FailureClass::Connect, "deployment has no base_url")
            })?;
            let request = route
                .vendor
                .embeddings_request(url, target(route), &req.body)?;
            let timeout = attempt_timeout(route, deadline);
            let response = send(acc, route, request, timeout).await?;
            read_answer(acc, route, response, timeout, limits.max_response_bytes).await?
        };
        acc.usage = route.vendor.decode_embeddings(&bytes)?;
        Ok(bytes)
    }
}

impl Relay {
    /// Serves one embeddings request; the answer is the vendor's, as it sent it. Without
    /// usage from the vendor, the row counts the input.
    pub async fn embeddings(
        &self,
        info: RequestInfo,
        req: &Arc<EmbeddingsRequest>,
    ) -> Result<Reply<Bytes>, ApiError> {
        let admitted = self.serve(info, &EmbeddingsCall { req }).await?;
        let served = admitted.served();
        let Admitted {
            mut acc,
            permit,
            answer,
            ..
        } = admitted;
        permit.finish(CallResult::Success);
        acc.succeed();
        Ok(Reply {
            body: answer,
            served,
        })
    }
}
