//! `QuotaActor`: admission against RPM and TPM (per user, or per key when the key has its
//! own RPM), token quota and budget (per user). It reserves a request's worst case (its
//! prompt plus `max_tokens`, and their cost at the dearest candidate deployment) and
//! settles to the real usage when the request's usage row is written; a failed or dropped request gives
//! its reservation back.
//!
//! The counters are shared through the database (`store::quota`): the actor leases units
//! from a shared counter (at least a twentieth of the limit, so a busy caller takes one
//! lease per twentieth of its limit) and spends them locally; a request whose units are
//! already leased costs one message round trip and no database work. Unused per-minute
//! units go back to the shared window a second after their lease, unused totals after a
//! few idle seconds, and what a request used beyond its reservation is owed with the next
//! lease (both at most once a second per counter).
//!
//! The bound, with N instances, a limit L and leases of k = max(need, ⌊L/20⌋) units:
//! - per minute: a unit is counted in the shared window when leased and used within
//!   `WINDOW_LEASE_LIFE` (1 s) of that, so any 60 seconds admit at most L + N·(k − 1)
//!   requests (or tokens), and exactly at most L when k = 1 (limits under 40);
//! - totals (token quota, budget): the shared counter never grants past the limit, so the
//!   spend exceeds it only by what requests use beyond their reservation (a prompt the
//!   estimate missed, or an answer longer than its reserved `max_tokens`): at most the
//!   requests in flight's excess over what they reserved.
//!
//! There is one `QuotaActor` per HTTP worker thread (`QuotaShards`), started on that
//! thread, so a request is admitted and settled without a message crossing threads. The
//! shards share the counters exactly as instances do: in the bound above, N counts every
//! worker of every instance. A shard that stops (at shutdown, with its worker) gives its
//! unused units back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::mpsc;

use crate::actors::ASK_TIMEOUT;
use crate::actors::feed::{Change, ChangeFeed, Changed, NotApplied, Subscribe};
use crate::actors::store::StoreActor;
use crate::actors::store::quota::{
    CounterKind, LeaseUnits, Leased, ReturnUnits, SpendUnit, total_subject,
};
use crate::domain::now_ms;
use crate::domain::quota::{
    CallerLimits, Demand, RateGauge, RateHeaders, SlidingWindow, lease_size,
};

/// How long leased per-minute units stay usable.
pub const WINDOW_LEASE_LIFE: Duration = Duration::from_secs(1);
/// Unused total units go back to the shared counter after this long without use.
const TOTAL_IDLE_RETURN: Duration = Duration::from_secs(5);
/// A counter unused this long (and owing nothing) is forgotten.
const COUNTER_IDLE_FORGET: Duration = Duration::from_secs(120);
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(1);

/// What a unit of a counter is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Requests,
    Tokens,
    Micros,
}

/// One counter a request draws on, and how much.
#[derive(Debug, Clone)]
struct Need {
    subject: String,
    kind: CounterKind,
    unit: Unit,
    limit: u64,
    amount: u64,
}

/// Units of one counter held by an admitted request until it settles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    subject: String,
    unit: Unit,
    amount: u64,
}

/// Admit one request for `user_id` through `key_id` under `limits`, reserving `demand`.
#[derive(Message)]
#[rtype(result = "Result<Admission, Refusal>")]
pub struct Admit {
    pub user_id: String,
    pub key_id: String,
    pub limits: CallerLimits,
    pub demand: Demand,
}

impl Admit {
    /// The counter of the caller's RPM: its key's when the key has its own limit.
    fn rpm_subject(&self) -> String {
        if self.limits.rpm_per_key {
            format!("rpm:key:{}", self.key_id)
        } else {
            format!("rpm:user:{}", self.user_id)
        }
    }

    fn tpm_subject(&self) -> String {
        format!("tpm:user:{}", self.user_id)
    }
}

/// An admitted request's holds and the rate limits to show on its answer.
#[derive(Debug)]
pub struct Admission {
    pub holds: Vec<Hold>,
    pub headers: RateHeaders,
}

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// RPM or TPM: room returns within the minute.
    RateLimited,
    /// Token quota or budget.
    InsufficientQuota,
    /// The shared counters could not be read.
    Unavailable,
}

#[derive(Debug)]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
    pub retry_after_ms: u64,
    pub headers: RateHeaders,
}

/// Settle holds to what the request really used (`tokens`, `micros`; zero gives the whole
/// reservation back).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Settle {
    pub holds: Vec<Hold>,
    pub tokens: u64,
    pub micros: u64,
}

