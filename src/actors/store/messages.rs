//! The messages `StoreActor` answers, one per verb.

use actix::Message;

use super::StoreError;
use crate::config::{ModelSeed, Secret};
use crate::domain::deployment::DeploymentPatch;
use crate::domain::jobs::JobRecord;
use crate::domain::records::{
    Actor, ApiKeyInfo, AuditEntry, Deployment, DeploymentWithSecret, KeyGrant, Role, User,
};
use crate::domain::usage::UsageRecord;
use crate::domain::usage_report::{
    CallerUsage, GroupBy, RollupFilter, SummaryRow, UsageCursor, UsageFilter, UsagePage, UserSpend,
};

/// From the HTTP edge, fire-and-forget: buffer one usage row for the next batch.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordUsage(pub UsageRecord);

/// Write every buffered usage row now; answers once each is in the database or in the
/// spill file (within about `usage_spill_after_ms` when the database is down).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushUsage;

/// At start: move the usage spill file (if any) into the database; answers the rows moved.
#[derive(Message)]
#[rtype(result = "Result<u64, super::SpillError>")]
pub struct ReplayUsageSpill;

/// At start, before the copies of stored data load: answers once the change listener
/// listens (PostgreSQL), so every change committed after the copies load reaches them; or
/// after `within`, when the listener keeps trying and announces `All` once it listens.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AwaitListening {
    pub within: std::time::Duration,
}

/// At shutdown: stop listening for other instances' changes; answers once stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopChangeListener;

/// Readiness probe: answers `Ok` when the database answers.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct Ping;

/// From the auth extractor on a cache miss: what the key with this SHA-256 (hex) grants,
/// or `None` for an unknown or revoked key.
#[derive(Message)]
#[rtype(result = "Result<Option<KeyGrant>, StoreError>")]
pub enum LookupKey {
    /// By the hex SHA-256 of the key (a request's key).
    Hash(String),
    /// By the key's id (a job running for the key that submitted it).
    Id(String),
}

/// At startup: make sure the bootstrap admin key exists and revoke the bootstrap keys it
/// replaces. Answers whether it was created.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct EnsureAdminKey {
    pub key: Secret,
}

/// At startup: whether any admin user holds a live key.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct HasAdminKey;

/// At startup: create the built-in `mock` model on a fresh database, and each configured
/// seed whose `model_id` has no deployment yet. Answers how many were created.
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct SeedDeployments {
    pub seeds: Vec<ModelSeed>,
}

#[derive(Debug, Clone, Default)]
pub struct UserFields {
    pub name: Option<Option<String>>,
    pub role: Option<Role>,
    pub rpm_limit: Option<Option<i64>>,
    pub tpm_limit: Option<Option<i64>>,
    pub token_quota: Option<Option<i64>>,
    pub budget_usd: Option<Option<f64>>,
    pub disabled: Option<bool>,
}

/// Create a user; 409 if the id is taken.
#[derive(Message)]
#[rtype(result = "Result<User, StoreError>")]
pub struct CreateUser {
    pub user_id: String,
    pub fields: UserFields,
    pub actor: Actor,
}

#[derive(Message)]
#[rtype(result = "Result<Vec<User>, StoreError>")]
pub struct ListUsers;

#[derive(Message)]
#[rtype(result = "Result<User, StoreError>")]
pub struct GetUser {
    pub user_id: String,
}

/// Change the given fields of a user; with `create_if_absent`, an unknown id is created.
#[derive(Message)]
#[rtype(result = "Result<User, StoreError>")]
pub struct UpdateUser {
    pub user_id: String,
    pub fields: UserFields,
    pub create_if_absent: bool,
    pub actor: Actor,
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub user_id: String,
    pub name: Option<String>,
    pub models: Option<Vec<String>>,
    pub topics: Option<Vec<String>>,
    pub rpm_limit: Option<i64>,
    pub expires_at: Option<i64>,
}

/// Create an API key; answers its record and the secret, which exists nowhere else.
#[derive(Message)]
#[rtype(result = "Result<(ApiKeyInfo, Secret), StoreError>")]
pub struct CreateKey {
    pub key: NewKey,
    pub actor: Actor,
}

#[derive(Message)]
#[rtype(result = "Result<Vec<ApiKeyInfo>, StoreError>")]
pub struct ListKeys {
    pub user_id: Option<String>,
}

