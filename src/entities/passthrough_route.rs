use sea_orm::entity::prelude::*;

/// A passthrough route added through `/admin/routes`. `spec` is its JSON without the
/// injected headers' values; those are one JSON object sealed with the master key.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "passthrough_routes")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    #[sea_orm(unique)]
    pub prefix: String,
    #[sea_orm(column_type = "Text")]
    pub spec: String,
    /// Id of the master key that sealed `inject_ciphertext`.
    pub inject_key_id: Option<String>,
    /// AES-256-GCM sealed JSON object header → value (hex); none when there are none.
    #[sea_orm(column_type = "Text", nullable)]
    pub inject_ciphertext: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
