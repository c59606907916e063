//! radstream: real-time imaging analysis.
//!
//! Data flows one way through modules named for the stages:
//! [`ingest`] (gRPC `Analyze` stream; the transport-agnostic intake) → [`decode`] (header, then pixels) →
//! [`preprocess`] (WGSL on the GPU, CPU reference as fallback) → [`inference`] (ONNX Runtime, batched by
//! [`pipeline`]) → [`study`] (the process-wide study registry: assembly across streams, series order,
//! completion, critical findings) → [`results`] (the durable event log and the hub that replays and
//! fans out) → the ways out: the `Analyze` stream itself, [`api`] (`Studies.Watch`), [`web`] (the live
//! page and JSON API) and the webhook.
//! [`model`] holds the model repository format (manifest + ONNX file) every stage agrees on;
//! [`security`] sits in front of every way in: TLS, bearer tokens with roles, the audit log.
//! [`catalog`] holds the loaded model versions, routes instances to them and swaps them while serving.

pub mod api;
pub mod bench;
pub mod catalog;
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
pub mod security;
pub mod server;
pub mod shutdown;
pub mod study;
pub mod telemetry;
pub mod web;
