use std::path::PathBuf;

use serde::Deserialize;

use crate::preprocess::{PreprocessSpec, Window};

/// `model.toml`. Unknown keys are refused so a typo does not silently fall back to a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub model: ModelSection,
    pub input: InputSpec,
    pub preprocess: PreprocessSection,
    pub outputs: OutputSpec,
    pub labels: Vec<LabelSpec>,
    #[serde(default)]
    pub card: Card,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    pub name: String,
    pub version: String,
    /// ONNX file, relative to the manifest's directory.
    pub file: String,
    #[serde(default)]
    pub description: String,
}

/// The model input: one NCHW float32 tensor with a dynamic batch dimension.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSection {
    /// Fixed window (finite centre, finite width >= 1); absent: the file's first valid window, else the
    /// slice's min/max.
    #[serde(default)]
    pub window: Option<WindowToml>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowToml {
    pub center: f64,
    pub width: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// `[N, labels]` probabilities.
    pub scores: String,
    /// Optional `[N, labels, h, w]` probability map over the model input.
    #[serde(default)]
    pub map: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelSpec {
    pub name: String,
    /// A score at or over this is a positive finding.
    pub threshold: f32,
    /// A score at or over this is a critical finding: an alert goes out at once, before the study
    /// completes. At least `threshold`.
    #[serde(default)]
    pub critical: Option<f32>,
    /// What the study summary reports for this label.
    #[serde(default)]
    pub aggregate: Aggregate,
}

/// The study-level result of a label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// The highest slice score and its slice (and the count of positive slices).
    #[default]
    Max,
    /// As `max`, plus runs of adjacent positive slices (in slice-position order) grouped into one
    /// finding each, with their extent in slices and mm: for lesions that span several slices.
    Groups,
}

/// The model card: what a radiologist or auditor needs to judge the model's output.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Card {
    #[serde(default)]
    pub detects: String,
    #[serde(default)]
    pub training_data: String,
    #[serde(default)]
    pub training: String,
    #[serde(default)]
    pub metrics: String,
    #[serde(default)]
    pub limitations: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin} is not a valid model manifest: {source}")]
    Parse {
        origin: String,
        source: Box<toml::de::Error>,
    },
    #[error("{origin}: {problem}")]
    Invalid { origin: String, problem: String },
}