/// The caller's current rate limits, for `GET /v1/usage`.
#[derive(Message)]
#[rtype(result = "RateHeaders")]
pub struct PeekRates {
    pub user_id: String,
    pub key_id: String,
    pub limits: CallerLimits,
}

#[derive(Debug)]
struct Counter {
    kind: CounterKind,
    limit: u64,
    /// Leased units not yet reserved; negative: used beyond the lease.
    allowance: i64,
    /// Units owed to the shared counter (positive) or given back to it (negative), sent
    /// with the next lease or by the next housekeeping.
    pending: i64,
    /// When unused per-minute units lapse.
    lapses: Option<Instant>,
    /// The shared last minute as of the last lease (per-minute counters).
    window: SlidingWindow,
    /// Units counted by the shared total as of the last lease (totals).
    used: u64,
    last_used: Instant,
}

impl Counter {
    fn new(kind: CounterKind, limit: u64) -> Self {
        Self {
            kind,
            limit,
            allowance: 0,
            pending: 0,
            lapses: None,
            window: SlidingWindow::default(),
            used: 0,
            last_used: Instant::now(),
        }
    }

    fn lapsed(&self, now: Instant) -> bool {
        self.lapses.is_some_and(|t| t <= now)
    }

    /// Once a per-minute lease is old, its unused units go back to the shared window, and
    /// what was used beyond it is owed.
    fn lapse(&mut self, now: Instant) {
        if self.lapsed(now) {
            self.pending -= std::mem::take(&mut self.allowance);
            self.lapses = None;
        }
    }

    /// Settles a hold of `held` units that really used `used`.
    fn settle(&mut self, held: u64, used: u64, now: Instant) {
        let back = held as i64 - used as i64;
        match self.kind {
            // A lease that has lapsed has already been squared with the shared window:
            // the difference goes there directly.
            CounterKind::PerMinute if self.lapses.is_none() || self.lapsed(now) => {
                self.pending -= back;
            }
            _ => self.allowance += back,
        }
        self.last_used = now;
    }

    fn available(&self) -> u64 {
        self.allowance.max(0) as u64
    }

    fn gauge(&self, now_ms: i64) -> RateGauge {
        let used = self.window.used(now_ms).saturating_sub(self.available());
        RateGauge {
            limit: self.limit,
            remaining: self.limit.saturating_sub(used),
            reset_ms: self.window.reset_ms(now_ms),
        }
    }
}

pub struct QuotaActor {
    store: Addr<StoreActor>,
    counters: HashMap<String, Counter>,
    /// Held until this actor's unused units are given back (see `QuotaShards::returned`).
    alive: Option<mpsc::Sender<()>>,
}

impl QuotaActor {
    pub fn new(store: Addr<StoreActor>) -> Self {
        Self {
            store,
            counters: HashMap::new(),
            alive: None,
        }
    }

    /// Every unused unit and every adjustment still owed, to go back to the shared
    /// counters; the local counters keep nothing.
    fn take_returns(&mut self) -> Vec<LeaseUnits> {
        let now_ms = now_ms();
        self.counters
            .iter_mut()
            .filter_map(|(subject, c)| {
                c.pending -= std::mem::take(&mut c.allowance);
                let adjust = std::mem::take(&mut c.pending);
                (adjust != 0).then(|| LeaseUnits {
                    subject: subject.clone(),
                    kind: c.kind.clone(),
                    limit: c.limit,
                    need: 0,
                    want: 0,
                    adjust,
                    now_ms,
                })
            })
            .collect()
    }

    fn needs(msg: &Admit) -> Vec<Need> {
        let l = &msg.limits;
        let mut needs = Vec::with_capacity(4);
        if let Some(limit) = l.rpm {
            needs.push(Need {
                subject: msg.rpm_subject(),
                kind: CounterKind::PerMinute,
                unit: Unit::Requests,
                limit,
                amount: 1,
            });
        }
        if let Some(limit) = l.tpm {
            needs.push(Need {
                subject: msg.tpm_subject(),
                kind: CounterKind::PerMinute,
                unit: Unit::Tokens,
                limit,
                amount: msg.demand.tokens,
            });
        }
        for (limit, unit, spend, amount) in [
            (
                l.token_quota,
                Unit::Tokens,
                SpendUnit::Tokens,
                msg.demand.tokens,
            ),
            (
                l.budget_micros,
                Unit::Micros,
                SpendUnit::Micros,
                msg.demand.micros,
            ),
        ] {
            if let Some(limit) = limit {
                needs.push(Need {
                    subject: total_subject(spend, &msg.user_id),
                    kind: CounterKind::Total {
                        user_id: msg.user_id.clone(),
                        unit: spend,
                    },
                    unit,
                    limit,
                    amount,
                });
            }
        }
        needs
    }

