//! The agent bus at the edge: `GET /v1/bus/ws` (a WebSocket: the key in `Authorization`
//! or, for browsers, in `Sec-WebSocket-Protocol` as `lowart.bearer, <key>`, or `?token=`), `POST /v1/bus/topics/{topic}/messages` (publish over
//! REST) and `GET /v1/bus/topics`. Each connection is a task on this worker: it reads
//! frames, asks the `BusActor`, answers every frame with `ok` or `error`, writes what the
//! broker queued for it (a bounded queue), pings, and drops a peer that went silent.

use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::Message;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use utoipa::ToSchema;

use crate::actors::ASK_TIMEOUT;
use crate::actors::bus::{
    Ack, ConnId, Connect, Disconnect, ListTopics, Publish, Subscribe, Unsubscribe,
};
use crate::domain::bus::{
    BusCaller, ClientFrame, ClientOp, FrameError, check_name, error_frame, ok_frame,
};
use crate::domain::records::{KeyGrant, Role};
use crate::error::{ApiError, ErrorKind};
use crate::http::AppState;
use crate::http::auth_throttle::AuthThrottle;
use crate::http::extract::{Caller, authenticate, presented_key};
use crate::http::openapi::responses::ClientAuth;

fn bus_caller(grant: &KeyGrant) -> BusCaller {
    BusCaller {
        user_id: grant.user_id.clone(),
        role: grant.role,
        topics: grant.topics.as_ref().map(|t| t.to_vec()),
    }
}

/// The WebSocket subprotocol a browser offers, followed by its key as a second "protocol"
/// (browsers cannot set `Authorization` on a WebSocket); the answer selects it.
pub const BEARER_PROTOCOL: &str = "lowart.bearer";

/// The key offered as `Sec-WebSocket-Protocol: lowart.bearer, <key>`: the value right
/// after `lowart.bearer` among the offered protocols (one header or several).
fn protocol_key(req: &HttpRequest) -> Option<String> {
    let offered: Vec<&str> = req
        .headers()
        .get_all(actix_web::http::header::SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let at = offered.iter().position(|p| *p == BEARER_PROTOCOL)?;
    offered.get(at + 1).map(|k| (*k).to_string())
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The agent bus's WebSocket. Frames are JSON objects tagged by `op` (SPEC §8):
/// `subscribe {topic, group?}`, `unsubscribe {topic}`, `publish {topic, payload,
/// reply_to?}`, `ack {id}`, each answered by `ok` (with its `ref`) or `error {code,
/// message}`; the server sends `message {id, topic, payload, from, attempt}`.
///
/// The key goes in `Authorization` (or `x-api-key`); a browser, which cannot set headers on
/// a WebSocket, offers the subprotocols `lowart.bearer` and its key
/// (`new WebSocket(url, ["lowart.bearer", key])`) and the answer selects `lowart.bearer`.
/// `?token=` also works but puts the key in a URL (and so in logs along the way).
#[utoipa::path(get, path = "/v1/bus/ws", tag = "Agent bus",
    params(("token" = Option<String>, Query, description = "The API key, for clients that can set neither `Authorization` nor `Sec-WebSocket-Protocol` (prefer those: a URL ends up in logs)"),
        ("Sec-WebSocket-Protocol" = Option<String>, Header, description = "`lowart.bearer, <key>`: the key, for browsers; the answer selects `lowart.bearer`")),
    responses((status = 101, description = "Switching to the WebSocket protocol (with `Sec-WebSocket-Protocol: lowart.bearer` when the key came that way)"),
        (status = 400, description = "Not a WebSocket upgrade request"), ClientAuth))]
