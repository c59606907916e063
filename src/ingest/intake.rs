//! One instance's way through the service, whatever transport brought it: header read → study
//! registry (is it new, or a re-sent duplicate?) → pixel decode → scoring → registry. The transport
//! (the gRPC session today, a DICOM association later) hands bytes in and hears the outcome through
//! the results hub; nothing here knows gRPC.
//!
//! The header is read first and reported at once, so the study's bookkeeping never waits for pixels,
//! and a duplicate is never decoded. The catalog routes the instance by its header to every active
//! model whose `[applies_to]` rules admit it; an instance no model is for is refused right after its
//! header is read, before the registry is asked: it is rejected with its UIDs and each model's reason,
//! never decoded, scored or accepted. The registry then answers with the versions the study is pinned
//! to, and each frame goes to each of those models' engines (and to a model's shadow candidate, whose
//! scores are only compared, never reported). Every instance ends in exactly one report to the registry about
//! its header (arrived, rejected, or abandoned before it was read) and, once arrived, in a report for
//! its pixels and each of its frames; when the task is cut off (its sender went away) a guard reports
//! what is left as abandoned, so no study waits forever for it. The decode keeps its slot and its
//! budget shares until the decode itself ends, even when its task is aborted meanwhile.

use std::{
    sync::{atomic::Ordering, Arc},
    time::SystemTime,
};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;

use super::{
    budget::ByteBudget,
    probe,
    stacks::{self, Stacks},
};
use crate::{
    catalog::{Catalog, Route, Served},
    decode::{read_header, DecodeError, DecodedInstance, InstanceHeader, Limits, Rejection},
    pipeline::{EngineError, ScoredSlice},
    proto::v1 as pb,
    results::{
        self,
        hub::{ClientRef, SourceId},
        log::Overlay,
        overlay, Arrival as Times,
    },
    study::{Admission, Arrival, InstanceKey, Pin, Registry, SliceFailure},
    telemetry::events,
};

/// What every transport shares: the model catalog, the registry, and the service-wide decode limits.
#[derive(Debug, Clone)]
pub struct Intake {
    pub(crate) catalog: Catalog,
    pub(crate) registry: Registry,
    pub(crate) limits: Limits,
    /// Caps concurrent decodes across all sources (decode is CPU-bound).
    pub(crate) decode_slots: Arc<Semaphore>,
    /// Decoded pixels between decode and scoring, across all sources.
    pub(crate) decoded_budget: Arc<ByteBudget>,
    /// The neighbour assemblies of 2.5D models.
    stacks: Stacks,
}

/// Reports what is left of an instance as abandoned when its task ends early (see the module docs).
struct Guard {
    registry: Registry,
    source: SourceId,
    key: Option<InstanceKey>,
    armed: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.armed {
            self.registry.abandoned(self.source, self.key.take());
        }
    }
}

/// What the blocking half of a decode ends with (once per instance: not worth a box).
#[allow(clippy::large_enum_variant)]
enum Decoded {
    HeaderRejected(Rejection),
    /// No model's rules admit the instance (`REJECT_REASON_NO_MODEL`).
    NoModel(pb::InstanceRejected),
    Duplicate,
    Pixels {
        meta: Arc<crate::decode::InstanceMeta>,
        result: Result<DecodedInstance, Rejection>,
        /// The pinned versions to score it with, and the routes (for their shadow candidates).
        pins: Vec<Pin>,
        routes: Vec<Route>,
    },
}

