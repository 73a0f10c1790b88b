//! `POST /v1/messages`: the Anthropic Messages dialect on the shared chat handler. Errors
//! leave in Anthropic's shape (see `request_context`).

use actix_web_lab::sse;
use serde_json::Value;

use crate::domain::canonical::{ChatRequest, ChatResponse};
use crate::error::ApiError;
use crate::http::anthropic::dialect::{self, StreamEncoder};
use crate::http::chat::ChatDialect;
use crate::relay::Relayed;

pub struct AnthropicMessages;

impl ChatDialect for AnthropicMessages {
    type Encoder = StreamEncoder;

    fn parse(bytes: &[u8]) -> Result<ChatRequest, ApiError> {
        dialect::parse(bytes)
    }

    fn encode_response(response: &ChatResponse, _created: i64) -> Value {
        dialect::encode_response(response)
    }

    fn encoder(req: &ChatRequest, _created: i64) -> StreamEncoder {
        StreamEncoder::new(req.model.clone())
    }

    fn encode(encoder: &mut StreamEncoder, item: Relayed, out: &mut Vec<sse::Event>) {
        match item {
            Relayed::Event { raw: Some(raw), .. } => {
                let data = sse::Data::new(raw.data);
                out.push(sse::Event::Data(match raw.event {
                    Some(name) => data.event(name),
                    None => data,
                }));
            }
            Relayed::Event { raw: None, events } => {
                for event in &events {
                    encoder.encode(event, out);
                }
            }
            Relayed::Failed(error) => encoder.error(&error, out),
        }
    }
}
