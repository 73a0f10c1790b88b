//! `ProviderActor`: one per deployment. It owns the deployment's circuit breaker and its
//! concurrency cap (with a short queue), admits requests, and records their outcomes. It
//! never performs upstream I/O: the request's own task does, holding an `AdmitPermit` that
//! reports back exactly once, even when dropped.
//!
//! While nothing can refuse a request (the breaker closed, no concurrency cap), the actor
//! says so in its `Gate`, and requests admit themselves without a message round trip; the
//! actor stays the only writer of the breaker, which every outcome still reaches. Such a
//! request that succeeds sends no message either: it adds to the gate's count of
//! successes, which the actor folds into the breaker before any other outcome (so a
//! failure is weighed after the successes that came before it), before every view, and
//! every `FOLD_EVERY` (successes only dilute failures; they never move the breaker). A request
//! that read the gate just before the breaker opened is admitted as a call of the closed
//! breaker, whose late outcome the breaker ignores (as for any call admitted before a
//! transition).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::domain::breaker::{
    Breaker, BreakerConfig, BreakerSnapshot, BreakerState, CallResult, Ticket,
};
use crate::domain::now_ms;
use crate::telemetry::metrics::Metrics;

/// How long a request waits in a saturated deployment's queue before trying elsewhere.
pub const QUEUE_WAIT: Duration = Duration::from_millis(100);
/// How often the successes counted in the gate are folded into the breaker at least.
const FOLD_EVERY: Duration = Duration::from_secs(1);

/// Why a deployment would not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the deployment's circuit breaker is open")]
    Open,
    #[error("the deployment is at its concurrency cap")]
    Saturated,
}

/// The answer to `Admit`: at once, or a place in the queue.
pub enum AdmitReply {
    Ready(Result<Ticket, AdmitError>),
    /// Wait (at most `QUEUE_WAIT`) for a ticket; a closed channel means the breaker opened.
    Queued(oneshot::Receiver<Ticket>),
}

/// From the request task: may I send a request upstream now?
#[derive(Message)]
#[rtype(result = "AdmitReply")]
pub struct Admit;

/// From an `AdmitPermit`, fire-and-forget: an admitted request has finished.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordOutcome {
    pub ticket: Ticket,
    pub result: CallResult,
    /// Admitted through the gate: the permit already released its in-flight count.
    pub via_gate: bool,
}

/// From the router when the deployment was edited.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Configure {
    pub max_concurrency: Option<usize>,
    pub breaker: BreakerConfig,
}

/// From the admin API: hold the breaker open or closed (`Some`), or release it (`None`).
#[derive(Message)]
#[rtype(result = "BreakerView")]
pub struct ForceBreaker(pub Option<BreakerState>);

/// From the admin API: the breaker and load of this deployment now.
#[derive(Message)]
#[rtype(result = "BreakerView")]
pub struct GetBreaker;

/// A deployment's breaker and load, as `GET /admin/breakers` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct BreakerView {
    pub deployment_id: String,
    #[serde(flatten)]
    pub breaker: BreakerSnapshot,
    /// When the breaker last opened (Unix ms), while it is not closed.
    pub opened_at: Option<i64>,
    pub forced: bool,
    pub inflight: usize,
    pub queued: usize,
    pub successes: u64,
    pub failures: u64,
}

/// What the actor publishes for requests to read without asking it.
#[derive(Debug, Default)]
pub struct Gate {
    /// The breaker is closed and there is no concurrency cap: admit without asking.
    admits_freely: AtomicBool,
    /// Requests admitted and not yet finished (the actor's and the gate's admissions).
    inflight: AtomicUsize,
    /// Successes of requests admitted through the gate, not yet in the breaker.
    successes: AtomicU64,
}

