//! The model repository format: one directory per model holding a TOML manifest (`model.toml`) and the
//! ONNX file it names. The manifest is the single source of truth every stage reads: the preprocessing
//! specification, the tensor names the inference stage binds, and the labels and thresholds findings
//! are reported against. A model is identified everywhere by name, version and the sha256 of its ONNX
//! bytes (and of its external-data files, for a model that has them), so a finding can always be traced
//! to the exact weights that produced it. Every file a model directory names — the ONNX file, its
//! external data — must resolve inside that directory (see `onnx`): a manifest or a graph from
//! elsewhere must not make the service read files beside it.

mod manifest;
pub mod onnx;
pub mod rules;
pub mod validate;

pub use manifest::{
    label_positive, Aggregate, Batch, Card, InputDtype, InputSpec, LabelSpec, Layout, Manifest,
    ManifestError, ModelSection, OutputDtype, OutputKind, OutputSpec, PreprocessSection,
    MAX_FIXED_BATCH,
};
pub use rules::{AppliesToToml, Exclusion, ModelRules};

use std::path::Path;

use sha2::{Digest, Sha256};

/// Name, version and content hash of a model: what every finding carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub onnx_sha256: String,
}

/// A manifest together with the ONNX bytes it describes, validated against each other only in so far as
/// the manifest alone allows; the inference stage checks the graph's inputs and outputs when it loads it.
#[derive(Debug, Clone)]
pub struct ModelPackage {
    pub manifest: Manifest,
    pub onnx: Vec<u8>,
    /// External-data files the graph names, by the location it spells, each checked to lie inside the
    /// model directory and read: ORT gets them in memory and never opens a path itself.
    pub external: Vec<(String, Vec<u8>)>,
    pub info: ModelInfo,
}

const DEFAULT_MANIFEST: &str = include_str!("../../models/lesion-demo/1.0.0/model.toml");
const DEFAULT_ONNX: &[u8] = include_bytes!("../../models/lesion-demo/1.0.0/model.onnx");

impl ModelPackage {
    /// Loads `dir/model.toml` and the ONNX file it names.
    pub fn load_dir(dir: &Path) -> Result<Self, ManifestError> {
        let manifest_path = dir.join("model.toml");
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| ManifestError::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let origin = manifest_path.display().to_string();
        let manifest = Manifest::parse(&text, &origin)?;
        let onnx_path = onnx::resolve_inside(dir, &manifest.model.file).map_err(|problem| {
            ManifestError::Invalid {
                origin: origin.clone(),
                problem: format!("[model] file = {:?} {problem}", manifest.model.file),
            }
        })?;
        let bytes = std::fs::read(&onnx_path).map_err(|source| ManifestError::Io {
            path: onnx_path.clone(),
            source,
        })?;
        let external =
            onnx::load_external(&bytes, Some(dir)).map_err(|e| ManifestError::Invalid {
                origin: onnx_path.display().to_string(),
                problem: e.to_string(),
            })?;
        Ok(Self::new(manifest, bytes, external))
    }

    /// The default model compiled into the binary (models/lesion-demo).
    pub fn embedded_default() -> Result<Self, ManifestError> {
        let manifest = Manifest::parse(
            DEFAULT_MANIFEST,
            "embedded models/lesion-demo/1.0.0/model.toml",
        )?;
        Ok(Self::new(manifest, DEFAULT_ONNX.to_vec(), Vec::new()))
    }

    /// `onnx_sha256` is the sha256 of the graph bytes alone for a self-contained model (as before
    /// external data was supported), else of the graph bytes followed, per external file in location
    /// order, by the location, a NUL, its length (u64 little-endian) and its bytes.
    fn new(manifest: Manifest, onnx: Vec<u8>, external: Vec<(String, Vec<u8>)>) -> Self {
        let mut hash = Sha256::new();
        hash.update(&onnx);
        for (location, bytes) in &external {
            hash.update(location.as_bytes());
            hash.update([0]);
            hash.update((bytes.len() as u64).to_le_bytes());
            hash.update(bytes);
        }
        let info = ModelInfo {
            name: manifest.model.name.clone(),
            version: manifest.model.version.clone(),
            onnx_sha256: hex::encode(hash.finalize()),
        };
        Self {
            manifest,
            onnx,
            external,
            info,
        }
    }
}
