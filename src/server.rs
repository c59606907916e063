//! Assembling and running the service: model → engine; event log → results hub → study registry →
//! intake; the gRPC server (`Analysis`, `Studies`, health, reflection), the optional web view, the
//! optional webhook. `start` binds first and returns the bound addresses, so tests and `radstream demo`
//! can use port 0 and talk to the real server over loopback.
//!
//! Both listeners sit behind [`crate::security`]: TLS when `[tls]` is set (one reloadable rustls
//! acceptor in front of each listener), the token gate as a layer in front of every gRPC service and a
//! middleware in front of the web view's data routes.
//!
//! Stopping is driven by a [`Shutdown`]: when its drain begins, health turns NOT_SERVING, no new
//! connection or stream is taken, and each open stream finishes what it accepted; the drain deadline
//! (`[shutdown] drain_deadline_secs`) then aborts what is left. [`serve`] returns once every connection
//! has closed — or shortly after the abort even if a peer holds its connection open, so no client can
//! keep the process alive past the deadline.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::{
    server::NamedService,
    transport::{server::TcpIncoming, Server},
};
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    api::{ModelsService, StudiesService},
    catalog::{repository, watcher, Catalog, CatalogError, EngineSettings},
    config::Config,
    error::{Error, Result},
    inference,
    ingest::{budget::ByteBudget, AnalysisService, Intake},
    model::ModelPackage,
    pipeline::EngineHealth,
    proto::{
        v1::{
            analysis_server::AnalysisServer, models_server::ModelsServer,
            studies_server::StudiesServer,
        },
        FILE_DESCRIPTOR_SET,
    },
    results::{
        hub::Hub,
        log::{EventLog, SqliteLog},
        webhook,
    },
    security::{self, GrpcAuthLayer, Security},
    shutdown::{AbortReason, Shutdown},
    study::Registry,
};

/// How often the event log is pruned of studies past `[store] retention_days`.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// What the service listens on.
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    /// The web view and its JSON API, when configured.
    pub http: Option<TcpListener>,
}

/// Opens the event log of `data_dir`, with the stand-in UID key kept in it, and starts the hub.
pub fn open_hub(config: &Config, data_dir: &Path) -> Result<Hub> {
    let log = SqliteLog::in_data_dir(data_dir)?;
    // The same malformed UID must name the same study after a restart.
    if !crate::decode::uid::set_stand_in_key(log.secret("uid-stand-in")?) {
        tracing::debug!("stand-in UID key already set in this process");
    }
    Ok(Hub::start(Arc::new(log), config.watch.subscriber_buffer)?)
}

/// After an abort, how long streams get to deliver their final status before `serve` returns anyway.
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// Loads the configured models and starts their engines: every version of the repository
/// (`[models] repository`), else the one model directory (`model_dir`), else the built-in model. The
/// operator's choices of active and shadow versions are kept in `data_dir/models.json`, so a
/// rollback survives a restart.
pub fn build_catalog(config: &Config, data_dir: &Path) -> Result<Catalog> {
    config.validate()?;
    let env = inference::runtime(&config.ort_library_path())?;
    let catalog = Catalog::new(env, EngineSettings::of(config));
    if let Some(root) = &config.models.repository {
        std::fs::create_dir_all(data_dir).map_err(|source| Error::Input {
            path: data_dir.to_path_buf(),
            source,
        })?;
        catalog.remember_choices_in(data_dir.join("models.json"));
        repository::load_all(&catalog, root)?;
        if catalog.active_count() == 0 {
            let failures: Vec<String> = catalog
                .list()
                .into_iter()
                .map(|v| format!("{} {}: {}", v.name, v.version, v.reason))
                .collect();
            return Err(CatalogError::Repository(format!(
                "no model version in {} loaded{}",
                root.display(),
                if failures.is_empty() {
                    " (it holds no <name>/<version>/model.toml)".to_string()
                } else {
                    format!(": {}", failures.join("; "))
                }
            ))
            .into());
        }
    } else if let Some(dir) = &config.model_dir {
        catalog.load_dir(dir)?;
    } else {
        catalog.load_package(ModelPackage::embedded_default()?, None)?;
    }
    Ok(catalog)
}

/// Serves on `listeners` until `shutdown` drains (see the module docs), keeping the event log in
/// `data_dir`; the drain deadline is `config.shutdown.drain_deadline_secs`. TLS, tokens and the audit
/// log are loaded from `config` first (a bad file is an error before any connection is taken).
pub async fn serve(
    listeners: Listeners,
    config: &Config,
    catalog: Catalog,
    shutdown: Shutdown,
    data_dir: &Path,
) -> Result<()> {
    let security = Security::start(config)?;
    serve_secured(listeners, config, catalog, shutdown, data_dir, security).await
}

