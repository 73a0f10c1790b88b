//! Embeddings on the relay: the client's OpenAI body goes to an OpenAI-compatible
//! deployment with only the model replaced (or to the in-process mock), and the vendor's
//! `usage` is billed through the same routing, breakers and usage row as chat.

use std::sync::Arc;
use std::time::Instant;

use actix_web::web::Bytes;
use serde_json::{Map, Value};

use super::accounting::Accounting;
use super::{
    Admitted, Call, Limits, Relay, Reply, RequestInfo, attempt_timeout, read_answer, send, target,
};
use crate::actors::router::Route;
use crate::domain::breaker::CallResult;
use crate::error::ApiError;
use crate::providers::{FailureClass, UpstreamFailure};

/// A validated embeddings request.
pub struct EmbeddingsRequest {
    pub model: String,
    /// The body as the client sent it (`input` validated).
    pub body: Map<String, Value>,
}

impl Call for EmbeddingsRequest {
    type Answer = Bytes;

    fn serves(&self, route: &Route) -> bool {
        route.vendor.serves_embeddings()
    }

    fn demand_tokens(&self, _: &Route, _: u64) -> (u64, u64) {
        let input = self
            .body
            .get("input")
            .map_or(0, |v| v.to_string().len() as u64);
        (input.div_ceil(4), 0)
    }

    async fn attempt(
        &self,
        acc: &mut Accounting,
        route: &Arc<Route>,
        deadline: Instant,
        limits: Limits,
    ) -> Result<Bytes, UpstreamFailure> {
        let bytes = if let Some(bytes) = route.vendor.local_embeddings(&self.body, &self.model) {
            Bytes::from(bytes)
        } else {
            let url = route.embeddings_url.as_ref().ok_or_else(|| {
                UpstreamFailure::new(FailureClass::Connect, "deployment has no base_url")
            })?;
            let request = route
                .vendor
                .embeddings_request(url, target(route), &self.body)?;
            let timeout = attempt_timeout(route, deadline);
            let response = send(acc, route, request, timeout).await?;
            read_answer(acc, route, response, timeout, limits.max_response_bytes).await?
        };
        acc.usage = route.vendor.decode_embeddings(&bytes)?;
        Ok(bytes)
    }
}

impl Relay {
    /// Serves one embeddings request; the answer is the vendor's, as it sent it.
    pub async fn embeddings(
        &self,
        info: RequestInfo,
        req: &EmbeddingsRequest,
    ) -> Result<Reply<Bytes>, ApiError> {
        let admitted = self.serve(info, req).await?;
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