/// Revoke a key; announces `Keys`, so the key is refused once this answers.
#[derive(Message)]
#[rtype(result = "Result<ApiKeyInfo, StoreError>")]
pub struct RevokeKey {
    pub id: String,
    pub actor: Actor,
}

#[derive(Message)]
#[rtype(result = "Result<Deployment, StoreError>")]
pub struct CreateDeployment {
    /// The body: merged onto `{}`.
    pub patch: DeploymentPatch,
    pub actor: Actor,
}

#[derive(Message)]
#[rtype(result = "Result<Vec<Deployment>, StoreError>")]
pub struct ListDeployments;

#[derive(Message)]
#[rtype(result = "Result<Deployment, StoreError>")]
pub struct UpdateDeployment {
    pub id: String,
    /// The body: merged onto the current configuration (RFC 7396).
    pub patch: DeploymentPatch,
    pub actor: Actor,
}

#[derive(Message)]
#[rtype(result = "Result<Deployment, StoreError>")]
pub struct DeleteDeployment {
    pub id: String,
    pub actor: Actor,
}

/// From the router: every enabled deployment with its upstream key opened.
#[derive(Message)]
#[rtype(result = "Result<Vec<DeploymentWithSecret>, StoreError>")]
pub struct LoadDeployments;

#[derive(Message)]
#[rtype(result = "Result<Vec<AuditEntry>, StoreError>")]
pub struct ListAudit {
    pub limit: u64,
}

/// Replace the fallback chain of `model_id` (400 if it would close a cycle).
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, StoreError>")]
pub struct SetFallbacks {
    pub model_id: String,
    pub fallbacks: Vec<String>,
    pub actor: Actor,
}

/// From the router: every model's fallbacks, in order.
#[derive(Message)]
#[rtype(result = "Result<std::collections::HashMap<String, Vec<String>>, StoreError>")]
pub struct LoadFallbacks;

/// An audit row for an admin action that changes no table (e.g. forcing a breaker).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct AppendAudit {
    pub actor: Actor,
    pub action: &'static str,
    pub target_type: &'static str,
    pub target_id: String,
    pub details: serde_json::Value,
}

/// From `lowart rotate-master-key`: open every sealed value with the current master key
/// and seal it under `new_key`, in one transaction (audited). Answers how many.
#[derive(Message)]
#[rtype(result = "Result<usize, StoreError>")]
pub struct ResealSecrets {
    pub new_key: std::sync::Arc<crate::crypto::MasterKey>,
}

/// From the quota code: a user's tokens and cost over all time, summed from the hourly
/// rollups (so it includes every usage row written so far, and no buffered one).
#[derive(Message)]
#[rtype(result = "Result<UserSpend, StoreError>")]
pub struct GetUserSpend {
    pub user_id: String,
}

/// `GET /admin/usage`: the rows `filter` keeps, newest first, at most `limit`, strictly
/// older than `before` when given.
#[derive(Message)]
#[rtype(result = "Result<UsagePage, StoreError>")]
pub struct ListUsage {
    pub filter: UsageFilter,
    pub before: Option<UsageCursor>,
    pub limit: u64,
}

/// `GET /admin/usage/summary`: totals per group, from the hourly rollups only.
#[derive(Message)]
#[rtype(result = "Result<Vec<SummaryRow>, StoreError>")]
pub struct SummarizeUsage {
    pub group_by: GroupBy,
    pub filter: RollupFilter,
}

/// `GET /v1/usage`: a key holder's own totals (its user's and its key's), over all time
/// and over the UTC day holding `now` (Unix ms), from the hourly rollups.
#[derive(Message)]
#[rtype(result = "Result<CallerUsage, StoreError>")]
pub struct GetCallerUsage {
    pub user_id: String,
    pub key_id: String,
    pub now: i64,
}

// ---- Async jobs (`jobs.rs`) ----

/// A job to persist as `queued`.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: String,
    pub user_id: String,
    pub key_id: String,
    pub kind: crate::domain::jobs::JobKind,
    pub model: String,
    pub request: serde_json::Value,
    pub webhook_url: Option<String>,
}

#[derive(Message)]
#[rtype(result = "Result<JobRecord, StoreError>")]
pub struct CreateJob(pub NewJob);

/// Claims the oldest job this instance may run (queued and due, or running under a lease
/// that ran out) for `owner`, under a lease of `lease_ms`; jobs of `saturated` models are
/// left for later. On PostgreSQL the row is taken with `FOR UPDATE SKIP LOCKED`.
#[derive(Message)]
#[rtype(result = "Result<Option<JobRecord>, StoreError>")]
pub struct ClaimJob {
    pub owner: String,
    pub lease_ms: u64,
    pub saturated: Vec<String>,
}

