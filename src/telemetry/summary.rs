//! `/metrics/summary`: requests per route and per API key over the last hour and day, and
//! the current and peak number of requests in flight — this instance's view, in memory.
//!
//! Each HTTP worker writes its own `Shard` (a mutex only that worker and the summary
//! handler ever take: no lock shared by the workers, no message); the handler adds the
//! shards up. Counts are kept in minute buckets for the last hour and hour buckets for the
//! last day (so "24h" is the current hour and the 23 before it). Memory is bounded: at
//! most `MAX_ROUTES` route labels and `MAX_KEYS` keys per shard (labels idle for a day
//! are forgotten to make room; beyond that, requests count under `OTHER`).

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

/// Route labels one shard keeps.
pub const MAX_ROUTES: usize = 256;
/// Keys one shard keeps.
pub const MAX_KEYS: usize = 1024;
/// The label of requests past the caps.
pub const OTHER: &str = "other";

const MINUTES: usize = 60;
const HOURS: usize = 24;

/// Counts over the last hour (by minute) and the last day (by hour). A bucket carries the
/// minute or hour it counts; a stale one is reset when reused.
#[derive(Clone)]
struct Series {
    minutes: [(u32, u32); MINUTES],
    hours: [(u32, u32); HOURS],
}

impl Series {
    fn new() -> Self {
        Self {
            minutes: [(u32::MAX, 0); MINUTES],
            hours: [(u32::MAX, 0); HOURS],
        }
    }

    /// Adds one (`sum`) or keeps the larger (`!sum`) in the buckets of `minute`.
    fn put(&mut self, minute: u32, value: u32, sum: bool) {
        let hour = minute / 60;
        for (slot, stamp) in [
            (&mut self.minutes[minute as usize % MINUTES], minute),
            (&mut self.hours[hour as usize % HOURS], hour),
        ] {
            if slot.0 != stamp {
                *slot = (stamp, 0);
            }
            slot.1 = if sum {
                slot.1.saturating_add(value)
            } else {
                slot.1.max(value)
            };
        }
    }

    /// (last hour, last day), summed or the maximum.
    fn read(&self, minute: u32, sum: bool) -> (u64, u64) {
        let hour = minute / 60;
        let fold = |buckets: &[(u32, u32)], now: u32, span: u32| {
            buckets
                .iter()
                .filter(|(stamp, _)| *stamp <= now && now - stamp < span)
                .fold(0u64, |acc, (_, v)| {
                    if sum {
                        acc + u64::from(*v)
                    } else {
                        acc.max(u64::from(*v))
                    }
                })
        };
        (
            fold(&self.minutes, minute, MINUTES as u32),
            fold(&self.hours, hour, HOURS as u32),
        )
    }

    fn last_hour_stamp(&self) -> Option<u32> {
        self.hours
            .iter()
            .map(|(s, _)| *s)
            .filter(|s| *s != u32::MAX)
            .max()
    }
}

struct KeySeries {
    user_id: Box<str>,
    series: Series,
}

struct ShardState {
    routes: FxHashMap<Box<str>, Series>,
    keys: FxHashMap<Box<str>, KeySeries>,
    inflight_peak: Series,
}

/// One worker's counts.
pub struct Shard {
    state: Mutex<ShardState>,
}

