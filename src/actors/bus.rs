//! `BusActor`: the agent bus's broker on this instance. It knows the WebSocket connections
//! here (each with a bounded outbound queue), who subscribes to which topic (fan-out) and
//! which members make up each work group. Fan-out messages go straight to the local
//! subscribers' queues (and, on PostgreSQL, to the other instances in a `NOTIFY`); group
//! messages are persisted first (`StoreActor`), then claimed from the database for the
//! members here that have room, one member each, redelivered after the visibility timeout
//! until acked, and moved to `<topic>.dead` after `bus.max_attempts` deliveries.
//!
//! Memory is bounded: a connection's queue holds `bus.outbound_queue` frames (a fan-out
//! subscriber that fills it is dropped with `slow_consumer`; a group member that fills it,
//! or holds `bus.max_unacked` messages, gets no more work until it catches up), and the
//! broker keeps only what it delivered and is waiting to be acked.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::actors::store::{
    AckBusMessage, ClaimBusMessages, PendingBusMessages, PersistBusMessage, PurgeFanout,
    ReadFanout, RegisterGroup, RelayFanout, ReleaseBusMessages, StoreActor,
};
use crate::config::BusSettings;
use crate::domain::bus::{BusCaller, BusMessage, BusNotice, FrameError, dead_letter_topic};
use crate::domain::now_ms;
use crate::telemetry::metrics::Metrics;

pub type ConnId = u64;

struct Conn {
    caller: BusCaller,
    tx: mpsc::Sender<String>,
    /// Fired (once) to drop the connection with this error.
    kill: Option<oneshot::Sender<FrameError>>,
    /// Group messages delivered to it and not yet acked: (id, group).
    unacked: HashSet<(String, String)>,
}

impl Conn {
    fn has_room(&self, max_unacked: usize) -> bool {
        self.tx.capacity() > 0 && self.unacked.len() < max_unacked
    }
}

type GroupKey = (String, String);

pub struct BusActor {
    /// This instance's name on what it claims.
    owner: String,
    settings: BusSettings,
    store: Addr<StoreActor>,
    metrics: Arc<Metrics>,
    next_conn: ConnId,
    conns: HashMap<ConnId, Conn>,
    fanout: HashMap<String, HashSet<ConnId>>,
    groups: HashMap<GroupKey, Vec<ConnId>>,
    /// Where each group's next message goes first (round robin).
    turn: HashMap<GroupKey, usize>,
    /// Delivered here and waiting for an ack: (id, group) → (member, topic).
    inflight: HashMap<(String, String), (ConnId, String)>,
    /// Groups being claimed for, and whether to claim again when done.
    claiming: HashMap<GroupKey, bool>,
}

impl BusActor {
    pub fn new(settings: BusSettings, store: Addr<StoreActor>, metrics: Arc<Metrics>) -> Self {
        Self {
            owner: uuid::Uuid::new_v4().to_string(),
            settings,
            store,
            metrics,
            next_conn: 0,
            conns: HashMap::new(),
            fanout: HashMap::new(),
            groups: HashMap::new(),
            turn: HashMap::new(),
            inflight: HashMap::new(),
            claiming: HashMap::new(),
        }
    }

    fn drop_conn(&mut self, id: ConnId, error: Option<FrameError>) {
        let Some(mut conn) = self.conns.remove(&id) else {
            return;
        };
        if let (Some(kill), Some(error)) = (conn.kill.take(), error) {
            let _ = kill.send(error);
        }
        for subscribers in self.fanout.values_mut() {
            subscribers.remove(&id);
        }
        self.fanout.retain(|_, s| !s.is_empty());
        for members in self.groups.values_mut() {
            members.retain(|m| *m != id);
        }
        self.groups.retain(|_, m| !m.is_empty());
        // Its unacked messages go back to the group at once (the poll hands them out).
        self.inflight.retain(|_, (member, _)| *member != id);
        if !conn.unacked.is_empty() {
            self.store.do_send(ReleaseBusMessages {
                owner: self.owner.clone(),
                messages: conn.unacked.drain().collect(),
            });
        }
        self.metrics.set_bus_clients(self.conns.len());
    }