/// At start on SQLite (one instance per database file): jobs left `running` by a process
/// that is gone may be claimed at once.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct ReleaseOrphanJobs;

/// Extends `owner`'s leases of `ids`; answers the jobs still held, each with whether its
/// cancellation was asked for.
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, bool)>, StoreError>")]
pub struct RenewJobLeases {
    pub owner: String,
    pub ids: Vec<String>,
    pub lease_ms: u64,
}

/// Progress of a running job (and where it was submitted), if `owner` still holds it.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct UpdateJob {
    pub id: String,
    pub owner: String,
    pub progress: Option<f64>,
    pub submitted: Option<crate::domain::jobs::Submitted>,
}

/// An artifact to store with a finished job.
pub struct NewArtifact {
    pub content_type: String,
    pub bytes: actix_web::web::Bytes,
}

/// Where artifacts go: the database up to `inline_limit` bytes, else files in `dir`.
#[derive(Debug, Clone)]
pub struct ArtifactStorage {
    pub inline_limit: usize,
    pub dir: std::path::PathBuf,
}

/// A job's final state, with its artifacts, if `owner` still holds it (answers whether it
/// did: a job another instance took over is not finished twice).
#[derive(Message)]
#[rtype(result = "Result<Option<JobRecord>, StoreError>")]
pub struct FinishJob {
    pub id: String,
    pub owner: String,
    pub status: crate::domain::jobs::JobStatus,
    pub result: Option<serde_json::Value>,
    pub error: Option<crate::domain::jobs::JobError>,
    pub artifacts: Vec<NewArtifact>,
    pub storage: ArtifactStorage,
}

/// Puts a job `owner` holds back in the queue, due at `run_after` (a graceful stop, a
/// rate limit to wait out).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct RequeueJob {
    pub id: String,
    pub owner: String,
    pub run_after: i64,
}

/// One job; with `user_id`, only that user's.
#[derive(Message)]
#[rtype(result = "Result<Option<JobRecord>, StoreError>")]
pub struct GetJob {
    pub id: String,
    pub user_id: Option<String>,
}

/// Jobs, newest first; filters optional; `before` is the last id of the previous page.
#[derive(Message, Default)]
#[rtype(result = "Result<Vec<JobRecord>, StoreError>")]
pub struct ListJobs {
    pub user_id: Option<String>,
    pub status: Option<crate::domain::jobs::JobStatus>,
    pub model: Option<String>,
    pub kind: Option<crate::domain::jobs::JobKind>,
    pub before: Option<String>,
    pub limit: u64,
}

/// A stored artifact's bytes (read from the database or its file).
pub struct Artifact {
    pub content_type: String,
    pub bytes: actix_web::web::Bytes,
}

#[derive(Message)]
#[rtype(result = "Result<Option<Artifact>, StoreError>")]
pub struct GetArtifact {
    pub job_id: String,
    pub index: i32,
    pub user_id: Option<String>,
}

/// Cancels a job: a queued one at once; a running one is marked for its instance to
/// stop. Answers the job after the change (`None`: no such job of this user).
#[derive(Message)]
#[rtype(result = "Result<Option<JobRecord>, StoreError>")]
pub struct CancelJob {
    pub id: String,
    pub user_id: Option<String>,
}

/// Claims the finished job whose webhook is due the longest (on PostgreSQL with `FOR
/// UPDATE SKIP LOCKED`): its next attempt moves `lease_ms` ahead, so no other instance
/// sends it meanwhile; `webhook_attempts` counts this one.
#[derive(Message)]
#[rtype(result = "Result<Option<JobRecord>, StoreError>")]
pub struct ClaimWebhook {
    pub lease_ms: u64,
}

/// How one webhook delivery went.
#[derive(Debug, Clone, Copy)]
pub enum WebhookOutcome {
    Delivered,
    /// No attempt left.
    GaveUp,
    /// Try again at this time (Unix ms).
    RetryAt(i64),
}

#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct WebhookAttempted {
    pub id: String,
    pub outcome: WebhookOutcome,
}

/// Jobs deleted by one `PurgeJobs` at most.
pub const PURGE_BATCH: u64 = 1000;