impl Shard {
    fn new() -> Self {
        Self {
            state: Mutex::new(ShardState {
                routes: FxHashMap::default(),
                keys: FxHashMap::default(),
                inflight_peak: Series::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ShardState> {
        match self.state.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// A request began with `inflight` requests in flight (itself included).
    pub fn request_started(&self, inflight: i64) {
        let inflight = u32::try_from(inflight.max(0)).unwrap_or(u32::MAX);
        self.lock()
            .inflight_peak
            .put(current_minute(), inflight, false);
    }

    /// A request finished: counted under its route and, when it authenticated, its key.
    pub fn request_finished(&self, route: &str, key: Option<(&str, &str)>) {
        let minute = current_minute();
        let mut state = self.lock();
        let routes = &mut state.routes;
        match routes.get_mut(route) {
            Some(series) => series.put(minute, 1, true),
            None => {
                let label = if has_room(routes, MAX_ROUTES, minute, |s| s) {
                    route
                } else {
                    OTHER
                };
                routes
                    .entry(label.into())
                    .or_insert_with(Series::new)
                    .put(minute, 1, true);
            }
        }
        let Some((key_id, user_id)) = key else {
            return;
        };
        let keys = &mut state.keys;
        match keys.get_mut(key_id) {
            Some(entry) => entry.series.put(minute, 1, true),
            None => {
                let (label, user) = if has_room(keys, MAX_KEYS, minute, |k| &k.series) {
                    (key_id, user_id)
                } else {
                    (OTHER, OTHER)
                };
                keys.entry(label.into())
                    .or_insert_with(|| KeySeries {
                        user_id: user.into(),
                        series: Series::new(),
                    })
                    .series
                    .put(minute, 1, true);
            }
        }
    }
}

/// Whether `map` may take one more label: below `cap`, or after forgetting labels that
/// saw nothing in the last day.
fn has_room<V>(
    map: &mut FxHashMap<Box<str>, V>,
    cap: usize,
    minute: u32,
    series: impl Fn(&V) -> &Series,
) -> bool {
    if map.len() < cap.saturating_sub(1) {
        return true;
    }
    let hour = minute / 60;
    map.retain(|label, v| {
        &**label == OTHER
            || series(v)
                .last_hour_stamp()
                .is_some_and(|h| hour.saturating_sub(h) < HOURS as u32)
    });
    map.len() < cap.saturating_sub(1)
}

fn current_minute() -> u32 {
    u32::try_from(crate::domain::now_ms().max(0) / 60_000).unwrap_or(u32::MAX)
}

/// Every worker's shard; read by `/metrics/summary`.
#[derive(Default)]
pub struct Summary {
    shards: Mutex<Vec<Arc<Shard>>>,
}

/// Requests in a window.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RouteRequests {
    /// The route label of `http_requests_total`: the matched pattern, a passthrough
    /// route's label, `unmatched`, or `other` past the label cap.
    pub route: String,
    pub requests_1h: u64,
    pub requests_24h: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct KeyRequests {
    /// The API key's id (never the key), or `other` past the label cap.
    pub key_id: String,
    pub user_id: String,
    pub requests_1h: u64,
    pub requests_24h: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Inflight {
    /// Requests in flight now (a stream counts until its last byte).
    pub current: i64,
    pub peak_1h: u64,
    pub peak_24h: u64,
}

/// This instance's traffic over the last hour and day.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SummaryReport {
    /// Unix milliseconds.
    pub generated_at: i64,
    pub requests_1h: u64,
    pub requests_24h: u64,
    pub inflight: Inflight,
    /// By requests over 24h, most first.
    pub routes: Vec<RouteRequests>,
    /// By requests over 24h, most first.
    pub keys: Vec<KeyRequests>,
}

impl Summary {
    /// A new shard for the calling worker.
    pub fn shard(&self) -> Arc<Shard> {
        let shard = Arc::new(Shard::new());
        match self.shards.lock() {
            Ok(mut shards) => shards.push(shard.clone()),
            Err(poisoned) => poisoned.into_inner().push(shard.clone()),
        }
        shard
    }

    /// The shards added up; `inflight` is the current in-flight count.
    pub fn report(&self, inflight: i64) -> SummaryReport {
        let minute = current_minute();
        let shards = match self.shards.lock() {
            Ok(shards) => shards.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        let mut routes: HashMap<String, (u64, u64)> = HashMap::new();
        let mut keys: HashMap<String, (String, u64, u64)> = HashMap::new();
        let (mut peak_1h, mut peak_24h) = (0, 0);
        for shard in shards {
            let state = shard.lock();
            for (label, series) in &state.routes {
                let (h, d) = series.read(minute, true);
                let entry = routes.entry(label.to_string()).or_default();
                entry.0 += h;
                entry.1 += d;
            }
            for (label, key) in &state.keys {
                let (h, d) = key.series.read(minute, true);
                let entry = keys
                    .entry(label.to_string())
                    .or_insert_with(|| (key.user_id.to_string(), 0, 0));
                entry.1 += h;
                entry.2 += d;
            }
            let (h, d) = state.inflight_peak.read(minute, false);
            peak_1h = peak_1h.max(h);
            peak_24h = peak_24h.max(d);
        }
        let mut routes: Vec<RouteRequests> = routes
            .into_iter()
            .filter(|(_, (_, d))| *d > 0)
            .map(|(route, (h, d))| RouteRequests {
                route,
                requests_1h: h,
                requests_24h: d,
            })
            .collect();
        routes.sort_by(|a, b| {
            b.requests_24h
                .cmp(&a.requests_24h)
                .then_with(|| a.route.cmp(&b.route))
        });
        let mut keys: Vec<KeyRequests> = keys
            .into_iter()
            .filter(|(_, (_, _, d))| *d > 0)
            .map(|(key_id, (user_id, h, d))| KeyRequests {
                key_id,
                user_id,
                requests_1h: h,
                requests_24h: d,
            })
            .collect();
        keys.sort_by(|a, b| {
            b.requests_24h
                .cmp(&a.requests_24h)
                .then_with(|| a.key_id.cmp(&b.key_id))
        });
        let current = inflight.max(0);
        SummaryReport {
            generated_at: crate::domain::now_ms(),
            requests_1h: routes.iter().map(|r| r.requests_1h).sum(),
            requests_24h: routes.iter().map(|r| r.requests_24h).sum(),
            inflight: Inflight {
                current,
                peak_1h: peak_1h.max(current.unsigned_abs()),
                peak_24h: peak_24h.max(current.unsigned_abs()),
            },
            routes,
            keys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_count_within_their_windows_and_forget_the_rest() {
        let mut series = Series::new();
        let now = 1_000_000;
        // Time moves forward: each bucket is reused for a later minute or hour.
        for minute in [now - 25 * 60, now - 23 * 60, now - 60, now - 59, now, now] {
            series.put(minute, 1, true);
        }
        assert_eq!(series.read(now, true), (3, 5));
        // An old bucket reused for a new minute starts from zero.
        series.put(now + 60, 1, true);
        assert_eq!(series.read(now + 60, true).0, 1);
    }

    #[test]
    fn peaks_keep_the_largest_value() {
        let mut series = Series::new();
        series.put(440, 7, false);
        series.put(500, 3, false);
        series.put(500, 1, false);
        assert_eq!(series.read(500, false), (3, 7));
    }

    #[test]
    fn labels_past_the_cap_count_as_other() {
        let summary = Summary::default();
        let shard = summary.shard();
        for i in 0..MAX_ROUTES + 10 {
            shard.request_finished(&format!("/r{i}"), Some((&format!("k{i}"), "u")));
        }
        let report = summary.report(0);
        assert!(report.routes.len() <= MAX_ROUTES);
        let other = report.routes.iter().find(|r| r.route == OTHER).unwrap();
        assert_eq!(other.requests_1h, 11);
        assert_eq!(report.requests_1h, (MAX_ROUTES + 10) as u64);
        assert_eq!(report.keys.len(), MAX_ROUTES + 10);
    }
}
