//! The circuit breaker of one deployment, as a pure state machine driven by the caller's
//! clock (`Instant`s passed in), so it is tested with a fake clock and no sleeps.
//!
//! Closed: outcomes go into a sliding window (the last N calls, or the calls of the last
//! D milliseconds). When the window holds at least `minimum_calls` and the failure rate
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

#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    state: BreakerState,
    window: VecDeque<(Instant, bool)>,
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
            window: VecDeque::new(),
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
                self.window.push_back((now, r == CallResult::Failure));
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
        let keep = match self.config.window_ms {
            0 => n.min(u64::from(self.config.window_size.max(1))),
            _ => n,
        };
        for _ in 0..keep {
            self.window.push_back((now, false));
        }
        self.trim(now);
    }

    fn trim(&mut self, now: Instant) {
        if self.config.window_ms > 0 {
            let horizon = Duration::from_millis(self.config.window_ms);
            while self
                .window
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > horizon)
            {
                self.window.pop_front();
            }
        } else {
            while self.window.len() > self.config.window_size.max(1) as usize {
                self.window.pop_front();
            }
        }
    }

    fn counts(&self) -> (u32, u32) {
        let calls = self.window.len() as u32;
        let failures = self.window.iter().filter(|(_, failed)| *failed).count() as u32;
        (calls, failures)
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.probes_in_flight = 0;
    }

    fn close(&mut self) {
        self.state = BreakerState::Closed;
        self.opened_at = None;
        self.window.clear();
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
