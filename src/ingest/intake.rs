//! One instance's way through the service, whatever transport brought it: header read → study
//! registry (is it new, or a re-sent duplicate?) → pixel decode → scoring → registry. The transport
//! (the gRPC session today, a DICOM association later) hands bytes in and hears the outcome through
//! the results hub; nothing here knows gRPC.
//!
//! The header is read first and reported at once, so the study's bookkeeping never waits for pixels,
//! and a duplicate is never decoded. An instance the model is not for (its manifest's `[applies_to]`
//! rules, see `model::rules`) is refused right after its header is read, before the registry is asked:
//! it is rejected with its UIDs and the rule that excluded it, never decoded, scored or accepted. Every instance ends in exactly one report to the registry about
//! its header (arrived, rejected, or abandoned before it was read) and, once arrived, in a report for
//! its pixels and each of its frames; when the task is cut off (its sender went away) a guard reports
//! what is left as abandoned, so no study waits forever for it. The decode keeps its slot and its
//! budget shares until the decode itself ends, even when its task is aborted meanwhile.

use std::{sync::Arc, time::SystemTime};

use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{budget::ByteBudget, probe};
use crate::{
    decode::{read_header, DecodeError, DecodedInstance, InstanceHeader, Limits, Rejection},
    pipeline::{Engine, EngineError, ScoredSlice},
    proto::v1 as pb,
    results::{
        self,
        hub::{ClientRef, SourceId},
        log::Overlay,
        overlay, Arrival as Times,
    },
    study::{Admission, Arrival, InstanceKey, Registry, SliceFailure},
};

/// What every transport shares: the engine, the registry, and the service-wide decode limits.
#[derive(Debug, Clone)]
pub struct Intake {
    pub(crate) engine: Arc<Engine>,
    pub(crate) registry: Registry,
    pub(crate) limits: Limits,
    /// Caps concurrent decodes across all sources (decode is CPU-bound).
    pub(crate) decode_slots: Arc<Semaphore>,
    /// Decoded pixels between decode and scoring, across all sources.
    pub(crate) decoded_budget: Arc<ByteBudget>,
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
    /// The model's rules exclude the instance (`REJECT_REASON_NO_MODEL`).
    NoModel(pb::InstanceRejected),
    Duplicate,
    Pixels {
        meta: Arc<crate::decode::InstanceMeta>,
        result: Result<DecodedInstance, Rejection>,
    },
}

impl Intake {
    pub fn new(
        engine: Arc<Engine>,
        registry: Registry,
        limits: Limits,
        decoded_budget: Arc<ByteBudget>,
    ) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        Self {
            engine,
            registry,
            limits,
            decode_slots: Arc::new(Semaphore::new(cores)),
            decoded_budget,
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
        async move {
            this.run(guard, source, client_ref, dicom, received, request_share)
                .await
        }
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
        let engine = self.engine.clone();
        let arrival_ref = client_ref.clone();
        let joined = tokio::task::spawn_blocking(move || {
            // The slot and the request bytes' share belong to the decode itself: when the sender
            // vanishes this task is aborted, but the blocking decode runs on, and must go on counting
            // against the global limits until it ends. The guard travels with it for the same reason.
            let mut guard = guard;
            let _slot = slot;
            let _running = probe::Decoding::start();
            let outcome =
                match read_header(&dicom, &limits, Some(budget.as_ref())).and_then(identified) {
                    Err(rejection) => Decoded::HeaderRejected(rejection),
                    Ok(header) => match engine.manifest().rules.admits(header.meta()) {
                        Err(exclusion) => Decoded::NoModel(no_model(header.meta(), &exclusion)),
                        Ok(()) => {
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
                            });
                            match admission {
                                Admission::Duplicate => Decoded::Duplicate,
                                Admission::Decode => Decoded::Pixels {
                                    meta,
                                    result: header.decode_pixels(Some(budget.as_ref())),
                                },
                            }
                        }
                    },
                };
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
        let (meta, instance) = match outcome {
            Decoded::HeaderRejected(rejection) => {
                log_rejection(&rejection);
                guard.armed = false;
                self.registry
                    .header_rejected(source, rejected(&rejection, &client_ref));
                return;
            }
            Decoded::NoModel(mut rejected) => {
                // Only UIDs and defined terms: the message never quotes the Series Description.
                tracing::info!(
                    sop_instance_uid = %rejected.sop_instance_uid,
                    "instance rejected: {}",
                    rejected.message
                );
                guard.armed = false;
                rejected.client_ref = client_ref.to_string();
                self.registry.header_rejected(source, rejected);
                return;
            }
            Decoded::Duplicate => {
                guard.armed = false;
                return;
            }
            Decoded::Pixels { meta, result } => (meta, result),
        };
        let key = InstanceKey {
            study: meta.study_instance_uid.clone(),
            sop: meta.sop_instance_uid.clone(),
        };
        let instance = match instance {
            Ok(instance) => Arc::new(instance),
            Err(rejection) => {
                log_rejection(&rejection);
                guard.armed = false;
                // logged without the sender's name for it; each sender hears its own
                self.registry.decoded(
                    key,
                    Err(rejected(&rejection, &ClientRef::new(String::new()))),
                );
                return;
            }
        };
        self.registry.decoded(key.clone(), Ok(()));
        let times = Times {
            received,
            decoded: decoded_at,
        };
        let frames = instance.frames.len();
        let mut pending = Vec::with_capacity(frames);
        for frame in 0..frames {
            pending.push((frame, self.engine.submit(instance.clone(), frame).await));
        }
        for (frame, submitted) in pending {
            let result = match submitted {
                Ok(rx) => rx.await.unwrap_or(Err(EngineError::ShutDown)),
                Err(e) => Err(e),
            };
            self.report_slice(&key, &instance, &meta, frame, times, result)
                .await;
        }
        guard.armed = false;
    }

