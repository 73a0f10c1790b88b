//! Usage rollups: what a batch of usage rows adds to the per-hour and per-day totals of
//! each (user, key, model), with the latency histogram that lets p50/p95 be read from
//! rollups alone, and which rollup rows answer a period (`RollupPlan`: whole days from the
//! daily rollups, the hours at either end from the hourly ones). The store adds the deltas
//! in the transaction that inserts the rows, so the rollups always equal the sum of the
//! rows.

use std::collections::BTreeMap;

use crate::domain::usage::UsageRecord;

pub const HOUR_MS: i64 = 3_600_000;
pub const DAY_MS: i64 = 24 * HOUR_MS;

/// Upper bounds (inclusive, milliseconds) of the latency buckets, a 1-2-5 series from
/// 1 ms to 100 s; a last bucket holds everything slower. Bucket `i` holds latencies in
/// `(LATENCY_BOUNDS_MS[i-1], LATENCY_BOUNDS_MS[i]]`. They are columns of `usage_hourly`:
/// changing them needs a migration.
pub const LATENCY_BOUNDS_MS: [i64; 16] = [
    1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000,
];
/// The bounded buckets and the one above them.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Counts per latency bucket.
pub type LatencyHistogram = [i64; LATENCY_BUCKETS];

/// The start of the UTC hour holding `ms`.
pub fn hour_start(ms: i64) -> i64 {
    Period::Hour.start_of(ms)
}

/// The start of the UTC day holding `ms`.
pub fn day_start(ms: i64) -> i64 {
    Period::Day.start_of(ms)
}

/// The period a rollup row covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Hour,
    Day,
}

impl Period {
    pub fn ms(self) -> i64 {
        match self {
            Self::Hour => HOUR_MS,
            Self::Day => DAY_MS,
        }
    }

    /// The start of the period holding `ms` (UTC).
    pub fn start_of(self, ms: i64) -> i64 {
        ms.div_euclid(self.ms()) * self.ms()
    }

    /// The first period start at or after `ms`.
    pub fn start_at_or_after(self, ms: i64) -> i64 {
        let start = self.start_of(ms);
        if start == ms {
            start
        } else {
            start.saturating_add(self.ms())
        }
    }
}

/// Period starts from `from` (inclusive) to `to` (exclusive); `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// Which rollup rows add up to the usage between `since` and `until`, at hour
/// granularity: every hour that starts in `[hour of since, until)`. Whole days come from
/// the daily rollups; the hours before the first and after the last whole day from the
/// hourly ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupPlan {
    pub days: Option<StartRange>,
    pub hours: Vec<StartRange>,
}

impl RollupPlan {
    pub fn new(since: Option<i64>, until: Option<i64>) -> Self {
        let first_hour = since.map(hour_start);
        let end_hour = until.map(|u| Period::Hour.start_at_or_after(u));
        let first_day = first_hour.map(|h| Period::Day.start_at_or_after(h));
        let end_day = end_hour.map(day_start);
        let whole_days = match (first_day, end_day) {
            (Some(a), Some(b)) => a < b,
            _ => true,
        };
        if !whole_days {
            return Self {
                days: None,
                hours: vec![StartRange {
                    from: first_hour,
                    to: end_hour,
                }],
            };
        }
        let mut hours = Vec::new();
        if let (Some(from), Some(to)) = (first_hour, first_day)
            && from < to
        {
            hours.push(StartRange {
                from: Some(from),
                to: Some(to),
            });
        }
        if let (Some(from), Some(to)) = (end_day, end_hour)
            && from < to
        {
            hours.push(StartRange {
                from: Some(from),
                to: Some(to),
            });
        }
        Self {
            days: Some(StartRange {
                from: first_day,
                to: end_day,
            }),
            hours,
        }
    }
}

/// The bucket of a latency (negative ones, which a clock step could make, go first).
pub fn latency_bucket(latency_ms: i64) -> usize {
    LATENCY_BOUNDS_MS.partition_point(|&bound| bound < latency_ms)
}

/// The `q` quantile (0 < q ≤ 1) of a histogram in milliseconds, interpolated linearly
/// inside its bucket (so off by at most the bucket's width); the slowest bucket answers
/// its lower bound. `None` when the histogram is empty.
pub fn percentile(histogram: &LatencyHistogram, q: f64) -> Option<f64> {
    let total: i64 = histogram.iter().sum();
    if total <= 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).max(f64::MIN_POSITIVE);
    let mut below = 0i64;
    for (i, &count) in histogram.iter().enumerate() {
        if count > 0 && (below + count) as f64 >= rank {
            let lower = if i == 0 { 0 } else { LATENCY_BOUNDS_MS[i - 1] } as f64;
            let Some(&upper) = LATENCY_BOUNDS_MS.get(i) else {
                return Some(lower);
            };
            let share = (rank - below as f64) / count as f64;
            let ms = lower + (upper as f64 - lower) * share;
            return Some((ms * 10.0).round() / 10.0);
        }
        below += count;
    }
    LATENCY_BOUNDS_MS.last().map(|&b| b as f64)
}

