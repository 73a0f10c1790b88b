//! `JobActor`: runs async jobs. Jobs live in the database (`StoreActor`); the actor
//! claims them one at a time, oldest first (a job of a model at its limit waits, in
//! order), runs each as a task on its own thread through its own `Relay` (so a job goes
//! through the same routing, breakers, quotas and usage row as a request), renews the
//! leases of what it runs, and finishes them. With several instances on PostgreSQL each
//! claims with `FOR UPDATE SKIP LOCKED`, and a job whose instance died is claimed again
//! once its lease ran out.
//!
//! State changes go to watchers (`GET /v1/jobs/{id}/events`, a synchronous image request)
//! over a small broadcast channel per watched job: a slow watcher skips states, and reads
//! the rest from the database.

mod run;
mod webhook;

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::broadcast;

use crate::actors::store::{
    ArtifactStorage, ClaimWebhook, CountJobs, FinishJob, PurgeJobs, ReleaseOrphanJobs,
    RenewJobLeases, RequeueJob, StoreActor, UpdateJob, WebhookAttempted, WebhookOutcome,
};
use crate::config::JobSettings;
use crate::domain::jobs::{JobError, JobRecord, JobState, JobStatus, Submitted};
use crate::domain::now_ms;
use crate::relay::{ImageEvent, Relay};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::otel;
use run::Outcome;
pub use webhook::Webhooks;

/// Builds the actor's relay on its own thread (with a quota actor of its own).
pub type RelayFactory = Arc<dyn Fn() -> Relay + Send + Sync>;

/// Webhook deliveries one instance makes at once.
const MAX_DELIVERIES: usize = 4;

/// Progress is written to the database at most this often per job (watchers on this
/// instance see every step).
const SAVE_PROGRESS_EVERY: Duration = Duration::from_millis(500);

struct Running {
    model: String,
    task: tokio::task::JoinHandle<()>,
    state: JobState,
    submitted: Option<Submitted>,
    saved_at: Instant,
}

pub struct JobActor {
    /// This instance's name on the leases it holds.
    owner: String,
    settings: JobSettings,
    store: Addr<StoreActor>,
    make_relay: RelayFactory,
    relay: Option<Rc<Relay>>,
    metrics: Arc<Metrics>,
    webhooks: Webhooks,
    running: HashMap<String, Running>,
    watchers: HashMap<String, broadcast::Sender<JobState>>,
    claiming: bool,
    /// Something may have become claimable while a claim was under way.
    again: bool,
    stopping: bool,
    /// Webhook deliveries under way (claimed, not yet recorded).
    delivering: usize,
}

impl JobActor {
    pub fn new(
        settings: JobSettings,
        store: Addr<StoreActor>,
        make_relay: RelayFactory,
        metrics: Arc<Metrics>,
        webhooks: Webhooks,
    ) -> Self {
        Self {
            owner: uuid::Uuid::new_v4().to_string(),
            settings,
            store,
            make_relay,
            relay: None,
            metrics,
            webhooks,
            running: HashMap::new(),
            watchers: HashMap::new(),
            claiming: false,
            again: false,
            stopping: false,
            delivering: 0,
        }
    }

    fn storage(&self) -> ArtifactStorage {
        ArtifactStorage {
            inline_limit: self.settings.inline_artifact_bytes,
            dir: self.settings.artifact_dir.clone(),
        }
    }

    /// Claims the next job if there is room, and keeps claiming while jobs come.
    fn claim(&mut self, ctx: &mut Context<Self>) {
        if self.claiming {
            self.again = true;
            return;
        }
        if self.stopping || self.running.len() >= self.settings.max_running {
            return;
        }
        let mut per_model: HashMap<&str, usize> = HashMap::new();
        for job in self.running.values() {
            *per_model.entry(job.model.as_str()).or_default() += 1;
        }
        let saturated = per_model
            .into_iter()
            .filter(|(_, n)| *n >= self.settings.max_running_per_model)
            .map(|(m, _)| m.to_string())
            .collect();
        self.claiming = true;
        self.again = false;
        let claim = self.store.send(crate::actors::store::ClaimJob {
            owner: self.owner.clone(),
            lease_ms: self.settings.lease_ms,
            saturated,
        });
        ctx.spawn(claim.into_actor(self).map(|claimed, act, ctx| {
            act.claiming = false;
            match claimed {
                Ok(Ok(Some(job))) => {
                    act.start(job, ctx);
                    act.claim(ctx);
                }
                Ok(Ok(None)) => {
                    if act.again {
                        act.claim(ctx);
                    }
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "could not claim a job"),
                Err(e) => tracing::warn!(error = %e, "could not claim a job"),
            }
        }));
    }

