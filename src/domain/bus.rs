//! The agent bus as plain data: the WebSocket frames (JSON objects tagged by `op`, SPEC
//! §8), a message, and who may use which topic.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::domain::records::Role;

/// A frame from a client, read from its JSON text. `ref` is the client's own tag, echoed
/// in the `ok` or `error` that answers the frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientFrame {
    pub reference: Option<Value>,
    pub op: ClientOp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClientOp {
    Subscribe {
        topic: String,
        group: Option<String>,
    },
    Unsubscribe {
        topic: String,
    },
    Publish {
        topic: String,
        payload: Value,
        reply_to: Option<String>,
    },
    Ack {
        id: String,
    },
}

/// Why a frame was refused: a stable `code` and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: &'static str,
    pub message: String,
}

impl FrameError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Longest topic or group name.
pub const MAX_NAME: usize = 200;

/// A topic or group name: 1 to 200 characters of `A-Z a-z 0-9 . _ - : /`.
pub fn check_name(what: &str, name: &str) -> Result<(), FrameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':' | b'/'));
    if ok {
        Ok(())
    } else {
        Err(FrameError::new(
            "bad_frame",
            format!("`{what}` must be 1 to {MAX_NAME} characters of A-Z a-z 0-9 . _ - : /"),
        ))
    }
}

impl ClientFrame {
    /// Reads a text frame; the error keeps the frame's `ref` when it had one.
    pub fn parse(text: &str) -> Result<Self, (Option<Value>, FrameError)> {
        let value: Value = serde_json::from_str(text).map_err(|_| {
            (
                None,
                FrameError::new("bad_frame", "a frame must be a JSON object"),
            )
        })?;
        let Value::Object(mut map) = value else {
            return Err((
                None,
                FrameError::new("bad_frame", "a frame must be a JSON object"),
            ));
        };
        let reference = map.remove("ref");
        let fail = |message: String| (reference.clone(), FrameError::new("bad_frame", message));
        let mut text_field =
            |name: &str, required: bool| -> Result<Option<String>, (Option<Value>, FrameError)> {
                match map.remove(name) {
                    None | Some(Value::Null) if !required => Ok(None),
                    None | Some(Value::Null) => Err(fail(format!("`{name}` is required"))),
                    Some(Value::String(s)) => Ok(Some(s)),
                    Some(_) => Err(fail(format!("`{name}` must be a string"))),
                }
            };
        let op = text_field("op", true)?.unwrap_or_default();
        let op = match op.as_str() {
            "subscribe" => {
                let topic = text_field("topic", true)?.unwrap_or_default();
                let group = text_field("group", false)?;
                ClientOp::Subscribe { topic, group }
            }
            "unsubscribe" => ClientOp::Unsubscribe {
                topic: text_field("topic", true)?.unwrap_or_default(),
            },
            "publish" => {
                let topic = text_field("topic", true)?.unwrap_or_default();
                let reply_to = text_field("reply_to", false)?;
                let payload = map.remove("payload").unwrap_or(Value::Null);
                ClientOp::Publish {
                    topic,
                    payload,
                    reply_to,
                }
            }
            "ack" => ClientOp::Ack {
                id: text_field("id", true)?.unwrap_or_default(),
            },
            other => {
                return Err((
                    reference,
                    FrameError::new(
                        "unknown_op",
                        format!("unknown op `{other}`: subscribe, unsubscribe, publish or ack"),
                    ),
                ));
            }
        };
        let names: Vec<(&str, &str)> = match &op {
            ClientOp::Subscribe { topic, group } => {
                let mut names = vec![("topic", topic.as_str())];
                if let Some(group) = group {
                    names.push(("group", group.as_str()));
                }
                names
            }
            ClientOp::Unsubscribe { topic } => vec![("topic", topic.as_str())],
            ClientOp::Publish {
                topic, reply_to, ..
            } => {
                let mut names = vec![("topic", topic.as_str())];
                if let Some(reply_to) = reply_to {
                    names.push(("reply_to", reply_to.as_str()));
                }
                names
            }
            ClientOp::Ack { .. } => vec![],
        };
        for (what, name) in names {
            check_name(what, name).map_err(|e| (reference.clone(), e))?;
        }
        Ok(Self { reference, op })
    }
}

/// A message on the bus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusMessage {
    pub id: String,
    pub topic: String,
    pub payload: Value,
    /// The publisher's user id.
    pub from: String,
    pub reply_to: Option<String>,
    /// 1 on the first delivery, one more on each redelivery (group messages).
    pub attempt: i32,
}

impl BusMessage {
    pub fn frame(&self) -> String {
        let mut frame = json!({
            "op": "message",
            "id": self.id,
            "topic": self.topic,
            "payload": self.payload,
            "from": self.from,
            "attempt": self.attempt,
        });
        if let Some(reply_to) = &self.reply_to {
            frame["reply_to"] = Value::String(reply_to.clone());
        }
        frame.to_string()
    }
}

pub fn ok_frame(reference: Option<&Value>, id: Option<&str>) -> String {
    let mut frame = json!({"op": "ok"});
    if let Some(r) = reference {
        frame["ref"] = r.clone();
    }
    if let Some(id) = id {
        frame["id"] = Value::String(id.to_string());
    }
    frame.to_string()
}

pub fn error_frame(reference: Option<&Value>, error: &FrameError) -> String {
    let mut frame = json!({"op": "error", "code": error.code, "message": error.message});
    if let Some(r) = reference {
        frame["ref"] = r.clone();
    }
    frame.to_string()
}

/// PostgreSQL `NOTIFY` channel of the bus.
pub const BUS_CHANNEL: &str = "lowart_bus";

/// PostgreSQL refuses a `NOTIFY` payload of 8000 bytes or more.
pub const MAX_NOTICE_BYTES: usize = 7_900;

