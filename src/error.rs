//! The service-level error: everything that can stop the service from starting or serving, each
//! variant carrying the stage's own typed error (whose message says what to do about it). Errors about
//! a single instance never reach this type: they become that instance's rejection on the stream.

use std::net::SocketAddr;

use crate::{
    config::ConfigError, inference::InferenceError, model::ManifestError, pipeline::EngineError,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot build the gRPC reflection service: {0}")]
    Reflection(String),
    #[error("cannot connect to {endpoint}: {detail}")]
    Connect { endpoint: String, detail: String },
    #[error("the server ended the stream: {0}")]
    Stream(#[from] tonic::Status),
    #[error("the server task failed: {0}")]
    ServerTask(String),
    #[error(transparent)]
    Security(#[from] crate::security::SecurityError),
    #[error(transparent)]
    Log(#[from] crate::results::log::LogError),
    #[error(transparent)]
    Webhook(#[from] crate::results::webhook::WebhookError),
    #[error("cannot create a temporary data directory: {0}")]
    TempDir(std::io::Error),
    #[error("cannot read {path}: {source}")]
    Input {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
