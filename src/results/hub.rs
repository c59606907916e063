//! Where events meet their readers. Publishing appends to the durable log ([`EventLog`]) and then hands
//! each stored event to every live subscriber whose filter it matches; subscribing replays the log from
//! a sequence number and then follows live events. Both sides meet under one lock around the log's
//! high-water mark, so a subscriber gets every event from its starting point exactly once: what was
//! logged before it registered comes from the log, what comes after from the live feed.
//!
//! Nothing here waits for a reader. A viewer (`Watch`, the web view, the webhook) gets a bounded buffer;
//! when it is full the events it could not take are counted and it is told with a `Missed` (first and
//! last sequence) before the next event it does get, so it can re-read them from the log. An ingest
//! source (an `Analyze` stream) gets an unbounded feed instead: it must not lose its own answers, and
//! what it can be sent is bounded by its own intake (a stream that does not read its answers stops
//! reading instances; see `ingest/session.rs`).
//!
//! One writer thread appends and fans out, in the order events were published: every subscriber sees
//! a study's events in log order, and a source's direct messages (re-sent findings, end-of-instance
//! markers) stay in order with its logged events.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use tokio::sync::{mpsc, oneshot, Notify};

use super::log::{EventLog, LogError, Overlay};
use crate::proto::v1 as pb;

/// Names an ingest source (one `Analyze` stream, later one DICOM association).
pub type SourceId = u64;

/// Events replayed from the log per read.
const REPLAY_PAGE: usize = 512;
/// Messages the writer takes per turn (one log transaction).
const WRITER_BATCH: usize = 256;
/// Published batches queued for the writer before publishers wait.
const WRITER_QUEUE: usize = 4096;
/// A viewer's live buffer, in events.
pub const DEFAULT_SUBSCRIBER_BUFFER: usize = 1024;

static CLIENT_REFS_LIVE: AtomicUsize = AtomicUsize::new(0);
static CLIENT_REFS_PEAK: AtomicUsize = AtomicUsize::new(0);

/// The name a source gave one instance (`client_ref`): the source's own, never logged (it may be a file
/// path), shared by every answer about the instance: one copy per instance however many frames it has
/// (copied only into the response being sent).
#[derive(Clone)]
pub struct ClientRef(Arc<ClientRefText>);

struct ClientRefText(Box<str>);

impl ClientRef {
    pub fn new(text: String) -> Self {
        let now = CLIENT_REFS_LIVE.fetch_add(1, Ordering::SeqCst) + 1;
        CLIENT_REFS_PEAK.fetch_max(now, Ordering::SeqCst);
        Self(Arc::new(ClientRefText(text.into_boxed_str())))
    }
}

impl Drop for ClientRefText {
    fn drop(&mut self) {
        CLIENT_REFS_LIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::ops::Deref for ClientRef {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0 .0
    }
}

impl std::fmt::Debug for ClientRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientRef({} bytes)", self.len())
    }
}

impl std::fmt::Display for ClientRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

/// `client_ref` copies alive in this process now, and the most ever alive at once (resource tests).
pub fn client_refs_live() -> usize {
    CLIENT_REFS_LIVE.load(Ordering::SeqCst)
}

pub fn client_refs_peak() -> usize {
    CLIENT_REFS_PEAK.load(Ordering::SeqCst)
}

pub fn reset_client_refs_peak() {
    CLIENT_REFS_PEAK.store(client_refs_live(), Ordering::SeqCst);
}

/// Which events a viewer wants. Empty lists mean "any".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WatchFilter {
    pub studies: Vec<String>,
    pub modalities: Vec<String>,
    pub labels: Vec<String>,
    pub only_critical: bool,
}

impl WatchFilter {
    pub fn from_request(r: &pb::WatchRequest) -> Self {
        Self {
            studies: r.study_instance_uids.clone(),
            modalities: r.modalities.clone(),
            labels: r.labels.clone(),
            only_critical: r.only_critical,
        }
    }

