//! The `Analyze` bidirectional stream. Each stream is one session task that owns its studies: it reads
//! instances, hands each to a decode task (bounded per stream, so a fast pusher is slowed by HTTP/2 flow
//! control rather than buffered without limit), forwards every acceptance, rejection and finding as
//! soon as it exists, and emits a study summary when the study completes. A client that vanishes ends
//! its session: its tasks are aborted and its queued slices are skipped by the engine; other streams
//! are untouched. Every error about one instance becomes an `InstanceRejected` for that instance; the
//! stream goes on.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    decode::{decode_instance, DecodeError, DecodedInstance, Limits, Rejection},
    pipeline::{Engine, EngineError, ScoredSlice},
    proto::v1::{self as pb, analysis_server::Analysis},
    results::{self, Arrival},
    study::StudyTracker,
};

/// Responses buffered per stream before the session waits for the client to read.
const RESPONSE_BUFFER: usize = 64;

/// The `radstream.v1.Analysis` service.
#[derive(Debug, Clone)]
pub struct AnalysisService {
    engine: Arc<Engine>,
    limits: Limits,
    idle_timeout: Duration,
    max_in_flight: usize,
    /// Caps concurrent decodes across all streams (decode is CPU-bound).
    decode_slots: Arc<Semaphore>,
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
        }
    }
}

#[tonic::async_trait]
impl Analysis for AnalysisService {
    type AnalyzeStream = ReceiverStream<Result<pb::AnalyzeResponse, Status>>;

