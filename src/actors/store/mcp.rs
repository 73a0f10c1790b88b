//! MCP servers and tool sessions. A server row is its transport, its tool policies and
//! their `policy_version`, and its `secrets` map as JSON sealed with the master key (as
//! deployments seal their API keys), opened only for `ListMcpServers`. Server writes are
//! admin writes: audited and announced as `McpServers`. A tool session is taken for a
//! confirmation in one conditional update, and an `/mcp` approval is used once, in a
//! write transaction that holds the session's row.

use std::collections::BTreeMap;

use actix::prelude::*;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DbErr, EntityTrait, IntoActiveModel,
    ModelTrait, QueryFilter, QueryOrder, QuerySelect, SqlErr,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{
    CreateToolSession, DeleteMcpServer, FinishToolSession, ListMcpServers, ListToolSessions,
    PurgeToolSessions, RegisterMcpServer, SetToolPolicy, StoreActor, StoreError, TakeToolSession,
    TakenSession, UseApproval, audit, begin_write,
};
use crate::actors::feed::Change;
use crate::crypto::{MasterKey, Sealed};
use crate::domain::mcp::{
    McpServerSpec, McpTransport, PendingCall, SessionKind, SessionStatus, ToolPolicy, ToolSession,
};
use crate::domain::now_ms;
use crate::entities::{mcp_server, tool_session};

const TARGET_TYPE: &str = "mcp_server";

fn unreadable(what: &str, id: &str, why: impl std::fmt::Display) -> StoreError {
    StoreError::Db(DbErr::Type(format!("{what} `{id}`: {why}")))
}

fn to_json(value: &impl Serialize) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Db(DbErr::Json(e.to_string())))
}

/// A JSON column of a row, read back; a row that does not read is an error, never a value
/// silently defaulted.
fn from_json<T: DeserializeOwned>(what: &str, id: &str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| unreadable(what, id, e))
}

/// The row's `secrets`, opened with the master key (none stored: empty).
fn open_secrets(
    m: &mcp_server::Model,
    key: &MasterKey,
) -> Result<BTreeMap<String, String>, StoreError> {
    let Some(ciphertext) = &m.secrets_ciphertext else {
        return Ok(BTreeMap::new());
    };
    let sealed = Sealed {
        ciphertext_hex: ciphertext.clone(),
        key_id: m.secrets_key_id.clone().unwrap_or_default(),
    };
    let plain = key.open(&sealed).map_err(|_| {
        tracing::error!(mcp_server = %m.name, key_id = %sealed.key_id,
            "cannot open the MCP server's secrets with the current master key (rotated while running?); restart with the right key");
        StoreError::Crypto
    })?;
    from_json("mcp server", &m.name, &plain)
}

/// A row as the gateway sees it, with `secrets` (opened by the caller).
fn to_spec(
    m: &mcp_server::Model,
    secrets: BTreeMap<String, String>,
) -> Result<McpServerSpec, StoreError> {
    let transport = match (m.transport.as_str(), &m.command, &m.url) {
        ("stdio", Some(command), _) => McpTransport::Stdio {
            command: command.clone(),
            args: from_json("mcp server", &m.name, &m.args)?,
        },
        ("http", _, Some(url)) => McpTransport::Http { url: url.clone() },
        (other, _, _) => {
            return Err(unreadable(
                "mcp server",
                &m.name,
                format!("transport `{other}` without its fields"),
            ));
        }
    };
    let policy = |s: &str| {
        ToolPolicy::parse(s).ok_or_else(|| unreadable("mcp server", &m.name, "unknown policy"))
    };
    let policies: BTreeMap<String, String> = from_json("mcp server", &m.name, &m.policies)?;
    Ok(McpServerSpec {
        name: m.name.clone(),
        transport,
        secrets,
        policies: policies
            .iter()
            .map(|(tool, p)| Ok((tool.clone(), policy(p)?)))
            .collect::<Result<_, StoreError>>()?,
        default_policy: policy(&m.default_policy)?,
        policy_version: m.policy_version,
        max_concurrency: u32::try_from(m.max_concurrency).unwrap_or(1),
        call_timeout_ms: u64::try_from(m.call_timeout_ms).unwrap_or(0),
        created_at: m.created_at,
        updated_at: m.updated_at,
    })
}

