//! Scoring with ONNX Runtime through `ort`, loaded dynamically from a shared library the set-up provisions
//! (the crate's own binary download reaches hosts this service must not depend on). A model is checked
//! against its manifest when it is loaded — input name, layout and size, output names and label count —
//! so a model that does not fit fails at load with a message naming the mismatch, never at the first
//! slice. Batches arrive already preprocessed as one contiguous NCHW buffer, which is handed to ORT
//! without a copy.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
};

use ort::{
    environment::Environment,
    session::Session,
    value::{Outlet, TensorRef, ValueType},
};

use crate::model::{Manifest, ModelInfo, ModelPackage};

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
    #[error("model {model} does not fit its manifest: {problem}")]
    ModelMismatch { model: String, problem: String },
    #[error("model {model}: inference failed: {detail}")]
    Run { model: String, detail: String },
}

static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();

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
    Ok(ENVIRONMENT.get_or_init(|| env))
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

/// One loaded model, ready to score NCHW batches.
pub struct ModelSession {
    session: Session,
    manifest: Manifest,
    info: ModelInfo,
}

impl std::fmt::Debug for ModelSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelSession")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn dims(ty: &ValueType) -> Option<Vec<i64>> {
    match ty {
        ValueType::Tensor { shape, .. } => Some(shape.to_vec()),
        _ => None,
    }
}

/// `-1` (dynamic) matches anything.
fn dim_ok(actual: i64, expected: usize) -> bool {
    actual < 0 || actual as usize == expected
}