/// One rollup row's identity. A row without a user or key rolls up under `""`, so the
/// unique index (where NULLs never collide) holds.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RollupKey {
    /// The start of the hour or day.
    pub start: i64,
    pub user_id: String,
    pub key_id: String,
    pub model: String,
}

/// What some usage rows add to one rollup row.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RollupDelta {
    pub requests: i64,
    /// Rows whose status is 400 or more (client errors, upstream errors, client gone).
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cost_micros: i64,
    pub latency_ms_sum: i64,
    pub latency: LatencyHistogram,
}

impl RollupDelta {
    fn add(&mut self, row: &UsageRecord) {
        self.requests += 1;
        self.errors += i64::from(row.status >= 400);
        if let Some(u) = row.usage {
            self.prompt_tokens += u.prompt;
            self.completion_tokens += u.completion;
            self.total_tokens += u.total;
        }
        self.cost_micros += row.cost_micros.unwrap_or(0);
        self.latency_ms_sum += row.latency_ms;
        self.latency[latency_bucket(row.latency_ms)] += 1;
    }
}

/// The rollup deltas of `rows`, one per (period, user, key, model), in key order (so
/// concurrent writers lock rollup rows in the same order).
pub fn rollups<'a>(
    rows: impl IntoIterator<Item = &'a UsageRecord>,
    period: Period,
) -> BTreeMap<RollupKey, RollupDelta> {
    let mut deltas: BTreeMap<RollupKey, RollupDelta> = BTreeMap::new();
    for row in rows {
        let key = RollupKey {
            start: period.start_of(row.created_at),
            user_id: row.user_id.clone().unwrap_or_default(),
            key_id: row.key_id.clone().unwrap_or_default(),
            model: row.model.clone(),
        };
        deltas.entry(key).or_default().add(row);
    }
    deltas
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::usage::{CostStatus, TokenUsage, UsageSource};

    fn row(user: &str, model: &str, at: i64, status: u16, latency_ms: i64) -> UsageRecord {
        UsageRecord {
            request_id: format!("r{at}"),
            user_id: Some(user.into()),
            key_id: Some(format!("{user}-key")),
            model: model.into(),
            deployment_id: None,
            usage: (status < 400).then_some(TokenUsage {
                prompt: 10,
                completion: 5,
                total: 15,
                ..TokenUsage::default()
            }),
            cost_micros: (status < 400).then_some(7),
            cost_status: CostStatus::Priced,
            status,
            error_class: None,
            latency_ms,
            overhead_ms: 0.0,
            ttft_ms: None,
            stream: false,
            usage_source: UsageSource::Reported,
            created_at: at,
            attempts: 1,
            request_bytes: None,
            response_bytes: None,
        }
    }

    #[test]
    fn latency_buckets_are_inclusive_upper_bounds() {
        assert_eq!(latency_bucket(-3), 0);
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1), 0);
        assert_eq!(latency_bucket(2), 1);
        assert_eq!(latency_bucket(3), 2);
        assert_eq!(latency_bucket(100_000), LATENCY_BUCKETS - 2);
        assert_eq!(latency_bucket(100_001), LATENCY_BUCKETS - 1);
        assert!(LATENCY_BOUNDS_MS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn rows_roll_up_per_hour_user_key_and_model() {
        let h = 1_764_000_000_000 - 1_764_000_000_000 % HOUR_MS;
        let rows = [
            row("a", "m", h, 200, 150),
            row("a", "m", h + HOUR_MS - 1, 502, 30),
            row("a", "m", h + HOUR_MS, 200, 150),
            row("b", "m", h + 5, 200, 150),
            row("a", "n", h + 5, 200, 150),
        ];
        let deltas = rollups(&rows, Period::Hour);
        assert_eq!(deltas.len(), 4);
        assert_eq!(rollups(&rows, Period::Day).len(), 3);
        let first = &deltas[&RollupKey {
            start: h,
            user_id: "a".into(),
            key_id: "a-key".into(),
            model: "m".into(),
        }];
        assert_eq!(
            (
                first.requests,
                first.errors,
                first.total_tokens,
                first.cost_micros
            ),
            (2, 1, 15, 7)
        );
        assert_eq!(first.latency_ms_sum, 180);
        assert_eq!(first.latency[latency_bucket(150)], 1);
        assert_eq!(first.latency[latency_bucket(30)], 1);
        let total: i64 = deltas.values().map(|d| d.requests).sum();
        assert_eq!(total, rows.len() as i64);
        let none = UsageRecord {
            user_id: None,
            key_id: None,
            ..row("x", "m", h, 200, 1)
        };
        let key = rollups([&none], Period::Hour).into_keys().next().unwrap();
        assert_eq!((key.user_id.as_str(), key.key_id.as_str()), ("", ""));
    }

    #[test]
    fn percentiles_interpolate_inside_the_bucket() {
        let mut histogram = [0; LATENCY_BUCKETS];
        assert_eq!(percentile(&histogram, 0.5), None);
        // 100 requests in (100, 200] ms: p50 half-way, p95 near the top.
        histogram[latency_bucket(150)] = 100;
        assert_eq!(percentile(&histogram, 0.5), Some(150.0));
        assert_eq!(percentile(&histogram, 0.95), Some(195.0));
        // One slow outlier moves p95 only when it is within the top 5 %.
        histogram[LATENCY_BUCKETS - 1] = 1;
        assert_eq!(percentile(&histogram, 1.0), Some(100_000.0));
        assert!(percentile(&histogram, 0.95).is_some_and(|p| p <= 200.0));
        let mut fast = [0; LATENCY_BUCKETS];
        fast[0] = 4;
        assert_eq!(percentile(&fast, 0.5), Some(0.5));
    }

    fn range(from: Option<i64>, to: Option<i64>) -> StartRange {
        StartRange { from, to }
    }

    #[test]
    fn periods_read_whole_days_from_daily_rollups_and_the_ends_from_hourly_ones() {
        let d = 20_000 * DAY_MS;
        assert_eq!(
            RollupPlan::new(None, None),
            RollupPlan {
                days: Some(range(None, None)),
                hours: vec![]
            }
        );
        // 10:30 on day d to 05:10 on day d+3: hours 10..24 of d, days d+1 and d+2, hours
        // 0..6 of d+3 (05:00 starts before 05:10).
        let plan = RollupPlan::new(
            Some(d + 10 * HOUR_MS + 1_800_000),
            Some(d + 3 * DAY_MS + 5 * HOUR_MS + 600_000),
        );
        assert_eq!(
            plan,
            RollupPlan {
                days: Some(range(Some(d + DAY_MS), Some(d + 3 * DAY_MS))),
                hours: vec![
                    range(Some(d + 10 * HOUR_MS), Some(d + DAY_MS)),
                    range(Some(d + 3 * DAY_MS), Some(d + 3 * DAY_MS + 6 * HOUR_MS)),
                ]
            }
        );
        // Day boundaries exactly: days only.
        assert_eq!(
            RollupPlan::new(Some(d), Some(d + 2 * DAY_MS)),
            RollupPlan {
                days: Some(range(Some(d), Some(d + 2 * DAY_MS))),
                hours: vec![]
            }
        );
        // Within one day: hours only.
        assert_eq!(
            RollupPlan::new(Some(d + HOUR_MS), Some(d + 3 * HOUR_MS)),
            RollupPlan {
                days: None,
                hours: vec![range(Some(d + HOUR_MS), Some(d + 3 * HOUR_MS))]
            }
        );
        // Open-ended: whole days from the first full one on.
        assert_eq!(
            RollupPlan::new(Some(d + 23 * HOUR_MS), None),
            RollupPlan {
                days: Some(range(Some(d + DAY_MS), None)),
                hours: vec![range(Some(d + 23 * HOUR_MS), Some(d + DAY_MS))]
            }
        );
        assert_eq!(
            RollupPlan::new(None, Some(d + 1)),
            RollupPlan {
                days: Some(range(None, Some(d))),
                hours: vec![range(Some(d), Some(d + HOUR_MS))]
            }
        );
    }

    #[test]
    fn hours_and_days_start_on_utc_boundaries() {
        assert_eq!(hour_start(HOUR_MS + 1), HOUR_MS);
        assert_eq!(hour_start(-1), -HOUR_MS);
        assert_eq!(day_start(DAY_MS * 3 + 5), DAY_MS * 3);
        assert_eq!(Period::Hour.start_at_or_after(HOUR_MS), HOUR_MS);
        assert_eq!(Period::Hour.start_at_or_after(HOUR_MS + 1), 2 * HOUR_MS);
    }
}