    /// Whether `e` passes: its study and modality are wanted; with labels, only findings and critical
    /// findings positive for one of them, and summaries; with `only_critical`, only critical findings.
    pub fn matches(&self, e: &pb::StudyEvent) -> bool {
        use pb::study_event::Event as E;
        if !self.studies.is_empty() && !self.studies.contains(&e.study_instance_uid) {
            return false;
        }
        if !self.modalities.is_empty() && !self.modalities.contains(&e.modality) {
            return false;
        }
        if self.only_critical && !matches!(e.event, Some(E::Critical(_))) {
            return false;
        }
        if self.labels.is_empty() {
            return true;
        }
        let wanted = |label: &str| self.labels.iter().any(|l| l == label);
        match &e.event {
            Some(E::Finding(f)) => f.scores.iter().any(|s| s.positive && wanted(&s.label)),
            Some(E::Critical(c)) => wanted(&c.label),
            Some(E::Summary(_)) => true,
            _ => false,
        }
    }
}

/// An event for the log, and the ingest sources it is also addressed to (each with the `client_ref`
/// that source knows the instance by).
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub event: pb::StudyEvent,
    pub targets: Vec<(SourceId, Option<ClientRef>)>,
}

/// What an ingest source receives, in order.
#[derive(Debug, Clone)]
pub enum SourceDelivery {
    /// A logged event about one of its instances or studies.
    Event {
        event: Arc<pb::StudyEvent>,
        client_ref: Option<ClientRef>,
    },
    /// Not logged, for this source only: a re-sent finding or acceptance, or a rejection that names
    /// no study.
    Direct(Box<pb::analyze_response::Event>),
    /// Everything about one of its instances has been delivered before this.
    InstanceDone,
}

/// What a viewer's subscription yields.
#[derive(Debug, Clone)]
pub enum Watched {
    Event(Arc<pb::StudyEvent>),
    /// Events matching the filter, between `first` and `last`, were dropped: the subscriber fell behind.
    Missed {
        count: u64,
        first: u64,
        last: u64,
    },
    /// The replay is done up to this sequence; live events follow.
    CaughtUp(u64),
}

#[derive(Debug, Default, Clone, Copy)]
struct Lag {
    count: u64,
    first: u64,
    last: u64,
}

#[derive(Debug, Default)]
struct LagState {
    lag: Mutex<Lag>,
    notify: Notify,
}

enum Live {
    Event(Arc<pb::StudyEvent>),
    Missed(Lag),
}

struct Viewer {
    filter: WatchFilter,
    tx: mpsc::Sender<Live>,
    lag: Arc<LagState>,
}

#[derive(Default)]
struct Shared {
    /// Highest sequence handed to subscribers: everything up to it is in the log.
    last_sequence: u64,
    viewers: HashMap<u64, Viewer>,
    sources: HashMap<SourceId, mpsc::UnboundedSender<SourceDelivery>>,
    next_id: u64,
}

enum WriterMsg {
    Publish {
        events: Vec<Outgoing>,
        overlays: Vec<Overlay>,
    },
    Direct {
        source: SourceId,
        delivery: SourceDelivery,
    },
    Flush(oneshot::Sender<()>),
}

struct Inner {
    log: Arc<dyn EventLog>,
    shared: Arc<Mutex<Shared>>,
    queue: mpsc::Sender<WriterMsg>,
    buffer: usize,
}

/// The results hub (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

impl Hub {
    /// Starts the hub's writer over `log`; viewers get `buffer` events of live buffer each.
    pub fn start(log: Arc<dyn EventLog>, buffer: usize) -> Result<Self, LogError> {
        let last = log.last_sequence()?;
        let shared = Arc::new(Mutex::new(Shared {
            last_sequence: last,
            next_id: 1,
            ..Default::default()
        }));
        let (queue, rx) = mpsc::channel(WRITER_QUEUE);
        let writer = Writer {
            log: log.clone(),
            shared: shared.clone(),
            rx,
        };
        std::thread::Builder::new()
            .name("radstream-log".into())
            .spawn(move || writer.run())
            .map_err(|_| LogError::Closed)?;
        Ok(Self {
            inner: Arc::new(Inner {
                log,
                shared,
                queue,
                buffer: buffer.max(2),
            }),
        })
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.inner.log
    }

    /// Logs `events` (and stores `overlays`), then delivers them. Waits only while the writer's queue
    /// is full (the log is behind), never for a subscriber.
    pub async fn publish(&self, events: Vec<Outgoing>, overlays: Vec<Overlay>) {
        if events.is_empty() && overlays.is_empty() {
            return;
        }
        let _ = self
            .inner
            .queue
            .send(WriterMsg::Publish { events, overlays })
            .await;
    }

    /// Sends `delivery` to one source, in order with what was published before.
    pub async fn direct(&self, source: SourceId, delivery: SourceDelivery) {
        let _ = self
            .inner
            .queue
            .send(WriterMsg::Direct { source, delivery })
            .await;
    }

