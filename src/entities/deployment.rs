use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "deployments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub model_id: String,
    pub vendor_type: String,
    pub base_url: Option<String>,
    pub upstream_model: Option<String>,
    /// AES-256-GCM sealed upstream API key (hex of nonce || ciphertext || tag).
    pub api_key_ciphertext: Option<String>,
    /// Id of the master key that sealed `api_key_ciphertext`.
    pub api_key_key_id: Option<String>,
    pub weight: i32,
    pub priority: i32,
    pub price_input_per_mtok: Option<f64>,
    pub price_output_per_mtok: Option<f64>,
    pub connect_timeout_ms: Option<i64>,
    pub request_timeout_ms: Option<i64>,
    pub max_concurrency: Option<i32>,
    pub request_script: Option<String>,
    pub response_script: Option<String>,
    pub workflow: Option<String>,
    pub mcp_servers: Option<String>,
    pub enabled: bool,
    pub idle_timeout_ms: Option<i64>,
    /// JSON of `domain::breaker::BreakerConfig`; `None` means the defaults.
    pub breaker: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
