//! Scoring with ONNX Runtime through `ort`, loaded dynamically from a shared library the set-up provisions
//! (the crate's own binary download reaches hosts this service must not depend on). A model is checked
//! against its manifest when it is loaded (`model::validate`: signature, then a dry run of the largest
//! batch) so a model that does not fit fails at load with a message naming the mismatch and the fix,
//! never at the first slice. Batches arrive already preprocessed as one contiguous NCHW float32 buffer;
//! the rest of the service sees only that and per-label probabilities, whatever the graph wants: the
//! session transposes to NHWC, converts to float16/uint8, splits or pads to a fixed batch and applies
//! sigmoid/softmax to logits here. The common case (NCHW float32) is handed to ORT without a copy.
//!
//! Execution providers: the CPU provider unless `[inference] provider` asks for CUDA, so a machine with
//! no GPU needs nothing more than the CPU library. CUDA needs a different library (the GPU build of
//! ONNX Runtime, which loads the NVIDIA runtime at session creation), and a process can hold only one:
//! `scripts/setup.sh --cuda` provisions it on request. Whether CUDA really runs is decided here, not
//! assumed from the configuration: the provider must register (`error_on_failure`) and the session must
//! be created on the device; `provider = "cuda"` fails the load otherwise, naming what is missing and
//! how to get it, and `"auto"` falls back to the CPU with one warning. [`ModelSession::provider`] says
//! which one a session ended up on, for the model list and the findings.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use ort::{
    environment::Environment,
    ep::{self, ExecutionProvider as _},
    session::Session,
    value::{Outlet, TensorElementType, TensorRef, ValueType},
};

use crate::config::{ExecutionProvider, InferenceConfig};
use crate::model::{
    onnx,
    validate::{self, Signature, TensorSig},
    Batch, InputDtype, Layout, Manifest, ModelInfo, ModelPackage, OutputDtype, OutputKind,
};

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error(
        "ONNX Runtime library not found at {path}: run `scripts/setup.sh` (it extracts \
         onnxruntime/capi/libonnxruntime.so.1.31.1 from the onnxruntime==1.31.1 wheel), or point \
         RADSTREAM_ORT_LIB / `ort_library` at that file"
    )]
    LibraryMissing { path: PathBuf },
    #[error("cannot load the ONNX Runtime library {path}: {detail}")]
    LibraryLoad { path: PathBuf, detail: String },
    #[error("model {model}: ONNX Runtime cannot load the graph: {detail}")]
    ModelLoad { model: String, detail: String },
    #[error("model {model} does not fit its manifest: {}", problems.join("; "))]
    ModelMismatch {
        model: String,
        problems: Vec<String>,
    },
    #[error("model {model}: inference failed: {detail}")]
    Run { model: String, detail: String },
    #[error(
        "model {model}: [inference] provider = \"cuda\", but ONNX Runtime's CUDA execution provider \
         cannot be used: {reason}. To get it, run `scripts/setup.sh --cuda` (the onnxruntime-gpu \
         {ORT_VERSION} build and the NVIDIA CUDA 13 / cuDNN 9 runtime libraries it loads) and start with \
         the environment it prints: RADSTREAM_ORT_LIB pointing at the GPU build's libonnxruntime.so, \
         LD_LIBRARY_PATH at its directory; or set provider = \"auto\" (CUDA when usable, else CPU) or \
         \"cpu\""
    )]
    CudaUnavailable { model: String, reason: String },
}

/// The ONNX Runtime version the set-up provisions (CPU and GPU builds alike).
const ORT_VERSION: &str = "1.31.1";

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
/// The library [`ENVIRONMENT`] was loaded from, to name it when it lacks a provider.
static LIBRARY: OnceLock<PathBuf> = OnceLock::new();

/// Loads `libonnxruntime` once per process and returns the shared environment. Later calls return the
/// environment already loaded, whatever path they name (a process cannot hold two ORT libraries).
pub fn runtime(library: &Path) -> Result<&'static Environment, InferenceError> {
    if !library.is_file() {
        return Err(InferenceError::LibraryMissing {
            path: library.to_owned(),
        });
    }
    if let Some(env) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let load_err = |detail: String| InferenceError::LibraryLoad {
        path: library.to_owned(),
        detail,
    };
    let builder = ort::init_from(library).map_err(|e| load_err(e.to_string()))?;
    let env = builder
        .with_name("radstream")
        .build()
        .map_err(|e| load_err(e.to_string()))?;
    let env = ENVIRONMENT.get_or_init(|| env);
    let _ = LIBRARY.set(library.to_owned());
    Ok(env)
}

/// The provider a session was created on (see [`ModelSession::provider`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveProvider {
    Cpu,
    Cuda { device: u16 },
}