/// [`serve`] with [`Security`] already loaded.
pub async fn serve_secured(
    listeners: Listeners,
    config: &Config,
    catalog: Catalog,
    shutdown: Shutdown,
    data_dir: &Path,
    security: Security,
) -> Result<()> {
    let Security { tls, gate } = security;
    let hub = open_hub(config, data_dir)?;
    let registry = Registry::start(hub.clone(), Arc::new(catalog.clone()), config.registry());
    // Kept alive while serving: dropping it stops the watch.
    let _watcher = match (&config.models.repository, config.models.watch) {
        (Some(root), true) => Some(watcher::spawn(
            catalog.clone(),
            root.clone(),
            config.models.activate_new,
            Duration::from_millis(config.models.settle_ms),
            shutdown.clone(),
        )?),
        _ => None,
    };
    let models = ModelsService::new(catalog.clone(), config.models.repository.clone());
    let intake = Intake::new(
        catalog.clone(),
        registry,
        config.decode_limits(),
        Arc::new(ByteBudget::new(
            "decoded bytes",
            config.limits.max_decoded_bytes_in_flight,
        )),
    );
    let service =
        AnalysisService::new(intake, hub.clone(), &config.limits).with_shutdown(shutdown.clone());
    let studies = StudiesService::new(hub.clone(), shutdown.clone());
    let webhook_task = webhook::spawn(
        hub.clone(),
        config.webhook.clone(),
        data_dir,
        shutdown.clone(),
    )?;
    let prune_task = tokio::spawn(prune_log(
        hub.log().clone(),
        Duration::from_secs_f64(config.store.retention_days * 86_400.0),
    ));
    let http_task = match listeners.http {
        Some(listener) => {
            let app = security::web::guard(
                crate::web::router_with_shutdown(hub.clone(), shutdown.clone()).merge(
                    crate::telemetry::http::router(catalog.clone(), shutdown.clone()),
                ),
                gate.clone(),
            )
            .into_make_service_with_connect_info::<security::web::PeerAddr>();
            let shutdown = shutdown.clone();
            let stop = async move { shutdown.draining().await };
            let served = match &tls {
                Some(tls) => {
                    let listener = security::tls::HttpListener::new(listener, tls.clone())
                        .map_err(|source| Error::Bind {
                            addr: config.http.listen.unwrap_or(config.listen),
                            source,
                        })?;
                    tokio::spawn(async move {
                        axum::serve(listener, app)
                            .with_graceful_shutdown(stop)
                            .await
                    })
                }
                None => tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                }),
            };
            Some(tokio::spawn(async move {
                if let Ok(Err(e)) = served.await {
                    tracing::error!("the web view's HTTP server failed: {e}");
                }
            }))
        }
        None => None,
    };
    let listener = listeners.grpc;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Reflection(e.to_string()))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    // Set before the first connection, so no Check sees the service unknown.
    let engine_health = catalog.health();
    let initial = health_status(*engine_health.borrow(), &shutdown);
    set_health(&health, initial).await;
    let health_task = tokio::spawn(follow_health(
        health,
        engine_health,
        shutdown.clone(),
        initial,
    ));
    let deadline_task = tokio::spawn(enforce_deadline(shutdown.clone(), config.drain_deadline()));
    let max_message = config.max_message_bytes();
    let stop_accepting = {
        let shutdown = shutdown.clone();
        async move { shutdown.draining().await }
    };
    let router = Server::builder()
        // Outermost: no service runs for a request the gate refuses.
        .layer(GrpcAuthLayer::new(gate))
        // HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: a client opening more streams on one connection waits.
        .max_concurrent_streams(config.limits.max_streams_per_connection)
        // What a client may send ahead on one stream before the session reads it: bytes the server
        // buffers per stream, on top of the request budget.
        .initial_stream_window_size(config.limits.stream_window_bytes)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(AnalysisServer::new(service).max_decoding_message_size(max_message))
        .add_service(StudiesServer::new(studies))
        .add_service(ModelsServer::new(models));
    let server: std::pin::Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<(), tonic::transport::Error>>
                + Send,
        >,
    > = match tls {
        Some(tls) => {
            let incoming = security::tls::accept(listener, tls, security::tls::Kind::Grpc);
            let incoming = tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(incoming),
                |(stream, _)| Ok::<_, std::io::Error>(stream),
            );
            Box::pin(router.serve_with_incoming_shutdown(incoming, stop_accepting))
        }
        None => Box::pin(router.serve_with_incoming_shutdown(
            // Findings are small writes that must leave at once: Nagle's algorithm would hold them
            // back for the peer's delayed ACK.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop_accepting,
        )),
    };
    // tonic waits for every connection to close; after an abort a peer that keeps its connection open
    // (or never reads) must not hold the process, so the abort plus a short grace ends the wait.
    let hard_stop = async {
        shutdown.aborted().await;
        tokio::time::sleep(ABORT_GRACE).await;
    };
    let result = tokio::select! {
        r = server => r.map_err(Error::from),
        () = hard_stop => {
            tracing::warn!("connections still open after the drain was cut short; closing them");
            Ok(())
        }
    };
    deadline_task.abort();
    health_task.abort();
    prune_task.abort();
    if let Some(t) = http_task {
        t.abort();
    }
    if let Some(t) = webhook_task {
        t.abort();
    }
    result
}

