//! MCP servers and tool sessions. `mcp_servers`: one row per registered server, its
//! transport (`stdio`: `command` and `args`, JSON; `http`: `url`), its `secrets` (a JSON
//! map, sealed with the master key as deployments' API keys are), its tool policies (JSON
//! object tool → `auto`|`confirm`|`block`) and their `policy_version`. `tool_sessions`:
//! tool calls waiting for a person's approval, and the approvals an `/mcp` client has yet
//! to use (`approved`, JSON array of call ids), until `expires_at`.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(McpServers::Table)
                    .if_not_exists()
                    .col(string(McpServers::Name).primary_key())
                    .col(string(McpServers::Transport))
                    .col(text_null(McpServers::Command))
                    .col(text(McpServers::Args).default("[]"))
                    .col(text_null(McpServers::Url))
                    .col(string_null(McpServers::SecretsKeyId))
                    .col(text_null(McpServers::SecretsCiphertext))
                    .col(text(McpServers::Policies).default("{}"))
                    .col(string(McpServers::DefaultPolicy))
                    .col(big_integer(McpServers::PolicyVersion).default(0))
                    .col(integer(McpServers::MaxConcurrency))
                    .col(big_integer(McpServers::CallTimeoutMs))
                    .col(big_integer(McpServers::CreatedAt))
                    .col(big_integer(McpServers::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(ToolSessions::Table)
                    .if_not_exists()
                    .col(string(ToolSessions::Id).primary_key())
                    .col(string(ToolSessions::UserId))
                    .col(string(ToolSessions::KeyId))
                    .col(string(ToolSessions::Kind))
                    .col(string(ToolSessions::Model))
                    .col(string(ToolSessions::Status))
                    .col(boolean(ToolSessions::Stream).default(false))
                    .col(integer(ToolSessions::Step).default(0))
                    .col(text(ToolSessions::Body))
                    .col(text(ToolSessions::Outputs))
                    .col(text(ToolSessions::Pending))
                    .col(text(ToolSessions::Approved))
                    .col(big_integer(ToolSessions::CreatedAt))
                    .col(big_integer(ToolSessions::ExpiresAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tool_sessions_user_status_created")
                    .table(ToolSessions::Table)
                    .col(ToolSessions::UserId)
                    .col(ToolSessions::Status)
                    .col(ToolSessions::CreatedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_tool_sessions_expires")
                    .table(ToolSessions::Table)
                    .col(ToolSessions::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ToolSessions::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(McpServers::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum McpServers {
    Table,
    Name,
    Transport,
    Command,
    Args,
    Url,
    SecretsKeyId,
    SecretsCiphertext,
    Policies,
    DefaultPolicy,
    PolicyVersion,
    MaxConcurrency,
    CallTimeoutMs,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ToolSessions {
    Table,
    Id,
    UserId,
    KeyId,
    Kind,
    Model,
    Status,
    Stream,
    Step,
    Body,
    Outputs,
    Pending,
    Approved,
    CreatedAt,
    ExpiresAt,
}
