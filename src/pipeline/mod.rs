//! The scoring engine shared by every stream: slices from all connections meet in one bounded queue, are
//! grouped into batches (up to `max_batch`; what is queued joins at once, and while the model is busy the
//! first slice waits at most `max_wait` for company — an idle model gets the batch at once, so a study's
//! first finding costs about one inference), preprocessed in one GPU dispatch and scored in one ONNX
//! Runtime call. The queue bound is the
//! backpressure: a full queue makes submitters wait, which stops their streams reading, which makes
//! HTTP/2 flow control slow the pushers down. Decoding runs before this stage on the blocking pool, so
//! decode of later slices overlaps preprocessing and scoring of earlier ones; and the engine itself is
//! two threads with a one-batch queue between them — `radstream-batch` collects and preprocesses batch
//! i+1 while `radstream-engine` runs the model on batch i — so neither the GPU upload and dispatch nor
//! the CPU resize waits for the model call, and vice versa (input buffers go back to the batcher for
//! reuse: three exist at most).
//!
//! One bad slice never fails its neighbours: a batch whose model call fails is retried slice by slice,
//! and a slice whose pixels the preprocessor refuses is answered with its own error before batching.
//!
//! The engine publishes its health on a watch channel ([`Engine::health`]), because a service whose
//! only worker has died or hangs inside a driver must say so to its load balancer instead of accepting
//! streams it cannot answer: `Stopped` once the worker thread has ended for any reason (a guard dropped
//! on the thread's exit, so a panic counts too), `Stalled` while one preprocess/model call has run longer
//! than the stall timeout (the worker stamps when its call began; a watchdog task compares), `Failing`
//! while each of the last [`FAILING_AFTER`] slices failed for a reason of the engine's own (a broken GPU
//! path, a model call that errs; a slice the input made unscoreable does not count), `Serving`
//! otherwise — again as soon as a stalled call returns or a slice is scored.
//!
//! Each batch is reported once through `telemetry::events` (its size, queue wait, preprocess and score
//! times, per model version), and the queue depth follows every job in and out.
//!
//! A 2.5D model (`[input] context = k`) scores a slice from the 2k+1 neighbouring slices of its series:
//! its job carries those frames, in position order with the centre in the middle ([`Engine::submit_stack`],
//! assembled by `study::context`), and the preprocessor stacks them as channels. The engine serves one
//! model, so a batch never mixes stacks of different models or sizes.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Weak,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    config::{BatchingConfig, InferenceConfig, PreprocessBackend},
    decode::DecodedInstance,
    inference::{BatchScores, InferenceError, ModelSession},
    model::{Manifest, ModelInfo, ModelPackage},
    preprocess::{
        choose_window, CpuPreprocessor, GpuPreprocessor, PreprocessError, PreprocessSpec,
        Preprocessor, SliceView, WindowChoice,
    },
    telemetry::events::{self, ModelLabels},
};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("preprocessing failed: {0}")]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Inference(#[from] InferenceError),
    #[error(
        "the GPU preprocessing path was required (preprocess = \"gpu\") but is unavailable: {0}"
    )]
    GpuRequired(PreprocessError),
    #[error("the scoring engine has shut down")]
    ShutDown,
    #[error("scoring this slice crashed inside the engine ({0}); the engine goes on")]
    Panicked(String),
    #[error("cannot start the scoring engine's worker thread: {0}")]
    Thread(std::io::Error),
}

/// What the engine's queue carries.
enum Job {
    Slice(SliceJob),
    /// Test hook ([`Engine::halt_worker`]): the worker ends after the batch it is collecting.
    Halt,
}

/// Consecutive failed slices after which an engine counts as failing (see the module docs).
pub const FAILING_AFTER: u32 = 8;

/// The engine's state as health checking sees it, from best to worst (the order compares them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EngineHealth {
    /// The worker is alive and its current call, if any, is within the stall timeout.
    Serving,
    /// Every one of the last [`FAILING_AFTER`] slices failed (until one is scored).
    Failing,
    /// A preprocess/model call has been running longer than the stall timeout.
    Stalled,
    /// The worker thread has ended: nothing will be scored again.
    Stopped,
}

/// The engine's two threads, each stamping its own calls.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Batching and preprocessing (`radstream-batch`).
    Preprocess = 0,
    /// The model call (`radstream-engine`).
    Score = 1,
}

/// Shared by the stages (which stamp their calls), the watchdog (which compares) and the engine handle.
struct Vitals {
    epoch: Instant,
    /// Per [`Stage`]: when its current call began, in nanoseconds since `epoch`, plus one; 0 = no call
    /// running.
    busy_since: [AtomicU64; 2],
    stall_timeout_nanos: AtomicU64,
    ended: AtomicBool,
    /// The engine handle was dropped: the worker ending is expected, not news.
    closing: AtomicBool,
    /// Slices failed in a row for the engine's own reasons (reset by a scored slice).
    failed_in_a_row: AtomicU32,
    state: watch::Sender<EngineHealth>,
}

impl Vitals {
    fn new(stall_timeout: Duration) -> Self {
        Self {
            epoch: Instant::now(),
            busy_since: [AtomicU64::new(0), AtomicU64::new(0)],
            stall_timeout_nanos: AtomicU64::new(nanos(stall_timeout)),
            ended: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            failed_in_a_row: AtomicU32::new(0),
            state: watch::Sender::new(EngineHealth::Serving),
        }
    }

