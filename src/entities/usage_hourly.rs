//! `usage_hourly`: per UTC hour, user, key and model, the sums of the usage rows and their
//! latency histogram (`domain::usage_rollup`). A row without a user or key rolls up under
//! `""`. Maintained by the usage writer in the rows' own transaction; `usage_daily` has the
//! same columns per UTC day.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_hourly")]
pub struct Model {
    /// Start of the hour, Unix milliseconds.
    #[sea_orm(primary_key, auto_increment = false)]
    pub hour: i64,
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

/// The latency bucket columns, fastest first, as `domain::usage_rollup` numbers them.
pub const LATENCY_COLUMNS: [Column; 17] = [
    Column::LatencyLe1,
    Column::LatencyLe2,
    Column::LatencyLe5,
    Column::LatencyLe10,
    Column::LatencyLe20,
    Column::LatencyLe50,
    Column::LatencyLe100,
    Column::LatencyLe200,
    Column::LatencyLe500,
    Column::LatencyLe1000,
    Column::LatencyLe2000,
    Column::LatencyLe5000,
    Column::LatencyLe10000,
    Column::LatencyLe20000,
    Column::LatencyLe50000,
    Column::LatencyLe100000,
    Column::LatencyOver100000,
];

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::usage_rollup::{LATENCY_BOUNDS_MS, LATENCY_BUCKETS};

    #[test]
    fn latency_columns_are_named_after_the_domain_bounds() {
        assert_eq!(LATENCY_COLUMNS.len(), LATENCY_BUCKETS);
        let mut names: Vec<String> = LATENCY_BOUNDS_MS
            .iter()
            .map(|b| format!("latency_le_{b}"))
            .collect();
        names.extend(
            LATENCY_BOUNDS_MS
                .last()
                .map(|b| format!("latency_over_{b}")),
        );
        let columns: Vec<String> = LATENCY_COLUMNS
            .iter()
            .map(|c| c.as_str().to_string())
            .collect();
        assert_eq!(columns, names);
    }
}
