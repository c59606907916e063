//! The scoring engine shared by every stream: slices from all connections meet in one bounded queue, are
//! grouped into batches (up to `max_batch`, waiting at most `max_wait` for the first slice to find
//! company), preprocessed in one GPU dispatch and scored in one ONNX Runtime call. The queue bound is the
//! backpressure: a full queue makes submitters wait, which stops their streams reading, which makes
//! HTTP/2 flow control slow the pushers down. Decoding runs before this stage on the blocking pool, so
//! decode of later slices overlaps preprocessing and scoring of earlier ones.
//!
//! One bad slice never fails its neighbours: a batch whose model call fails is retried slice by slice,
//! and a slice whose pixels the preprocessor refuses is answered with its own error before batching.

use std::{
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::{mpsc, oneshot};

use crate::{
    config::{BatchingConfig, InferenceConfig, PreprocessBackend},
    decode::DecodedInstance,
    inference::{BatchScores, InferenceError, ModelSession},
    model::{Manifest, ModelInfo, ModelPackage},
    preprocess::{
        CpuPreprocessor, GpuPreprocessor, PreprocessError, PreprocessSpec, Preprocessor, SliceView,
    },
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

/// One frame of a decoded instance, waiting to be scored.
struct SliceJob {
    instance: Arc<DecodedInstance>,
    frame: usize,
    reply: oneshot::Sender<Result<ScoredSlice, EngineError>>,
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
}

#[derive(Debug, Clone)]
pub struct SliceMap {
    pub values: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// Handle to the batching worker. Dropping the last handle stops the worker once its queue is drained.
pub struct Engine {
    tx: Option<mpsc::Sender<SliceJob>>,
    info: ModelInfo,
    manifest: Arc<Manifest>,
    preprocess_path: &'static str,
    worker: Option<JoinHandle<()>>,
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
        let manifest = Arc::new(session.manifest().clone());
        let preprocess_path = preprocessor.name();
        let runtime = tokio::runtime::Handle::current();
        let worker = Worker {
            rx,
            session,
            preprocessor,
            spec: manifest.preprocess_spec(),
            max_batch: batching.max_batch.max(1),
            max_wait: Duration::from_millis(batching.max_wait_ms),
            input: Vec::new(),
        };
        let handle = std::thread::Builder::new()
            .name("radstream-engine".into())
            .spawn(move || worker.run(runtime))
            .map_err(EngineError::Thread)?;
        Ok(Self {
            tx: Some(tx),
            info,
            manifest,
            preprocess_path,
            worker: Some(handle),
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
        let session = ModelSession::load(env, package, inference)?;
        let preprocessor = select_preprocessor(backend)?;
        Self::start(session, preprocessor, batching)
    }

    pub fn model(&self) -> &ModelInfo {
        &self.info
    }

    /// False once the worker thread has ended (it only ends when the engine is dropped, or on a bug).
    pub fn is_healthy(&self) -> bool {
        self.worker.as_ref().is_some_and(|w| !w.is_finished())
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// "gpu" or "cpu".
    pub fn preprocess_path(&self) -> &'static str {
        self.preprocess_path
    }

    /// Queues one frame; waits while the queue is full. The receiver yields the slice's scores.
    pub async fn submit(
        &self,
        instance: Arc<DecodedInstance>,
        frame: usize,
    ) -> Result<oneshot::Receiver<Result<ScoredSlice, EngineError>>, EngineError> {
        let (reply, rx) = oneshot::channel();
        let tx = self.tx.as_ref().ok_or(EngineError::ShutDown)?;
        tx.send(SliceJob {
            instance,
            frame,
            reply,
        })
        .await
        .map_err(|_| EngineError::ShutDown)?;
        Ok(rx)
    }
}

impl Drop for Engine {
    /// Closes the queue and waits for the worker to answer what is queued and release the model: a
    /// detached worker could still be inside ONNX Runtime while the process tears the library down.
    /// Joining cannot deadlock on the runtime: a closed channel wakes the worker without any timer.
    fn drop(&mut self) {
        self.tx.take();
        if let Some(worker) = self.worker.take() {
            if worker.join().is_err() {
                tracing::error!("the scoring engine's worker panicked while shutting down");
            }
        }
    }
}

struct Worker {
    rx: mpsc::Receiver<SliceJob>,
    session: ModelSession,
    preprocessor: Box<dyn Preprocessor>,
    spec: PreprocessSpec,
    max_batch: usize,
    max_wait: Duration,
    /// The NCHW batch buffer, reused across batches.
    input: Vec<f32>,
}

impl Worker {
    fn run(mut self, runtime: tokio::runtime::Handle) {
        // Timers are created on this thread: they need the runtime's context.
        let _context = runtime.enter();
        let mut batch: Vec<SliceJob> = Vec::with_capacity(self.max_batch);
        loop {
            let Some(first) = runtime.block_on(self.rx.recv()) else {
                return;
            };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + self.max_wait;
            while batch.len() < self.max_batch {
                match self.rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match runtime.block_on(tokio::time::timeout_at(deadline, self.rx.recv())) {
                            Ok(Some(job)) => batch.push(job),
                            Ok(None) | Err(_) => break,
                        }
                    }
                }
            }
            // A stream that went away no longer waits for these: skip their work.
            batch.retain(|job| !job.reply.is_closed());
            self.process(&mut batch);
            batch.clear();
        }
    }

    fn process(&mut self, batch: &mut Vec<SliceJob>) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.score_guarded(batch) {
            Ok(results) => {
                for (job, result) in batch.drain(..).zip(results) {
                    let _ = job.reply.send(Ok(result));
                }
            }
            Err(e) if batch.len() > 1 => {
                tracing::warn!(
                    batch = batch.len(),
                    "batch failed ({e}); scoring its slices one by one"
                );
                for job in batch.drain(..) {
                    let result = self
                        .score_guarded(std::slice::from_ref(&job))
                        .map(|mut r| r.remove(0));
                    let _ = job.reply.send(result);
                }
            }
            Err(e) => {
                if let Some(job) = batch.pop() {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        tracing::debug!(
            elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
            "batch done"
        );
    }

    /// `score`, with a panic in a codec, driver or runtime turned into this batch's error: the worker
    /// (shared by every stream) must outlive any one bad slice.
    fn score_guarded(&mut self, batch: &[SliceJob]) -> Result<Vec<ScoredSlice>, EngineError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.score(batch))).unwrap_or_else(
            |payload| {
                let detail = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                Err(EngineError::Panicked(detail))
            },
        )
    }

    fn score(&mut self, batch: &[SliceJob]) -> Result<Vec<ScoredSlice>, EngineError> {
        let n = batch.len();
        let views: Vec<SliceView<'_>> = batch
            .iter()
            .map(|job| {
                SliceView::of(&job.instance, job.frame).ok_or_else(|| {
                    EngineError::Preprocess(PreprocessError::InvalidSlice {
                        index: 0,
                        detail: format!("frame {} does not exist", job.frame),
                    })
                })
            })
            .collect::<Result<_, _>>()?;
        let per_slice = (self.spec.channels * self.spec.height * self.spec.width) as usize;
        self.input.resize(n * per_slice, 0.0);
        self.preprocessor
            .preprocess(&self.spec, &views, &mut self.input)?;
        let preprocessed_at = SystemTime::now();
        let BatchScores { scores, map } = self.session.run(&self.input, n)?;
        let scored_at = SystemTime::now();
        let labels = scores.len() / n.max(1);
        Ok((0..n)
            .map(|i| ScoredSlice {
                scores: scores[i * labels..(i + 1) * labels].to_vec(),
                map: map.as_ref().map(|m| {
                    let cell = labels * m.height * m.width;
                    SliceMap {
                        values: m.values[i * cell..(i + 1) * cell].to_vec(),
                        height: m.height,
                        width: m.width,
                    }
                }),
                preprocessed_at,
                scored_at,
                batch_size: n,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, decode, inference};

    /// The CPU reference, with a fault injected: it panics on any batch holding a 1×1 slice.
    struct PanicsOnTinySlices;

    impl Preprocessor for PanicsOnTinySlices {
        fn name(&self) -> &'static str {
            "cpu"
        }
        fn preprocess(
            &mut self,
            spec: &PreprocessSpec,
            slices: &[SliceView<'_>],
            out: &mut [f32],
        ) -> Result<(), PreprocessError> {
            assert!(slices.iter().all(|s| s.rows > 1), "injected fault");
            CpuPreprocessor.preprocess(spec, slices, out)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashing_slice_fails_alone_and_the_engine_goes_on() {
        let env = inference::runtime(&Config::default().ort_library_path()).expect("ONNX Runtime");
        let package = ModelPackage::embedded_default().expect("model");
        let session =
            ModelSession::load(env, &package, &InferenceConfig::default()).expect("session");
        let batching = BatchingConfig {
            max_batch: 4,
            max_wait_ms: 200,
            queue_depth: 8,
        };
        let engine =
            Engine::start(session, Box::new(PanicsOnTinySlices), &batching).expect("engine");

        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/models/lesion-demo/sample-study/slice-06.dcm"
        );
        let bytes = std::fs::read(path).expect("sample slice");
        let good =
            Arc::new(decode::decode_instance(&bytes, &decode::Limits::default()).expect("decodes"));
        let mut tiny = (*good).clone();
        tiny.meta.rows = 1;
        tiny.meta.cols = 1;
        tiny.frames[0].pixels = vec![0.0];
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
}