    fn stall_timeout(&self) -> Duration {
        Duration::from_nanos(self.stall_timeout_nanos.load(Ordering::Relaxed))
    }

    fn call_started(&self, stage: Stage) {
        let now = nanos(self.epoch.elapsed()).saturating_add(1);
        self.busy_since[stage as usize].store(now, Ordering::Release);
    }

    fn call_ended(&self, stage: Stage) {
        self.busy_since[stage as usize].store(0, Ordering::Release);
    }

    fn assess(&self) -> EngineHealth {
        if self.ended.load(Ordering::Acquire) {
            return EngineHealth::Stopped;
        }
        for busy in &self.busy_since {
            let since = busy.load(Ordering::Acquire);
            if since != 0 {
                let running = nanos(self.epoch.elapsed()).saturating_sub(since - 1);
                if running > self.stall_timeout_nanos.load(Ordering::Relaxed) {
                    return EngineHealth::Stalled;
                }
            }
        }
        if self.failed_in_a_row.load(Ordering::Acquire) >= FAILING_AFTER {
            return EngineHealth::Failing;
        }
        EngineHealth::Serving
    }

    /// Counts one answered slice: a success resets the run of failures; a failure the input caused
    /// (an unscoreable slice) neither counts nor resets.
    fn slice_answered(&self, outcome: &Result<ScoredSlice, EngineError>) {
        match outcome {
            Ok(_) => self.failed_in_a_row.store(0, Ordering::Release),
            Err(EngineError::Preprocess(PreprocessError::InvalidSlice { .. })) => {}
            Err(_) => {
                self.failed_in_a_row.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Publishes the current assessment, logging a change; the new state when it changed.
    fn update(&self) -> Option<EngineHealth> {
        let health = self.assess();
        if !self.publish(health) {
            return None;
        }
        match health {
            EngineHealth::Stalled => tracing::error!(
                stall_timeout_secs = self.stall_timeout().as_secs_f64(),
                "a preprocess/model call has run past the stall timeout: health NOT_SERVING"
            ),
            EngineHealth::Failing => tracing::error!(
                slices = FAILING_AFTER,
                "every recent slice failed: health NOT_SERVING until one is scored"
            ),
            EngineHealth::Serving => tracing::info!("the engine scores again: health SERVING"),
            EngineHealth::Stopped => {}
        }
        Some(health)
    }

    /// Publishes `health` if it differs from the last published state; true if it did.
    fn publish(&self, health: EngineHealth) -> bool {
        self.state.send_if_modified(|current| {
            if *current == health {
                false
            } else {
                *current = health;
                true
            }
        })
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Lives on each stage thread's stack: dropped however the thread ends, panics included. Either
/// stage ending stops the engine (the other cannot go on alone).
struct ExitGuard(Arc<Vitals>, Stage);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.ended.store(true, Ordering::Release);
        self.0.call_ended(self.1);
        if self.0.publish(EngineHealth::Stopped) {
            if std::thread::panicking() {
                tracing::error!(
                    "the scoring engine's worker panicked and ended: health NOT_SERVING"
                );
            } else if self.0.closing.load(Ordering::Acquire) {
                tracing::debug!("the scoring engine's worker ended (engine closed)");
            } else {
                tracing::warn!("the scoring engine's worker ended: health NOT_SERVING");
            }
        }
    }
}

/// Compares the worker's current call against the stall timeout until the engine is gone or its worker
/// has ended. Holds only a weak reference so it never keeps the engine's state alive.
async fn watchdog(vitals: Weak<Vitals>) {
    loop {
        let tick = match vitals.upgrade() {
            Some(v) => {
                v.update();
                if v.assess() == EngineHealth::Stopped {
                    return;
                }
                (v.stall_timeout() / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
            }
            None => return,
        };
        tokio::time::sleep(tick).await;
    }
}

/// One frame of a decoded instance, waiting to be scored: for a 2.5D model with its neighbours.
struct SliceJob {
    /// `(instance, frame)`: one for a 2D model; 2k+1 in slice-position order (centre in the middle)
    /// for a model with context k.
    frames: Vec<(Arc<DecodedInstance>, usize)>,
    reply: oneshot::Sender<Result<ScoredSlice, EngineError>>,
    queued: Queued,
}

/// A job's place in the queue-depth gauge: counted from when it is queued until the worker takes it
/// up (or it is dropped unanswered).
struct Queued {
    model: Arc<ModelLabels>,
    at: Instant,
    counted: bool,
}

impl Queued {
    fn new(model: Arc<ModelLabels>) -> Self {
        events::QueueDepthChanged {
            model: &model,
            delta: 1,
        }
        .emit();
        Self {
            model,
            at: Instant::now(),
            counted: true,
        }
    }

    /// The job leaves the queue: how long it waited.
    fn leave(&mut self) -> Duration {
        if std::mem::take(&mut self.counted) {
            events::QueueDepthChanged {
                model: &self.model,
                delta: -1,
            }
            .emit();
        }
        self.at.elapsed()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.leave();
    }
}

/// What the engine answers for one slice.
#[derive(Debug, Clone)]
pub struct ScoredSlice {
    /// One probability per manifest label.
    pub scores: Vec<f32>,
    /// `[labels, h, w]` map for this slice, when the model has one.
    pub map: Option<SliceMap>,
    pub preprocessed_at: SystemTime,
    pub scored_at: SystemTime,
    pub batch_size: usize,
    /// The window the slice was preprocessed with and why (`None` for colour slices).
    pub window: Option<WindowChoice>,
}

#[derive(Debug, Clone)]
pub struct SliceMap {
    pub values: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// Handle to the batching worker. Dropping the last handle stops the worker once its queue is drained.
pub struct Engine {
    tx: Option<mpsc::Sender<Job>>,
    vitals: Arc<Vitals>,
    info: ModelInfo,
    manifest: Arc<Manifest>,
    preprocess_path: &'static str,
    provider: crate::inference::ActiveProvider,
    /// The batching/preprocessing thread and the scoring thread.
    stages: Vec<JoinHandle<()>>,
    labels: Arc<ModelLabels>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("model", &self.info)
            .field("preprocess_path", &self.preprocess_path)
            .finish_non_exhaustive()
    }
}

/// Picks the preprocessing implementation and says why in the log.
pub fn select_preprocessor(
    backend: PreprocessBackend,
) -> Result<Box<dyn Preprocessor>, EngineError> {
    match backend {
        PreprocessBackend::Cpu => {
            tracing::info!(
                "preprocessing on the CPU reference path (configured: preprocess = \"cpu\")"
            );
            Ok(Box::new(CpuPreprocessor))
        }
        PreprocessBackend::Gpu => {
            let gpu = GpuPreprocessor::new().map_err(EngineError::GpuRequired)?;
            Ok(Box::new(gpu))
        }
        PreprocessBackend::Auto => match GpuPreprocessor::new() {
            Ok(gpu) => Ok(Box::new(gpu)),
            Err(e) => {
                tracing::warn!(
                    "no usable wgpu adapter ({e}); preprocessing on the CPU reference path"
                );
                Ok(Box::new(CpuPreprocessor))
            }
        },
    }
}

impl Engine {
    /// Starts the worker thread. Must be called inside a Tokio runtime (the worker waits on the queue
    /// through the runtime's timer).
    pub fn start(
        session: ModelSession,
        preprocessor: Box<dyn Preprocessor>,
        batching: &BatchingConfig,
    ) -> Result<Self, EngineError> {
        let (tx, rx) = mpsc::channel(batching.queue_depth.max(1));
        let info = session.info().clone();
        let labels = Arc::new(ModelLabels::new(&info.name, &info.version));
        let manifest = Arc::new(session.manifest().clone());
        let preprocess_path = preprocessor.name();
        let provider = session.provider();
        let runtime = tokio::runtime::Handle::current();
        let vitals = Arc::new(Vitals::new(Duration::from_secs_f64(
            crate::config::HealthConfig::default().stall_timeout_secs,
        )));
        // One batch being preprocessed, one waiting, one being scored: the waiting slot is the
        // bounded queue between the stages; spent input buffers go back for reuse.
        let (prepared_tx, prepared_rx) = std::sync::mpsc::sync_channel(1);
        let in_model = Arc::new(AtomicU32::new(0));
        let (spent_tx, spent_rx) = std::sync::mpsc::channel();
        let batcher = Batcher {
            rx,
            preprocessor,
            spec: manifest.preprocess_spec(),
            max_batch: batching.max_batch.max(1),
            max_wait: Duration::from_millis(batching.max_wait_ms),
            dispatch_when_idle: batching.dispatch_when_idle,
            in_model: in_model.clone(),
            prepared: prepared_tx,
            spent: spent_rx,
            vitals: vitals.clone(),
        };
        let scorer = Scorer {
            prepared: prepared_rx,
            spent: spent_tx,
            session,
            in_model,
            per_slice: manifest.preprocess_spec().output_len(1),
            vitals: vitals.clone(),
            labels: labels.clone(),
        };
        let spawn = |name: &str, stage: Stage, run: Box<dyn FnOnce() + Send>| {
            let guard = ExitGuard(vitals.clone(), stage);
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || {
                    let _guard = guard;
                    run()
                })
                .map_err(EngineError::Thread)
        };
        let scoring = spawn(
            "radstream-engine",
            Stage::Score,
            Box::new(move || scorer.run()),
        )?;
        let batching = spawn(
            "radstream-batch",
            Stage::Preprocess,
            Box::new(move || batcher.run(runtime)),
        )?;
        tokio::spawn(watchdog(Arc::downgrade(&vitals)));
        Ok(Self {
            tx: Some(tx),
            vitals,
            info,
            manifest,
            preprocess_path,
            provider,
            stages: vec![batching, scoring],
            labels,
        })
    }

    /// Loads a model package and starts the engine on it.
    pub fn from_package(
        package: &ModelPackage,
        env: &ort::environment::Environment,
        backend: PreprocessBackend,
        batching: &BatchingConfig,
        inference: &InferenceConfig,
    ) -> Result<Self, EngineError> {
        let session =
            ModelSession::load_with_max_batch(env, package, inference, batching.max_batch)?;
        let preprocessor = select_preprocessor(backend)?;
        Self::start(session, preprocessor, batching)
    }

    pub fn model(&self) -> &ModelInfo {
        &self.info
    }

    /// False once a stage thread has ended (they only end when the engine is dropped, or on a bug).
    pub fn is_healthy(&self) -> bool {
        !self.stages.is_empty() && self.stages.iter().all(|t| !t.is_finished())
    }

    /// The engine's health, as it changes (see the module docs).
    pub fn health(&self) -> watch::Receiver<EngineHealth> {
        self.vitals.state.subscribe()
    }

    /// How long one preprocess/model call may run before the engine counts as stalled
    /// (`[health] stall_timeout_secs`).
    pub fn set_stall_timeout(&self, timeout: Duration) {
        self.vitals
            .stall_timeout_nanos
            .store(nanos(timeout), Ordering::Relaxed);
    }

    /// Test hook: makes the worker thread end after the batch it is collecting, as a crashed worker
    /// would; slices queued behind it are answered `ShutDown`.
    #[doc(hidden)]
    pub async fn halt_worker(&self) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Job::Halt).await;
        }
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// "gpu" or "cpu".
    /// Where ONNX Runtime runs this model (`[inference] provider`, as it turned out).
    pub fn provider(&self) -> crate::inference::ActiveProvider {
        self.provider
    }

    pub fn preprocess_path(&self) -> &'static str {
        self.preprocess_path
    }