impl ActiveProvider {
    /// `"cpu"` or `"cuda"`, as `[inference] provider` spells them.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda { .. } => "cuda",
        }
    }
}

impl std::fmt::Display for ActiveProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda { device } => write!(f, "cuda:{device}"),
        }
    }
}

/// Why a session could not be built: the CUDA provider refused to register, or the session (graph,
/// device) could not be created.
enum BuildFailure {
    Register(String),
    Create(String),
}

/// Builds the ORT session for `package` (external data handed over in memory), on the CUDA provider
/// when `cuda` names a device. Registration is checked (`error_on_failure`): ORT would otherwise log
/// the failure and quietly run everything on the CPU.
fn build_session(
    env: &Environment,
    package: &ModelPackage,
    options: &InferenceConfig,
    cuda: Option<u16>,
) -> Result<Session, BuildFailure> {
    let create = |e: &dyn std::fmt::Display| BuildFailure::Create(e.to_string());
    let mut builder = Session::builder(env).map_err(|e| create(&e))?;
    // Spinning is off by default: ORT's pool threads otherwise busy-wait after every run, taking the
    // cores that decoding and the transport need. Measured on 2 cores (`cargo bench -- analyze_stream`):
    // the sample-study stream took 21.3 ms with spinning, 18.4 ms without.
    builder = builder
        .with_intra_threads(options.threads())
        .map_err(|e| create(&e))?
        .with_intra_op_spinning(options.spinning)
        .map_err(|e| create(&e))?;
    if let Some(device) = cuda {
        let cuda = ep::CUDA::default()
            .with_device_id(i32::from(device))
            .build()
            .error_on_failure();
        builder = builder.with_execution_providers([cuda]).map_err(|e| {
            BuildFailure::Register(format!(
                "CUDAExecutionProvider did not register for device {device}: {}",
                explain_cuda_failure(&e.to_string())
            ))
        })?;
    }
    for (location, bytes) in &package.external {
        builder = builder
            .with_external_initializer_file_in_memory(
                location,
                std::sync::Arc::from(bytes.as_slice()),
            )
            .map_err(|e| create(&e))?;
    }
    builder
        .commit_from_memory(&package.onnx)
        .map_err(|e| create(&e))
}

/// ORT's message without its source location, and what a missing library means here.
fn explain_cuda_failure(detail: &str) -> String {
    let detail = detail
        .rsplit_once(" : FAIL : ")
        .map_or(detail, |(_, d)| d)
        .trim();
    let hint = if detail.contains("libcuda.so") {
        " (libcuda.so.1 is installed by the NVIDIA driver, not by the set-up: this machine has no \
         NVIDIA driver)"
    } else if detail.contains("cannot open shared object file") {
        " (an NVIDIA runtime library is not on LD_LIBRARY_PATH)"
    } else {
        ""
    };
    format!("{detail}{hint}")
}

/// Why CUDA cannot be used before anything is tried: the loaded library is a CPU-only build.
fn cuda_missing_from_library() -> Option<String> {
    let library = LIBRARY
        .get()
        .map_or_else(|| "in use".to_string(), |p| p.display().to_string());
    match ep::CUDA::is_available() {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "the ONNX Runtime library loaded ({library}) is a CPU-only build: it offers no \
             CUDAExecutionProvider"
        )),
        Err(e) => Some(format!(
            "the ONNX Runtime library loaded ({library}) cannot list its execution providers: {e}"
        )),
    }
}

/// Creates the session on the provider `options` asks for: see the module docs.
fn session_on_provider(
    env: &Environment,
    package: &ModelPackage,
    options: &InferenceConfig,
    model: &str,
) -> Result<(Session, ActiveProvider), InferenceError> {
    let load_err = |detail: String| InferenceError::ModelLoad {
        model: model.to_string(),
        detail,
    };
    let cpu = || match build_session(env, package, options, None) {
        Ok(s) => Ok((s, ActiveProvider::Cpu)),
        Err(BuildFailure::Register(d) | BuildFailure::Create(d)) => Err(load_err(d)),
    };
    if options.provider == ExecutionProvider::Cpu {
        return cpu();
    }
    let device = options.cuda_device;
    let why_not = match cuda_missing_from_library() {
        Some(reason) => reason,
        None => match build_session(env, package, options, Some(device)) {
            Ok(s) => return Ok((s, ActiveProvider::Cuda { device })),
            Err(BuildFailure::Register(reason)) => reason,
            // The graph itself may be what failed: the CPU provider tells which (below).
            Err(BuildFailure::Create(detail)) => format!(
                "the session could not be created on CUDA device {device}: {}",
                explain_cuda_failure(&detail)
            ),
        },
    };
    // Either way a CPU session is built: for "auto" it is the fallback, for "cuda" it tells a graph
    // ORT cannot load at all (reported as such) from a CUDA set-up that is missing.
    let (session, active) = cpu()?;
    match options.provider {
        ExecutionProvider::Cuda => Err(InferenceError::CudaUnavailable {
            model: model.to_string(),
            reason: why_not,
        }),
        _ => {
            tracing::warn!(
                "model {model}: [inference] provider = \"auto\": scoring on the CPU, because \
                 ONNX Runtime's CUDA execution provider cannot be used: {why_not} (for CUDA: \
                 scripts/setup.sh --cuda)"
            );
            Ok((session, active))
        }
    }
}

