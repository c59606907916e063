//! The model repository format: one directory per model holding a TOML manifest (`model.toml`) and the
//! ONNX file it names. The manifest is the single source of truth every stage reads: the preprocessing
//! specification, the tensor names the inference stage binds, and the labels and thresholds findings
//! are reported against. A model is identified everywhere by name, version and the sha256 of its ONNX
//! bytes, so a finding can always be traced to the exact weights that produced it.

mod manifest;

pub use manifest::{
    Aggregate, Card, InputSpec, LabelSpec, Manifest, ManifestError, ModelSection, OutputSpec,
    PreprocessSection,
};

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
    pub info: ModelInfo,
}

const DEFAULT_MANIFEST: &str = include_str!("../../models/lesion-demo/model.toml");
const DEFAULT_ONNX: &[u8] = include_bytes!("../../models/lesion-demo/model.onnx");

impl ModelPackage {
    /// Loads `dir/model.toml` and the ONNX file it names.
    pub fn load_dir(dir: &Path) -> Result<Self, ManifestError> {
        let manifest_path = dir.join("model.toml");
        let text = std::fs::read_to_string(&manifest_path).map_err(|source| ManifestError::Io {
            path: manifest_path.clone(),
            source,
        })?;
        let manifest = Manifest::parse(&text, &manifest_path.display().to_string())?;
        let onnx_path = dir.join(&manifest.model.file);
        let onnx = std::fs::read(&onnx_path).map_err(|source| ManifestError::Io {
            path: onnx_path.clone(),
            source,
        })?;
        Ok(Self::new(manifest, onnx))
    }

    /// The default model compiled into the binary (models/lesion-demo).
    pub fn embedded_default() -> Result<Self, ManifestError> {
        let manifest = Manifest::parse(DEFAULT_MANIFEST, "embedded models/lesion-demo/model.toml")?;
        Ok(Self::new(manifest, DEFAULT_ONNX.to_vec()))
    }

    fn new(manifest: Manifest, onnx: Vec<u8>) -> Self {
        let info = ModelInfo {
            name: manifest.model.name.clone(),
            version: manifest.model.version.clone(),
            onnx_sha256: hex::encode(Sha256::digest(&onnx)),
        };
        Self {
            manifest,
            onnx,
            info,
        }
    }
}
