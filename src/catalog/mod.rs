//! Which model versions are loaded, which one of each model serves, and which instances go to which
//! model. ML engineers change models while studies stream, so three things must hold at once:
//!
//! - **Nothing unvalidated serves.** A version is loaded (manifest parsed, graph checked against it, a
//!   dry run at the largest batch) on a blocking thread while the active version keeps serving; only a
//!   version that loaded is `Ready`, and only a ready version can be activated. A failed load is kept
//!   in the list with its reason, so `radstream models list` says why a dropped-in version is not live.
//! - **Swaps are atomic and per study.** The routing table (active version, shadow candidate, per model)
//!   is an immutable value behind an [`ArcSwap`]: the intake reads it per instance without a lock, and
//!   an activation publishes a whole new table. The study registry pins each study to the versions its
//!   first instance was routed to, so a study in flight finishes on the version it started with while
//!   new studies get the new one. A pinned [`Served`] is reference-counted: unloading a version only
//!   removes it from the catalog; studies pinned to it finish on it, and its engine stops when the last
//!   of them lets go.
//! - **Models are isolated.** Each version has its own engine (queue, batching worker, ONNX session),
//!   so batches never mix models and one model's failures or stalls never touch another's slices.
//!
//! Routing is by each active model's `[applies_to]` rules: an instance goes to every model whose rules
//! admit it (a CT head study may go to two models), and is rejected with every model's reason when none
//! does. A shadow candidate scores the same slices as the active version of its model; its findings are
//! never published, only compared (see [`shadow`]).

pub mod repository;
pub mod shadow;
pub mod watcher;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{atomic::AtomicU64, Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use arc_swap::ArcSwap;
use semver::Version;
use tokio::sync::watch;

use crate::{
    config::{BatchingConfig, InferenceConfig, PreprocessBackend},
    decode::InstanceMeta,
    model::{Manifest, ManifestError, ModelInfo, ModelPackage},
    pipeline::{Engine, EngineError, EngineHealth},
    proto::v1 as pb,
};

pub use shadow::{LabelAgreement, ShadowReport};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The engine's error names the model where it matters (a graph that does not fit its manifest);
    /// `model` is for logs and matching.
    #[error("{source}")]
    Engine { model: String, source: EngineError },
    #[error("{0}")]
    Repository(String),
    #[error("no model {name} version {version} is loaded (see `radstream models list`)")]
    NotLoaded { name: String, version: String },
    #[error("no model named {name} is loaded (see `radstream models list`)")]
    UnknownModel { name: String },
    #[error("model {name} {version} is {state}: only a ready version can {action}")]
    NotReady {
        name: String,
        version: String,
        state: String,
        action: &'static str,
    },
    #[error("model {name} {version} is already loaded; unload it first to load it again")]
    AlreadyLoaded { name: String, version: String },
    #[error(
        "model {name} {version} is the active version: activate another version (or roll back) \
         before unloading it"
    )]
    UnloadActive { name: String, version: String },
    #[error("model {name} has no earlier active version that is still loaded to roll back to")]
    NoRollback { name: String },
    #[error("model {name} {version} is the active version: a shadow must be another version")]
    ShadowIsActive { name: String, version: String },
    #[error(
        "model {name} is a 2.5D model ([input] context): shadow runs are not supported for 2.5D \
         models yet; compare versions by activating one and rolling back"
    )]
    ShadowOfContextModel { name: String },
    #[error("the model loader crashed: {0}")]
    Crashed(String),
}

/// How every engine is built: the same for each model.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    pub backend: PreprocessBackend,
    pub batching: BatchingConfig,
    pub inference: InferenceConfig,
    pub stall_timeout: std::time::Duration,
}

impl EngineSettings {
    /// The engine settings of a service configuration.
    pub fn of(config: &crate::config::Config) -> Self {
        Self {
            backend: config.preprocess,
            batching: config.batching.clone(),
            inference: config.inference.clone(),
            stall_timeout: config.stall_timeout(),
        }
    }
}

/// Per-version counters, shown in the model list.
#[derive(Debug, Default)]
pub struct Counters {
    pub instances: AtomicU64,
    pub slices_scored: AtomicU64,
    pub slices_failed: AtomicU64,
}

/// A loaded, validated model version and its engine.
pub struct Served {
    pub info: ModelInfo,
    pub manifest: Arc<Manifest>,
    pub version: Version,
    /// Where it was loaded from (`None`: built into the binary).
    pub dir: Option<PathBuf>,
    pub loaded_at: SystemTime,
    pub counters: Counters,
    engine: Option<Arc<Engine>>,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("model", &self.info)
            .finish_non_exhaustive()
    }
}