    /// `[input] context` of the served model: 0 for a 2D model ([`Engine::submit`]), k for a 2.5D one
    /// ([`Engine::submit_stack`] with 2k+1 frames).
    pub fn context(&self) -> u32 {
        self.manifest.input.context
    }

    /// Queues one frame of a 2D model (`context = 0`); waits while the queue is full. The receiver
    /// yields the slice's scores. A 2.5D model refuses it (a preprocessing error naming the context):
    /// scoring a slice without its neighbours would be scoring it wrong.
    pub async fn submit(
        &self,
        instance: Arc<DecodedInstance>,
        frame: usize,
    ) -> Result<oneshot::Receiver<Result<ScoredSlice, EngineError>>, EngineError> {
        self.enqueue(vec![(instance, frame)]).await
    }

    /// Queues one slice of a 2.5D model with its neighbours: `frames` holds the 2k+1 frames
    /// `(instance, frame index)` of its series in slice-position order, the slice scored in the
    /// middle (index k), edges already replicated (see `study::context::ContextAssembler`). With
    /// k = 0 it is [`Engine::submit`] of the one frame. The answer's window is the centre's.
    pub async fn submit_stack(
        &self,
        frames: Vec<(Arc<DecodedInstance>, usize)>,
    ) -> Result<oneshot::Receiver<Result<ScoredSlice, EngineError>>, EngineError> {
        self.enqueue(frames).await
    }

