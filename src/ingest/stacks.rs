//! 2.5D models in the intake: a slice of a model with `context = k` is scored from its 2k+1 neighbours,
//! which arrive in other instances, on other tasks, maybe on other streams. So its frames are not
//! submitted by their own instance's task: they go into the neighbour assembly of their model version
//! ([`ContextAssembler`], one per version, keyed by study and series), and whichever task's insert makes
//! a stack certain submits and reports it. What is still held when the study would complete (end of
//! study, streams closed, idle: the registry reports the study quiet) is released with its edges
//! replicated by a flusher task.
//!
//! A frame is inserted before the registry hears that its instance decoded, so a quiet report (which
//! the registry makes only once every instance of the study has decoded) never overtakes a frame on
//! its way into the assembly.
//!
//! Held frames keep their share of the decoded-pixel budget, which every decode waits for: slices
//! that arrive far out of order could fill it while waiting for neighbours whose decode waits for
//! room, and every stream would stall. So what the assemblies hold is capped at half the budget; past
//! it, the series holding the most beyond what an in-order series needs (2k+2 frames) is shed: its
//! waiting and later slices are answered `OVERLOADED` with what to do, never scored with other
//! neighbours. A series sent in slice order is never shed.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use crate::{
    decode::{DecodedInstance, InstanceMeta},
    pipeline::EngineError,
    proto::v1 as pb,
    results::{self, Arrival as Times},
    study::{
        context::{ContextAssembler, ContextError, Ready, SlicePlace},
        InstanceKey, Pin, Registry, SliceFailure,
    },
};

/// One frame waiting in an assembly, with what its report needs.
#[derive(Clone)]
pub(crate) struct Held {
    pub instance: Arc<DecodedInstance>,
    pub frame: usize,
    pub meta: Arc<InstanceMeta>,
    pub times: Times,
    pub key: InstanceKey,
}

/// One 2.5D model version's assembly.
struct Assembly {
    /// The version; its hold on the engine is let go while no series is open.
    pin: Pin,
    assembler: ContextAssembler<Held>,
    /// Decoded bytes of one frame, per open series (for the cap).
    frame_bytes: HashMap<String, u64>,
}

type Assemblies = HashMap<String, Assembly>;

/// Every 2.5D model version's neighbour assembly.
#[derive(Clone)]
pub(crate) struct Stacks {
    inner: Arc<Mutex<Assemblies>>,
    /// Decoded bytes the assemblies may hold together.
    cap_bytes: u64,
}

impl std::fmt::Debug for Stacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stacks").finish_non_exhaustive()
    }
}

fn series_key(meta: &InstanceMeta) -> String {
    format!("{}\n{}", meta.study_instance_uid, meta.series_instance_uid)
}

