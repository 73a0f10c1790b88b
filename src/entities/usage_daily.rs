//! `usage_daily`: `usage_hourly`'s columns per UTC day (`day` instead of `hour`), so a
//! summary reads whole days from one row per (day, user, key, model). Maintained by the
//! usage writer in the rows' own transaction.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_daily")]
pub struct Model {
    /// Start of the UTC day, Unix milliseconds.
    #[sea_orm(primary_key, auto_increment = false)]
    pub day: i64,
    #[sea_orm(primary_key, auto_increment = false)]
    pub user_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub key_id: String,
    #[sea_orm(primary_key, auto_increment = false)]
    pub model: String,
    pub requests: i64,
    /// Rows with a status of 400 or more.
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost_micros: i64,
    pub latency_ms_sum: i64,
    /// Requests per latency bucket (`LATENCY_BOUNDS_MS`, inclusive upper bounds).
    pub latency_le_1: i64,
    pub latency_le_2: i64,
    pub latency_le_5: i64,
    pub latency_le_10: i64,
    pub latency_le_20: i64,
    pub latency_le_50: i64,
    pub latency_le_100: i64,
    pub latency_le_200: i64,
    pub latency_le_500: i64,
    pub latency_le_1000: i64,
    pub latency_le_2000: i64,
    pub latency_le_5000: i64,
    pub latency_le_10000: i64,
    pub latency_le_20000: i64,
    pub latency_le_50000: i64,
    pub latency_le_100000: i64,
    pub latency_over_100000: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::Iterable;

    #[test]
    fn daily_rollups_have_the_hourly_columns_but_their_start() {
        let names = |columns: Vec<&'static str>| columns[1..].to_vec();
        let daily: Vec<&str> = Column::iter().map(|c| c.as_str()).collect();
        let hourly: Vec<&str> = crate::entities::usage_hourly::Column::iter()
            .map(|c| c.as_str())
            .collect();
        assert_eq!((daily[0], hourly[0]), ("day", "hour"));
        assert_eq!(names(daily), names(hourly));
    }
}
