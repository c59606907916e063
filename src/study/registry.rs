//! The one owner of every study's state. Every ingest path (the gRPC `Analyze` stream today, a DICOM
//! association later) reports what happens to its instances here through [`Registry`], which knows
//! nothing of transports: an instance's header arrived, its pixels decoded or not, a slice scored or
//! failed, the sender declared the study ended, the sender closed. One task owns all the state and turns
//! these into the study's events (accepted, rejected, finding, critical finding, summary), which it
//! numbers per study and publishes through the results hub: logged first, then delivered to viewers and
//! to the sources the events concern. So a study that arrives over several streams, interleaved with
//! others, is one study with one order of events; for several replicas the Study Instance UID is the
//! partition key of this state.
//!
//! What it decides:
//! - A re-sent SOP Instance UID is a duplicate: it is not decoded or scored again nor counted twice; its
//!   earlier (or pending) results are sent to the new sender, marked as re-sent.
//! - Completion: when nothing of the study is pending and the sender said so (EndOfStudy), every
//!   stream that sent to it closed, or no new instance arrived for the idle time (stability, as
//!   Orthanc's StableAge), with one timer per study, never a scan. A late instance re-opens a completed
//!   study; its next summary carries the next revision and covers the whole study.
//! - A slice over a label's critical threshold raises a critical finding at once, once per study and
//!   label; a higher score later raises it again with the next revision.
//! - Completed studies stay in memory for `retain_completed` (and at most `max_retained` of them), then
//!   are dropped; a study not in memory is rebuilt from its log when it is seen again (a late instance,
//!   a restart), so memory does not grow with the number of studies ever seen.
//! - A retained study is slim: at completion it lets go of its instances (their findings, kept only to
//!   re-send them to a duplicate, were most of a study's memory) and keeps its counts and tallies, which
//!   are all its summaries need. An instance that arrives for it, re-sent or late, first has them read
//!   back from the log, where every one of them is; so a thousand retained studies cost little memory
//!   and the rare re-send costs one read of one study.
//! - Ordering on a stream: an end-of-study or a stream close takes effect only after every instance
//!   the source sent before it has had its header read, so a summary never overtakes an instance sent
//!   before the end marker.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::Arc,
    time::Duration,
};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_util::time::{delay_queue, DelayQueue};
use tracing::Instrument;

use super::series::{self, ScoredSliceRef};
use crate::{
    catalog::Served,
    decode::InstanceMeta,
    model::{Aggregate, LabelSpec},
    proto::v1 as pb,
    results::{
        hub::{ClientRef, Hub, Outgoing, SourceDelivery, SourceId},
        log::Overlay,
    },
    telemetry::events,
};

/// What a study's summary is computed from, per model: the labels of the model and the model itself.
#[derive(Debug, Clone)]
pub struct StudyRules {
    pub labels: Vec<LabelSpec>,
    /// The labels are mutually exclusive classes (softmax): only the most probable can be positive.
    pub exclusive: bool,
    pub model: pb::ModelRef,
    /// The model's `applies_to.slices`: a study whose slice count is outside it gets a note in its
    /// summary (`outside_model_rules`). The findings are reported all the same: the count is only
    /// known as the study completes, and a late instance can still bring it in range.
    pub slices: Option<(u32, u32)>,
}

impl StudyRules {
    /// The rules of a model version.
    pub fn of(manifest: &crate::model::Manifest, info: &crate::model::ModelInfo) -> Self {
        Self {
            labels: manifest.labels.clone(),
            exclusive: manifest.exclusive(),
            model: crate::results::model_ref(info),
            slices: manifest.rules.slices(),
        }
    }

    fn positive(&self, scores: &[f32], index: usize) -> bool {
        crate::model::label_positive(&self.labels, self.exclusive, scores, index)
    }
}

/// A model version a study is pinned to: its rules, and (while the study is open) the loaded version
/// itself, which keeps it running for the study even after it was unloaded or replaced.
#[derive(Debug, Clone)]
pub struct Pin {
    pub rules: Arc<StudyRules>,
    pub served: Option<Arc<Served>>,
}

impl Pin {
    pub fn of(served: &Arc<Served>) -> Self {
        Self {
            rules: Arc::new(StudyRules::of(&served.manifest, &served.info)),
            served: Some(served.clone()),
        }
    }

    fn name(&self) -> &str {
        &self.rules.model.name
    }
}

/// Where the registry finds a model version again: a study rebuilt from the log, or re-opened after
/// its pins were released at completion, names its versions by [`pb::ModelRef`].
pub trait PinSource: Send + Sync + 'static {
    /// That version if it is still loaded, else `None`.
    fn pin(&self, model: &pb::ModelRef) -> Option<Pin>;
}

impl PinSource for crate::catalog::Catalog {
    fn pin(&self, model: &pb::ModelRef) -> Option<Pin> {
        self.ready_version(&model.name, &model.version)
            .map(|s| Pin::of(&s))
    }
}

/// Fixed rules for every model reference, with no loaded version behind them (tests, tools).
impl PinSource for StudyRules {
    fn pin(&self, _model: &pb::ModelRef) -> Option<Pin> {
        Some(Pin {
            rules: Arc::new(self.clone()),
            served: None,
        })
    }
}

/// When studies complete and how long they are kept.
#[derive(Debug, Clone, Copy)]
pub struct RegistryConfig {
    /// No new instance for this long (and nothing pending): the study is complete.
    pub idle_timeout: Duration,
    /// A completed study stays in memory this long (to recognise re-sent and late instances cheaply).
    pub retain_completed: Duration,
    /// At most this many completed studies stay in memory; the oldest go first.
    pub max_retained: usize,
}

/// An instance whose header was read.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub source: SourceId,
    pub client_ref: ClientRef,
    pub meta: Arc<InstanceMeta>,
    pub frames: u32,
    /// The model versions the catalog routes it to now; the study's pins take precedence.
    pub routed: Vec<Pin>,
}

/// What the sender of an arrived instance is to do with it.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Decode it and score it with these model versions (the study's pins).
    Decode(Vec<Pin>),
    /// Already received: its results are (or will be) sent to this sender; nothing else to do.
    Duplicate,
}

/// Which instance a report is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceKey {
    pub study: String,
    pub sop: String,
}

impl Admission {
    pub fn is_decode(&self) -> bool {
        matches!(self, Self::Decode(_))
    }
}

/// A slice that failed after its instance was accepted, in one model (`None`: in every model).
#[derive(Debug, Clone)]
pub struct SliceFailure {
    pub reason: pb::RejectReason,
    pub message: String,
    pub model: Option<pb::ModelRef>,
}

/// Counts, for tests and health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegistryStats {
    pub open: usize,
    pub retained_complete: usize,
    pub sources: usize,
    /// Instances the retained completed studies hold in memory: none once they are slim, until one of
    /// their instances is sent again.
    pub retained_instances: usize,
}

// One message per instance or slice, moved once through the channel: boxing the finding would add an
// allocation per slice for no saving.
#[allow(clippy::large_enum_variant)]
enum Command {
    Arrived(Arrival, oneshot::Sender<Admission>),
    HeaderRejected {
        source: SourceId,
        rejection: pb::InstanceRejected,
    },
    Decoded {
        key: InstanceKey,
        result: Result<(), pb::InstanceRejected>,
    },
    SliceDone {
        key: InstanceKey,
        frame: u32,
        result: Result<(pb::SliceFinding, Vec<f32>), SliceFailure>,
    },
    Overlay(Overlay),
    /// The task handling an instance went away (its stream was cut off) before finishing it.
    Abandoned {
        source: SourceId,
        key: Option<InstanceKey>,
    },
    EndOfStudy {
        source: SourceId,
        study: String,
        after: u64,
    },
    SourceClosed {
        source: SourceId,
        after: u64,
    },
    Stats(oneshot::Sender<RegistryStats>),
}

/// Handle to the registry task. Cheap to clone; never blocks (the task is fast and owns no I/O but
/// the log reads of studies it has to rebuild).
#[derive(Debug, Clone)]
pub struct Registry {
    tx: mpsc::UnboundedSender<(Command, tracing::Span)>,
    quiet: Arc<std::sync::Mutex<Option<mpsc::UnboundedReceiver<String>>>>,
}

/// A handle that does not keep the registry running (for tasks that live as long as it does).
#[derive(Debug, Clone)]
pub struct WeakRegistry {
    tx: mpsc::WeakUnboundedSender<(Command, tracing::Span)>,
}

impl WeakRegistry {
    pub fn upgrade(&self) -> Option<Registry> {
        Some(Registry {
            tx: self.tx.upgrade()?,
            quiet: Arc::default(),
        })
    }
}

