use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "bus_messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub topic: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub grp: String,
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    pub sender: String,
    pub reply_to: Option<String>,
    pub attempt: i32,
    pub visible_at: i64,
    pub claimed_by: Option<String>,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
