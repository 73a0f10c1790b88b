//! `ScriptRegistry`: owns the compiled scripts. It loads them from the store at startup
//! and again on every change that touches scripts (the change feed; newest reload wins),
//! compiles them on the blocking pool, and publishes each new set as an immutable
//! `ScriptSet` over a watch channel. The store answers an admin's save only once this
//! applied it, so the next request already runs the new script.

use std::sync::Arc;

use actix::prelude::*;

use super::{Sandbox, ScriptSet};
use crate::actors::ASK_TIMEOUT;
use crate::actors::feed::{Changed, NotApplied};
use crate::actors::store::{ListScripts, StoreActor};

/// From startup (and a restart of the registry): load every script from the store.
/// Answers how many are loaded.
#[derive(Message)]
#[rtype(result = "Result<usize, NotApplied>")]
pub struct ReloadScripts;

pub struct ScriptRegistry {
    store: Addr<StoreActor>,
    sandbox: Arc<Sandbox>,
    published: tokio::sync::watch::Sender<Arc<ScriptSet>>,
    reloads_started: u64,
    reload_applied: u64,
}

impl ScriptRegistry {
    pub fn new(
        store: Addr<StoreActor>,
        sandbox: Arc<Sandbox>,
        published: tokio::sync::watch::Sender<Arc<ScriptSet>>,
    ) -> Self {
        Self {
            store,
            sandbox,
            published,
            reloads_started: 0,
            reload_applied: 0,
        }
    }

    fn reload(&mut self) -> ResponseActFuture<Self, Result<usize, NotApplied>> {
        self.reloads_started += 1;
        let generation = self.reloads_started;
        let (store, sandbox) = (self.store.clone(), self.sandbox.clone());
        let failed = |cause: String| NotApplied {
            subscriber: "script registry",
            cause,
        };
        Box::pin(
            async move {
                let records = store
                    .send(ListScripts)
                    .timeout(ASK_TIMEOUT)
                    .await
                    .map_err(|e| failed(e.to_string()))?
                    .map_err(|e| failed(e.to_string()))?;
                // Compiling is CPU work: off the actor's thread.
                tokio::task::spawn_blocking(move || {
                    let scripts = records
                        .into_iter()
                        .map(|r| (r.name.clone(), Arc::new(sandbox.load(r))))
                        .collect();
                    ScriptSet { scripts }
                })
                .await
                .map_err(|e| failed(e.to_string()))
            }
            .into_actor(self)
            .map(move |set, registry, _| {
                let set = set?;
                if generation < registry.reload_applied {
                    return Ok(registry.published.borrow().scripts.len());
                }
                registry.reload_applied = generation;
                let count = set.scripts.len();
                registry.published.send_replace(Arc::new(set));
                Ok(count)
            }),
        )
    }
}

impl Actor for ScriptRegistry {
    type Context = Context<Self>;
}

impl Supervised for ScriptRegistry {
    fn restarting(&mut self, ctx: &mut Self::Context) {
        tracing::warn!("script registry restarting; reloading the scripts");
        ctx.notify(ReloadScripts);
    }
}

impl Handler<ReloadScripts> for ScriptRegistry {
    type Result = ResponseActFuture<Self, Result<usize, NotApplied>>;

    fn handle(&mut self, _: ReloadScripts, _: &mut Self::Context) -> Self::Result {
        self.reload()
    }
}

impl Handler<Changed> for ScriptRegistry {
    type Result = ResponseActFuture<Self, Result<(), NotApplied>>;

    fn handle(&mut self, msg: Changed, _: &mut Self::Context) -> Self::Result {
        if !msg.0.touches_scripts() {
            return Box::pin(fut::ready(Ok(())));
        }
        Box::pin(self.reload().map(|reloaded, _, _| reloaded.map(drop)))
    }
}
