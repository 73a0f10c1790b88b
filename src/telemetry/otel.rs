//! OpenTelemetry glue for the request path: W3C `traceparent` into upstream requests, and
//! the GenAI semantic-convention client span of an upstream call.

use opentelemetry::propagation::Injector;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Adds `traceparent` (and `tracestate`) of `span` to `headers`; a no-op when tracing
/// export is off (the propagator is then the no-op one).
pub fn inject_trace_context(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut HeaderInjector(headers));
    });
}

/// The INTERNAL span of one run of an async job (its upstream calls are its children).
pub fn job_span(job_id: &str, kind: &str, model: &str, attempt: i32) -> tracing::Span {
    tracing::info_span!(
        "job",
        otel.name = %format_args!("job {kind} {model}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        gen_ai.request.model = model,
        error.type = Empty,
        lowart.job.id = job_id,
        lowart.job.kind = kind,
        lowart.job.attempt = attempt,
        lowart.job.status = Empty,
    )
}

/// The CLIENT span of one upstream chat call, with the GenAI attributes known up front;
/// usage, response model, finish reasons and `error.type` are recorded when known.
pub fn chat_span(
    provider: &str,
    request_model: &str,
    deployment_id: &str,
    stream: bool,
) -> tracing::Span {
    tracing::info_span!(
        "chat",
        otel.name = %format_args!("chat {request_model}"),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = request_model,
        gen_ai.response.model = Empty,
        gen_ai.response.finish_reasons = Empty,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        error.type = Empty,
        lowart.deployment.id = deployment_id,
        lowart.stream = stream,
    )
}

/// The INTERNAL span of one MCP tool call (GenAI `execute_tool`).
pub fn tool_span(server: &str, tool: &str, call_id: &str) -> tracing::Span {
    tracing::info_span!(
        "execute_tool",
        otel.name = %format_args!("execute_tool {server}__{tool}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = tool,
        gen_ai.tool.call.id = call_id,
        error.type = Empty,
        lowart.mcp.server = server,
    )
}
