//! radstream: real-time imaging analysis.
//!
//! Data flows one way through modules named for the stages:
//! [`ingest`] (gRPC `Analyze` stream) → [`decode`] (DICOM Part-10 → slices) → [`preprocess`] (WGSL on the
//! GPU, CPU reference as fallback) → [`inference`] (ONNX Runtime, batched by [`pipeline`]) → [`study`]
//! (per-study aggregation and completion) → [`results`] (findings and summaries sent back).
//! [`model`] holds the model repository format (manifest + ONNX file) every stage agrees on.

pub mod client;
pub mod config;
pub mod decode;
pub mod demo;
pub mod error;
pub mod inference;
pub mod ingest;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod proto;
pub mod results;
pub mod server;
pub mod shutdown;
pub mod study;
pub mod telemetry;