impl Gate {
    fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Acquire)
    }

    fn finished(&self) {
        let _ = self
            .inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// A deployment's provider actor and its gate.
#[derive(Clone)]
pub struct ProviderHandle {
    pub addr: Addr<ProviderActor>,
    gate: Arc<Gate>,
}

impl ProviderHandle {
    /// Starts a supervised provider actor for the deployment `deployment_id`.
    pub fn start(
        deployment_id: String,
        max_concurrency: Option<usize>,
        breaker: BreakerConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        let gate = Arc::new(Gate::default());
        let addr = {
            let gate = gate.clone();
            Supervisor::start(move |_| {
                ProviderActor::new(deployment_id, max_concurrency, breaker, metrics, gate)
            })
        };
        Self { addr, gate }
    }

    pub fn connected(&self) -> bool {
        self.addr.connected()
    }
}

pub struct ProviderActor {
    deployment_id: String,
    max_concurrency: Option<usize>,
    breaker: Breaker,
    gate: Arc<Gate>,
    waiting: VecDeque<oneshot::Sender<Ticket>>,
    successes: u64,
    failures: u64,
    metrics: Arc<Metrics>,
    published: Option<BreakerState>,
}

impl ProviderActor {
    pub fn new(
        deployment_id: String,
        max_concurrency: Option<usize>,
        breaker: BreakerConfig,
        metrics: Arc<Metrics>,
        gate: Arc<Gate>,
    ) -> Self {
        Self {
            deployment_id,
            max_concurrency,
            breaker: Breaker::new(breaker),
            gate,
            waiting: VecDeque::new(),
            successes: 0,
            failures: 0,
            metrics,
            published: None,
        }
    }

    fn saturated(&self) -> bool {
        self.max_concurrency
            .is_some_and(|cap| self.gate.inflight() >= cap)
    }

    fn admitted(&self) {
        self.gate.inflight.fetch_add(1, Ordering::AcqRel);
    }

    /// Brings the successes counted in the gate into the breaker and the counters.
    fn fold_successes(&mut self, now: Instant) {
        let n = self.gate.successes.swap(0, Ordering::AcqRel);
        if n > 0 {
            self.successes += n;
            self.breaker.on_successes(now, n);
        }
    }

    /// Publishes the gate, and the breaker state gauge when it changed.
    fn publish(&mut self, now: Instant) {
        let state = self.breaker.state(now);
        let free = state == BreakerState::Closed && self.max_concurrency.is_none();
        self.gate.admits_freely.store(free, Ordering::Release);
        if self.published != Some(state) {
            self.metrics.set_breaker_state(&self.deployment_id, state);
            self.published = Some(state);
        }
    }

    /// Hands free slots to queued requests (skipping those that gave up).
    fn serve_queue(&mut self, now: Instant) {
        while !self.saturated() {
            let Some(waiter) = self.waiting.pop_front() else {
                return;
            };
            if waiter.is_closed() {
                continue;
            }
            let Some(ticket) = self.breaker.try_acquire(now) else {
                // Dropping the sender tells the waiter the breaker is open.
                self.waiting.clear();
                return;
            };
            match waiter.send(ticket) {
                Ok(()) => self.admitted(),
                Err(ticket) => self.breaker.on_result(now, ticket, CallResult::Ignored),
            }
        }
    }

    fn view(&mut self, now: Instant) -> BreakerView {
        let breaker = self.breaker.snapshot(now);
        BreakerView {
            deployment_id: self.deployment_id.clone(),
            opened_at: breaker
                .open_for
                .map(|d| now_ms() - i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            breaker,
            forced: self.breaker.is_forced(),
            inflight: self.gate.inflight(),
            queued: self.waiting.len(),
            successes: self.successes,
            failures: self.failures,
        }
    }
}

impl Actor for ProviderActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.publish(Instant::now());
        ctx.run_interval(FOLD_EVERY, |act, _| {
            let now = Instant::now();
            act.fold_successes(now);
            act.publish(now);
        });
    }
}

impl Supervised for ProviderActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        tracing::warn!(deployment = %self.deployment_id, "provider actor restarting");
        self.gate.inflight.store(0, Ordering::Release);
        self.waiting.clear();
    }
}