    /// The counters of `needs`, created if new, limits brought up to date, lapsed units
    /// dropped; the leases still missing.
    fn prepare(&mut self, needs: &[Need], now: Instant, now_ms: i64) -> Vec<LeaseUnits> {
        let mut missing = Vec::new();
        for need in needs {
            let counter = self
                .counters
                .entry(need.subject.clone())
                .or_insert_with(|| Counter::new(need.kind.clone(), need.limit));
            counter.limit = need.limit;
            counter.lapse(now);
            if counter.allowance < need.amount as i64 {
                let short = (need.amount as i64 - counter.allowance).max(0) as u64;
                // Units used beyond the lease are owed with this lease.
                counter.pending -= counter.allowance.min(0);
                counter.allowance = counter.allowance.max(0);
                missing.push(LeaseUnits {
                    subject: need.subject.clone(),
                    kind: need.kind.clone(),
                    limit: need.limit,
                    need: short,
                    want: lease_size(need.limit, short),
                    adjust: std::mem::take(&mut counter.pending),
                    now_ms,
                });
            }
        }
        missing
    }

    fn apply_lease(&mut self, subject: &str, leased: Leased, now: Instant) {
        if let Some(c) = self.counters.get_mut(subject) {
            c.allowance += leased.granted as i64;
            c.used = leased.used;
            if c.kind == CounterKind::PerMinute {
                c.window = leased.window;
                if leased.granted > 0 {
                    c.lapses = Some(now + WINDOW_LEASE_LIFE);
                }
            }
        }
    }

    /// Takes every need from the local allowances, or none of them.
    fn take(&mut self, needs: &[Need], now_ms: i64) -> Result<Admission, Refusal> {
        let now = Instant::now();
        let short = needs.iter().find(|n| {
            self.counters
                .get(&n.subject)
                .is_none_or(|c| c.available() < n.amount)
        });
        if let Some(need) = short {
            return Err(self.refusal(needs, need, now_ms));
        }
        let mut holds = Vec::with_capacity(needs.len());
        for need in needs {
            if let Some(c) = self.counters.get_mut(&need.subject) {
                c.allowance -= need.amount as i64;
                c.last_used = now;
            }
            holds.push(Hold {
                subject: need.subject.clone(),
                unit: need.unit,
                amount: need.amount,
            });
        }
        Ok(Admission {
            holds,
            headers: self.headers(needs, now_ms),
        })
    }

    fn refusal(&self, needs: &[Need], need: &Need, now_ms: i64) -> Refusal {
        let headers = self.headers(needs, now_ms);
        let counter = self.counters.get(&need.subject);
        let what = match need.unit {
            Unit::Requests => "requests per minute",
            Unit::Tokens if need.kind == CounterKind::PerMinute => "tokens per minute",
            Unit::Tokens => "token quota",
            Unit::Micros => "budget",
        };
        if need.kind == CounterKind::PerMinute {
            let available = counter.map_or(0, Counter::available);
            let missing = need.amount.saturating_sub(available);
            let wait = counter
                .and_then(|c| c.window.wait_for(now_ms, missing, need.limit))
                .filter(|ms| *ms > 0);
            let message = match wait {
                Some(_) => format!(
                    "rate limit reached: {} {what} (limit {}); retry after the reset",
                    need.limit, need.limit
                ),
                None if need.amount > need.limit => format!(
                    "this request needs {} tokens, more than the limit of {} {what}",
                    need.amount, need.limit
                ),
                None => format!("rate limit reached: limit {} {what}", need.limit),
            };
            return Refusal {
                kind: RefusalKind::RateLimited,
                message,
                retry_after_ms: wait.unwrap_or(60_000),
                headers,
            };
        }
        let (limit, spent) = match need.unit {
            Unit::Micros => (
                format!("${:.6}", need.limit as f64 / 1e6),
                format!("${:.6}", counter.map_or(0, |c| c.used) as f64 / 1e6),
            ),
            _ => (
                need.limit.to_string(),
                counter.map_or(0, |c| c.used).to_string(),
            ),
        };
        Refusal {
            kind: RefusalKind::InsufficientQuota,
            message: format!(
                "insufficient quota: this request may need {} more against a {what} of {limit} \
                 ({spent} used or reserved); ask an administrator to raise it",
                match need.unit {
                    Unit::Micros => format!("${:.6}", need.amount as f64 / 1e6),
                    _ => format!("{} tokens", need.amount),
                }
            ),
            // Room returns only when reservations in flight settle below what they hold,
            // or when an administrator raises the limit.
            retry_after_ms: 60_000,
            headers,
        }
    }