impl Manifest {
    /// Parses and validates a manifest; `origin` names it in errors (a path, or "embedded ...").
    pub fn parse(text: &str, origin: &str) -> Result<Self, ManifestError> {
        let manifest: Manifest = toml::from_str(text).map_err(|source| ManifestError::Parse {
            origin: origin.to_string(),
            source: Box::new(source),
        })?;
        manifest
            .validate()
            .map_err(|problem| ManifestError::Invalid {
                origin: origin.to_string(),
                problem,
            })?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        let i = &self.input;
        if i.channels != 1 && i.channels != 3 {
            return Err(format!(
                "[input] channels = {} but only 1 or 3 are supported",
                i.channels
            ));
        }
        if i.height == 0 || i.width == 0 || i.height > 4096 || i.width > 4096 {
            return Err(format!(
                "[input] height/width {}x{} must be within 1..=4096",
                i.height, i.width
            ));
        }
        let p = &self.preprocess;
        if p.mean.len() != i.channels as usize || p.std.len() != i.channels as usize {
            return Err(format!(
                "[preprocess] mean ({}) and std ({}) need one value per input channel ({})",
                p.mean.len(),
                p.std.len(),
                i.channels
            ));
        }
        if let Some(s) = p.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!(
                "[preprocess] std values must be positive, found {s}"
            ));
        }
        if let Some(w) = p.window {
            // The same rule as a file's window (PS3.3 C.11.2.1.2), but a manifest is fixed by whoever
            // wrote it: refused at load, not skipped per slice.
            if !w.center.is_finite() {
                return Err(format!(
                    "[preprocess] window.center must be a finite number (found {})",
                    w.center
                ));
            }
            if !(w.width.is_finite() && w.width >= 1.0) {
                return Err(format!(
                    "[preprocess] window.width must be a finite number >= 1 (DICOM PS3.3 C.11.2.1.2; found {})",
                    w.width
                ));
            }
        }
        if self.labels.is_empty() {
            return Err("at least one [[labels]] entry is required".into());
        }
        let mut names = std::collections::HashSet::new();
        for l in &self.labels {
            if !names.insert(l.name.as_str()) {
                return Err(format!("label {:?} is declared twice", l.name));
            }
            if !(0.0..=1.0).contains(&l.threshold) {
                return Err(format!(
                    "label {:?} threshold {} is outside 0..=1",
                    l.name, l.threshold
                ));
            }
            if let Some(c) = l.critical {
                if !(0.0..=1.0).contains(&c) || c < l.threshold {
                    return Err(format!(
                        "label {:?} critical = {c} must be within threshold ({})..=1: a critical \
                         finding is a positive one",
                        l.name, l.threshold
                    ));
                }
            }
        }
        if self.model.name.trim().is_empty() || self.model.version.trim().is_empty() {
            return Err("[model] name and version must not be empty".into());
        }
        Ok(())
    }

    /// The preprocessing specification both the CPU and the WGSL path implement.
    pub fn preprocess_spec(&self) -> PreprocessSpec {
        PreprocessSpec {
            channels: self.input.channels,
            height: self.input.height,
            width: self.input.width,
            window: self.preprocess.window.map(|w| Window {
                center: w.center,
                width: w.width,
            }),
            mean: self.preprocess.mean.clone(),
            std: self.preprocess.std.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[model]
name = "m"
version = "1"
file = "m.onnx"
[input]
name = "image"
channels = 1
height = 64
width = 64
[preprocess]
mean = [0.5]
std = [0.25]
[outputs]
scores = "scores"
[[labels]]
name = "lesion"
threshold = 0.5
"#;

    #[test]
    fn parses_a_minimal_manifest() {
        let m = Manifest::parse(GOOD, "test").expect("valid");
        assert_eq!(m.preprocess_spec().height, 64);
        assert!(m.outputs.map.is_none());
    }

    #[test]
    fn names_the_problem() {
        let bad = GOOD.replace("std = [0.25]", "std = [0.25, 1.0]");
        let err = Manifest::parse(&bad, "models/x/model.toml")
            .expect_err("mismatch")
            .to_string();
        assert!(
            err.contains("models/x/model.toml") && err.contains("one value per input channel"),
            "{err}"
        );
        let bad = GOOD.replace("threshold = 0.5", "threshold = 1.5");
        assert!(Manifest::parse(&bad, "t")
            .expect_err("range")
            .to_string()
            .contains("outside 0..=1"));
        let bad = GOOD.replace("threshold = 0.5", "threshold = 0.5\ncritical = 0.4");
        assert!(Manifest::parse(&bad, "t")
            .expect_err("critical below threshold")
            .to_string()
            .contains("critical = 0.4"));
        let ok = GOOD.replace(
            "threshold = 0.5",
            "threshold = 0.5\ncritical = 0.9\naggregate = \"groups\"",
        );
        let m = Manifest::parse(&ok, "t").expect("critical and groups");
        assert_eq!(
            (m.labels[0].critical, m.labels[0].aggregate),
            (Some(0.9), Aggregate::Groups)
        );
        let bad = GOOD.replace("[outputs]", "[outputz]");
        assert!(Manifest::parse(&bad, "t").is_err());
    }

    #[test]
    fn an_invalid_window_is_refused_at_load_naming_the_field() {
        let with = |window: &str| {
            GOOD.replace(
                "[preprocess]\n",
                &format!("[preprocess]\nwindow = {{ {window} }}\n"),
            )
        };
        let ok = Manifest::parse(&with("center = 40.0, width = 400.0"), "t").expect("valid");
        assert_eq!(
            ok.preprocess_spec().window,
            Some(Window {
                center: 40.0,
                width: 400.0
            })
        );
        // Width 1 is the smallest valid width.
        Manifest::parse(&with("center = 40.0, width = 1.0"), "t").expect("width 1 is valid");
        for (window, field) in [
            ("center = 0.0, width = 0.0", "window.width"),
            ("center = 40.0, width = 0.5", "window.width"),
            ("center = 40.0, width = -400.0", "window.width"),
            ("center = 40.0, width = nan", "window.width"),
            ("center = 40.0, width = inf", "window.width"),
            ("center = nan, width = 400.0", "window.center"),
            ("center = -inf, width = 400.0", "window.center"),
        ] {
            let err = Manifest::parse(&with(window), "models/x/model.toml")
                .expect_err(window)
                .to_string();
            assert!(
                err.contains("models/x/model.toml") && err.contains(field),
                "{window}: {err}"
            );
        }
    }
}
