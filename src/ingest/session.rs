//! One `Analyze` stream's session: the gRPC side of an ingest source. It reads instances and hands each
//! to the intake (header → registry → pixels → scoring), and it is a subscriber of the results hub
//! like any viewer: what the registry publishes about its instances and its studies (acceptances,
//! rejections, findings, critical findings, summaries) reaches it in log order and goes out on the
//! stream under the stream's own `client_ref`s. The stream ends once every instance it read has been
//! answered and every study it sent to has had its summary. What it guarantees (bounded cost, drain
//! and abort, truthful stream ends) is in `grpc.rs`'s module docs, the service it belongs to.

use std::{collections::HashSet, sync::Arc, time::SystemTime};

use futures::future::OptionFuture;
use tokio::{
    sync::{mpsc, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tonic::{Code, Status, Streaming};

use super::{
    grpc::{inbound_status, AnalysisService},
    probe,
};
use crate::{
    proto::v1 as pb,
    results::hub::{ClientRef, SourceDelivery, SourceFeed, SourceId},
    shutdown::AbortReason,
    telemetry::events,
};

/// A session's wait for its next message's share of the request budget.
type ShareWait = std::pin::Pin<Box<dyn std::future::Future<Output = OwnedSemaphorePermit> + Send>>;

/// The request-budget share taken before a stream's first message is read (then: the last message's
/// size). A CT slice is ~0.5 MB: guessing low would make every first message wait in hand.
const FIRST_MESSAGE_GUESS: u64 = 1 << 20;

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
            Outcome::ClientGone => write!(
                f,
                "client went away; its in-flight instances finish for their studies"
            ),
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
    feed: SourceFeed,
    /// Instances handed to the intake whose last answer has not arrived yet.
    unanswered: usize,
    /// Studies this stream sent to whose summary has not arrived since.
    awaiting_summary: HashSet<String>,
    input_closed: bool,
    /// The registry has been told this source sends nothing more.
    close_reported: bool,
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
    /// Counts this stream in `radstream_open_streams` while it lives.
    _open: events::OpenGuard,
}

impl Session {
    pub(super) fn new(
        service: AnalysisService,
        out: mpsc::Sender<Result<pb::AnalyzeResponse, Status>>,
    ) -> Self {
        let feed = service.hub.attach_source();
        Self {
            service,
            out,
            feed,
            unanswered: 0,
            awaiting_summary: HashSet::new(),
            input_closed: false,
            close_reported: false,
            stopped_reading: false,
            inbound_failure: None,
            request_share: None,
            expected_message: FIRST_MESSAGE_GUESS,
            instances: 0,
            summaries: 0,
            _open: events::OpenGuard::stream(),
        }
    }

    /// The stream's source id: what its log span and the registry know it by.
    pub(super) fn id(&self) -> SourceId {
        self.feed.id
    }

    /// Sends one response; waits while the client does not read, but never past an abort.
    async fn send(&self, event: pb::analyze_response::Event) -> Result<(), ClientGone> {
        let response = Ok(pb::AnalyzeResponse { event: Some(event) });
        tokio::select! {
            sent = self.out.send(response) => sent.map_err(|_| ClientGone),
            () = self.service.shutdown.aborted() => Err(ClientGone),
        }
    }

    /// Refuses a request the stream itself cannot take (never reaching the registry): logged, counted
    /// and answered.
    async fn reject(&self, rejected: pb::InstanceRejected) -> Result<(), ClientGone> {
        events::InstanceRejected {
            sop_instance_uid: &rejected.sop_instance_uid,
            reason: rejected.reason,
            message: &rejected.message,
        }
        .emit();
        self.send(pb::analyze_response::Event::Rejected(rejected))
            .await
    }

    /// How a session that must stop now ends: aborted by the shutdown, or because its client left.
    fn cut_off(&self) -> Outcome {
        if self.service.shutdown.is_aborted() {
            Outcome::Aborted {
                cancelled: self.unanswered,
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

    /// Tells the registry, once, that this source sends nothing more (after what it sent so far).
    fn report_closed(&mut self) {
        if !self.close_reported {
            self.close_reported = true;
            self.service
                .intake
                .registry()
                .source_closed(self.feed.id, self.instances);
        }
    }

    pub(super) async fn run(mut self, mut inbound: Streaming<pb::AnalyzeRequest>) -> Outcome {
        let mut tasks = JoinSet::new();
        let mut held = probe::HeldTasks::default();
        let slots = Arc::new(Semaphore::new(self.service.max_in_flight));
        let mut permit: Option<OwnedSemaphorePermit> = None;
        let out = self.out.clone();
        let shutdown = self.service.shutdown.clone();
        // Kept across turns of the loop: the budget is a FIFO queue, and a wait dropped whenever an
        // event comes would lose its place in it.
        let mut share_wait: Option<ShareWait> = None;
        let outcome = loop {
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
                delivery = self.feed.recv() => match delivery {
                    Some(d) => self.on_delivery(d).await,
                    None => Err(ClientGone),
                },
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
                    Ok(Some(request)) => self.on_request(request, &mut permit, &mut tasks).await,
                    Ok(None) => {
                        self.input_closed = true;
                        Ok(())
                    }
                    Err(status) => self.on_inbound_failure(status),
                },
            };
            if step.is_err() {
                if self.service.shutdown.is_aborted() {
                    tasks.abort_all();
                } else {
                    // The client went away, not the service: what it sent still belongs to its
                    // studies, so its instances finish (within the decode and scoring limits) and
                    // their results go to the log and the viewers, only not to this stream.
                    tasks.detach_all();
                }
                break self.cut_off();
            }
            if !self.input_closed {
                continue;
            }
            self.report_closed();
            if self.unanswered > 0 || !self.awaiting_summary.is_empty() {
                continue;
            }
            if let Some(status) = self.inbound_failure.take() {
                break Outcome::InboundFailed {
                    instances: self.instances,
                    summaries: self.summaries,
                    status,
                };
            }
            if self.stopped_reading {
                break Outcome::Drained {
                    instances: self.instances,
                    summaries: self.summaries,
                };
            }
            break Outcome::Completed {
                instances: self.instances,
                summaries: self.summaries,
            };
        };
        // Whatever ended the stream, the registry must not wait for this source any more.
        self.report_closed();
        // Every instance has been answered, but its task may still be storing a positive slice's
        // overlay: it finishes on its own (dropping the set would abort it).
        if !self.service.shutdown.is_aborted() {
            tasks.detach_all();
        }
        outcome
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

    /// A task ended. One that panicked never reported its instance's end: its guard reported it
    /// abandoned to the registry, which answers it (as a rejection) through the feed.
    fn on_task_end(&self, joined: Result<(), tokio::task::JoinError>) {
        if let Err(join) = joined {
            if join.is_panic() {
                tracing::error!("an instance task panicked: {join}");
            }
        }
    }

    async fn on_request(
        &mut self,
        request: pb::AnalyzeRequest,
        permit: &mut Option<OwnedSemaphorePermit>,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), ClientGone> {
        use pb::analyze_request::Kind;
        match request.kind {
            Some(Kind::Instance(instance)) => {
                let Some(permit) = permit.take() else {
                    return Ok(());
                };
                let received = SystemTime::now();
                events::InstanceReceived {
                    bytes: instance.dicom.len(),
                }
                .emit();
                let limit = self.service.max_client_ref_bytes;
                if instance.client_ref.len() > limit {
                    // Not echoed: a client_ref that long is not a label, and could be anything.
                    return self
                        .reject(pb::InstanceRejected {
                            reason: pb::RejectReason::TooLarge as i32,
                            message: format!(
                                "client_ref of {} bytes exceeds the limit of {limit} bytes \
                             (limits.max_client_ref_bytes); the instance was not read",
                                instance.client_ref.len()
                            ),
                            ..Default::default()
                        })
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
                self.instances += 1;
                self.unanswered += 1;
                let pb::Instance { dicom, client_ref } = instance;
                let work = self.service.intake.process(
                    self.feed.id,
                    ClientRef::new(client_ref),
                    dicom,
                    received,
                    request_share,
                );
                tasks.spawn(async move {
                    work.await;
                    drop(permit);
                });
                Ok(())
            }
            Some(Kind::EndOfStudy(end)) => {
                self.service.intake.registry().end_of_study(
                    self.feed.id,
                    end.study_instance_uid.clone(),
                    self.instances,
                );
                self.awaiting_summary.insert(end.study_instance_uid);
                Ok(())
            }
            None => {
                self.reject(pb::InstanceRejected {
                    reason: pb::RejectReason::EmptyRequest as i32,
                    message: "request carried neither an instance nor an end-of-study marker"
                        .into(),
                    ..Default::default()
                })
                .await
            }
        }
    }

    /// Something the registry addressed to this stream: sent on under this stream's `client_ref`.
    async fn on_delivery(&mut self, delivery: SourceDelivery) -> Result<(), ClientGone> {
        use pb::analyze_response::Event as Ev;
        use pb::study_event::Event as E;
        let (event, client_ref) = match delivery {
            SourceDelivery::InstanceDone => {
                self.unanswered = self.unanswered.saturating_sub(1);
                return Ok(());
            }
            SourceDelivery::Direct(event) => {
                let event = *event;
                match &event {
                    Ev::Summary(s) => {
                        self.awaiting_summary.remove(&s.study_instance_uid);
                        self.summaries += 1;
                    }
                    // a re-sent instance: the registry sends this stream the study's summary too
                    Ev::Accepted(a) => {
                        if let Some(slice) = &a.slice {
                            self.awaiting_summary
                                .insert(slice.study_instance_uid.clone());
                        }
                    }
                    _ => {}
                }
                return self.send(event).await;
            }
            SourceDelivery::Event { event, client_ref } => (event, client_ref),
        };
        let name = || client_ref.as_deref().unwrap_or_default().to_string();
        let study = &event.study_instance_uid;
        let response = match &event.event {
            Some(E::Accepted(a)) => {
                self.awaiting_summary.insert(study.clone());
                Ev::Accepted(pb::InstanceAccepted {
                    client_ref: name(),
                    ..a.clone()
                })
            }
            Some(E::Rejected(r)) => {
                self.awaiting_summary.insert(study.clone());
                Ev::Rejected(pb::InstanceRejected {
                    client_ref: name(),
                    ..r.clone()
                })
            }
            Some(E::Finding(f)) => Ev::Finding(pb::SliceFinding {
                client_ref: name(),
                ..f.clone()
            }),
            Some(E::Critical(c)) => Ev::Critical(c.clone()),
            Some(E::Summary(s)) => {
                self.awaiting_summary.remove(study);
                self.summaries += 1;
                Ev::Summary(s.clone())
            }
            None => return Ok(()),
        };
        self.send(response).await
    }
}