    async fn enqueue(
        &self,
        frames: Vec<(Arc<DecodedInstance>, usize)>,
    ) -> Result<oneshot::Receiver<Result<ScoredSlice, EngineError>>, EngineError> {
        check_stack(&self.manifest, frames.len())?;
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(EngineError::ShutDown)?;
        let queued = Queued::new(self.labels.clone());
        tx.send(Job::Slice(SliceJob {
            frames,
            reply,
            queued,
        }))
        .await
        .map_err(|_| EngineError::ShutDown)?;
        Ok(rx)
    }
}

/// A job for `manifest`'s model must carry 2·context + 1 frames (a caller's mistake: answered as that
/// slice's preprocessing error, never scored with a wrong stack).
fn check_stack(manifest: &Manifest, got: usize) -> Result<(), EngineError> {
    let context = manifest.input.context;
    let expected = 2 * context as usize + 1;
    if got == expected {
        return Ok(());
    }
    let hint = if context > 0 {
        "submit the slice with its neighbours (Engine::submit_stack)"
    } else {
        "submit one frame (Engine::submit)"
    };
    Err(EngineError::Preprocess(PreprocessError::InvalidSlice {
        index: 0,
        detail: format!(
            "model {} takes {expected} neighbouring slice(s) per slice ([input] context = {context}), \
             {got} given: {hint}",
            manifest.model.name
        ),
    }))
}

/// The views of a batch in the order the preprocessor takes them: each job's frames in turn (2k+1 per
/// job for a context model, in position order).
fn batch_views(batch: &[SliceJob]) -> Result<Vec<SliceView<'_>>, EngineError> {
    batch
        .iter()
        .flat_map(|job| job.frames.iter())
        .map(|(instance, frame)| {
            SliceView::of(instance, *frame).ok_or_else(|| {
                EngineError::Preprocess(PreprocessError::InvalidSlice {
                    index: 0,
                    detail: format!("frame {frame} does not exist"),
                })
            })
        })
        .collect()
}