impl Served {
    pub fn engine(&self) -> &Arc<Engine> {
        // Only `Drop` takes it.
        self.engine.as_ref().expect("a served model has its engine")
    }

    /// `name version`, as messages spell a model.
    pub fn label(&self) -> String {
        format!("{} {}", self.info.name, self.info.version)
    }

    pub fn model_ref(&self) -> pb::ModelRef {
        crate::results::model_ref(&self.info)
    }
}

impl Drop for Served {
    /// Stopping an engine waits for its worker to answer what is queued (a detached worker could still
    /// be inside ONNX Runtime while the process tears the library down). The last holder of a version
    /// may be an async task (an unload, the registry letting go of a study): on a multi-threaded
    /// runtime the wait is moved off the async threads' duty.
    fn drop(&mut self) {
        let Some(engine) = self.engine.take() else {
            return;
        };
        let name = self.label();
        let stop = move || drop(engine);
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(stop),
            _ => stop(),
        }
        tracing::info!(model = %name, "model version stopped");
    }
}

/// One model the intake routes to: its active version and, when one is set, the shadow candidate.
#[derive(Debug, Clone)]
pub struct Route {
    pub active: Arc<Served>,
    pub shadow: Option<Arc<Served>>,
}

/// The published routing table: one entry per model with an active version, by name.
#[derive(Debug, Default)]
struct RouteTable {
    routes: Vec<Route>,
}

/// Why an instance goes to no model: each active model's reason.
#[derive(Debug, Clone)]
pub struct NoRoute {
    pub message: String,
}

/// A version's state in the list.
#[derive(Debug, Clone)]
pub enum VersionState {
    Loading,
    Ready(Arc<Served>),
    Failed(String),
}

#[derive(Debug, Default)]
struct ModelEntry {
    versions: BTreeMap<Version, (VersionState, Option<PathBuf>)>,
    active: Option<Version>,
    /// Versions that were active before, most recent last: what rollback returns to.
    history: Vec<Version>,
    shadow: Option<Version>,
}

/// One version as `models list` shows it.
#[derive(Debug, Clone)]
pub struct VersionStatus {
    pub name: String,
    pub version: String,
    pub state: &'static str,
    pub reason: String,
    pub active: bool,
    pub shadow: bool,
    pub served: Option<Arc<Served>>,
    pub dir: Option<PathBuf>,
}

struct Inner {
    env: &'static ort::environment::Environment,
    settings: EngineSettings,
    models: Mutex<BTreeMap<String, ModelEntry>>,
    routes: ArcSwap<RouteTable>,
    shadow: shadow::ShadowBook,
    health: watch::Sender<u64>,
    /// Where the active and shadow choices are kept across restarts (`DATA_DIR/models.json`).
    choices: Mutex<Option<PathBuf>>,
}

/// What an operator chose for one model, kept across restarts: a rollback must survive one.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Choice {
    pub active: Option<String>,
    pub shadow: Option<String>,
}

/// Handle to the catalog; cheap to clone.
#[derive(Clone)]
pub struct Catalog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog").finish_non_exhaustive()
    }
}

