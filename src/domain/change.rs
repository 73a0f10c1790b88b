//! What an admin change touched: the store announces a `Change` on the change feed after
//! each committed write, and sends it to the other instances as a `NOTIFY` payload
//! (`Notice`) on PostgreSQL. Whoever holds a copy of stored data (the key cache, the
//! routing table, quota state) brings it up to date.

use serde::{Deserialize, Serialize};

/// The `NOTIFY` channel the gateway's instances share (NOTIFY is scoped to one database).
pub const CHANNEL: &str = "lowart_changes";

/// PostgreSQL refuses a `NOTIFY` payload of 8000 bytes or more.
const MAX_PAYLOAD_BYTES: usize = 7_999;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// API keys were created or revoked: any cached key lookup may be stale.
    Keys,
    /// A user was created, or its name, role or `disabled` flag changed.
    User { user_id: String },
    /// The limits of a user (`rpm_limit`, `tpm_limit`, `token_quota`, `budget_usd`) or of
    /// one of its keys (a key's `rpm_limit`) changed.
    Limits { user_id: String },
    /// Deployments were created, edited or deleted.
    Deployments,
    /// A model's fallback chain was replaced.
    Fallbacks,
    /// MCP servers were registered or deleted, or a tool's policy changed.
    McpServers,
    /// Passthrough routes were added, edited or deleted through `/admin/routes`.
    PassthroughRoutes,
    /// Rhai transform scripts were saved or deleted.
    Scripts,
    /// Anything may have changed (changes may have been missed): reload everything.
    All,
}

impl Change {
    /// Whether cached key lookups (a `KeyGrant`: the key and its user's role, `disabled`
    /// flag and limits) may be stale.
    pub fn touches_keys(&self) -> bool {
        matches!(
            self,
            Change::Keys | Change::User { .. } | Change::Limits { .. } | Change::All
        )
    }

    /// Whether the MCP servers (registrations, tool policies) may be stale.
    pub fn touches_mcp(&self) -> bool {
        matches!(self, Change::McpServers | Change::All)
    }

    /// Whether the passthrough route table may be stale.
    pub fn touches_passthrough(&self) -> bool {
        matches!(self, Change::PassthroughRoutes | Change::All)
    }

    /// Whether the compiled transform scripts may be stale.
    pub fn touches_scripts(&self) -> bool {
        matches!(self, Change::Scripts | Change::All)
    }

    /// Whether the routing table (deployments and fallback chains) may be stale.
    pub fn touches_routes(&self) -> bool {
        matches!(self, Change::Deployments | Change::Fallbacks | Change::All)
    }
}

/// A change on the wire between instances: which instance committed it, and what.
#[derive(Debug, Serialize)]
struct Notice<'a> {
    origin: &'a str,
    change: &'a Change,
}

/// The `NOTIFY` payload of `change` committed by the instance `origin`. A payload over
/// PostgreSQL's limit (a very long user id) becomes `All`: never a failed transaction.
pub fn encode_notice(origin: &str, change: &Change) -> String {
    let payload = serde_json::json!(Notice { origin, change }).to_string();
    if payload.len() <= MAX_PAYLOAD_BYTES {
        return payload;
    }
    serde_json::json!(Notice {
        origin,
        change: &Change::All
    })
    .to_string()
}

/// The change in a `NOTIFY` payload, unless the instance `own` sent it (it has applied
/// its own changes already). A payload this version cannot read (a newer instance's kind
/// of change?) is `All`: something changed.
pub fn decode_notice(payload: &str, own: &str) -> Option<Change> {
    #[derive(Deserialize)]
    struct Wire {
        origin: String,
        change: serde_json::Value,
    }
    match serde_json::from_str::<Wire>(payload) {
        Ok(wire) if wire.origin == own => None,
        Ok(wire) => Some(serde_json::from_value(wire.change).unwrap_or(Change::All)),
        Err(_) => Some(Change::All),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_reads_back_on_another_instance_and_is_skipped_by_its_sender() {
        for change in [
            Change::Keys,
            Change::User {
                user_id: "ada".into(),
            },
            Change::Limits {
                user_id: "ada".into(),
            },
            Change::Deployments,
            Change::Fallbacks,
            Change::PassthroughRoutes,
            Change::Scripts,
            Change::All,
        ] {
            let payload = encode_notice("instance-a", &change);
            assert_eq!(decode_notice(&payload, "instance-b"), Some(change));
            assert_eq!(decode_notice(&payload, "instance-a"), None);
        }
    }

    #[test]
    fn the_payload_names_the_change_and_its_origin() {
        let payload = encode_notice(
            "a",
            &Change::User {
                user_id: "ada".into(),
            },
        );
        assert_eq!(
            payload,
            r#"{"change":{"kind":"user","user_id":"ada"},"origin":"a"}"#
        );
    }

    #[test]
    fn a_change_too_long_for_notify_travels_as_all() {
        let change = Change::Limits {
            user_id: "u".repeat(10_000),
        };
        let payload = encode_notice("a", &change);
        assert!(payload.len() < 8000);
        assert_eq!(decode_notice(&payload, "b"), Some(Change::All));
    }

    #[test]
    fn an_unreadable_payload_means_anything_may_have_changed() {
        for payload in [
            "not json",
            r#"{"origin":"a","change":{"kind":"someday"}}"#,
            r#"{"change":{"kind":"keys"}}"#,
        ] {
            assert_eq!(decode_notice(payload, "b"), Some(Change::All), "{payload}");
        }
    }

    #[test]
    fn each_copy_follows_the_changes_that_touch_it() {
        let user = Change::User {
            user_id: "u".into(),
        };
        assert!(Change::Keys.touches_keys() && !Change::Keys.touches_routes());
        assert!(user.touches_keys() && !user.touches_routes());
        assert!(!Change::Deployments.touches_keys() && Change::Deployments.touches_routes());
        assert!(!Change::Fallbacks.touches_keys() && Change::Fallbacks.touches_routes());
        assert!(Change::All.touches_keys() && Change::All.touches_routes());
        assert!(Change::PassthroughRoutes.touches_passthrough());
        assert!(!Change::PassthroughRoutes.touches_routes() && !Change::Keys.touches_passthrough());
        assert!(Change::All.touches_passthrough());
    }
}
