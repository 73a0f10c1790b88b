//! OpenAI and OpenAI-compatible servers: the request is already in their format, so the
//! adapter only points it at the upstream model, asks for usage in streams, and classifies
//! error answers.

use serde_json::{Map, Value};

use super::{FailureClass, UpstreamFailure};

/// `{base_url}/chat/completions`, tolerant of a trailing slash.
pub fn chat_url(base_url: &str) -> String {
    format!("{}/chat/completions", base_url.trim_end_matches('/'))
}

/// Rewrites the client's body for the upstream: the upstream model name, and for streams
/// `stream_options.include_usage = true` so every stream can be accounted for.
pub fn prepare_chat_body(body: &mut Map<String, Value>, upstream_model: &str, stream: bool) {
    body.insert("model".into(), Value::String(upstream_model.to_string()));
    if stream {
        let options = body
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        if !options.is_object() {
            *options = Value::Object(Map::new());
        }
        if let Value::Object(options) = options {
            options.insert("include_usage".into(), Value::Bool(true));
        }
    }
}

/// Classifies a non-2xx answer by status and the vendor's error `code`/`type`.
pub fn classify(status: u16, body: &[u8]) -> UpstreamFailure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let field = |name: &str| {
        error
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let (code, kind, message) = (field("code"), field("type"), field("message"));
    let has = |needle: &str| code.contains(needle) || kind.contains(needle);
    let class = match status {
        429 if has("insufficient_quota") => FailureClass::Billing,
        429 => FailureClass::RateLimited,
        401 | 403 => FailureClass::Auth,
        402 => FailureClass::Billing,
        400 | 404 | 413 | 422 if has("context_length") => FailureClass::ContextOverflow,
        400 | 404 | 413 | 422 if has("content_policy") || has("content_filter") => {
            FailureClass::ContentPolicy
        }
        400..=499 => FailureClass::InvalidRequest,
        503 | 529 => FailureClass::Overloaded,
        _ => FailureClass::Upstream5xx,
    };
    UpstreamFailure {
        class,
        status: Some(status),
        detail: format!("HTTP {status} {code} {kind}"),
        vendor_message: (!message.is_empty()).then_some(message),
        retry_after: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_always_ask_for_usage_and_use_the_upstream_model() {
        let mut body = Map::new();
        body.insert("model".into(), "public".into());
        body.insert("stream_options".into(), Value::Null);
        prepare_chat_body(&mut body, "gpt-4o-mini", true);
        assert_eq!(body["model"], "gpt-4o-mini");
        assert_eq!(body["stream_options"]["include_usage"], true);
    }

    #[test]
    fn failures_are_classified_by_status_and_code() {
        let ctx = br#"{"error":{"message":"too long","type":"invalid_request_error","code":"context_length_exceeded"}}"#;
        assert_eq!(classify(400, ctx).class, FailureClass::ContextOverflow);
        assert_eq!(
            classify(400, ctx).vendor_message.as_deref(),
            Some("too long")
        );
        let quota = br#"{"error":{"message":"x","type":"insufficient_quota"}}"#;
        assert_eq!(classify(429, quota).class, FailureClass::Billing);
        assert_eq!(classify(429, b"").class, FailureClass::RateLimited);
        assert_eq!(classify(401, b"").class, FailureClass::Auth);
        assert_eq!(classify(503, b"").class, FailureClass::Overloaded);
        assert_eq!(classify(500, b"oops").class, FailureClass::Upstream5xx);
        assert_eq!(classify(422, b"{}").class, FailureClass::InvalidRequest);
    }
}
