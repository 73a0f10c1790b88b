//! The circuit breaker of one deployment, as a pure state machine driven by the caller's
//! clock (`Instant`s passed in), so it is tested with a fake clock and no sleeps.
//!
//! Closed: outcomes go into a sliding window (the last N calls, or the calls of the last
//! D milliseconds, kept as 64 slices of D/64 each: a window of bounded size at any request
//! rate, which forgets a slice's outcomes together). When the window holds at least `minimum_calls` and the failure rate
//! reaches `failure_rate_threshold`, the breaker opens. Open: nothing is admitted until
//! `open_ms` has passed; then it is half-open and admits up to `half_open_probes` probes.
//! A probe's success closes it (with an empty window); a probe's failure re-opens it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Count-based window: the last `window_size` outcomes (used when `window_ms` is 0).
    pub window_size: u32,
    /// Time-based window: the outcomes of the last `window_ms` milliseconds.
    pub window_ms: u64,
    pub failure_rate_threshold: f64,
    pub minimum_calls: u32,
    pub open_ms: u64,
    pub half_open_probes: u32,
}

impl BreakerConfig {
    /// Checks the ranges; answers the offending field.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if !(self.failure_rate_threshold > 0.0 && self.failure_rate_threshold <= 1.0) {
            return Err(("failure_rate_threshold", "must be in (0, 1]"));
        }
        if self.window_size == 0 && self.window_ms == 0 {
            return Err(("window_size", "set window_size (calls) or window_ms (time)"));
        }
        if self.minimum_calls == 0 {
            return Err(("minimum_calls", "must be at least 1"));
        }
        if self.half_open_probes == 0 {
            return Err(("half_open_probes", "must be at least 1"));
        }
        Ok(())
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            window_size: 20,
            window_ms: 0,
            failure_rate_threshold: 0.5,
            minimum_calls: 5,
            open_ms: 30_000,
            half_open_probes: 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value of `gateway_breaker_state`: 0 closed, 1 open, 2 half-open.
    pub fn as_gauge(self) -> i64 {
        match self {
            Self::Closed => 0,
            Self::Open => 1,
            Self::HalfOpen => 2,
        }
    }
}

/// What an admitted call is: an ordinary call, or a half-open probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    Normal,
    Probe,
}

/// How an admitted call ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallResult {
    Success,
    Failure,
    /// Says nothing about the deployment's health (client-caused, or client gone).
    Ignored,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub failure_rate: f64,
    pub window_calls: u32,
    pub window_failures: u32,
    pub probes_in_flight: u32,
    /// How long ago the breaker opened, when it is not closed.
    #[serde(skip)]
    pub open_for: Option<Duration>,
}

/// Outcomes recorded at about one time: one call in a count-based window; in a time-based
/// one, every outcome of one slice of it.
#[derive(Debug, Clone, Copy)]
struct Slot {
    at: Instant,
    calls: u32,
    failures: u32,
}

/// A time-based window is kept in this many slices at most (one more while it slides).
const SLICES: u32 = 64;

/// The sliding window's slots and their totals.
#[derive(Debug, Clone, Default)]
struct Window {
    slots: VecDeque<Slot>,
    calls: u32,
    failures: u32,
}

impl Window {
    /// Adds outcomes at `now`: into the last slot when it began less than `slice` ago.
    fn add(&mut self, slice: Option<Duration>, now: Instant, calls: u32, failures: u32) {
        self.calls = self.calls.saturating_add(calls);
        self.failures = self.failures.saturating_add(failures);
        if let (Some(slice), Some(last)) = (slice, self.slots.back_mut())
            && now.saturating_duration_since(last.at) < slice
        {
            last.calls = last.calls.saturating_add(calls);
            last.failures = last.failures.saturating_add(failures);
            return;
        }
        self.slots.push_back(Slot {
            at: now,
            calls,
            failures,
        });
    }

    fn pop_front(&mut self) {
        if let Some(slot) = self.slots.pop_front() {
            self.calls = self.calls.saturating_sub(slot.calls);
            self.failures = self.failures.saturating_sub(slot.failures);
        }
    }
}

