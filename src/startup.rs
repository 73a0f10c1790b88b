//! `Application::build(Settings)`: database, migrations, bootstrap, the actor tree and the
//! HTTP server on its listener (TCP, port 0 allowed, or a Unix socket). Shutdown finishes
//! in-flight requests, then flushes usage and stops listening for other instances' changes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_web::dev::{Server, ServerHandle};
use actix_web::middleware::{Condition, from_fn};
use actix_web::{App, HttpServer, web};
use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};

use crate::actors::ASK_TIMEOUT;
use crate::actors::bus::BusActor;
use crate::actors::feed::{ChangeFeed, Subscribe};
use crate::actors::jobs::{JobActor, RelayFactory, StopJobs, Webhooks};
use crate::actors::mcp::{LoadServers, McpSupervisor, StopServers};
use crate::actors::passthrough::{PassthroughActor, ReloadRoutes};
use crate::actors::quota::QuotaShards;
use crate::actors::router::{Reload, RouteError, RouterActor};
use crate::actors::store::{
    AwaitListening, EnsureAdminKey, FlushUsage, FollowBus, HasAdminKey, ReplayUsageSpill,
    SeedDeployments, StopChangeListener, StoreActor, StoreError, UsageOptions,
};
use crate::config::{Secret, Settings};
use crate::crypto::{self, CryptoError};
use crate::domain::upstream_hosts::UpstreamHosts;
use crate::http::{self, AppState};
use crate::master_key::{self, MasterKeyError};
use crate::relay::Relay;
use crate::telemetry::metrics::Metrics;
use tracing_actix_web::TracingLogger;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("database: {0}")]
    Db(#[from] DbErr),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("router: {0}")]
    Route(#[from] RouteError),
    #[error("an actor did not answer during startup: {0}")]
    Mailbox(#[from] MailboxError),
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    #[error("master key: {0}")]
    MasterKey(#[from] MasterKeyError),
    #[error("configuration: {0}")]
    Config(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// A built, listening gateway.
pub struct Application {
    server: Server,
    handle: ServerHandle,
    local_addr: Option<SocketAddr>,
    uds: Option<PathBuf>,
    store: Addr<StoreActor>,
    quota: Arc<QuotaShards>,
    jobs: Addr<JobActor>,
    /// The job actor's thread (its relay's quota actor stops with it).
    jobs_arbiter: Arbiter,
    mcp: Addr<McpSupervisor>,
    /// The MCP servers' thread.
    mcp_arbiter: Arbiter,
    generated_admin_key: Option<Secret>,
}

/// Opens the database (creating a SQLite file, mode 0600, if needed) and runs pending
/// migrations. SQLite's PRAGMAs are set on every pooled connection as it opens.
pub async fn connect_and_migrate(settings: &Settings) -> Result<DatabaseConnection, StartupError> {
    use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
    let url = settings.database.url.expose();
    let mut options = ConnectOptions::new(url.to_string());
    options
        .max_connections(settings.database.max_connections.max(1))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
        });
    if url.starts_with("sqlite:") {
        protect_sqlite_files(url)?;
    }
    let db = Database::connect(options).await?;
    Migrator::up(&db, None).await?;
    Ok(db)
}

/// Creates a missing SQLite database file with mode 0600 (when the URL lets SQLite create
/// it), and takes group and other access off an existing one and its `-wal`, `-shm` and
/// `-journal` files. SQLite creates `-wal` and `-shm` with the main file's mode.
fn protect_sqlite_files(url: &str) -> Result<(), StartupError> {
    use sea_orm::sqlx::ConnectOptions as _;
    use sea_orm::sqlx::sqlite::SqliteConnectOptions;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // A URL SQLite cannot parse is reported by the connection attempt.
    let Ok(options) = url.parse::<SqliteConnectOptions>() else {
        return Ok(());
    };
    let mode = options
        .to_url_lossy()
        .query_pairs()
        .find(|(k, _)| k == "mode")
        .map(|(_, v)| v.into_owned());
    if mode.as_deref() == Some("memory") {
        return Ok(());
    }
    let path = options.get_filename();
    if mode.as_deref() == Some("rwc") {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e.into()),
        }
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let Ok(meta) = std::fs::metadata(&file) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode & !0o077))?;
        }
    }
    Ok(())
}