impl Catalog {
    pub fn new(env: &'static ort::environment::Environment, settings: EngineSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                env,
                settings,
                models: Mutex::new(BTreeMap::new()),
                routes: ArcSwap::from_pointee(RouteTable::default()),
                shadow: shadow::ShadowBook::default(),
                health: watch::Sender::new(0),
                choices: Mutex::new(None),
            }),
        }
    }

    fn models(&self) -> MutexGuard<'_, BTreeMap<String, ModelEntry>> {
        // A panic while holding the lock leaves consistent data (every update is one assignment).
        self.inner
            .models
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Loads and validates a version (blocking: run it off the async threads) and starts its engine.
    /// It is listed as loading meanwhile, and as failed with the reason if it does not load. The first
    /// version of a model becomes active; later ones wait for `activate` (or `activate_new`).
    pub fn load_package(
        &self,
        package: ModelPackage,
        dir: Option<PathBuf>,
    ) -> Result<Arc<Served>, CatalogError> {
        let name = package.info.name.clone();
        let version = repository::parse_version(&package.info.version).map_err(|problem| {
            CatalogError::Repository(format!(
                "model {name}: [model] version = {:?} {problem}",
                package.info.version
            ))
        })?;
        {
            let mut models = self.models();
            let entry = models.entry(name.clone()).or_default();
            match entry.versions.get(&version) {
                Some((VersionState::Ready(_), _)) => {
                    return Err(CatalogError::AlreadyLoaded {
                        name,
                        version: version.to_string(),
                    })
                }
                Some((VersionState::Loading, _)) => {
                    return Err(CatalogError::NotReady {
                        name,
                        version: version.to_string(),
                        state: "still loading".into(),
                        action: "be loaded again",
                    })
                }
                _ => {}
            }
            entry
                .versions
                .insert(version.clone(), (VersionState::Loading, dir.clone()));
        }
        let built = Engine::from_package(
            &package,
            self.inner.env,
            self.inner.settings.backend,
            &self.inner.settings.batching,
            &self.inner.settings.inference,
        );
        match built {
            Ok(engine) => {
                engine.set_stall_timeout(self.inner.settings.stall_timeout);
                Ok(self.admit(Arc::new(engine), version, dir))
            }
            Err(source) => {
                let error = CatalogError::Engine {
                    model: format!("{name} {version}"),
                    source,
                };
                tracing::warn!(model = %name, version = %version, "model version not loaded: {error}");
                let mut models = self.models();
                models
                    .entry(name)
                    .or_default()
                    .versions
                    .insert(version, (VersionState::Failed(error.to_string()), dir));
                self.publish(&models);
                Err(error)
            }
        }
    }

    /// Lists a started engine as a ready version (active if it is its model's first) and publishes.
    fn admit(&self, engine: Arc<Engine>, version: Version, dir: Option<PathBuf>) -> Arc<Served> {
        let served = Arc::new(Served {
            manifest: Arc::new(engine.manifest().clone()),
            info: engine.model().clone(),
            version: version.clone(),
            dir: dir.clone(),
            loaded_at: SystemTime::now(),
            counters: Counters::default(),
            engine: Some(engine),
        });
        tracing::info!(
            model = %served.info.name,
            version = %version,
            sha256 = %served.info.onnx_sha256,
            preprocess = served.engine().preprocess_path(),
            provider = %served.engine().provider(),
            "model version loaded"
        );
        let mut models = self.models();
        let entry = models.entry(served.info.name.clone()).or_default();
        entry
            .versions
            .insert(version.clone(), (VersionState::Ready(served.clone()), dir));
        if entry.active.is_none() {
            entry.active = Some(version);
        }
        self.publish(&models);
        served
    }

    /// Loads the version in `dir` (`models/<name>/<version>/`, or any directory holding a manifest).
    pub fn load_dir(&self, dir: &Path) -> Result<Arc<Served>, CatalogError> {
        let package = ModelPackage::load_dir(dir).inspect_err(|e| {
            self.record_failure(dir, e.to_string());
        })?;
        repository::check_placement(dir, &package.manifest).inspect_err(|e| {
            self.record_failure(dir, e.to_string());
        })?;
        self.load_package(package, Some(dir.to_path_buf()))
    }

    /// A directory that could not even be read as a version is listed as failed under the name and
    /// version its path spells, so the list says why a dropped-in version is not live.
    fn record_failure(&self, dir: &Path, reason: String) {
        let Some((name, version)) = repository::spelled_by_path(dir) else {
            return;
        };
        let mut models = self.models();
        let entry = models.entry(name).or_default();
        let ready = matches!(
            entry.versions.get(&version),
            Some((VersionState::Ready(_), _))
        );
        if !ready {
            entry.versions.insert(
                version,
                (VersionState::Failed(reason), Some(dir.to_path_buf())),
            );
        }
        self.publish(&models);
    }

    /// Registers an engine started elsewhere (tests, tools) as a ready version, active if it is the
    /// model's first.
    pub fn add_engine(&self, engine: Arc<Engine>) -> Result<Arc<Served>, CatalogError> {
        let info = engine.model();
        let version = repository::parse_version(&info.version)
            .map_err(|p| CatalogError::Repository(format!("model {}: version {p}", info.name)))?;
        Ok(self.admit(engine, version, None))
    }

    /// Forgets which versions were active before (the activations of a start are not operator
    /// choices to roll back to).
    pub fn forget_history(&self, name: &str) {
        if let Some(entry) = self.models().get_mut(name) {
            entry.history.clear();
        }
    }

    /// How many models have an active version.
    pub fn active_count(&self) -> usize {
        self.inner.routes.load().routes.len()
    }

    /// Makes `version` the active version of `name`: new studies get it from now on; studies in flight
    /// finish on the version they were pinned to.
    pub fn activate(&self, name: &str, version: &str) -> Result<Arc<Served>, CatalogError> {
        let version = self.known_version(name, version)?;
        let mut models = self.models();
        let entry = models
            .get_mut(name)
            .ok_or_else(|| CatalogError::UnknownModel { name: name.into() })?;
        let served = ready(entry, name, &version, "be activated")?;
        if entry.active.as_ref() != Some(&version) {
            if let Some(previous) = entry.active.replace(version.clone()) {
                entry.history.push(previous);
            }
            if entry.shadow.as_ref() == Some(&version) {
                entry.shadow = None;
                self.inner.shadow.reset(name, None);
            }
            tracing::info!(model = %name, version = %version, "model version activated");
        }
        self.publish(&models);
        Ok(served)
    }

    /// Returns `name` to the version that was active before the current one (still loaded); with no
    /// such version (nothing was activated since the start), to the newest ready version older than
    /// the active one.
    pub fn rollback(&self, name: &str) -> Result<Arc<Served>, CatalogError> {
        let mut models = self.models();
        let entry = models
            .get_mut(name)
            .ok_or_else(|| CatalogError::UnknownModel { name: name.into() })?;
        if entry.history.is_empty() {
            let older = entry
                .versions
                .iter()
                .filter(|(v, (state, _))| {
                    matches!(state, VersionState::Ready(_))
                        && entry.active.as_ref().is_some_and(|a| *v < a)
                })
                .map(|(v, _)| v.clone())
                .next_back();
            entry.history.extend(older);
        }
        while let Some(previous) = entry.history.pop() {
            if let Some((VersionState::Ready(served), _)) = entry.versions.get(&previous) {
                let served = served.clone();
                entry.active = Some(previous.clone());
                if entry.shadow.as_ref() == Some(&previous) {
                    entry.shadow = None;
                    self.inner.shadow.reset(name, None);
                }
                tracing::info!(model = %name, version = %previous, "model rolled back");
                self.publish(&models);
                return Ok(served);
            }
        }
        Err(CatalogError::NoRollback { name: name.into() })
    }

    /// Removes a version that is not active: no new study gets it; studies pinned to it finish on it.
    pub fn unload(&self, name: &str, version: &str) -> Result<(), CatalogError> {
        let version = self.known_version(name, version)?;
        let mut models = self.models();
        let entry = models
            .get_mut(name)
            .ok_or_else(|| CatalogError::UnknownModel { name: name.into() })?;
        if entry.active.as_ref() == Some(&version) {
            return Err(CatalogError::UnloadActive {
                name: name.into(),
                version: version.to_string(),
            });
        }
        entry.versions.remove(&version);
        entry.history.retain(|v| v != &version);
        if entry.shadow.as_ref() == Some(&version) {
            entry.shadow = None;
            self.inner.shadow.reset(name, None);
        }
        if entry.versions.is_empty() {
            models.remove(name);
        }
        tracing::info!(model = %name, version = %version, "model version unloaded");
        self.publish(&models);
        Ok(())
    }

    /// Runs `version` (Some) beside the active version of `name` on the same slices, or stops the
    /// shadow (None). Its agreement statistics start from zero.
    pub fn shadow(&self, name: &str, version: Option<&str>) -> Result<(), CatalogError> {
        let version = match version {
            Some(v) => Some(self.known_version(name, v)?),
            None => None,
        };
        let mut models = self.models();
        let entry = models
            .get_mut(name)
            .ok_or_else(|| CatalogError::UnknownModel { name: name.into() })?;
        if let Some(version) = &version {
            let candidate = ready(entry, name, version, "shadow")?;
            let active_context = entry
                .active
                .as_ref()
                .and_then(|a| match entry.versions.get(a) {
                    Some((VersionState::Ready(s), _)) => Some(s.manifest.input.context),
                    _ => None,
                })
                .unwrap_or(0);
            if candidate.manifest.input.context > 0 || active_context > 0 {
                return Err(CatalogError::ShadowOfContextModel { name: name.into() });
            }
            if entry.active.as_ref() == Some(version) {
                return Err(CatalogError::ShadowIsActive {
                    name: name.into(),
                    version: version.to_string(),
                });
            }
        }
        entry.shadow = version.clone();
        self.inner.shadow.reset(name, version.as_ref());
        self.publish(&models);
        Ok(())
    }

    fn known_version(&self, name: &str, version: &str) -> Result<Version, CatalogError> {
        let not_loaded = || CatalogError::NotLoaded {
            name: name.into(),
            version: version.into(),
        };
        let parsed = repository::parse_version(version).map_err(|_| not_loaded())?;
        let models = self.models();
        let entry = models
            .get(name)
            .ok_or_else(|| CatalogError::UnknownModel { name: name.into() })?;
        if entry.versions.contains_key(&parsed) {
            Ok(parsed)
        } else {
            Err(not_loaded())
        }
    }

    /// Keeps the active and shadow choices in `path` from now on (and reads them back with
    /// [`saved_choices`](Self::saved_choices) at the next start).
    pub fn remember_choices_in(&self, path: PathBuf) {
        *self.inner.choices.lock().unwrap_or_else(|p| p.into_inner()) = Some(path);
    }

    /// The choices saved by an earlier run, by model name (empty when none were saved or the file
    /// cannot be read: the newest versions serve then, and the reason is logged).
    pub fn saved_choices(&self) -> BTreeMap<String, Choice> {
        let path = self
            .inner
            .choices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(path) = path else {
            return BTreeMap::new();
        };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{}: cannot read the saved model choices ({e}); the newest versions serve",
                    path.display()
                );
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(
                    "{}: cannot read the saved model choices ({e}); the newest versions serve",
                    path.display()
                );
                BTreeMap::new()
            }
        }
    }

    /// Writes the choices (atomically: a temporary file renamed over the old one).
    fn save_choices(&self, models: &BTreeMap<String, ModelEntry>) {
        let path = self
            .inner
            .choices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(path) = path else {
            return;
        };
        let choices: BTreeMap<&String, Choice> = models
            .iter()
            .map(|(name, e)| {
                (
                    name,
                    Choice {
                        active: e.active.as_ref().map(Version::to_string),
                        shadow: e.shadow.as_ref().map(Version::to_string),
                    },
                )
            })
            .collect();
        let write = || -> std::io::Result<()> {
            let tmp = path.with_extension("json.tmp");
            let json = serde_json::to_vec_pretty(&choices).map_err(std::io::Error::other)?;
            std::fs::write(&tmp, json)?;
            std::fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            tracing::warn!(
                "{}: cannot save the model choices ({e}); after a restart the newest versions serve",
                path.display()
            );
        }
    }

    /// Publishes the routing table the current state implies (under the models lock, so tables are
    /// published in the order of the changes).
    fn publish(&self, models: &BTreeMap<String, ModelEntry>) {
        let routes = models
            .values()
            .filter_map(|entry| {
                let active = match entry.versions.get(entry.active.as_ref()?) {
                    Some((VersionState::Ready(s), _)) => s.clone(),
                    _ => return None,
                };
                let shadow = entry
                    .shadow
                    .as_ref()
                    .and_then(|v| match entry.versions.get(v) {
                        Some((VersionState::Ready(s), _)) => Some(s.clone()),
                        _ => None,
                    });
                Some(Route { active, shadow })
            })
            .collect();
        self.inner.routes.store(Arc::new(RouteTable { routes }));
        self.inner.health.send_modify(|generation| *generation += 1);
        self.save_choices(models);
    }

    /// The models an instance goes to: every active model whose rules admit it.
    pub fn route(&self, meta: &InstanceMeta) -> Result<Vec<Route>, NoRoute> {
        let table = self.inner.routes.load();
        let mut routes = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        for route in &table.routes {
            match route.active.manifest.rules.admits(meta) {
                Ok(()) => routes.push(route.clone()),
                Err(exclusion) => reasons.push(if reasons.is_empty() {
                    exclusion.to_string()
                } else {
                    exclusion.reason()
                }),
            }
        }
        if !routes.is_empty() {
            return Ok(routes);
        }
        Err(NoRoute {
            message: if reasons.is_empty() {
                "no model serves this instance: no model version is active \
                 (see `radstream models list`)"
                    .into()
            } else {
                reasons.join("; ")
            },
        })
    }

    /// The active route of `name`, if it has an active version.
    pub fn active(&self, name: &str) -> Option<Route> {
        self.inner
            .routes
            .load()
            .routes
            .iter()
            .find(|r| r.active.info.name == name)
            .cloned()
    }

    /// A loaded, ready version by name and version (a study re-opened after its pins were released).
    pub fn ready_version(&self, name: &str, version: &str) -> Option<Arc<Served>> {
        let version = repository::parse_version(version).ok()?;
        match self.models().get(name)?.versions.get(&version) {
            Some((VersionState::Ready(s), _)) => Some(s.clone()),
            _ => None,
        }
    }

    /// Every version the catalog knows, by model name then version.
    pub fn list(&self) -> Vec<VersionStatus> {
        let models = self.models();
        let mut out = Vec::new();
        for (name, entry) in models.iter() {
            for (version, (state, dir)) in &entry.versions {
                let (state, reason, served) = match state {
                    VersionState::Loading => ("loading", String::new(), None),
                    VersionState::Ready(s) => ("ready", String::new(), Some(s.clone())),
                    VersionState::Failed(r) => ("failed", r.clone(), None),
                };
                out.push(VersionStatus {
                    name: name.clone(),
                    version: version.to_string(),
                    state,
                    reason,
                    active: entry.active.as_ref() == Some(version),
                    shadow: entry.shadow.as_ref() == Some(version),
                    served,
                    dir: dir.clone(),
                });
            }
        }
        out
    }

    /// The agreement of `name`'s shadow candidate with its active version so far.
    pub fn shadow_report(&self, name: &str) -> Option<ShadowReport> {
        self.inner.shadow.report(name)
    }

    /// Records what the active version and its shadow said about the same slice.
    pub fn record_shadow(
        &self,
        active: &Served,
        shadow: &Served,
        active_scores: &[f32],
        shadow_scores: &[f32],
    ) {
        self.inner.shadow.record(
            (&active.info, &active.manifest),
            (&shadow.info, &shadow.manifest),
            active_scores,
            shadow_scores,
        );
    }

    /// The service's scoring health: `Serving` while every active version's engine serves; the worst
    /// state otherwise. Changes whenever an engine's health or the set of active versions changes.
    pub fn health(&self) -> watch::Receiver<EngineHealth> {
        let (tx, rx) = watch::channel(self.current_health());
        let catalog = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                let Some(inner) = catalog.upgrade() else {
                    return;
                };
                let this = Catalog { inner };
                let mut generation = this.inner.health.subscribe();
                let table = this.inner.routes.load_full();
                let mut engines: Vec<_> = table
                    .routes
                    .iter()
                    .map(|r| r.active.engine().health())
                    .collect();
                let _ = tx.send_replace(this.current_health());
                drop(this);
                let engine_changed = async {
                    if engines.is_empty() {
                        std::future::pending::<()>().await;
                    }
                    let changes = engines.iter_mut().map(|e| Box::pin(e.changed()));
                    let _ = futures::future::select_all(changes).await;
                };
                tokio::select! {
                    r = generation.changed() => if r.is_err() { return },
                    () = engine_changed => {}
                    () = tx.closed() => return,
                }
            }
        });
        rx
    }

    fn current_health(&self) -> EngineHealth {
        let table = self.inner.routes.load();
        let mut worst = EngineHealth::Serving;
        for route in &table.routes {
            let health = *route.active.engine().health().borrow();
            worst = worst.max(health);
        }
        if table.routes.is_empty() {
            return EngineHealth::Stopped;
        }
        worst
    }

    /// Each active version's engine health, `(name, version, health)`: what a readiness answer names.
    pub fn engine_health(&self) -> Vec<(String, String, EngineHealth)> {
        let table = self.inner.routes.load();
        table
            .routes
            .iter()
            .map(|r| {
                let info = &r.active.info;
                let health = *r.active.engine().health().borrow();
                (info.name.clone(), info.version.clone(), health)
            })
            .collect()
    }
}

fn ready(
    entry: &ModelEntry,
    name: &str,
    version: &Version,
    action: &'static str,
) -> Result<Arc<Served>, CatalogError> {
    match entry.versions.get(version) {
        Some((VersionState::Ready(s), _)) => Ok(s.clone()),
        Some((state, _)) => Err(CatalogError::NotReady {
            name: name.into(),
            version: version.to_string(),
            state: match state {
                VersionState::Loading => "still loading".into(),
                VersionState::Failed(r) => format!("failed ({r})"),
                VersionState::Ready(_) => "ready".into(),
            },
            action,
        }),
        None => Err(CatalogError::NotLoaded {
            name: name.into(),
            version: version.to_string(),
        }),
    }
}
