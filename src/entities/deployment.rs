use sea_orm::entity::prelude::*;

/// A deployment: the columns that are queried, and the rest of its
/// `domain::deployment::DeploymentConfig` as JSON in `config`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "deployments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub model_id: String,
    pub vendor_type: String,
    pub enabled: bool,
    /// JSON object: every field of `DeploymentConfig` but `model_id`, `vendor_type` and
    /// `enabled`.
    #[sea_orm(column_type = "Text")]
    pub config: String,
    /// AES-256-GCM sealed upstream API key (hex of nonce || ciphertext || tag).
    pub api_key_ciphertext: Option<String>,
    /// Id of the master key that sealed `api_key_ciphertext`.
    pub api_key_key_id: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
