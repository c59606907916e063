//! One `Analyze` stream's session: reads instances, hands each to a decode task, forwards every
//! acceptance, rejection and finding as soon as it exists, and summarises each study when it completes.
//! What it guarantees (bounded cost, drain and abort, truthful stream ends) is in `grpc.rs`'s module
//! docs, the service it belongs to.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::future::OptionFuture;
use tokio::{
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tonic::{Code, Status, Streaming};

use super::{
    budget::ByteBudget,
    grpc::{engine_reason, inbound_status, reject_reason, AnalysisService},
    probe,
};
use crate::{
    decode::{decode_instance_with_budget, DecodeError, InstanceMeta, Limits, Rejection},
    pipeline::{Engine, EngineError, ScoredSlice},
    proto::v1 as pb,
    results::{self, Arrival},
    shutdown::AbortReason,
    study::StudyTracker,
};

/// A session's wait for its next message's share of the request budget.
type ShareWait = std::pin::Pin<Box<dyn std::future::Future<Output = OwnedSemaphorePermit> + Send>>;

/// The request-budget share taken before a stream's first message is read (then: the last message's
/// size). A CT slice is ~0.5 MB: guessing low would make every first message wait in hand.
const FIRST_MESSAGE_GUESS: u64 = 1 << 20;

/// What decode tasks report back to their session, in order per instance. Events carry the instance's
/// metadata, not its pixels: a session that waits for a slow client must not keep decoded pixels (and
/// their share of the decoded-bytes budget) alive.
enum Event {
    Decoded {
        client_ref: ClientRef,
        result: Result<(Arc<InstanceMeta>, u32), Rejection>,
    },
    Scored {
        meta: Arc<InstanceMeta>,
        frame: usize,
        client_ref: ClientRef,
        arrival: Arrival,
        result: Result<ScoredSlice, EngineError>,
    },
    /// The task is finished with its instance (always the task's last event).
    Done,
}

/// Why a session ended.
#[derive(Debug)]
pub(super) enum Outcome {
    Completed {
        instances: u64,
        summaries: u64,
    },
    ClientGone,
    /// The inbound stream failed; what was read was answered and summarised first.
    InboundFailed {
        instances: u64,
        summaries: u64,
        status: Status,
    },
    /// The server drained while the client had not closed its side: the session stopped reading,
    /// answered every instance it had read and summarised its studies.
    Drained {
        instances: u64,
        summaries: u64,
    },
    /// The drain deadline passed (or a second signal came): the instances still in flight were
    /// cancelled unanswered.
    Aborted {
        cancelled: usize,
        reason: AbortReason,
    },
}

impl Outcome {
    /// The status that ends the stream when it is not OK.
    ///
    /// A drained stream whose client had not closed its side ends UNAVAILABLE even when everything
    /// read was answered: the server cannot know whether the client had more to send, and OK would
    /// tell it that everything it sent was analysed. Its responses say which instances were.
    pub(super) fn final_status(&self) -> Option<Status> {
        match self {
            Outcome::Completed { .. } | Outcome::ClientGone => None,
            Outcome::InboundFailed { status, .. } => Some(status.clone()),
            Outcome::Drained {
                instances,
                summaries,
            } => Some(Status::unavailable(format!(
                "server shutting down: stopped reading this stream after {instances} instances \
                 (all answered, {summaries} study summaries sent); anything sent after them was not \
                 read: send it again to another instance"
            ))),
            Outcome::Aborted { cancelled, reason } => Some(Status::unavailable(format!(
                "server shutting down: {reason}; {cancelled} instances were cancelled before they \
                 were answered: send them again to another instance"
            ))),
        }
    }
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
            Outcome::InboundFailed {
                instances,
                summaries,
                status,
            } => write!(
                f,
                "inbound stream failed ({:?}: {}) after {instances} instances, all answered \
                 ({summaries} study summaries)",
                status.code(),
                status.message()
            ),
            Outcome::Drained {
                instances,
                summaries,
            } => write!(
                f,
                "drained for shutdown ({instances} instances read and answered, {summaries} study summaries)"
            ),
            Outcome::Aborted { cancelled, reason } => write!(
                f,
                "cut off: {reason} ({cancelled} instances cancelled)"
            ),
        }
    }
}

struct ClientGone;

