//! Assembling and running the service: model → engine → gRPC server with health checking and
//! reflection. `start` binds first and returns the bound address, so tests and `radstream demo` can use
//! port 0 and talk to the real server over loopback.

use std::{future::Future, net::SocketAddr, sync::Arc};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::{server::TcpIncoming, Server};

use crate::{
    config::Config,
    error::{Error, Result},
    inference,
    ingest::AnalysisService,
    model::ModelPackage,
    pipeline::Engine,
    proto::{v1::analysis_server::AnalysisServer, FILE_DESCRIPTOR_SET},
};

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

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    config: &Config,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let service = AnalysisService::new(
        engine.clone(),
        config.decode_limits(),
        config.idle_timeout(),
        config.limits.max_in_flight_per_stream,
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AnalysisServer<AnalysisService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Reflection(e.to_string()))?;
    let max_message = config.max_message_bytes();
    Server::builder()
        .add_service(health_service)
        .add_service(reflection)
        .add_service(AnalysisServer::new(service).max_decoding_message_size(max_message))
        .serve_with_incoming_shutdown(
            // Findings are small writes that must leave at once: Nagle's algorithm would hold them
            // back for the peer's delayed ACK.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    Ok(())
}

/// A server running in this process.
#[derive(Debug)]
pub struct RunningServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: JoinHandle<Result<()>>,
}

impl RunningServer {
    /// `http://ADDR`, for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, lets open streams finish, and waits for the server task.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
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
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        serve(listener, &config, engine, async {
            let _ = rx.await;
        })
        .await
    });
    Ok(RunningServer {
        addr,
        shutdown: Some(tx),
        handle,
    })
}
