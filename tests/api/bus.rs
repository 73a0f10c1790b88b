//! The agent bus over a real WebSocket client (tokio-tungstenite): fan-out, `ok` and
//! `error` frames, work groups with acks, redelivery and dead letters, REST publish,
//! `?token=`, durability across a restart, slow consumers, private topics, bad frames;
//! and two instances on one PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{
    MASTER_KEY, drop_test_database, fresh_database_url, spawn_app, spawn_app_with, spawn_binary,
    terminate,
};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A bus client: frames out, frames in (pings answered by the library).
struct Client {
    socket: Socket,
    next_ref: u64,
}

fn ws_url(address: &str) -> String {
    format!("{}/v1/bus/ws", address.replacen("http", "ws", 1))
}

async fn connect(address: &str, key: &str) -> Client {
    let mut request = ws_url(address).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let (socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("the bus accepts the key");
    Client {
        socket,
        next_ref: 0,
    }
}

impl Client {
    async fn send_text(&mut self, text: String) {
        self.socket.send(Message::text(text)).await.unwrap();
    }

    /// The next JSON frame (within 10 s).
    async fn recv(&mut self) -> Value {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .expect("a readable frame");
            match frame {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Close(_) => panic!("the connection closed"),
                _ => continue,
            }
        }
    }

    /// Sends `frame` with a fresh `ref`; answers the `ok` or `error` that answers it
    /// (messages that arrive first are kept in `early`).
    async fn call(&mut self, mut frame: Value, early: &mut Vec<Value>) -> Value {
        self.next_ref += 1;
        frame["ref"] = json!(self.next_ref);
        self.send_text(frame.to_string()).await;
        loop {
            let got = self.recv().await;
            if got["op"] == "message" {
                early.push(got);
                continue;
            }
            assert_eq!(got["ref"], json!(self.next_ref), "{got}");
            return got;
        }
    }

    async fn ok(&mut self, frame: Value) -> Value {
        let mut early = Vec::new();
        let answer = self.call(frame, &mut early).await;
        assert_eq!(answer["op"], "ok", "{answer}");
        assert!(early.is_empty(), "{early:?}");
        answer
    }

    async fn error(&mut self, frame: Value) -> String {
        let mut early = Vec::new();
        let answer = self.call(frame, &mut early).await;
        assert_eq!(answer["op"], "error", "{answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
        answer["code"].as_str().unwrap().to_string()
    }

    /// Returns once every frame sent before has been answered (frames are answered in
    /// order); what arrived in between is dropped.
    async fn sync(&mut self) {
        self.send_text(json!({"op": "unsubscribe", "topic": "sync", "ref": "sync"}).to_string())
            .await;
        while self.recv().await["ref"] != "sync" {}
    }

    async fn message(&mut self) -> Value {
        let got = self.recv().await;
        assert_eq!(got["op"], "message", "{got}");
        got
    }
}

/// One topic of `GET /v1/bus/topics`, as the admin sees it.
async fn topic_info(app: &crate::helpers::TestApp, topic: &str) -> Value {
    let topics: Value = app
        .get("/v1/bus/topics", &app.admin_key)
        .await
        .json()
        .await
        .unwrap();
    topics["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == topic)
        .cloned()
        .unwrap_or_else(|| panic!("no topic {topic} in {topics}"))
}

/// Two members of a group take and ack messages until all 100 payloads (0..100) came;
/// answers how many times each payload came and how many each member took.
async fn work_through_a_hundred(workers: &mut [Client; 2]) -> (HashMap<i64, usize>, [usize; 2]) {
    let mut seen: HashMap<i64, usize> = HashMap::new();
    let mut per_worker = [0, 0];
    while seen.len() < 100 {
        let [first, second] = &mut *workers;
        let (index, got) = tokio::select! {
            got = first.recv() => (0, got),
            got = second.recv() => (1, got),
        };
        if got["op"] != "message" {
            continue;
        }
        assert_eq!(got["attempt"], 1, "{got}");
        *seen.entry(got["payload"].as_i64().unwrap()).or_default() += 1;
        per_worker[index] += 1;
        let id = got["id"].as_str().unwrap().to_string();
        workers[index]
            .send_text(json!({"op": "ack", "id": id}).to_string())
            .await;
    }
    (seen, per_worker)
}

#[actix_web::test]
async fn fan_out_reaches_every_subscriber_and_frames_are_answered() {
    let app = spawn_app().await;
    let mut a = connect(&app.address, &app.admin_key).await;
    let mut b = connect(&app.address, &app.admin_key).await;
    let mut publisher = connect(&app.address, &app.admin_key).await;
    a.ok(json!({"op": "subscribe", "topic": "news"})).await;
    b.ok(json!({"op": "subscribe", "topic": "news"})).await;
    let ok = publisher
        .ok(json!({"op": "publish", "topic": "news", "payload": {"n": 1}, "reply_to": "answers"}))
        .await;
    let id = ok["id"].as_str().unwrap().to_string();
    for client in [&mut a, &mut b] {
        let got = client.message().await;
        assert_eq!(got["id"], id);
        assert_eq!(got["topic"], "news");
        assert_eq!(got["payload"], json!({"n": 1}));
        assert_eq!(got["attempt"], 1);
        assert_eq!(got["reply_to"], "answers");
        assert!(got["from"].is_string());
    }
    // Unsubscribed: no more messages; a second unsubscribe is an error.
    a.ok(json!({"op": "unsubscribe", "topic": "news"})).await;
    assert_eq!(
        a.error(json!({"op": "unsubscribe", "topic": "news"})).await,
        "not_subscribed"
    );
    publisher
        .ok(json!({"op": "publish", "topic": "news", "payload": 2}))
        .await;
    assert_eq!(b.message().await["payload"], 2);
    // `a` got nothing: its next frame is the answer to its own next call.
    a.ok(json!({"op": "subscribe", "topic": "other"})).await;
    // Bad frames: an error each, and the connection stays usable.
    a.send_text("not json".into()).await;
    assert_eq!(a.recv().await["code"], "bad_frame");
    assert_eq!(a.error(json!({"op": "fly"})).await, "unknown_op");
    assert_eq!(a.error(json!({"op": "subscribe"})).await, "bad_frame");
    assert_eq!(
        a.error(json!({"op": "publish", "topic": "a b", "payload": 1}))
            .await,
        "bad_frame"
    );
    assert_eq!(
        a.error(json!({"op": "ack", "id": "nope"})).await,
        "unknown_id"
    );
    let huge = "x".repeat(300 * 1024);
    assert_eq!(
        a.error(json!({"op": "publish", "topic": "t", "payload": huge}))
            .await,
        "too_large"
    );
    a.ok(json!({"op": "publish", "topic": "news", "payload": 3}))
        .await;
    assert_eq!(b.message().await["payload"], 3);
    // REST publish reaches a WebSocket subscriber.
    let res = app
        .post_json(
            "/v1/bus/topics/news/messages",
            &app.admin_key,
            &json!({"payload": {"via": "rest"}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let rest_id = res.json::<Value>().await.unwrap()["id"].clone();
    let got = b.message().await;
    assert_eq!(
        (got["id"].clone(), got["payload"].clone()),
        (rest_id, json!({"via": "rest"}))
    );
    // Topics, as an admin sees them.
    assert_eq!(topic_info(&app, "news").await["subscribers"], 1);
}

#[actix_web::test]
async fn a_group_of_two_shares_a_hundred_messages_each_delivered_once() {
    let app = spawn_app().await;
    let mut workers = [
        connect(&app.address, &app.admin_key).await,
        connect(&app.address, &app.admin_key).await,
    ];
    for w in workers.iter_mut() {
        w.ok(json!({"op": "subscribe", "topic": "work", "group": "crew"}))
            .await;
    }
    for i in 0..100 {
        let res = app
            .post_json(
                "/v1/bus/topics/work/messages",
                &app.admin_key,
                &json!({"payload": i}),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    let (seen, per_worker) = work_through_a_hundred(&mut workers).await;
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert!(
        per_worker[0] > 0 && per_worker[1] > 0,
        "both shared the work: {per_worker:?}"
    );
    // Nothing is left waiting once the acks are answered.
    for w in workers.iter_mut() {
        w.sync().await;
    }
    let work = topic_info(&app, "work").await;
    assert_eq!(work["groups"], json!(["crew"]));
    assert_eq!(work["pending"], 0);
}

#[actix_web::test]
async fn an_unacked_message_comes_back_with_its_id_then_goes_to_the_dead_letters() {
    let app = spawn_app_with(|s| {
        s.bus.visibility_timeout_ms = 200;
        s.bus.max_attempts = 3;
        s.bus.poll_ms = 50;
    })
    .await;
    let mut worker = connect(&app.address, &app.admin_key).await;
    let mut other = connect(&app.address, &app.admin_key).await;
    let mut dead = connect(&app.address, &app.admin_key).await;
    dead.ok(json!({"op": "subscribe", "topic": "jobs.dead"}))
        .await;
    worker
        .ok(json!({"op": "subscribe", "topic": "jobs", "group": "g"}))
        .await;
    other
        .ok(json!({"op": "subscribe", "topic": "jobs", "group": "g"}))
        .await;
    let res = app
        .post_json(
            "/v1/bus/topics/jobs/messages",
            &app.admin_key,
            &json!({"payload": "task"}),
        )
        .await;
    let id = res.json::<Value>().await.unwrap()["id"].clone();
    // Three deliveries, never acked: same id, attempt 1, 2, 3, each to the other member.
    let mut receivers = Vec::new();
    for attempt in 1..=3 {
        let (who, got) = tokio::select! {
            got = worker.recv() => (0, got),
            got = other.recv() => (1, got),
        };
        assert_eq!(got["id"], id);
        assert_eq!(got["attempt"], attempt, "{got}");
        receivers.push(who);
    }
    assert_ne!(receivers[0], receivers[1], "redelivered to another member");
    assert_ne!(receivers[1], receivers[2], "redelivered to another member");
    // Then dead-lettered, same id and payload, on `jobs.dead`.
    let got = dead.message().await;
    assert_eq!(
        (
            got["topic"].clone(),
            got["id"].clone(),
            got["payload"].clone()
        ),
        (json!("jobs.dead"), id, json!("task"))
    );
}

#[actix_web::test]
async fn tokens_in_the_query_work_and_bad_keys_and_private_topics_are_refused() {
    let app = spawn_app().await;
    let alice = app.user_key("alice", "user", None).await;
    let bob = app.user_key("bob", "user", None).await;
    // ?token= for browsers.
    let url = format!("{}?token={alice}", ws_url(&app.address));
    let (socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("?token= accepted");
    let mut alice_ws = Client {
        socket,
        next_ref: 0,
    };
    alice_ws
        .ok(json!({"op": "subscribe", "topic": "users.alice.inbox"}))
        .await;
    // A bad token is refused before the upgrade.
    let url = format!("{}?token=lw-not-a-key", ws_url(&app.address));
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => assert_eq!(res.status(), 401),
        other => panic!("expected 401, got {other:?}"),
    }
    // Another user's private topics are forbidden; the owner's own are fine.
    let mut bob_ws = connect(&app.address, &bob).await;
    assert_eq!(
        bob_ws
            .error(json!({"op": "subscribe", "topic": "users.alice.inbox"}))
            .await,
        "forbidden"
    );
    assert_eq!(
        bob_ws
            .error(json!({"op": "publish", "topic": "approvals.alice", "payload": 1}))
            .await,
        "forbidden"
    );
    let res = app
        .post_json(
            "/v1/bus/topics/users.alice.inbox/messages",
            &bob,
            &json!({"payload": 1}),
        )
        .await;
    assert_eq!(res.status(), 403);
    bob_ws
        .ok(json!({"op": "publish", "topic": "users.bob.notes", "payload": 1}))
        .await;
    // An admin reads private topics.
    let mut admin_ws = connect(&app.address, &app.admin_key).await;
    admin_ws
        .ok(json!({"op": "subscribe", "topic": "users.alice.inbox"}))
        .await;
    alice_ws
        .ok(json!({"op": "publish", "topic": "users.alice.inbox", "payload": "hi"}))
        .await;
    assert_eq!(admin_ws.message().await["payload"], "hi");
    assert_eq!(alice_ws.message().await["payload"], "hi");
    // A key limited to topic prefixes.
    let res = app
        .post_json(
            "/admin/keys",
            &app.admin_key,
            &json!({"user_id": "bob", "topics": ["agents."]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let limited = res.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string();
    let mut limited_ws = connect(&app.address, &limited).await;
    limited_ws
        .ok(json!({"op": "subscribe", "topic": "agents.planner"}))
        .await;
    assert_eq!(
        limited_ws
            .error(json!({"op": "subscribe", "topic": "news"}))
            .await,
        "forbidden"
    );
    // A user sees only the topics of their own connections.
    let topics: Value = app.get("/v1/bus/topics", &bob).await.json().await.unwrap();
    let names: Vec<&str> = topics["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["agents.planner"]);
}

#[actix_web::test]
async fn a_slow_fan_out_consumer_is_dropped_and_a_slow_member_gets_no_more_work() {
    let app = spawn_app_with(|s| {
        s.bus.outbound_queue = 8;
        s.bus.max_unacked = 4;
    })
    .await;
    let mut slow = connect(&app.address, &app.admin_key).await;
    slow.ok(json!({"op": "subscribe", "topic": "firehose"}))
        .await;
    let mut lazy = connect(&app.address, &app.admin_key).await;
    lazy.ok(json!({"op": "subscribe", "topic": "chores", "group": "g"}))
        .await;
    // The slow subscriber reads nothing while 2000 messages of 4 KiB are published.
    let payload = "y".repeat(4096);
    let mut publisher = connect(&app.address, &app.admin_key).await;
    for _ in 0..2000 {
        let frame = json!({"op": "publish", "topic": "firehose", "payload": payload});
        publisher.send_text(frame.to_string()).await;
    }
    let mut oks = 0;
    while oks < 2000 {
        if publisher.recv().await["op"] == "ok" {
            oks += 1;
        }
    }
    for _ in 0..20 {
        let res = app
            .post_json(
                "/v1/bus/topics/chores/messages",
                &app.admin_key,
                &json!({"payload": 1}),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    // It was dropped: after what the queue held, `slow_consumer`, then the close.
    let mut frames = 0;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(10), slow.socket.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(text))) => {
                let got: Value = serde_json::from_str(text.as_str()).unwrap();
                if got["op"] == "error" {
                    break got["code"].as_str().unwrap().to_string();
                }
                frames += 1;
            }
            Some(Ok(_)) => {}
            other => panic!("expected slow_consumer, got {other:?}"),
        }
    };
    assert_eq!(code, "slow_consumer");
    assert!(frames < 2000, "it did not get everything: {frames}");
    // The lazy member holds at most `max_unacked`; the rest waits in the group.
    let mut held = 0;
    while let Ok(Some(Ok(frame))) =
        tokio::time::timeout(Duration::from_millis(300), lazy.socket.next()).await
    {
        if let Message::Text(text) = frame {
            let got: Value = serde_json::from_str(text.as_str()).unwrap();
            if got["op"] == "message" {
                held += 1;
            }
        }
    }
    assert_eq!(held, 4);
    let chores = topic_info(&app, "chores").await;
    assert_eq!(chores["pending"], 20);
}

async fn bus_gateway(
    dir: &tempfile::TempDir,
    db_url: &str,
    admin_key: &str,
) -> crate::helpers::Gateway {
    spawn_binary(
        dir,
        &[
            ("DATABASE_URL", db_url),
            ("LOWART_MASTER_KEY", MASTER_KEY),
            ("LOWART_ADMIN_KEY", admin_key),
            ("LOWART_BUS__POLL_MS", "100"),
        ],
    )
    .await
}

#[actix_web::test]
async fn a_group_message_published_before_a_restart_is_delivered_after_it() {
    crate::helpers::install_crypto();
    let dir = tempfile::tempdir().unwrap();
    let db_url = fresh_database_url(&dir).await;
    let admin_key = lowart::crypto::generate_api_key().unwrap();
    let mut gw = bus_gateway(&dir, &db_url, &admin_key).await;
    // The group exists (a member subscribed once), then no member is connected.
    let mut member = connect(&gw.address, &admin_key).await;
    member
        .ok(json!({"op": "subscribe", "topic": "durable", "group": "g"}))
        .await;
    drop(member);
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}/v1/bus/topics/durable/messages", gw.address))
        .bearer_auth(&admin_key)
        .json(&json!({"payload": "survive"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let id = res.json::<Value>().await.unwrap()["id"].clone();
    assert!(terminate(&mut gw.child).await.success());
    let mut gw = bus_gateway(&dir, &db_url, &admin_key).await;
    let mut member = connect(&gw.address, &admin_key).await;
    member
        .ok(json!({"op": "subscribe", "topic": "durable", "group": "g"}))
        .await;
    let got = member.message().await;
    assert_eq!(
        (got["id"].clone(), got["payload"].clone()),
        (id, json!("survive"))
    );
    assert!(terminate(&mut gw.child).await.success());
    drop_test_database(&db_url);
}

#[actix_web::test]
async fn two_instances_share_fan_out_and_a_group_processes_each_message_once() {
    let Some(pair) = crate::scale_out::spawn_pair(&[("LOWART_BUS__POLL_MS", "100")]).await else {
        return;
    };
    let key = pair.admin_key.clone();
    let mut on_b = connect(&pair.b.address, &key).await;
    on_b.ok(json!({"op": "subscribe", "topic": "everywhere"}))
        .await;
    let mut on_a = connect(&pair.a.address, &key).await;
    on_a.ok(json!({"op": "publish", "topic": "everywhere", "payload": {"from": "a"}}))
        .await;
    assert_eq!(on_b.message().await["payload"], json!({"from": "a"}));
    // A large fan-out message goes through the table, not the notice.
    let big = "z".repeat(20_000);
    on_a.ok(json!({"op": "publish", "topic": "everywhere", "payload": big}))
        .await;
    assert_eq!(
        on_b.message().await["payload"].as_str().map(str::len),
        Some(20_000)
    );
    // A group with a member on each instance, 100 messages published on both.
    let mut workers = [
        connect(&pair.a.address, &key).await,
        connect(&pair.b.address, &key).await,
    ];
    for w in workers.iter_mut() {
        w.ok(json!({"op": "subscribe", "topic": "split", "group": "g"}))
            .await;
    }
    let client = reqwest::Client::new();
    for i in 0..100 {
        let on = if i % 2 == 0 { &pair.a } else { &pair.b };
        let res = client
            .post(format!("{}/v1/bus/topics/split/messages", on.address))
            .bearer_auth(&key)
            .json(&json!({"payload": i}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
    }
    let (seen, per_worker) = work_through_a_hundred(&mut workers).await;
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
    assert!(per_worker[0] > 0 && per_worker[1] > 0, "{per_worker:?}");
}

#[actix_web::test]
async fn a_members_unacked_message_goes_to_another_member_when_it_disconnects() {
    // A visibility timeout far off: only the disconnect can bring the message back soon.
    let app = spawn_app_with(|s| {
        s.bus.visibility_timeout_ms = 600_000;
        s.bus.poll_ms = 50;
    })
    .await;
    let mut leaving = connect(&app.address, &app.admin_key).await;
    leaving
        .ok(json!({"op": "subscribe", "topic": "handoff", "group": "g"}))
        .await;
    let res = app
        .post_json(
            "/v1/bus/topics/handoff/messages",
            &app.admin_key,
            &json!({"payload": "job"}),
        )
        .await;
    let id = res.json::<Value>().await.unwrap()["id"].clone();
    assert_eq!(leaving.message().await["id"], id);
    let mut staying = connect(&app.address, &app.admin_key).await;
    staying
        .ok(json!({"op": "subscribe", "topic": "handoff", "group": "g"}))
        .await;
    leaving.socket.close(None).await.unwrap();
    let got = staying.message().await;
    assert_eq!((got["id"].clone(), got["attempt"].clone()), (id, json!(2)));
}