/// Scores for one batch, row-major as the model produced them.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchScores {
    /// `[n, labels]`.
    pub scores: Vec<f32>,
    /// `[n, labels, h, w]` with its grid size, for models with a map output.
    pub map: Option<ScoreMap>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScoreMap {
    pub values: Vec<f32>,
    pub height: usize,
    pub width: usize,
}

/// One loaded model, ready to score NCHW float32 batches whatever the graph's own layout, element types
/// and batch dimension (see [`ModelSession::run`]).
pub struct ModelSession {
    session: Session,
    provider: ActiveProvider,
    manifest: Manifest,
    info: ModelInfo,
    /// Reused per call: the batch in the graph's layout and padded to its fixed batch, and converted.
    staged: Vec<f32>,
    staged_f16: Vec<half::f16>,
    staged_u8: Vec<u8>,
}

impl std::fmt::Debug for ModelSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSession")
            .field("info", &self.info)
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

/// The element type as a manifest spells it (`float32`, `float16`, `uint8`), else ORT's short name.
fn dtype_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Uint8 => "uint8".into(),
        TensorElementType::Float64 => "float64".into(),
        TensorElementType::Int64 => "int64".into(),
        TensorElementType::Int32 => "int32".into(),
        TensorElementType::Int8 => "int8".into(),
        TensorElementType::Bfloat16 => "bfloat16".into(),
        other => other.to_string(),
    }
}

fn tensor_sig(o: &Outlet) -> TensorSig {
    match o.dtype() {
        ValueType::Tensor { ty, shape, .. } => TensorSig {
            name: o.name().to_string(),
            dims: Some(shape.to_vec()),
            dtype: dtype_name(*ty),
        },
        other => TensorSig {
            name: o.name().to_string(),
            dims: None,
            dtype: format!("{other:?}"),
        },
    }
}

/// The graph's declared inputs and outputs, for [`validate::check_signature`].
fn signature(session: &Session) -> Signature {
    Signature {
        inputs: session.inputs().iter().map(tensor_sig).collect(),
        outputs: session.outputs().iter().map(tensor_sig).collect(),
    }
}