impl Registry {
    /// Starts the registry: studies the log holds as open (the process stopped before they completed)
    /// are rebuilt first and complete on their idle timers.
    pub fn start(hub: Hub, pins: Arc<dyn PinSource>, config: RegistryConfig) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let (quiet_tx, quiet_rx) = mpsc::unbounded_channel();
        let task = RegistryTask {
            hub,
            pins,
            quiet: quiet_tx,
            config,
            studies: HashMap::new(),
            sources: HashMap::new(),
            timers: DelayQueue::new(),
            completed: VecDeque::new(),
            retained_complete: 0,
            emits: Vec::new(),
            reported_open: 0,
        };
        tokio::spawn(task.run(rx));
        Self {
            tx,
            quiet: Arc::new(std::sync::Mutex::new(Some(quiet_rx))),
        }
    }

    pub fn downgrade(&self) -> WeakRegistry {
        WeakRegistry {
            tx: self.tx.downgrade(),
        }
    }

    /// The studies that would complete (end of study, streams closed, idle) but still wait for
    /// answers, once per quiet spell, every instance decoded: what holds slices back (a 2.5D model's
    /// neighbour assembly) must let them go now. Taken once; later calls get `None`.
    pub fn take_quiet(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.quiet.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn send(&self, c: Command) {
        // The sender's span goes with the command, so what the registry logs about it carries the
        // stream and the study it came from (`telemetry`'s module docs). The task ends only when every
        // handle is gone.
        let _ = self.tx.send((c, tracing::Span::current()));
    }

    /// An instance's header was read: decode it, or not (a duplicate).
    pub async fn arrived(&self, arrival: Arrival) -> Admission {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Arrived(arrival, tx));
        rx.await.unwrap_or(Admission::Decode(Vec::new()))
    }

    /// As [`arrived`](Self::arrived), from a blocking thread (a decode).
    pub fn arrived_blocking(&self, arrival: Arrival) -> Admission {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Arrived(arrival, tx));
        rx.blocking_recv().unwrap_or(Admission::Decode(Vec::new()))
    }

    /// The header could not be read: the instance is rejected (in its study when it names one).
    pub fn header_rejected(&self, source: SourceId, rejection: pb::InstanceRejected) {
        self.send(Command::HeaderRejected { source, rejection });
    }

    /// The pixels of an arrived instance decoded (its frames go to scoring), or not.
    pub fn decoded(&self, key: InstanceKey, result: Result<(), pb::InstanceRejected>) {
        self.send(Command::Decoded { key, result });
    }

    pub fn slice_done(
        &self,
        key: InstanceKey,
        frame: u32,
        result: Result<(pb::SliceFinding, Vec<f32>), SliceFailure>,
    ) {
        self.send(Command::SliceDone { key, frame, result });
    }

    pub fn overlay(&self, overlay: Overlay) {
        self.send(Command::Overlay(overlay));
    }

    /// The task of an instance ended before reporting everything (`key`: after its header arrived).
    pub fn abandoned(&self, source: SourceId, key: Option<InstanceKey>) {
        self.send(Command::Abandoned { source, key });
    }

    /// The source declared `study` ended, after sending `after` instances.
    pub fn end_of_study(&self, source: SourceId, study: String, after: u64) {
        self.send(Command::EndOfStudy {
            source,
            study,
            after,
        });
    }

    /// The source will send nothing more; it sent `after` instances.
    pub fn source_closed(&self, source: SourceId, after: u64) {
        self.send(Command::SourceClosed { source, after });
    }

    pub async fn stats(&self) -> RegistryStats {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Stats(tx));
        rx.await.unwrap_or_default()
    }
}

/// What one command produced, in order: logged events and deliveries to single sources. Mostly
/// `Log`, moved into the publish batch as it is: boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Emit {
    Log(Outgoing),
    Overlay(Overlay),
    Direct(SourceId, SourceDelivery),
}

#[derive(Debug)]
enum Timer {
    Idle,
    Evict,
}

/// One instance of a study, from its header on.
#[derive(Debug)]
struct Instance {
    frames: u32,
    /// The models scoring it, by name: every frame is answered once per model.
    models: Vec<pb::ModelRef>,
    /// (frame, index in `models`) answered so far.
    answered: HashSet<(u32, usize)>,
    slice: pb::SliceRef,
    accepted: bool,
    /// Results per frame, kept to re-send them to a duplicate.
    findings: Vec<Arc<pb::SliceFinding>>,
    failures: Vec<pb::InstanceRejected>,
    /// Who sent it and by what name: the first is its sender, others sent it again meanwhile.
    waiters: Vec<(SourceId, ClientRef)>,
}

impl Instance {
    fn new(frames: u32, models: Vec<pb::ModelRef>, slice: pb::SliceRef) -> Self {
        Self {
            frames,
            models,
            answered: HashSet::new(),
            slice,
            accepted: false,
            findings: Vec::new(),
            failures: Vec::new(),
            waiters: Vec::new(),
        }
    }

    /// Answers expected: one per frame and model.
    fn expected(&self) -> u32 {
        self.frames
            .saturating_mul(u32::try_from(self.models.len().max(1)).unwrap_or(u32::MAX))
    }

    fn resolved(&self) -> bool {
        self.answered.len() as u64 >= u64::from(self.expected())
    }

    /// Which of its models `model` is (the first when it names none or one not listed).
    fn model_index(&self, model: Option<&pb::ModelRef>) -> usize {
        model
            .and_then(|m| self.models.iter().position(|x| x.name == m.name))
            .unwrap_or(0)
    }

    /// Records an answer; false when that frame was already answered for that model.
    fn answer(&mut self, frame: u32, model: usize) -> bool {
        frame < self.frames && self.answered.insert((frame, model))
    }

    /// The (frame, model index) pairs not answered yet.
    fn unanswered(&self) -> Vec<(u32, usize)> {
        let models = self.models.len().max(1);
        (0..self.frames)
            .flat_map(|f| (0..models).map(move |m| (f, m)))
            .filter(|k| !self.answered.contains(k))
            .collect()
    }

    /// Folds one logged event into the instances it concerns, as they were when it was logged (a
    /// study rebuilt from its log, or a slim one whose instances are read back).
    fn replay(instances: &mut HashMap<String, Instance>, event: &pb::study_event::Event) {
        use pb::study_event::Event as E;
        match event {
            E::Accepted(a) if !a.duplicate => {
                let slice = a.slice.clone().unwrap_or_default();
                let mut inst = Instance::new(a.frames, a.models.clone(), slice);
                inst.accepted = true;
                instances.insert(inst.slice.sop_instance_uid.clone(), inst);
            }
            E::Rejected(r) => {
                if let (Some(frame), Some(i)) = (r.frame, instances.get_mut(&r.sop_instance_uid)) {
                    let m = i.model_index(r.model.as_ref());
                    i.answer(frame, m);
                    i.failures.push(r.clone());
                }
            }
            E::Finding(f) => {
                let (sop, frame) = f
                    .slice
                    .as_ref()
                    .map_or(("", 0), |s| (s.sop_instance_uid.as_str(), s.frame));
                if let Some(i) = instances.get_mut(sop) {
                    let m = i.model_index(f.model.as_ref());
                    i.answer(frame, m);
                    i.findings.push(Arc::new(f.clone()));
                }
            }
            _ => {}
        }
    }
}

/// What one model made of a study: its pin, and its scores folded as they come.
#[derive(Debug)]
struct Tally {
    pin: Pin,
    scored: u32,
    series: HashMap<String, Vec<ScoredSliceRef>>,
    best: Vec<Option<(f32, pb::SliceRef)>>,
    positives: Vec<u32>,
    critical: Vec<Option<(f32, u32)>>,
}

impl Tally {
    fn new(pin: Pin) -> Self {
        let labels = pin.rules.labels.len();
        Self {
            pin,
            scored: 0,
            series: HashMap::new(),
            best: vec![None; labels],
            positives: vec![0; labels],
            critical: vec![None; labels],
        }
    }

    fn record_score(&mut self, slice: &pb::SliceRef, scores: &[f32], arrival: u64) {
        let rules = self.pin.rules.clone();
        self.scored += 1;
        let positive: Vec<bool> = (0..rules.labels.len())
            .map(|i| rules.positive(scores, i))
            .collect();
        for (i, &is_positive) in positive.iter().enumerate() {
            let Some(&score) = scores.get(i) else {
                continue;
            };
            if is_positive {
                self.positives[i] += 1;
            }
            let better = match &self.best[i] {
                None => true,
                Some((best, _)) => score > *best,
            };
            if better {
                self.best[i] = Some((score, slice.clone()));
            }
        }
        self.series
            .entry(slice.series_instance_uid.clone())
            .or_default()
            .push(ScoredSliceRef {
                slice: slice.clone(),
                scores: scores.to_vec(),
                positive,
                arrival,
            });
    }

    fn label_summaries(&self) -> Vec<pb::LabelSummary> {
        let rules = &self.pin.rules;
        let mut ordered: Vec<Vec<ScoredSliceRef>> = Vec::new();
        if rules
            .labels
            .iter()
            .any(|l| l.aggregate == Aggregate::Groups)
        {
            let mut uids: Vec<&String> = self.series.keys().collect();
            uids.sort();
            for uid in uids {
                let mut slices = self.series[uid].clone();
                series::order(&mut slices);
                ordered.push(slices);
            }
        }
        rules
            .labels
            .iter()
            .enumerate()
            .map(|(i, label)| {
                let (max_score, top_slice) = match &self.best[i] {
                    Some((score, slice)) => (*score, Some(slice.clone())),
                    None => (0.0, None),
                };
                let mut groups = Vec::new();
                if label.aggregate == Aggregate::Groups {
                    for slices in &ordered {
                        for run in series::runs(slices, i) {
                            groups.push(pb::SliceGroup {
                                series_instance_uid: slices[run.first]
                                    .slice
                                    .series_instance_uid
                                    .clone(),
                                first: Some(slices[run.first].slice.clone()),
                                last: Some(slices[run.last].slice.clone()),
                                peak: Some(slices[run.peak].slice.clone()),
                                max_score: run.max_score,
                                slices: run.slices,
                                extent_mm: run.extent_mm,
                            });
                        }
                    }
                    groups.sort_by(|a, b| b.max_score.total_cmp(&a.max_score));
                }
                pb::LabelSummary {
                    label: label.name.clone(),
                    max_score,
                    top_slice,
                    // a slice was positive (for exclusive classes the maximum may sit on a slice
                    // where another class won)
                    positive: self.positives[i] > 0,
                    positive_slices: self.positives[i],
                    groups,
                    critical_threshold: label.critical,
                    critical: self.critical[i].is_some(),
                    model: rules.model.name.clone(),
                }
            })
            .collect()
    }
}