pub async fn bus_ws(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let key = presented_key(&req)
        .or_else(|| protocol_key(&req))
        .or_else(|| {
            web::Query::<TokenQuery>::from_query(req.query_string())
                .ok()
                .and_then(|q| q.into_inner().token)
                .filter(|t| !t.is_empty())
        });
    let client = AuthThrottle::client_of(req.peer_addr());
    let grant = authenticate(state.clone(), key, client).await?;
    crate::http::extract::note_caller(&req, &state, &grant);
    // Selects `lowart.bearer` when offered (never echoes the key).
    let (response, session, stream) =
        actix_ws::handle_with_protocols(&req, body, &[BEARER_PROTOCOL]).map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("not a WebSocket upgrade: {e}"),
            )
        })?;
    let settings = state.settings.bus;
    let (tx, rx) = mpsc::channel(settings.outbound_queue);
    let (kill, killed) = oneshot::channel();
    let caller = bus_caller(&grant);
    let conn = state
        .bus
        .send(Connect {
            caller: caller.clone(),
            tx,
            kill,
        })
        .timeout(ASK_TIMEOUT)
        .await?;
    // A frame may carry a payload up to the limit, plus the frame's own fields; a larger
    // one is a protocol error that ends the connection.
    let stream = stream.max_frame_size(settings.max_payload_bytes * 2 + 64 * 1024);
    actix_web::rt::spawn(serve(
        state.into_inner(),
        conn,
        caller,
        session,
        stream,
        rx,
        killed,
    ));
    Ok(response)
}

async fn serve(
    state: std::sync::Arc<AppState>,
    conn: ConnId,
    caller: BusCaller,
    mut session: actix_ws::Session,
    mut stream: actix_ws::MessageStream,
    mut outbound: mpsc::Receiver<String>,
    mut killed: oneshot::Receiver<FrameError>,
) {
    let ping_every = Duration::from_millis(state.settings.bus.ping_ms);
    let mut ping = tokio::time::interval(ping_every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    let mut draining = state.draining.clone();
    let reason = loop {
        tokio::select! {
            // (A gateway that handles no signals never drains: the branch ends disabled.)
            Ok(_) = draining.wait_for(|d| *d) => {
                let _ = session
                    .close(Some(actix_ws::CloseReason {
                        code: actix_ws::CloseCode::Away,
                        description: Some("the gateway is stopping".into()),
                    }))
                    .await;
                state.bus.do_send(Disconnect { conn });
                return;
            }
            frame = stream.next() => {
                last_heard = Instant::now();
                let answer = match frame {
                    None => break None,
                    Some(Ok(Message::Text(text))) => Some(answer(&state, conn, &caller, &text).await),
                    Some(Ok(Message::Binary(_))) => Some(error_frame(None, &FrameError::new(
                        "bad_frame", "frames are JSON text"))),
                    Some(Ok(Message::Ping(bytes))) => {
                        if session.pong(&bytes).await.is_err() { break None; }
                        None
                    }
                    Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(_)) => None,
                    Some(Err(e)) => {
                        let error = FrameError::new("bad_frame", format!("WebSocket protocol error: {e}"));
                        let _ = session.text(error_frame(None, &error)).await;
                        break None;
                    }
                };
                if let Some(answer) = answer
                    && session.text(answer).await.is_err()
                {
                    break None;
                }
            }
            out = outbound.recv() => match out {
                Some(frame) => if session.text(frame).await.is_err() { break None; },
                // The broker let go of this connection: say why, if it said.
                None => break killed.try_recv().ok(),
            },
            error = &mut killed => break error.ok(),
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_every * 3 {
                    break None;
                }
                if session.ping(b"").await.is_err() { break None; }
            }
        }
    };
    state.bus.do_send(Disconnect { conn });
    if let Some(error) = reason {
        let _ = session.text(error_frame(None, &error)).await;
    }
    let _ = session.close(None).await;
}

/// The `ok` or `error` frame that answers a client frame.
async fn answer(state: &AppState, conn: ConnId, caller: &BusCaller, text: &str) -> String {
    let frame = match ClientFrame::parse(text) {
        Ok(frame) => frame,
        Err((reference, error)) => return error_frame(reference.as_ref(), &error),
    };
    let reference = frame.reference.as_ref();
    let done: Result<Option<String>, FrameError> = match frame.op {
        ClientOp::Subscribe { topic, group } => ask(state, Subscribe { conn, topic, group })
            .await
            .map(|()| None),
        ClientOp::Unsubscribe { topic } => {
            ask(state, Unsubscribe { conn, topic }).await.map(|()| None)
        }
        ClientOp::Publish {
            topic,
            payload,
            reply_to,
        } => {
            let publish = Publish {
                caller: caller.clone(),
                topic,
                payload,
                reply_to,
            };
            ask(state, publish).await.map(Some)
        }
        ClientOp::Ack { id } => ask(state, Ack { conn, id }).await.map(|()| None),
    };
    match done {
        Ok(id) => ok_frame(reference, id.as_deref()),
        Err(error) => error_frame(reference, &error),
    }
}

