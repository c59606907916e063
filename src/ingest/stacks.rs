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
        context::{ContextAssembler, Ready, SlicePlace},
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

type Assemblies = HashMap<String, (Pin, ContextAssembler<Held>)>;

/// Every 2.5D model version's neighbour assembly.
#[derive(Clone, Default)]
pub(crate) struct Stacks {
    inner: Arc<Mutex<Assemblies>>,
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
    fn lock(&self) -> MutexGuard<'_, Assemblies> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts every frame of an instance into `pin`'s assembly; returns the stacks now certain.
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
        let (pin, assembly) = all
            .entry(model)
            .or_insert_with(|| (pin.clone(), ContextAssembler::new(context)));
        let series = series_key(meta);
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
            ready.extend(
                assembly
                    .insert(&series, place, held)
                    .into_iter()
                    .map(|r| (pin.clone(), r)),
            );
        }
        ready
    }

    /// Everything still held for `study`, released with edges replicated; assemblies left empty are
    /// dropped (with them, their hold on the model version).
    pub fn release_study(&self, study: &str) -> Vec<(Pin, Ready<Held>)> {
        let prefix = format!("{study}\n");
        let mut all = self.lock();
        let mut ready = Vec::new();
        for (pin, assembly) in all.values_mut() {
            let series: Vec<String> = assembly
                .open_series()
                .filter(|s| s.starts_with(&prefix))
                .map(str::to_string)
                .collect();
            for s in series {
                ready.extend(assembly.complete(&s).into_iter().map(|r| (pin.clone(), r)));
            }
        }
        all.retain(|_, (_, assembly)| assembly.open_series().next().is_some());
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
                registry.slice_done(
                    r.centre.key.clone(),
                    r.centre.frame as u32,
                    Err(SliceFailure {
                        reason: pb::RejectReason::Preprocess,
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
