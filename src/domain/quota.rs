//! Quotas as pure logic: the sliding window RPM and TPM limits count in, the limits that
//! apply to a caller, what a request asks of them, and the `x-ratelimit-*` figures.
//!
//! Counters are shared by every instance through the database, which hands out leases: an
//! instance takes `lease_size(limit, need)` units from a shared counter in one round trip
//! and spends them locally. See `actors::quota` for the bound this gives across instances.

use serde::{Deserialize, Serialize};

use crate::config::LimitSettings;
use crate::domain::records::KeyGrant;

/// The span a per-minute limit holds over, in seconds.
pub const WINDOW_SECS: i64 = 60;

/// A lease is at least this fraction of the limit (1/20 = 5%), so a busy caller takes one
/// lease per twentieth of its limit instead of one per request.
pub const LEASE_DIVISOR: u64 = 20;

/// Counts per second over the last minute, oldest first: `(second, count)`.
///
/// A limit holds if the 61 latest one-second buckets (the current, partial one and the 60
/// before it) together stay within it. Every 60-second span lies inside those buckets, so
/// no 60 seconds ever see more than the limit; a fixed window lets twice the limit through
/// around its boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SlidingWindow(Vec<(i64, u64)>);

impl SlidingWindow {
    /// The first second still inside the window at `now_sec`.
    fn first_second(now_sec: i64) -> i64 {
        now_sec - WINDOW_SECS
    }

    /// Drops the buckets that left the window by `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        let first = Self::first_second(now_ms.div_euclid(1000));
        let gone = self.0.iter().take_while(|(s, _)| *s < first).count();
        self.0.drain(..gone);
    }

    /// Units counted in the window at `now_ms`.
    pub fn used(&self, now_ms: i64) -> u64 {
        let first = Self::first_second(now_ms.div_euclid(1000));
        self.0
            .iter()
            .filter(|(s, _)| *s >= first)
            .map(|(_, n)| n)
            .sum()
    }

    /// Counts `amount` units at `now_ms`.
    pub fn add(&mut self, now_ms: i64, amount: u64) {
        if amount == 0 {
            return;
        }
        self.expire(now_ms);
        let second = now_ms.div_euclid(1000);
        match self.0.last_mut() {
            Some((s, n)) if *s >= second => *n = n.saturating_add(amount),
            _ => self.0.push((second, amount)),
        }
    }

    /// Takes back `amount` units counted earlier (unused leases), newest first.
    pub fn remove(&mut self, mut amount: u64) {
        while amount > 0 {
            let Some((_, n)) = self.0.last_mut() else {
                return;
            };
            let taken = amount.min(*n);
            *n -= taken;
            amount -= taken;
            if *n == 0 {
                self.0.pop();
            }
        }
    }

    /// Milliseconds from `now_ms` until `need` more units fit under `limit`; zero if they
    /// fit now, `None` if they never will (`need` alone exceeds the limit).
    pub fn wait_for(&self, now_ms: i64, need: u64, limit: u64) -> Option<u64> {
        if need > limit {
            return None;
        }
        let first = Self::first_second(now_ms.div_euclid(1000));
        let mut used = self.used(now_ms);
        if used + need <= limit {
            return Some(0);
        }
        for (second, count) in self.0.iter().filter(|(s, _)| *s >= first) {
            used -= count;
            if used + need <= limit {
                return Some(Self::leaves_at(*second).saturating_sub(now_ms).max(1) as u64);
            }
        }
        Some(0)
    }

    /// Milliseconds until the oldest counted unit leaves the window (0 when empty).
    pub fn reset_ms(&self, now_ms: i64) -> u64 {
        let first = Self::first_second(now_ms.div_euclid(1000));
        self.0
            .iter()
            .find(|(s, _)| *s >= first)
            .map_or(0, |(s, _)| {
                Self::leaves_at(*s).saturating_sub(now_ms).max(0) as u64
            })
    }

    /// When the bucket of `second` stops counting, in epoch milliseconds.
    fn leaves_at(second: i64) -> i64 {
        (second + WINDOW_SECS + 1) * 1000
    }
}

/// How many units to lease when `need` are missing: at least a twentieth of the limit.
pub fn lease_size(limit: u64, need: u64) -> u64 {
    need.max(limit / LEASE_DIVISOR)
}

/// The limits that apply to one caller: its user's, its key's RPM override, and the
/// `[limits]` defaults for what the user leaves unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CallerLimits {
    pub rpm: Option<u64>,
    /// The RPM limit is the key's own (counted per key) rather than its user's.
    pub rpm_per_key: bool,
    pub tpm: Option<u64>,
    pub token_quota: Option<u64>,
    pub budget_micros: Option<u64>,
}

impl CallerLimits {
    pub fn of(grant: &KeyGrant, defaults: &LimitSettings) -> Self {
        let user = &grant.limits;
        let non_negative = |v: Option<i64>| v.map(|n| n.max(0) as u64);
        let key_rpm = non_negative(grant.rpm_limit);
        Self {
            rpm: key_rpm
                .or(non_negative(user.rpm_limit))
                .or(defaults.rpm_limit),
            rpm_per_key: key_rpm.is_some(),
            tpm: non_negative(user.tpm_limit).or(defaults.tpm_limit),
            token_quota: non_negative(user.token_quota).or(defaults.token_quota),
            budget_micros: user.budget_usd.or(defaults.budget_usd).map(usd_to_micros),
        }
    }

    /// No limit applies: admission needs no message at all.
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && !self.counts_tokens()
    }

    /// A limit needs the request's tokens (TPM, token quota, budget).
    pub fn counts_tokens(&self) -> bool {
        self.tpm.is_some() || self.token_quota.is_some() || self.budget_micros.is_some()
    }
}