    /// Hands `message` to every local fan-out subscriber of its topic; a full queue drops
    /// its connection (`slow_consumer`).
    fn fan_out(&mut self, message: &BusMessage) {
        let Some(subscribers) = self.fanout.get(&message.topic) else {
            return;
        };
        let frame = message.frame();
        let mut slow = Vec::new();
        for id in subscribers {
            let Some(conn) = self.conns.get(id) else {
                continue;
            };
            match conn.tx.try_send(frame.clone()) {
                Ok(()) => self.metrics.bus_message("deliver"),
                Err(mpsc::error::TrySendError::Full(_)) => slow.push(*id),
                Err(mpsc::error::TrySendError::Closed(_)) => slow.push(*id),
            }
        }
        for id in slow {
            let error = FrameError::new(
                "slow_consumer",
                "this connection fell behind its fan-out messages and is closed",
            );
            self.drop_conn(id, Some(error));
        }
    }

    /// Claims due messages of a local group for its members with room, and hands them out.
    fn pump(&mut self, key: GroupKey, ctx: &mut Context<Self>) {
        if let Some(again) = self.claiming.get_mut(&key) {
            *again = true;
            return;
        }
        let Some(members) = self.groups.get(&key) else {
            return;
        };
        let max_unacked = self.settings.max_unacked;
        let room: usize = members
            .iter()
            .filter_map(|m| self.conns.get(m))
            .map(|c| {
                c.tx.capacity()
                    .min(max_unacked.saturating_sub(c.unacked.len()))
            })
            .sum();
        if room == 0 {
            return;
        }
        self.claiming.insert(key.clone(), false);
        let claim = self.store.send(ClaimBusMessages {
            topic: key.0.clone(),
            group: key.1.clone(),
            owner: self.owner.clone(),
            limit: room.min(256) as u64,
            visibility_ms: self.settings.visibility_timeout_ms,
        });
        ctx.spawn(claim.into_actor(self).map(move |claimed, act, ctx| {
            let again = act.claiming.remove(&key).unwrap_or(false);
            let messages = match claimed {
                Ok(Ok(messages)) => messages,
                _ => {
                    tracing::warn!(topic = %key.0, group = %key.1, "could not claim bus messages");
                    return;
                }
            };
            let full = messages.len() as u64 >= room.min(256) as u64;
            for message in messages {
                act.hand_out(&key, message, ctx);
            }
            if again || full {
                act.pump(key, ctx);
            }
        }));
    }

    /// One claimed group message: to the next member with room (another one than before,
    /// when it is a redelivery and there is one), or to the dead letters when it has had
    /// its deliveries.
    fn hand_out(&mut self, key: &GroupKey, message: BusMessage, ctx: &mut Context<Self>) {
        if message.attempt > self.settings.max_attempts as i32 {
            self.dead_letter(key, message, ctx);
            return;
        }
        let Some(members) = self.groups.get(key) else {
            return;
        };
        let previous = self
            .inflight
            .get(&(message.id.clone(), key.1.clone()))
            .map(|(m, _)| *m);
        let start = self.turn.get(key).copied().unwrap_or(0);
        let n = members.len();
        let max_unacked = self.settings.max_unacked;
        let pick = |avoid: Option<ConnId>| {
            (0..n).map(|i| (start + i) % n).find(|&i| {
                Some(members[i]) != avoid
                    && self
                        .conns
                        .get(&members[i])
                        .is_some_and(|c| c.has_room(max_unacked))
            })
        };
        let Some(index) = pick(previous).or_else(|| pick(None)) else {
            // Nobody has room after all: it comes back after its visibility timeout.
            return;
        };
        let member = members[index];
        self.turn.insert(key.clone(), (index + 1) % n);
        let Some(conn) = self.conns.get_mut(&member) else {
            return;
        };
        if conn.tx.try_send(message.frame()).is_ok() {
            conn.unacked.insert((message.id.clone(), key.1.clone()));
            self.inflight
                .insert((message.id, key.1.clone()), (member, key.0.clone()));
            self.metrics.bus_message(if message.attempt > 1 {
                "redeliver"
            } else {
                "deliver"
            });
        }
    }