/// A new row for `spec` (its secrets sealed), created and updated `now`.
fn new_server_row(
    spec: &McpServerSpec,
    key: &MasterKey,
    now: i64,
) -> Result<mcp_server::ActiveModel, StoreError> {
    let (transport, command, args, url) = match &spec.transport {
        McpTransport::Stdio { command, args } => {
            ("stdio", Some(command.clone()), to_json(args)?, None)
        }
        McpTransport::Http { url } => ("http", None, "[]".to_string(), Some(url.clone())),
    };
    let sealed = if spec.secrets.is_empty() {
        None
    } else {
        Some(key.seal(&to_json(&spec.secrets)?)?)
    };
    Ok(mcp_server::ActiveModel {
        name: Set(spec.name.clone()),
        transport: Set(transport.into()),
        command: Set(command),
        args: Set(args),
        url: Set(url),
        secrets_key_id: Set(sealed.as_ref().map(|s| s.key_id.clone())),
        secrets_ciphertext: Set(sealed.map(|s| s.ciphertext_hex)),
        policies: Set(to_json(&spec.policies)?),
        default_policy: Set(spec.default_policy.as_str().into()),
        policy_version: Set(spec.policy_version),
        max_concurrency: Set(i32::try_from(spec.max_concurrency).unwrap_or(i32::MAX)),
        call_timeout_ms: Set(i64::try_from(spec.call_timeout_ms).unwrap_or(i64::MAX)),
        created_at: Set(now),
        updated_at: Set(now),
    })
}

/// What the audit log keeps of a registration: everything but the secrets' values.
fn register_details(spec: &McpServerSpec) -> serde_json::Value {
    let mut details = match &spec.transport {
        McpTransport::Stdio { command, args } => {
            json!({"transport": "stdio", "command": command, "args": args})
        }
        McpTransport::Http { url } => json!({"transport": "http", "url": url}),
    };
    details["secrets"] = json!(spec.secrets.keys().collect::<Vec<_>>());
    details["default_policy"] = json!(spec.default_policy);
    details["policies"] = json!(spec.policies);
    details["max_concurrency"] = json!(spec.max_concurrency);
    details["call_timeout_ms"] = json!(spec.call_timeout_ms);
    details
}

impl Handler<RegisterMcpServer> for StoreActor {
    type Result = ResponseFuture<Result<McpServerSpec, StoreError>>;

    fn handle(&mut self, msg: RegisterMcpServer, _: &mut Self::Context) -> Self::Result {
        self.run_change(
            vec![Change::McpServers],
            move |db, key, changes| async move {
                let name = msg.spec.name.clone();
                let taken = || StoreError::Conflict(format!("MCP server `{name}` already exists"));
                let now = now_ms();
                let am = new_server_row(&msg.spec, &key, now)?;
                let txn = begin_write(&db).await?;
                if mcp_server::Entity::find_by_id(name.clone())
                    .one(&txn)
                    .await?
                    .is_some()
                {
                    return Err(taken());
                }
                // A concurrent registration of the name (PostgreSQL) fails on the key.
                am.insert(&txn).await.map_err(|e| match e.sql_err() {
                    Some(SqlErr::UniqueConstraintViolation(_)) => taken(),
                    _ => StoreError::Db(e),
                })?;
                let details = register_details(&msg.spec);
                audit::append(
                    &txn,
                    &msg.actor,
                    "mcp.register",
                    TARGET_TYPE,
                    &name,
                    details,
                )
                .await?;
                changes.commit(txn).await?;
                Ok(McpServerSpec {
                    created_at: now,
                    updated_at: now,
                    ..msg.spec
                })
            },
        )
    }
}

impl Handler<ListMcpServers> for StoreActor {
    type Result = ResponseFuture<Result<Vec<McpServerSpec>, StoreError>>;

    fn handle(&mut self, _: ListMcpServers, _: &mut Self::Context) -> Self::Result {
        self.run(|db, key| async move {
            let rows = mcp_server::Entity::find()
                .order_by_asc(mcp_server::Column::Name)
                .all(&db)
                .await?;
            // Never drop a server silently: an unopenable secret fails the whole load.
            rows.iter()
                .map(|row| to_spec(row, open_secrets(row, &key)?))
                .collect()
        })
    }
}

