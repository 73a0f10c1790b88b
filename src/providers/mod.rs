//! Vendor adapters: pure translation between the canonical chat model
//! (`domain::canonical`) and each vendor's wire format, plus the classification of
//! upstream failures. No actors, no I/O here: an adapter builds an `UpstreamRequest`,
//! decodes a blocking answer, decodes one SSE event at a time (`StreamDecoder`) and
//! classifies a failure; the relay does the sending.

pub mod anthropic;
pub mod comfyui;
pub mod mock;
pub mod openai;

use crate::domain::canonical::{ChatRequest, ChatResponse, Dialect, StreamDecoder};

/// The vendors this build can route to (read case-insensitively; shown as spelled here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
pub enum VendorType {
    /// OpenAI itself or any OpenAI-compatible server (`base_url` + `/chat/completions`).
    OpenAI,
    /// Anthropic's Messages API (`base_url` + `/v1/messages`).
    Anthropic,
    /// ComfyUI: the deployment's `workflow` filled from an image request, submitted to
    /// `base_url` + `/prompt`, its outputs fetched from `/view`.
    ComfyUI,
    /// Deterministic, in-process: echoes the last user message; no network.
    Mock,
}

impl VendorType {
    pub const SUPPORTED: &'static str =
        "OpenAI (also any OpenAI-compatible server), Anthropic, ComfyUI, Mock";

    /// Case-insensitive; `openai_compatible` is accepted as a synonym of `OpenAI`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().replace('-', "_").as_str() {
            "openai" | "openai_compatible" => Some(Self::OpenAI),
            "anthropic" => Some(Self::Anthropic),
            "comfyui" => Some(Self::ComfyUI),
            "mock" => Some(Self::Mock),
            _ => None,
        }
    }

    /// The canonical spelling stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OpenAI => "OpenAI",
            Self::Anthropic => "Anthropic",
            Self::ComfyUI => "ComfyUI",
            Self::Mock => "Mock",
        }
    }

    /// The `gen_ai.provider.name` of this vendor.
    pub fn provider_name(self) -> &'static str {
        match self {
            Self::OpenAI => "openai",
            Self::Anthropic => "anthropic",
            Self::ComfyUI => "comfyui",
            Self::Mock => "mock",
        }
    }
}

/// Stored and shown in its canonical spelling; read with `VendorType::parse`.
impl serde::Serialize for VendorType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for VendorType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown vendor_type `{s}`; supported: {}",
                Self::SUPPORTED
            ))
        })
    }
}

/// A deployment's vendor with its typed settings: what the relay dispatches on. The
/// relay knows no vendor; it asks this enum to build, decode and classify.
#[derive(Debug, Clone, PartialEq)]
pub enum Vendor {
    OpenAI,
    /// Anthropic's Messages API (`{base_url}/v1/messages`).
    Anthropic(anthropic::AnthropicSettings),
    /// ComfyUI with its workflow template: serves image requests only.
    ComfyUI(std::sync::Arc<comfyui::ComfyUiSettings>),
    /// In-process: answers in the OpenAI wire format without a network.
    Mock,
}

impl Vendor {
    pub fn kind(&self) -> VendorType {
        match self {
            Self::OpenAI => VendorType::OpenAI,
            Self::Anthropic(_) => VendorType::Anthropic,
            Self::ComfyUI(_) => VendorType::ComfyUI,
            Self::Mock => VendorType::Mock,
        }
    }

