//! Every event the service reports, defined once: each type below emits its log line and updates its
//! Prometheus metric in the same `emit`, so the two can never tell different stories (the model is
//! vector's instrumentation spec: one place per event, never a counter bumped beside an unrelated log
//! line). Call sites construct the event where the thing happens and call `emit()`.
//!
//! Why it looks like this:
//! - **One process-wide registry.** Instrumented code is spread over the intake, the engine, the
//!   registry, the hub and the webhook; threading a registry handle through all of them would touch
//!   every constructor for nothing, since one process serves one service. Several servers started in one
//!   process (tests) add up in the same metrics; a test that counts runs in its own test binary.
//! - **Bounded labels only.** Labels are reason codes, model name and version, stage names: never a UID,
//!   a client reference or anything else that grows with traffic or could identify a patient. UIDs
//!   appear in log lines (as everywhere in radstream), never in metrics.
//! - **Sampled where counting is fragile.** Decoded bytes in flight are read from the live budgets at
//!   scrape time ([`watch_decoded_budget`]) rather than followed permit by permit.

use std::{
    sync::{Arc, LazyLock, Mutex, Weak},
    time::Duration,
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use crate::{ingest::budget::ByteBudget, proto::v1 as pb};

/// Latency buckets: 1 ms to about 33 s, doubling.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Batch-size buckets: 1, 2, 4 … 256 slices.
fn batch_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 9))
}

/// A model version, as labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub version: String,
}

impl ModelLabels {
    pub fn new(model: &str, version: &str) -> Self {
        Self {
            model: model.to_string(),
            version: version.to_string(),
        }
    }

    fn of(model: Option<&pb::ModelRef>) -> Self {
        model.map_or_else(|| Self::new("", ""), |m| Self::new(&m.name, &m.version))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelReasonLabels {
    model: String,
    version: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: Stage,
}

/// The stages a slice passes, as the `stage` label of `radstream_stage_duration_seconds`.
#[derive(
    Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue,
)]
#[allow(non_camel_case_types)]
pub enum Stage {
    /// Arrival of an instance to its pixels decoded (waiting for a decode slot included); per instance.
    decode,
    /// A slice queued for its model to its batch being taken up; per slice.
    queue,
    /// One batch's preprocessing call; per batch.
    preprocess,
    /// One batch's model call; per batch.
    score,
    /// Arrival of the instance to its slice's finding; per scored slice.
    finding,
    /// Arrival of the instance to the critical finding raised on it; per alert.
    alert,
}

/// The `reason` label of a reject reason: its proto name, lower case, without the prefix
/// (`not_dicom`, `preprocess`, …).
pub fn reject_reason_label(reason: i32) -> String {
    let r = pb::RejectReason::try_from(reason).unwrap_or(pb::RejectReason::Unspecified);
    r.as_str_name()
        .trim_start_matches("REJECT_REASON_")
        .to_ascii_lowercase()
}