    /// The rate limits among `needs` as they stand (a counter not leased yet: all left).
    fn headers(&self, needs: &[Need], now_ms: i64) -> RateHeaders {
        let gauge = |need: &Need| {
            self.counters.get(&need.subject).map_or_else(
                || RateGauge {
                    limit: need.limit,
                    remaining: need.limit,
                    reset_ms: 0,
                },
                |c| c.gauge(now_ms),
            )
        };
        let per_minute = |unit: Unit| {
            needs
                .iter()
                .find(|n| n.kind == CounterKind::PerMinute && n.unit == unit)
                .map(gauge)
        };
        RateHeaders {
            requests: per_minute(Unit::Requests),
            tokens: per_minute(Unit::Tokens),
        }
    }

    /// Squares lapsed leases and idle totals with the shared counters (one message per
    /// counter that owes or gives back something), forgets idle counters.
    fn housekeeping(&mut self, now: Instant) {
        let now_ms = now_ms();
        let store = self.store.clone();
        self.counters.retain(|subject, c| {
            c.lapse(now);
            let idle = now.saturating_duration_since(c.last_used);
            if matches!(c.kind, CounterKind::Total { .. }) && idle >= TOTAL_IDLE_RETURN {
                c.pending -= std::mem::take(&mut c.allowance);
            }
            if c.pending != 0 {
                store.do_send(LeaseUnits {
                    subject: subject.clone(),
                    kind: c.kind.clone(),
                    limit: c.limit,
                    need: 0,
                    want: 0,
                    adjust: std::mem::take(&mut c.pending),
                    now_ms,
                });
            }
            c.allowance != 0 || idle < COUNTER_IDLE_FORGET
        });
    }
}

impl Actor for QuotaActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(HOUSEKEEPING_EVERY, |act, _| {
            act.housekeeping(Instant::now())
        });
    }

    /// Stopping (with its worker at shutdown, or to be restarted): unused units go back
    /// to the shared counters through the store, which outlives the workers.
    fn stopped(&mut self, _: &mut Self::Context) {
        let returns = self.take_returns();
        let Some(done) = self.alive.clone() else {
            return;
        };
        if !returns.is_empty() {
            self.store.do_send(ReturnUnits { returns, done });
        }
    }
}

/// The quota actors of this instance, one per HTTP worker thread.
pub struct QuotaShards {
    store: Addr<StoreActor>,
    feed: Addr<ChangeFeed>,
    /// Cloned into every shard; `returned` waits until every clone is gone.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    gone: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

impl QuotaShards {
    pub fn new(store: Addr<StoreActor>, feed: Addr<ChangeFeed>) -> Arc<Self> {
        let (alive, gone) = mpsc::channel(1);
        Arc::new(Self {
            store,
            feed,
            alive: Mutex::new(Some(alive)),
            gone: tokio::sync::Mutex::new(gone),
        })
    }

    /// Starts a supervised quota actor on the current thread (an HTTP worker's, from the
    /// app factory), subscribed to the change feed before it serves any request.
    pub fn start_here(&self) -> Addr<QuotaActor> {
        let alive = self.alive.lock().ok().and_then(|a| a.clone());
        let store = self.store.clone();
        let addr = Supervisor::start(move |_| QuotaActor {
            alive,
            ..QuotaActor::new(store)
        });
        self.feed.do_send(Subscribe {
            name: "quota",
            recipient: addr.clone().recipient(),
        });
        addr
    }

    /// After the workers stopped: waits (at most `within`) until every shard has given
    /// back its unused units.
    pub async fn returned(&self, within: Duration) {
        if let Ok(mut alive) = self.alive.lock() {
            alive.take();
        }
        let mut gone = self.gone.lock().await;
        let all_gone = async { while gone.recv().await.is_some() {} };
        if tokio::time::timeout(within, all_gone).await.is_err() {
            tracing::warn!("quota: some unused units were not given back before shutdown");
        }
    }
}

/// Restarted by its supervisor, the actor starts with no local leases: what it held is
/// counted as used by the shared counters (never more admitted than the limits allow).
impl Supervised for QuotaActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        self.counters.clear();
    }
}