    /// The wire format the vendor speaks: a client of the same dialect gets its answer
    /// as the vendor sent it.
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::OpenAI | Self::Mock | Self::ComfyUI(_) => Dialect::OpenAI,
            Self::Anthropic(_) => Dialect::Anthropic,
        }
    }

    /// The chat endpoint under `base_url`, for vendors that chat.
    pub fn chat_url(&self, base_url: &str) -> Option<String> {
        match self {
            Self::OpenAI | Self::Mock => Some(openai::chat_url(base_url)),
            Self::Anthropic(_) => Some(anthropic::messages_url(base_url)),
            Self::ComfyUI(_) => None,
        }
    }

    /// Whether the vendor answers chat (every vendor but ComfyUI).
    pub fn serves_chat(&self) -> bool {
        !matches!(self, Self::ComfyUI(_))
    }

    /// Whether the vendor generates images (over HTTP or in-process).
    pub fn serves_images(&self) -> bool {
        matches!(self, Self::OpenAI | Self::Mock | Self::ComfyUI(_))
    }

    /// The OpenAI images endpoint under `base_url` (OpenAI-compatible vendors).
    pub fn images_url(&self, base_url: &str) -> Option<String> {
        match self {
            Self::OpenAI => Some(openai::images_url(base_url)),
            Self::Anthropic(_) | Self::ComfyUI(_) | Self::Mock => None,
        }
    }

    /// Images made in-process (`None`: call the vendor).
    pub fn local_images(
        &self,
        req: &crate::domain::images::ImageRequest,
    ) -> Option<Vec<crate::domain::images::VendorImage>> {
        match self {
            Self::Mock => Some(mock::images(req)),
            Self::OpenAI | Self::Anthropic(_) | Self::ComfyUI(_) => None,
        }
    }

    /// The embeddings endpoint under `base_url`, for vendors that have one.
    pub fn embeddings_url(&self, base_url: &str) -> Option<String> {
        match self {
            Self::OpenAI => Some(openai::embeddings_url(base_url)),
            Self::Anthropic(_) | Self::ComfyUI(_) | Self::Mock => None,
        }
    }

    /// A chat answer made in-process, for a vendor reached without a network (its wire
    /// format is still decoded by `decode_answer` / `stream_decoder`); `None`: call it.
    pub fn local_chat(&self, req: &ChatRequest, created: i64) -> Option<LocalAnswer> {
        let id = || format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
        match self {
            Self::Mock if req.stream => Some(LocalAnswer::Frames(mock::stream_frames(
                req,
                &id(),
                created,
            ))),
            Self::Mock => Some(LocalAnswer::Complete(
                mock::complete(req, &id(), created).to_string().into_bytes(),
            )),
            Self::OpenAI | Self::Anthropic(_) | Self::ComfyUI(_) => None,
        }
    }

    /// An embeddings answer made in-process for the client's OpenAI `body` (`None`:
    /// call the vendor).
    pub fn local_embeddings(
        &self,
        body: &serde_json::Map<String, serde_json::Value>,
        model: &str,
    ) -> Option<Vec<u8>> {
        match self {
            Self::Mock => Some(mock::embeddings(body, model).to_string().into_bytes()),
            Self::OpenAI | Self::Anthropic(_) | Self::ComfyUI(_) => None,
        }
    }

    /// The upstream call for an embeddings request (the client's OpenAI body).
    pub fn embeddings_request(
        &self,
        url: &reqwest::Url,
        target: Target<'_>,
        body: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<UpstreamRequest, UpstreamFailure> {
        match self {
            Self::OpenAI | Self::Mock => openai::embeddings_request(url, target, body),
            Self::Anthropic(_) | Self::ComfyUI(_) => Err(UpstreamFailure::new(
                FailureClass::InvalidRequest,
                format!("{} has no embeddings", self.kind().as_str()),
            )),
        }
    }

    /// An embeddings answer's usage (the answer itself goes to the client as it came).
    /// Every vendor with embeddings answers in OpenAI's shape.
    pub fn decode_embeddings(
        &self,
        bytes: &[u8],
    ) -> Result<Option<crate::domain::usage::TokenUsage>, UpstreamFailure> {
        openai::decode_embeddings(bytes)
    }

    /// Whether the vendor answers embeddings (over HTTP or in-process).
    pub fn serves_embeddings(&self) -> bool {
        matches!(self, Self::OpenAI | Self::Mock)
    }

    pub fn chat_request(
        &self,
        url: &reqwest::Url,
        target: Target<'_>,
        req: &ChatRequest,
    ) -> Result<UpstreamRequest, UpstreamFailure> {
        match self {
            Self::OpenAI | Self::Mock => openai::chat_request(url, target, req),
            Self::Anthropic(settings) => anthropic::chat_request(url, target, settings, req),
            Self::ComfyUI(_) => Err(UpstreamFailure::new(
                FailureClass::InvalidRequest,
                "ComfyUI does not chat",
            )),
        }
    }

    pub fn decode_answer(&self, bytes: &[u8]) -> Result<ChatResponse, UpstreamFailure> {
        match self {
            Self::OpenAI | Self::Mock | Self::ComfyUI(_) => openai::decode_answer(bytes),
            Self::Anthropic(_) => anthropic::decode_answer(bytes),
        }
    }

    pub fn stream_decoder(&self) -> Box<dyn StreamDecoder> {
        match self {
            Self::OpenAI | Self::Mock | Self::ComfyUI(_) => Box::<openai::OpenAiDecoder>::default(),
            Self::Anthropic(_) => Box::<anthropic::AnthropicDecoder>::default(),
        }
    }

    /// Classifies a non-2xx answer.
    pub fn classify(&self, status: u16, body: &[u8]) -> UpstreamFailure {
        match self {
            Self::OpenAI | Self::Mock => openai::classify(status, body),
            Self::Anthropic(_) => anthropic::classify(status, body),
            Self::ComfyUI(_) => comfyui::classify(status, body),
        }
    }

    /// The vendor of type `kind` with its `settings` object (the deployment's
    /// `settings`), typed per vendor; the error is a serde message naming the field. A
    /// vendor with settings reads them here; nothing else stores or validates them.
    pub fn from_settings(
        kind: VendorType,
        raw: &serde_json::Map<String, serde_json::Value>,
        workflow: Option<&serde_json::Value>,
    ) -> Result<Self, serde_json::Error> {
        fn typed<T: serde::de::DeserializeOwned>(
            raw: &serde_json::Map<String, serde_json::Value>,
        ) -> Result<T, serde_json::Error> {
            serde_json::from_value(serde_json::Value::Object(raw.clone()))
        }
        /// Refuses every field.
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NoSettings {}
        match kind {
            VendorType::OpenAI => typed::<NoSettings>(raw).map(|_| Self::OpenAI),
            VendorType::Mock => typed::<NoSettings>(raw).map(|_| Self::Mock),
            VendorType::Anthropic => typed(raw).map(Self::Anthropic),
            VendorType::ComfyUI => typed::<comfyui::ComfyUiOptions>(raw).map(|options| {
                Self::ComfyUI(std::sync::Arc::new(comfyui::ComfyUiSettings {
                    options,
                    workflow: workflow.cloned().unwrap_or(serde_json::Value::Null),
                }))
            }),
        }
    }
}