fn completion_reason_label(reason: pb::CompletionReason) -> String {
    reason
        .as_str_name()
        .trim_start_matches("COMPLETION_REASON_")
        .to_ascii_lowercase()
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// The metrics, registered once (see the module docs); names are listed in the README.
struct Metrics {
    registry: Registry,
    instances_received: Counter,
    instances_accepted: Counter,
    instances_rejected: Family<ReasonLabels, Counter>,
    slices_scored: Family<ModelLabels, Counter>,
    slices_failed: Family<ModelReasonLabels, Counter>,
    critical_findings: Family<ModelLabels, Counter>,
    studies_completed: Family<ReasonLabels, Counter>,
    webhook_delivered: Counter,
    webhook_failed: Counter,
    webhook_given_up: Counter,
    stage_seconds: Histograms<StageLabels>,
    batch_size: Histograms<ModelLabels>,
    queue_depth: Family<ModelLabels, Gauge>,
    decoded_bytes: Gauge,
    open_streams: Gauge,
    subscribers: Gauge,
    studies_open: Gauge,
    decoded_budgets: Mutex<Vec<Weak<ByteBudget>>>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            instances_received: Counter::default(),
            instances_accepted: Counter::default(),
            instances_rejected: Family::default(),
            slices_scored: Family::default(),
            slices_failed: Family::default(),
            critical_findings: Family::default(),
            studies_completed: Family::default(),
            webhook_delivered: Counter::default(),
            webhook_failed: Counter::default(),
            webhook_given_up: Counter::default(),
            stage_seconds: Family::new_with_constructor(latency_histogram),
            batch_size: Family::new_with_constructor(batch_histogram),
            queue_depth: Family::default(),
            decoded_bytes: Gauge::default(),
            open_streams: Gauge::default(),
            subscribers: Gauge::default(),
            studies_open: Gauge::default(),
            decoded_budgets: Mutex::new(Vec::new()),
            registry: Registry::default(),
        };
        // Counters are registered without `_total`: the encoder appends it.
        registry.register(
            "radstream_instances_received",
            "Instances read from Analyze streams (re-sent ones included)",
            m.instances_received.clone(),
        );
        registry.register(
            "radstream_instances_accepted",
            "Instances decoded and accepted into their study (once per instance, re-sends not counted)",
            m.instances_accepted.clone(),
        );
        registry.register(
            "radstream_instances_rejected",
            "Instances (or requests) refused before scoring, by reason",
            m.instances_rejected.clone(),
        );
        registry.register(
            "radstream_slices_scored",
            "Slices scored and reported, per model version",
            m.slices_scored.clone(),
        );
        registry.register(
            "radstream_slices_failed",
            "Slices that could not be scored, per model version and reason",
            m.slices_failed.clone(),
        );
        registry.register(
            "radstream_critical_findings",
            "Critical findings raised (revisions included), per model version",
            m.critical_findings.clone(),
        );
        registry.register(
            "radstream_studies_completed",
            "Study summaries sent, by completion reason",
            m.studies_completed.clone(),
        );
        registry.register(
            "radstream_webhook_deliveries",
            "Critical findings delivered to the webhook",
            m.webhook_delivered.clone(),
        );
        registry.register(
            "radstream_webhook_failures",
            "Failed webhook delivery attempts",
            m.webhook_failed.clone(),
        );
        registry.register(
            "radstream_webhook_given_up",
            "Critical findings the webhook gave up on after its last attempt",
            m.webhook_given_up.clone(),
        );
        registry.register(
            "radstream_stage_duration_seconds",
            "Time spent per stage: decode (per instance, from arrival), queue (per slice), preprocess \
             and score (per batch), finding and alert (from the instance's arrival)",
            m.stage_seconds.clone(),
        );
        registry.register(
            "radstream_batch_size",
            "Slices per scored batch, per model version",
            m.batch_size.clone(),
        );
        registry.register(
            "radstream_queue_depth",
            "Slices waiting in a model version's engine queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "radstream_decoded_bytes_in_flight",
            "Decoded pixel bytes held between decode and scoring",
            m.decoded_bytes.clone(),
        );
        registry.register(
            "radstream_open_streams",
            "Analyze streams open",
            m.open_streams.clone(),
        );
        registry.register(
            "radstream_subscribers",
            "Watchers (Watch streams and web views) following the results hub",
            m.subscribers.clone(),
        );
        registry.register(
            "radstream_studies_open",
            "Studies open (not yet completed) in the registry",
            m.studies_open.clone(),
        );
        Self { registry, ..m }
    }
}

/// The metrics in the OpenMetrics text format (what `/metrics` serves), sampled gauges refreshed first.
pub fn render() -> String {
    let m = &*METRICS;
    let held: u64 = match m.decoded_budgets.lock() {
        Ok(mut budgets) => {
            budgets.retain(|b| b.strong_count() > 0);
            budgets
                .iter()
                .filter_map(Weak::upgrade)
                .map(|b| b.held_bytes())
                .sum()
        }
        Err(_) => 0,
    };
    m.decoded_bytes.set(i64::try_from(held).unwrap_or(i64::MAX));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &m.registry) {
        tracing::warn!("metrics: encoding failed: {e}");
    }
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Counts `budget`'s held bytes in `radstream_decoded_bytes_in_flight` for as long as it lives.
pub fn watch_decoded_budget(budget: &Arc<ByteBudget>) {
    if let Ok(mut budgets) = METRICS.decoded_budgets.lock() {
        budgets.push(Arc::downgrade(budget));
    }
}

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Microseconds between two Unix-µs stamps, as a duration (zero if the clock stepped back).
fn between_us(from: i64, to: i64) -> Duration {
    Duration::from_micros(u64::try_from(to.saturating_sub(from)).unwrap_or(0))
}

fn observe(stage: Stage, d: Duration) {
    METRICS
        .stage_seconds
        .get_or_create(&StageLabels { stage })
        .observe(seconds(d));
}

/// An instance was read from a stream.
pub struct InstanceReceived {
    pub bytes: usize,
}

impl InstanceReceived {
    pub fn emit(self) {
        tracing::trace!(bytes = self.bytes, "instance received");
        METRICS.instances_received.inc();
    }
}

/// An instance's pixels were decoded, `took` after its arrival.
pub struct InstanceDecoded {
    pub took: Duration,
}