/// Deletes finished jobs (and their artifacts, files included) finished before
/// `finished_before`, at most `PURGE_BATCH`; answers how many jobs went.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct PurgeJobs {
    pub finished_before: i64,
}

/// Jobs per status, for `gateway_jobs{status}`.
#[derive(Message)]
#[rtype(result = "Result<Vec<(crate::domain::jobs::JobStatus, i64)>, StoreError>")]
pub struct CountJobs;

// ---- Agent bus (`bus.rs`) ----

/// Remembers that `group` works on `topic` (from now on, messages to the topic wait for
/// the group even while none of its members is connected).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct RegisterGroup {
    pub topic: String,
    pub group: String,
}

/// Persists `message` once for each group of its topic (answers the groups) before its
/// publish is acknowledged; on PostgreSQL the other instances are told (`NOTIFY`).
#[derive(Message)]
#[rtype(result = "Result<Vec<String>, StoreError>")]
pub struct PersistBusMessage {
    pub message: crate::domain::bus::BusMessage,
}

/// PostgreSQL: a fan-out message for the other instances' subscribers (in the `NOTIFY`
/// itself, or through `bus_fanout` when too large for one).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct RelayFanout {
    pub message: crate::domain::bus::BusMessage,
}

/// A fan-out message another instance left in `bus_fanout`.
#[derive(Message)]
#[rtype(result = "Result<Option<crate::domain::bus::BusMessage>, StoreError>")]
pub struct ReadFanout {
    pub id: String,
}

/// Claims up to `limit` due messages of `group` on `topic` for `owner`: each invisible
/// for `visibility_ms`, its `attempt` one more (on PostgreSQL with `FOR UPDATE SKIP
/// LOCKED`, so an instance never takes what another holds).
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::domain::bus::BusMessage>, StoreError>")]
pub struct ClaimBusMessages {
    pub topic: String,
    pub group: String,
    pub owner: String,
    pub limit: u64,
    pub visibility_ms: u64,
}

/// Done with a group message: it is deleted (answers whether it was there).
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct AckBusMessage {
    pub id: String,
    pub group: String,
}

/// A connection that held these group messages `(id, group)` is gone: they may be
/// delivered again now, to the other members (if `owner` still holds them).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct ReleaseBusMessages {
    pub owner: String,
    pub messages: Vec<(String, String)>,
}

/// Group messages waiting (or unacked), per topic.
#[derive(Message)]
#[rtype(result = "Result<Vec<(String, i64)>, StoreError>")]
pub struct PendingBusMessages;

/// Deletes `bus_fanout` rows older than `before` (the other instances have read them).
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct PurgeFanout {
    pub before: i64,
}

/// Where this instance's listener sends what other instances published on the bus.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FollowBus(pub actix::Recipient<crate::domain::bus::BusNotice>);

/// From `POST /admin/mcp/register`: stores a new MCP server (its `secrets` sealed), audited
/// (`mcp.register`), announced as `Change::McpServers`. A taken name is a `Conflict`.
#[derive(Message)]
#[rtype(result = "Result<crate::domain::mcp::McpServerSpec, StoreError>")]
pub struct RegisterMcpServer {
    pub spec: crate::domain::mcp::McpServerSpec,
    pub actor: Actor,
}

/// Every registered MCP server, by name, with its secrets opened (for the supervisor).
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::domain::mcp::McpServerSpec>, StoreError>")]
pub struct ListMcpServers;

/// From `DELETE /admin/mcp/{name}`: audited (`mcp.delete`), announced; `false` if absent.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct DeleteMcpServer {
    pub name: String,
    pub actor: Actor,
}

/// From `PUT /admin/mcp/{name}/tools/{tool}/policy`: sets one tool's policy and bumps the
/// server's `policy_version` (voiding approvals given under the old one); audited
/// (`mcp.policy`), announced. `None` if the server is absent.
#[derive(Message)]
#[rtype(result = "Result<Option<crate::domain::mcp::McpServerSpec>, StoreError>")]
pub struct SetToolPolicy {
    pub server: String,
    pub tool: String,
    pub policy: crate::domain::mcp::ToolPolicy,
    pub actor: Actor,
}

/// Stores a new tool session (status `pending`).
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct CreateToolSession(pub crate::domain::mcp::ToolSession);

/// How taking a session for `POST /v1/tools/confirm` went.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one reply per confirmation, moved once; a box would buy nothing"
)]
pub enum TakenSession {
    /// It was `pending` and is now `approved` with these ids: this caller runs it on.
    Taken(crate::domain::mcp::ToolSession),
    /// No such session for this user.
    NotFound,
    /// It was confirmed already (a session is confirmed once).
    AlreadyConfirmed,
    /// Its `expires_at` passed.
    Expired,
}