impl Handler<Admit> for ProviderActor {
    type Result = MessageResult<Admit>;

    fn handle(&mut self, _: Admit, _: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        if self.saturated() {
            let cap = self.max_concurrency.unwrap_or(0);
            if self.breaker.state(now) != BreakerState::Closed || self.waiting.len() >= cap {
                return MessageResult(AdmitReply::Ready(Err(AdmitError::Saturated)));
            }
            let (tx, rx) = oneshot::channel();
            self.waiting.push_back(tx);
            return MessageResult(AdmitReply::Queued(rx));
        }
        let reply = match self.breaker.try_acquire(now) {
            Some(ticket) => {
                self.admitted();
                Ok(ticket)
            }
            None => Err(AdmitError::Open),
        };
        self.publish(now);
        MessageResult(AdmitReply::Ready(reply))
    }
}

impl Handler<RecordOutcome> for ProviderActor {
    type Result = ();

    fn handle(&mut self, msg: RecordOutcome, _: &mut Self::Context) {
        let now = Instant::now();
        self.fold_successes(now);
        if !msg.via_gate {
            self.gate.finished();
        }
        match msg.result {
            CallResult::Success => self.successes += 1,
            CallResult::Failure => self.failures += 1,
            CallResult::Ignored => {}
        }
        self.breaker.on_result(now, msg.ticket, msg.result);
        self.publish(now);
        self.serve_queue(now);
    }
}

impl Handler<Configure> for ProviderActor {
    type Result = ();

    fn handle(&mut self, msg: Configure, _: &mut Self::Context) {
        let now = Instant::now();
        self.max_concurrency = msg.max_concurrency;
        self.breaker.set_config(msg.breaker);
        self.publish(now);
        self.serve_queue(now);
    }
}

impl Handler<ForceBreaker> for ProviderActor {
    type Result = MessageResult<ForceBreaker>;

    fn handle(&mut self, msg: ForceBreaker, _: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        self.fold_successes(now);
        match msg.0 {
            Some(state) => self.breaker.force(now, state),
            None => self.breaker.release(),
        }
        self.publish(now);
        MessageResult(self.view(now))
    }
}

impl Handler<GetBreaker> for ProviderActor {
    type Result = MessageResult<GetBreaker>;

    fn handle(&mut self, _: GetBreaker, _: &mut Self::Context) -> Self::Result {
        let now = Instant::now();
        self.fold_successes(now);
        self.publish(now);
        MessageResult(self.view(now))
    }
}

/// Proof of admission held by the request task; reports the outcome exactly once, as
/// `Ignored` if the task is dropped (client gone) before saying otherwise.
pub struct AdmitPermit {
    provider: Addr<ProviderActor>,
    ticket: Ticket,
    /// The gate that admitted it, when no message was needed to admit.
    gate: Option<Arc<Gate>>,
    reported: bool,
}

impl AdmitPermit {
    fn new(provider: Addr<ProviderActor>, ticket: Ticket) -> Self {
        Self {
            provider,
            ticket,
            gate: None,
            reported: false,
        }
    }