impl InstanceDecoded {
    pub fn emit(self) {
        tracing::trace!(took_ms = self.took.as_secs_f64() * 1e3, "instance decoded");
        observe(Stage::decode, self.took);
    }
}

/// An instance was accepted into its study (its first time: re-sends are answered, not counted).
pub struct InstanceAccepted<'a> {
    pub sop_instance_uid: &'a str,
}

impl InstanceAccepted<'_> {
    pub fn emit(self) {
        tracing::debug!(sop_instance_uid = %self.sop_instance_uid, "instance accepted");
        METRICS.instances_accepted.inc();
    }
}

/// An instance (or a request) was refused before scoring.
pub struct InstanceRejected<'a> {
    /// Empty when it could not be read.
    pub sop_instance_uid: &'a str,
    /// A `pb::RejectReason`.
    pub reason: i32,
    pub message: &'a str,
}

impl InstanceRejected<'_> {
    pub fn emit(self) {
        let reason = reject_reason_label(self.reason);
        tracing::info!(
            sop_instance_uid = if self.sop_instance_uid.is_empty() {
                "unreadable"
            } else {
                self.sop_instance_uid
            },
            code = %reason,
            "instance rejected: {}",
            self.message
        );
        METRICS
            .instances_rejected
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// A slice's finding was reported; `timings` are its stage stamps.
pub struct SliceScored<'a> {
    pub model: Option<&'a pb::ModelRef>,
    pub timings: Option<&'a pb::StageTimings>,
}

impl SliceScored<'_> {
    pub fn emit(self) {
        let labels = ModelLabels::of(self.model);
        tracing::trace!(model = %labels.model, version = %labels.version, "slice scored");
        METRICS.slices_scored.get_or_create(&labels).inc();
        if let Some(t) = self.timings {
            let now = crate::results::log::now_unix_us();
            observe(Stage::finding, between_us(t.received_unix_us, now));
        }
    }
}

/// A slice could not be scored by `model`.
pub struct SliceFailed<'a> {
    pub sop_instance_uid: &'a str,
    pub frame: u32,
    pub model: Option<&'a pb::ModelRef>,
    /// A `pb::RejectReason`.
    pub reason: i32,
    pub message: &'a str,
}

impl SliceFailed<'_> {
    pub fn emit(self) {
        let ModelLabels { model, version } = ModelLabels::of(self.model);
        tracing::warn!(
            sop_instance_uid = %self.sop_instance_uid,
            frame = self.frame,
            model = %model,
            version = %version,
            "slice failed: {}",
            self.message
        );
        METRICS
            .slices_failed
            .get_or_create(&ModelReasonLabels {
                model,
                version,
                reason: reject_reason_label(self.reason),
            })
            .inc();
    }
}

/// One batch went through a model version's engine.
pub struct BatchScored<'a> {
    pub model: &'a ModelLabels,
    pub size: usize,
    /// Per slice of the batch: how long it waited in the queue.
    pub queued: &'a [Duration],
    pub preprocess: Duration,
    pub score: Duration,
}

impl BatchScored<'_> {
    pub fn emit(self) {
        tracing::debug!(
            model = %self.model.model,
            version = %self.model.version,
            batch = self.size,
            preprocess_ms = self.preprocess.as_secs_f64() * 1e3,
            score_ms = self.score.as_secs_f64() * 1e3,
            "batch scored"
        );
        METRICS
            .batch_size
            .get_or_create(self.model)
            .observe(self.size as f64);
        for q in self.queued {
            observe(Stage::queue, *q);
        }
        observe(Stage::preprocess, self.preprocess);
        observe(Stage::score, self.score);
    }
}

/// A model version's engine queue grew (`+n`) or shrank (`-n`).
pub struct QueueDepthChanged<'a> {
    pub model: &'a ModelLabels,
    pub delta: i64,
}

impl QueueDepthChanged<'_> {
    pub fn emit(self) {
        METRICS
            .queue_depth
            .get_or_create(self.model)
            .inc_by(self.delta);
    }
}

/// A critical finding was raised (or raised again, higher).
pub struct CriticalRaised<'a> {
    pub study_instance_uid: &'a str,
    pub label: &'a str,
    pub revision: u32,
    pub model: Option<&'a pb::ModelRef>,
    /// The instance's arrival, in Unix microseconds.
    pub received_unix_us: i64,
}

impl CriticalRaised<'_> {
    pub fn emit(self) {
        let labels = ModelLabels::of(self.model);
        let latency = between_us(self.received_unix_us, crate::results::log::now_unix_us());
        tracing::info!(
            study = %self.study_instance_uid,
            label = %self.label,
            revision = self.revision,
            model = %labels.model,
            latency_ms = latency.as_secs_f64() * 1e3,
            "critical finding raised"
        );
        METRICS.critical_findings.get_or_create(&labels).inc();
        observe(Stage::alert, latency);
    }
}