    fn start(&mut self, job: JobRecord, ctx: &mut Context<Self>) {
        let Some(relay) = self.relay.clone() else {
            return;
        };
        let me = ctx.address();
        let store = self.store.clone();
        let settings = self.settings.clone();
        let id = job.id.clone();
        let span = otel::job_span(&job.id, job.kind.as_str(), &job.model, job.attempts);
        tracing::info!(job = %job.id, kind = job.kind.as_str(), model = %job.model, attempt = job.attempts, "job started");
        let state = JobState {
            status: JobStatus::Running,
            progress: job.progress,
        };
        self.publish(&id, state);
        let model = job.model.clone();
        let task = {
            let id = id.clone();
            let outer = span.clone();
            actix::spawn(tracing::Instrument::instrument(
                async move {
                    let events = |event: ImageEvent| {
                        me.do_send(Progress {
                            id: id.clone(),
                            event,
                        })
                    };
                    let outcome = run::run(&relay, &store, &settings, &job, &events).await;
                    if let Outcome::Finished { status, .. } = &outcome {
                        span.record("lowart.job.status", status.as_str());
                        if *status == JobStatus::Failed {
                            span.record("otel.status_code", "ERROR");
                        }
                    }
                    me.do_send(Done { id, outcome });
                },
                outer,
            ))
        };
        self.running.insert(
            id,
            Running {
                model,
                task,
                state,
                submitted: None,
                saved_at: Instant::now(),
            },
        );
    }

    fn publish(&mut self, id: &str, state: JobState) {
        if let Some(tx) = self.watchers.get(id)
            && tx.send(state).is_err()
        {
            // Nobody listens any more.
            self.watchers.remove(id);
        }
    }

    /// Writes a final state (if this instance still holds the job), tells watchers, and
    /// sends the webhook.
    fn finish(&mut self, id: String, finish: FinishJob, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        ctx.spawn(store.send(finish).into_actor(self).map(move |done, act, ctx| {
            match done {
                Ok(Ok(Some(job))) => {
                    tracing::info!(job = %job.id, status = job.status.as_str(), "job finished");
                    let state = JobState {
                        status: job.status,
                        progress: job.progress,
                    };
                    act.publish(&id, state);
                    act.watchers.remove(&id);
                    if job.webhook_url.is_some() {
                        act.deliver_webhooks(ctx);
                    }
                }
                Ok(Ok(None)) => {
                    tracing::info!(job = %id, "job was taken over by another instance; its result is dropped");
                }
                Ok(Err(e)) => tracing::error!(job = %id, error = %e, "could not finish a job"),
                Err(e) => tracing::error!(job = %id, error = %e, "could not finish a job"),
            }
            act.claim(ctx);
        }));
    }

    /// Sends the webhooks that are due (of jobs finished here or anywhere), a few at a
    /// time; each attempt is claimed in the database first.
    fn deliver_webhooks(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || self.delivering >= MAX_DELIVERIES {
            return;
        }
        self.delivering += 1;
        let claim = self.store.send(ClaimWebhook {
            lease_ms: self.settings.webhook_timeout_ms + 1_000,
        });
        ctx.spawn(claim.into_actor(self).map(|claimed, act, ctx| {
            let job = match claimed {
                Ok(Ok(Some(job))) => job,
                Ok(Ok(None)) => {
                    act.delivering -= 1;
                    return;
                }
                _ => {
                    act.delivering -= 1;
                    tracing::warn!("could not claim a webhook delivery");
                    return;
                }
            };
            let (webhooks, store) = (act.webhooks.clone(), act.store.clone());
            let delivery = async move {
                let outcome = if webhooks.deliver(&job).await {
                    WebhookOutcome::Delivered
                } else {
                    webhooks.after_failure(job.webhook_attempts, now_ms())
                };
                let _ = store
                    .send(WebhookAttempted {
                        id: job.id.clone(),
                        outcome,
                    })
                    .await;
            };
            ctx.spawn(delivery.into_actor(act).map(|(), act, ctx| {
                act.delivering -= 1;
                act.deliver_webhooks(ctx);
            }));
            // Room for more: claim the next one beside it.
            act.deliver_webhooks(ctx);
        }));
    }