/// Removes studies past the retention from the log, at start and then every [`PRUNE_EVERY`].
async fn prune_log(log: Arc<dyn EventLog>, retention: Duration) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        let before = crate::results::log::now_unix_us()
            - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        let log = log.clone();
        match tokio::task::spawn_blocking(move || log.prune(before)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(studies = n, "event log: removed studies past retention"),
            Ok(Err(e)) => tracing::warn!("event log: pruning failed: {e}"),
            Err(e) => tracing::warn!("event log: pruning failed: {e}"),
        }
    }
}

/// SERVING only while the engine serves and no drain has begun.
fn health_status(engine: EngineHealth, shutdown: &Shutdown) -> ServingStatus {
    if shutdown.is_draining() || engine != EngineHealth::Serving {
        ServingStatus::NotServing
    } else {
        ServingStatus::Serving
    }
}

/// Both names a health client may ask about: the whole server ("") and `radstream.v1.Analysis`.
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status("", status).await;
    reporter
        .set_service_status(
            <AnalysisServer<AnalysisService> as NamedService>::NAME,
            status,
        )
        .await;
}

/// Mirrors the engine's health and the drain into gRPC health until the drain begins (NOT_SERVING
/// from then on).
async fn follow_health(
    reporter: HealthReporter,
    mut engine: watch::Receiver<EngineHealth>,
    shutdown: Shutdown,
    mut last: ServingStatus,
) {
    loop {
        tokio::select! {
            changed = engine.changed() => {
                if changed.is_err() {
                    // The engine is gone: nothing will be scored again.
                    set_health(&reporter, ServingStatus::NotServing).await;
                    return;
                }
            }
            () = shutdown.draining() => {}
        }
        let state = *engine.borrow_and_update();
        let status = health_status(state, &shutdown);
        if status != last {
            set_health(&reporter, status).await;
            tracing::info!(engine = ?state, draining = shutdown.is_draining(), "health: {status:?}");
            last = status;
        }
        if shutdown.is_draining() {
            return;
        }
    }
}

/// Once the drain begins, aborts it when `deadline` has passed.
async fn enforce_deadline(shutdown: Shutdown, deadline: Duration) {
    shutdown.draining().await;
    tokio::select! {
        () = tokio::time::sleep(deadline) => {
            if !shutdown.is_aborted() {
                tracing::warn!(
                    deadline_secs = deadline.as_secs_f64(),
                    "drain deadline passed: cancelling what is left"
                );
                shutdown.abort_because(AbortReason::DeadlinePassed);
            }
        }
        () = shutdown.aborted() => {}
    }
}

/// A server running in this process.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    /// The web view's address, when `[http] listen` was set.
    pub http_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    catalog: Catalog,
    /// Whether the listeners speak TLS.
    pub tls: bool,
    shutdown: Shutdown,
    handle: JoinHandle<Result<()>>,
    /// The temporary data directory, when none was configured (removed when the server is dropped).
    _temporary: Option<tempfile::TempDir>,
}

impl RunningServer {
    /// `http://ADDR` (`https://` with TLS), for clients.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The loaded model versions (what `models list` shows).
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The server's shutdown state (to drain or abort it from a test).
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Drains (stops accepting, finishes what open streams accepted, within the drain deadline) and
    /// waits for the server task.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.begin_drain();
        match self.handle.await {
            Ok(result) => result,
            Err(join) => Err(Error::ServerTask(join.to_string())),
        }
    }
}

/// Binds `addr` (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    Ok((listener, bound))
}

/// Builds the engine, binds `config.listen` (and `config.http.listen`) and serves in the background.
/// Without `config.store.data_dir` the event log lives in a temporary directory removed with the
/// returned server.
pub async fn start(config: Config) -> Result<RunningServer> {
    let (grpc, addr) = bind(config.listen).await?;
    let (http, http_addr) = match config.http.listen {
        Some(a) => {
            let (l, bound) = bind(a).await?;
            (Some(l), Some(bound))
        }
        None => (None, None),
    };
    let (data_dir, temporary) = match &config.store.data_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let t = tempfile::Builder::new()
                .prefix("radstream-data-")
                .tempdir()
                .map_err(Error::TempDir)?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let catalog = build_catalog(&config, &data_dir)?;
    let security = Security::start(&config)?;
    let tls = security.tls.is_some();
    let shutdown = Shutdown::new();
    let handle = tokio::spawn({
        let shutdown = shutdown.clone();
        let data_dir = data_dir.clone();
        let catalog = catalog.clone();
        async move {
            serve_secured(
                Listeners { grpc, http },
                &config,
                catalog,
                shutdown,
                &data_dir,
                security,
            )
            .await
        }
    });
    Ok(RunningServer {
        addr,
        http_addr,
        data_dir,
        catalog,
        tls,
        shutdown,
        handle,
        _temporary: temporary,
    })
}
