use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "usage")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub request_id: String,
    pub user_id: Option<String>,
    pub key_id: Option<String>,
    pub model: String,
    pub deployment_id: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    /// Cost in micro-dollars (USD × 10⁶); `None` unless `cost_status` is `priced`.
    pub cost_micros: Option<i64>,
    /// `priced`, `unpriced` or `unknown` (no token counts).
    pub cost_status: String,
    /// HTTP status the client received.
    pub status: i32,
    pub error_class: Option<String>,
    pub latency_ms: i64,
    pub overhead_ms: f64,
    pub ttft_ms: Option<i64>,
    pub stream: bool,
    /// `reported`, `counted`, `partial` or `missing`.
    pub usage_source: String,
    pub created_at: i64,
    /// Upstream attempts behind this row (retries and fallbacks included).
    pub attempts: i32,
    /// Of `prompt_tokens`, how many were read from the vendor's prompt cache.
    pub cache_read_tokens: Option<i64>,
    /// Of `prompt_tokens`, how many were written to the vendor's prompt cache.
    pub cache_write_tokens: Option<i64>,
    /// Bytes of the request body a passthrough route sent upstream (null elsewhere).
    pub request_bytes: Option<i64>,
    /// Bytes of the answer's body a passthrough route relayed (null elsewhere).
    pub response_bytes: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
