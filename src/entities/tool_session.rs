use sea_orm::entity::prelude::*;

/// A tool session: calls waiting for approval, or approvals not yet used.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "tool_sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: String,
    pub key_id: String,
    /// `openai_chat`, `anthropic_chat` or `mcp`.
    pub kind: String,
    pub model: String,
    /// `pending`, `approved` or `done`.
    pub status: String,
    pub stream: bool,
    pub step: i32,
    /// JSON: the request body in the client's dialect.
    #[sea_orm(column_type = "Text")]
    pub body: String,
    /// JSON array of `ToolOutput`s.
    #[sea_orm(column_type = "Text")]
    pub outputs: String,
    /// JSON array of `PendingCall`s.
    #[sea_orm(column_type = "Text")]
    pub pending: String,
    /// JSON array of approved call ids.
    #[sea_orm(column_type = "Text")]
    pub approved: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