/// Rows `[0, rows)` of an output tensor as float32, checked against `[fed, rest...]`.
fn read_output(
    outputs: &ort::session::SessionOutputs<'_>,
    name: &str,
    dtype: OutputDtype,
    fed: usize,
    rows: usize,
) -> Result<(Vec<i64>, Vec<f32>), String> {
    let value = outputs
        .get(name)
        .ok_or_else(|| format!("output {name:?} missing"))?;
    let (shape, values): (Vec<i64>, Vec<f32>) = match dtype {
        OutputDtype::Float32 => {
            let (shape, v) = value
                .try_extract_tensor::<f32>()
                .map_err(|e| format!("output {name:?}: {e}"))?;
            (shape.to_vec(), v.to_vec())
        }
        OutputDtype::Float16 => {
            let (shape, v) = value
                .try_extract_tensor::<half::f16>()
                .map_err(|e| format!("output {name:?}: {e}"))?;
            (shape.to_vec(), v.iter().map(|x| x.to_f32()).collect())
        }
    };
    if shape.first().copied() != Some(fed as i64) || shape.iter().any(|d| *d < 0) {
        return Err(format!(
            "output {name:?} has shape {shape:?} for a batch of {fed}"
        ));
    }
    let per_row = values.len() / fed.max(1);
    let mut values = values;
    values.truncate(rows * per_row);
    Ok((shape, values))
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Softmax over `n` values `stride` apart starting at `start` (max-subtracted, so large logits are
/// exact).
fn softmax_strided(v: &mut [f32], start: usize, n: usize, stride: usize) {
    let idx = |k: usize| start + k * stride;
    let max = (0..n).map(|k| v[idx(k)]).fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for k in 0..n {
        let e = (v[idx(k)] - max).exp();
        v[idx(k)] = e;
        sum += e;
    }
    for k in 0..n {
        v[idx(k)] /= sum;
    }
}

/// Turns the model's raw outputs into probabilities as `[outputs] kind` says.
fn activate(kind: OutputKind, labels: usize, out: &mut BatchScores) {
    match kind {
        OutputKind::Probabilities | OutputKind::ExclusiveProbabilities => {}
        OutputKind::Sigmoid => {
            out.scores.iter_mut().for_each(|x| *x = sigmoid(*x));
            if let Some(m) = &mut out.map {
                m.values.iter_mut().for_each(|x| *x = sigmoid(*x));
            }
        }
        OutputKind::Softmax => {
            for row in 0..out.scores.len() / labels.max(1) {
                softmax_strided(&mut out.scores, row * labels, labels, 1);
            }
            if let Some(m) = &mut out.map {
                let cells = m.height * m.width;
                let rows = m.values.len() / (labels * cells).max(1);
                for row in 0..rows {
                    for cell in 0..cells {
                        softmax_strided(&mut m.values, row * labels * cells + cell, labels, cells);
                    }
                }
            }
        }
    }
}

/// Batch size the service sends when none is configured (`[batching] max_batch`'s default).
const DEFAULT_MAX_BATCH: usize = 16;

impl ModelSession {
    /// Builds the ORT session and checks the graph against the manifest, with a dry run of the default
    /// largest batch. The service should use [`ModelSession::load_with_max_batch`] with its configured
    /// `max_batch`.
    pub fn load(
        env: &Environment,
        package: &ModelPackage,
        options: &crate::config::InferenceConfig,
    ) -> Result<Self, InferenceError> {
        Self::load_with_max_batch(env, package, options, DEFAULT_MAX_BATCH)
    }

    /// Builds the ORT session (external data handed over in memory), checks the graph's signature
    /// against the manifest, then dry-runs a zero batch of the largest size the service will send
    /// (`max_batch`, or the manifest's fixed batch) and checks the outputs' shapes and, for
    /// `kind = "probabilities"`, that they lie in 0..=1. Every problem found is returned at once.
    pub fn load_with_max_batch(
        env: &Environment,
        package: &ModelPackage,
        options: &crate::config::InferenceConfig,
        max_batch: usize,
    ) -> Result<Self, InferenceError> {
        let model = format!("{} {}", package.info.name, package.info.version);
        let load_err = |detail: String| InferenceError::ModelLoad {
            model: model.clone(),
            detail,
        };
        let mismatch = |problems: Vec<String>| InferenceError::ModelMismatch {
            model: model.clone(),
            problems,
        };
        // ORT would open external-data paths itself relative to nothing (an in-memory model): only
        // files checked and read by `ModelPackage::load_dir` are allowed, handed over below.
        let refs = onnx::external_refs(&package.onnx).map_err(|e| load_err(e.to_string()))?;
        if let Some(r) = refs
            .iter()
            .find(|r| !package.external.iter().any(|(l, _)| *l == r.location))
        {
            return Err(mismatch(vec![format!(
                "tensor {:?} has its data in external file {:?}, which was not loaded from the model \
                 directory; load the model with ModelPackage::load_dir",
                r.tensor, r.location
            )]));
        }
        let (session, provider) = session_on_provider(env, package, options, &model)?;
        let problems = validate::check_signature(&package.manifest, &signature(&session));
        if !problems.is_empty() {
            return Err(mismatch(problems));
        }
        let mut this = Self {
            session,
            provider,
            manifest: package.manifest.clone(),
            info: package.info.clone(),
            staged: Vec::new(),
            staged_f16: Vec::new(),
            staged_u8: Vec::new(),
        };
        this.dry_run(max_batch.max(1)).map_err(mismatch)?;
        Ok(this)
    }

    /// Scores a zero batch of the largest size the service sends and checks what comes back.
    fn dry_run(&mut self, max_batch: usize) -> Result<(), Vec<String>> {
        let n = match self.manifest.input.batch {
            Batch::Dynamic => max_batch,
            Batch::Fixed(b) => max_batch.max(b as usize),
        };
        let i = &self.manifest.input;
        let per = (i.channels * i.height * i.width) as usize;
        let zeros = vec![0.0f32; n * per];
        let out = self.run_raw(&zeros, n).map_err(|e| {
            vec![format!(
                "dry run on a zero batch of {n} (the largest the service sends; [batching] \
                 max_batch) failed: {e}"
            )]
        })?;
        let o = &self.manifest.outputs;
        let mut problems = Vec::new();
        let mut check = |field: &str, name: &str, values: &[f32]| {
            if values.iter().any(|v| !v.is_finite()) {
                problems.push(format!(
                    "output {name:?} ([outputs] {field}) is not finite (NaN or infinity) on a zero \
                     batch; check the graph"
                ));
            } else if matches!(
                o.kind,
                OutputKind::Probabilities | OutputKind::ExclusiveProbabilities
            ) {
                if let Some(v) = values.iter().find(|v| !(0.0..=1.0).contains(*v)) {
                    problems.push(format!(
                        "output {name:?} ([outputs] {field}) gives {v} on a zero batch: it looks like \
                         logits, not probabilities (kind = \"{}\" needs values in 0..=1); \
                         declare kind = \"sigmoid\" or \"softmax\" in [outputs]",
                        o.kind
                    ));
                }
            }
        };
        check("scores", &o.scores, &out.scores);
        if let (Some(name), Some(map)) = (&o.map, &out.map) {
            check("map", name, &map.values);
        }
        // Exclusive probabilities sum to 1 per slice; anything else is not what was declared.
        let labels = self.manifest.labels.len();
        if o.kind == OutputKind::ExclusiveProbabilities && labels > 0 {
            if let Some(sum) = out
                .scores
                .chunks(labels)
                .map(|row| row.iter().sum::<f32>())
                .find(|sum| (sum - 1.0).abs() > 1e-3)
            {
                problems.push(format!(
                    "output {:?} ([outputs] scores): a slice's scores sum to {sum} on a zero batch, \
                     not 1: these are not probabilities of mutually exclusive classes; declare \
                     kind = \"probabilities\" (independent labels) or \"softmax\" (logits)",
                    o.scores
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The execution provider this session was created on: with `provider = "auto"`, CUDA only where
    /// it registered and the session was created on the device. (On CUDA, ORT still places the few
    /// operators the CUDA provider lacks on the CPU, as it always does.)
    pub fn provider(&self) -> ActiveProvider {
        self.provider
    }

    /// Scores `n` preprocessed slices laid out NCHW float32 in `input`; returns probabilities per label
    /// (and map cell). Behind this call the batch is transposed to NHWC, converted to float16/uint8,
    /// split into or zero-padded to the graph's fixed batch (padded rows' outputs dropped), and the
    /// outputs converted to float32 and passed through the declared activation, as the manifest says.
    pub fn run(&mut self, input: &[f32], n: usize) -> Result<BatchScores, InferenceError> {
        let mut out = self
            .run_raw(input, n)
            .map_err(|detail| InferenceError::Run {
                model: format!("{} {}", self.info.name, self.info.version),
                detail,
            })?;
        activate(
            self.manifest.outputs.kind,
            self.manifest.labels.len(),
            &mut out,
        );
        Ok(out)
    }

    /// As [`ModelSession::run`] without the activation: the model's own outputs, as float32.
    fn run_raw(&mut self, input: &[f32], n: usize) -> Result<BatchScores, String> {
        let i = &self.manifest.input;
        let (c, h, w) = (i.channels as usize, i.height as usize, i.width as usize);
        let per = c * h * w;
        if input.len() != n * per {
            return Err(format!(
                "input holds {} values, expected {n}x{c}x{h}x{w}",
                input.len()
            ));
        }
        let chunk = match i.batch {
            Batch::Dynamic => n.max(1),
            Batch::Fixed(b) => b as usize,
        };
        let mut scores = Vec::with_capacity(n * self.manifest.labels.len());
        let mut map: Option<ScoreMap> = None;
        let mut start = 0;
        while start < n {
            let rows = chunk.min(n - start);
            let fed = match self.manifest.input.batch {
                Batch::Dynamic => rows,
                Batch::Fixed(b) => b as usize,
            };
            let part = self.run_chunk(&input[start * per..(start + rows) * per], rows, fed)?;
            scores.extend_from_slice(&part.scores);
            match (&mut map, part.map) {
                (None, m) => map = m,
                (Some(all), Some(m)) if (all.height, all.width) == (m.height, m.width) => {
                    all.values.extend_from_slice(&m.values)
                }
                (Some(_), _) => return Err("map size changed between batches".into()),
            }
            start += rows;
        }
        Ok(BatchScores { scores, map })
    }

    /// One call of the graph: `rows` slices (NCHW float32) fed as a batch of `fed >= rows`.
    fn run_chunk(&mut self, input: &[f32], rows: usize, fed: usize) -> Result<BatchScores, String> {
        let Self {
            session,
            manifest,
            staged,
            staged_f16,
            staged_u8,
            ..
        } = self;
        let i = &manifest.input;
        let (c, h, w) = (i.channels as usize, i.height as usize, i.width as usize);
        let per = c * h * w;
        let shape = match i.layout {
            Layout::Nchw => [fed, c, h, w],
            Layout::Nhwc => [fed, h, w, c],
        };
        // The common case (NCHW, no padding) hands the caller's buffer to ORT without a copy.
        let data: &[f32] = if i.layout == Layout::Nchw && fed == rows {
            input
        } else {
            staged.clear();
            staged.resize(fed * per, 0.0);
            match i.layout {
                Layout::Nchw => staged[..input.len()].copy_from_slice(input),
                Layout::Nhwc => {
                    let plane = h * w;
                    for (slice, out) in input.chunks_exact(per).zip(staged.chunks_exact_mut(per)) {
                        for p in 0..plane {
                            for ch in 0..c {
                                out[p * c + ch] = slice[ch * plane + p];
                            }
                        }
                    }
                }
            }
            staged
        };
        let err = |e: ort::Error| e.to_string();
        let outputs = match i.dtype {
            InputDtype::Float32 => {
                let t = TensorRef::from_array_view((shape, data)).map_err(err)?;
                session.run(ort::inputs![i.name.as_str() => t])
            }
            InputDtype::Float16 => {
                staged_f16.clear();
                staged_f16.extend(data.iter().map(|x| half::f16::from_f32(*x)));
                let t = TensorRef::from_array_view((shape, staged_f16.as_slice())).map_err(err)?;
                session.run(ort::inputs![i.name.as_str() => t])
            }
            InputDtype::Uint8 => {
                staged_u8.clear();
                // round(clamp(x, 0, 255)); NaN (never produced by preprocessing) becomes 0.
                staged_u8.extend(data.iter().map(|x| x.clamp(0.0, 255.0).round() as u8));
                let t = TensorRef::from_array_view((shape, staged_u8.as_slice())).map_err(err)?;
                session.run(ort::inputs![i.name.as_str() => t])
            }
        }
        .map_err(err)?;
        let labels = manifest.labels.len();
        let o = &manifest.outputs;
        let (shape, scores) = read_output(&outputs, &o.scores, o.dtype, fed, rows)?;
        if shape != [fed as i64, labels as i64] {
            return Err(format!(
                "output {:?} has shape {shape:?}, expected [{fed}, {labels}] ({labels} labels)",
                o.scores
            ));
        }
        let map = match &o.map {
            None => None,
            Some(name) => {
                let (shape, values) = read_output(&outputs, name, o.dtype, fed, rows)?;
                if shape.len() != 4 || shape[1] != labels as i64 {
                    return Err(format!(
                        "output {name:?} has shape {shape:?}, expected [{fed}, {labels}, h, w]"
                    ));
                }
                Some(ScoreMap {
                    values,
                    height: shape[2] as usize,
                    width: shape[3] as usize,
                })
            }
        };
        Ok(BatchScores { scores, map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn env() -> &'static Environment {
        runtime(&Config::default().ort_library_path())
            .expect("ONNX Runtime library (run scripts/setup.sh)")
    }

    #[test]
    fn the_default_model_loads_and_scores_a_batch() {
        let package = ModelPackage::embedded_default().expect("embedded manifest");
        let mut session = ModelSession::load(env(), &package, &Default::default())
            .expect("default model fits its manifest");
        let i = &package.manifest.input;
        let per = (i.channels * i.height * i.width) as usize;
        let out = session.run(&vec![0.0; 3 * per], 3).expect("scores");
        assert_eq!(out.scores.len(), 3 * package.manifest.labels.len());
        assert!(
            out.scores.iter().all(|s| (0.0..=1.0).contains(s)),
            "{:?}",
            out.scores
        );
        let map = out.map.expect("the default model has a map output");
        assert_eq!(map.values.len(), 3 * map.height * map.width);
        let err = session
            .run(&vec![0.0; per + 1], 1)
            .expect_err("wrong length")
            .to_string();
        assert!(err.contains("expected 1x"), "{err}");
    }

    #[test]
    fn a_model_that_does_not_fit_its_manifest_is_refused_by_name() {
        let mut package = ModelPackage::embedded_default().expect("embedded manifest");
        package.manifest.input.height = 128;
        let err = ModelSession::load(env(), &package, &Default::default())
            .expect_err("size mismatch")
            .to_string();
        assert!(
            err.contains("does not fit its manifest") && err.contains("128"),
            "{err}"
        );

        let mut package = ModelPackage::embedded_default().expect("embedded manifest");
        package.manifest.input.name = "pixels".into();
        let err = ModelSession::load(env(), &package, &Default::default())
            .expect_err("name mismatch")
            .to_string();
        assert!(
            err.contains("\"pixels\" is not an input of the graph")
                && err.contains("set name = \"image\" in [input]"),
            "{err}"
        );

        let mut package = ModelPackage::embedded_default().expect("embedded manifest");
        package.manifest.labels.push(crate::model::LabelSpec {
            name: "extra".into(),
            threshold: 0.5,
            critical: None,
            aggregate: Default::default(),
        });
        let err = ModelSession::load(env(), &package, &Default::default())
            .expect_err("label count")
            .to_string();
        assert!(err.contains("2 labels"), "{err}");

        let mut package = ModelPackage::embedded_default().expect("embedded manifest");
        package.onnx = b"not an onnx graph".to_vec();
        let err = ModelSession::load(env(), &package, &Default::default())
            .expect_err("garbage")
            .to_string();
        assert!(err.contains("cannot load the graph"), "{err}");
    }

    /// The tests' library (`scripts/setup.sh`'s CPU build) offers no CUDA provider: what `cuda` and
    /// `auto` do on a machine without the GPU build.
    #[test]
    fn cpu_is_the_default_auto_falls_back_to_it_and_cuda_says_what_is_missing() {
        let env = env();
        assert_eq!(
            ep::CUDA::is_available().ok(),
            Some(false),
            "these tests expect the CPU build of ONNX Runtime (RADSTREAM_ORT_LIB)"
        );
        let package = ModelPackage::embedded_default().expect("embedded manifest");
        let session = ModelSession::load(env, &package, &Default::default()).expect("cpu");
        assert_eq!(session.provider(), ActiveProvider::Cpu);
        assert_eq!(session.provider().name(), "cpu");

        let auto = InferenceConfig {
            provider: ExecutionProvider::Auto,
            ..Default::default()
        };
        let mut session = ModelSession::load(env, &package, &auto).expect("auto falls back");
        assert_eq!(session.provider().name(), "cpu");
        let per = 64 * 64;
        let scores = session
            .run(&vec![0.0; 2 * per], 2)
            .expect("scores on the CPU");
        assert_eq!(scores.scores.len(), 2);

        let cuda = InferenceConfig {
            provider: ExecutionProvider::Cuda,
            cuda_device: 1,
            ..Default::default()
        };
        let err = ModelSession::load(env, &package, &cuda).expect_err("no CUDA provider");
        assert!(
            matches!(err, InferenceError::CudaUnavailable { .. }),
            "{err:?}"
        );
        let err = err.to_string();
        for part in [
            "provider = \"cuda\"",
            "CPU-only build",
            "no CUDAExecutionProvider",
            "scripts/setup.sh --cuda",
            "RADSTREAM_ORT_LIB",
            "LD_LIBRARY_PATH",
            "provider = \"auto\"",
        ] {
            assert!(err.contains(part), "{part:?} missing from: {err}");
        }

        // A graph ORT cannot load is reported as such, whichever provider was asked for.
        let mut package = ModelPackage::embedded_default().expect("embedded manifest");
        package.onnx = b"not an onnx graph".to_vec();
        for options in [&cuda, &auto] {
            let err = ModelSession::load(env, &package, options)
                .expect_err("garbage")
                .to_string();
            assert!(err.contains("cannot load the graph"), "{err}");
        }
    }

    #[test]
    fn cuda_failures_name_the_missing_library_and_what_provides_it() {
        let driver = explain_cuda_failure(
            "/src/provider_bridge_ort.cc:2043 Get() [ONNXRuntimeError] : 1 : FAIL : Failed to load \
             library libonnxruntime_providers_cuda.so with error: libcuda.so.1: cannot open shared \
             object file: No such file or directory\n",
        );
        assert!(
            driver.starts_with("Failed to load library libonnxruntime_providers_cuda.so")
                && driver.contains("libcuda.so.1: cannot open")
                && driver.ends_with("this machine has no NVIDIA driver)"),
            "{driver}"
        );
        let runtime = explain_cuda_failure(
            "Failed to load library x.so with error: libcublasLt.so.13: cannot open shared object file",
        );
        assert!(
            runtime.contains("libcublasLt.so.13") && runtime.ends_with("not on LD_LIBRARY_PATH)"),
            "{runtime}"
        );
        assert_eq!(
            explain_cuda_failure("CUDA failure 100: no CUDA-capable device is detected"),
            "CUDA failure 100: no CUDA-capable device is detected"
        );
    }

    #[test]
    fn the_active_provider_is_named_as_the_configuration_spells_it() {
        assert_eq!(ActiveProvider::Cpu.name(), "cpu");
        assert_eq!(ActiveProvider::Cuda { device: 2 }.name(), "cuda");
        assert_eq!(ActiveProvider::Cuda { device: 2 }.to_string(), "cuda:2");
        assert_eq!(ActiveProvider::Cpu.to_string(), "cpu");
    }

    #[test]
    fn a_missing_library_says_how_to_get_it() {
        let err = runtime(Path::new("/nonexistent/libonnxruntime.so"))
            .expect_err("missing")
            .to_string();
        assert!(
            err.contains("scripts/setup.sh") && err.contains("RADSTREAM_ORT_LIB"),
            "{err}"
        );
    }

    #[test]
    fn activations_turn_logits_into_probabilities() {
        let mut out = BatchScores {
            scores: vec![0.0, 2.0, -1.0, 1000.0, 0.0, -1000.0],
            map: Some(ScoreMap {
                // 1 row, 3 labels, 1x2 cells: [label][cell].
                values: vec![0.0, 5.0, 0.0, 5.0, 0.0, 5.0],
                height: 1,
                width: 2,
            }),
        };
        activate(OutputKind::Softmax, 3, &mut out);
        let row0: f32 = out.scores[..3].iter().sum();
        assert!((row0 - 1.0).abs() < 1e-6, "{:?}", out.scores);
        let e = [1.0f32, 2.0f32.exp(), (-1.0f32).exp()];
        let sum: f32 = e.iter().sum();
        for (got, want) in out.scores[..3].iter().zip(e.iter().map(|x| x / sum)) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
        assert_eq!(
            &out.scores[3..],
            &[1.0, 0.0, 0.0],
            "large logits stay exact"
        );
        let map = out.map.expect("map");
        for v in &map.values {
            assert!(
                (v - 1.0 / 3.0).abs() < 1e-6,
                "softmax across labels per cell: {v}"
            );
        }

        let mut out = BatchScores {
            scores: vec![0.0, 3.0, -3.0],
            map: None,
        };
        activate(OutputKind::Sigmoid, 3, &mut out);
        assert_eq!(out.scores[0], 0.5);
        assert!((out.scores[1] - 1.0 / (1.0 + (-3.0f32).exp())).abs() < 1e-7);
        assert!((out.scores[1] + out.scores[2] - 1.0).abs() < 1e-6);

        let mut out = BatchScores {
            scores: vec![0.25],
            map: None,
        };
        activate(OutputKind::Probabilities, 1, &mut out);
        assert_eq!(out.scores, [0.25]);
    }

    #[test]
    fn the_default_model_is_dry_run_at_its_largest_batch_and_an_nhwc_declaration_is_refused() {
        let package = ModelPackage::embedded_default().expect("embedded manifest");
        ModelSession::load_with_max_batch(env(), &package, &Default::default(), 64)
            .expect("a batch of 64 runs");
        let mut package = ModelPackage::embedded_default().expect("embedded manifest");
        package.manifest.input.layout = Layout::Nhwc;
        let err = ModelSession::load(env(), &package, &Default::default())
            .expect_err("layout")
            .to_string();
        assert!(
            err.contains("input \"image\" is [N, 1, 64, 64], which is NCHW")
                && err.contains("declare layout = \"NCHW\" in [input]"),
            "{err}"
        );
        let mut package = ModelPackage::embedded_default().expect("embedded manifest");
        package.manifest.input.batch = Batch::Fixed(4);
        let mut session = ModelSession::load(env(), &package, &Default::default())
            .expect("a dynamic graph may be fed a fixed batch");
        let per = 64 * 64;
        let one = session.run(&vec![0.1; per], 1).expect("padded").scores;
        let five = session.run(&vec![0.1; 5 * per], 5).expect("split").scores;
        assert_eq!(five.len(), 5);
        assert!(five.iter().all(|s| *s == one[0]), "{one:?} {five:?}");
    }

    #[test]
    fn an_in_memory_model_may_not_name_external_data() {
        // A minimal ModelProto: graph { initializer { name "w", external_data {location "w.bin"}, data_location 1 } }.
        let entry = [&[0x0a, 8][..], b"location", &[0x12, 5], b"w.bin"].concat();
        let tensor = [
            &[0x42, 1][..],
            b"w",
            &[0x6a, entry.len() as u8],
            &entry,
            &[0x70, 1],
        ]
        .concat();
        let graph = [&[0x2a, tensor.len() as u8][..], &tensor].concat();
        let model = [&[0x3a, graph.len() as u8][..], &graph].concat();
        let mut package = ModelPackage::embedded_default().expect("embedded manifest");
        package.onnx = model;
        let err = ModelSession::load(env(), &package, &Default::default())
            .expect_err("external data without a directory")
            .to_string();
        assert!(
            err.contains("\"w.bin\"") && err.contains("not loaded from the model directory"),
            "{err}"
        );
    }
}