pub(super) struct Session {
    service: AnalysisService,
    out: mpsc::Sender<Result<pb::AnalyzeResponse, Status>>,
    tracker: StudyTracker,
    /// Instances whose decode has not reported yet.
    undecoded: usize,
    /// Instance tasks not finished yet.
    in_flight: usize,
    input_closed: bool,
    /// The drain stopped reading before the client closed its side.
    stopped_reading: bool,
    /// The inbound stream failed (oversize message, broken frame): the status that ends the stream once
    /// what was read has been answered.
    inbound_failure: Option<Status>,
    /// The request budget's share taken for the next message, before it is read.
    request_share: Option<OwnedSemaphorePermit>,
    /// The size the next message is expected to have (the last one's).
    expected_message: u64,
    instances: u64,
    summaries: u64,
}

impl Session {
    pub(super) fn new(
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
            stopped_reading: false,
            inbound_failure: None,
            request_share: None,
            expected_message: FIRST_MESSAGE_GUESS,
            instances: 0,
            summaries: 0,
        }
    }

    /// Sends one response; waits while the client does not read, but never past an abort.
    async fn send(&self, event: pb::analyze_response::Event) -> Result<(), ClientGone> {
        let response = Ok(pb::AnalyzeResponse { event: Some(event) });
        tokio::select! {
            sent = self.out.send(response) => sent.map_err(|_| ClientGone),
            () = self.service.shutdown.aborted() => Err(ClientGone),
        }
    }

    /// How a session that must stop now ends: aborted by the shutdown, or because its client left.
    fn cut_off(&self) -> Outcome {
        if self.service.shutdown.is_aborted() {
            Outcome::Aborted {
                cancelled: self.in_flight,
                reason: self
                    .service
                    .shutdown
                    .abort_reason()
                    .unwrap_or(AbortReason::Forced),
            }
        } else {
            Outcome::ClientGone
        }
    }

    pub(super) async fn run(mut self, mut inbound: Streaming<pb::AnalyzeRequest>) -> Outcome {
        let (events_tx, mut events) = mpsc::unbounded_channel::<Event>();
        let mut tasks = JoinSet::new();
        let mut held = probe::HeldTasks::default();
        let slots = Arc::new(Semaphore::new(self.service.max_in_flight));
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let tick = (self.service.idle_timeout / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let out = self.out.clone();
        let shutdown = self.service.shutdown.clone();
        // Kept across turns of the loop: the budget is a FIFO queue, and a wait dropped whenever an
        // event or a tick comes would lose its place in it.
        let mut share_wait: Option<ShareWait> = None;
        loop {
            if share_wait.is_none()
                && !self.input_closed
                && permit.is_some()
                && self.request_share.is_none()
            {
                let budget = self.service.request_budget.clone();
                let expected = self.expected_message;
                share_wait = Some(Box::pin(async move { budget.acquire(expected).await }));
            }
            held.set(tasks.len());
            let step = tokio::select! {
                biased;
                _ = out.closed() => Err(ClientGone),
                () = shutdown.aborted() => Err(ClientGone),
                // Drain: stop reading as if the client had closed its side; what was read is finished.
                () = shutdown.draining(), if !self.input_closed => {
                    self.input_closed = true;
                    self.stopped_reading = true;
                    Ok(())
                }
                Some(event) = events.recv() => self.on_event(event).await,
                // Reap finished tasks as they finish, not when the stream ends.
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    self.on_task_end(joined);
                    Ok(())
                }
                p = slots.clone().acquire_owned(), if !self.input_closed && permit.is_none() => {
                    permit = p.ok();
                    Ok(())
                }
                // The next message's share of the request budget is taken before reading it (sized as
                // the last one): a session waiting for the budget leaves its bytes with the client.
                Some(share) = OptionFuture::from(share_wait.as_mut()),
                    if share_wait.is_some() && !self.input_closed =>
                {
                    share_wait = None;
                    self.request_share = Some(share);
                    Ok(())
                }
                msg = inbound.message(),
                    if !self.input_closed && permit.is_some() && self.request_share.is_some() =>
                match msg {
                    Ok(Some(request)) => {
                        self.on_request(request, &mut permit, &events_tx, &mut tasks).await
                    }
                    Ok(None) => {
                        self.input_closed = true;
                        Ok(())
                    }
                    Err(status) => self.on_inbound_failure(status),
                },
                _ = ticker.tick() => Ok(()),
            };
            if step.is_err() {
                tasks.abort_all();
                return self.cut_off();
            }
            if self.complete_studies().await.is_err() {
                tasks.abort_all();
                return self.cut_off();
            }
            if self.input_closed && self.in_flight == 0 {
                if let Some(status) = self.inbound_failure.take() {
                    return Outcome::InboundFailed {
                        instances: self.instances,
                        summaries: self.summaries,
                        status,
                    };
                }
            }
            if self.input_closed && self.in_flight == 0 && self.stopped_reading {
                return Outcome::Drained {
                    instances: self.instances,
                    summaries: self.summaries,
                };
            }
            if self.input_closed && self.in_flight == 0 {
                return Outcome::Completed {
                    instances: self.instances,
                    summaries: self.summaries,
                };
            }
        }
    }

    /// The inbound stream failed. A client that cancelled is gone; anything else (a message over the
    /// size limit, a broken frame) stops the reading, lets what was read be answered and summarised,
    /// and then ends the stream with the matching status.
    fn on_inbound_failure(&mut self, status: Status) -> Result<(), ClientGone> {
        if status.code() == Code::Cancelled {
            tracing::debug!("inbound stream cancelled by the client: {status}");
            return Err(ClientGone);
        }
        let status = inbound_status(status);
        tracing::info!(
            code = ?status.code(),
            "inbound stream failed; finishing what was read: {}",
            status.message()
        );
        self.input_closed = true;
        self.inbound_failure = Some(status);
        Ok(())
    }

    /// A task ended: its `Done` event already counted it, unless it panicked before sending it.
    fn on_task_end(&mut self, joined: Result<(), tokio::task::JoinError>) {
        if let Err(join) = joined {
            if join.is_panic() {
                tracing::error!("an instance task panicked: {join}");
                self.in_flight = self.in_flight.saturating_sub(1);
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
                let received = SystemTime::now();
                self.instances += 1;
                let limit = self.service.max_client_ref_bytes;
                if instance.client_ref.len() > limit {
                    // Not echoed: a client_ref that long is not a label, and could be anything.
                    return self
                        .send(pb::analyze_response::Event::Rejected(
                            pb::InstanceRejected {
                                reason: pb::RejectReason::TooLarge as i32,
                                message: format!(
                                    "client_ref of {} bytes exceeds the limit of {limit} bytes \
                                 (limits.max_client_ref_bytes); the instance was not read",
                                    instance.client_ref.len()
                                ),
                                ..Default::default()
                            },
                        ))
                        .await;
                }
                // The share taken before reading was sized as the last message: fit it to this one
                // (waiting, with the message in hand, only when it grew).
                let bytes = instance.dicom.len() as u64;
                self.expected_message = bytes;
                let budget = &self.service.request_budget;
                let taken = self.request_share.take();
                let request_share = async {
                    match taken {
                        Some(share) => budget.resize(share, bytes).await,
                        None => budget.acquire(bytes).await,
                    }
                };
                let request_share = tokio::select! {
                    share = request_share => share,
                    _ = self.out.closed() => return Err(ClientGone),
                    () = self.service.shutdown.aborted() => return Err(ClientGone),
                };
                self.undecoded += 1;
                self.in_flight += 1;
                let task = InstanceTask {
                    engine: self.service.engine.clone(),
                    limits: self.service.limits,
                    decode_slots: self.service.decode_slots.clone(),
                    decoded_budget: self.service.decoded_budget.clone(),
                    events: events.clone(),
                };
                tasks.spawn(task.run(instance, received, permit, request_share));
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
                    Ok((meta, frames)) => {
                        self.tracker.accepted(&meta.study_instance_uid, frames, now);
                        let slice = results::slice_id(&meta, 0);
                        self.send(Ev::Accepted(pb::InstanceAccepted {
                            client_ref: client_ref.to_string(),
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
                            client_ref: client_ref.to_string(),
                            sop_instance_uid: rejection
                                .sop_instance_uid
                                .clone()
                                .unwrap_or_default(),
                            study_instance_uid: rejection
                                .study_instance_uid
                                .clone()
                                .unwrap_or_default(),
                            series_instance_uid: rejection
                                .series_instance_uid
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
                meta,
                frame,
                client_ref,
                arrival,
                result,
            } => {
                let meta = &*meta;
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
                            client_ref: client_ref.to_string(),
                            sop_instance_uid: meta.sop_instance_uid.clone(),
                            study_instance_uid: meta.study_instance_uid.clone(),
                            series_instance_uid: meta.series_instance_uid.clone(),
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

/// A `client_ref`, shared by the acceptance and every frame's finding of its instance: one copy per
/// instance, however many frames it has (it is copied only into the response being sent).
#[derive(Clone)]
struct ClientRef(Arc<probe::Counted>);

impl ClientRef {
    fn new(text: String) -> Self {
        Self(Arc::new(probe::Counted::new(text)))
    }
}

impl std::ops::Deref for ClientRef {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

impl std::fmt::Display for ClientRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// Decodes one instance and queues its frames; reports everything through the session's event channel.
struct InstanceTask {
    engine: Arc<Engine>,
    limits: Limits,
    decode_slots: Arc<Semaphore>,
    decoded_budget: Arc<ByteBudget>,
    events: mpsc::UnboundedSender<Event>,
}

impl InstanceTask {
    /// Always ends with `Done` (unless aborted with its session), so the session can count it.
    async fn run(
        self,
        instance: pb::Instance,
        received: SystemTime,
        permit: OwnedSemaphorePermit,
        request_share: OwnedSemaphorePermit,
    ) {
        let events = self.events.clone();
        self.process(instance, received, request_share).await;
        drop(permit);
        let _ = events.send(Event::Done);
    }

    // The decode's `Rejection` is large; it crosses the blocking pool once per instance.
    #[allow(clippy::result_large_err)]
    async fn process(
        self,
        instance: pb::Instance,
        received: SystemTime,
        request_share: OwnedSemaphorePermit,
    ) {
        let pb::Instance { dicom, client_ref } = instance;
        let client_ref = ClientRef::new(client_ref);
        // The slot is never closed; without one (impossible) the decode would still be bounded by the
        // stream's in-flight limit.
        let slot = self.decode_slots.clone().acquire_owned().await.ok();
        let limits = self.limits;
        let budget = self.decoded_budget.clone();
        let decoded = tokio::task::spawn_blocking(move || {
            // The decode slot and the request bytes' share belong to the decode itself: when the
            // client vanishes this task is aborted, but the blocking decode runs on, and must go on
            // counting against the global limits until it ends.
            let _slot = slot;
            let _running = probe::Decoding::start();
            let decoded = decode_instance_with_budget(&dicom, &limits, Some(budget.as_ref()));
            drop(dicom);
            drop(request_share);
            decoded
        })
        .await;
        let decoded_at = SystemTime::now();
        let instance = match decoded {
            Ok(Ok(instance)) => Ok(Arc::new(instance)),
            Ok(Err(rejection)) => Err(rejection),
            Err(join) => Err(Rejection {
                sop_instance_uid: None,
                study_instance_uid: None,
                series_instance_uid: None,
                error: DecodeError::PixelDecode {
                    transfer_syntax: String::new(),
                    detail: format!("decoder crashed: {join}"),
                },
            }),
        };
        let instance = match instance {
            Ok(instance) => instance,
            Err(rejection) => {
                let _ = self.events.send(Event::Decoded {
                    client_ref,
                    result: Err(rejection),
                });
                return;
            }
        };
        let meta = Arc::new(instance.meta.clone());
        let frames = instance.frames.len();
        let accepted = Event::Decoded {
            client_ref: client_ref.clone(),
            result: Ok((meta.clone(), frames as u32)),
        };
        if self.events.send(accepted).is_err() {
            return;
        }
        let arrival = Arrival {
            received,
            decoded: decoded_at,
        };
        let mut pending = Vec::with_capacity(frames);
        for frame in 0..frames {
            pending.push((frame, self.engine.submit(instance.clone(), frame).await));
        }
        // From here the engine's queued jobs hold the pixels: the last one scored (or skipped) gives the
        // instance's decoded bytes back, whether or not this stream's client reads its findings.
        drop(instance);
        for (frame, submitted) in pending {
            let result = match submitted {
                Ok(rx) => rx.await.unwrap_or(Err(EngineError::ShutDown)),
                Err(e) => Err(e),
            };
            let event = Event::Scored {
                meta: meta.clone(),
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
}
