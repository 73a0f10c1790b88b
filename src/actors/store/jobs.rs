//! Async jobs: created `queued`, claimed by one instance under a lease (on PostgreSQL
//! with `FOR UPDATE SKIP LOCKED`, so two instances never take the same job), kept alive by
//! renewing the lease, finished with their artifacts in one transaction only while the
//! lease is still held. Artifacts are blobs up to a size, files beyond it.

use std::path::{Path, PathBuf};

use actix::prelude::*;
use actix_web::web::Bytes;
use sea_orm::sea_query::{Expr, ExprTrait, LockBehavior, LockType, Query};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DbBackend, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, Set, TransactionTrait,
};

use super::{
    Artifact, CancelJob, ClaimJob, ClaimWebhook, CountJobs, CreateJob, FinishJob, GetArtifact,
    GetJob, ListJobs, PurgeJobs, ReleaseOrphanJobs, RenewJobLeases, RequeueJob, StoreActor,
    StoreError, UpdateJob, WebhookAttempted, WebhookOutcome, begin_write,
};

/// A webhook still to be delivered.
const WEBHOOK_PENDING: &str = "pending";
use crate::domain::jobs::{ArtifactMeta, JobError, JobKind, JobRecord, JobStatus, Submitted};
use crate::domain::now_ms;
use crate::entities::{job, job_artifact};

fn to_record(m: job::Model, artifacts: Vec<ArtifactMeta>) -> JobRecord {
    let json = |s: &Option<String>| s.as_deref().and_then(|s| serde_json::from_str(s).ok());
    JobRecord {
        kind: JobKind::parse(&m.kind).unwrap_or(JobKind::ChatCompletion),
        status: JobStatus::parse(&m.status).unwrap_or(JobStatus::Failed),
        request: serde_json::from_str(&m.request).unwrap_or_default(),
        result: json(&m.result),
        error: m
            .error
            .as_deref()
            .and_then(|s| serde_json::from_str::<JobError>(s).ok()),
        submitted: m
            .upstream
            .as_deref()
            .and_then(|s| serde_json::from_str::<Submitted>(s).ok()),
        id: m.id,
        user_id: m.user_id,
        key_id: m.key_id,
        model: m.model,
        progress: m.progress,
        webhook_url: m.webhook_url,
        webhook_status: m.webhook_status,
        webhook_attempts: m.webhook_attempts,
        attempts: m.attempts,
        cancel_requested: m.cancel_requested,
        created_at: m.created_at,
        started_at: m.started_at,
        finished_at: m.finished_at,
        artifacts,
    }
}

async fn artifacts_of(
    db: &impl sea_orm::ConnectionTrait,
    job_id: &str,
) -> Result<Vec<ArtifactMeta>, StoreError> {
    let rows = job_artifact::Entity::find()
        .select_only()
        .columns([
            job_artifact::Column::N,
            job_artifact::Column::ContentType,
            job_artifact::Column::Size,
        ])
        .filter(job_artifact::Column::JobId.eq(job_id))
        .order_by_asc(job_artifact::Column::N)
        .into_tuple::<(i32, String, i64)>()
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(index, content_type, size)| ArtifactMeta {
            index,
            content_type,
            size,
        })
        .collect())
}

async fn record(
    db: &impl sea_orm::ConnectionTrait,
    m: job::Model,
) -> Result<JobRecord, StoreError> {
    let artifacts = artifacts_of(db, &m.id).await?;
    Ok(to_record(m, artifacts))
}

fn owned_by(id: &str, owner: &str) -> Condition {
    Condition::all()
        .add(job::Column::Id.eq(id))
        .add(job::Column::LeaseOwner.eq(owner))
        .add(job::Column::Status.eq(JobStatus::Running.as_str()))
}

/// The file an artifact too large for the database is kept in.
fn artifact_file(dir: &Path, job_id: &str, index: usize) -> PathBuf {
    dir.join(format!("{job_id}-{index}"))
}

impl Handler<CreateJob> for StoreActor {
    type Result = ResponseFuture<Result<JobRecord, StoreError>>;