impl Intake {
    pub fn new(
        catalog: Catalog,
        registry: Registry,
        limits: Limits,
        decoded_budget: Arc<ByteBudget>,
    ) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        // frames waiting for their neighbours may hold half of the decoded-pixel budget
        let stacks = Stacks::new(decoded_budget.capacity_bytes() / 2);
        stacks.spawn_flusher(&registry);
        events::watch_decoded_budget(&decoded_budget);
        Self {
            catalog,
            registry,
            limits,
            decode_slots: Arc::new(Semaphore::new(cores)),
            decoded_budget,
            stacks,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Everything about one instance, as a future that reports as it goes (see the module docs). The
    /// guard is made before the future so that even a future dropped unpolled reports its instance.
    pub fn process(
        &self,
        source: SourceId,
        client_ref: ClientRef,
        dicom: Bytes,
        received: SystemTime,
        request_share: OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let guard = Guard {
            registry: self.registry.clone(),
            source,
            key: None,
            armed: true,
        };
        let this = self.clone();
        // The instance's study work, inside its transport's span (`telemetry`'s module docs); its UIDs
        // are filled in once the header is read.
        let span = tracing::info_span!(
            "study",
            study_instance_uid = tracing::field::Empty,
            sop_instance_uid = tracing::field::Empty
        );
        async move {
            this.run(guard, source, client_ref, dicom, received, request_share)
                .await
        }
        .instrument(span)
    }

    async fn run(
        self,
        guard: Guard,
        source: SourceId,
        client_ref: ClientRef,
        dicom: Bytes,
        received: SystemTime,
        request_share: OwnedSemaphorePermit,
    ) {
        // The slot is never closed; without one (impossible) the decode would still be bounded by the
        // source's in-flight limit.
        let slot = self.decode_slots.clone().acquire_owned().await.ok();
        let limits = self.limits;
        let budget = self.decoded_budget.clone();
        let registry = self.registry.clone();
        let catalog = self.catalog.clone();
        let arrival_ref = client_ref.clone();
        let span = tracing::Span::current();
        let joined = tokio::task::spawn_blocking(move || {
            // the blocking thread does not inherit the task's span
            let _entered = span.enter();
            // The slot and the request bytes' share belong to the decode itself: when the sender
            // vanishes this task is aborted, but the blocking decode runs on, and must go on counting
            // against the global limits until it ends. The guard travels with it for the same reason.
            let mut guard = guard;
            let _slot = slot;
            let _running = probe::Decoding::start();
            let read = read_header(&dicom, &limits, Some(budget.as_ref())).and_then(identified);
            match &read {
                Ok(header) => name_span(
                    &span,
                    Some(&header.meta().study_instance_uid),
                    Some(&header.meta().sop_instance_uid),
                ),
                Err(rejection) => name_span(
                    &span,
                    rejection.study_instance_uid.as_deref(),
                    rejection.sop_instance_uid.as_deref(),
                ),
            }
            let outcome = match read {
                Err(rejection) => Decoded::HeaderRejected(rejection),
                Ok(header) => match catalog.route(header.meta()) {
                    Err(no_route) => Decoded::NoModel(no_model(header.meta(), no_route.message)),
                    Ok(routes) => {
                        let meta = Arc::new(header.meta().clone());
                        guard.key = Some(InstanceKey {
                            study: meta.study_instance_uid.clone(),
                            sop: meta.sop_instance_uid.clone(),
                        });
                        let admission = registry.arrived_blocking(Arrival {
                            source,
                            client_ref: arrival_ref,
                            meta: meta.clone(),
                            frames: header.frames(),
                            routed: routes.iter().map(|r| Pin::of(&r.active)).collect(),
                        });
                        match admission {
                            Admission::Duplicate => Decoded::Duplicate,
                            Admission::Decode(pins) => Decoded::Pixels {
                                meta,
                                // native pixels stay in the message: its bytes are the frames
                                result: header.decode_pixels_sharing(&dicom, Some(budget.as_ref())),
                                pins,
                                routes,
                            },
                        }
                    }
                },
            };
            // The request's share ends with the decode; where the frames are slices of the message,
            // their decoded-bytes reservation goes on counting those bytes.
            drop(dicom);
            drop(request_share);
            (guard, outcome)
        })
        .await;
        let decoded_at = SystemTime::now();
        let (mut guard, outcome) = match joined {
            Ok(done) => done,
            Err(join) => {
                // the guard went down with the decode: it reported the instance abandoned
                tracing::error!("an instance decode crashed: {join}");
                return;
            }
        };
        let (meta, instance, pins, routes) = match outcome {
            Decoded::HeaderRejected(rejection) => {
                // logged and counted by the registry, the one place every rejection passes
                guard.armed = false;
                self.registry
                    .header_rejected(source, rejected(&rejection, &client_ref));
                return;
            }
            Decoded::NoModel(mut rejected) => {
                // Only UIDs and defined terms: the message never quotes the Series Description.
                // Logged and counted by the registry.
                guard.armed = false;
                rejected.client_ref = client_ref.to_string();
                self.registry.header_rejected(source, rejected);
                return;
            }
            Decoded::Duplicate => {
                guard.armed = false;
                return;
            }
            Decoded::Pixels {
                meta,
                result,
                pins,
                routes,
            } => (meta, result, pins, routes),
        };
        let key = InstanceKey {
            study: meta.study_instance_uid.clone(),
            sop: meta.sop_instance_uid.clone(),
        };
        let instance = match instance {
            Ok(instance) => Arc::new(instance),
            Err(rejection) => {
                guard.armed = false;
                // logged without the sender's name for it; each sender hears its own
                self.registry.decoded(
                    key,
                    Err(rejected(&rejection, &ClientRef::new(String::new()))),
                );
                return;
            }
        };
        events::InstanceDecoded {
            took: decoded_at.duration_since(received).unwrap_or_default(),
        }
        .emit();
        let times = Times {
            received,
            decoded: decoded_at,
        };
        // 2.5D models: the frames join their series' neighbour assembly (before the registry hears
        // of the decode, see `stacks`); the 2D models score them here.
        let (stacked, flat): (Vec<Pin>, Vec<Pin>) = pins.into_iter().partition(|pin| {
            pin.served
                .as_ref()
                .is_some_and(|s| s.manifest.input.context > 0)
        });
        let mut ready = Vec::new();
        for pin in &stacked {
            if let Some(served) = &pin.served {
                served.counters.instances.fetch_add(1, Ordering::Relaxed);
                let context = served.manifest.input.context;
                ready.extend(
                    self.stacks
                        .insert(pin, context, &instance, &meta, times, &key),
                );
            }
        }
        self.registry.decoded(key.clone(), Ok(()));
        // Every pinned version holds its engine while the study is open; one without (a registry
        // that could not pin, which the service's never is) leaves its frames failed, not lost.
        let models: Vec<(Pin, Option<Arc<Served>>)> = flat
            .into_iter()
            .map(|pin| {
                let shadow = pin.served.as_ref().and_then(|served| {
                    routes
                        .iter()
                        .find(|r| r.active.info.name == served.info.name)
                        .and_then(|r| r.shadow.clone())
                });
                (pin, shadow)
            })
            .collect();
        for (pin, shadow) in &models {
            for served in pin.served.iter().chain(shadow) {
                served.counters.instances.fetch_add(1, Ordering::Relaxed);
            }
        }
        let frames = instance.frames.len();
        let mut pending = Vec::with_capacity(frames * models.len());
        for frame in 0..frames {
            for (pin, shadow) in &models {
                let submitted = match &pin.served {
                    Some(served) => served.engine().submit(instance.clone(), frame).await,
                    None => Err(EngineError::ShutDown),
                };
                let shadowed = match shadow {
                    Some(s) => s
                        .engine()
                        .submit(instance.clone(), frame)
                        .await
                        .ok()
                        .map(|rx| (s.clone(), rx)),
                    None => None,
                };
                pending.push((frame, pin, submitted, shadowed));
            }
        }
        for (frame, pin, submitted, shadowed) in pending {
            let result = match submitted {
                Ok(rx) => rx.await.unwrap_or(Err(EngineError::ShutDown)),
                Err(e) => Err(e),
            };
            // The finding goes out first: a shadow never delays what a radiologist sees.
            let active_scores = result.as_ref().ok().map(|r| r.scores.clone());
            report_slice(
                &self.registry,
                &key,
                &instance,
                &meta,
                frame,
                pin,
                times,
                result,
            )
            .await;
            if let (Some((shadow, rx)), Some(active), Some(served)) =
                (shadowed, active_scores, &pin.served)
            {
                // The candidate's scores are compared, never reported.
                if let Ok(Ok(candidate)) = rx.await {
                    shadow
                        .counters
                        .slices_scored
                        .fetch_add(1, Ordering::Relaxed);
                    self.catalog
                        .record_shadow(served, &shadow, &active, &candidate.scores);
                }
            }
        }
        stacks::score(&self.registry, ready).await;
        guard.armed = false;
    }
}

/// Reports one frame's outcome in one model; a positive one gets its overlay rendered and stored
/// after (off the alert's path).
#[allow(clippy::too_many_arguments)]
pub(super) async fn report_slice(
    registry: &Registry,
    key: &InstanceKey,
    instance: &Arc<DecodedInstance>,
    meta: &crate::decode::InstanceMeta,
    frame: usize,
    pin: &Pin,
    times: Times,
    result: Result<ScoredSlice, EngineError>,
) {
    let served = pin.served.as_ref();
    let scored = match (result, served) {
        (Ok(scored), Some(served)) => {
            served
                .counters
                .slices_scored
                .fetch_add(1, Ordering::Relaxed);
            (scored, served)
        }
        (Err(error), _) => {
            if let Some(served) = served {
                served
                    .counters
                    .slices_failed
                    .fetch_add(1, Ordering::Relaxed);
            }
            // logged and counted by the registry (`SliceFailed`)
            registry.slice_done(
                key.clone(),
                frame as u32,
                Err(SliceFailure {
                    reason: engine_reason(&error),
                    message: error.to_string(),
                    model: Some(pin.rules.model.clone()),
                }),
            );
            return;
        }
        (Ok(_), None) => return,
    };
    let (scored, served) = scored;
    let id = results::slice_id(meta, frame as u32);
    let mut finding = results::slice_finding(
        &served.manifest,
        &served.info,
        meta,
        &id,
        "",
        &scored,
        times,
        served.engine().preprocess_path(),
    );
    let positive = finding.scores.iter().any(|s| s.positive);
    // one overlay per slice: drawn for the first model that finds something there
    finding.overlay = positive;
    let shown = positive.then(|| finding.clone());
    registry.slice_done(key.clone(), frame as u32, Ok((finding, scored.scores)));
    if let Some(finding) = shown {
        let instance = instance.clone();
        let png = tokio::task::spawn_blocking(move || {
            overlay::render_png(&instance, frame as u32, &finding)
        })
        .await;
        match png {
            Ok(Ok(png)) => registry.overlay(Overlay {
                study: key.study.clone(),
                sop: key.sop.clone(),
                frame: frame as u32,
                png,
            }),
            Ok(Err(e)) => tracing::warn!(frame, "overlay not rendered: {e}"),
            Err(e) => tracing::warn!(frame, "overlay not rendered: {e}"),
        }
    }
}

/// Fills in the instance's span with the UIDs its header gave (read and checked: a malformed UID is
/// already its stand-in, so nothing the sender wrote is quoted).
fn name_span(span: &tracing::Span, study: Option<&str>, sop: Option<&str>) {
    if let Some(study) = study {
        span.record("study_instance_uid", study);
    }
    if let Some(sop) = sop {
        span.record("sop_instance_uid", sop);
    }
}

/// The registry places an instance by its Study and SOP Instance UIDs (DICOM type 1): without them it
/// would be merged into a study of everything unnamed, or taken for a re-send of another instance.
// The `Rejection` is large; it is made once per rejected instance.
#[allow(clippy::result_large_err)]
fn identified(header: InstanceHeader<'_>) -> Result<InstanceHeader<'_>, Rejection> {
    let meta = header.meta();
    let missing = if meta.study_instance_uid.is_empty() {
        "StudyInstanceUID (0020,000D)"
    } else if meta.sop_instance_uid.is_empty() {
        "SOPInstanceUID (0008,0018)"
    } else {
        return Ok(header);
    };
    let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
    Err(Rejection {
        sop_instance_uid: nonempty(&meta.sop_instance_uid),
        study_instance_uid: nonempty(&meta.study_instance_uid),
        series_instance_uid: nonempty(&meta.series_instance_uid),
        error: DecodeError::MissingAttribute { name: missing },
    })
}

/// The rejection of an instance no model's rules admit, carrying its UIDs like other header
/// rejections; the sender's name for it is filled in by the caller.
fn no_model(meta: &crate::decode::InstanceMeta, message: String) -> pb::InstanceRejected {
    pb::InstanceRejected {
        client_ref: String::new(),
        sop_instance_uid: meta.sop_instance_uid.clone(),
        study_instance_uid: meta.study_instance_uid.clone(),
        series_instance_uid: meta.series_instance_uid.clone(),
        reason: pb::RejectReason::NoModel as i32,
        message,
        frame: None,
        model: None,
    }
}

/// The wire form of a decode rejection.
fn rejected(rejection: &Rejection, client_ref: &ClientRef) -> pb::InstanceRejected {
    pb::InstanceRejected {
        client_ref: client_ref.to_string(),
        sop_instance_uid: rejection.sop_instance_uid.clone().unwrap_or_default(),
        study_instance_uid: rejection.study_instance_uid.clone().unwrap_or_default(),
        series_instance_uid: rejection.series_instance_uid.clone().unwrap_or_default(),
        reason: reject_reason(&rejection.error) as i32,
        message: rejection.error.to_string(),
        frame: None,
        model: None,
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

/// The wire reason for a slice that failed after acceptance.
pub(crate) fn engine_reason(error: &EngineError) -> pb::RejectReason {
    match error {
        EngineError::Preprocess(_) | EngineError::GpuRequired(_) => pb::RejectReason::Preprocess,
        EngineError::Inference(_) | EngineError::Panicked(_) => pb::RejectReason::Inference,
        EngineError::ShutDown | EngineError::Thread(_) => pb::RejectReason::Overloaded,
    }
}