    /// A message that was delivered `bus.max_attempts` times without an ack: published to
    /// `<topic>.dead` (same id, payload and sender), then taken off its group.
    fn dead_letter(&mut self, key: &GroupKey, message: BusMessage, ctx: &mut Context<Self>) {
        self.metrics.bus_message("dead_letter");
        let (id, group) = (message.id.clone(), key.1.clone());
        self.inflight.remove(&(id.clone(), group.clone()));
        let dead = BusMessage {
            topic: dead_letter_topic(&message.topic),
            attempt: 1,
            ..message
        };
        let store = self.store.clone();
        let publish = self.publish(dead, ctx);
        ctx.spawn(
            async move {
                if publish.await.is_ok() {
                    let _ = store.send(AckBusMessage { id, group }).await;
                }
            }
            .into_actor(self),
        );
    }

    /// Delivers `message` to local fan-out subscribers and to other instances, persists it
    /// for the topic's groups; the future resolves once it is persisted.
    fn publish(
        &mut self,
        message: BusMessage,
        ctx: &mut Context<Self>,
    ) -> impl Future<Output = Result<(), FrameError>> + 'static {
        self.metrics.bus_message("publish");
        self.fan_out(&message);
        self.store.do_send(RelayFanout {
            message: message.clone(),
        });
        let topic = message.topic.clone();
        let me = ctx.address();
        let persist = self.store.send(PersistBusMessage { message });
        async move {
            match persist.await {
                Ok(Ok(groups)) => {
                    if !groups.is_empty() {
                        me.do_send(Wake { topic });
                    }
                    Ok(())
                }
                _ => Err(FrameError::new(
                    "unavailable",
                    "the message could not be stored; publish it again",
                )),
            }
        }
    }

    fn pump_topic(&mut self, topic: &str, ctx: &mut Context<Self>) {
        let keys: Vec<GroupKey> = self
            .groups
            .keys()
            .filter(|(t, _)| t == topic)
            .cloned()
            .collect();
        for key in keys {
            self.pump(key, ctx);
        }
    }
}

impl Actor for BusActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let poll = Duration::from_millis(self.settings.poll_ms.max(10));
        ctx.run_interval(poll, |act, ctx| {
            let keys: Vec<GroupKey> = act.groups.keys().cloned().collect();
            for key in keys {
                act.pump(key, ctx);
            }
        });
        ctx.run_interval(Duration::from_secs(5), |act, ctx| {
            let metrics = act.metrics.clone();
            ctx.spawn(act.store.send(PendingBusMessages).into_actor(act).map(
                move |pending, _, _| {
                    if let Ok(Ok(pending)) = pending {
                        metrics.set_bus_pending(pending.iter().map(|(_, n)| n).sum());
                    }
                },
            ));
        });
        ctx.run_interval(Duration::from_secs(60), |act, _| {
            act.store.do_send(PurgeFanout {
                before: now_ms() - 60_000,
            });
        });
    }
}

impl Supervised for BusActor {}

/// A WebSocket connection joins: answers its id.
#[derive(Message)]
#[rtype(result = "ConnId")]
pub struct Connect {
    pub caller: BusCaller,
    pub tx: mpsc::Sender<String>,
    pub kill: oneshot::Sender<FrameError>,
}

impl Handler<Connect> for BusActor {
    type Result = ConnId;

