use sea_orm::entity::prelude::*;

/// A registered MCP server. Its `secrets` map is JSON sealed with the master key.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "mcp_servers")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// `stdio` or `http`.
    pub transport: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub command: Option<String>,
    /// JSON array of strings.
    #[sea_orm(column_type = "Text")]
    pub args: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub url: Option<String>,
    /// Id of the master key that sealed `secrets_ciphertext`.
    pub secrets_key_id: Option<String>,
    /// AES-256-GCM sealed JSON object of the secrets (hex); none when there are none.
    #[sea_orm(column_type = "Text", nullable)]
    pub secrets_ciphertext: Option<String>,
    /// JSON object: tool → `auto`|`confirm`|`block`.
    #[sea_orm(column_type = "Text")]
    pub policies: String,
    pub default_policy: String,
    pub policy_version: i64,
    pub max_concurrency: i32,
    pub call_timeout_ms: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