impl Drop for Engine {
    /// Closes the queue and waits for the worker to answer what is queued and release the model: a
    /// detached worker could still be inside ONNX Runtime while the process tears the library down.
    /// Joining cannot deadlock on the runtime: a closed channel wakes the worker without any timer.
    /// A worker stuck in one call past the stall timeout is left behind (and logged) rather than
    /// joined: a hung driver must not keep the process from exiting.
    fn drop(&mut self) {
        self.vitals.closing.store(true, Ordering::Release);
        self.tx.take();
        // The batcher ends once the queue is drained, which closes the scorer's queue in turn.
        for stage in std::mem::take(&mut self.stages) {
            while !stage.is_finished() {
                if self.vitals.assess() == EngineHealth::Stalled {
                    tracing::error!(
                        "the scoring engine's worker is stuck in a call past the stall timeout; \
                         leaving it behind"
                    );
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            if stage.join().is_err() {
                tracing::error!("the scoring engine's worker panicked while shutting down");
            }
        }
    }
}

/// A batch preprocessed and waiting for the model: the scorer's work item.
struct Prepared {
    jobs: Vec<SliceJob>,
    /// `jobs.len()` model inputs, NCHW.
    input: Vec<f32>,
    /// Per job: the window its (centre) slice was preprocessed with.
    windows: Vec<Option<WindowChoice>>,
    /// Per job: how long it waited in the queue.
    queued: Vec<Duration>,
    preprocess: Duration,
    preprocessed_at: SystemTime,
}

/// Collects batches from the queue and preprocesses them, while the scorer runs the model on the
/// previous batch: decode (on the blocking pool), preprocessing and scoring of consecutive batches
/// overlap, each stage bounded by the queue in front of it.
struct Batcher {
    rx: mpsc::Receiver<Job>,
    preprocessor: Box<dyn Preprocessor>,
    spec: PreprocessSpec,
    max_batch: usize,
    max_wait: Duration,
    /// See [`BatchingConfig::dispatch_when_idle`].
    dispatch_when_idle: bool,
    /// Batches handed to the scorer and not yet answered.
    in_model: Arc<AtomicU32>,
    prepared: std::sync::mpsc::SyncSender<Prepared>,
    /// Input buffers the scorer is done with.
    spent: std::sync::mpsc::Receiver<Vec<f32>>,
    vitals: Arc<Vitals>,
}

impl Batcher {
    fn run(mut self, runtime: tokio::runtime::Handle) {
        // Timers are created on this thread: they need the runtime's context.
        let _context = runtime.enter();
        let mut batch: Vec<SliceJob> = Vec::with_capacity(self.max_batch);
        let mut halt = false;
        while !halt {
            match runtime.block_on(self.rx.recv()) {
                None => return,
                Some(Job::Halt) => return,
                Some(Job::Slice(first)) => batch.push(first),
            }
            // What is queued already joins at once; company is waited for only while the model is
            // busy (or always, without `dispatch_when_idle`).
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(Job::Slice(job)) => batch.push(job),
                    Ok(Job::Halt) => {
                        halt = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            let idle = self.dispatch_when_idle && self.in_model.load(Ordering::Acquire) == 0;
            let deadline = tokio::time::Instant::now() + self.max_wait;
            while !idle && !halt && batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(Job::Slice(job)) => batch.push(job),
                    Ok(Job::Halt) => {
                        halt = true;
                        break;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match runtime.block_on(tokio::time::timeout_at(deadline, self.rx.recv())) {
                            Ok(Some(Job::Slice(job))) => batch.push(job),
                            Ok(Some(Job::Halt)) => {
                                halt = true;
                                break;
                            }
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            // A stream that went away no longer waits for these: skip their work.
            batch.retain(|job| !job.reply.is_closed());
            if !self.process(&mut batch) {
                return; // the scorer has ended
            }
            batch.clear();
        }
    }

    /// Preprocesses `batch` and hands it to the scorer; a batch the preprocessor refuses is retried
    /// slice by slice, so one bad slice fails alone. False once the scorer is gone.
    fn process(&mut self, batch: &mut Vec<SliceJob>) -> bool {
        if batch.is_empty() {
            return true;
        }
        let queued: Vec<Duration> = batch.iter_mut().map(|job| job.queued.leave()).collect();
        let jobs = std::mem::take(batch);
        match self.prepare_guarded(&jobs) {
            Ok((input, windows, preprocess)) => {
                self.hand_over(jobs, input, windows, queued, preprocess)
            }
            Err(e) if jobs.len() > 1 => {
                tracing::warn!(
                    batch = jobs.len(),
                    "batch failed ({e}); scoring its slices one by one"
                );
                for (job, queued) in jobs.into_iter().zip(queued) {
                    let one = std::slice::from_ref(&job);
                    match self.prepare_guarded(one) {
                        Ok((input, windows, preprocess)) => {
                            if !self.hand_over(vec![job], input, windows, vec![queued], preprocess)
                            {
                                return false;
                            }
                        }
                        Err(e) => answer(&self.vitals, job, Err(e)),
                    }
                }
                true
            }
            Err(e) => {
                if let Some(job) = jobs.into_iter().next() {
                    answer(&self.vitals, job, Err(e));
                }
                true
            }
        }
    }

    fn hand_over(
        &mut self,
        jobs: Vec<SliceJob>,
        input: Vec<f32>,
        windows: Vec<Option<WindowChoice>>,
        queued: Vec<Duration>,
        preprocess: Duration,
    ) -> bool {
        self.in_model.fetch_add(1, Ordering::AcqRel);
        self.prepared
            .send(Prepared {
                jobs,
                input,
                windows,
                queued,
                preprocess,
                preprocessed_at: SystemTime::now(),
            })
            .is_ok()
    }

    /// `prepare`, with a panic in a driver or the preprocessor turned into this batch's error: the
    /// stage (shared by every stream) must outlive any one bad slice.
    #[allow(clippy::type_complexity)]
    fn prepare_guarded(
        &mut self,
        batch: &[SliceJob],
    ) -> Result<(Vec<f32>, Vec<Option<WindowChoice>>, Duration), EngineError> {
        // Stamped for the watchdog: a call that never returns turns health NOT_SERVING.
        self.vitals.call_started(Stage::Preprocess);
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.prepare(batch)));
        self.vitals.call_ended(Stage::Preprocess);
        outcome.unwrap_or_else(|payload| Err(EngineError::Panicked(panic_detail(&payload))))
    }

    #[allow(clippy::type_complexity)]
    fn prepare(
        &mut self,
        batch: &[SliceJob],
    ) -> Result<(Vec<f32>, Vec<Option<WindowChoice>>, Duration), EngineError> {
        let n = batch.len();
        let views = batch_views(batch)?;
        let stack = self.spec.stack();
        if views.len() != n * stack {
            return Err(EngineError::Preprocess(PreprocessError::InvalidSpec {
                detail: format!(
                    "{} views for {n} slices of context {}",
                    views.len(),
                    self.spec.context
                ),
            }));
        }
        // A buffer the scorer gave back, else a new one (at most three exist: one here, one
        // waiting, one being scored).
        let mut input = self.spent.try_recv().unwrap_or_default();
        input.resize(self.spec.output_len(n), 0.0);
        let started = Instant::now();
        self.preprocessor
            .preprocess(&self.spec, &views, &mut input)?;
        // The centre view's: the stack is windowed with it.
        let windows = (0..n)
            .map(|i| choose_window(&self.spec, &views[i * stack + stack / 2]))
            .collect();
        Ok((input, windows, started.elapsed()))
    }
}

/// Runs the model on preprocessed batches and answers their slices.
struct Scorer {
    prepared: std::sync::mpsc::Receiver<Prepared>,
    spent: std::sync::mpsc::Sender<Vec<f32>>,
    session: ModelSession,
    /// Batches handed over and not yet answered (the batcher's view of whether the model is busy).
    in_model: Arc<AtomicU32>,
    /// Model input values per slice (C·H·W).
    per_slice: usize,
    vitals: Arc<Vitals>,
    labels: Arc<ModelLabels>,
}

impl Scorer {
    fn run(mut self) {
        while let Ok(batch) = self.prepared.recv() {
            self.process(batch);
            self.in_model.fetch_sub(1, Ordering::AcqRel);
        }
    }

    fn process(&mut self, batch: Prepared) {
        let Prepared {
            jobs,
            input,
            windows,
            queued,
            preprocess,
            preprocessed_at,
        } = batch;
        let n = jobs.len();
        let started = Instant::now();
        match self.score_guarded(&input, n) {
            Ok(scores) => {
                self.batch_scored(&queued, preprocess, started.elapsed());
                let scored_at = SystemTime::now();
                for (i, (job, window)) in jobs.into_iter().zip(windows).enumerate() {
                    let slice = scored_slice(&scores, i, n, window, preprocessed_at, scored_at);
                    answer(&self.vitals, job, Ok(slice));
                }
            }
            Err(e) if n > 1 => {
                tracing::warn!(
                    batch = n,
                    "batch failed ({e}); scoring its slices one by one"
                );
                let per = self.per_slice;
                for (i, ((job, window), queued)) in
                    jobs.into_iter().zip(windows).zip(queued).enumerate()
                {
                    let one = input.get(i * per..(i + 1) * per).unwrap_or(&[]);
                    let started = Instant::now();
                    let result = self.score_guarded(one, 1).map(|scores| {
                        self.batch_scored(&[queued], preprocess / n as u32, started.elapsed());
                        scored_slice(&scores, 0, 1, window, preprocessed_at, SystemTime::now())
                    });
                    answer(&self.vitals, job, result);
                }
            }
            Err(e) => {
                if let Some(job) = jobs.into_iter().next() {
                    answer(&self.vitals, job, Err(e));
                }
            }
        }
        let _ = self.spent.send(input);
    }

    fn batch_scored(&self, queued: &[Duration], preprocess: Duration, score: Duration) {
        events::BatchScored {
            model: &self.labels,
            size: queued.len(),
            queued,
            preprocess,
            score,
        }
        .emit();
    }

    /// The model call, with a panic in the runtime or a provider turned into this batch's error.
    fn score_guarded(&mut self, input: &[f32], n: usize) -> Result<BatchScores, EngineError> {
        self.vitals.call_started(Stage::Score);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.session.run(input, n).map_err(EngineError::from)
        }));
        self.vitals.call_ended(Stage::Score);
        outcome.unwrap_or_else(|payload| Err(EngineError::Panicked(panic_detail(&payload))))
    }
}

