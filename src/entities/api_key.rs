use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: String,
    pub name: Option<String>,
    /// SHA-256 of the key, hex.
    #[sea_orm(unique)]
    pub key_hash: String,
    /// The first characters of a generated key (`lw-` + 64 hex); `None` for any other key.
    pub prefix: Option<String>,
    /// JSON array of permitted model names; `None` means every model.
    pub models: Option<String>,
    pub topics: Option<String>,
    pub rpm_limit: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
    /// Registered from `security.admin_key` or generated at first start.
    pub bootstrap: bool,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
