use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "jobs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: String,
    pub key_id: String,
    pub kind: String,
    pub model: String,
    pub status: String,
    pub progress: Option<f64>,
    #[sea_orm(column_type = "Text")]
    pub request: String,
    #[sea_orm(column_type = "Text", nullable)]
    pub result: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
    #[sea_orm(column_type = "Text", nullable)]
    pub webhook_url: Option<String>,
    pub webhook_status: Option<String>,
    pub webhook_attempts: i32,
    pub webhook_next_at: Option<i64>,
    #[sea_orm(column_type = "Text", nullable)]
    pub upstream: Option<String>,
    pub attempts: i32,
    pub cancel_requested: bool,
    pub lease_owner: Option<String>,
    pub lease_until: Option<i64>,
    pub run_after: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub updated_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