impl Stacks {
    /// Assemblies that may hold up to `cap_bytes` of decoded frames together.
    pub fn new(cap_bytes: u64) -> Self {
        Self {
            inner: Arc::default(),
            cap_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Assemblies> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts every frame of an instance into `pin`'s assembly; returns the stacks now certain (and
    /// the slices shed to stay within the cap).
    pub fn insert(
        &self,
        pin: &Pin,
        context: u32,
        instance: &Arc<DecodedInstance>,
        meta: &Arc<InstanceMeta>,
        times: Times,
        key: &InstanceKey,
    ) -> Vec<(Pin, Ready<Held>)> {
        let model = format!("{} {}", pin.rules.model.name, pin.rules.model.version);
        let mut all = self.lock();
        let entry = all.entry(model).or_insert_with(|| Assembly {
            pin: pin.clone(),
            assembler: ContextAssembler::new(context),
            frame_bytes: HashMap::new(),
        });
        if entry.pin.served.is_none() {
            entry.pin = pin.clone();
        }
        let series = series_key(meta);
        let frame_bytes = instance
            .frames
            .first()
            .map_or(0, |f| f.samples().as_bytes().len() as u64);
        entry.frame_bytes.insert(series.clone(), frame_bytes);
        let position = results::slice_position(meta);
        let mut ready = Vec::new();
        for frame in 0..instance.frames.len() {
            let place = SlicePlace {
                position,
                instance_number: meta.instance_number,
                sop_instance_uid: meta.sop_instance_uid.clone(),
                frame: frame as u32,
            };
            let held = Held {
                instance: instance.clone(),
                frame,
                meta: meta.clone(),
                times,
                key: key.clone(),
            };
            let pin = entry.pin.clone();
            ready.extend(
                entry
                    .assembler
                    .insert(&series, place, held)
                    .into_iter()
                    .map(|r| (pin.clone(), r)),
            );
        }
        ready.extend(self.shed_over_cap(&mut all));
        ready
    }

    /// Sheds the series holding the most beyond an in-order series' need while the assemblies hold
    /// more than the cap (see the module docs).
    fn shed_over_cap(&self, all: &mut Assemblies) -> Vec<(Pin, Ready<Held>)> {
        let mut shed = Vec::new();
        loop {
            let mut total = 0u64;
            let mut worst: Option<(u64, String, String)> = None;
            for (model, a) in all.iter() {
                let in_order = 2 * u64::from(a.assembler.context()) + 2;
                for series in a.assembler.open_series() {
                    let held = a.assembler.held(series) as u64;
                    let bytes = a.frame_bytes.get(series).copied().unwrap_or(0);
                    total = total.saturating_add(held.saturating_mul(bytes));
                    let excess = held.saturating_sub(in_order).saturating_mul(bytes);
                    if excess > 0 && worst.as_ref().is_none_or(|(w, _, _)| excess > *w) {
                        worst = Some((excess, model.clone(), series.to_string()));
                    }
                }
            }
            let Some((_, model, series)) = worst.filter(|_| total > self.cap_bytes) else {
                return shed;
            };
            let Some(a) = all.get_mut(&model) else {
                return shed;
            };
            tracing::warn!(
                model = %model,
                held_bytes = total,
                cap_bytes = self.cap_bytes,
                "a series' slices arrived too far out of order for a 2.5D model; shedding it"
            );
            let pin = a.pin.clone();
            shed.extend(
                a.assembler
                    .shed(&series)
                    .into_iter()
                    .map(|r| (pin.clone(), r)),
            );
            a.frame_bytes.remove(&series);
        }
    }

    /// Everything still held for `study`, released with edges replicated; an assembly left with no
    /// open series lets go of its model version (it keeps the closed series' places, so a late slice
    /// is recognised).
    pub fn release_study(&self, study: &str) -> Vec<(Pin, Ready<Held>)> {
        let prefix = format!("{study}\n");
        let mut all = self.lock();
        let mut ready = Vec::new();
        for a in all.values_mut() {
            let series: Vec<String> = a
                .assembler
                .open_series()
                .filter(|s| s.starts_with(&prefix))
                .map(str::to_string)
                .collect();
            for s in series {
                let pin = a.pin.clone();
                ready.extend(
                    a.assembler
                        .complete(&s)
                        .into_iter()
                        .map(|r| (pin.clone(), r)),
                );
                a.frame_bytes.remove(&s);
            }
            if a.assembler.open_series().next().is_none() {
                // the stacks released above carry their own pin
                a.pin.served = None;
            }
        }
        ready
    }

    /// Releases what a quiet study holds, for as long as the registry runs.
    pub fn spawn_flusher(&self, registry: &Registry) {
        let Some(mut quiet) = registry.take_quiet() else {
            return;
        };
        let weak = registry.downgrade();
        let stacks = self.clone();
        tokio::spawn(async move {
            while let Some(study) = quiet.recv().await {
                let ready = stacks.release_study(&study);
                if ready.is_empty() {
                    continue;
                }
                let Some(registry) = weak.upgrade() else {
                    return;
                };
                tokio::spawn(async move { score(&registry, ready).await });
            }
        });
    }
}

/// Submits each certain stack to its model's engine, then reports every answer.
pub(crate) async fn score(registry: &Registry, ready: Vec<(Pin, Ready<Held>)>) {
    let mut pending = Vec::with_capacity(ready.len());
    for (pin, r) in ready {
        let submitted = match (&pin.served, r.stack) {
            (Some(served), Ok(stack)) => {
                let frames = stack.into_iter().map(|h| (h.instance, h.frame)).collect();
                served.engine().submit_stack(frames).await.map_err(Some)
            }
            (None, _) => Err(Some(EngineError::ShutDown)),
            (Some(_), Err(e)) => {
                let reason = match e {
                    ContextError::Shed => pb::RejectReason::Overloaded,
                    _ => pb::RejectReason::Preprocess,
                };
                registry.slice_done(
                    r.centre.key.clone(),
                    r.centre.frame as u32,
                    Err(SliceFailure {
                        reason,
                        message: e.to_string(),
                        model: Some(pin.rules.model.clone()),
                    }),
                );
                Err(None)
            }
        };
        pending.push((pin, r.centre, submitted));
    }
    for (pin, held, submitted) in pending {
        let result = match submitted {
            Ok(rx) => rx.await.unwrap_or(Err(EngineError::ShutDown)),
            Err(Some(e)) => Err(e),
            Err(None) => continue,
        };
        super::intake::report_slice(
            registry,
            &held.key,
            &held.instance,
            &held.meta,
            held.frame,
            &pin,
            held.times,
            result,
        )
        .await;
    }
}