#[derive(Debug)]
struct Study {
    uid: String,
    modality: String,
    seq: u64,
    revision: u32,
    complete: bool,
    /// Something happened since the last summary.
    dirty: bool,
    first_unix_us: i64,
    last_scored_unix_us: Option<i64>,
    accepted: u32,
    rejected: u32,
    failed: u32,
    /// Instances decoding plus answers (frame × model) waiting for their score.
    pending: u32,
    /// Instances whose header arrived and whose pixels are not decoded yet.
    decoding: u32,
    /// The study was reported quiet (see [`Registry::take_quiet`]) since its last activity.
    quiet_sent: bool,
    end_requested: bool,
    idle_due: bool,
    open_sources: HashSet<SourceId>,
    closed_since_summary: bool,
    /// Sources that sent to it since its last summary: study-level events go to them.
    listeners: HashSet<SourceId>,
    /// Sources that only re-sent instances of the completed study: they get its latest summary again
    /// when they close (no new revision is made for them).
    resummarise: HashSet<SourceId>,
    last_reason: pb::CompletionReason,
    instances: HashMap<String, Instance>,
    /// `Some(slices)`: the study completed and let go of its `instances` (see [`Study::slim`]);
    /// `slices` is what they counted for the summary's `outside_model_rules`.
    slim: Option<u32>,
    /// One per model that scored (or is scoring) the study, in the order they were first routed.
    tallies: Vec<Tally>,
    arrivals: u64,
    timer: Option<delay_queue::Key>,
}

impl Study {
    fn new(uid: String) -> Self {
        Self {
            uid,
            modality: String::new(),
            seq: 0,
            revision: 0,
            complete: false,
            dirty: false,
            first_unix_us: crate::results::log::now_unix_us(),
            last_scored_unix_us: None,
            accepted: 0,
            rejected: 0,
            failed: 0,
            pending: 0,
            decoding: 0,
            quiet_sent: false,
            end_requested: false,
            idle_due: false,
            open_sources: HashSet::new(),
            closed_since_summary: false,
            listeners: HashSet::new(),
            resummarise: HashSet::new(),
            last_reason: pb::CompletionReason::Unspecified,
            instances: HashMap::new(),
            slim: None,
            tallies: Vec::new(),
            arrivals: 0,
            timer: None,
        }
    }

    fn tally(&self, name: &str) -> Option<usize> {
        self.tallies.iter().position(|t| t.pin.name() == name)
    }

    /// The tally of `model`, made from `pins` when the study has none yet (`None`: the version is
    /// unknown to this process: its findings stay in the log but are not folded into summaries).
    fn tally_for(&mut self, model: &pb::ModelRef, pins: &dyn PinSource) -> Option<usize> {
        if let Some(i) = self.tally(&model.name) {
            return Some(i);
        }
        let mut pin = pins.pin(model)?;
        // a rebuilt study holds no version until an instance needs one (see `pin_routes`)
        pin.served = None;
        self.tallies.push(Tally::new(pin));
        Some(self.tallies.len() - 1)
    }

    /// The versions an instance of this study is scored with: for each model it is routed to, the
    /// version the study is pinned to (resolved again if it was released), else the routed version,
    /// which becomes the study's pin for that model.
    fn pin_routes(&mut self, routed: Vec<Pin>, pins: &dyn PinSource) -> Vec<Pin> {
        let mut out = Vec::with_capacity(routed.len());
        for route in routed {
            match self.tally(route.name()) {
                Some(i) => {
                    let tally = &mut self.tallies[i];
                    if tally.pin.served.is_none() {
                        match pins.pin(&tally.pin.rules.model) {
                            Some(p) if p.served.is_some() => tally.pin.served = p.served,
                            _ => {
                                tracing::info!(
                                    model = %route.rules.model.name,
                                    pinned = %tally.pin.rules.model.version,
                                    now = %route.rules.model.version,
                                    "the version a study was pinned to is no longer loaded: \
                                     it goes on with the active version"
                                );
                                if same_labels(&tally.pin.rules, &route.rules) {
                                    tally.pin = route.clone();
                                } else {
                                    // other labels: a new tally, so no summary mixes two label sets
                                    self.tallies.push(Tally::new(route.clone()));
                                    out.push(route);
                                    continue;
                                }
                            }
                        }
                    }
                    out.push(self.tallies[i].pin.clone());
                }
                None => {
                    self.tallies.push(Tally::new(route.clone()));
                    out.push(route);
                }
            }
        }
        out
    }

    /// Lets go of the loaded versions (a completed study): an unloaded version can stop.
    fn release_pins(&mut self) {
        for t in &mut self.tallies {
            t.pin.served = None;
        }
    }

    /// Rebuilds a study from its log (after eviction or a restart). Frames accepted but never scored
    /// were lost with the process that held them: they count as failed.
    fn from_log(uid: String, events: &[pb::StudyEvent], pins: &dyn PinSource) -> Self {
        use pb::study_event::Event as E;
        let mut s = Study::new(uid);
        if let Some(first) = events.first() {
            s.first_unix_us = first.logged_unix_us;
        }
        for e in events {
            s.seq = s.seq.max(e.study_sequence);
            if s.modality.is_empty() {
                s.modality.clone_from(&e.modality);
            }
            s.complete = false;
            s.dirty = true;
            if let Some(event) = &e.event {
                Instance::replay(&mut s.instances, event);
            }
            match &e.event {
                Some(E::Accepted(a)) if !a.duplicate => {
                    s.accepted += 1;
                    for m in &a.models {
                        s.tally_for(m, pins);
                    }
                }
                Some(E::Rejected(r)) => match r.frame {
                    Some(_) => s.failed += 1,
                    None => s.rejected += 1,
                },
                Some(E::Finding(f)) => {
                    let scores: Vec<f32> = f.scores.iter().map(|l| l.score).collect();
                    let slice = f.slice.clone().unwrap_or_default();
                    s.last_scored_unix_us = Some(e.logged_unix_us);
                    s.arrivals += 1;
                    let model = f.model.clone().unwrap_or_default();
                    if let Some(t) = s.tally_for(&model, pins) {
                        let arrival = s.arrivals;
                        s.tallies[t].record_score(&slice, &scores, arrival);
                    }
                }
                Some(E::Critical(c)) => {
                    let model = c.model.clone().unwrap_or_default();
                    if let Some(t) = s.tally_for(&model, pins) {
                        let tally = &mut s.tallies[t];
                        if let Some(i) = tally
                            .pin
                            .rules
                            .labels
                            .iter()
                            .position(|l| l.name == c.label)
                        {
                            tally.critical[i] = Some((c.score, c.revision));
                        }
                    }
                }
                Some(E::Summary(sum)) => {
                    s.revision = sum.revision;
                    s.last_reason = pb::CompletionReason::try_from(sum.reason)
                        .unwrap_or(pb::CompletionReason::Unspecified);
                    s.complete = true;
                    s.dirty = false;
                }
                _ => {}
            }
        }
        for i in s.instances.values_mut() {
            let lost = i.unanswered();
            s.failed += lost.len() as u32;
            i.answered.extend(lost);
        }
        s
    }

    fn event(&mut self, modality: &str, event: pb::study_event::Event) -> pb::StudyEvent {
        self.seq += 1;
        pb::StudyEvent {
            sequence: 0,
            study_instance_uid: self.uid.clone(),
            study_sequence: self.seq,
            logged_unix_us: 0,
            modality: if modality.is_empty() {
                self.modality.clone()
            } else {
                modality.to_string()
            },
            event: Some(event),
        }
    }

    fn summary(&self, reason: pb::CompletionReason) -> pb::StudySummary {
        let labels = self
            .tallies
            .iter()
            .flat_map(|t| t.label_summaries())
            .collect();
        let models: Vec<pb::ModelRef> = self
            .tallies
            .iter()
            .map(|t| t.pin.rules.model.clone())
            .collect();
        let series: HashSet<&String> = self.tallies.iter().flat_map(|t| t.series.keys()).collect();
        let end = self
            .last_scored_unix_us
            .unwrap_or_else(crate::results::log::now_unix_us);
        pb::StudySummary {
            study_instance_uid: self.uid.clone(),
            model: models.first().cloned(),
            labels,
            // a slice scored by two models is one slice
            slices_scored: self.tallies.iter().map(|t| t.scored).max().unwrap_or(0),
            instances_accepted: self.accepted,
            instances_rejected: self.rejected,
            slices_failed: self.failed,
            wall_time_ms: (end - self.first_unix_us).max(0) as f64 / 1e3,
            reason: reason as i32,
            revision: self.revision,
            modality: self.modality.clone(),
            series: series.len() as u32,
            outside_model_rules: self.outside_model_rules(),
            models,
        }
    }