    async fn analyze(
        &self,
        request: Request<Streaming<pb::AnalyzeRequest>>,
    ) -> Result<Response<Self::AnalyzeStream>, Status> {
        let peer = request.remote_addr();
        let inbound = request.into_inner();
        let (out, rx) = mpsc::channel(RESPONSE_BUFFER);
        let session = Session::new(self.clone(), out);
        tokio::spawn(async move {
            let outcome = session.run(inbound).await;
            tracing::info!(?peer, "analyze stream ended: {outcome}");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
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

fn engine_reason(error: &EngineError) -> pb::RejectReason {
    match error {
        EngineError::Preprocess(_) | EngineError::GpuRequired(_) => pb::RejectReason::Preprocess,
        EngineError::Inference(_) | EngineError::Panicked(_) => pb::RejectReason::Inference,
        EngineError::ShutDown | EngineError::Thread(_) => pb::RejectReason::Overloaded,
    }
}

/// What decode tasks report back to their session, in order per instance.
enum Event {
    Decoded {
        client_ref: String,
        result: Result<Arc<DecodedInstance>, Rejection>,
    },
    Scored {
        instance: Arc<DecodedInstance>,
        frame: usize,
        client_ref: String,
        arrival: Arrival,
        result: Result<ScoredSlice, EngineError>,
    },
    /// The task is finished with its instance (always the task's last event).
    Done,
}

/// Why a session ended.
#[derive(Debug)]
enum Outcome {
    Completed { instances: u64, summaries: u64 },
    ClientGone,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Completed {
                instances,
                summaries,
            } => {
                write!(
                    f,
                    "completed ({instances} instances, {summaries} study summaries)"
                )
            }
            Outcome::ClientGone => write!(f, "client went away; its in-flight work was cancelled"),
        }
    }
}

struct ClientGone;

struct Session {
    service: AnalysisService,
    out: mpsc::Sender<Result<pb::AnalyzeResponse, Status>>,
    tracker: StudyTracker,
    /// Instances whose decode has not reported yet.
    undecoded: usize,
    /// Instance tasks not finished yet.
    in_flight: usize,
    input_closed: bool,
    instances: u64,
    summaries: u64,
}

impl Session {
    fn new(
        service: AnalysisService,
        out: mpsc::Sender<Result<pb::AnalyzeResponse, Status>>,
    ) -> Self {
        let labels = service
            .engine
            .manifest()
            .labels
            .iter()
            .map(|l| (l.name.clone(), l.threshold))
            .collect();
        Self {
            service,
            out,
            tracker: StudyTracker::new(labels),
            undecoded: 0,
            in_flight: 0,
            input_closed: false,
            instances: 0,
            summaries: 0,
        }
    }

    async fn send(&self, event: pb::analyze_response::Event) -> Result<(), ClientGone> {
        self.out
            .send(Ok(pb::AnalyzeResponse { event: Some(event) }))
            .await
            .map_err(|_| ClientGone)
    }

    async fn run(mut self, mut inbound: Streaming<pb::AnalyzeRequest>) -> Outcome {
        let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
        let mut tasks = JoinSet::new();
        let slots = Arc::new(Semaphore::new(self.service.max_in_flight));
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let tick = (self.service.idle_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let out = self.out.clone();
        loop {
            let step = tokio::select! {
                biased;
                _ = out.closed() => Err(ClientGone),
                Some(event) = events.recv() => self.on_event(event).await,
                p = slots.clone().acquire_owned(), if !self.input_closed && permit.is_none() => {
                    permit = p.ok();
                    Ok(())
                }
                msg = inbound.message(), if !self.input_closed && permit.is_some() => match msg {
                    Ok(Some(request)) => {
                        self.on_request(request, &mut permit, &events_tx, &mut tasks).await
                    }
                    Ok(None) => {
                        self.input_closed = true;
                        Ok(())
                    }
                    Err(status) => {
                        tracing::debug!("inbound stream failed: {status}");
                        Err(ClientGone)
                    }
                },
                _ = ticker.tick() => Ok(()),
            };
            if step.is_err() {
                tasks.abort_all();
                return Outcome::ClientGone;
            }
            if self.complete_studies().await.is_err() {
                tasks.abort_all();
                return Outcome::ClientGone;
            }
            if self.input_closed && self.in_flight == 0 {
                return Outcome::Completed {
                    instances: self.instances,
                    summaries: self.summaries,
                };
            }
        }
    }

    async fn on_request(
        &mut self,
        request: pb::AnalyzeRequest,
        permit: &mut Option<OwnedSemaphorePermit>,
        events: &mpsc::UnboundedSender<Event>,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), ClientGone> {
        use pb::analyze_request::Kind;
        match request.kind {
            Some(Kind::Instance(instance)) => {
                let Some(permit) = permit.take() else {
                    return Ok(());
                };
                self.instances += 1;
                self.undecoded += 1;
                self.in_flight += 1;
                let task = InstanceTask {
                    engine: self.service.engine.clone(),
                    limits: self.service.limits,
                    decode_slots: self.service.decode_slots.clone(),
                    events: events.clone(),
                };
                tasks.spawn(task.run(instance, SystemTime::now(), permit));
                Ok(())
            }
            Some(Kind::EndOfStudy(end)) => {
                self.tracker
                    .end_requested(&end.study_instance_uid, Instant::now());
                Ok(())
            }
            None => {
                self.send(pb::analyze_response::Event::Rejected(
                    pb::InstanceRejected {
                        reason: pb::RejectReason::EmptyRequest as i32,
                        message: "request carried neither an instance nor an end-of-study marker"
                            .into(),
                        ..Default::default()
                    },
                ))
                .await
            }
        }
    }

    async fn on_event(&mut self, event: Event) -> Result<(), ClientGone> {
        use pb::analyze_response::Event as Ev;
        let now = Instant::now();
        match event {
            Event::Done => {
                self.in_flight = self.in_flight.saturating_sub(1);
                Ok(())
            }
            Event::Decoded { client_ref, result } => {
                self.undecoded = self.undecoded.saturating_sub(1);
                match result {
                    Ok(instance) => {
                        let meta = &instance.meta;
                        let frames = instance.frames.len() as u32;
                        self.tracker.accepted(&meta.study_instance_uid, frames, now);
                        let slice = results::slice_id(meta, 0);
                        self.send(Ev::Accepted(pb::InstanceAccepted {
                            client_ref,
                            slice: Some(results::slice_ref(&slice)),
                            frames,
                        }))
                        .await
                    }
                    Err(rejection) => {
                        if let Some(study) = &rejection.study_instance_uid {
                            self.tracker.rejected(study, now);
                        }
                        tracing::info!(
                            sop_instance_uid = rejection
                                .sop_instance_uid
                                .as_deref()
                                .unwrap_or("unreadable"),
                            code = rejection.error.code(),
                            "instance rejected: {}",
                            rejection.error
                        );
                        self.send(Ev::Rejected(pb::InstanceRejected {
                            client_ref,
                            sop_instance_uid: rejection
                                .sop_instance_uid
                                .clone()
                                .unwrap_or_default(),
                            study_instance_uid: rejection
                                .study_instance_uid
                                .clone()
                                .unwrap_or_default(),
                            reason: reject_reason(&rejection.error) as i32,
                            message: rejection.error.to_string(),
                            frame: None,
                        }))
                        .await
                    }
                }
            }
            Event::Scored {
                instance,
                frame,
                client_ref,
                arrival,
                result,
            } => {
                let meta = &instance.meta;
                let id = results::slice_id(meta, frame as u32);
                match result {
                    Ok(scored) => {
                        self.tracker.scored(&id, &scored.scores, now);
                        let engine = &self.service.engine;
                        let finding = results::slice_finding(
                            engine.manifest(),
                            engine.model(),
                            meta,
                            &id,
                            &client_ref,
                            &scored,
                            arrival,
                            engine.preprocess_path(),
                        );
                        self.send(Ev::Finding(finding)).await
                    }
                    Err(error) => {
                        self.tracker.failed(&meta.study_instance_uid, now);
                        tracing::warn!(sop_instance_uid = %meta.sop_instance_uid, frame, "slice failed: {error}");
                        self.send(Ev::Rejected(pb::InstanceRejected {
                            client_ref,
                            sop_instance_uid: meta.sop_instance_uid.clone(),
                            study_instance_uid: meta.study_instance_uid.clone(),
                            reason: engine_reason(&error) as i32,
                            message: error.to_string(),
                            frame: Some(frame as u32),
                        }))
                        .await
                    }
                }
            }
        }
    }

    async fn complete_studies(&mut self) -> Result<(), ClientGone> {
        let closed = self.input_closed && self.in_flight == 0;
        let done = self.tracker.take_complete(
            Instant::now(),
            self.service.idle_timeout,
            closed,
            self.undecoded,
        );
        for summary in done {
            self.summaries += 1;
            let msg = results::study_summary(self.service.engine.model(), &summary);
            self.send(pb::analyze_response::Event::Summary(msg)).await?;
        }
        Ok(())
    }
}

/// Decodes one instance and queues its frames; reports everything through the session's event channel.
struct InstanceTask {
    engine: Arc<Engine>,
    limits: Limits,
    decode_slots: Arc<Semaphore>,
    events: mpsc::UnboundedSender<Event>,
}

impl InstanceTask {
    async fn run(
        self,
        instance: pb::Instance,
        received: SystemTime,
        _permit: OwnedSemaphorePermit,
    ) {
        let pb::Instance { dicom, client_ref } = instance;
        let decoded = {
            let _slot = self.decode_slots.acquire().await;
            let limits = self.limits;
            tokio::task::spawn_blocking(move || decode_instance(&dicom, &limits)).await
        };
        let decoded_at = SystemTime::now();
        let result = match decoded {
            Ok(Ok(instance)) => Ok(Arc::new(instance)),
            Ok(Err(rejection)) => Err(rejection),
            Err(join) => Err(Rejection {
                sop_instance_uid: None,
                study_instance_uid: None,
                error: DecodeError::PixelDecode {
                    transfer_syntax: String::new(),
                    detail: format!("decoder crashed: {join}"),
                },
            }),
        };
        let accepted = result.as_ref().ok().cloned();
        if self
            .events
            .send(Event::Decoded {
                client_ref: client_ref.clone(),
                result,
            })
            .is_err()
        {
            return;
        }
        if let Some(instance) = accepted {
            let arrival = Arrival {
                received,
                decoded: decoded_at,
            };
            let mut pending = Vec::with_capacity(instance.frames.len());
            for frame in 0..instance.frames.len() {
                pending.push((frame, self.engine.submit(instance.clone(), frame).await));
            }
            for (frame, submitted) in pending {
                let result = match submitted {
                    Ok(rx) => rx.await.unwrap_or(Err(EngineError::ShutDown)),
                    Err(e) => Err(e),
                };
                let event = Event::Scored {
                    instance: instance.clone(),
                    frame,
                    client_ref: client_ref.clone(),
                    arrival,
                    result,
                };
                if self.events.send(event).is_err() {
                    return;
                }
            }
        }
        let _ = self.events.send(Event::Done);
    }
}