impl ModelSession {
    /// Builds the ORT session and checks the graph against the manifest.
    pub fn load(
        env: &Environment,
        package: &ModelPackage,
        options: &crate::config::InferenceConfig,
    ) -> Result<Self, InferenceError> {
        let model = format!("{} {}", package.info.name, package.info.version);
        let load_err = |detail: String| InferenceError::ModelLoad {
            model: model.clone(),
            detail,
        };
        let mut builder = Session::builder(env).map_err(|e| load_err(e.to_string()))?;
        // Spinning is off by default: ORT's pool threads otherwise busy-wait after every run, taking the
        // cores that decoding and the transport need. Measured on 2 cores (`cargo bench -- analyze_stream`):
        // the sample-study stream took 21.3 ms with spinning, 18.4 ms without.
        builder = builder
            .with_intra_threads(options.threads())
            .map_err(|e| load_err(e.to_string()))?
            .with_intra_op_spinning(options.spinning)
            .map_err(|e| load_err(e.to_string()))?;
        let session = builder
            .commit_from_memory(&package.onnx)
            .map_err(|e| load_err(e.to_string()))?;
        check_graph(&session, &package.manifest)
            .map_err(|problem| InferenceError::ModelMismatch { model, problem })?;
        Ok(Self {
            session,
            manifest: package.manifest.clone(),
            info: package.info.clone(),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Scores `n` preprocessed slices laid out NCHW in `input`.
    pub fn run(&mut self, input: &[f32], n: usize) -> Result<BatchScores, InferenceError> {
        let i = &self.manifest.input;
        let (c, h, w) = (i.channels as usize, i.height as usize, i.width as usize);
        // Runs per batch: the model's name is only formatted when there is an error to report.
        let info = &self.info;
        let run_err = |detail: String| InferenceError::Run {
            model: format!("{} {}", info.name, info.version),
            detail,
        };
        if input.len() != n * c * h * w {
            return Err(run_err(format!(
                "input holds {} values, expected {n}x{c}x{h}x{w}",
                input.len()
            )));
        }
        let tensor = TensorRef::from_array_view(([n, c, h, w], input))
            .map_err(|e| run_err(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![i.name.as_str() => tensor])
            .map_err(|e| run_err(e.to_string()))?;
        let labels = self.manifest.labels.len();
        let out = &self.manifest.outputs;
        let scores_value = outputs
            .get(out.scores.as_str())
            .ok_or_else(|| run_err(format!("output {:?} missing", out.scores)))?;
        let (shape, scores) = scores_value
            .try_extract_tensor::<f32>()
            .map_err(|e| run_err(e.to_string()))?;
        if shape.iter().product::<i64>() as usize != n * labels {
            return Err(run_err(format!(
                "output {:?} has shape {shape:?}, expected [{n}, {labels}]",
                out.scores
            )));
        }
        let scores = scores.to_vec();
        let map = match &out.map {
            None => None,
            Some(name) => {
                let value = outputs
                    .get(name.as_str())
                    .ok_or_else(|| run_err(format!("output {name:?} missing")))?;
                let (shape, values) = value
                    .try_extract_tensor::<f32>()
                    .map_err(|e| run_err(e.to_string()))?;
                if shape.len() != 4 || shape[0] as usize != n || shape[1] as usize != labels {
                    return Err(run_err(format!(
                        "output {name:?} has shape {shape:?}, expected [{n}, {labels}, h, w]"
                    )));
                }
                Some(ScoreMap {
                    values: values.to_vec(),
                    height: shape[2] as usize,
                    width: shape[3] as usize,
                })
            }
        };
        Ok(BatchScores { scores, map })
    }
}

/// The graph input or output named by the manifest, or what the graph has instead.
fn outlet<'a>(outlets: &'a [Outlet], name: &str, kind: &str) -> Result<&'a Outlet, String> {
    outlets.iter().find(|o| o.name() == name).ok_or_else(|| {
        let names: Vec<&str> = outlets.iter().map(|o| o.name()).collect();
        format!("manifest {kind} {name:?} is not an {kind} of the graph (it has {names:?})")
    })
}

/// Compares the graph's declared inputs and outputs with the manifest; returns what does not fit.
fn check_graph(session: &Session, manifest: &Manifest) -> Result<(), String> {
    let i = &manifest.input;
    let input = outlet(session.inputs(), &i.name, "input")?;
    let d = dims(input.dtype()).ok_or_else(|| format!("input {:?} is not a tensor", i.name))?;
    let expected = [i.channels as usize, i.height as usize, i.width as usize];
    if d.len() != 4 || !d[1..].iter().zip(expected).all(|(a, e)| dim_ok(*a, e)) {
        return Err(format!(
            "input {:?} has shape {d:?} but the manifest declares [N, {}, {}, {}] (NCHW)",
            i.name, i.channels, i.height, i.width
        ));
    }
    if let ValueType::Tensor { ty, .. } = input.dtype() {
        if *ty != ort::value::TensorElementType::Float32 {
            return Err(format!(
                "input {:?} has element type {ty:?}; radstream feeds float32",
                i.name
            ));
        }
    }
    if session.inputs().len() != 1 {
        return Err(format!(
            "the graph has {} inputs; radstream feeds exactly one",
            session.inputs().len()
        ));
    }
    let labels = manifest.labels.len();
    let output_dims = |name: &str| -> Result<Vec<i64>, String> {
        let o = outlet(session.outputs(), name, "output")?;
        dims(o.dtype()).ok_or_else(|| format!("output {name:?} is not a tensor"))
    };
    let s = output_dims(&manifest.outputs.scores)?;
    if s.len() != 2 || !dim_ok(s[1], labels) {
        return Err(format!(
            "scores output {:?} has shape {s:?} but the manifest declares [N, {labels}] ({labels} labels)",
            manifest.outputs.scores
        ));
    }
    if let Some(map) = &manifest.outputs.map {
        let m = output_dims(map)?;
        if m.len() != 4 || !dim_ok(m[1], labels) {
            return Err(format!(
                "map output {map:?} has shape {m:?} but the manifest declares [N, {labels}, h, w]"
            ));
        }
    }
    Ok(())
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
            err.contains("\"pixels\" is not an input of the graph"),
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
}