    /// The summary's note on the models' study-level rules: empty when the study fits them. The
    /// slices are those of the accepted instances (every frame), scored or not.
    fn outside_model_rules(&self) -> String {
        let slices = self.slim.unwrap_or_else(|| self.accepted_slices());
        self.tallies
            .iter()
            .filter_map(|t| {
                let rules = &t.pin.rules;
                let range = rules.slices?;
                let model = format!("{} {}", rules.model.name, rules.model.version);
                crate::model::rules::slice_note(&model, range, slices)
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The slices of the accepted instances (every frame), scored or not.
    fn accepted_slices(&self) -> u32 {
        self.instances
            .values()
            .filter(|i| i.accepted)
            .fold(0u32, |n, i| n.saturating_add(i.frames))
    }

    /// Lets go of the instances of a completed study: what it keeps (counts, tallies) makes its
    /// summaries; what it drops (each instance's findings and failures, kept to re-send them to a
    /// duplicate) is in the log, and [`RegistryTask::unslim`] reads it back when an instance arrives
    /// again. Only when every instance is answered and no sender waits on one: those are the
    /// instances the log holds in full.
    fn slim(&mut self) {
        if self.slim.is_some() {
            return;
        }
        let settled = self
            .instances
            .values()
            .all(|i| i.accepted && i.resolved() && i.waiters.is_empty());
        if settled {
            self.slim = Some(self.accepted_slices());
            self.instances = HashMap::new();
        }
    }
}

/// Per source: how many instances it has had header-checked, and what waits for that count.
#[derive(Debug, Default)]
struct Source {
    seen: u64,
    ends: Vec<(u64, String)>,
    close: Option<u64>,
    studies: HashSet<String>,
}

struct RegistryTask {
    hub: Hub,
    pins: Arc<dyn PinSource>,
    quiet: mpsc::UnboundedSender<String>,
    config: RegistryConfig,
    studies: HashMap<String, Study>,
    sources: HashMap<SourceId, Source>,
    timers: DelayQueue<(String, Timer)>,
    /// Completed studies in completion order, with the revision they completed at.
    completed: VecDeque<(String, u32)>,
    retained_complete: usize,
    emits: Vec<Emit>,
    /// The open studies last added to `radstream_studies_open` (this registry's share of it).
    reported_open: i64,
}

impl RegistryTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<(Command, tracing::Span)>) {
        self.recover().await;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some((cmd, sender)) => {
                        let span = command_span(&cmd, sender);
                        self.handle(cmd).instrument(span).await
                    }
                    None => break,
                },
                Some(expired) = self.timers.next(), if !self.timers.is_empty() => {
                    let (study, timer) = expired.into_inner();
                    tracing::info_span!("study", study_instance_uid = %study)
                        .in_scope(|| self.expire(study, timer));
                }
            }
            self.flush().await;
            self.report_open();
        }
        self.flush().await;
        // a registry that stopped holds no study open
        events::StudiesOpenChanged {
            delta: -self.reported_open,
        }
        .emit();
    }

    fn report_open(&mut self) {
        let open = self.studies.len().saturating_sub(self.retained_complete) as i64;
        if open != self.reported_open {
            events::StudiesOpenChanged {
                delta: open - self.reported_open,
            }
            .emit();
            self.reported_open = open;
        }
    }

    /// Sends what the last command produced, in order: runs of logged events as one publish.
    async fn flush(&mut self) {
        let mut events = Vec::new();
        let mut overlays = Vec::new();
        for emit in std::mem::take(&mut self.emits) {
            match emit {
                Emit::Log(o) => events.push(o),
                Emit::Overlay(o) => overlays.push(o),
                Emit::Direct(source, delivery) => {
                    self.hub
                        .publish(std::mem::take(&mut events), std::mem::take(&mut overlays))
                        .await;
                    self.hub.direct(source, delivery).await;
                }
            }
        }
        self.hub.publish(events, overlays).await;
    }

    async fn recover(&mut self) {
        let log = self.hub.log().clone();
        let open = tokio::task::spawn_blocking(move || log.open_studies()).await;
        match open {
            Ok(Ok(open)) => {
                if !open.is_empty() {
                    tracing::info!(
                        studies = open.len(),
                        "resuming studies that were open when the service stopped"
                    );
                }
                for uid in open {
                    self.ensure(&uid).await;
                }
            }
            Ok(Err(e)) => tracing::error!("cannot list the open studies of the event log: {e}"),
            Err(e) => tracing::error!("cannot list the open studies of the event log: {e}"),
        }
    }

    /// The events of `uid` in the log, with everything published for it so far (none when the log
    /// cannot be read: that is logged).
    async fn read_log(&mut self, uid: &str) -> Vec<pb::StudyEvent> {
        // What was published for it must be in the log before it is read back.
        self.flush().await;
        self.hub.flush().await;
        let log = self.hub.log().clone();
        let key = uid.to_string();
        let events = tokio::task::spawn_blocking(move || log.read_study(&key)).await;
        match events {
            Ok(Ok(events)) => events,
            Ok(Err(e)) => {
                tracing::error!("cannot read a study back from the event log: {e}");
                Vec::new()
            }
            Err(e) => {
                tracing::error!("cannot read a study back from the event log: {e}");
                Vec::new()
            }
        }
    }

    /// Makes sure `uid` is in memory: rebuilt from the log when it has events there, else new.
    async fn ensure(&mut self, uid: &str) {
        if self.studies.contains_key(uid) {
            return;
        }
        let events = self.read_log(uid).await;
        let mut study = if events.is_empty() {
            Study::new(uid.to_string())
        } else {
            Study::from_log(uid.to_string(), &events, self.pins.as_ref())
        };
        if study.complete {
            self.retained_complete += 1;
            self.completed.push_back((uid.to_string(), study.revision));
            study.timer = Some(self.timers.insert(
                (uid.to_string(), Timer::Evict),
                self.config.retain_completed,
            ));
        } else if study.dirty {
            study.timer = Some(
                self.timers
                    .insert((uid.to_string(), Timer::Idle), self.config.idle_timeout),
            );
        }
        self.studies.insert(uid.to_string(), study);
        self.enforce_retention();
    }

    /// Gives a slim study (see [`Study::slim`]) its instances back, read from its log: an instance
    /// of it arrived, re-sent (its findings go to the new sender) or late (the study re-opens, and
    /// later re-sends of its earlier instances must be recognised). Everything else about the study
    /// (counts, tallies, sources, timers) is as it was in memory.
    async fn unslim(&mut self, uid: &str) {
        if self.studies.get(uid).is_none_or(|s| s.slim.is_none()) {
            return;
        }
        let events = self.read_log(uid).await;
        let Some(study) = self.studies.get_mut(uid) else {
            return;
        };
        let mut instances = HashMap::new();
        for event in events.iter().filter_map(|e| e.event.as_ref()) {
            Instance::replay(&mut instances, event);
        }
        for i in instances.values_mut() {
            // a slim study had every frame answered (its counts say so already)
            let lost = i.unanswered();
            i.answered.extend(lost);
        }
        study.instances = instances;
        study.slim = None;
    }

    fn source(&mut self, id: SourceId) -> &mut Source {
        self.sources.entry(id).or_default()
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Arrived(arrival, reply) => {
                let source = arrival.source;
                let admission = self.arrived(arrival).await;
                let _ = reply.send(admission);
                self.seen(source).await;
            }
            Command::HeaderRejected { source, rejection } => {
                self.header_rejected(source, rejection).await;
                self.seen(source).await;
            }
            Command::Decoded { key, result } => self.decoded(key, result),
            Command::SliceDone { key, frame, result } => self.slice_done(key, frame, result),
            Command::Overlay(o) => self.emits.push(Emit::Overlay(o)),
            Command::Abandoned { source, key } => match key {
                None => self.seen(source).await,
                Some(key) => self.abandoned(key),
            },
            Command::EndOfStudy {
                source,
                study,
                after,
            } => {
                self.source(source).ends.push((after, study));
                self.apply_barriers(source).await;
            }
            Command::SourceClosed { source, after } => {
                self.source(source).close = Some(after);
                self.apply_barriers(source).await;
            }
            Command::Stats(reply) => {
                let _ = reply.send(RegistryStats {
                    open: self.studies.len().saturating_sub(self.retained_complete),
                    retained_complete: self.retained_complete,
                    sources: self.sources.len(),
                    retained_instances: self
                        .studies
                        .values()
                        .filter(|s| s.complete)
                        .map(|s| s.instances.len())
                        .sum(),
                });
            }
        }
    }

    async fn seen(&mut self, source: SourceId) {
        self.source(source).seen += 1;
        self.apply_barriers(source).await;
    }

    /// Applies the end markers and the close of `source` whose instances have all been seen.
    async fn apply_barriers(&mut self, source: SourceId) {
        let Some(s) = self.sources.get_mut(&source) else {
            return;
        };
        let seen = s.seen;
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut s.ends)
            .into_iter()
            .partition(|(after, _)| *after <= seen);
        s.ends = waiting;
        let close = s.close.is_some_and(|after| after <= seen);
        for (_, study) in due {
            self.ensure(&study).await;
            let Some(st) = self.studies.get_mut(&study) else {
                continue;
            };
            if st.complete && !st.dirty {
                // Nothing new since its summary (another stream ended it first): that summary again,
                // to this sender only, not a new revision.
                st.resummarise.remove(&source);
                let summary = st.summary(pb::CompletionReason::EndOfStudy);
                self.emits.push(Emit::Direct(
                    source,
                    direct(pb::analyze_response::Event::Summary(summary)),
                ));
                continue;
            }
            st.end_requested = true;
            st.dirty = true;
            st.listeners.insert(source);
            self.maybe_complete(&study);
        }
        if close {
            let Some(s) = self.sources.remove(&source) else {
                return;
            };
            for study in s.studies {
                if let Some(st) = self.studies.get_mut(&study) {
                    if st.open_sources.remove(&source) {
                        st.closed_since_summary = true;
                    }
                    if st.resummarise.remove(&source) {
                        if st.complete && !st.dirty {
                            let summary = st.summary(st.last_reason);
                            self.emits.push(Emit::Direct(
                                source,
                                direct(pb::analyze_response::Event::Summary(summary)),
                            ));
                        } else {
                            // re-opened meanwhile: the next revision reaches it
                            st.listeners.insert(source);
                        }
                    }
                }
                self.maybe_complete(&study);
            }
        }
    }

    /// A source sent (or sent again) an instance of `study`: the study is active and open again.
    fn touch(&mut self, study: &str, source: SourceId) {
        self.source(source).studies.insert(study.to_string());
        let Some(st) = self.studies.get_mut(study) else {
            return;
        };
        st.dirty = true;
        st.listeners.insert(source);
        st.open_sources.insert(source);
        if st.complete {
            st.complete = false;
            self.retained_complete = self.retained_complete.saturating_sub(1);
        }
        st.idle_due = false;
        st.quiet_sent = false;
        let key = (study.to_string(), Timer::Idle);
        match st.timer.take() {
            Some(k) => {
                // the key may be of an eviction timer: replace the whole entry
                let _ = self.timers.try_remove(&k);
                st.timer = Some(self.timers.insert(key, self.config.idle_timeout));
            }
            None => st.timer = Some(self.timers.insert(key, self.config.idle_timeout)),
        }
    }

    async fn arrived(&mut self, a: Arrival) -> Admission {
        let meta = &a.meta;
        let uid = meta.study_instance_uid.clone();
        self.ensure(&uid).await;
        self.unslim(&uid).await;
        let Some(study) = self.studies.get_mut(&uid) else {
            return Admission::Decode(a.routed);
        };
        if let Some(inst) = study.instances.get_mut(&meta.sop_instance_uid) {
            // A duplicate: what is known is re-sent now, the rest as it comes; its sender hears the
            // study's summary too (the next one, or the latest again when it closes).
            if study.complete && !study.dirty {
                study.resummarise.insert(a.source);
            } else {
                study.listeners.insert(a.source);
            }
            self.sources
                .entry(a.source)
                .or_default()
                .studies
                .insert(uid.clone());
            let client_ref = a.client_ref.clone();
            if inst.accepted {
                self.emits.push(Emit::Direct(
                    a.source,
                    direct(pb::analyze_response::Event::Accepted(
                        pb::InstanceAccepted {
                            client_ref: client_ref.to_string(),
                            slice: Some(inst.slice.clone()),
                            frames: inst.frames,
                            duplicate: true,
                            models: inst.models.clone(),
                        },
                    )),
                ));
                for f in &inst.findings {
                    let mut f = (**f).clone();
                    f.client_ref = client_ref.to_string();
                    f.resent = true;
                    self.emits.push(Emit::Direct(
                        a.source,
                        direct(pb::analyze_response::Event::Finding(f)),
                    ));
                }
                for r in &inst.failures {
                    let mut r = r.clone();
                    r.client_ref = client_ref.to_string();
                    self.emits.push(Emit::Direct(
                        a.source,
                        direct(pb::analyze_response::Event::Rejected(r)),
                    ));
                }
            }
            if inst.accepted && inst.resolved() {
                self.emits
                    .push(Emit::Direct(a.source, SourceDelivery::InstanceDone));
            } else {
                inst.waiters.push((a.source, client_ref));
            }
            return Admission::Duplicate;
        }
        let slice = crate::results::slice_ref(&crate::results::slice_id(meta, 0));
        if study.modality.is_empty() {
            study.modality = slice.modality.clone();
        }
        study.pending += 1;
        study.decoding += 1;
        let pins = study.pin_routes(a.routed, self.pins.as_ref());
        let models = pins.iter().map(|p| p.rules.model.clone()).collect();
        let mut inst = Instance::new(a.frames, models, slice);
        inst.waiters.push((a.source, a.client_ref));
        study.instances.insert(meta.sop_instance_uid.clone(), inst);
        self.touch(&uid, a.source);
        Admission::Decode(pins)
    }

    async fn header_rejected(&mut self, source: SourceId, mut r: pb::InstanceRejected) {
        events::InstanceRejected {
            sop_instance_uid: &r.sop_instance_uid,
            reason: r.reason,
            message: &r.message,
        }
        .emit();
        if r.study_instance_uid.is_empty() {
            self.emits.push(Emit::Direct(
                source,
                direct(pb::analyze_response::Event::Rejected(r)),
            ));
        } else {
            let uid = r.study_instance_uid.clone();
            self.ensure(&uid).await;
            self.touch(&uid, source);
            if let Some(study) = self.studies.get_mut(&uid) {
                study.rejected += 1;
                let client_ref = ClientRef::new(std::mem::take(&mut r.client_ref));
                let event = study.event("", pb::study_event::Event::Rejected(r));
                self.emits.push(Emit::Log(Outgoing {
                    event,
                    targets: vec![(source, Some(client_ref))],
                }));
            }
            self.maybe_complete(&uid);
        }
        self.emits
            .push(Emit::Direct(source, SourceDelivery::InstanceDone));
    }

    /// Sends an instance-level event: logged for its sender, directly (re-sent) to later senders.
    fn instance_event(
        emits: &mut Vec<Emit>,
        study: &mut Study,
        waiters: &[(SourceId, ClientRef)],
        modality: &str,
        event: pb::study_event::Event,
    ) {
        use pb::analyze_response::Event as R;
        use pb::study_event::Event as E;
        for (source, client_ref) in waiters.iter().skip(1) {
            let direct = match &event {
                E::Accepted(a) => R::Accepted(pb::InstanceAccepted {
                    client_ref: client_ref.to_string(),
                    duplicate: true,
                    ..a.clone()
                }),
                E::Finding(f) => R::Finding(pb::SliceFinding {
                    client_ref: client_ref.to_string(),
                    resent: true,
                    ..f.clone()
                }),
                E::Rejected(r) => R::Rejected(pb::InstanceRejected {
                    client_ref: client_ref.to_string(),
                    ..r.clone()
                }),
                _ => continue,
            };
            emits.push(Emit::Direct(*source, self::direct(direct)));
        }
        let event = study.event(modality, event);
        let targets = waiters
            .first()
            .map(|(s, r)| vec![(*s, Some(r.clone()))])
            .unwrap_or_default();
        emits.push(Emit::Log(Outgoing { event, targets }));
    }

    fn decoded(&mut self, key: InstanceKey, result: Result<(), pb::InstanceRejected>) {
        let Some(study) = self.studies.get_mut(&key.study) else {
            return;
        };
        let Some(inst) = study.instances.get_mut(&key.sop) else {
            return;
        };
        let waiters = inst.waiters.clone();
        if !inst.accepted {
            study.decoding = study.decoding.saturating_sub(1);
        }
        match result {
            Ok(()) => {
                inst.accepted = true;
                events::InstanceAccepted {
                    sop_instance_uid: &key.sop,
                }
                .emit();
                // Logged without a client_ref: that is each sender's own name for the instance.
                let accepted = pb::InstanceAccepted {
                    client_ref: String::new(),
                    slice: Some(inst.slice.clone()),
                    frames: inst.frames,
                    duplicate: false,
                    models: inst.models.clone(),
                };
                study.accepted += 1;
                study.pending = study
                    .pending
                    .saturating_sub(1)
                    .saturating_add(inst.expected());
                let modality = inst.slice.modality.clone();
                Self::instance_event(
                    &mut self.emits,
                    study,
                    &waiters,
                    &modality,
                    pb::study_event::Event::Accepted(accepted),
                );
                if inst_done(study, &key.sop) {
                    self.resolve(&key);
                }
            }
            Err(rejection) => {
                events::InstanceRejected {
                    sop_instance_uid: &key.sop,
                    reason: rejection.reason,
                    message: &rejection.message,
                }
                .emit();
                let modality = inst.slice.modality.clone();
                study.instances.remove(&key.sop);
                study.pending = study.pending.saturating_sub(1);
                study.rejected += 1;
                Self::instance_event(
                    &mut self.emits,
                    study,
                    &waiters,
                    &modality,
                    pb::study_event::Event::Rejected(rejection),
                );
                for (source, _) in waiters {
                    self.emits
                        .push(Emit::Direct(source, SourceDelivery::InstanceDone));
                }
            }
        }
        self.maybe_complete(&key.study);
    }

    fn slice_done(
        &mut self,
        key: InstanceKey,
        frame: u32,
        result: Result<(pb::SliceFinding, Vec<f32>), SliceFailure>,
    ) {
        let Some(study) = self.studies.get_mut(&key.study) else {
            return;
        };
        let Some(inst) = study.instances.get_mut(&key.sop) else {
            return;
        };
        let model = match &result {
            Ok((finding, _)) => finding.model.clone(),
            Err(failure) => failure.model.clone(),
        };
        let index = inst.model_index(model.as_ref());
        if !inst.answer(frame, index) {
            return;
        }
        let waiters = inst.waiters.clone();
        let slice = inst.slice.clone();
        let instance_model = inst.models.get(index).cloned();
        study.pending = study.pending.saturating_sub(1);
        match result {
            Ok((finding, scores)) => {
                events::SliceScored {
                    model: finding.model.as_ref(),
                    timings: finding.timings.as_ref(),
                }
                .emit();
                let finding_slice = finding.slice.clone().unwrap_or(slice);
                let received = finding
                    .timings
                    .as_ref()
                    .map(|t| t.received_unix_us)
                    .unwrap_or_default();
                if let Some(i) = study.instances.get_mut(&key.sop) {
                    i.findings.push(Arc::new(finding.clone()));
                }
                study.arrivals += 1;
                study.last_scored_unix_us = Some(crate::results::log::now_unix_us());
                let tally = model
                    .as_ref()
                    .and_then(|m| study.tally(&m.name))
                    .or_else(|| (study.tallies.len() == 1).then_some(0));
                if let Some(t) = tally {
                    let arrival = study.arrivals;
                    study.tallies[t].record_score(&finding_slice, &scores, arrival);
                }
                let peaks: Vec<Option<pb::Location>> =
                    finding.scores.iter().map(|s| s.peak).collect();
                Self::instance_event(
                    &mut self.emits,
                    study,
                    &waiters,
                    &finding_slice.modality,
                    pb::study_event::Event::Finding(finding),
                );
                let Some(t) = tally else {
                    return self.after_answer(&key);
                };
                // Critical findings: at once, to every listener of the study.
                let rules = study.tallies[t].pin.rules.clone();
                for (i, label) in rules.labels.iter().enumerate() {
                    let (Some(threshold), Some(&score)) = (label.critical, scores.get(i)) else {
                        continue;
                    };
                    let over = score >= threshold && rules.positive(&scores, i);
                    let raised = match study.tallies[t].critical[i] {
                        None => over,
                        Some((best, _)) => over && score > best,
                    };
                    if !raised {
                        continue;
                    }
                    let revision = study.tallies[t].critical[i].map_or(1, |(_, r)| r + 1);
                    study.tallies[t].critical[i] = Some((score, revision));
                    events::CriticalRaised {
                        study_instance_uid: &study.uid,
                        label: &label.name,
                        revision,
                        model: Some(&rules.model),
                        received_unix_us: received,
                    }
                    .emit();
                    let critical = pb::CriticalFinding {
                        study_instance_uid: study.uid.clone(),
                        label: label.name.clone(),
                        score,
                        critical_threshold: threshold,
                        slice: Some(finding_slice.clone()),
                        revision,
                        model: Some(rules.model.clone()),
                        peak: peaks.get(i).cloned().flatten(),
                        slice_received_unix_us: received,
                    };
                    let event = study.event(
                        &finding_slice.modality,
                        pb::study_event::Event::Critical(critical),
                    );
                    let targets = study.listeners.iter().map(|s| (*s, None)).collect();
                    self.emits.push(Emit::Log(Outgoing { event, targets }));
                }
            }
            Err(failure) => {
                study.failed += 1;
                events::SliceFailed {
                    sop_instance_uid: &key.sop,
                    frame,
                    model: failure.model.as_ref().or(instance_model.as_ref()),
                    reason: failure.reason as i32,
                    message: &failure.message,
                }
                .emit();
                let rejected = pb::InstanceRejected {
                    client_ref: String::new(),
                    sop_instance_uid: key.sop.clone(),
                    study_instance_uid: key.study.clone(),
                    series_instance_uid: slice.series_instance_uid.clone(),
                    reason: failure.reason as i32,
                    message: failure.message,
                    frame: Some(frame),
                    model: failure.model.or(instance_model),
                };
                if let Some(i) = study.instances.get_mut(&key.sop) {
                    i.failures.push(rejected.clone());
                }
                Self::instance_event(
                    &mut self.emits,
                    study,
                    &waiters,
                    &slice.modality,
                    pb::study_event::Event::Rejected(rejected),
                );
            }
        }
        self.after_answer(&key);
    }

    fn after_answer(&mut self, key: &InstanceKey) {
        if let Some(study) = self.studies.get(&key.study) {
            if inst_done(study, &key.sop) {
                self.resolve(key);
            }
        }
        self.maybe_complete(&key.study);
    }

    /// Every frame of the instance is answered: each of its senders hears so.
    fn resolve(&mut self, key: &InstanceKey) {
        let Some(inst) = self
            .studies
            .get_mut(&key.study)
            .and_then(|s| s.instances.get_mut(&key.sop))
        else {
            return;
        };
        for (source, _) in std::mem::take(&mut inst.waiters) {
            self.emits
                .push(Emit::Direct(source, SourceDelivery::InstanceDone));
        }
    }

    fn abandoned(&mut self, key: InstanceKey) {
        let Some(inst) = self
            .studies
            .get(&key.study)
            .and_then(|s| s.instances.get(&key.sop))
        else {
            return;
        };
        let (accepted, left) = (inst.accepted, inst.unanswered());
        let models = inst.models.clone();
        let failure = |model: Option<pb::ModelRef>| SliceFailure {
            reason: pb::RejectReason::Overloaded,
            message: "cancelled: the stream that sent this instance went away before it was \
                      scored; send it again"
                .into(),
            model,
        };
        if !accepted {
            let rejection = pb::InstanceRejected {
                sop_instance_uid: key.sop.clone(),
                study_instance_uid: key.study.clone(),
                reason: pb::RejectReason::Overloaded as i32,
                message: failure(None).message,
                ..Default::default()
            };
            self.decoded(key, Err(rejection));
            return;
        }
        for (frame, model) in left {
            self.slice_done(key.clone(), frame, Err(failure(models.get(model).cloned())));
        }
    }

    fn maybe_complete(&mut self, uid: &str) {
        let Some(study) = self.studies.get_mut(uid) else {
            return;
        };
        if !study.dirty || study.complete {
            return;
        }
        let reason = if study.end_requested {
            pb::CompletionReason::EndOfStudy
        } else if study.closed_since_summary && study.open_sources.is_empty() {
            pb::CompletionReason::StreamClosed
        } else if study.idle_due {
            pb::CompletionReason::Idle
        } else {
            return;
        };
        if study.pending > 0 {
            // Only answers are missing: whatever holds slices back for more of the study lets go.
            if study.decoding == 0 && !study.quiet_sent {
                study.quiet_sent = true;
                let _ = self.quiet.send(uid.to_string());
            }
            return;
        }
        study.revision += 1;
        study.last_reason = reason;
        events::StudyCompleted {
            study_instance_uid: uid,
            reason,
            revision: study.revision,
        }
        .emit();
        let summary = study.summary(reason);
        study.release_pins();
        study.slim();
        let event = study.event("", pb::study_event::Event::Summary(summary));
        let targets = study.listeners.drain().map(|s| (s, None)).collect();
        self.emits.push(Emit::Log(Outgoing { event, targets }));
        study.complete = true;
        study.dirty = false;
        study.end_requested = false;
        study.idle_due = false;
        study.closed_since_summary = false;
        if let Some(k) = study.timer.take() {
            let _ = self.timers.try_remove(&k);
        }
        study.timer = Some(self.timers.insert(
            (uid.to_string(), Timer::Evict),
            self.config.retain_completed,
        ));
        self.retained_complete += 1;
        self.completed.push_back((uid.to_string(), study.revision));
        self.enforce_retention();
    }

    /// Drops the oldest completed studies beyond `max_retained`.
    fn enforce_retention(&mut self) {
        while self.retained_complete > self.config.max_retained {
            let Some((uid, revision)) = self.completed.pop_front() else {
                break;
            };
            let evict = self
                .studies
                .get(&uid)
                .is_some_and(|s| s.complete && s.revision == revision);
            if evict {
                self.evict(&uid);
            }
        }
        // stale entries (re-opened studies) must not pile up
        if self.completed.len() > 2 * self.config.max_retained.max(16) {
            let studies = &self.studies;
            self.completed.retain(|(uid, revision)| {
                studies
                    .get(uid)
                    .is_some_and(|s| s.complete && s.revision == *revision)
            });
        }
    }

    fn evict(&mut self, uid: &str) {
        if let Some(study) = self.studies.remove(uid) {
            if let Some(k) = study.timer {
                let _ = self.timers.try_remove(&k);
            }
            if study.complete {
                self.retained_complete = self.retained_complete.saturating_sub(1);
            }
        }
    }

    fn expire(&mut self, uid: String, timer: Timer) {
        let Some(study) = self.studies.get_mut(&uid) else {
            return;
        };
        study.timer = None;
        match timer {
            Timer::Idle => {
                study.idle_due = true;
                self.maybe_complete(&uid);
            }
            Timer::Evict => {
                if study.complete {
                    self.evict(&uid);
                }
            }
        }
    }
}