    fn handle(&mut self, msg: Connect, _: &mut Context<Self>) -> ConnId {
        self.next_conn += 1;
        self.conns.insert(
            self.next_conn,
            Conn {
                caller: msg.caller,
                tx: msg.tx,
                kill: Some(msg.kill),
                unacked: HashSet::new(),
            },
        );
        self.metrics.set_bus_clients(self.conns.len());
        self.next_conn
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Disconnect {
    pub conn: ConnId,
}

impl Handler<Disconnect> for BusActor {
    type Result = ();

    fn handle(&mut self, msg: Disconnect, _: &mut Context<Self>) {
        self.drop_conn(msg.conn, None);
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Subscribe {
    pub conn: ConnId,
    pub topic: String,
    pub group: Option<String>,
}

impl Handler<Subscribe> for BusActor {
    type Result = ResponseActFuture<Self, Result<(), FrameError>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) -> Self::Result {
        let checked = match self.conns.get(&msg.conn) {
            None => Err(FrameError::new("closed", "the connection is closed")),
            Some(conn) => conn.caller.may(&msg.topic, true),
        };
        if let Err(e) = checked {
            return Box::pin(actix::fut::ready(Err(e)));
        }
        let Some(group) = msg.group else {
            self.fanout.entry(msg.topic).or_default().insert(msg.conn);
            return Box::pin(actix::fut::ready(Ok(())));
        };
        // The group is remembered first: from then on, messages to the topic wait for it.
        let register = self.store.send(RegisterGroup {
            topic: msg.topic.clone(),
            group: group.clone(),
        });
        Box::pin(register.into_actor(self).map(move |registered, act, ctx| {
            if !matches!(registered, Ok(Ok(()))) {
                return Err(FrameError::new(
                    "unavailable",
                    "the group could not be stored; subscribe again",
                ));
            }
            if !act.conns.contains_key(&msg.conn) {
                return Err(FrameError::new("closed", "the connection is closed"));
            }
            let key = (msg.topic, group);
            let members = act.groups.entry(key.clone()).or_default();
            if !members.contains(&msg.conn) {
                members.push(msg.conn);
            }
            act.pump(key, ctx);
            Ok(())
        }))
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Unsubscribe {
    pub conn: ConnId,
    pub topic: String,
}

impl Handler<Unsubscribe> for BusActor {
    type Result = Result<(), FrameError>;

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) -> Self::Result {
        let mut found = false;
        if let Some(subscribers) = self.fanout.get_mut(&msg.topic) {
            found |= subscribers.remove(&msg.conn);
        }
        self.fanout.retain(|_, s| !s.is_empty());
        for ((topic, _), members) in self.groups.iter_mut() {
            if *topic == msg.topic && members.contains(&msg.conn) {
                members.retain(|m| *m != msg.conn);
                found = true;
            }
        }
        self.groups.retain(|_, m| !m.is_empty());
        if found {
            Ok(())
        } else {
            Err(FrameError::new(
                "not_subscribed",
                format!("this connection does not subscribe to `{}`", msg.topic),
            ))
        }
    }
}

/// Publishes on the bus (over the WebSocket, or REST); answers the message id once it is
/// delivered to the fan-out subscribers here and stored for the topic's groups.
#[derive(Message)]
#[rtype(result = "Result<String, FrameError>")]
pub struct Publish {
    pub caller: BusCaller,
    pub topic: String,
    pub payload: Value,
    pub reply_to: Option<String>,
}

impl Handler<Publish> for BusActor {
    type Result = ResponseFuture<Result<String, FrameError>>;

    fn handle(&mut self, msg: Publish, ctx: &mut Context<Self>) -> Self::Result {
        if let Err(e) = msg.caller.may(&msg.topic, false) {
            return Box::pin(async move { Err(e) });
        }
        let size = msg.payload.to_string().len();
        if size > self.settings.max_payload_bytes {
            let limit = self.settings.max_payload_bytes;
            return Box::pin(async move {
                Err(FrameError::new(
                    "too_large",
                    format!("the payload is {size} bytes; bus.max_payload_bytes is {limit}"),
                ))
            });
        }
        let message = BusMessage {
            id: uuid::Uuid::now_v7().to_string(),
            topic: msg.topic,
            payload: msg.payload,
            from: msg.caller.user_id,
            reply_to: msg.reply_to,
            attempt: 1,
        };
        let id = message.id.clone();
        let stored = self.publish(message, ctx);
        Box::pin(async move { stored.await.map(|()| id) })
    }
}

#[derive(Message)]
#[rtype(result = "Result<(), FrameError>")]
pub struct Ack {
    pub conn: ConnId,
    pub id: String,
}

impl Handler<Ack> for BusActor {
    type Result = ResponseFuture<Result<(), FrameError>>;

    fn handle(&mut self, msg: Ack, ctx: &mut Context<Self>) -> Self::Result {
        let Some(conn) = self.conns.get_mut(&msg.conn) else {
            return Box::pin(async { Err(FrameError::new("closed", "the connection is closed")) });
        };
        let groups: Vec<String> = conn
            .unacked
            .iter()
            .filter(|(id, _)| *id == msg.id)
            .map(|(_, g)| g.clone())
            .collect();
        if groups.is_empty() {
            let id = msg.id;
            return Box::pin(async move {
                Err(FrameError::new(
                    "unknown_id",
                    format!("no unacked message `{id}` on this connection"),
                ))
            });
        }
        let mut acks = Vec::new();
        for group in groups {
            conn.unacked.remove(&(msg.id.clone(), group.clone()));
            self.inflight.remove(&(msg.id.clone(), group.clone()));
            self.metrics.bus_message("ack");
            acks.push(self.store.send(AckBusMessage {
                id: msg.id.clone(),
                group,
            }));
        }
        // Room again: more work for this member's groups.
        let keys: Vec<GroupKey> = self
            .groups
            .iter()
            .filter(|(_, members)| members.contains(&msg.conn))
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.pump(key, ctx);
        }
        Box::pin(async move {
            for ack in acks {
                match ack.await {
                    Ok(Ok(_)) => {}
                    _ => {
                        return Err(FrameError::new(
                            "unavailable",
                            "the ack could not be stored; it comes back after its timeout",
                        ));
                    }
                }
            }
            Ok(())
        })
    }
}

/// Group messages for `topic` may be waiting: claim them for the members here.
#[derive(Message)]
#[rtype(result = "()")]
struct Wake {
    topic: String,
}

impl Handler<Wake> for BusActor {
    type Result = ();

    fn handle(&mut self, msg: Wake, ctx: &mut Context<Self>) {
        self.pump_topic(&msg.topic, ctx);
    }
}

impl Handler<BusNotice> for BusActor {
    type Result = ();

    fn handle(&mut self, notice: BusNotice, ctx: &mut Context<Self>) {
        match notice {
            BusNotice::Fanout { message } => self.fan_out(&message),
            BusNotice::FanoutRef { id } => {
                ctx.spawn(self.store.send(ReadFanout { id }).into_actor(self).map(
                    |read, act, _| {
                        if let Ok(Ok(Some(message))) = read {
                            act.fan_out(&message);
                        }
                    },
                ));
            }
            BusNotice::Group { topic } => self.pump_topic(&topic, ctx),
        }
    }
}

/// A topic as `GET /v1/bus/topics` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TopicInfo {
    pub topic: String,
    /// Fan-out subscribers on this instance.
    pub subscribers: usize,
    /// Work groups with members on this instance.
    pub groups: Vec<String>,
    /// Group messages waiting or unacked (all instances).
    pub pending: i64,
}

/// Topics: all (`all`), or those the caller's own connections subscribe to.
#[derive(Message)]
#[rtype(result = "Result<Vec<TopicInfo>, FrameError>")]
pub struct ListTopics {
    pub user_id: String,
    pub all: bool,
}

impl Handler<ListTopics> for BusActor {
    type Result = ResponseActFuture<Self, Result<Vec<TopicInfo>, FrameError>>;

    fn handle(&mut self, msg: ListTopics, _: &mut Context<Self>) -> Self::Result {
        let pending = self.store.send(PendingBusMessages);
        Box::pin(pending.into_actor(self).map(move |pending, act, _| {
            let pending = match pending {
                Ok(Ok(pending)) => pending,
                _ => return Err(FrameError::new("unavailable", "the bus could not be read")),
            };
            let mine = |id: &ConnId| {
                msg.all
                    || act
                        .conns
                        .get(id)
                        .is_some_and(|c| c.caller.user_id == msg.user_id)
            };
            let mut topics: HashMap<String, TopicInfo> = HashMap::new();
            fn entry<'a>(
                topics: &'a mut HashMap<String, TopicInfo>,
                topic: &str,
            ) -> &'a mut TopicInfo {
                topics
                    .entry(topic.to_string())
                    .or_insert_with(|| TopicInfo {
                        topic: topic.to_string(),
                        subscribers: 0,
                        groups: Vec::new(),
                        pending: 0,
                    })
            }
            for (topic, subscribers) in &act.fanout {
                let n = subscribers.iter().filter(|id| mine(id)).count();
                if n > 0 {
                    entry(&mut topics, topic).subscribers += n;
                }
            }
            for ((topic, group), members) in &act.groups {
                if members.iter().any(mine) {
                    entry(&mut topics, topic).groups.push(group.clone());
                }
            }
            for (topic, n) in pending {
                if msg.all {
                    entry(&mut topics, &topic).pending = n;
                } else if let Some(t) = topics.get_mut(&topic) {
                    t.pending = n;
                }
            }
            let mut list: Vec<TopicInfo> = topics.into_values().collect();
            list.sort_by(|a, b| a.topic.cmp(&b.topic));
            for t in &mut list {
                t.groups.sort();
            }
            Ok(list)
        }))
    }
}