    fn handle(&mut self, msg: CreateJob, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let job = msg.0;
            let now = now_ms();
            let row = job::ActiveModel {
                id: Set(job.id),
                user_id: Set(job.user_id),
                key_id: Set(job.key_id),
                kind: Set(job.kind.as_str().to_string()),
                model: Set(job.model),
                status: Set(JobStatus::Queued.as_str().to_string()),
                progress: Set(None),
                request: Set(job.request.to_string()),
                result: Set(None),
                error: Set(None),
                webhook_status: Set(job
                    .webhook_url
                    .as_ref()
                    .map(|_| WEBHOOK_PENDING.to_string())),
                webhook_url: Set(job.webhook_url),
                webhook_attempts: Set(0),
                webhook_next_at: Set(None),
                upstream: Set(None),
                attempts: Set(0),
                cancel_requested: Set(false),
                lease_owner: Set(None),
                lease_until: Set(None),
                run_after: Set(0),
                created_at: Set(now),
                started_at: Set(None),
                finished_at: Set(None),
                updated_at: Set(now),
            }
            .insert(&db)
            .await?;
            Ok(to_record(row, Vec::new()))
        })
    }
}

impl Handler<ClaimJob> for StoreActor {
    type Result = ResponseFuture<Result<Option<JobRecord>, StoreError>>;

    fn handle(&mut self, msg: ClaimJob, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let now = now_ms();
            let due = Condition::any()
                .add(
                    Condition::all()
                        .add(job::Column::Status.eq(JobStatus::Queued.as_str()))
                        .add(job::Column::RunAfter.lte(now)),
                )
                .add(
                    Condition::all()
                        .add(job::Column::Status.eq(JobStatus::Running.as_str()))
                        .add(job::Column::LeaseUntil.lt(now)),
                );
            let mut oldest = Query::select();
            oldest
                .column(job::Column::Id)
                .from(job::Entity)
                .cond_where(due)
                .order_by(job::Column::CreatedAt, sea_orm::Order::Asc)
                .order_by(job::Column::Id, sea_orm::Order::Asc);
            if !msg.saturated.is_empty() {
                oldest.and_where(job::Column::Model.is_not_in(msg.saturated));
            }
            let claim = job::Entity::update_many()
                .col_expr(
                    job::Column::Status,
                    Expr::value(JobStatus::Running.as_str()),
                )
                .col_expr(job::Column::LeaseOwner, Expr::value(msg.owner))
                .col_expr(
                    job::Column::LeaseUntil,
                    Expr::value(now + msg.lease_ms as i64),
                )
                .col_expr(
                    job::Column::Attempts,
                    Expr::col(job::Column::Attempts).add(1),
                )
                .col_expr(
                    job::Column::StartedAt,
                    Expr::col(job::Column::StartedAt).if_null(now),
                )
                .col_expr(job::Column::UpdatedAt, Expr::value(now));
            claim_one(&db, claim, oldest).await
        })
    }
}

/// Applies `update` to the first job row `first` selects, if any, and answers it: the
/// row is taken with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so two instances never
/// claim one row (SQLite has no row locks: its write transaction is the lock).
async fn claim_one(
    db: &sea_orm::DatabaseConnection,
    update: sea_orm::UpdateMany<job::Entity>,
    mut first: sea_orm::sea_query::SelectStatement,
) -> Result<Option<JobRecord>, StoreError> {
    first
        .limit(1)
        .lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
    let txn = begin_write(db).await?;
    let claimed = update
        .filter(Expr::col(job::Column::Id).in_subquery(first))
        .exec_with_returning(&txn)
        .await?;
    let found = match claimed.into_iter().next() {
        Some(m) => Some(record(&txn, m).await?),
        None => None,
    };
    txn.commit().await?;
    Ok(found)
}

impl Handler<ReleaseOrphanJobs> for StoreActor {
    type Result = ResponseFuture<Result<u64, StoreError>>;

    fn handle(&mut self, _: ReleaseOrphanJobs, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            if db.get_database_backend() != DbBackend::Sqlite {
                return Ok(0);
            }
            let released = job::Entity::update_many()
                .col_expr(job::Column::LeaseUntil, Expr::value(0i64))
                .filter(job::Column::Status.eq(JobStatus::Running.as_str()))
                .exec(&db)
                .await?;
            Ok(released.rows_affected)
        })
    }
}

impl Handler<RenewJobLeases> for StoreActor {
    type Result = ResponseFuture<Result<Vec<(String, bool)>, StoreError>>;