/// From `POST /v1/tools/confirm`: takes the user's pending session, in one conditional
/// update (`pending` → `approved`, `approved` := `approved_ids`), so two confirmations of
/// one session never both run it.
#[derive(Message)]
#[rtype(result = "Result<TakenSession, StoreError>")]
pub struct TakeToolSession {
    pub id: String,
    pub user_id: String,
    pub approved_ids: Vec<String>,
    pub now: i64,
}

/// A chat session's loop ran on: `done`.
#[derive(Message)]
#[rtype(result = "Result<(), StoreError>")]
pub struct FinishToolSession {
    pub id: String,
}

/// From `POST /mcp` `tools/call` of a `confirm` tool: uses one approval of the user's, if
/// an unexpired `approved` `/mcp` session holds an approved pending call with this digest
/// and policy version. The call's id leaves the session's `approved`; the session is
/// `done` when none is left. Answers whether an approval was used.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct UseApproval {
    pub user_id: String,
    pub digest: String,
    pub policy_version: i64,
    pub now: i64,
}

/// The user's unexpired `pending` sessions, newest first (at most `limit`).
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::domain::mcp::ToolSession>, StoreError>")]
pub struct ListToolSessions {
    pub user_id: String,
    pub now: i64,
    pub limit: u64,
}

/// Deletes sessions that expired before `before`; answers how many.
#[derive(Message)]
#[rtype(result = "Result<u64, StoreError>")]
pub struct PurgeToolSessions {
    pub before: i64,
}

/// From `POST /admin/routes`: stores a passthrough route (its `inject_headers` values
/// sealed), audited (`route.create`), announced as `Change::PassthroughRoutes`. A prefix
/// taken by another stored route is a `Conflict`.
#[derive(Message)]
#[rtype(result = "Result<crate::domain::passthrough::StoredRoute, StoreError>")]
pub struct CreatePassthroughRoute {
    pub spec: crate::domain::passthrough::RouteSpec,
    pub actor: Actor,
}

/// The stored passthrough routes with their `inject_headers` opened, by prefix: for the
/// passthrough table (and the admin list, which shows only the headers' names).
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::domain::passthrough::StoredRoute>, StoreError>")]
pub struct ListPassthroughRoutes;

/// From `PATCH /admin/routes/{id}`: an RFC 7396 merge patch onto the route, validated
/// (`upstream` moved with headers to inject needs `inject_headers` again), audited
/// (`route.update`), announced. `NotFound` if absent.
#[derive(Message)]
#[rtype(result = "Result<crate::domain::passthrough::StoredRoute, StoreError>")]
pub struct UpdatePassthroughRoute {
    pub id: String,
    pub patch: serde_json::Map<String, serde_json::Value>,
    pub actor: Actor,
}

/// From `DELETE /admin/routes/{id}`: audited (`route.delete`), announced; `false` if absent.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct DeletePassthroughRoute {
    pub id: String,
    pub actor: Actor,
}

/// From `POST /admin/scripts`: stores a new Rhai script (compiled by the caller first),
/// audited (`script.create`), announced as `Change::Scripts`. A taken name is a `Conflict`.
#[derive(Message)]
#[rtype(result = "Result<crate::domain::scripts::ScriptRecord, StoreError>")]
pub struct CreateScript {
    pub name: String,
    pub source: String,
    pub actor: Actor,
}

/// From `PUT /admin/scripts/{name}`: creates the script or replaces its source, audited
/// (`script.create` or `script.update`), announced. Answers the script and whether it is
/// new.
#[derive(Message)]
#[rtype(result = "Result<(crate::domain::scripts::ScriptRecord, bool), StoreError>")]
pub struct ReplaceScript {
    pub name: String,
    pub source: String,
    pub actor: Actor,
}

/// Every stored script, by name (for the script registry).
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::domain::scripts::ScriptRecord>, StoreError>")]
pub struct ListScripts;

/// From `DELETE /admin/scripts/{name}`: audited (`script.delete`), announced; `false` if
/// absent. A script a deployment names is a `Conflict` naming the deployments.
#[derive(Message)]
#[rtype(result = "Result<bool, StoreError>")]
pub struct DeleteScript {
    pub name: String,
    pub actor: Actor,
}