    /// Returns once everything published before has been logged and delivered.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.queue.send(WriterMsg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Registers an ingest source: what is addressed to it arrives on the returned feed until it is
    /// dropped.
    pub fn attach_source(&self) -> SourceFeed {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = match self.inner.shared.lock() {
            Ok(mut s) => {
                let id = s.next_id;
                s.next_id += 1;
                s.sources.insert(id, tx);
                id
            }
            Err(_) => 0,
        };
        SourceFeed {
            id,
            rx,
            hub: self.clone(),
        }
    }

    /// Subscribes a viewer: with `from`, the log from that sequence first, then live events; without,
    /// live events from now on. Either way a [`Watched::CaughtUp`] marks where live events begin.
    pub fn subscribe(&self, filter: WatchFilter, from: Option<u64>) -> Subscription {
        let (tx, rx) = mpsc::channel(self.inner.buffer);
        let lag = Arc::new(LagState::default());
        let (id, last) = match self.inner.shared.lock() {
            Ok(mut s) => {
                let id = s.next_id;
                s.next_id += 1;
                s.viewers.insert(
                    id,
                    Viewer {
                        filter: filter.clone(),
                        tx,
                        lag: lag.clone(),
                    },
                );
                (id, s.last_sequence)
            }
            Err(_) => (0, 0),
        };
        let replay = match from {
            Some(from) => Replay {
                next: from.max(1),
                until: last,
                buffer: VecDeque::new(),
            },
            None => Replay {
                next: last + 1,
                until: last,
                buffer: VecDeque::new(),
            },
        };
        Subscription {
            hub: self.clone(),
            id,
            filter,
            start: replay.next,
            replay: Some(replay),
            rx,
            lag,
            _open: crate::telemetry::events::OpenGuard::subscriber(),
        }
    }

    fn detach(&self, id: u64) {
        if let Ok(mut s) = self.inner.shared.lock() {
            s.viewers.remove(&id);
            s.sources.remove(&id);
        }
    }
}

/// An ingest source's feed (see [`Hub::attach_source`]).
pub struct SourceFeed {
    pub id: SourceId,
    rx: mpsc::UnboundedReceiver<SourceDelivery>,
    hub: Hub,
}

impl SourceFeed {
    pub async fn recv(&mut self) -> Option<SourceDelivery> {
        self.rx.recv().await
    }
}

impl Drop for SourceFeed {
    fn drop(&mut self) {
        self.hub.detach(self.id);
    }
}

struct Replay {
    next: u64,
    until: u64,
    buffer: VecDeque<pb::StudyEvent>,
}

/// A viewer's subscription (see [`Hub::subscribe`]).
pub struct Subscription {
    hub: Hub,
    id: u64,
    filter: WatchFilter,
    replay: Option<Replay>,
    rx: mpsc::Receiver<Live>,
    lag: Arc<LagState>,
    /// The first sequence wanted: live events before it (logged after the subscriber asked for a
    /// start beyond the log's end) are not its.
    start: u64,
    /// Counts this subscriber in `radstream_subscribers` while it lives.
    _open: crate::telemetry::events::OpenGuard,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.detach(self.id);
    }
}