    fn renew(&mut self, ctx: &mut Context<Self>) {
        // Watchers of jobs that never changed here (they run elsewhere) and have gone.
        self.watchers.retain(|_, tx| tx.receiver_count() > 0);
        let ids: Vec<String> = self.running.keys().cloned().collect();
        if ids.is_empty() {
            return;
        }
        let renew = self.store.send(RenewJobLeases {
            owner: self.owner.clone(),
            ids: ids.clone(),
            lease_ms: self.settings.lease_ms,
        });
        ctx.spawn(renew.into_actor(self).map(move |held, act, ctx| {
            let Ok(Ok(held)) = held else {
                tracing::warn!("could not renew job leases");
                return;
            };
            for id in ids {
                match held.iter().find(|(h, _)| *h == id) {
                    None => {
                        // Cancelled elsewhere, or our lease ran out and another took it.
                        if let Some(job) = act.running.remove(&id) {
                            job.task.abort();
                            tracing::warn!(job = %id, "job no longer held by this instance; stopped here");
                        }
                    }
                    Some((_, true)) => {
                        act.cancel(id, ctx);
                    }
                    Some((_, false)) => {}
                }
            }
        }));
    }

    /// Stops a running job: its task, the upstream's work where the vendor can stop it
    /// (ComfyUI), then its final state `cancelled`.
    fn cancel(&mut self, id: String, ctx: &mut Context<Self>) -> bool {
        let Some(job) = self.running.remove(&id) else {
            return false;
        };
        job.task.abort();
        let relay = self.relay.clone();
        let submitted = job.submitted;
        let storage = self.storage();
        let finish = FinishJob {
            id: id.clone(),
            owner: self.owner.clone(),
            status: JobStatus::Cancelled,
            result: None,
            error: Some(JobError::new("cancelled", "cancelled by its owner")),
            artifacts: Vec::new(),
            storage,
        };
        let stop_upstream = async move {
            if let (Some(relay), Some(submitted)) = (relay, submitted) {
                let snapshot = relay.routing_table.borrow().clone();
                let route = snapshot
                    .routes
                    .values()
                    .flatten()
                    .find(|r| r.deployment.id == submitted.deployment_id)
                    .cloned();
                if let Some(route) = route
                    && let Some(base) = route.deployment.config.base_url.as_deref()
                {
                    crate::relay::interrupt_comfyui(&route, base, &submitted.prompt_id).await;
                }
            }
        };
        // The upstream is asked to stop first, so the job ends `cancelled` only once it was.
        ctx.spawn(stop_upstream.into_actor(self).map(move |(), act, ctx| {
            act.finish(id, finish, ctx);
        }));
        true
    }

    fn refresh_counts(&self, ctx: &mut Context<Self>) {
        let metrics = self.metrics.clone();
        ctx.spawn(
            self.store
                .send(CountJobs)
                .into_actor(self)
                .map(move |counts, _, _| {
                    if let Ok(Ok(counts)) = counts {
                        metrics.set_jobs(&counts);
                    }
                }),
        );
    }

    fn purge(&self, ctx: &mut Context<Self>) {
        if self.settings.retention_hours == 0 {
            return;
        }
        let before = now_ms() - (self.settings.retention_hours as i64) * 3_600_000;
        ctx.spawn(
            self.store
                .send(PurgeJobs {
                    finished_before: before,
                })
                .into_actor(self)
                .map(|purged, act, ctx| match purged {
                    Ok(Ok(0)) => {}
                    Ok(Ok(n)) => {
                        tracing::info!(jobs = n, "old jobs and their artifacts deleted");
                        // A full batch: there may be more.
                        if n >= crate::actors::store::PURGE_BATCH {
                            act.purge(ctx);
                        }
                    }
                    _ => tracing::warn!("could not delete old jobs"),
                }),
        );
    }
}

impl Actor for JobActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.relay = Some(Rc::new((self.make_relay)()));
        // On SQLite a job left running by a process that is gone is claimable at once.
        ctx.wait(
            self.store
                .send(ReleaseOrphanJobs)
                .into_actor(self)
                .map(|released, _, _| {
                    if let Ok(Ok(n)) = released
                        && n > 0
                    {
                        tracing::info!(
                            jobs = n,
                            "jobs left running by the last process are resumed"
                        );
                    }
                }),
        );
        let poll = Duration::from_millis(self.settings.poll_ms.max(10));
        ctx.run_interval(poll, |act, ctx| {
            act.claim(ctx);
            act.deliver_webhooks(ctx);
        });
        let renew = Duration::from_millis((self.settings.lease_ms / 3).max(10));
        ctx.run_interval(renew, |act, ctx| act.renew(ctx));
        ctx.run_interval(Duration::from_secs(5), |act, ctx| act.refresh_counts(ctx));
        ctx.run_interval(Duration::from_secs(3600), |act, ctx| act.purge(ctx));
        self.purge(ctx);
        self.refresh_counts(ctx);
        self.claim(ctx);
        self.deliver_webhooks(ctx);
    }
}