/// The span the registry handles a command in: its sender's (the stream and the instance's study), or
/// for a report sent from outside any span (a 2.5D model's neighbour flush) one naming its instance.
fn command_span(cmd: &Command, sender: tracing::Span) -> tracing::Span {
    if !sender.is_none() {
        return sender;
    }
    match cmd {
        Command::Decoded { key, .. } | Command::SliceDone { key, .. } => tracing::info_span!(
            "study",
            study_instance_uid = %key.study,
            sop_instance_uid = %key.sop
        ),
        _ => sender,
    }
}

fn same_labels(a: &StudyRules, b: &StudyRules) -> bool {
    a.labels
        .iter()
        .map(|l| &l.name)
        .eq(b.labels.iter().map(|l| &l.name))
}

/// A message for one source only, not logged.
fn direct(event: pb::analyze_response::Event) -> SourceDelivery {
    SourceDelivery::Direct(Box::new(event))
}

fn inst_done(study: &Study, sop: &str) -> bool {
    study
        .instances
        .get(sop)
        .is_some_and(|i| i.accepted && i.resolved())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::{hub::SourceFeed, log::SqliteLog};

    fn meta(study: &str, n: i32) -> Arc<InstanceMeta> {
        Arc::new(InstanceMeta {
            pixel_spacing: Some([1.0, 1.0]),
            image_position: Some([0.0, 0.0, f64::from(n) * 5.0]),
            image_orientation: Some([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]),
            instance_number: Some(n),
            ..InstanceMeta::for_test(study, &format!("{study}.{n}"))
        })
    }

    /// Studies complete by end marker or close (a long idle time); completed ones kept as given.
    fn config(retain_completed: Duration, max_retained: usize) -> RegistryConfig {
        RegistryConfig {
            idle_timeout: Duration::from_secs(60),
            retain_completed,
            max_retained,
        }
    }

    /// A registry under fixed rules, with the pin every arrival is routed to.
    struct Reg {
        registry: Registry,
        pins: Vec<Pin>,
    }

    impl std::ops::Deref for Reg {
        type Target = Registry;
        fn deref(&self) -> &Registry {
            &self.registry
        }
    }

    fn start(hub: Hub, rules: StudyRules, config: RegistryConfig) -> Reg {
        let pins = vec![Pin {
            rules: Arc::new(rules.clone()),
            served: None,
        }];
        Reg {
            registry: Registry::start(hub, Arc::new(rules), config),
            pins,
        }
    }

    fn rules() -> StudyRules {
        StudyRules {
            labels: vec![LabelSpec {
                name: "lesion".into(),
                threshold: 0.5,
                critical: Some(0.9),
                aggregate: Aggregate::Groups,
            }],
            exclusive: false,
            model: pb::ModelRef::default(),
            slices: None,
        }
    }

    /// Pushes one single-frame instance through the registry as the intake would, scoring it `score`.
    async fn push(registry: &Reg, source: SourceId, study: &str, n: i32, score: f32) -> Admission {
        let meta = meta(study, n);
        let admission = registry
            .arrived(Arrival {
                source,
                client_ref: ClientRef::new(format!("f{n}")),
                meta: meta.clone(),
                frames: 1,
                routed: registry.pins.clone(),
            })
            .await;
        if admission.is_decode() {
            let key = InstanceKey {
                study: study.into(),
                sop: meta.sop_instance_uid.clone(),
            };
            registry.decoded(key.clone(), Ok(()));
            let id = crate::results::slice_id(&meta, 0);
            let finding = pb::SliceFinding {
                slice: Some(crate::results::slice_ref(&id)),
                scores: vec![pb::LabelScore {
                    label: "lesion".into(),
                    score,
                    positive: score >= 0.5,
                    threshold: 0.5,
                    ..Default::default()
                }],
                ..Default::default()
            };
            registry.slice_done(key, 0, Ok((finding, vec![score])));
        }
        admission
    }

    /// Reads the feed until a summary of `study` arrives; returns it.
    async fn summary(feed: &mut SourceFeed, study: &str) -> pb::StudySummary {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), feed.recv())
                .await
                .expect("a summary in time")
                .expect("feed open");
            if let SourceDelivery::Event { event, .. } = next {
                if let Some(pb::study_event::Event::Summary(s)) = &event.event {
                    if s.study_instance_uid == study {
                        return s.clone();
                    }
                }
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_study_outside_the_models_slice_range_says_so_in_its_summary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SqliteLog::in_data_dir(dir.path()).expect("log");
        let hub = Hub::start(Arc::new(log), 64).expect("hub");
        let registry = start(
            hub.clone(),
            StudyRules {
                model: pb::ModelRef {
                    name: "brain-mr".into(),
                    version: "2.1".into(),
                    ..Default::default()
                },
                slices: Some((3, 4)),
                ..rules()
            },
            config(Duration::from_secs(60), 10),
        );
        let mut feed = hub.attach_source();
        let source = feed.id;
        for n in 1..=2 {
            push(&registry, source, "1.3.1", n, 0.1).await;
        }
        registry.end_of_study(source, "1.3.1".into(), 2);
        let s = summary(&mut feed, "1.3.1").await;
        assert_eq!(
            s.outside_model_rules,
            "the study has 2 slices; model brain-mr 2.1 is for 3..=4 (applies_to.slices)"
        );
        assert_eq!(s.slices_scored, 2, "the findings are reported all the same");
        // a late slice brings the study into range: its next summary has no note
        push(&registry, source, "1.3.1", 3, 0.1).await;
        registry.end_of_study(source, "1.3.1".into(), 3);
        let s = summary(&mut feed, "1.3.1").await;
        assert_eq!((s.revision, s.outside_model_rules.as_str()), (2, ""));
        // and two more take it over the top
        push(&registry, source, "1.3.1", 4, 0.1).await;
        push(&registry, source, "1.3.1", 5, 0.1).await;
        registry.end_of_study(source, "1.3.1".into(), 5);
        let s = summary(&mut feed, "1.3.1").await;
        assert!(
            s.outside_model_rules.starts_with("the study has 5 slices;"),
            "{s:?}"
        );
        // without a range no study gets a note
        let plain = start(hub.clone(), rules(), config(Duration::from_secs(60), 10));
        push(&plain, source, "1.3.2", 1, 0.1).await;
        plain.end_of_study(source, "1.3.2".into(), 1);
        assert_eq!(summary(&mut feed, "1.3.2").await.outside_model_rules, "");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn completed_studies_are_evicted_and_rebuilt_from_the_log_when_seen_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SqliteLog::in_data_dir(dir.path()).expect("log");
        let hub = Hub::start(Arc::new(log), 64).expect("hub");
        let registry = start(hub.clone(), rules(), config(Duration::from_millis(300), 2));
        let mut feed = hub.attach_source();
        let source = feed.id;
        // three studies, each ended by its sender
        for (k, study) in ["1.2.1", "1.2.2", "1.2.3"].iter().enumerate() {
            for n in 1..=3 {
                push(&registry, source, study, n, if n == 2 { 0.95 } else { 0.1 }).await;
            }
            registry.end_of_study(source, study.to_string(), 3 * (k as u64 + 1));
            let s = summary(&mut feed, study).await;
            assert_eq!((s.revision, s.slices_scored), (1, 3));
            assert_eq!(s.labels[0].groups.len(), 1);
            assert!(s.labels[0].critical);
        }
        // the count limit keeps two of the three
        let stats = registry.stats().await;
        assert_eq!((stats.open, stats.retained_complete), (0, 2));
        // the time limit drops the rest
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(registry.stats().await.retained_complete, 0);
        // a late instance of an evicted study: rebuilt from its log, re-opened, next revision
        assert!(push(&registry, source, "1.2.1", 4, 0.2).await.is_decode());
        // and a re-sent one is still recognised after the rebuild
        assert!(!push(&registry, source, "1.2.1", 2, 0.2).await.is_decode());
        registry.end_of_study(source, "1.2.1".into(), 11);
        let s = summary(&mut feed, "1.2.1").await;
        assert_eq!(
            (s.revision, s.slices_scored, s.instances_accepted),
            (2, 4, 4)
        );
        assert_eq!(s.labels[0].max_score, 0.95, "the earlier slices count");
        assert_eq!(registry.stats().await.open, 0);
    }

    /// What a source is sent about one instance, up to its `InstanceDone`.
    async fn until_done(feed: &mut SourceFeed) -> Vec<SourceDelivery> {
        let mut got = Vec::new();
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), feed.recv())
                .await
                .expect("the instance done in time")
                .expect("feed open");
            if matches!(next, SourceDelivery::InstanceDone) {
                return got;
            }
            got.push(next);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_completed_study_keeps_no_instances_yet_re_sends_their_results_from_the_log() {
        use pb::analyze_response::Event as R;
        use pb::study_event::Event as E;
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SqliteLog::in_data_dir(dir.path()).expect("log");
        let hub = Hub::start(Arc::new(log), 64).expect("hub");
        let registry = start(hub.clone(), rules(), config(Duration::from_secs(60), 10));
        let mut feed = hub.attach_source();
        let source = feed.id;
        // two scored slices, and one whose frame failed
        for n in 1..=2 {
            push(
                &registry,
                source,
                "1.4.1",
                n,
                if n == 2 { 0.95 } else { 0.1 },
            )
            .await;
        }
        let failed = meta("1.4.1", 3);
        let key = InstanceKey {
            study: "1.4.1".into(),
            sop: failed.sop_instance_uid.clone(),
        };
        let arrival = |source, client_ref: &str| Arrival {
            source,
            client_ref: ClientRef::new(client_ref.into()),
            meta: failed.clone(),
            frames: 1,
            routed: registry.pins.clone(),
        };
        assert!(registry.arrived(arrival(source, "f3")).await.is_decode());
        registry.decoded(key.clone(), Ok(()));
        registry.slice_done(
            key,
            0,
            Err(SliceFailure {
                reason: pb::RejectReason::Inference,
                message: "engine failed".into(),
                model: None,
            }),
        );
        registry.end_of_study(source, "1.4.1".into(), 3);
        // what the sender was told, as the log holds it
        let mut logged = Vec::new();
        let first = loop {
            let next = tokio::time::timeout(Duration::from_secs(10), feed.recv())
                .await
                .expect("a summary in time")
                .expect("feed open");
            if let SourceDelivery::Event { event, .. } = next {
                match &event.event {
                    Some(E::Summary(s)) => break s.clone(),
                    Some(e) => logged.push(e.clone()),
                    None => {}
                }
            }
        };
        assert_eq!((first.slices_scored, first.slices_failed), (2, 1));
        let stats = registry.stats().await;
        assert_eq!(stats.retained_complete, 1);
        assert_eq!(
            stats.retained_instances, 0,
            "a completed study lets go of its instances (their findings are in the log)"
        );

        // a second sender re-sends slice 2: its finding again, marked re-sent, under its own name
        let mut again = hub.attach_source();
        assert!(!push(&registry, again.id, "1.4.1", 2, 0.0).await.is_decode());
        let original = logged
            .iter()
            .find_map(|e| match e {
                E::Finding(f) if f.slice.as_ref().and_then(|s| s.instance_number) == Some(2) => {
                    Some(f.clone())
                }
                _ => None,
            })
            .expect("the finding of slice 2");
        let got = until_done(&mut again).await;
        let direct: Vec<R> = got
            .into_iter()
            .filter_map(|d| match d {
                SourceDelivery::Direct(e) => Some(*e),
                _ => None,
            })
            .collect();
        assert_eq!(direct.len(), 2, "{direct:?}");
        assert!(matches!(&direct[0], R::Accepted(a) if a.duplicate && a.client_ref == "f2"));
        assert_eq!(
            direct[1],
            R::Finding(pb::SliceFinding {
                client_ref: "f2".into(),
                resent: true,
                ..original
            })
        );
        // and slice 3: its failure again
        assert!(!registry.arrived(arrival(again.id, "g3")).await.is_decode());
        let got = until_done(&mut again).await;
        let failure = got.iter().find_map(|d| match d {
            SourceDelivery::Direct(e) => match e.as_ref() {
                R::Rejected(r) => Some(r.clone()),
                _ => None,
            },
            _ => None,
        });
        let failure = failure.expect("the failure re-sent");
        assert_eq!(
            (failure.client_ref.as_str(), failure.frame),
            ("g3", Some(0))
        );
        assert_eq!(failure.message, "engine failed");
        // the re-sends made no new revision: the re-sender hears the same summary when it closes
        registry.source_closed(again.id, 2);
        let resummarised = loop {
            let next = tokio::time::timeout(Duration::from_secs(10), again.recv())
                .await
                .expect("a summary in time")
                .expect("feed open");
            if let SourceDelivery::Direct(e) = next {
                if let R::Summary(s) = *e {
                    break s;
                }
            }
        };
        assert_eq!(resummarised, first);

        // a late instance re-opens it; its next summary covers the whole study, and it is slim again
        assert!(push(&registry, source, "1.4.1", 4, 0.2).await.is_decode());
        registry.end_of_study(source, "1.4.1".into(), 4);
        let s = summary(&mut feed, "1.4.1").await;
        assert_eq!(
            (
                s.revision,
                s.slices_scored,
                s.instances_accepted,
                s.slices_failed
            ),
            (2, 3, 4, 1)
        );
        assert_eq!(s.labels[0].max_score, 0.95);
        let stats = registry.stats().await;
        assert_eq!((stats.retained_complete, stats.retained_instances), (1, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exclusive_classes_count_only_the_most_probable_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SqliteLog::in_data_dir(dir.path()).expect("log");
        let hub = Hub::start(Arc::new(log), 64).expect("hub");
        let label = |name: &str| LabelSpec {
            name: name.into(),
            threshold: 0.3,
            critical: Some(0.35),
            aggregate: Aggregate::Groups,
        };
        let registry = start(
            hub.clone(),
            StudyRules {
                labels: vec![label("normal"), label("tumour")],
                exclusive: true,
                model: pb::ModelRef::default(),
                slices: None,
            },
            config(Duration::from_secs(60), 10),
        );
        let mut feed = hub.attach_source();
        // every slice: tumour 0.4 >= its threshold and its critical threshold, but normal wins
        for n in 1..=3 {
            let meta = meta("1.2.8", n);
            registry
                .arrived(Arrival {
                    source: feed.id,
                    client_ref: ClientRef::new(String::new()),
                    meta: meta.clone(),
                    frames: 1,
                    routed: registry.pins.clone(),
                })
                .await;
            let key = InstanceKey {
                study: "1.2.8".into(),
                sop: meta.sop_instance_uid.clone(),
            };
            registry.decoded(key.clone(), Ok(()));
            let finding = pb::SliceFinding {
                slice: Some(crate::results::slice_ref(&crate::results::slice_id(
                    &meta, 0,
                ))),
                ..Default::default()
            };
            registry.slice_done(key, 0, Ok((finding, vec![0.6, 0.4])));
        }
        registry.end_of_study(feed.id, "1.2.8".into(), 3);
        let s = summary(&mut feed, "1.2.8").await;
        let tumour = &s.labels[1];
        assert_eq!(tumour.max_score, 0.4);
        assert!(!tumour.positive, "never the most probable class");
        assert_eq!(tumour.positive_slices, 0);
        assert!(tumour.groups.is_empty());
        assert!(
            !tumour.critical,
            "no critical finding for a class that lost"
        );
        let normal = &s.labels[0];
        assert!(normal.positive && normal.critical);
        assert_eq!((normal.positive_slices, normal.groups.len()), (3, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_study_left_open_by_a_stopped_service_completes_after_the_restart() {
        use crate::results::hub::{WatchFilter, Watched};
        let dir = tempfile::tempdir().expect("tempdir");
        let config = RegistryConfig {
            idle_timeout: Duration::from_millis(200),
            retain_completed: Duration::from_secs(60),
            max_retained: 10,
        };
        {
            // the first life: two slices scored, no end, the service stops before the idle time
            let log = SqliteLog::in_data_dir(dir.path()).expect("log");
            let hub = Hub::start(Arc::new(log), 64).expect("hub");
            let registry = start(
                hub.clone(),
                rules(),
                RegistryConfig {
                    idle_timeout: Duration::from_secs(3600),
                    ..config
                },
            );
            let feed = hub.attach_source();
            for n in 1..=2 {
                push(&registry, feed.id, "1.2.9", n, 0.95).await;
            }
            registry.stats().await;
            hub.flush().await;
        }
        // the second life: the study is resumed from the log and completes on its idle timer
        let log = SqliteLog::in_data_dir(dir.path()).expect("log");
        let hub = Hub::start(Arc::new(log), 64).expect("hub");
        let mut viewer = hub.subscribe(WatchFilter::default(), None);
        let _registry = start(hub.clone(), rules(), config);
        let summary = loop {
            let next = tokio::time::timeout(Duration::from_secs(10), viewer.next())
                .await
                .expect("a summary in time")
                .expect("open")
                .expect("log");
            if let Watched::Event(e) = next {
                if let Some(pb::study_event::Event::Summary(s)) = &e.event {
                    break s.clone();
                }
            }
        };
        assert_eq!(summary.study_instance_uid, "1.2.9");
        assert_eq!(summary.reason, pb::CompletionReason::Idle as i32);
        assert_eq!((summary.revision, summary.slices_scored), (1, 2));
        assert!(
            summary.labels[0].critical,
            "the critical finding of the first life counts"
        );
    }

    /// Property: whatever the arrival order of a study's slices, how they are spread over sources,
    /// which are re-sent, and when a viewer joins, the study ends as one study: each SOP Instance UID
    /// counted once, the positive slices grouped by position (not arrival), and the viewer sees every
    /// event from its start exactly once, in log order.
    mod proptests {
        use super::*;
        use crate::results::hub::{WatchFilter, Watched};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn any_arrival_order_makes_one_study_and_viewers_see_each_event_once(
                order in Just((1..=10).collect::<Vec<i32>>()).prop_shuffle(),
                resent in prop::collection::vec(1i32..=10, 0..5),
                positive in prop::collection::vec(any::<bool>(), 10),
                sources in prop::collection::vec(0usize..3, 15),
                join in 0usize..15,
                from_start in any::<bool>(),
            ) {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let log = SqliteLog::in_data_dir(dir.path()).expect("log");
                    let hub = Hub::start(Arc::new(log), 4096).expect("hub");
                    let registry = start(hub.clone(), rules(), RegistryConfig {
                        idle_timeout: Duration::from_secs(3600),
                        retain_completed: Duration::from_secs(3600),
                        max_retained: 10,
                    });
                    let feeds: Vec<SourceFeed> = (0..3).map(|_| hub.attach_source()).collect();
                    let mut sent = [0u64; 3];
                    let arrivals: Vec<i32> = order.iter().copied().chain(resent.iter().copied()).collect();
                    let mut viewer = None;
                    for (i, n) in arrivals.iter().enumerate() {
                        if i == join {
                            hub.flush().await;
                            viewer = Some(hub.subscribe(WatchFilter::default(), from_start.then_some(1)));
                        }
                        let k = sources[i % sources.len()];
                        let score = if positive[(*n - 1) as usize] { 0.8 } else { 0.2 };
                        push(&registry, feeds[k].id, "1.2.7", *n, score).await;
                        sent[k] += 1;
                    }
                    let mut viewer = viewer.unwrap_or_else(|| hub.subscribe(WatchFilter::default(), Some(1)));
                    for (k, feed) in feeds.iter().enumerate() {
                        registry.source_closed(feed.id, sent[k]);
                    }
                    // the summary, as the viewer sees it, with every event before it
                    let mut seen = Vec::new();
                    let summary = loop {
                        let next = tokio::time::timeout(Duration::from_secs(10), viewer.next())
                            .await
                            .expect("the summary in time")
                            .expect("open")
                            .expect("log");
                        if let Watched::Event(e) = next {
                            seen.push(e.sequence);
                            if let Some(pb::study_event::Event::Summary(s)) = &e.event {
                                break s.clone();
                            }
                        }
                    };
                    assert_eq!((summary.instances_accepted, summary.slices_scored), (10, 10));
                    assert_eq!(summary.revision, 1);
                    let expected_positive = positive.iter().filter(|p| **p).count() as u32;
                    assert_eq!(summary.labels[0].positive_slices, expected_positive);
                    // runs of adjacent positives in position order (InstanceNumber n at n * 5 mm)
                    let mut runs = Vec::new();
                    let mut n = 1;
                    while n <= 10 {
                        if positive[n - 1] {
                            let first = n;
                            while n < 10 && positive[n] { n += 1; }
                            runs.push((first as i32, n as i32));
                        }
                        n += 1;
                    }
                    let mut got: Vec<(i32, i32)> = summary.labels[0].groups.iter().map(|g| (
                        g.first.as_ref().and_then(|s| s.instance_number).unwrap_or(0),
                        g.last.as_ref().and_then(|s| s.instance_number).unwrap_or(0),
                    )).collect();
                    got.sort();
                    assert_eq!(got, runs);
                    for g in &summary.labels[0].groups {
                        assert_eq!(g.extent_mm, Some(f64::from(g.slices) * 5.0));
                    }
                    // each event once, in order, without a gap from where the viewer started
                    assert!(seen.windows(2).all(|w| w[1] == w[0] + 1), "{seen:?}");
                    if from_start {
                        assert_eq!(seen.first(), Some(&1));
                    }
                });
            }
        }
    }
}
