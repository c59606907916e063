//! The `Analyze` bidirectional stream. Each stream is one session task: it reads instances and hands
//! each to the intake (bounded per stream, so a fast pusher is slowed by HTTP/2 flow control rather
//! than buffered without limit); studies belong to the registry, and the session forwards what the
//! registry publishes about its instances and studies (acceptances, rejections, findings, critical
//! findings, summaries) as soon as it exists. A client that vanishes ends its session; the instances it
//! had sent finish (within the same decode and scoring limits) because they belong to their studies,
//! not to the stream; other streams are untouched. Every error about one instance becomes an `InstanceRejected` for that instance; the
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
//! This file is the transport side: the service, admission of streams, and the table from inbound
//! failures to gRPC status (the wire reasons of rejections are the intake's). The per-stream session is `session.rs`; the counters
//! resource tests read are `probe.rs`.

use std::sync::Arc;

use futures::{stream::BoxStream, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use super::{budget::ByteBudget, intake::Intake, session::Session};
use crate::{
    config::LimitsConfig,
    proto::v1::{self as pb, analysis_server::Analysis},
    results::hub::Hub,
    shutdown::Shutdown,
};

/// Responses buffered per stream before the session waits for the client to read.
const RESPONSE_BUFFER: usize = 64;

/// The `radstream.v1.Analysis` service.
#[derive(Debug, Clone)]
pub struct AnalysisService {
    /// Decode, registry and scoring, shared with every other ingest path.
    pub(super) intake: Intake,
    /// Where this stream's answers come from (it subscribes as a source).
    pub(super) hub: Hub,
    pub(super) max_in_flight: usize,
    /// Drain: refuse new streams, stop reading open ones, finish what they accepted. Abort: cancel.
    pub(super) shutdown: Shutdown,
    /// Received Part-10 bytes not yet decoded, across all streams.
    pub(super) request_budget: Arc<ByteBudget>,
    /// Open `Analyze` streams, across all connections.
    pub(super) streams: Arc<Semaphore>,
    pub(super) max_streams: usize,
    pub(super) max_client_ref_bytes: usize,
}

impl AnalysisService {
    /// The service over `intake`, with the limits of `[limits]` (stream cap, request budget,
    /// `client_ref` length, instances in flight per stream).
    pub fn new(intake: Intake, hub: Hub, limits: &LimitsConfig) -> Self {
        let max_streams = limits.max_streams.max(1);
        Self {
            intake,
            hub,
            max_in_flight: limits.max_in_flight_per_stream.max(1),
            shutdown: Shutdown::new(),
            request_budget: Arc::new(ByteBudget::new(
                "request bytes",
                limits.max_request_bytes_in_flight,
            )),
            streams: Arc::new(Semaphore::new(max_streams)),
            max_streams,
            max_client_ref_bytes: limits.max_client_ref_bytes,
        }
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
        // Every line about this stream, and about each instance it brings, carries its id and peer
        // (`telemetry`'s module docs); never a `client_ref`.
        let span = tracing::info_span!(
            "stream",
            stream = session.id(),
            peer = tracing::field::Empty
        );
        if let Some(peer) = peer {
            span.record("peer", tracing::field::display(peer));
        }
        tokio::spawn(
            async move {
                let outcome = session.run(inbound).await;
                // Given back before the client can see the stream end, so it may open another at once.
                drop(stream_permit);
                tracing::info!("analyze stream ended: {outcome}");
                if let Some(status) = outcome.final_status() {
                    let _ = final_status.send(status);
                }
            }
            .instrument(span),
        );
        let status = futures::stream::once(final_rx)
            .filter_map(|sent| futures::future::ready(sent.ok().map(Err)));
        Ok(Response::new(ReceiverStream::new(rx).chain(status).boxed()))
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