/// US dollars as whole micro-dollars (negative and non-finite amounts are zero).
pub fn usd_to_micros(usd: f64) -> u64 {
    if usd.is_finite() && usd > 0.0 {
        (usd * 1e6).round().min(u64::MAX as f64) as u64
    } else {
        0
    }
}

/// What a request reserves before it is sent: its prompt plus the most it may produce,
/// and what that would cost at the dearest of its candidate deployments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Demand {
    pub tokens: u64,
    pub micros: u64,
}

/// A rough prompt size until the tokenizer lands: a token per 4 bytes of text.
pub fn rough_prompt_tokens(request: &crate::domain::canonical::ChatRequest) -> u64 {
    let bytes: usize = request
        .messages
        .iter()
        .map(|m| format!("{:?}", m.content).len())
        .sum();
    (bytes as u64).div_ceil(4) + 3
}

/// One rate limit as OpenAI's `x-ratelimit-*` headers show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateGauge {
    pub limit: u64,
    pub remaining: u64,
    pub reset_ms: u64,
}

/// The rate limits of one answer: requests and tokens per minute, where they apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateHeaders {
    pub requests: Option<RateGauge>,
    pub tokens: Option<RateGauge>,
}

impl RateHeaders {
    /// `(name, value)` pairs of the `x-ratelimit-*` headers.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(6);
        if let Some(g) = self.requests {
            out.push(("x-ratelimit-limit-requests", g.limit.to_string()));
            out.push(("x-ratelimit-remaining-requests", g.remaining.to_string()));
            out.push(("x-ratelimit-reset-requests", duration_text(g.reset_ms)));
        }
        if let Some(g) = self.tokens {
            out.push(("x-ratelimit-limit-tokens", g.limit.to_string()));
            out.push(("x-ratelimit-remaining-tokens", g.remaining.to_string()));
            out.push(("x-ratelimit-reset-tokens", duration_text(g.reset_ms)));
        }
        out
    }
}

/// Where admission leaves the rate limits of the current request for its answer's
/// headers (shared by the request's task and the HTTP middleware on one worker thread).
#[derive(Debug, Clone, Default)]
pub struct RateNote(std::rc::Rc<std::cell::Cell<Option<RateHeaders>>>);

impl RateNote {
    pub fn set(&self, headers: RateHeaders) {
        self.0.set(Some(headers));
    }

    pub fn get(&self) -> Option<RateHeaders> {
        self.0.get()
    }
}

/// A duration as OpenAI writes its resets (Go's notation): `20ms`, `1.5s`, `6m0s`.
pub fn duration_text(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let minutes = ms / 60_000;
    let rest = ms % 60_000;
    let seconds = if rest.is_multiple_of(1000) {
        format!("{}", rest / 1000)
    } else {
        let text = format!("{:.3}", rest as f64 / 1000.0);
        text.trim_end_matches('0').to_string()
    };
    if minutes > 0 {
        format!("{minutes}m{seconds}s")
    } else {
        format!("{seconds}s")
    }
}

/// Whole seconds for a `Retry-After` header: rounded up, at least one.
pub fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_window_counts_the_last_minute_and_says_when_room_returns() {
        let mut w = SlidingWindow::default();
        let t0 = 1_000_000_000;
        w.add(t0, 2);
        w.add(t0 + 30_000, 1);
        assert_eq!(w.used(t0 + 30_000), 3);
        // Full at 3: one more waits until the first bucket leaves (61 s after its second).
        assert_eq!(w.wait_for(t0 + 30_000, 1, 3), Some(31_000));
        assert_eq!(w.wait_for(t0 + 30_000, 3, 3), Some(61_000));
        assert_eq!(w.wait_for(t0 + 30_000, 4, 3), None);
        assert_eq!(w.used(t0 + 61_000), 1);
        assert_eq!(w.wait_for(t0 + 61_000, 2, 3), Some(0));
        assert_eq!(w.reset_ms(t0 + 61_000), 30_000);
    }

    #[test]
    fn units_given_back_leave_the_newest_buckets_first() {
        let mut w = SlidingWindow::default();
        let t0 = 2_000_000_000;
        w.add(t0, 5);
        w.add(t0 + 2_000, 3);
        w.remove(4);
        assert_eq!(w.used(t0 + 2_000), 4);
        assert_eq!(
            w.reset_ms(t0 + 2_000),
            59_000,
            "the older bucket is untouched"
        );
        w.remove(100);
        assert_eq!(w, SlidingWindow::default());
    }

    #[test]
    fn durations_read_like_openais() {
        assert_eq!(duration_text(20), "20ms");
        assert_eq!(duration_text(1_000), "1s");
        assert_eq!(duration_text(1_500), "1.5s");
        assert_eq!(duration_text(360_000), "6m0s");
        assert_eq!(duration_text(61_250), "1m1.25s");
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1_001), 2);
    }

    proptest! {
        /// Admitting whenever the window allows never lets more than the limit through in
        /// any 60-second span, wherever the span starts (boundaries included).
        #[test]
        fn no_sixty_seconds_ever_see_more_than_the_limit(
            gaps in proptest::collection::vec(0i64..3_000, 1..300),
            limit in 1u64..20,
        ) {
            let mut w = SlidingWindow::default();
            let mut admitted = Vec::new();
            let mut now = 5_000_000;
            for gap in gaps {
                now += gap;
                if w.wait_for(now, 1, limit) == Some(0) {
                    w.add(now, 1);
                    admitted.push(now);
                }
            }
            for (i, start) in admitted.iter().enumerate() {
                let within = admitted[i..].iter().take_while(|t| **t < start + 60_000).count();
                prop_assert!(within as u64 <= limit, "{within} in 60 s from {start}");
            }
        }
    }
}