impl Subscription {
    /// The next item (see [`Watched`]); `None` once the hub is gone.
    pub async fn next(&mut self) -> Option<Result<Watched, LogError>> {
        if let Some(replay) = self.replay.as_mut() {
            loop {
                if let Some(event) = replay.buffer.pop_front() {
                    return Some(Ok(Watched::Event(Arc::new(event))));
                }
                if replay.next > replay.until {
                    let until = replay.until;
                    self.replay = None;
                    return Some(Ok(Watched::CaughtUp(until)));
                }
                let log = self.hub.inner.log.clone();
                let (from, to) = (replay.next, replay.until);
                let studies = self.filter.studies.clone();
                let page =
                    tokio::task::spawn_blocking(move || log.read(from, to, &studies, REPLAY_PAGE))
                        .await;
                let page = match page {
                    Ok(Ok(page)) => page,
                    Ok(Err(e)) => return Some(Err(e)),
                    Err(_) => return Some(Err(LogError::Closed)),
                };
                replay.next = match page.last() {
                    Some(last) if page.len() == REPLAY_PAGE => last.sequence + 1,
                    _ => to + 1,
                };
                replay
                    .buffer
                    .extend(page.into_iter().filter(|e| self.filter.matches(e)));
            }
        }
        loop {
            let live = match self.rx.try_recv() {
                Ok(live) => Some(live),
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) => None,
            };
            let item = match live {
                Some(live) => Some(live.into()),
                // Empty: a pending lag is reported now (the writer sends nothing while one is
                // pending).
                None => match self.take_lag() {
                    Some(missed) => Some(missed),
                    None => {
                        tokio::select! {
                            live = self.rx.recv() => Some(live?.into()),
                            () = self.lag.notify.notified() => None,
                        }
                    }
                },
            };
            if let Some(item) = item.and_then(|i| self.clip(i)) {
                return Some(Ok(item));
            }
        }
    }

    /// Drops what lies before the subscriber's start (see `start`).
    fn clip(&self, item: Watched) -> Option<Watched> {
        match item {
            Watched::Event(e) if e.sequence < self.start => None,
            Watched::Missed { last, .. } if last < self.start => None,
            Watched::Missed { count, first, last } if first < self.start => {
                let skipped = self.start - first;
                Some(Watched::Missed {
                    count: count.saturating_sub(skipped),
                    first: self.start,
                    last,
                })
            }
            other => Some(other),
        }
    }

    fn take_lag(&self) -> Option<Watched> {
        let mut lag = self.lag.lag.lock().ok()?;
        if lag.count == 0 {
            return None;
        }
        let taken = std::mem::take(&mut *lag);
        Some(Watched::Missed {
            count: taken.count,
            first: taken.first,
            last: taken.last,
        })
    }
}

impl From<Live> for Watched {
    fn from(l: Live) -> Self {
        match l {
            Live::Event(e) => Watched::Event(e),
            Live::Missed(lag) => Watched::Missed {
                count: lag.count,
                first: lag.first,
                last: lag.last,
            },
        }
    }
}

/// The writer thread: appends in publish order, then fans out under the lock subscribers register
/// under (see the module docs).
struct Writer {
    log: Arc<dyn EventLog>,
    shared: Arc<Mutex<Shared>>,
    rx: mpsc::Receiver<WriterMsg>,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(WRITER_BATCH);
        while let Some(first) = self.rx.blocking_recv() {
            batch.push(first);
            while batch.len() < WRITER_BATCH {
                match self.rx.try_recv() {
                    Ok(m) => batch.push(m),
                    Err(_) => break,
                }
            }
            let mut events = Vec::new();
            let mut overlays = Vec::new();
            for msg in batch.drain(..) {
                match msg {
                    WriterMsg::Publish {
                        events: e,
                        overlays: o,
                    } => {
                        events.extend(e);
                        overlays.extend(o);
                    }
                    other => {
                        self.commit(std::mem::take(&mut events), std::mem::take(&mut overlays));
                        self.handle(other);
                    }
                }
            }
            self.commit(events, overlays);
        }
    }

    fn handle(&self, msg: WriterMsg) {
        match msg {
            WriterMsg::Direct { source, delivery } => {
                if let Ok(s) = self.shared.lock() {
                    if let Some(tx) = s.sources.get(&source) {
                        let _ = tx.send(delivery);
                    }
                }
            }
            WriterMsg::Flush(done) => {
                let _ = done.send(());
            }
            WriterMsg::Publish { .. } => {}
        }
    }

    fn commit(&self, outgoing: Vec<Outgoing>, overlays: Vec<Overlay>) {
        if outgoing.is_empty() && overlays.is_empty() {
            return;
        }
        let (mut stored, targets): (Vec<_>, Vec<_>) =
            outgoing.into_iter().map(|o| (o.event, o.targets)).unzip();
        if let Err(first) = self.log.append(&mut stored, &overlays) {
            tracing::warn!("event log append failed, retrying once: {first}");
            if let Err(e) = self.log.append(&mut stored, &overlays) {
                // Delivered live all the same (sequence 0: not kept), so no pusher waits forever for
                // an answer the disk could not hold.
                tracing::error!(
                    events = stored.len(),
                    "event log unavailable, events delivered live but NOT kept: {e}"
                );
                for e in &mut stored {
                    e.sequence = 0;
                }
            }
        }
        let Ok(mut shared) = self.shared.lock() else {
            return;
        };
        for (event, targets) in stored.into_iter().zip(targets) {
            shared.last_sequence = shared.last_sequence.max(event.sequence);
            let event = Arc::new(event);
            for viewer in shared.viewers.values() {
                if viewer.filter.matches(&event) {
                    offer(viewer, &event);
                }
            }
            for (source, client_ref) in targets {
                if let Some(tx) = shared.sources.get(&source) {
                    let _ = tx.send(SourceDelivery::Event {
                        event: event.clone(),
                        client_ref,
                    });
                }
            }
        }
    }
}

