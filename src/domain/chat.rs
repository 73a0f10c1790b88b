//! Validation of an OpenAI chat-completion body. The body is kept as a JSON object so that
//! fields the gateway does not know (tools, response_format, vendor extensions) pass
//! through untouched; the fields the gateway relies on are checked with a precise `param`.

use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorKind};

const ROLES: &[&str] = &[
    "system",
    "developer",
    "user",
    "assistant",
    "tool",
    "function",
];

/// The longest model name accepted: it is stored in usage rows and echoed in errors.
pub const MAX_MODEL_BYTES: usize = 256;

/// A validated chat-completion request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
    /// The client asked for a final usage chunk (`stream_options.include_usage`).
    pub include_usage: bool,
}

impl ChatRequest {
    pub fn parse(bytes: &[u8]) -> Result<Self, ApiError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidJson,
                format!("request body is not valid JSON: {e}"),
            )
        })?;
        let Value::Object(body) = value else {
            return Err(ApiError::new(
                ErrorKind::InvalidRequest,
                "request body must be a JSON object",
            ));
        };
        let model = match body.get("model") {
            Some(Value::String(m)) if m.len() > MAX_MODEL_BYTES => {
                return Err(ApiError::invalid(
                    "model",
                    format!("`model` must be at most {MAX_MODEL_BYTES} bytes"),
                ));
            }
            Some(Value::String(m)) if m.chars().any(char::is_control) => {
                return Err(ApiError::invalid(
                    "model",
                    "`model` must not contain control characters",
                ));
            }
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(Value::String(_)) | None | Some(Value::Null) => {
                return Err(ApiError::invalid(
                    "model",
                    "you must provide a model parameter",
                ));
            }
            Some(_) => return Err(ApiError::invalid("model", "`model` must be a string")),
        };
        validate_messages(body.get("messages"))?;
        let stream = optional_bool(&body, "stream")?.unwrap_or(false);
        let include_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(opts)) => match opts.get("include_usage") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "stream_options.include_usage",
                        "`stream_options.include_usage` must be a boolean",
                    ));
                }
            },
            Some(_) => {
                return Err(ApiError::invalid(
                    "stream_options",
                    "`stream_options` must be an object",
                ));
            }
        };
        for field in ["max_tokens", "max_completion_tokens", "n"] {
            if let Some(v) = body.get(field).filter(|v| !v.is_null())
                && v.as_i64().is_none_or(|n| n < 1)
            {
                return Err(ApiError::invalid(
                    field,
                    format!("`{field}` must be an integer greater than 0"),
                ));
            }
        }
        for field in [
            "temperature",
            "top_p",
            "presence_penalty",
            "frequency_penalty",
        ] {
            if let Some(v) = body.get(field).filter(|v| !v.is_null())
                && !v.is_number()
            {
                return Err(ApiError::invalid(
                    field,
                    format!("`{field}` must be a number"),
                ));
            }
        }
        if let Some(v) = body.get("tools").filter(|v| !v.is_null())
            && !v.is_array()
        {
            return Err(ApiError::invalid("tools", "`tools` must be an array"));
        }
        Ok(Self {
            body,
            model,
            stream,
            include_usage,
        })
    }

    /// The text of the last user message (text parts joined), for the mock vendor.
    pub fn last_user_text(&self) -> String {
        let Some(Value::Array(messages)) = self.body.get("messages") else {
            return String::new();
        };
        messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
            .map(|m| content_text(m.get("content")))
            .unwrap_or_default()
    }

    /// Every message's text, for deterministic token estimates by the mock vendor.
    pub fn all_text(&self) -> String {
        let Some(Value::Array(messages)) = self.body.get("messages") else {
            return String::new();
        };
        messages
            .iter()
            .map(|m| content_text(m.get("content")))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A client-supplied string as it may appear in an error message: at most 64 characters.
fn shown(s: &str) -> String {
    match s.char_indices().nth(64) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<Option<bool>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::invalid(
            field,
            format!("`{field}` must be a boolean"),
        )),
    }
}

