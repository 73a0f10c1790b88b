//! Async jobs and their artifacts. A job is claimed by one instance under a lease
//! (`lease_owner`, `lease_until`) renewed while it runs; a job whose lease ran out is
//! claimed again. `upstream` remembers where a job was submitted (a ComfyUI prompt id) so
//! a restarted instance can re-attach to it. A finished job's webhook is an outbox entry:
//! `webhook_status` `pending`, due at `webhook_next_at`, claimed by one instance at a
//! time. An artifact's bytes are in `data` up to `jobs.inline_artifact_bytes`, else in
//! the file at `path`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Jobs::Table)
                    .if_not_exists()
                    .col(string(Jobs::Id).primary_key())
                    .col(string(Jobs::UserId))
                    .col(string(Jobs::KeyId))
                    .col(string(Jobs::Kind))
                    .col(string(Jobs::Model))
                    .col(string(Jobs::Status))
                    .col(double_null(Jobs::Progress))
                    .col(text(Jobs::Request))
                    .col(text_null(Jobs::Result))
                    .col(text_null(Jobs::Error))
                    .col(text_null(Jobs::WebhookUrl))
                    .col(string_null(Jobs::WebhookStatus))
                    .col(integer(Jobs::WebhookAttempts).default(0))
                    .col(big_integer_null(Jobs::WebhookNextAt))
                    .col(text_null(Jobs::Upstream))
                    .col(integer(Jobs::Attempts).default(0))
                    .col(boolean(Jobs::CancelRequested).default(false))
                    .col(string_null(Jobs::LeaseOwner))
                    .col(big_integer_null(Jobs::LeaseUntil))
                    .col(big_integer(Jobs::RunAfter).default(0))
                    .col(big_integer(Jobs::CreatedAt))
                    .col(big_integer_null(Jobs::StartedAt))
                    .col(big_integer_null(Jobs::FinishedAt))
                    .col(big_integer(Jobs::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_status_created")
                    .table(Jobs::Table)
                    .col(Jobs::Status)
                    .col(Jobs::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_user_created")
                    .table(Jobs::Table)
                    .col(Jobs::UserId)
                    .col(Jobs::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_jobs_webhook_due")
                    .table(Jobs::Table)
                    .col(Jobs::WebhookStatus)
                    .col(Jobs::WebhookNextAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(JobArtifacts::Table)
                    .if_not_exists()
                    .col(string(JobArtifacts::JobId))
                    .col(integer(JobArtifacts::N))
                    .col(string(JobArtifacts::ContentType))
                    .col(big_integer(JobArtifacts::Size))
                    .col(blob_null(JobArtifacts::Data))
                    .col(text_null(JobArtifacts::Path))
                    .col(big_integer(JobArtifacts::CreatedAt))
                    .primary_key(
                        Index::create()
                            .col(JobArtifacts::JobId)
                            .col(JobArtifacts::N),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_job_artifacts_created")
                    .table(JobArtifacts::Table)
                    .col(JobArtifacts::CreatedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(JobArtifacts::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Jobs::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Jobs {
    Table,
    Id,
    UserId,
    KeyId,
    Kind,
    Model,
    Status,
    Progress,
    Request,
    Result,
    Error,
    WebhookUrl,
    WebhookStatus,
    WebhookAttempts,
    WebhookNextAt,
    Upstream,
    Attempts,
    CancelRequested,
    LeaseOwner,
    LeaseUntil,
    RunAfter,
    CreatedAt,
    StartedAt,
    FinishedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum JobArtifacts {
    Table,
    JobId,
    N,
    ContentType,
    Size,
    Data,
    Path,
    CreatedAt,
}