    fn handle(&mut self, msg: RenewJobLeases, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            if msg.ids.is_empty() {
                return Ok(Vec::new());
            }
            let now = now_ms();
            let held = job::Entity::update_many()
                .col_expr(
                    job::Column::LeaseUntil,
                    Expr::value(now + msg.lease_ms as i64),
                )
                .filter(job::Column::Id.is_in(msg.ids))
                .filter(job::Column::LeaseOwner.eq(msg.owner))
                .filter(job::Column::Status.eq(JobStatus::Running.as_str()))
                .exec_with_returning(&db)
                .await?;
            Ok(held
                .into_iter()
                .map(|m| (m.id, m.cancel_requested))
                .collect())
        })
    }
}

impl Handler<UpdateJob> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: UpdateJob, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let mut update = job::Entity::update_many()
                .col_expr(job::Column::UpdatedAt, Expr::value(now_ms()))
                .filter(owned_by(&msg.id, &msg.owner));
            if let Some(progress) = msg.progress {
                update = update.col_expr(job::Column::Progress, Expr::value(progress));
            }
            if let Some(submitted) = &msg.submitted {
                let text = serde_json::to_string(submitted).unwrap_or_default();
                update = update.col_expr(job::Column::Upstream, Expr::value(text));
            }
            update.exec(&db).await?;
            Ok(())
        })
    }
}

impl Handler<FinishJob> for StoreActor {
    type Result = ResponseFuture<Result<Option<JobRecord>, StoreError>>;

    fn handle(&mut self, msg: FinishJob, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let now = now_ms();
            // Large artifacts are written first, then named in the transaction; files of a
            // job that turns out not to be ours any more are removed again.
            let mut files = Vec::new();
            let mut rows = Vec::new();
            for (index, artifact) in msg.artifacts.iter().enumerate() {
                let size = artifact.bytes.len() as i64;
                let (data, path) = if artifact.bytes.len() <= msg.storage.inline_limit {
                    (Some(artifact.bytes.to_vec()), None)
                } else {
                    let path = artifact_file(&msg.storage.dir, &msg.id, index);
                    write_artifact(&path, &artifact.bytes).await?;
                    files.push(path.clone());
                    (None, Some(path.display().to_string()))
                };
                rows.push(job_artifact::ActiveModel {
                    job_id: Set(msg.id.clone()),
                    n: Set(index as i32),
                    content_type: Set(artifact.content_type.clone()),
                    size: Set(size),
                    data: Set(data),
                    path: Set(path),
                    created_at: Set(now),
                });
            }
            let txn = begin_write(&db).await?;
            let mut finish = job::Entity::update_many();
            if msg.status == JobStatus::Succeeded {
                finish = finish.col_expr(job::Column::Progress, Expr::value(1.0f64));
            }
            let finished = finish
                .col_expr(job::Column::Status, Expr::value(msg.status.as_str()))
                .col_expr(
                    job::Column::Result,
                    Expr::value(msg.result.as_ref().map(|r| r.to_string())),
                )
                .col_expr(
                    job::Column::Error,
                    Expr::value(
                        msg.error
                            .as_ref()
                            .and_then(|e| serde_json::to_string(e).ok()),
                    ),
                )
                .col_expr(job::Column::FinishedAt, Expr::value(now))
                .col_expr(job::Column::UpdatedAt, Expr::value(now))
                .col_expr(job::Column::LeaseUntil, Expr::value(Option::<i64>::None))
                // Its webhook (if any) is due now.
                .col_expr(job::Column::WebhookNextAt, Expr::value(now))
                .filter(owned_by(&msg.id, &msg.owner))
                .exec_with_returning(&txn)
                .await?;
            let Some(row) = finished.into_iter().next() else {
                txn.rollback().await?;
                for file in files {
                    let _ = tokio::fs::remove_file(file).await;
                }
                return Ok(None);
            };
            if !rows.is_empty() {
                job_artifact::Entity::insert_many(rows).exec(&txn).await?;
            }
            let found = record(&txn, row).await?;
            txn.commit().await?;
            Ok(Some(found))
        })
    }
}

async fn write_artifact(path: &Path, bytes: &Bytes) -> Result<(), StoreError> {
    let io = |e: std::io::Error| StoreError::Invalid {
        param: "jobs.artifact_dir".into(),
        message: format!("cannot write artifact {}: {e}", path.display()),
    };
    if let Some(dir) = path.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io)?;
    }
    tokio::fs::write(path, bytes).await.map_err(io)
}