    /// Through the gate, only a failure is a message: a success is counted in the gate,
    /// and an ignored outcome changes nothing but the in-flight count.
    fn report(&mut self, result: CallResult) {
        self.reported = true;
        let via_gate = self.gate.is_some();
        if let Some(gate) = &self.gate {
            gate.finished();
            match result {
                CallResult::Success => {
                    gate.successes.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                CallResult::Ignored => return,
                CallResult::Failure => {}
            }
        }
        self.provider.do_send(RecordOutcome {
            ticket: self.ticket,
            result,
            via_gate,
        });
    }

    pub fn finish(mut self, result: CallResult) {
        self.report(result);
    }
}

impl Drop for AdmitPermit {
    fn drop(&mut self) {
        if !self.reported {
            self.report(CallResult::Ignored);
        }
    }
}

/// Admits through the gate when it admits freely; else asks `provider` for a ticket,
/// waiting in its queue for at most `QUEUE_WAIT`.
pub async fn admit(handle: &ProviderHandle) -> Result<AdmitPermit, AdmitError> {
    let provider = &handle.addr;
    if handle.gate.admits_freely.load(Ordering::Acquire) {
        handle.gate.inflight.fetch_add(1, Ordering::AcqRel);
        let mut permit = AdmitPermit::new(provider.clone(), Ticket::Normal);
        permit.gate = Some(handle.gate.clone());
        return Ok(permit);
    }
    let reply = provider
        .send(Admit)
        .timeout(super::ASK_TIMEOUT)
        .await
        .map_err(|_| AdmitError::Saturated)?;
    let ticket = match reply {
        AdmitReply::Ready(result) => result?,
        AdmitReply::Queued(mut rx) => match tokio::time::timeout(QUEUE_WAIT, &mut rx).await {
            Ok(Ok(ticket)) => ticket,
            Ok(Err(_)) => return Err(AdmitError::Open),
            Err(_) => {
                rx.close();
                // A ticket that arrived as we gave up is handed back.
                if let Ok(ticket) = rx.try_recv() {
                    drop(AdmitPermit::new(provider.clone(), ticket));
                }
                return Err(AdmitError::Saturated);
            }
        },
    };
    Ok(AdmitPermit::new(provider.clone(), ticket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(cap: Option<usize>) -> ProviderHandle {
        ProviderHandle::start(
            "d".into(),
            cap,
            BreakerConfig::default(),
            Arc::new(Metrics::new()),
        )
    }

    #[actix::test]
    async fn the_gate_admits_freely_only_while_nothing_can_refuse() {
        let provider = actor(None);
        // The actor publishes its gate when it starts.
        provider.addr.send(GetBreaker).await.expect("answers");
        let (first, second) = (admit(&provider).await, admit(&provider).await);
        let view = provider.addr.send(GetBreaker).await.expect("answers");
        assert_eq!(view.inflight, 2, "gate admissions count as in flight");
        first.expect("admitted").finish(CallResult::Success);
        drop(second);
        let view = provider.addr.send(GetBreaker).await.expect("answers");
        assert_eq!((view.inflight, view.successes), (0, 1));

        provider
            .addr
            .send(Configure {
                max_concurrency: Some(1),
                breaker: BreakerConfig::default(),
            })
            .await
            .expect("answers");
        let held = admit(&provider).await.expect("admitted");
        assert_eq!(
            admit(&provider).await.err(),
            Some(AdmitError::Saturated),
            "with a cap every admission goes through the actor"
        );
        held.finish(CallResult::Success);
    }

    #[actix::test]
    async fn the_concurrency_cap_queues_briefly_then_refuses() {
        let provider = actor(Some(1));
        let first = admit(&provider).await.expect("admitted");
        assert_eq!(admit(&provider).await.err(), Some(AdmitError::Saturated));
        let waiting = actix::spawn({
            let provider = provider.clone();
            async move { admit(&provider).await.is_ok() }
        });
        first.finish(CallResult::Success);
        assert!(
            waiting.await.expect("joined"),
            "the queued request got the freed slot"
        );
        let view = provider.addr.send(GetBreaker).await.expect("answers");
        assert_eq!((view.inflight, view.successes), (0, 1));
    }

    #[actix::test]
    async fn an_open_breaker_refuses_and_a_forced_close_admits() {
        let provider = actor(None);
        provider
            .addr
            .send(ForceBreaker(Some(BreakerState::Open)))
            .await
            .expect("answers");
        assert_eq!(admit(&provider).await.err(), Some(AdmitError::Open));
        let view = provider
            .addr
            .send(ForceBreaker(None))
            .await
            .expect("answers");
        assert_eq!(view.breaker.state, BreakerState::Open);
        provider
            .addr
            .send(ForceBreaker(Some(BreakerState::Closed)))
            .await
            .expect("answers");
        assert!(admit(&provider).await.is_ok());
    }
}