#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    window: Window,
    opened_at: Option<Instant>,
    probes_in_flight: u32,
    /// Set by an operator: the state is held until released.
    forced: bool,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: BreakerState::Closed,
            window: Window::default(),
            opened_at: None,
            probes_in_flight: 0,
            forced: false,
        }
    }

    pub fn set_config(&mut self, config: BreakerConfig) {
        self.config = config;
    }

    pub fn state(&mut self, now: Instant) -> BreakerState {
        self.advance(now);
        self.state
    }

    /// Moves an open breaker to half-open once the cool-down has passed.
    fn advance(&mut self, now: Instant) {
        if self.state == BreakerState::Open
            && !self.forced
            && self.opened_at.is_some_and(|t| {
                now.saturating_duration_since(t) >= Duration::from_millis(self.config.open_ms)
            })
        {
            self.state = BreakerState::HalfOpen;
            self.probes_in_flight = 0;
        }
    }

    /// Admits a call, or says no (open, or half-open with every probe slot taken).
    pub fn try_acquire(&mut self, now: Instant) -> Option<Ticket> {
        self.advance(now);
        match self.state {
            BreakerState::Closed => Some(Ticket::Normal),
            BreakerState::Open => None,
            BreakerState::HalfOpen if self.forced => None,
            BreakerState::HalfOpen => {
                if self.probes_in_flight < self.config.half_open_probes.max(1) {
                    self.probes_in_flight += 1;
                    Some(Ticket::Probe)
                } else {
                    None
                }
            }
        }
    }

    pub fn on_result(&mut self, now: Instant, ticket: Ticket, result: CallResult) {
        if ticket == Ticket::Probe {
            self.probes_in_flight = self.probes_in_flight.saturating_sub(1);
        }
        if self.forced {
            return;
        }
        match (self.state, ticket, result) {
            (_, _, CallResult::Ignored) => {}
            (BreakerState::HalfOpen, Ticket::Probe, CallResult::Success) => self.close(),
            (BreakerState::HalfOpen, Ticket::Probe, CallResult::Failure) => self.open(now),
            (BreakerState::Closed, Ticket::Normal, r) => {
                let failed = u32::from(r == CallResult::Failure);
                self.window.add(self.slice(), now, 1, failed);
                self.trim(now);
                let (calls, failures) = self.counts();
                if calls >= self.config.minimum_calls.max(1)
                    && f64::from(failures) / f64::from(calls) >= self.config.failure_rate_threshold
                {
                    self.open(now);
                }
            }
            // Late results of calls admitted before a transition change nothing.
            _ => {}
        }
    }

    /// `n` calls of the closed breaker succeeded (reported together): they go into the
    /// window as of `now` (a count-based window keeps at most its size of them).
    pub fn on_successes(&mut self, now: Instant, n: u64) {
        if self.forced || self.state != BreakerState::Closed {
            return;
        }
        match self.slice() {
            Some(slice) => {
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                self.window.add(Some(slice), now, n, 0);
            }
            None => {
                for _ in 0..n.min(u64::from(self.config.window_size.max(1))) {
                    self.window.add(None, now, 1, 0);
                }
            }
        }
        self.trim(now);
    }

    /// The slice of a time-based window; `None` for a count-based one (a slot per call).
    fn slice(&self) -> Option<Duration> {
        (self.config.window_ms > 0).then(|| {
            Duration::from_millis(self.config.window_ms / u64::from(SLICES))
                .max(Duration::from_millis(1))
        })
    }

    fn trim(&mut self, now: Instant) {
        if self.config.window_ms > 0 {
            let horizon = Duration::from_millis(self.config.window_ms);
            while self
                .window
                .slots
                .front()
                .is_some_and(|s| now.saturating_duration_since(s.at) > horizon)
            {
                self.window.pop_front();
            }
        } else {
            while self.window.calls > self.config.window_size.max(1) {
                self.window.pop_front();
            }
        }
    }

    fn counts(&self) -> (u32, u32) {
        (self.window.calls, self.window.failures)
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.probes_in_flight = 0;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.opened_at = None;
        self.window = Window::default();
    }

    /// An operator holds the breaker open or closed until `release`.
    pub fn force(&mut self, now: Instant, state: BreakerState) {
        match state {
            BreakerState::Open | BreakerState::HalfOpen => self.open(now),
            BreakerState::Closed => self.close(),
        }
        self.forced = true;
    }

    pub fn release(&mut self) {
        self.forced = false;
    }

    pub fn is_forced(&self) -> bool {
        self.forced
    }

    pub fn snapshot(&mut self, now: Instant) -> BreakerSnapshot {
        self.advance(now);
        self.trim(now);
        let (calls, failures) = self.counts();
        BreakerSnapshot {
            state: self.state,
            failure_rate: if calls == 0 {
                0.0
            } else {
                f64::from(failures) / f64::from(calls)
            },
            window_calls: calls,
            window_failures: failures,
            probes_in_flight: self.probes_in_flight,
            open_for: self.opened_at.map(|t| now.saturating_duration_since(t)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window_size: 10,
            window_ms: 0,
            failure_rate_threshold: 0.5,
            minimum_calls: 4,
            open_ms: 1_000,
            half_open_probes: 1,
        }
    }

    fn call(b: &mut Breaker, now: Instant, result: CallResult) {
        let ticket = b.try_acquire(now).expect("admitted");
        b.on_result(now, ticket, result);
    }

    #[test]
    fn it_opens_only_after_the_minimum_calls_at_the_threshold() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for _ in 0..3 {
            call(&mut b, t0, CallResult::Failure);
        }
        assert_eq!(b.state(t0), BreakerState::Closed, "3 calls < minimum 4");
        call(&mut b, t0, CallResult::Failure);
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.try_acquire(t0), None);
    }

    #[test]
    fn successes_reported_together_weigh_like_single_ones() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        b.on_successes(t0, 1_000);
        assert_eq!(b.snapshot(t0).window_calls, 10, "a window of 10 keeps 10");
        for _ in 0..4 {
            call(&mut b, t0, CallResult::Failure);
        }
        assert_eq!(b.state(t0), BreakerState::Closed, "4 of 10 failed");
        call(&mut b, t0, CallResult::Failure);
        assert_eq!(b.state(t0), BreakerState::Open, "5 of 10 failed");
        b.on_successes(t0, 3);
        assert_eq!(
            b.state(t0),
            BreakerState::Open,
            "late successes move nothing"
        );
    }

    #[test]
    fn ignored_results_and_successes_keep_it_closed() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for i in 0..20 {
            call(
                &mut b,
                t0,
                if i % 4 == 0 {
                    CallResult::Failure
                } else {
                    CallResult::Success
                },
            );
            call(&mut b, t0, CallResult::Ignored);
        }
        assert_eq!(b.state(t0), BreakerState::Closed);
        let s = b.snapshot(t0);
        assert_eq!(s.window_calls, 10);
    }

    #[test]
    fn after_the_cool_down_one_probe_decides() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        for _ in 0..4 {
            call(&mut b, t0, CallResult::Failure);
        }
        let later = t0 + Duration::from_millis(999);
        assert_eq!(b.try_acquire(later), None, "still cooling down");
        let t1 = t0 + Duration::from_millis(1_000);
        let probe = b.try_acquire(t1);
        assert_eq!(probe, Some(Ticket::Probe));
        assert_eq!(b.try_acquire(t1), None, "one probe at a time");
        b.on_result(t1, Ticket::Probe, CallResult::Failure);
        assert_eq!(b.state(t1), BreakerState::Open, "a failed probe re-opens");

        let t2 = t1 + Duration::from_millis(1_000);
        let probe = b.try_acquire(t2).expect("probe");
        b.on_result(t2, probe, CallResult::Success);
        assert_eq!(b.state(t2), BreakerState::Closed);
        assert_eq!(
            b.snapshot(t2).window_calls,
            0,
            "closing starts a fresh window"
        );
    }

    #[test]
    fn a_time_window_stays_small_at_any_rate() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            window_ms: 10_000,
            ..config()
        });
        let last = t0 + Duration::from_micros(199_999 * 100);
        // 20 seconds at 10,000 calls a second, one in ten failing.
        for i in 0..200_000u64 {
            let result = if i % 10 == 0 {
                CallResult::Failure
            } else {
                CallResult::Success
            };
            call(&mut b, t0 + Duration::from_micros(i * 100), result);
        }
        assert!(
            b.window.slots.len() <= SLICES as usize + 1,
            "{}",
            b.window.slots.len()
        );
        let s = b.snapshot(last);
        // The last 10 s, less at most one slice (156 ms: 1,562 calls).
        assert!(
            (98_438..=100_000).contains(&s.window_calls),
            "{}",
            s.window_calls
        );
        assert!((s.failure_rate - 0.1).abs() < 0.001, "{}", s.failure_rate);
        assert_eq!(s.state, BreakerState::Closed);
    }

    #[test]
    fn the_time_window_forgets_old_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            window_ms: 10_000,
            ..config()
        });
        for _ in 0..3 {
            call(&mut b, t0, CallResult::Failure);
        }
        let t1 = t0 + Duration::from_millis(10_001);
        call(&mut b, t1, CallResult::Failure);
        assert_eq!(
            b.state(t1),
            BreakerState::Closed,
            "old failures left the window"
        );
        assert_eq!(b.snapshot(t1).window_calls, 1);
    }

    #[test]
    fn an_operator_can_hold_it_open_or_closed() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config());
        b.force(t0, BreakerState::Open);
        assert_eq!(
            b.try_acquire(t0 + Duration::from_secs(3600)),
            None,
            "held open past the cool-down"
        );
        b.force(t0, BreakerState::Closed);
        for _ in 0..10 {
            call(&mut b, t0, CallResult::Failure);
        }
        assert_eq!(b.state(t0), BreakerState::Closed, "held closed");
        b.release();
        for _ in 0..4 {
            call(&mut b, t0, CallResult::Failure);
        }
        assert_eq!(b.state(t0), BreakerState::Open);
    }
}