impl Handler<RequeueJob> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: RequeueJob, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            job::Entity::update_many()
                .col_expr(job::Column::Status, Expr::value(JobStatus::Queued.as_str()))
                .col_expr(job::Column::LeaseOwner, Expr::value(Option::<String>::None))
                .col_expr(job::Column::LeaseUntil, Expr::value(Option::<i64>::None))
                .col_expr(job::Column::RunAfter, Expr::value(msg.run_after))
                .col_expr(job::Column::UpdatedAt, Expr::value(now_ms()))
                .filter(owned_by(&msg.id, &msg.owner))
                .exec(&db)
                .await?;
            Ok(())
        })
    }
}

impl Handler<GetJob> for StoreActor {
    type Result = ResponseFuture<Result<Option<JobRecord>, StoreError>>;

    fn handle(&mut self, msg: GetJob, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let mut query = job::Entity::find_by_id(msg.id);
            if let Some(user) = msg.user_id {
                query = query.filter(job::Column::UserId.eq(user));
            }
            match query.one(&db).await? {
                Some(m) => Ok(Some(record(&db, m).await?)),
                None => Ok(None),
            }
        })
    }
}

impl Handler<ListJobs> for StoreActor {
    type Result = ResponseFuture<Result<Vec<JobRecord>, StoreError>>;

    fn handle(&mut self, msg: ListJobs, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            // Ids are UUIDv7: newest first is id order.
            let mut query = job::Entity::find().order_by_desc(job::Column::Id);
            if let Some(user) = msg.user_id {
                query = query.filter(job::Column::UserId.eq(user));
            }
            if let Some(status) = msg.status {
                query = query.filter(job::Column::Status.eq(status.as_str()));
            }
            if let Some(model) = msg.model {
                query = query.filter(job::Column::Model.eq(model));
            }
            if let Some(kind) = msg.kind {
                query = query.filter(job::Column::Kind.eq(kind.as_str()));
            }
            if let Some(before) = msg.before {
                query = query.filter(job::Column::Id.lt(before));
            }
            let rows = query.limit(msg.limit).all(&db).await?;
            let mut out = Vec::with_capacity(rows.len());
            for m in rows {
                out.push(record(&db, m).await?);
            }
            Ok(out)
        })
    }
}

impl Handler<GetArtifact> for StoreActor {
    type Result = ResponseFuture<Result<Option<Artifact>, StoreError>>;

    fn handle(&mut self, msg: GetArtifact, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let mut owner = job::Entity::find_by_id(msg.job_id.clone());
            if let Some(user) = msg.user_id {
                owner = owner.filter(job::Column::UserId.eq(user));
            }
            if owner.count(&db).await? == 0 {
                return Ok(None);
            }
            let Some(row) = job_artifact::Entity::find_by_id((msg.job_id, msg.index))
                .one(&db)
                .await?
            else {
                return Ok(None);
            };
            let bytes = match (row.data, row.path) {
                (Some(data), _) => Bytes::from(data),
                (None, Some(path)) => match tokio::fs::read(&path).await {
                    Ok(bytes) => Bytes::from(bytes),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(StoreError::Invalid {
                            param: "jobs.artifact_dir".into(),
                            message: format!("cannot read artifact {path}: {e}"),
                        });
                    }
                },
                (None, None) => return Ok(None),
            };
            Ok(Some(Artifact {
                content_type: row.content_type,
                bytes,
            }))
        })
    }
}

impl Handler<CancelJob> for StoreActor {
    type Result = ResponseFuture<Result<Option<JobRecord>, StoreError>>;

    fn handle(&mut self, msg: CancelJob, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let now = now_ms();
            // Each change holds only if the job is still in the state it was read in (a
            // claim may move a queued job to running in between): then read it again.
            for _ in 0..3 {
                let mut query = job::Entity::find_by_id(msg.id.clone());
                if let Some(user) = &msg.user_id {
                    query = query.filter(job::Column::UserId.eq(user.clone()));
                }
                let Some(found) = query.one(&db).await? else {
                    return Ok(None);
                };
                let status = JobStatus::parse(&found.status).unwrap_or(JobStatus::Failed);
                let update = job::Entity::update_many()
                    .col_expr(job::Column::UpdatedAt, Expr::value(now))
                    .filter(job::Column::Id.eq(msg.id.clone()))
                    .filter(job::Column::Status.eq(status.as_str()));
                let update = match status {
                    JobStatus::Queued => {
                        let error = JobError::new("cancelled", "cancelled before it started");
                        update
                            .col_expr(
                                job::Column::Status,
                                Expr::value(JobStatus::Cancelled.as_str()),
                            )
                            .col_expr(
                                job::Column::Error,
                                Expr::value(serde_json::to_string(&error).ok()),
                            )
                            .col_expr(job::Column::FinishedAt, Expr::value(now))
                    }
                    JobStatus::Running => {
                        update.col_expr(job::Column::CancelRequested, Expr::value(true))
                    }
                    _ => return Ok(Some(record(&db, found).await?)),
                };
                if let Some(changed) = update.exec_with_returning(&db).await?.into_iter().next() {
                    return Ok(Some(record(&db, changed).await?));
                }
            }
            Err(StoreError::Conflict(format!(
                "job `{}` changed while it was being cancelled; try again",
                msg.id
            )))
        })
    }
}