/// One frame's question to the broker; a broker that does not answer is `unavailable`.
async fn ask<M, T>(state: &AppState, msg: M) -> Result<T, FrameError>
where
    M: actix::Message<Result = Result<T, FrameError>> + Send + 'static,
    T: Send + 'static,
    crate::actors::bus::BusActor: actix::Handler<M>,
{
    state
        .bus
        .send(msg)
        .timeout(ASK_TIMEOUT)
        .await
        .map_err(|_| FrameError::new("unavailable", "the bus did not answer; try again"))?
}

/// A frame error at the REST edge: `forbidden` 403, `too_large` 413, `bad_frame` 400,
/// else 503.
fn rest_error(error: FrameError) -> ApiError {
    let kind = match error.code {
        "forbidden" => ErrorKind::AdminForbidden,
        "too_large" => ErrorKind::PayloadTooLarge,
        "bad_frame" => ErrorKind::InvalidRequest,
        _ => ErrorKind::ServiceUnavailable,
    };
    let mut api = ApiError::new(kind, error.message);
    if kind == ErrorKind::AdminForbidden {
        // The contract's code for a topic the key may not use.
        api.param = Some("topic".into());
    }
    api
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    /// Any JSON value.
    #[schema(value_type = Object)]
    pub payload: Value,
    pub reply_to: Option<String>,
}

/// Publishes a message on `topic` (answered once delivered to the fan-out subscribers and
/// stored for the topic's work groups).
#[utoipa::path(post, path = "/v1/bus/topics/{topic}/messages", tag = "Agent bus",
    params(("topic" = String, Path, description = "The topic")),
    request_body = PublishBody,
    responses((status = 201, description = "`{id, topic}`", body = Object), ClientAuth,
        (status = 403, description = "The key may not use this topic"),
        (status = 413, description = "The payload is over `bus.max_payload_bytes`")))]
pub async fn publish(
    state: web::Data<AppState>,
    caller: Caller,
    path: web::Path<String>,
    body: web::Json<PublishBody>,
) -> Result<HttpResponse, ApiError> {
    let topic = path.into_inner();
    check_name("topic", &topic).map_err(rest_error)?;
    let body = body.into_inner();
    if let Some(reply_to) = &body.reply_to {
        check_name("reply_to", reply_to).map_err(rest_error)?;
    }
    let id = state
        .bus
        .send(Publish {
            caller: bus_caller(&caller.0),
            topic: topic.clone(),
            payload: body.payload,
            reply_to: body.reply_to,
        })
        .timeout(ASK_TIMEOUT)
        .await?
        .map_err(rest_error)?;
    Ok(HttpResponse::Created().json(json!({"id": id, "topic": topic})))
}

/// Topics with their subscribers on this instance, their work groups and the group
/// messages waiting: every topic for admins, operators and viewers; for others, the
/// topics their own connections subscribe to.
#[utoipa::path(get, path = "/v1/bus/topics", tag = "Agent bus",
    responses((status = 200, description = "`{data: [{topic, subscribers, groups, pending}]}`", body = Object), ClientAuth))]
pub async fn topics(state: web::Data<AppState>, caller: Caller) -> Result<HttpResponse, ApiError> {
    let all = matches!(caller.0.role, Role::Admin | Role::Operator | Role::Viewer);
    let list = state
        .bus
        .send(ListTopics {
            user_id: caller.0.user_id.clone(),
            all,
        })
        .timeout(ASK_TIMEOUT)
        .await?
        .map_err(rest_error)?;
    Ok(HttpResponse::Ok().json(json!({ "data": list })))
}
