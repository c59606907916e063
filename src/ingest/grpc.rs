//! The `Analyze` bidirectional stream. Each stream is one session task that owns its studies: it reads
//! instances, hands each to a decode task (bounded per stream, so a fast pusher is slowed by HTTP/2 flow
//! control rather than buffered without limit), forwards every acceptance, rejection and finding as
//! soon as it exists, and emits a study summary when the study completes. A client that vanishes ends
//! its session: its tasks are aborted and its queued slices are skipped by the engine; other streams
//! are untouched. Every error about one instance becomes an `InstanceRejected` for that instance; the
//! stream goes on.
//!
//! Shutdown (`shutdown.rs`): on a drain a session stops reading as if its client had closed its side,
//! answers what it read, summarises its studies and ends the stream (UNAVAILABLE if the client had not
//! closed, since what it sent after was not read); on an abort it cancels its tasks and ends
//! UNAVAILABLE with the count cancelled. New streams during a drain are refused UNAVAILABLE.
//!
//! What one stream may cost is bounded by configuration, not by the client (see `budget.rs`): streams
//! in total and per connection are capped; received bytes not yet decoded and decoded pixels not yet
//! scored each draw from one budget shared by all streams; a decode keeps its slot and its shares until
//! the decode itself ends (aborting the task of a vanished client does not free them early); events
//! carry the instance's metadata, never its pixels, so a client that stops reading holds no decoded
//! pixels; `client_ref` is bounded and shared by all frames of an instance. An inbound failure (a
//! message over the size limit, a broken frame) ends the stream with its gRPC status, after what was
//! accepted has been answered and its studies summarised.
//!
//! This file is the transport side: the service, admission of streams, and the one table from each
//! error kind to its wire reason or gRPC status. The per-stream session is `session.rs`; the counters
//! resource tests read are `probe.rs`.

use std::{sync::Arc, time::Duration};

use futures::{stream::BoxStream, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};

use super::{budget::ByteBudget, session::Session};
use crate::{
    config::LimitsConfig,
    decode::{DecodeError, Limits},
    pipeline::{Engine, EngineError},
    proto::v1::{self as pb, analysis_server::Analysis},
    shutdown::Shutdown,
};

/// Responses buffered per stream before the session waits for the client to read.
const RESPONSE_BUFFER: usize = 64;

/// The `radstream.v1.Analysis` service.
#[derive(Debug, Clone)]
pub struct AnalysisService {
    pub(super) engine: Arc<Engine>,
    pub(super) limits: Limits,
    pub(super) idle_timeout: Duration,
    pub(super) max_in_flight: usize,
    /// Caps concurrent decodes across all streams (decode is CPU-bound).
    pub(super) decode_slots: Arc<Semaphore>,
    /// Drain: refuse new streams, stop reading open ones, finish what they accepted. Abort: cancel.
    pub(super) shutdown: Shutdown,
    /// Decoded pixels between decode and scoring, across all streams.
    pub(super) decoded_budget: Arc<ByteBudget>,
    /// Received Part-10 bytes not yet decoded, across all streams.
    pub(super) request_budget: Arc<ByteBudget>,
    /// Open `Analyze` streams, across all connections.
    pub(super) streams: Arc<Semaphore>,
    pub(super) max_streams: usize,
    pub(super) max_client_ref_bytes: usize,
}

impl AnalysisService {
    pub fn new(
        engine: Arc<Engine>,
        limits: Limits,
        idle_timeout: Duration,
        max_in_flight: usize,
    ) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            engine,
            limits,
            idle_timeout,
            max_in_flight,
            decode_slots: Arc::new(Semaphore::new(cores)),
            shutdown: Shutdown::new(),
            decoded_budget: Arc::new(ByteBudget::new("decoded bytes", 1)),
            request_budget: Arc::new(ByteBudget::new("request bytes", 1)),
            streams: Arc::new(Semaphore::new(1)),
            max_streams: 1,
            max_client_ref_bytes: 0,
        }
        .with_limits(&LimitsConfig::default())
    }

    /// Applies the service-wide limits of `[limits]`: budgets, stream cap, `client_ref` length.
    pub fn with_limits(mut self, limits: &LimitsConfig) -> Self {
        self.decoded_budget = Arc::new(ByteBudget::new(
            "decoded bytes",
            limits.max_decoded_bytes_in_flight,
        ));
        self.request_budget = Arc::new(ByteBudget::new(
            "request bytes",
            limits.max_request_bytes_in_flight,
        ));
        self.max_streams = limits.max_streams.max(1);
        self.streams = Arc::new(Semaphore::new(self.max_streams));
        self.max_client_ref_bytes = limits.max_client_ref_bytes;
        self
    }

    /// Follow `shutdown` (the server's); without it the service never drains.
    pub fn with_shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }
}