impl Handler<DeleteMcpServer> for StoreActor {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: DeleteMcpServer, _: &mut Self::Context) -> Self::Result {
        self.run_change(vec![Change::McpServers], move |db, _, changes| async move {
            let txn = begin_write(&db).await?;
            let Some(row) = mcp_server::Entity::find_by_id(msg.name.clone())
                .one(&txn)
                .await?
            else {
                return Ok(false);
            };
            let details = json!({"transport": row.transport});
            row.delete(&txn).await?;
            audit::append(
                &txn,
                &msg.actor,
                "mcp.delete",
                TARGET_TYPE,
                &msg.name,
                details,
            )
            .await?;
            changes.commit(txn).await?;
            Ok(true)
        })
    }
}

impl Handler<SetToolPolicy> for StoreActor {
    type Result = ResponseFuture<Result<Option<McpServerSpec>, StoreError>>;

    fn handle(&mut self, msg: SetToolPolicy, _: &mut Self::Context) -> Self::Result {
        self.run_change(
            vec![Change::McpServers],
            move |db, key, changes| async move {
                let txn = begin_write(&db).await?;
                // Held until commit (PostgreSQL), so two changes never both read one version.
                let Some(row) = mcp_server::Entity::find_by_id(msg.server.clone())
                    .lock_exclusive()
                    .one(&txn)
                    .await?
                else {
                    return Ok(None);
                };
                let secrets = open_secrets(&row, &key)?;
                let mut spec = to_spec(&row, secrets)?;
                spec.policies.insert(msg.tool.clone(), msg.policy);
                spec.policy_version += 1;
                spec.updated_at = now_ms();
                let mut am = row.into_active_model();
                am.policies = Set(to_json(&spec.policies)?);
                am.policy_version = Set(spec.policy_version);
                am.updated_at = Set(spec.updated_at);
                am.update(&txn).await?;
                let details = json!({
                    "tool": msg.tool,
                    "policy": msg.policy,
                    "policy_version": spec.policy_version,
                });
                audit::append(
                    &txn,
                    &msg.actor,
                    "mcp.policy",
                    TARGET_TYPE,
                    &msg.server,
                    details,
                )
                .await?;
                changes.commit(txn).await?;
                Ok(Some(spec))
            },
        )
    }
}

/// A session row as the gateway sees it.
fn to_session(m: tool_session::Model) -> Result<ToolSession, StoreError> {
    let id = m.id.as_str();
    Ok(ToolSession {
        kind: SessionKind::parse(&m.kind)
            .ok_or_else(|| unreadable("tool session", id, "unknown kind"))?,
        status: SessionStatus::parse(&m.status)
            .ok_or_else(|| unreadable("tool session", id, "unknown status"))?,
        body: from_json("tool session", id, &m.body)?,
        outputs: from_json("tool session", id, &m.outputs)?,
        pending: from_json("tool session", id, &m.pending)?,
        approved: from_json("tool session", id, &m.approved)?,
        step: u32::try_from(m.step).unwrap_or(0),
        stream: m.stream,
        model: m.model,
        key_id: m.key_id,
        user_id: m.user_id,
        created_at: m.created_at,
        expires_at: m.expires_at,
        id: m.id,
    })
}

impl Handler<CreateToolSession> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: CreateToolSession, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let s = msg.0;
            tool_session::ActiveModel {
                body: Set(to_json(&s.body)?),
                outputs: Set(to_json(&s.outputs)?),
                pending: Set(to_json(&s.pending)?),
                approved: Set(to_json(&s.approved)?),
                id: Set(s.id),
                user_id: Set(s.user_id),
                key_id: Set(s.key_id),
                kind: Set(s.kind.as_str().into()),
                model: Set(s.model),
                status: Set(SessionStatus::Pending.as_str().into()),
                stream: Set(s.stream),
                step: Set(i32::try_from(s.step).unwrap_or(i32::MAX)),
                created_at: Set(s.created_at),
                expires_at: Set(s.expires_at),
            }
            .insert(&db)
            .await?;
            Ok(())
        })
    }
}

impl Handler<TakeToolSession> for StoreActor {
    type Result = ResponseFuture<Result<TakenSession, StoreError>>;

