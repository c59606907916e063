//! Assembling and running the service: model → engine → gRPC server with health checking and
//! reflection. `start` binds first and returns the bound address, so tests and `radstream demo` can use
//! port 0 and talk to the real server over loopback.
//!
//! Stopping is driven by a [`Shutdown`]: when its drain begins, health turns NOT_SERVING, no new
//! connection or stream is taken, and each open stream finishes what it accepted; the drain deadline
//! (`[shutdown] drain_deadline_secs`) then aborts what is left. [`serve`] returns once every connection
//! has closed — or shortly after the abort even if a peer holds its connection open, so no client can
//! keep the process alive past the deadline.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::{
    server::NamedService,
    transport::{server::TcpIncoming, Server},
};
use tonic_health::{server::HealthReporter, ServingStatus};

use crate::{
    config::Config,
    error::{Error, Result},
    inference,
    ingest::AnalysisService,
    model::ModelPackage,
    pipeline::{Engine, EngineHealth},
    proto::{v1::analysis_server::AnalysisServer, FILE_DESCRIPTOR_SET},
    shutdown::{AbortReason, Shutdown},
};

/// After an abort, how long streams get to deliver their final status before `serve` returns anyway.
const ABORT_GRACE: Duration = Duration::from_millis(500);

/// Loads the configured model (or the built-in default) and starts the scoring engine.
pub fn build_engine(config: &Config) -> Result<Arc<Engine>> {
    config.validate()?;
    let package = match &config.model_dir {
        Some(dir) => ModelPackage::load_dir(dir)?,
        None => ModelPackage::embedded_default()?,
    };
    let env = inference::runtime(&config.ort_library_path())?;
    let engine = Engine::from_package(
        &package,
        env,
        config.preprocess,
        &config.batching,
        &config.inference,
    )?;
    engine.set_stall_timeout(config.stall_timeout());
    let info = engine.model();
    tracing::info!(
        model = %info.name,
        version = %info.version,
        sha256 = %info.onnx_sha256,
        preprocess = engine.preprocess_path(),
        "model loaded"
    );
    Ok(Arc::new(engine))
}

/// Serves on `listener` until `shutdown` drains (see the module docs); the drain deadline is
/// `config.shutdown.drain_deadline_secs`.
pub async fn serve(
    listener: TcpListener,
    config: &Config,
    engine: Arc<Engine>,
    shutdown: Shutdown,
) -> Result<()> {
    let service = AnalysisService::new(
        engine.clone(),
        config.decode_limits(),
        config.idle_timeout(),
        config.limits.max_in_flight_per_stream,
    )
    .with_shutdown(shutdown.clone())
    .with_limits(&config.limits);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Reflection(e.to_string()))?;
    let (health, health_service) = tonic_health::server::health_reporter();
    // Set before the first connection, so no Check sees the service unknown.
    let engine_health = engine.health();
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
    let server = Server::builder()
        // HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS: a client opening more streams on one connection waits.
        .max_concurrent_streams(config.limits.max_streams_per_connection)
        // What a client may send ahead on one stream before the session reads it: bytes the server
        // buffers per stream, on top of the request budget.
        .initial_stream_window_size(config.limits.stream_window_bytes)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(AnalysisServer::new(service).max_decoding_message_size(max_message))
        .serve_with_incoming_shutdown(
            // Findings are small writes that must leave at once: Nagle's algorithm would hold them
            // back for the peer's delayed ACK.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            stop_accepting,
        );
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
    result
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
    shutdown: Shutdown,
    handle: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// `http://ADDR`, for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
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

/// Builds the engine, binds `config.listen` (port 0 picks a free port) and serves in the background.
pub async fn start(config: Config) -> Result<RunningServer> {
    let engine = build_engine(&config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;
    let shutdown = Shutdown::new();
    let handle = tokio::spawn({
        let shutdown = shutdown.clone();
        async move { serve(listener, &config, engine, shutdown).await }
    });
    Ok(RunningServer {
        addr,
        shutdown,
        handle,
    })
}