impl Handler<ClaimWebhook> for StoreActor {
    type Result = ResponseFuture<Result<Option<JobRecord>, StoreError>>;

    fn handle(&mut self, msg: ClaimWebhook, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let now = now_ms();
            let mut due = Query::select();
            due.column(job::Column::Id)
                .from(job::Entity)
                .and_where(job::Column::WebhookStatus.eq(WEBHOOK_PENDING))
                .and_where(job::Column::WebhookNextAt.lte(now))
                .order_by(job::Column::WebhookNextAt, sea_orm::Order::Asc);
            let claim = job::Entity::update_many()
                .col_expr(
                    job::Column::WebhookNextAt,
                    Expr::value(now + msg.lease_ms as i64),
                )
                .col_expr(
                    job::Column::WebhookAttempts,
                    Expr::col(job::Column::WebhookAttempts).add(1),
                );
            claim_one(&db, claim, due).await
        })
    }
}

impl Handler<WebhookAttempted> for StoreActor {
    type Result = ResponseFuture<Result<(), StoreError>>;

    fn handle(&mut self, msg: WebhookAttempted, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let (status, next_at) = match msg.outcome {
                WebhookOutcome::Delivered => ("delivered", None),
                WebhookOutcome::GaveUp => ("failed", None),
                WebhookOutcome::RetryAt(at) => (WEBHOOK_PENDING, Some(at)),
            };
            job::Entity::update_many()
                .col_expr(job::Column::WebhookStatus, Expr::value(status))
                .col_expr(job::Column::WebhookNextAt, Expr::value(next_at))
                .filter(job::Column::Id.eq(msg.id))
                .exec(&db)
                .await?;
            Ok(())
        })
    }
}

impl Handler<PurgeJobs> for StoreActor {
    type Result = ResponseFuture<Result<u64, StoreError>>;

    fn handle(&mut self, msg: PurgeJobs, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let old: Vec<String> = job::Entity::find()
                .select_only()
                .column(job::Column::Id)
                .filter(job::Column::FinishedAt.lt(msg.finished_before))
                .limit(super::PURGE_BATCH)
                .into_tuple()
                .all(&db)
                .await?;
            if old.is_empty() {
                return Ok(0);
            }
            let files: Vec<Option<String>> = job_artifact::Entity::find()
                .select_only()
                .column(job_artifact::Column::Path)
                .filter(job_artifact::Column::JobId.is_in(old.clone()))
                .into_tuple()
                .all(&db)
                .await?;
            let txn = db.begin().await?;
            job_artifact::Entity::delete_many()
                .filter(job_artifact::Column::JobId.is_in(old.clone()))
                .exec(&txn)
                .await?;
            let gone = job::Entity::delete_many()
                .filter(job::Column::Id.is_in(old))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            for path in files.into_iter().flatten() {
                let _ = tokio::fs::remove_file(path).await;
            }
            Ok(gone.rows_affected)
        })
    }
}

impl Handler<CountJobs> for StoreActor {
    type Result = ResponseFuture<Result<Vec<(JobStatus, i64)>, StoreError>>;

    fn handle(&mut self, _: CountJobs, _: &mut Self::Context) -> Self::Result {
        self.run(move |db, _| async move {
            let rows: Vec<(String, i64)> = job::Entity::find()
                .select_only()
                .column(job::Column::Status)
                .column_as(job::Column::Id.count(), "n")
                .group_by(job::Column::Status)
                .into_tuple()
                .all(&db)
                .await?;
            Ok(rows
                .into_iter()
                .filter_map(|(s, n)| JobStatus::parse(&s).map(|s| (s, n)))
                .collect())
        })
    }
}