impl Application {
    /// Builds everything and binds the listener. With `handle_signals`, SIGTERM and SIGINT
    /// stop the server gracefully (tests leave it off: they share one process).
    pub async fn build(settings: Settings, handle_signals: bool) -> Result<Self, StartupError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let settings = Arc::new(settings);
        // Inbound TLS (TCP only; the configuration refuses it with a Unix socket), read
        // first: a bad pair stops the start before anything else happens.
        let tls = match (&settings.server.tls_cert, &settings.server.tls_key) {
            (Some(cert), Some(key)) => {
                let files = crate::tls::TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                };
                Some(Arc::new(crate::tls::ReloadableCert::load(
                    files,
                    crate::tls::provider(),
                )?))
            }
            _ => None,
        };
        let db = connect_and_migrate(&settings).await?;
        let master_key = Arc::new(master_key::open_for_serve(&settings, &db).await?);
        let webhook_root = master_key.webhook_root();
        let upstream_hosts =
            UpstreamHosts::parse(&settings.security.upstream_hosts).map_err(|(i, message)| {
                StartupError::Config(format!("security.upstream_hosts[{i}]: {message}"))
            })?;
        let hosts = Arc::new(upstream_hosts.clone());

        let metrics = Arc::new(Metrics::new());
        // Subscribers join before they load their copies (router, key cache: below).
        let feed = ChangeFeed::default().start();
        let (store, usage_inbox) = StoreActor::new(
            db,
            master_key,
            UsageOptions::from_settings(&settings.database),
            metrics.clone(),
        )
        .with_upstream_hosts(upstream_hosts)
        .with_change_feed(feed.clone().recipient())
        .start_with_inbox();
        // On PostgreSQL the copies below load once other instances' changes are heard.
        store
            .send(AwaitListening {
                within: Duration::from_secs(5),
            })
            .await?;
        match store.send(ReplayUsageSpill).await? {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "usage rows replayed from the spill file"),
            Err(e) => tracing::error!(error = %e,
                "the usage spill file could not be replayed; it is kept for the next try"),
        }

        let generated_admin_key = bootstrap_admin(&settings, &store).await?;
        let seeded = store
            .send(SeedDeployments {
                seeds: settings.models.clone(),
            })
            .await??;
        if seeded > 0 {
            tracing::info!(count = seeded, "seed deployments created");
        }

        let (published, routing_table) = tokio::sync::watch::channel(Arc::new(
            crate::actors::router::RoutingSnapshot::default(),
        ));
        let router = {
            let store = store.clone();
            let metrics = metrics.clone();
            Supervisor::start(move |_| RouterActor::new(store, metrics, published))
        };
        feed.send(Subscribe {
            name: "router",
            recipient: router.clone().recipient(),
        })
        .await?;
        let routable = router.send(Reload).timeout(ASK_TIMEOUT).await??;
        tracing::info!(deployments = routable, "routing table loaded");

        // Transform scripts: compiled by the registry, run by request tasks in one sandbox.
        let sandbox = Arc::new(crate::scripts::Sandbox::new(&settings.scripts));
        let (published_scripts, script_set) =
            tokio::sync::watch::channel(Arc::new(crate::scripts::ScriptSet::default()));
        let script_registry = {
            let (store, sandbox) = (store.clone(), sandbox.clone());
            Supervisor::start(move |_| {
                crate::scripts::ScriptRegistry::new(store, sandbox, published_scripts)
            })
        };
        feed.send(Subscribe {
            name: "script registry",
            recipient: script_registry.clone().recipient(),
        })
        .await?;
        let loaded = script_registry
            .send(crate::scripts::ReloadScripts)
            .timeout(ASK_TIMEOUT)
            .await?
            .map_err(|e| StartupError::Config(format!("scripts: {e}")))?;
        tracing::info!(scripts = loaded, "transform scripts loaded");
        let scripts = crate::scripts::Scripts::new(sandbox, script_set);

        let keys = Arc::new(http::KeyCache::new(
            100_000,
            Duration::from_millis(settings.security.key_cache_ttl_ms.max(1)),
        ));
        feed.send(Subscribe {
            name: "key cache",
            recipient: http::KeyCacheFollower(keys.clone()).start().recipient(),
        })
        .await?;
        let auth_throttle = http::AuthThrottle::new(settings.security.auth_failures_per_minute);
        let (closing_tx, closing) = tokio::sync::watch::channel(false);
        // Turns true as a graceful stop begins: long-lived connections (the bus) close.
        let (draining_tx, draining) = tokio::sync::watch::channel(false);
        let downstream = (settings.server.max_concurrency > 0)
            .then(|| Arc::new(tokio::sync::Semaphore::new(settings.server.max_concurrency)));
        let quota = QuotaShards::new(store.clone(), feed.clone());
        // Each worker builds its own relay, with a quota actor on the worker's thread; so
        // does the job actor, on its own.
        let make_relay: RelayFactory = {
            let (quota, router) = (quota.clone(), router.clone());
            let (limits, routing) = (settings.limits, settings.routing);
            let metrics = metrics.clone();
            let scripts = scripts.clone();
            Arc::new(move || Relay {
                usage: usage_inbox.clone(),
                quota: quota.start_here(),
                limits,
                router: router.clone(),
                routing_table: routing_table.clone(),
                metrics: metrics.clone(),
                routing,
                closing: closing.clone(),
                scripts: scripts.clone(),
            })
        };
        let jobs_arbiter = Arbiter::new();
        let jobs = {
            let webhooks = Webhooks {
                client: reqwest::Client::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .timeout(Duration::from_millis(settings.jobs.webhook_timeout_ms))
                    .build()
                    .map_err(|e| StartupError::Config(format!("webhook client: {e}")))?,
                root: webhook_root,
                attempts: settings.jobs.webhook_attempts,
            };
            let (settings, store, metrics, make_relay) = (
                settings.jobs.clone(),
                store.clone(),
                metrics.clone(),
                make_relay.clone(),
            );
            Supervisor::start_in_arbiter(&jobs_arbiter.handle(), move |_| {
                JobActor::new(
                    settings.clone(),
                    store.clone(),
                    make_relay.clone(),
                    metrics.clone(),
                    webhooks.clone(),
                )
            })
        };
        let bus = {
            let (settings, store, metrics) = (settings.bus, store.clone(), metrics.clone());
            Supervisor::start(move |_| BusActor::new(settings, store.clone(), metrics.clone()))
        };
        store.send(FollowBus(bus.clone().recipient())).await?;
        // MCP servers run on a thread of their own; every instance runs every registered
        // server (started now, and on each change).
        let mcp_arbiter = Arbiter::new();
        let (mcp, mcp_catalog) = {
            let http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| StartupError::Config(format!("MCP client: {e}")))?;
            let (supervisor, catalog) = McpSupervisor::new(
                store.clone(),
                Arc::new(settings.mcp.clone()),
                http,
                metrics.clone(),
            );
            (
                McpSupervisor::start_in_arbiter(&mcp_arbiter.handle(), move |_| supervisor),
                catalog,
            )
        };
        feed.send(Subscribe {
            name: "mcp supervisor",
            recipient: mcp.clone().recipient(),
        })
        .await?;
        mcp.send(LoadServers)
            .await?
            .map_err(|e| StartupError::Config(format!("MCP servers: {e}")))?;
        let summary = Arc::new(crate::telemetry::summary::Summary::default());
        let count_summary = settings.telemetry.metrics;
        // Passthrough routes: the config's, then the stored ones (change feed).
        let (passthrough_published, passthrough) = tokio::sync::watch::channel(Arc::new(
            crate::actors::passthrough::PassthroughTable::default(),
        ));
        let passthrough_limits = {
            let (store, routes) = (store.clone(), settings.routes.clone());
            Supervisor::start(move |_| {
                PassthroughActor::new(store.clone(), routes.clone(), passthrough_published.clone())
            })
        };
        feed.send(Subscribe {
            name: "passthrough routes",
            recipient: passthrough_limits.clone().recipient(),
        })
        .await?;
        let routes = passthrough_limits
            .send(ReloadRoutes)
            .timeout(ASK_TIMEOUT)
            .await?
            .map_err(|e| StartupError::Config(format!("passthrough routes: {e}")))?;
        if routes > 0 {
            tracing::info!(routes, "passthrough routes loaded");
        }
        let state = web::Data::new(AppState {
            downstream,
            store: store.clone(),
            router: router.clone(),
            keys,
            auth_throttle,
            settings: settings.clone(),
            metrics: metrics.clone(),
            jobs: jobs.clone(),
            bus,
            mcp: mcp.clone(),
            mcp_catalog,
            draining,
            webhook_root,
            upstream_hosts: hosts,
            summary: summary.clone(),
            passthrough,
            passthrough_limits,
            scripts,
        });

        let tracing_export = settings
            .telemetry
            .otlp_endpoint
            .as_deref()
            .is_some_and(|e| !e.is_empty());
        let mut server = HttpServer::new(move || {
            // Each worker counts `/metrics/summary` in a shard of its own.
            let app = match count_summary {
                true => App::new().app_data(web::Data::from(summary.shard())),
                false => App::new(),
            };
            app.app_data(state.clone())
                .app_data(web::Data::new(make_relay()))
                .app_data(web::Data::new(http::mcp_server::endpoint(&state)))
                .app_data(http::path_config())
                .app_data(http::query_config())
                .wrap(from_fn(http::request_context))
                .wrap(Condition::new(tracing_export, TracingLogger::default()))
                .configure(http::configure)
                .default_service(web::to(http::passthrough::serve))
        })
        .disable_signals()
        // A client that closes its side has gone: stop its stream (and so the upstream's).
        .h1_allow_half_closed(false)
        // Stream events go out as they come, not after a delayed ACK.
        .tcp_nodelay(true)
        .shutdown_timeout(settings.server.shutdown_grace_ms.div_ceil(1000));
        if settings.server.workers > 0 {
            server = server.workers(settings.server.workers);
        }

        let (server, local_addr, uds) = match &settings.server.uds {
            Some(path) => {
                if path.exists() {
                    std::fs::remove_file(path)?;
                }
                let server = server.bind_uds(path)?;
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(
                        path,
                        std::fs::Permissions::from_mode(settings.server.uds_mode),
                    )?;
                }
                tracing::info!(socket = %path.display(), "listening on a Unix socket");
                (server, None, Some(path.clone()))
            }
            None => {
                let server = match &tls {
                    Some(cert) => {
                        server.bind_rustls_0_23(&settings.server.listen, cert.server_config()?)?
                    }
                    None => server.bind(&settings.server.listen)?,
                };
                let addr = server.addrs().first().copied();
                if let Some(addr) = addr {
                    let scheme = if tls.is_some() { "https" } else { "http" };
                    tracing::info!(%addr, scheme, "listening");
                }
                (server, addr, None)
            }
        };
        let server = server.run();
        let handle = server.handle();
        if handle_signals {
            let grace = Duration::from_millis(settings.server.shutdown_grace_ms);
            actix::spawn(stop_on_signal(
                handle.clone(),
                closing_tx,
                draining_tx,
                grace,
            ));
            // Installed before `build` returns: a SIGHUP from then on never ends the process.
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(hup) => {
                    actix::spawn(reload_on_hangup(hup, tls.clone()));
                }
                Err(e) => tracing::error!(error = %e,
                    "cannot install the SIGHUP handler; TLS certificates reload on restart only"),
            }
        }
        Ok(Self {
            server,
            handle,
            local_addr,
            uds,
            store,
            quota,
            jobs,
            jobs_arbiter,
            mcp,
            mcp_arbiter,
            generated_admin_key,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    pub fn uds_path(&self) -> Option<&PathBuf> {
        self.uds.as_ref()
    }

    pub fn store(&self) -> Addr<StoreActor> {
        self.store.clone()
    }

    pub fn handle(&self) -> ServerHandle {
        self.handle.clone()
    }

    /// The admin key generated on this start, if one was (to be printed once).
    pub fn generated_admin_key(&self) -> Option<&Secret> {
        self.generated_admin_key.as_ref()
    }

    /// Serves until stopped, then gives back unused leases, writes every buffered usage
    /// row and stops listening for other instances' changes.
    pub async fn run_until_stopped(self) -> Result<(), StartupError> {
        let result = self.server.await;
        // Running jobs go back to the queue, to be resumed by the next start (or by
        // another instance); then the job thread stops, its quota actor with it.
        if let Err(e) = self
            .jobs
            .send(StopJobs)
            .timeout(Duration::from_secs(10))
            .await
        {
            tracing::warn!(error = %e, "jobs could not be handed back; their leases will run out");
        }
        self.jobs_arbiter.stop();
        // MCP servers' process groups are killed.
        if let Err(e) = self
            .mcp
            .send(StopServers)
            .timeout(Duration::from_secs(10))
            .await
        {
            tracing::warn!(error = %e, "MCP servers could not be stopped in time");
        }
        self.mcp_arbiter.stop();
        // Unused leases of token quotas and budgets go back to the shared counters.
        self.quota.returned(Duration::from_secs(5)).await;
        self.store.send(FlushUsage).await?;
        self.store.send(StopChangeListener).await?;
        if let Some(path) = &self.uds {
            let _ = std::fs::remove_file(path);
        }
        tracing::info!("stopped; usage flushed");
        Ok(result?)
    }
}

/// Registers `LOWART_ADMIN_KEY`, or on a database without a live admin key generates one.
async fn bootstrap_admin(
    settings: &Settings,
    store: &Addr<StoreActor>,
) -> Result<Option<Secret>, StartupError> {
    if let Some(key) = &settings.security.admin_key {
        store.send(EnsureAdminKey { key: key.clone() }).await??;
        return Ok(None);
    }
    if store.send(HasAdminKey).await?? {
        return Ok(None);
    }
    let key = Secret::new(crypto::generate_api_key()?);
    store.send(EnsureAdminKey { key: key.clone() }).await??;
    Ok(Some(key))
}

/// On SIGHUP: reads the TLS certificate and key again; a good pair serves new handshakes
/// (connections already open keep theirs), a bad one is logged and the old pair kept.
/// Without TLS there is nothing to reload, and SIGHUP is logged rather than ending the
/// process (`systemctl reload` sends it).
async fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    tls: Option<Arc<crate::tls::ReloadableCert>>,
) {
    while hup.recv().await.is_some() {
        match &tls {
            None => tracing::info!("SIGHUP: no TLS certificate to reload"),
            Some(cert) => match cert.reload() {
                Ok(()) => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Err(e) => tracing::error!(error = %e,
                    "SIGHUP: TLS certificate not reloaded; the previous one stays in use"),
            },
        }
    }
}

/// On SIGTERM or SIGINT: stop accepting and let in-flight requests finish. Streams still
/// open just before the grace period runs out are ended with an error event and `[DONE]`
/// (the server would otherwise cut them silently).
async fn stop_on_signal(
    handle: ServerHandle,
    closing: tokio::sync::watch::Sender<bool>,
    draining: tokio::sync::watch::Sender<bool>,
    grace: Duration,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the gateway with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight requests"),
        _ = int.recv() => tracing::info!("SIGINT: finishing in-flight requests"),
    }
    draining.send_replace(true);
    // Leave the last tenth of the grace period (at most a second) to deliver the ends.
    let margin = (grace / 10).min(Duration::from_secs(1));
    actix::spawn(async move {
        tokio::time::sleep(grace.saturating_sub(margin)).await;
        closing.send_replace(true);
    });
    handle.stop(true).await;
}