fn validate_messages(messages: Option<&Value>) -> Result<(), ApiError> {
    let messages = match messages {
        None | Some(Value::Null) => {
            return Err(ApiError::invalid("messages", "`messages` is required"));
        }
        Some(Value::Array(m)) => m,
        Some(_) => return Err(ApiError::invalid("messages", "`messages` must be an array")),
    };
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must contain at least one message",
        ));
    }
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(ApiError::invalid(
                format!("messages[{i}]"),
                "each message must be an object",
            ));
        };
        match message.get("role") {
            Some(Value::String(role)) if ROLES.contains(&role.as_str()) => {}
            Some(Value::String(role)) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "unknown role `{}`; expected one of {}",
                        shown(role),
                        ROLES.join(", ")
                    ),
                ));
            }
            _ => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    "each message needs a string `role`",
                ));
            }
        }
        match message.get("content") {
            None | Some(Value::Null | Value::String(_) | Value::Array(_)) => {}
            Some(_) => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].content"),
                    "`content` must be a string or an array of content parts",
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param_of(body: &str) -> Option<String> {
        ChatRequest::parse(body.as_bytes())
            .err()
            .and_then(|e| e.param)
    }

    #[test]
    fn a_valid_body_keeps_unknown_fields() -> Result<(), ApiError> {
        let req = ChatRequest::parse(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,
                "stream_options":{"include_usage":true},"tools":[],"x_vendor":1}"#,
        )?;
        assert!(req.stream && req.include_usage);
        assert_eq!(req.body.get("x_vendor"), Some(&Value::from(1)));
        assert_eq!(req.last_user_text(), "hi");
        Ok(())
    }

    #[test]
    fn invalid_bodies_name_the_offending_param() {
        assert_eq!(param_of(r#"{"messages":[]}"#).as_deref(), Some("model"));
        assert_eq!(param_of(r#"{"model":"m"}"#).as_deref(), Some("messages"));
        assert_eq!(
            param_of(r#"{"model":"m","messages":"hi"}"#).as_deref(),
            Some("messages")
        );
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"wizard"}]}"#).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"user"}],"stream":"yes"}"#).as_deref(),
            Some("stream")
        );
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"user"}],"max_tokens":-1}"#).as_deref(),
            Some("max_tokens")
        );
        let not_json = ChatRequest::parse(b"{nope").err().map(|e| e.kind);
        assert_eq!(not_json, Some(ErrorKind::InvalidJson));
    }

    #[test]
    fn a_huge_model_name_is_refused_without_being_echoed() {
        let body = format!(
            r#"{{"model":"{}","messages":[{{"role":"user"}}]}}"#,
            "m".repeat(1_000_000)
        );
        let err = ChatRequest::parse(body.as_bytes()).err().unwrap();
        assert_eq!(err.param.as_deref(), Some("model"));
        assert!(err.message.len() < 100);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,20}".prop_map(Value::from),
                prop_oneof![Just("model"), Just("messages"), Just("role"), Just("user")]
                    .prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 64, 8, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::btree_map(
                        prop_oneof![
                            Just("model".to_string()),
                            Just("messages".to_string()),
                            Just("role".to_string()),
                            Just("content".to_string()),
                            Just("stream".to_string()),
                            Just("stream_options".to_string()),
                            Just("max_tokens".to_string()),
                            Just("tools".to_string()),
                            "[a-z_]{1,8}",
                        ],
                        inner,
                        0..6
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #[test]
            fn arbitrary_bytes_are_answered_not_panicked_on(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                if let Err(e) = ChatRequest::parse(&bytes) {
                    prop_assert!(matches!(e.kind, ErrorKind::InvalidJson | ErrorKind::InvalidRequest));
                }
            }

            #[test]
            fn arbitrary_json_is_validated_with_short_messages(value in json_value()) {
                match ChatRequest::parse(value.to_string().as_bytes()) {
                    Ok(req) => {
                        prop_assert!(!req.model.is_empty() && req.model.len() <= MAX_MODEL_BYTES);
                        prop_assert!(req.body.get("messages").and_then(Value::as_array).is_some_and(|m| !m.is_empty()));
                    }
                    Err(e) => {
                        prop_assert_eq!(e.kind, ErrorKind::InvalidRequest);
                        prop_assert!(e.message.len() < 400, "{}", e.message);
                    }
                }
            }

            #[test]
            fn valid_requests_parse_and_keep_what_they_say(
                model in "[A-Za-z0-9._:/-]{1,256}",
                turns in proptest::collection::vec(
                    (prop_oneof![Just("system"), Just("user"), Just("assistant"), Just("tool")], ".{0,40}"),
                    1..8),
                stream in any::<bool>(),
                include_usage in any::<bool>(),
            ) {
                let messages: Vec<Value> = turns
                    .iter()
                    .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
                    .collect();
                let body = serde_json::json!({"model": model, "messages": messages, "stream": stream,
                    "stream_options": {"include_usage": include_usage}});
                let req = ChatRequest::parse(body.to_string().as_bytes()).unwrap();
                prop_assert_eq!(&req.model, &model);
                prop_assert_eq!(req.stream, stream);
                prop_assert_eq!(req.include_usage, include_usage);
            }
        }
    }
}
