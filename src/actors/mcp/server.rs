//! `McpServerActor`: one registered server. It runs one connection at a time as a future
//! of its own (start, handshake, tools, then wait for the end), tells the supervisor each
//! state, and starts again after a doubling backoff when the server dies. Tool calls do
//! not pass through it: request tasks call the server's `Peer` from the published catalog.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use super::connection::{self, Connected};
use super::{McpSupervisor, ServerState, ServerUpdate};
use crate::config::McpSettings;
use crate::domain::mcp::McpServerSpec;

/// A connection up this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

pub struct McpServerActor {
    spec: McpServerSpec,
    settings: Arc<McpSettings>,
    http: reqwest::Client,
    supervisor: Addr<McpSupervisor>,
    backoff: Duration,
    /// Ends the running connection (its process group is killed).
    stop: Option<oneshot::Sender<()>>,
    /// Fired when the running connection has ended.
    ended: Vec<oneshot::Sender<()>>,
    stopping: bool,
    running: bool,
}

impl McpServerActor {
    pub fn new(
        spec: McpServerSpec,
        settings: Arc<McpSettings>,
        http: reqwest::Client,
        supervisor: Addr<McpSupervisor>,
    ) -> Self {
        Self {
            spec,
            settings,
            http,
            supervisor,
            backoff: FIRST_BACKOFF,
            stop: None,
            ended: Vec::new(),
            stopping: false,
            running: false,
        }
    }

    fn tell(&self, state: ServerState) {
        self.supervisor.do_send(ServerUpdate {
            name: self.spec.name.clone(),
            state,
        });
    }

    fn start_connection(&mut self, ctx: &mut Context<Self>) {
        if self.stopping || self.running {
            return;
        }
        self.running = true;
        let (stop_tx, stop_rx) = oneshot::channel();
        self.stop = Some(stop_tx);
        let spec = self.spec.clone();
        let settings = self.settings.clone();
        let http = self.http.clone();
        let me = ctx.address();
        let connection = async move {
            let within = Duration::from_millis(settings.start_timeout_ms);
            let on_change: connection::OnToolsChanged = Box::new(move || me.do_send(ToolsChanged));
            let connected =
                connection::connect(&spec, &settings.child_path, within, &http, on_change).await;
            connected.map(|c| (c, stop_rx))
        };
        ctx.spawn(connection.into_actor(self).then(|connected, act, _| {
            let up = Instant::now();
            let wait = match connected {
                Err(error) => {
                    act.tell(ServerState::Down { error });
                    None
                }
                Ok((connected, stop_rx)) => {
                    act.tell(ServerState::Running {
                        peer: connected.peer(),
                        tools: connected.tools.clone(),
                        pid: connected.child.as_ref().and_then(|c| c.pid),
                    });
                    Some(hold(connected, stop_rx))
                }
            };
            async move {
                match wait {
                    Some(wait) => Some(wait.await),
                    None => None,
                }
            }
            .into_actor(act)
            .map(move |ended, act, ctx| act.ended(ended, up, ctx))
        }));
    }

    /// The connection ended (`None`: it never started).
    fn ended(&mut self, reason: Option<String>, up: Instant, ctx: &mut Context<Self>) {
        self.running = false;
        self.stop = None;
        for waiter in self.ended.drain(..) {
            let _ = waiter.send(());
        }
        if self.stopping {
            ctx.stop();
            return;
        }
        if let Some(reason) = reason {
            tracing::warn!(mcp_server = %self.spec.name, %reason, "MCP server ended; restarting");
            self.tell(ServerState::Down { error: reason });
        }
        if up.elapsed() >= STABLE_AFTER {
            self.backoff = FIRST_BACKOFF;
        }
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(
            self.settings.max_restart_backoff_ms.max(1),
        ));
        ctx.run_later(wait, |act, ctx| {
            act.tell(ServerState::Restarting);
            act.start_connection(ctx);
        });
    }
}

/// Holds a live connection until the server ends it, its process exits, or the actor
/// asks it to stop; answers why it ended (`stopped` when asked).
async fn hold(mut connected: Connected, stop: oneshot::Receiver<()>) -> String {
    let token = connected.service.cancellation_token();
    let child = connected.child.take();
    let reason = {
        let service = connected.service;
        let process_exit = async {
            match child {
                Some(mut child) => {
                    let exit = child.wait().await;
                    (exit, Some(child))
                }
                None => (std::future::pending::<String>().await, None),
            }
        };
        tokio::select! {
            quit = service.waiting() => (format!("the MCP session ended ({quit:?})"), None),
            (exit, child) = process_exit => (exit, child),
            _ = stop => {
                token.cancel();
                ("stopped".to_string(), None)
            }
        }
    };
    // Whatever ended, the process group goes (a child dropped here is killed as a group).
    drop(reason.1);
    reason.0
}

impl Actor for McpServerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_connection(ctx);
    }
}

/// The server said its tool list changed: list again and tell the supervisor.
#[derive(Message)]
#[rtype(result = "()")]
struct ToolsChanged;

impl Handler<ToolsChanged> for McpServerActor {
    type Result = ();

    fn handle(&mut self, _: ToolsChanged, _: &mut Self::Context) {
        self.supervisor.do_send(super::RelistTools {
            name: self.spec.name.clone(),
        });
    }
}

/// Stop the server (delete, or shutdown): its process group is killed; answers once the
/// connection has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopServer;

impl Handler<StopServer> for McpServerActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopServer, ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        if !self.running {
            ctx.stop();
            return Box::pin(async {});
        }
        let (tx, rx) = oneshot::channel();
        self.ended.push(tx);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}