/// Hands `event` to a viewer without ever waiting: a full buffer starts (or extends) its lag, which is
/// reported before anything else it is sent.
fn offer(viewer: &Viewer, event: &Arc<pb::StudyEvent>) {
    let Ok(mut lag) = viewer.lag.lag.lock() else {
        return;
    };
    let seq = event.sequence;
    if lag.count > 0 {
        if viewer.tx.capacity() >= 2 {
            let missed = std::mem::take(&mut *lag);
            let _ = viewer.tx.try_send(Live::Missed(missed));
            let _ = viewer.tx.try_send(Live::Event(event.clone()));
        } else {
            lag.count += 1;
            lag.last = seq;
        }
        return;
    }
    match viewer.tx.try_send(Live::Event(event.clone())) {
        Ok(()) => {}
        Err(mpsc::error::TrySendError::Full(_)) => {
            *lag = Lag {
                count: 1,
                first: seq,
                last: seq,
            };
            drop(lag);
            viewer.lag.notify.notify_one();
        }
        Err(mpsc::error::TrySendError::Closed(_)) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::log::SqliteLog;

    fn event(study: &str, n: u64) -> Outgoing {
        Outgoing {
            event: pb::StudyEvent {
                study_instance_uid: study.into(),
                study_sequence: n,
                modality: "CT".into(),
                event: Some(pb::study_event::Event::Accepted(pb::InstanceAccepted {
                    frames: 1,
                    ..Default::default()
                })),
                ..Default::default()
            },
            targets: vec![],
        }
    }

    fn hub(buffer: usize) -> (tempfile::TempDir, Hub) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SqliteLog::in_data_dir(dir.path()).expect("log");
        (dir, Hub::start(Arc::new(log), buffer).expect("hub"))
    }

    async fn take(sub: &mut Subscription, n: usize) -> Vec<Watched> {
        let mut out = Vec::new();
        while out.len() < n {
            let next = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
                .await
                .expect("in time")
                .expect("open")
                .expect("log ok");
            out.push(next);
        }
        out
    }

    fn seqs(items: &[Watched]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|w| match w {
                Watched::Event(e) => Some(e.sequence),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscriber_joining_mid_stream_gets_every_event_once() {
        let (_dir, hub) = hub(64);
        for n in 1..=5 {
            hub.publish(vec![event("1.2", n)], vec![]).await;
        }
        hub.flush().await;
        let mut sub = hub.subscribe(WatchFilter::default(), Some(3));
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move {
                for n in 6..=20 {
                    hub.publish(vec![event("1.2", n)], vec![]).await;
                }
            })
        };
        let mut got = take(&mut sub, 3).await; // 3, 4, 5 replayed, then maybe more or CaughtUp
        while seqs(&got).last() != Some(&20) {
            got.extend(take(&mut sub, 1).await);
        }
        publisher.await.expect("publisher");
        assert_eq!(seqs(&got), (3..=20).collect::<Vec<_>>());
        assert_eq!(
            got.iter()
                .filter(|w| matches!(w, Watched::CaughtUp(_)))
                .count(),
            1
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_subscriber_is_told_what_it_missed_and_nobody_waits() {
        let (_dir, hub) = hub(4);
        let mut slow = hub.subscribe(WatchFilter::default(), None);
        let mut other = hub.subscribe(WatchFilter::default(), None);
        assert!(matches!(take(&mut slow, 1).await[0], Watched::CaughtUp(0)));
        assert!(matches!(take(&mut other, 1).await[0], Watched::CaughtUp(0)));
        for n in 1..=10 {
            hub.publish(vec![event("1.2", n)], vec![]).await;
            // the other subscriber keeps up
            let got = take(&mut other, 1).await;
            assert_eq!(seqs(&got), [n]);
        }
        hub.flush().await;
        let got = take(&mut slow, 5).await;
        assert_eq!(seqs(&got[..4]), [1, 2, 3, 4]);
        match got[4] {
            Watched::Missed { count, first, last } => assert_eq!((count, first, last), (6, 5, 10)),
            ref other => panic!("expected Missed, got {other:?}"),
        }
        // and the missed ones can be read back from the log
        let again = hub.log().read(5, 10, &[], 100).expect("read");
        assert_eq!(again.len(), 6);
    }

    #[test]
    fn filters_select_studies_modalities_labels_and_critical() {
        let finding = |label: &str, positive: bool| pb::StudyEvent {
            study_instance_uid: "1.2".into(),
            modality: "MR".into(),
            event: Some(pb::study_event::Event::Finding(pb::SliceFinding {
                scores: vec![pb::LabelScore {
                    label: label.into(),
                    positive,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let any = WatchFilter::default();
        assert!(any.matches(&finding("lesion", false)));
        let ct = WatchFilter {
            modalities: vec!["CT".into()],
            ..Default::default()
        };
        assert!(!ct.matches(&finding("lesion", true)));
        let other_study = WatchFilter {
            studies: vec!["1.3".into()],
            ..Default::default()
        };
        assert!(!other_study.matches(&finding("lesion", true)));
        let lesion = WatchFilter {
            labels: vec!["lesion".into()],
            ..Default::default()
        };
        assert!(lesion.matches(&finding("lesion", true)));
        assert!(!lesion.matches(&finding("lesion", false)));
        assert!(!lesion.matches(&finding("bleed", true)));
        let critical = WatchFilter {
            only_critical: true,
            ..Default::default()
        };
        assert!(!critical.matches(&finding("lesion", true)));
    }

    /// Property: whatever the publish batches, the join points, the starting sequences and the buffer
    /// sizes, every subscriber gets each event from its start exactly once and in order, or is told it
    /// missed it: delivered events and `Missed` ranges together cover its range with no gap and no
    /// overlap, and `CaughtUp` comes once, between the replay and the live events.
    mod proptests {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Publish(usize),
            Subscribe(Option<u64>),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (1usize..6).prop_map(Op::Publish),
                1 => prop::option::of(1u64..40).prop_map(Op::Subscribe),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn every_subscriber_gets_its_range_once_in_order_or_hears_it_missed(
                ops in prop::collection::vec(op(), 1..24),
                buffer in 2usize..8,
            ) {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let log = Arc::new(SqliteLog::in_data_dir(dir.path()).expect("log"));
                    let hub = Hub::start(log, buffer).expect("hub");
                    let mut subs: Vec<(u64, Subscription)> = Vec::new();
                    let mut published = 0u64;
                    for op in ops {
                        match op {
                            Op::Publish(k) => {
                                let batch = (0..k)
                                    .map(|i| event("1.2", published + 1 + i as u64))
                                    .collect();
                                hub.publish(batch, vec![]).await;
                                published += k as u64;
                            }
                            Op::Subscribe(from) => {
                                // joins anywhere: the writer may still be appending what came before
                                let start = from.unwrap_or(0);
                                subs.push((start, hub.subscribe(WatchFilter::default(), from)));
                            }
                        }
                    }
                    hub.flush().await;
                    for (start, mut sub) in subs {
                        // live-only subscribers start after what was logged when they joined
                        let mut effective = (start > 0).then_some(start);
                        let mut covered = Vec::new();
                        let mut caught_up = 0;
                        let mut live = false;
                        loop {
                            if let Some(s) = effective {
                                if live && covered.last().copied().unwrap_or(s - 1) >= published {
                                    break;
                                }
                            }
                            let next = tokio::time::timeout(std::time::Duration::from_secs(5), sub.next())
                                .await
                                .expect("in time")
                                .expect("open")
                                .expect("log");
                            match next {
                                Watched::Event(e) => {
                                    assert!(live || effective.is_some());
                                    covered.push(e.sequence);
                                }
                                Watched::Missed { count, first, last } => {
                                    assert!(live, "a miss before the replay ended");
                                    assert_eq!(count, last - first + 1);
                                    covered.extend(first..=last);
                                }
                                Watched::CaughtUp(at) => {
                                    caught_up += 1;
                                    live = true;
                                    effective.get_or_insert(at + 1);
                                }
                            }
                        }
                        let start = effective.unwrap_or(1);
                        let expected: Vec<u64> = (start.max(1)..=published).collect();
                        assert_eq!(covered, expected, "subscriber from {start}");
                        assert_eq!(caught_up, 1);
                    }
                });
            }
        }
    }
}