/// What another instance published, as its `NOTIFY` says it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, actix::Message)]
#[rtype(result = "()")]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusNotice {
    /// A fan-out message for this instance's subscribers.
    Fanout { message: BusMessage },
    /// A fan-out message too large for a notice: in `bus_fanout` under this id.
    FanoutRef { id: String },
    /// A group message was persisted: members here may claim it.
    Group { topic: String },
}

#[derive(Serialize, Deserialize)]
struct Notice {
    origin: String,
    notice: BusNotice,
}

/// The `NOTIFY` payload of `notice` from instance `origin`; `None` when too large.
pub fn encode_bus_notice(origin: &str, notice: &BusNotice) -> Option<String> {
    let text = serde_json::to_string(&Notice {
        origin: origin.to_string(),
        notice: notice.clone(),
    })
    .ok()?;
    (text.len() <= MAX_NOTICE_BYTES).then_some(text)
}

/// The notice in a payload, unless the instance `own` sent it (or it is unreadable).
pub fn decode_bus_notice(payload: &str, own: &str) -> Option<BusNotice> {
    let notice: Notice = serde_json::from_str(payload).ok()?;
    (notice.origin != own).then_some(notice.notice)
}

/// The topic dead-lettered messages of `topic` go to.
pub fn dead_letter_topic(topic: &str) -> String {
    format!("{topic}.dead")
}

/// Whose a topic is: `users.<user_id>.…` and `approvals.<user_id>` are that user's.
pub fn private_owner(topic: &str) -> Option<&str> {
    if let Some(rest) = topic.strip_prefix("users.") {
        return Some(rest.split('.').next().unwrap_or(rest));
    }
    topic
        .strip_prefix("approvals.")
        .map(|rest| rest.split('.').next().unwrap_or(rest))
}

/// Who uses the bus: a key's user and role, and the topic prefixes the key is limited
/// to (none: any topic the rules allow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusCaller {
    pub user_id: String,
    pub role: Role,
    pub topics: Option<Vec<String>>,
}

impl BusCaller {
    /// Whether the caller may use `topic` (read it when `read`, else publish to it).
    pub fn may(&self, topic: &str, read: bool) -> Result<(), FrameError> {
        if let Some(prefixes) = &self.topics
            && !prefixes.iter().any(|p| topic.starts_with(p.as_str()))
        {
            return Err(FrameError::new(
                "forbidden",
                format!("this key may not use the topic `{topic}`"),
            ));
        }
        if let Some(owner) = private_owner(topic)
            && owner != self.user_id
        {
            let overseer = matches!(self.role, Role::Admin | Role::Operator);
            // Admins and operators read (and answer on) private topics.
            if !(overseer && (read || topic.starts_with("approvals."))) {
                return Err(FrameError::new(
                    "forbidden",
                    format!("`{topic}` is private to its user"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_their_ref_and_bad_ones_say_why() {
        let f = ClientFrame::parse(r#"{"op":"subscribe","topic":"jobs.new","group":"w","ref":7}"#)
            .unwrap();
        assert_eq!(f.reference, Some(json!(7)));
        assert_eq!(
            f.op,
            ClientOp::Subscribe {
                topic: "jobs.new".into(),
                group: Some("w".into())
            }
        );
        let f =
            ClientFrame::parse(r#"{"op":"publish","topic":"t","payload":{"a":1},"reply_to":"r"}"#)
                .unwrap();
        assert_eq!(
            f.op,
            ClientOp::Publish {
                topic: "t".into(),
                payload: json!({"a":1}),
                reply_to: Some("r".into())
            }
        );
        for (text, code) in [
            ("not json", "bad_frame"),
            ("[1]", "bad_frame"),
            (r#"{"topic":"t"}"#, "bad_frame"),
            (r#"{"op":"fly","ref":"x"}"#, "unknown_op"),
            (r#"{"op":"subscribe"}"#, "bad_frame"),
            (r#"{"op":"subscribe","topic":""}"#, "bad_frame"),
            (r#"{"op":"subscribe","topic":"a b"}"#, "bad_frame"),
            (r#"{"op":"ack"}"#, "bad_frame"),
            (r#"{"op":"publish","topic":5}"#, "bad_frame"),
        ] {
            let (_, error) = ClientFrame::parse(text).unwrap_err();
            assert_eq!(error.code, code, "{text}");
        }
        let (reference, _) = ClientFrame::parse(r#"{"op":"fly","ref":"x"}"#).unwrap_err();
        assert_eq!(reference, Some(json!("x")));
    }

    #[test]
    fn private_topics_are_their_users_and_prefixes_bind_a_key() {
        let alice = BusCaller {
            user_id: "alice".into(),
            role: Role::User,
            topics: None,
        };
        assert!(alice.may("users.alice.inbox", true).is_ok());
        assert!(alice.may("approvals.alice", false).is_ok());
        assert_eq!(
            alice.may("users.bob.inbox", true).unwrap_err().code,
            "forbidden"
        );
        assert_eq!(
            alice.may("approvals.bob", true).unwrap_err().code,
            "forbidden"
        );
        assert!(alice.may("shared.work", false).is_ok());
        let admin = BusCaller {
            user_id: "root".into(),
            role: Role::Admin,
            topics: None,
        };
        assert!(admin.may("users.bob.inbox", true).is_ok());
        assert!(admin.may("users.bob.inbox", false).is_err());
        assert!(admin.may("approvals.bob", false).is_ok());
        let limited = BusCaller {
            topics: Some(vec!["agents.".into()]),
            ..alice
        };
        assert!(limited.may("agents.x", false).is_ok());
        assert_eq!(limited.may("other", true).unwrap_err().code, "forbidden");
    }
}