#[tonic::async_trait]
impl Analysis for AnalysisService {
    /// The session's responses, then the stream's final status when it is not OK. The status travels
    /// on its own channel so it is never stuck behind a full response buffer, yet reaches the client
    /// after every response sent before it.
    type AnalyzeStream = BoxStream<'static, Result<pb::AnalyzeResponse, Status>>;

    async fn analyze(
        &self,
        request: Request<Streaming<pb::AnalyzeRequest>>,
    ) -> Result<Response<Self::AnalyzeStream>, Status> {
        if self.shutdown.is_draining() {
            return Err(Status::unavailable(
                "server shutting down: no new streams are accepted; send to another instance",
            ));
        }
        // Refused at once rather than queued: a PACS retries or spreads the load; a queue would hide it.
        let Ok(stream_permit) = self.streams.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "too many open Analyze streams: the server's limit is {} (limits.max_streams); \
                 close a stream or retry later",
                self.max_streams
            )));
        };
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (out, rx) = mpsc::channel(RESPONSE_BUFFER);
        let (final_status, final_rx) = tokio::sync::oneshot::channel::<Status>();
        let session = Session::new(self.clone(), out);
        tokio::spawn(async move {
            let outcome = session.run(inbound).await;
            // Given back before the client can see the stream end, so it may open another at once.
            drop(stream_permit);
            tracing::info!(?peer, "analyze stream ended: {outcome}");
            if let Some(status) = outcome.final_status() {
                let _ = final_status.send(status);
            }
        });
        let status = futures::stream::once(final_rx)
            .filter_map(|sent| futures::future::ready(sent.ok().map(Err)));
        Ok(Response::new(ReceiverStream::new(rx).chain(status).boxed()))
    }
}

/// The wire reason for each decode error: the one table from error kind to code.
pub fn reject_reason(error: &DecodeError) -> pb::RejectReason {
    use pb::RejectReason as R;
    match error {
        DecodeError::NotDicom { .. } => R::NotDicom,
        DecodeError::Malformed { .. } => R::Malformed,
        DecodeError::TooLarge { .. } => R::TooLarge,
        DecodeError::DimensionsTooLarge { .. } | DecodeError::DecodedTooLarge { .. } => {
            R::DimensionsTooLarge
        }
        DecodeError::MissingAttribute { .. } => R::MissingAttribute,
        DecodeError::MissingPixelData => R::MissingPixelData,
        DecodeError::UnsupportedTransferSyntax { .. } => R::UnsupportedTransferSyntax,
        DecodeError::UnsupportedPixelFormat { .. } => R::UnsupportedPixelFormat,
        DecodeError::PixelDecode { .. } => R::PixelDecode,
    }
}

pub(crate) fn engine_reason(error: &EngineError) -> pb::RejectReason {
    match error {
        EngineError::Preprocess(_) | EngineError::GpuRequired(_) => pb::RejectReason::Preprocess,
        EngineError::Inference(_) | EngineError::Panicked(_) => pb::RejectReason::Inference,
        EngineError::ShutDown | EngineError::Thread(_) => pb::RejectReason::Overloaded,
    }
}

/// The status an inbound failure ends the stream with. tonic reports a message over
/// `max_decoding_message_size` as OUT_OF_RANGE; the contract (README) is RESOURCE_EXHAUSTED, the code
/// gRPC itself uses for a message over the receive limit.
pub(crate) fn inbound_status(status: Status) -> Status {
    match status.code() {
        Code::OutOfRange if status.message().contains("message length too large") => {
            Status::resource_exhausted(format!(
                "request message over the server's size limit (limits.max_instance_bytes + 1 MiB): \
                 {}; the stream was ended after answering the instances before it",
                status.message()
            ))
        }
        code => Status::new(
            code,
            format!(
                "the request stream failed: {}; the stream was ended after answering the instances \
                 before it",
                status.message()
            ),
        ),
    }
}