/// Slice `i` of a batch of `n`'s scores and map.
fn scored_slice(
    batch: &BatchScores,
    i: usize,
    n: usize,
    window: Option<WindowChoice>,
    preprocessed_at: SystemTime,
    scored_at: SystemTime,
) -> ScoredSlice {
    let labels = batch.scores.len() / n.max(1);
    ScoredSlice {
        window,
        scores: batch
            .scores
            .get(i * labels..(i + 1) * labels)
            .unwrap_or(&[])
            .to_vec(),
        map: batch.map.as_ref().map(|m| {
            let cell = labels * m.height * m.width;
            SliceMap {
                values: m
                    .values
                    .get(i * cell..(i + 1) * cell)
                    .unwrap_or(&[])
                    .to_vec(),
                height: m.height,
                width: m.width,
            }
        }),
        preprocessed_at,
        scored_at,
        batch_size: n,
    }
}

/// Answers one slice, counting it towards the engine's health.
fn answer(vitals: &Vitals, job: SliceJob, result: Result<ScoredSlice, EngineError>) {
    vitals.slice_answered(&result);
    vitals.update();
    let _ = job.reply.send(result);
}

fn panic_detail(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, decode, inference};

    /// The bundled model's session, as the service loads it.
    fn default_session() -> ModelSession {
        let env = inference::runtime(&Config::default().ort_library_path()).expect("ONNX Runtime");
        let package = ModelPackage::embedded_default().expect("model");
        ModelSession::load(env, &package, &InferenceConfig::default()).expect("session")
    }

    /// The CPU reference with a fault injected: `fault` runs on every batch before it is preprocessed.
    struct Faulty<F>(F);

    impl<F: FnMut(&[SliceView<'_>]) + Send> Preprocessor for Faulty<F> {
        fn name(&self) -> &'static str {
            "cpu"
        }
        fn preprocess(
            &mut self,
            spec: &PreprocessSpec,
            slices: &[SliceView<'_>],
            out: &mut [f32],
        ) -> Result<(), PreprocessError> {
            (self.0)(slices);
            CpuPreprocessor.preprocess(spec, slices, out)
        }
    }

    /// Panics on any batch holding a 1×1 slice.
    fn panics_on_tiny_slices() -> Faulty<impl FnMut(&[SliceView<'_>]) + Send> {
        Faulty(|slices: &[SliceView<'_>]| {
            assert!(slices.iter().all(|s| s.rows > 1), "injected fault")
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashing_slice_fails_alone_and_the_engine_goes_on() {
        let session = default_session();
        // good, tiny, good in one batch: the batch waits for company even though the model is idle
        let batching = BatchingConfig {
            max_batch: 4,
            max_wait_ms: 200,
            queue_depth: 8,
            dispatch_when_idle: false,
        };
        let engine =
            Engine::start(session, Box::new(panics_on_tiny_slices()), &batching).expect("engine");

        let good = sample(6);
        let mut tiny = (*good).clone();
        tiny.meta.rows = 1;
        tiny.meta.cols = 1;
        tiny.frames[0] =
            decode::Frame::new(decode::Samples::from_values([0], decode::SampleFormat::U8));
        let tiny = Arc::new(tiny);

        // One batch: good, tiny, good.
        let a = engine.submit(good.clone(), 0).await.expect("queued");
        let b = engine.submit(tiny, 0).await.expect("queued");
        let c = engine.submit(good.clone(), 0).await.expect("queued");
        let (a, b, c) = (
            a.await.expect("answer"),
            b.await.expect("answer"),
            c.await.expect("answer"),
        );
        let a = a.expect("a good slice is scored despite its neighbour");
        assert!(
            matches!(b, Err(EngineError::Panicked(ref m)) if m.contains("injected fault")),
            "{b:?}"
        );
        let c = c.expect("a good slice is scored despite its neighbour");
        assert_eq!(a.scores, c.scores);
        assert!(a.scores[0] > 0.5, "slice 6 carries the lesion");

        assert!(engine.is_healthy());
        let again = engine
            .submit(good, 0)
            .await
            .expect("queued")
            .await
            .expect("answer");
        assert!(again.is_ok(), "the engine still scores after the crash");
    }

    /// An idle model gets what is queued at once: with a `max_wait` of 30 s a lone slice is still
    /// answered in about one inference, and without `dispatch_when_idle` it waits for company.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_model_does_not_wait_for_company() {
        let slice = sample(6);
        for dispatch_when_idle in [true, false] {
            let batching = BatchingConfig {
                max_batch: 16,
                max_wait_ms: 30_000,
                queue_depth: 8,
                dispatch_when_idle,
            };
            let engine = Engine::start(default_session(), Box::new(CpuPreprocessor), &batching)
                .expect("engine");
            let answer = engine.submit(slice.clone(), 0).await.expect("queued");
            let waited = tokio::time::timeout(Duration::from_secs(5), answer).await;
            if dispatch_when_idle {
                let scored = waited.expect("answered without waiting for company");
                assert_eq!(scored.expect("answer").expect("scored").batch_size, 1);
            } else {
                assert!(
                    waited.is_err(),
                    "without it, the lone slice waits for company"
                );
            }
        }
    }

    /// The stages overlap: with a model whose call takes tens of milliseconds (the realistic 256² CNN of
    /// `bench load`), the next batch is preprocessed while the previous one is still in the model. A
    /// single-threaded engine could only start preprocessing batch i+1 after batch i was scored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_next_batch_is_preprocessed_while_the_model_runs() {
        let models = tempfile::tempdir().expect("tempdir");
        let dir = crate::bench::cnn::ensure(models.path()).expect("realistic model");
        let package = ModelPackage::load_dir(&dir).expect("loads");
        let env = inference::runtime(&Config::default().ort_library_path()).expect("ONNX Runtime");
        let session =
            ModelSession::load(env, &package, &InferenceConfig::default()).expect("session");
        let starts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorder = {
            let starts = starts.clone();
            Faulty(move |_: &[SliceView<'_>]| {
                starts.lock().expect("lock").push(SystemTime::now());
            })
        };
        let batching = BatchingConfig {
            max_batch: 1,
            max_wait_ms: 0,
            queue_depth: 8,
            ..Default::default()
        };
        let engine = Engine::start(session, Box::new(recorder), &batching).expect("engine");
        let slice = sample(6);
        let mut answers = Vec::new();
        for _ in 0..4 {
            answers.push(engine.submit(slice.clone(), 0).await.expect("queued"));
        }
        let mut scored = Vec::new();
        for a in answers {
            scored.push(a.await.expect("answered").expect("scored"));
        }
        let starts = starts.lock().expect("lock").clone();
        assert_eq!(starts.len(), 4, "one preprocess call per batch of one");
        let overlapped = (1..4)
            .filter(|&i| starts[i] < scored[i - 1].scored_at)
            .count();
        assert!(
            overlapped >= 2,
            "batch i+1 began preprocessing before batch i left the model in {overlapped} of 3 cases \
             (starts {starts:?}, scored {:?})",
            scored.iter().map(|s| s.scored_at).collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropping_an_engine_whose_call_hangs_does_not_hang() {
        let session = default_session();
        let (release, wedge) = std::sync::mpsc::channel::<()>();
        let engine = Engine::start(
            session,
            // blocks every call until `release` is sent (or dropped)
            Box::new(Faulty(move |_: &[SliceView<'_>]| {
                let _ = wedge.recv();
            })),
            &BatchingConfig::default(),
        )
        .expect("engine");
        engine.set_stall_timeout(Duration::from_millis(100));
        let mut health = engine.health();
        let slice = sample(6);
        let _answer = engine.submit(slice, 0).await.expect("queued");
        tokio::time::timeout(
            Duration::from_secs(60),
            health.wait_for(|h| *h == EngineHealth::Stalled),
        )
        .await
        .expect("the hang is noticed")
        .expect("health channel");

        let dropped = tokio::task::spawn_blocking(move || drop(engine));
        tokio::time::timeout(Duration::from_secs(60), dropped)
            .await
            .expect("the drop returns while the call still hangs")
            .expect("drop");
        drop(release); // lets the left-behind worker finish
    }
    /// A run of the engine's own failures turns it `Failing`; a slice the input made unscoreable
    /// neither adds to the run nor ends it; one scored slice ends it.
    #[test]
    fn a_run_of_failed_slices_is_failing_until_one_is_scored() {
        let vitals = Vitals::new(Duration::from_secs(30));
        let broken = || {
            Err(EngineError::Inference(InferenceError::Run {
                model: "m".into(),
                detail: "injected".into(),
            }))
        };
        let unscoreable = || {
            Err(EngineError::Preprocess(PreprocessError::InvalidSlice {
                index: 0,
                detail: "input".into(),
            }))
        };
        let scored = || {
            Ok(ScoredSlice {
                scores: vec![0.5],
                map: None,
                preprocessed_at: SystemTime::now(),
                scored_at: SystemTime::now(),
                batch_size: 1,
                window: None,
            })
        };
        for _ in 1..FAILING_AFTER {
            vitals.slice_answered(&broken());
        }
        vitals.slice_answered(&unscoreable());
        assert_eq!(
            vitals.assess(),
            EngineHealth::Serving,
            "one short of the run"
        );
        vitals.slice_answered(&broken());
        assert_eq!(vitals.update(), Some(EngineHealth::Failing));
        vitals.slice_answered(&unscoreable());
        assert_eq!(
            vitals.assess(),
            EngineHealth::Failing,
            "the input's fault ends nothing"
        );
        vitals.slice_answered(&scored());
        assert_eq!(vitals.update(), Some(EngineHealth::Serving));
        assert_eq!(*vitals.state.borrow(), EngineHealth::Serving);
    }

    fn sample(n: usize) -> Arc<DecodedInstance> {
        let path = format!(
            "{}/models/lesion-demo/sample-study/slice-{n:02}.dcm",
            env!("CARGO_MANIFEST_DIR")
        );
        let bytes = std::fs::read(path).expect("sample slice");
        Arc::new(decode::decode_instance(&bytes, &decode::Limits::default()).expect("decodes"))
    }

    /// A 2.5D job carries its 2k+1 frames, handed to the preprocessor stack after stack in order;
    /// a job with the wrong number of frames for the model is refused before it is queued.
    #[test]
    fn a_stack_job_carries_its_frames_in_order_and_a_wrong_stack_is_refused() {
        let bundled = include_str!("../../models/lesion-demo/1.0.0/model.toml");
        let flat = Manifest::parse(bundled, "bundled").expect("valid");
        let stacked = Manifest::parse(
            &bundled
                .replace("channels = 1\n", "channels = 3\ncontext = 1\n")
                .replace("mean = [0.34]", "mean = [0.34, 0.34, 0.34]")
                .replace("std = [0.31]", "std = [0.31, 0.31, 0.31]"),
            "stacked",
        )
        .expect("valid");
        check_stack(&flat, 1).expect("one frame for a 2D model");
        check_stack(&stacked, 3).expect("three frames for context 1");
        for (m, got, words) in [
            (&stacked, 1, "submit_stack"),
            (&stacked, 5, "[input] context = 1), 5 given"),
            (&flat, 3, "Engine::submit)"),
        ] {
            match check_stack(m, got) {
                Err(EngineError::Preprocess(PreprocessError::InvalidSlice { detail, .. })) => {
                    assert!(detail.contains(words), "{words:?} not in {detail}")
                }
                other => panic!("{got} frames: {other:?}"),
            }
        }

        let slices: Vec<_> = (4..=8).map(sample).collect();
        let labels = Arc::new(ModelLabels::new("test", "0"));
        let job = |frames: &[usize]| SliceJob {
            frames: frames.iter().map(|&i| (slices[i].clone(), 0)).collect(),
            reply: oneshot::channel().0,
            queued: Queued::new(labels.clone()),
        };
        let batch = [job(&[0, 1, 2]), job(&[3, 3, 4])];
        let views = batch_views(&batch).expect("views");
        let want = [0, 1, 2, 3, 3, 4];
        assert_eq!(views.len(), want.len());
        for (v, &i) in views.iter().zip(&want) {
            assert!(
                std::ptr::eq(v.frame, &slices[i].frames[0]),
                "views in stack order"
            );
        }
        let missing = [SliceJob {
            frames: vec![(slices[0].clone(), 3)],
            reply: oneshot::channel().0,
            queued: Queued::new(labels.clone()),
        }];
        assert!(
            batch_views(&missing).is_err(),
            "a frame that does not exist"
        );
    }
}
