//! `ProviderActor`: one per deployment. It admits requests (the concurrency cap now, the
//! circuit breaker later) and records their outcomes. It never performs upstream I/O: the
//! request's own task does, holding an `AdmitPermit` that reports back when dropped.

use actix::prelude::*;

/// Why a deployment would not take a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("the deployment is at its concurrency cap")]
    Saturated,
}

/// How one admitted request ended, as far as the deployment's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The upstream failed (connect, timeout, 5xx, 429, malformed answer).
    Failure,
    /// The request was at fault, or the client went away: says nothing about health.
    Neutral,
}

/// From the request task: may I send a request upstream now?
#[derive(Message)]
#[rtype(result = "Result<(), AdmitError>")]
pub struct Admit;

/// From an `AdmitPermit`, fire-and-forget: an admitted request has finished.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordOutcome(pub Outcome);

/// From the router when the deployment was edited.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLimits {
    pub max_concurrency: Option<usize>,
}

/// Counters for the admin API and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProviderStats {
    pub inflight: usize,
    pub successes: u64,
    pub failures: u64,
}

#[derive(Message)]
#[rtype(result = "ProviderStats")]
pub struct GetStats;

pub struct ProviderActor {
    deployment_id: String,
    max_concurrency: Option<usize>,
    stats: ProviderStats,
}

impl ProviderActor {
    pub fn new(deployment_id: String, max_concurrency: Option<usize>) -> Self {
        Self {
            deployment_id,
            max_concurrency,
            stats: ProviderStats::default(),
        }
    }
}

impl Actor for ProviderActor {
    type Context = Context<Self>;
}

impl Supervised for ProviderActor {
    fn restarting(&mut self, _: &mut Self::Context) {
        tracing::warn!(deployment = %self.deployment_id, "provider actor restarting");
        self.stats.inflight = 0;
    }
}

impl Handler<Admit> for ProviderActor {
    type Result = Result<(), AdmitError>;

    fn handle(&mut self, _: Admit, _: &mut Self::Context) -> Self::Result {
        if self
            .max_concurrency
            .is_some_and(|cap| self.stats.inflight >= cap)
        {
            return Err(AdmitError::Saturated);
        }
        self.stats.inflight += 1;
        Ok(())
    }
}

impl Handler<RecordOutcome> for ProviderActor {
    type Result = ();

    fn handle(&mut self, msg: RecordOutcome, _: &mut Self::Context) {
        self.stats.inflight = self.stats.inflight.saturating_sub(1);
        match msg.0 {
            Outcome::Success => self.stats.successes += 1,
            Outcome::Failure => self.stats.failures += 1,
            Outcome::Neutral => {}
        }
    }
}

impl Handler<SetLimits> for ProviderActor {
    type Result = ();

    fn handle(&mut self, msg: SetLimits, _: &mut Self::Context) {
        self.max_concurrency = msg.max_concurrency;
    }
}

impl Handler<GetStats> for ProviderActor {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        MessageResult(self.stats)
    }
}

/// Proof of admission held by the request task; reports the outcome exactly once, as
/// `Neutral` if the task is dropped (client gone) before saying otherwise.
pub struct AdmitPermit {
    provider: Addr<ProviderActor>,
    reported: bool,
}

impl AdmitPermit {
    pub fn new(provider: Addr<ProviderActor>) -> Self {
        Self {
            provider,
            reported: false,
        }
    }

    pub fn finish(mut self, outcome: Outcome) {
        self.provider.do_send(RecordOutcome(outcome));
        self.reported = true;
    }
}

impl Drop for AdmitPermit {
    fn drop(&mut self) {
        if !self.reported {
            self.provider.do_send(RecordOutcome(Outcome::Neutral));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn the_concurrency_cap_admits_again_once_a_permit_is_released() {
        let provider = ProviderActor::new("d".into(), Some(1)).start();
        assert_eq!(provider.send(Admit).await, Ok(Ok(())));
        assert_eq!(provider.send(Admit).await, Ok(Err(AdmitError::Saturated)));
        AdmitPermit::new(provider.clone()).finish(Outcome::Success);
        assert_eq!(provider.send(Admit).await, Ok(Ok(())));
        let stats = provider.send(GetStats).await;
        assert_eq!(stats.map(|s| (s.inflight, s.successes)), Ok((1, 1)));
    }
}