impl Supervised for JobActor {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The tasks died with the old context; their leases run out and they are claimed
        // again.
        self.running.clear();
        self.claiming = false;
        self.delivering = 0;
    }
}

/// A job was queued on this instance: claim it now rather than at the next poll.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Poke;

impl Handler<Poke> for JobActor {
    type Result = ();

    fn handle(&mut self, _: Poke, ctx: &mut Context<Self>) {
        self.claim(ctx);
    }
}

/// Follows a job's state changes on this instance (from the next change on); answers the
/// state it has here if it runs here.
#[derive(Message)]
#[rtype(result = "(broadcast::Receiver<JobState>, Option<JobState>)")]
pub struct Watch {
    pub id: String,
}

impl Handler<Watch> for JobActor {
    type Result = MessageResult<Watch>;

    fn handle(&mut self, msg: Watch, _: &mut Context<Self>) -> Self::Result {
        let local = self.running.get(&msg.id).map(|job| job.state);
        let rx = self
            .watchers
            .entry(msg.id)
            .or_insert_with(|| broadcast::channel(16).0)
            .subscribe();
        MessageResult((rx, local))
    }
}

/// Cancels a job if it runs here (answers whether it did); the store has already marked
/// it.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Cancel {
    pub id: String,
}

impl Handler<Cancel> for JobActor {
    type Result = bool;

    fn handle(&mut self, msg: Cancel, ctx: &mut Context<Self>) -> bool {
        self.cancel(msg.id, ctx)
    }
}

/// Graceful stop: every running job goes back to the queue (a ComfyUI prompt keeps its
/// id, to be followed after the restart); answers once they are.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopJobs;

impl Handler<StopJobs> for JobActor {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: StopJobs, _: &mut Context<Self>) -> Self::Result {
        self.stopping = true;
        let store = self.store.clone();
        let owner = self.owner.clone();
        let mut ids = Vec::new();
        for (id, job) in self.running.drain() {
            job.task.abort();
            ids.push(id);
        }
        Box::pin(
            async move {
                for id in ids {
                    tracing::info!(job = %id, "stopping: job goes back to the queue");
                    let _ = store
                        .send(RequeueJob {
                            id,
                            owner: owner.clone(),
                            run_after: 0,
                        })
                        .await;
                }
            }
            .into_actor(self),
        )
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Progress {
    id: String,
    event: ImageEvent,
}

impl Handler<Progress> for JobActor {
    type Result = ();

    fn handle(&mut self, msg: Progress, _: &mut Context<Self>) {
        let Some(job) = self.running.get_mut(&msg.id) else {
            return;
        };
        let (progress, submitted) = match msg.event {
            ImageEvent::Progress(p) => {
                job.state.progress = Some(p);
                (Some(p), None)
            }
            ImageEvent::Submitted(s) => {
                job.submitted = Some(s.clone());
                (None, Some(s))
            }
        };
        let state = job.state;
        // Where a job was submitted is saved at once (a restart re-attaches to it);
        // progress at most every SAVE_PROGRESS_EVERY.
        let save = submitted.is_some() || job.saved_at.elapsed() >= SAVE_PROGRESS_EVERY;
        if save {
            job.saved_at = Instant::now();
            self.store.do_send(UpdateJob {
                id: msg.id.clone(),
                owner: self.owner.clone(),
                progress,
                submitted,
            });
        }
        if progress.is_some() {
            self.publish(&msg.id, state);
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Done {
    id: String,
    outcome: Outcome,
}

impl Handler<Done> for JobActor {
    type Result = ();

    fn handle(&mut self, msg: Done, ctx: &mut Context<Self>) {
        if self.running.remove(&msg.id).is_none() {
            return;
        }
        match msg.outcome {
            Outcome::Finished {
                status,
                result,
                error,
                artifacts,
            } => {
                let finish = FinishJob {
                    id: msg.id.clone(),
                    owner: self.owner.clone(),
                    status,
                    result,
                    error,
                    artifacts,
                    storage: self.storage(),
                };
                self.finish(msg.id, finish, ctx);
            }
            Outcome::Requeue { run_after } => {
                let state = JobState {
                    status: JobStatus::Queued,
                    progress: None,
                };
                self.publish(&msg.id, state);
                let requeue = self.store.send(RequeueJob {
                    id: msg.id,
                    owner: self.owner.clone(),
                    run_after,
                });
                ctx.spawn(requeue.into_actor(self).map(|_, act, ctx| act.claim(ctx)));
            }
        }
    }
}