    fn handle(&mut self, msg: TakeToolSession, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let approved = to_json(&msg.approved_ids)?;
            let txn = begin_write(&db).await?;
            let taken = tool_session::Entity::update_many()
                .col_expr(
                    tool_session::Column::Status,
                    Expr::value(SessionStatus::Approved.as_str()),
                )
                .col_expr(tool_session::Column::Approved, Expr::value(approved))
                .filter(tool_session::Column::Id.eq(msg.id.clone()))
                .filter(tool_session::Column::UserId.eq(msg.user_id.clone()))
                .filter(tool_session::Column::Status.eq(SessionStatus::Pending.as_str()))
                .filter(tool_session::Column::ExpiresAt.gt(msg.now))
                .exec(&txn)
                .await?;
            let row = tool_session::Entity::find_by_id(msg.id)
                .one(&txn)
                .await?
                .filter(|row| row.user_id == msg.user_id);
            txn.commit().await?;
            let Some(row) = row else {
                return Ok(TakenSession::NotFound);
            };
            Ok(if taken.rows_affected == 1 {
                TakenSession::Taken(to_session(row)?)
            } else if row.status != SessionStatus::Pending.as_str() {
                TakenSession::AlreadyConfirmed
            } else {
                TakenSession::Expired
            })
        })
    }
}

impl Handler<FinishToolSession> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: FinishToolSession, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            tool_session::Entity::update_many()
                .col_expr(
                    tool_session::Column::Status,
                    Expr::value(SessionStatus::Done.as_str()),
                )
                .filter(tool_session::Column::Id.eq(msg.id))
                .exec(&db)
                .await?;
            Ok(())
        })
    }
}

impl Handler<UseApproval> for StoreActor {
    type Result = ResponseFuture<Result<bool, StoreError>>;

    fn handle(&mut self, msg: UseApproval, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let txn = begin_write(&db).await?;
            // Held until commit (PostgreSQL): a concurrent use waits, then sees what is left.
            let rows = tool_session::Entity::find()
                .filter(tool_session::Column::UserId.eq(msg.user_id))
                .filter(tool_session::Column::Kind.eq(SessionKind::Mcp.as_str()))
                .filter(tool_session::Column::Status.eq(SessionStatus::Approved.as_str()))
                .filter(tool_session::Column::ExpiresAt.gt(msg.now))
                .order_by_asc(tool_session::Column::CreatedAt)
                .order_by_asc(tool_session::Column::Id)
                .lock_exclusive()
                .all(&txn)
                .await?;
            for row in rows {
                let pending: Vec<PendingCall> = from_json("tool session", &row.id, &row.pending)?;
                let mut approved: Vec<String> = from_json("tool session", &row.id, &row.approved)?;
                let matches = |id: &String| {
                    pending.iter().any(|call| {
                        call.id == *id
                            && call.digest == msg.digest
                            && call.policy_version == msg.policy_version
                    })
                };
                let Some(used) = approved.iter().position(matches) else {
                    continue;
                };
                approved.remove(used);
                let status = if approved.is_empty() {
                    SessionStatus::Done
                } else {
                    SessionStatus::Approved
                };
                let mut am = row.into_active_model();
                am.approved = Set(to_json(&approved)?);
                am.status = Set(status.as_str().into());
                am.update(&txn).await?;
                txn.commit().await?;
                return Ok(true);
            }
            Ok(false)
        })
    }
}

impl Handler<ListToolSessions> for StoreActor {
    type Result = ResponseFuture<Result<Vec<ToolSession>, StoreError>>;

    fn handle(&mut self, msg: ListToolSessions, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            tool_session::Entity::find()
                .filter(tool_session::Column::UserId.eq(msg.user_id))
                .filter(tool_session::Column::Status.eq(SessionStatus::Pending.as_str()))
                .filter(tool_session::Column::ExpiresAt.gt(msg.now))
                .order_by_desc(tool_session::Column::CreatedAt)
                .order_by_desc(tool_session::Column::Id)
                .limit(msg.limit)
                .all(&db)
                .await?
                .into_iter()
                .map(to_session)
                .collect()
        })
    }
}

impl Handler<PurgeToolSessions> for StoreActor {
    type Result = ResponseFuture<Result<u64, StoreError>>;

    fn handle(&mut self, msg: PurgeToolSessions, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let gone = tool_session::Entity::delete_many()
                .filter(tool_session::Column::ExpiresAt.lt(msg.before))
                .exec(&db)
                .await?;
            Ok(gone.rows_affected)
        })
    }
}