impl Handler<Admit> for QuotaActor {
    type Result = AtomicResponse<Self, Result<Admission, Refusal>>;

    fn handle(&mut self, msg: Admit, _: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        let now_ms = now_ms();
        let needs = Self::needs(&msg);
        let missing = self.prepare(&needs, now, now_ms);
        if missing.is_empty() {
            let answer = self.take(&needs, now_ms);
            return AtomicResponse::new(Box::pin(fut::ready(answer)));
        }
        // Leasing waits for the database; the actor handles nothing else meanwhile, so
        // the leases it takes are this request's to use.
        let store = self.store.clone();
        let leases = async move {
            let mut answers = Vec::with_capacity(missing.len());
            for lease in missing {
                let subject = lease.subject.clone();
                let answer = store.send(lease).timeout(ASK_TIMEOUT).await;
                answers.push((subject, answer));
            }
            answers
        };
        AtomicResponse::new(Box::pin(leases.into_actor(self).map(
            move |answers, act, _| {
                let now = Instant::now();
                let now_ms = crate::domain::now_ms();
                for (subject, answer) in answers {
                    match answer {
                        Ok(Ok(leased)) => act.apply_lease(&subject, leased, now),
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, subject, "quota: could not lease");
                            return Err(act.unavailable(&needs, now_ms));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, subject, "quota: the store did not answer");
                            return Err(act.unavailable(&needs, now_ms));
                        }
                    }
                }
                act.take(&needs, now_ms)
            },
        )))
    }
}

impl QuotaActor {
    fn unavailable(&self, needs: &[Need], now_ms: i64) -> Refusal {
        Refusal {
            kind: RefusalKind::Unavailable,
            message: "limits cannot be checked right now; retry shortly".into(),
            retry_after_ms: 1_000,
            headers: self.headers(needs, now_ms),
        }
    }
}

impl Handler<Settle> for QuotaActor {
    type Result = ();

    fn handle(&mut self, msg: Settle, _: &mut Self::Context) {
        let now = Instant::now();
        for hold in msg.holds {
            let used = match hold.unit {
                Unit::Requests => hold.amount,
                Unit::Tokens => msg.tokens,
                Unit::Micros => msg.micros,
            };
            if let Some(c) = self.counters.get_mut(&hold.subject) {
                c.settle(hold.amount, used, now);
            }
        }
    }
}

impl Handler<Changed> for QuotaActor {
    type Result = Result<(), NotApplied>;

    /// A user's limits changed: the store started its shared spend counters again from
    /// the recorded spend, so what this instance had leased of them is forgotten (spends
    /// still in flight settle against nothing). On `All` every total is forgotten.
    fn handle(&mut self, msg: Changed, _: &mut Self::Context) -> Self::Result {
        match msg.0 {
            Change::Limits { user_id } => {
                for unit in [SpendUnit::Tokens, SpendUnit::Micros] {
                    self.counters.remove(&total_subject(unit, &user_id));
                }
            }
            Change::All => self
                .counters
                .retain(|_, c| c.kind == CounterKind::PerMinute),
            _ => {}
        }
        Ok(())
    }
}

impl Handler<PeekRates> for QuotaActor {
    type Result = MessageResult<PeekRates>;

    fn handle(&mut self, msg: PeekRates, _: &mut Self::Context) -> Self::Result {
        let admit = Admit {
            user_id: msg.user_id,
            key_id: msg.key_id,
            limits: msg.limits,
            demand: Demand::default(),
        };
        MessageResult(self.headers(&Self::needs(&admit), now_ms()))
    }
}

/// An admitted request's reservation: settled once, when its usage row is written, or
/// given back whole if it is dropped unsettled.
pub struct Reservation {
    quota: Addr<QuotaActor>,
    holds: Vec<Hold>,
}

impl Reservation {
    pub fn new(quota: Addr<QuotaActor>, holds: Vec<Hold>) -> Self {
        Self { quota, holds }
    }

    /// Settles to what the request used.
    pub fn settle(mut self, tokens: u64, micros: u64) {
        let holds = std::mem::take(&mut self.holds);
        if !holds.is_empty() {
            self.quota.do_send(Settle {
                holds,
                tokens,
                micros,
            });
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let holds = std::mem::take(&mut self.holds);
        if !holds.is_empty() {
            self.quota.do_send(Settle {
                holds,
                tokens: 0,
                micros: 0,
            });
        }
    }
}
