//! OTLP export on the real binary: a tiny OTLP/HTTP receiver decodes the spans; the GenAI
//! client span carries the attributes and token counts, and the upstream received a
//! `traceparent` of the same trace. An unreachable collector changes nothing for clients.

use std::sync::{Arc, Mutex};

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpResponse, HttpServer};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

use crate::helpers::{Gateway, MASTER_KEY, spawn_binary, terminate, user_message};
use crate::mock_upstream::MockUpstream;

type Spans = Arc<Mutex<Vec<Span>>>;

async fn otlp_receiver() -> (String, Spans) {
    let spans: Spans = Arc::default();
    let data = web::Data::new(spans.clone());
    let server = HttpServer::new(move || {
        App::new().app_data(data.clone()).route(
            "/v1/traces",
            web::post().to(|spans: web::Data<Spans>, body: Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
                let mut all = spans.lock().unwrap();
                for resource in request.resource_spans {
                    for scope in resource.scope_spans {
                        all.extend(scope.spans);
                    }
                }
                HttpResponse::Ok()
                    .content_type("application/x-protobuf")
                    .body(Vec::<u8>::new())
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .unwrap();
    let addr = server.addrs()[0];
    actix_web::rt::spawn(server.run());
    (format!("http://{addr}"), spans)
}

fn attr(span: &Span, key: &str) -> Option<AnyValue> {
    span.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.clone())
        .and_then(|v| v.value)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn register_and_chat(
    address: &str,
    admin_key: &str,
    upstream: &MockUpstream,
    traceparent: Option<&str>,
) -> Vec<reqwest::StatusCode> {
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{address}/admin/models"))
        .bearer_auth(admin_key)
        .json(&json!({"model_id": "gpt-test", "vendor_type": "OpenAI", "base_url": format!("{}/v1", upstream.address),
            "upstream_model": "gpt-test-upstream"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let mut statuses = Vec::new();
    for stream in [false, true] {
        let mut req = client
            .post(format!("{address}/v1/chat/completions"))
            .bearer_auth(admin_key)
            .json(&json!({"model": "gpt-test", "stream": stream, "messages": user_message("hi")}));
        if let Some(tp) = traceparent.filter(|_| !stream) {
            req = req.header("traceparent", tp);
        }
        let res = req.send().await.unwrap();
        statuses.push(res.status());
        res.text().await.unwrap();
    }
    statuses
}

/// The binary exporting spans to `collector`, a mock upstream, and the admin key. The
/// temporary directory must outlive the gateway.
async fn gateway_exporting_to(
    collector: &str,
) -> (Gateway, MockUpstream, String, tempfile::TempDir) {
    let upstream = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let env = [
        ("LOWART_MASTER_KEY", MASTER_KEY),
        ("LOWART_ADMIN_KEY", admin_key.as_str()),
        ("LOWART_TELEMETRY__OTLP_ENDPOINT", collector),
    ];
    let gateway = spawn_binary(&dir, &env).await;
    (gateway, upstream, admin_key, dir)
}

#[actix_web::test]
async fn genai_spans_reach_the_collector_and_the_upstream_sees_the_same_trace() {
    let (collector, spans) = otlp_receiver().await;
    let (
        Gateway {
            mut child, address, ..
        },
        upstream,
        admin_key,
        _dir,
    ) = gateway_exporting_to(&collector).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");

    let statuses = register_and_chat(&address, &admin_key, &upstream, Some(&traceparent)).await;
    assert!(statuses.iter().all(|s| s.is_success()), "{statuses:?}");
    assert!(
        terminate(&mut child).await.success(),
        "spans are flushed on shutdown"
    );

    let spans = spans.lock().unwrap().clone();
    let chats: Vec<&Span> = spans
        .iter()
        .filter(|s| attr(s, "gen_ai.operation.name") == Some(AnyValue::StringValue("chat".into())))
        .collect();
    assert_eq!(chats.len(), 2, "one client span per upstream call");
    for chat in &chats {
        assert_eq!(chat.kind, 3, "SpanKind::Client");
        assert_eq!(chat.name, "chat gpt-test-upstream");
        assert_eq!(
            attr(chat, "gen_ai.provider.name"),
            Some(AnyValue::StringValue("openai".into()))
        );
        assert_eq!(
            attr(chat, "gen_ai.request.model"),
            Some(AnyValue::StringValue("gpt-test-upstream".into()))
        );
        assert_eq!(
            attr(chat, "gen_ai.response.model"),
            Some(AnyValue::StringValue("upstream".into()))
        );
        assert_eq!(
            attr(chat, "gen_ai.response.finish_reasons"),
            Some(AnyValue::StringValue("stop".into()))
        );
        assert_eq!(
            attr(chat, "gen_ai.usage.input_tokens"),
            Some(AnyValue::IntValue(11))
        );
        assert_eq!(
            attr(chat, "gen_ai.usage.output_tokens"),
            Some(AnyValue::IntValue(5))
        );
        let names: Vec<&str> = chat.attributes.iter().map(|a| a.key.as_str()).collect();
        assert!(
            !names
                .iter()
                .any(|n| n.contains("prompt") || n.contains("content") || n.contains("key")),
            "{names:?}"
        );
    }
    let blocking = chats
        .iter()
        .find(|s| hex(&s.trace_id) == trace_id)
        .expect("inbound traceparent honoured");
    let server = spans
        .iter()
        .find(|s| s.kind == 2 && hex(&s.trace_id) == trace_id)
        .expect("server span");
    assert!(!blocking.parent_span_id.is_empty());
    assert_ne!(server.span_id, blocking.span_id);

    let received = upstream.received();
    let sent: Vec<String> = received
        .iter()
        .filter_map(|r| r.traceparent.clone())
        .collect();
    assert_eq!(sent.len(), 2, "every upstream request carries traceparent");
    assert_eq!(
        sent[0],
        format!("00-{trace_id}-{}-01", hex(&blocking.span_id))
    );
    let streamed = chats.iter().find(|s| hex(&s.trace_id) != trace_id).unwrap();
    assert!(sent[1].contains(&hex(&streamed.trace_id)));
    let stream_span = spans
        .iter()
        .find(|s| s.name == "stream")
        .expect("stream completion span");
    assert_eq!(stream_span.parent_span_id, streamed.span_id);
    assert!(
        !format!("{spans:?}").contains(&admin_key),
        "no key in any span"
    );
}

#[actix_web::test]
async fn an_unreachable_collector_does_not_fail_requests() {
    let dead = crate::helpers::closed_port_url();
    let (
        Gateway {
            mut child, address, ..
        },
        upstream,
        admin_key,
        _dir,
    ) = gateway_exporting_to(&dead).await;

    let statuses = register_and_chat(&address, &admin_key, &upstream, None).await;
    assert_eq!(
        statuses,
        vec![reqwest::StatusCode::OK, reqwest::StatusCode::OK]
    );
    assert!(terminate(&mut child).await.success());
}

#[actix_web::test]
async fn an_async_job_is_a_span_with_its_upstream_call_inside() {
    let (collector, spans) = otlp_receiver().await;
    let (mut gateway, _upstream, admin_key, _dir) = gateway_exporting_to(&collector).await;
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}/v1/images/generations", gateway.address))
        .bearer_auth(&admin_key)
        .json(&json!({"model": "mock", "prompt": "x", "async": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let id = res.json::<serde_json::Value>().await.unwrap()["job_id"]
        .as_str()
        .unwrap()
        .to_string();
    let events = client
        .get(format!("{}/v1/jobs/{id}/events", gateway.address))
        .bearer_auth(&admin_key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(events.contains("event: done"), "{events}");
    assert!(terminate(&mut gateway.child).await.success());
    let spans = spans.lock().unwrap().clone();
    let job = spans
        .iter()
        .find(|s| attr(s, "lowart.job.id") == Some(AnyValue::StringValue(id.clone())))
        .expect("a span for the job");
    assert_eq!(job.name, "job image mock");
    assert_eq!(
        attr(job, "lowart.job.status"),
        Some(AnyValue::StringValue("succeeded".into()))
    );
    assert!(
        spans
            .iter()
            .any(|s| s.parent_span_id == job.span_id && s.trace_id == job.trace_id),
        "the upstream call is inside the job's span"
    );
}