    /// Reports one frame's outcome; a positive one gets its overlay rendered and stored after (off the
    /// alert's path).
    async fn report_slice(
        &self,
        key: &InstanceKey,
        instance: &Arc<DecodedInstance>,
        meta: &crate::decode::InstanceMeta,
        frame: usize,
        times: Times,
        result: Result<ScoredSlice, EngineError>,
    ) {
        let scored = match result {
            Ok(scored) => scored,
            Err(error) => {
                tracing::warn!(sop_instance_uid = %meta.sop_instance_uid, frame, "slice failed: {error}");
                self.registry.slice_done(
                    key.clone(),
                    frame as u32,
                    Err(SliceFailure {
                        reason: engine_reason(&error),
                        message: error.to_string(),
                    }),
                );
                return;
            }
        };
        let engine = &self.engine;
        let id = results::slice_id(meta, frame as u32);
        let mut finding = results::slice_finding(
            engine.manifest(),
            engine.model(),
            meta,
            &id,
            "",
            &scored,
            times,
            engine.preprocess_path(),
        );
        let positive = finding.scores.iter().any(|s| s.positive);
        finding.overlay = positive;
        let shown = positive.then(|| finding.clone());
        self.registry
            .slice_done(key.clone(), frame as u32, Ok((finding, scored.scores)));
        if let Some(finding) = shown {
            let instance = instance.clone();
            let png = tokio::task::spawn_blocking(move || {
                overlay::render_png(&instance, frame as u32, &finding)
            })
            .await;
            match png {
                Ok(Ok(png)) => self.registry.overlay(Overlay {
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

/// The rejection of an instance the model's rules exclude, carrying its UIDs
/// like other header rejections; the sender's name for it is filled in by the caller.
fn no_model(
    meta: &crate::decode::InstanceMeta,
    exclusion: &crate::model::Exclusion,
) -> pb::InstanceRejected {
    pb::InstanceRejected {
        client_ref: String::new(),
        sop_instance_uid: meta.sop_instance_uid.clone(),
        study_instance_uid: meta.study_instance_uid.clone(),
        series_instance_uid: meta.series_instance_uid.clone(),
        reason: pb::RejectReason::NoModel as i32,
        message: exclusion.to_string(),
        frame: None,
    }
}

fn log_rejection(rejection: &Rejection) {
    tracing::info!(
        sop_instance_uid = rejection
            .sop_instance_uid
            .as_deref()
            .unwrap_or("unreadable"),
        code = rejection.error.code(),
        "instance rejected: {}",
        rejection.error
    );
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