/// An answer a vendor made in-process, in its wire format.
pub enum LocalAnswer {
    Complete(Vec<u8>),
    /// SSE frames, made one at a time as they are read.
    Frames(mock::MockStream),
}

/// The closed vocabulary of upstream failures; it drives breakers, retries, metrics and
/// the client's error `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    RateLimited,
    Overloaded,
    Auth,
    Billing,
    ContextOverflow,
    ContentPolicy,
    InvalidRequest,
    Timeout,
    Connect,
    Upstream5xx,
    MalformedResponse,
    /// The deployment's transform script failed on this attempt (final: never retried
    /// elsewhere, not the deployment's fault).
    Script,
}

impl FailureClass {
    pub const ALL: [FailureClass; 12] = [
        FailureClass::RateLimited,
        FailureClass::Overloaded,
        FailureClass::Auth,
        FailureClass::Billing,
        FailureClass::ContextOverflow,
        FailureClass::ContentPolicy,
        FailureClass::InvalidRequest,
        FailureClass::Timeout,
        FailureClass::Connect,
        FailureClass::Upstream5xx,
        FailureClass::MalformedResponse,
        FailureClass::Script,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::Auth => "auth",
            Self::Billing => "billing",
            Self::ContextOverflow => "context_overflow",
            Self::ContentPolicy => "content_policy",
            Self::InvalidRequest => "invalid_request",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Upstream5xx => "upstream_5xx",
            Self::MalformedResponse => "malformed_response",
            Self::Script => "script_error",
        }
    }

    /// The request itself is at fault (the route is healthy): the vendor's message is
    /// passed to the client with a 4xx.
    pub fn is_client_fault(self) -> bool {
        matches!(
            self,
            Self::ContextOverflow | Self::ContentPolicy | Self::InvalidRequest
        )
    }

    /// The attempt's failure ends the request (no other deployment is tried) and says
    /// nothing about the deployment's health.
    pub fn is_final(self) -> bool {
        self.is_client_fault() || self == Self::Script
    }

    /// What a client is told for a gateway-side failure; details stay in the logs.
    pub fn client_message(self) -> &'static str {
        match self {
            Self::RateLimited => "the upstream provider is rate limiting requests",
            Self::Overloaded => "the upstream provider is overloaded",
            Self::Auth => "the upstream provider rejected the gateway's credentials",
            Self::Billing => "the upstream provider refused the request for billing reasons",
            Self::ContextOverflow => "the request exceeds the model's context window",
            Self::ContentPolicy => "the upstream provider refused the content",
            Self::InvalidRequest => "the upstream provider rejected the request",
            Self::Timeout => "the upstream provider did not answer in time",
            Self::Connect => "could not connect to the upstream provider",
            Self::Upstream5xx => "the upstream provider failed",
            Self::MalformedResponse => "the upstream provider sent a malformed response",
            Self::Script => "a transform script failed",
        }
    }
}

/// The `error.code`, `error.type` and `error.message` of a vendor's error body or error
/// event (empty when absent): OpenAI and Anthropic both nest them in `error`.
pub(crate) struct VendorError {
    pub code: String,
    pub kind: String,
    pub message: String,
}

impl VendorError {
    pub(crate) fn of(body: Option<&serde_json::Value>) -> Self {
        let error = body.and_then(|v| v.get("error"));
        let field = |name: &str| {
            error
                .and_then(|e| e.get(name))
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        Self {
            code: field("code"),
            kind: field("type"),
            message: field("message"),
        }
    }

    /// The vendor's message, if it gave one.
    pub(crate) fn vendor_message(self) -> Option<String> {
        (!self.message.is_empty()).then_some(self.message)
    }
}

/// A classified upstream failure. `vendor_message` is the vendor's own text, shown to the
/// client only for client-fault classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamFailure {
    pub class: FailureClass,
    pub status: Option<u16>,
    pub detail: String,
    pub vendor_message: Option<String>,
    /// The upstream's `Retry-After`, honoured before trying the same deployment again.
    pub retry_after: Option<std::time::Duration>,
}

impl UpstreamFailure {
    pub fn new(class: FailureClass, detail: impl Into<String>) -> Self {
        Self {
            class,
            status: None,
            detail: detail.into(),
            vendor_message: None,
            retry_after: None,
        }
    }
}

/// An HTTP request an adapter built; the relay sends it.
#[derive(Debug)]
pub struct UpstreamRequest {
    pub url: reqwest::Url,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

/// Whom one deployment calls, and as whom.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The model name the vendor knows.
    pub upstream_model: &'a str,
    /// The deployment's upstream key, if it has one.
    pub api_key: Option<&'a str>,
}