/// A study's summary was sent.
pub struct StudyCompleted<'a> {
    pub study_instance_uid: &'a str,
    pub reason: pb::CompletionReason,
    pub revision: u32,
}

impl StudyCompleted<'_> {
    pub fn emit(self) {
        let reason = completion_reason_label(self.reason);
        tracing::debug!(
            study = %self.study_instance_uid,
            reason = %reason,
            revision = self.revision,
            "study completed"
        );
        METRICS
            .studies_completed
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }
}

/// The number of open studies of one registry changed by `delta`.
pub struct StudiesOpenChanged {
    pub delta: i64,
}

impl StudiesOpenChanged {
    pub fn emit(self) {
        METRICS.studies_open.inc_by(self.delta);
    }
}

/// A critical finding reached the webhook.
pub struct WebhookDelivered<'a> {
    pub sequence: u64,
    pub study_instance_uid: &'a str,
    pub label: &'a str,
    pub revision: u32,
    pub attempt: u32,
    pub status: u16,
    pub endpoint: &'a str,
}

impl WebhookDelivered<'_> {
    pub fn emit(self) {
        tracing::info!(
            sequence = self.sequence,
            study = %self.study_instance_uid,
            label = %self.label,
            revision = self.revision,
            attempt = self.attempt,
            status = self.status,
            endpoint = %self.endpoint,
            "webhook: critical finding delivered"
        );
        METRICS.webhook_delivered.inc();
    }
}

/// One webhook delivery attempt failed: an HTTP status (`status`) or a transport error (`error`).
pub struct WebhookFailed<'a> {
    pub sequence: u64,
    pub label: &'a str,
    pub revision: u32,
    pub attempt: u32,
    pub status: Option<u16>,
    pub error: Option<&'a str>,
    pub endpoint: &'a str,
}

impl WebhookFailed<'_> {
    pub fn emit(self) {
        match (self.status, self.error) {
            (Some(status), _) => tracing::warn!(
                sequence = self.sequence,
                label = %self.label,
                revision = self.revision,
                attempt = self.attempt,
                status,
                endpoint = %self.endpoint,
                "webhook: delivery attempt failed (HTTP status)"
            ),
            (None, error) => tracing::warn!(
                sequence = self.sequence,
                label = %self.label,
                revision = self.revision,
                attempt = self.attempt,
                error = error.unwrap_or("unknown"),
                endpoint = %self.endpoint,
                "webhook: delivery attempt failed"
            ),
        }
        METRICS.webhook_failed.inc();
    }
}

/// The webhook gave up on a critical finding after its last attempt.
pub struct WebhookGaveUp<'a> {
    pub sequence: u64,
    pub study_instance_uid: &'a str,
    pub label: &'a str,
    pub revision: u32,
    pub attempts: u32,
    pub endpoint: &'a str,
}

impl WebhookGaveUp<'_> {
    pub fn emit(self) {
        tracing::warn!(
            sequence = self.sequence,
            study = %self.study_instance_uid,
            label = %self.label,
            revision = self.revision,
            attempts = self.attempts,
            endpoint = %self.endpoint,
            "webhook: giving up on a critical finding"
        );
        METRICS.webhook_given_up.inc();
    }
}

/// Held while something is open (a stream, a subscriber): its gauge counts it until dropped.
#[derive(Debug)]
pub struct OpenGuard(&'static Gauge);

impl OpenGuard {
    /// An Analyze stream opened.
    pub fn stream() -> Self {
        Self::open(&METRICS.open_streams)
    }

    /// A hub subscriber attached.
    pub fn subscriber() -> Self {
        Self::open(&METRICS.subscribers)
    }

    fn open(gauge: &'static Gauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_labels_are_bounded_names() {
        assert_eq!(
            reject_reason_label(pb::RejectReason::NotDicom as i32),
            "not_dicom"
        );
        assert_eq!(reject_reason_label(999), "unspecified");
        assert_eq!(
            completion_reason_label(pb::CompletionReason::EndOfStudy),
            "end_of_study"
        );
    }

    #[test]
    fn an_event_shows_in_the_rendering_with_its_labels() {
        let model = ModelLabels::new("unit-test-model", "9.9.9");
        BatchScored {
            model: &model,
            size: 3,
            queued: &[Duration::from_millis(1); 3],
            preprocess: Duration::from_millis(2),
            score: Duration::from_millis(3),
        }
        .emit();
        let text = render();
        assert!(
            text.contains(
                "radstream_batch_size_count{model=\"unit-test-model\",version=\"9.9.9\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends with EOF");
    }
}
