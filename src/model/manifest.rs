use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use super::rules::{AppliesToToml, ModelRules};
use crate::preprocess::{
    ManifestWindows, PreprocessSpec, Window, MAX_CONTEXT, MAX_STACKED_WINDOWS,
};

/// The positive rule of [`Manifest::positive`], for callers that hold the labels without the manifest:
/// with `exclusive` (softmax classes) only the most probable class can be positive (ties: the first),
/// and only at or over its threshold; otherwise each label is judged alone.
pub fn label_positive(labels: &[LabelSpec], exclusive: bool, scores: &[f32], index: usize) -> bool {
    let (Some(label), Some(&score)) = (labels.get(index), scores.get(index)) else {
        return false;
    };
    if score.is_nan() || score < label.threshold {
        return false;
    }
    if !exclusive {
        return true;
    }
    let n = labels.len().min(scores.len());
    scores[..n]
        .iter()
        .enumerate()
        .all(|(j, s)| j == index || *s < score || (*s == score && j > index))
}

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
    /// Which instances and studies the model is for, as written (`[applies_to]`); absent: all.
    #[serde(default)]
    pub applies_to: AppliesToToml,
    /// `applies_to` validated and compiled by [`Manifest::parse`]: what the intake and the registry use.
    #[serde(skip)]
    pub rules: ModelRules,
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

/// The model input: one tensor. The service always preprocesses into NCHW float32; `layout`, `dtype` and
/// `batch` say how the inference stage hands that to the graph (see `inference`), so a model exported
/// for another runtime fits without re-exporting it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    /// Axis order of the graph's input.
    #[serde(default)]
    pub layout: Layout,
    /// Element type of the graph's input.
    #[serde(default)]
    pub dtype: InputDtype,
    /// The graph's batch dimension: `"dynamic"` or a fixed size.
    #[serde(default)]
    pub batch: Batch,
    /// 2.5D: the input of a slice stacks the `2·context + 1` neighbouring slices of its series, in
    /// slice-position order (edges replicated), as its channels; 0 (the default): one slice. At most
    /// [`MAX_CONTEXT`]. Needs `channels = 2·context + 1`, monochrome slices, and one window.
    #[serde(default)]
    pub context: u32,
}

/// Axis order of a 4-D image tensor.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Layout {
    /// `[N, C, H, W]` (PyTorch, the service's own).
    #[default]
    #[serde(rename = "NCHW")]
    Nchw,
    /// `[N, H, W, C]` (TensorFlow/Keras, JAX).
    #[serde(rename = "NHWC")]
    Nhwc,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        })
    }
}

/// Element type of the graph's input. The normalised float32 values are converted: `float16` by
/// round-to-nearest-even (`half::f16::from_f32`), `uint8` as `round(clamp(x, 0, 255))` (halves away
/// from zero) — so a uint8 model expects `[preprocess]` to map pixels onto 0..=255 (e.g. mean 0,
/// std 1/255).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputDtype {
    #[default]
    Float32,
    Float16,
    Uint8,
}

impl std::fmt::Display for InputDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InputDtype::Float32 => "float32",
            InputDtype::Float16 => "float16",
            InputDtype::Uint8 => "uint8",
        })
    }
}

/// Element type of the graph's outputs, converted to float32 on the way out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputDtype {
    #[default]
    Float32,
    Float16,
}

impl std::fmt::Display for OutputDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputDtype::Float32 => "float32",
            OutputDtype::Float16 => "float16",
        })
    }
}

/// The graph's batch dimension. A fixed one does not limit the service's batches: larger ones are split,
/// smaller ones padded with zero slices whose outputs are dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Batch {
    #[default]
    Dynamic,
    Fixed(u32),
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Batch::Dynamic => f.write_str("dynamic"),
            Batch::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// The most slices one fixed batch may hold (a bound on the padding buffer a manifest can ask for).
pub const MAX_FIXED_BATCH: u32 = 1024;

impl<'de> Deserialize<'de> for Batch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Batch;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(
                    f,
                    "\"dynamic\" or a fixed batch size 1..={MAX_FIXED_BATCH} (the graph's first input dimension)"
                )
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Batch, E> {
                if v == "dynamic" {
                    Ok(Batch::Dynamic)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Batch, E> {
                match u32::try_from(v) {
                    Ok(n) if (1..=MAX_FIXED_BATCH).contains(&n) => Ok(Batch::Fixed(n)),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Batch, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSection {
    /// Fixed window (finite centre, finite width >= 1) for every channel; absent (and no `windows`):
    /// the file's first valid window, else the slice's min/max.
    #[serde(default)]
    pub window: Option<WindowToml>,
    /// Fixed windows stacked as channels: channel k is windowed with window k, one per `[input]`
    /// channel (e.g. brain, subdural and bone windows for a CT model). Excludes `window`.
    #[serde(default)]
    pub windows: Option<Vec<WindowToml>>,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// `[preprocess.modality.<term>]`, keyed by DICOM Modality (0008,0060) defined term: windows that
    /// replace the default ones (`window`/`windows`/the file's) for slices of that modality.
    #[serde(default)]
    pub modality: BTreeMap<String, ModalityWindowsToml>,
}

/// `[preprocess.modality.<term>]`: exactly one of `window` and `windows`, as in `[preprocess]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModalityWindowsToml {
    #[serde(default)]
    pub window: Option<WindowToml>,
    #[serde(default)]
    pub windows: Option<Vec<WindowToml>>,
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
    /// `[N, labels]` scores.
    pub scores: String,
    /// Optional `[N, labels, h, w]` map over the model input.
    #[serde(default)]
    pub map: Option<String>,
    /// What the outputs hold; the service turns them into probabilities.
    #[serde(default)]
    pub kind: OutputKind,
    /// Element type of the outputs.
    #[serde(default)]
    pub dtype: OutputDtype,
}

/// What the model's outputs hold. With `sigmoid` or `softmax` they are logits and the service applies
/// the activation (to the map too: elementwise, or across the labels axis per map cell).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Already probabilities in 0..=1, one independent score per label.
    #[default]
    Probabilities,
    /// Independent logits per label (multi-label).
    Sigmoid,
    /// Logits of mutually exclusive classes: exactly one label describes a slice.
    Softmax,
    /// Probabilities of mutually exclusive classes (the graph ends in its own softmax; a Keras export
    /// typically does): used as they are, and only the most probable class can be positive.
    #[serde(rename = "exclusive-probabilities")]
    ExclusiveProbabilities,
}

impl std::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputKind::Probabilities => "probabilities",
            OutputKind::Sigmoid => "sigmoid",
            OutputKind::Softmax => "softmax",
            OutputKind::ExclusiveProbabilities => "exclusive-probabilities",
        })
    }
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
        let mut manifest: Manifest =
            toml::from_str(text).map_err(|source| ManifestError::Parse {
                origin: origin.to_string(),
                source: Box::new(source),
            })?;
        let invalid = |problem| ManifestError::Invalid {
            origin: origin.to_string(),
            problem,
        };
        manifest.validate().map_err(invalid)?;
        manifest.rules =
            ModelRules::compile(&manifest.model, &manifest.applies_to).map_err(invalid)?;
        Ok(manifest)
    }

    fn validate(&self) -> Result<(), String> {
        let i = &self.input;
        self.check_context()?;
        if i.context == 0 && i.channels != 1 && i.channels != 3 {
            return Err(format!(
                "[input] channels = {} but only 1 or 3 are supported (or 2·context + 1 for a 2.5D \
                 model with context = k)",
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
        check_windows(
            "[preprocess]",
            p.window,
            p.windows.as_deref(),
            i.channels,
            true,
        )?;
        let mut terms = std::collections::HashSet::new();
        for (term, m) in &p.modality {
            let table = format!("[preprocess.modality.{term}]");
            let upper = term.trim().to_ascii_uppercase();
            if !crate::decode::MODALITY_DEFINED_TERMS.contains(&upper.as_str()) {
                return Err(format!(
                    "{table}: {term:?} is not a DICOM Modality (0008,0060) defined term (PS3.3 \
                     C.7.3.1.1.1); accepted: {}",
                    crate::decode::MODALITY_DEFINED_TERMS.join(", ")
                ));
            }
            if !terms.insert(upper) {
                return Err(format!(
                    "{table}: modality {term:?} is given windows twice (terms are case-insensitive)"
                ));
            }
            check_windows(&table, m.window, m.windows.as_deref(), i.channels, false)?;
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
        check_relative_file(&self.model.file)
            .map_err(|problem| format!("[model] file = {:?} {problem}", self.model.file))?;
        if self.exclusive() && self.labels.len() < 2 {
            return Err(format!(
                "[outputs] kind = \"{}\" with one label: mutually exclusive classes need at least \
                 two; declare every class as a [[labels]] entry, or use kind = \"sigmoid\"",
                self.outputs.kind
            ));
        }
        Ok(())
    }

    /// `[input] context`: within 0..=MAX_CONTEXT, `channels = 2k+1`, and one window per input (no
    /// windows stacked as channels: every slice of the stack takes the centre slice's window).
    fn check_context(&self) -> Result<(), String> {
        let k = self.input.context;
        if k == 0 {
            return Ok(());
        }
        if k > MAX_CONTEXT {
            return Err(format!(
                "[input] context = {k} but at most {MAX_CONTEXT} is supported (a stack of {} \
                 slices); set context to 0..={MAX_CONTEXT}",
                2 * MAX_CONTEXT + 1
            ));
        }
        let want = 2 * k + 1;
        if self.input.channels != want {
            return Err(format!(
                "[input] context = {k} stacks 2·{k} + 1 = {want} neighbouring slices as channels but \
                 channels = {}; set channels = {want} (or the context that matches the model's channels)",
                self.input.channels
            ));
        }
        let p = &self.preprocess;
        let stacked = std::iter::once(("[preprocess]".to_string(), &p.windows)).chain(
            p.modality
                .iter()
                .map(|(t, m)| (format!("[preprocess.modality.{t}]"), &m.windows)),
        );
        for (table, windows) in stacked {
            if let Some(ws) = windows.as_ref().filter(|ws| ws.len() > 1) {
                return Err(format!(
                    "{table} windows has {} entries but [input] context = {k}: a 2.5D model's \
                     channels are neighbouring slices, all windowed with the centre slice's one \
                     window, so windows cannot be stacked as channels; use window = {{ center, width }} \
                     (or drop context)",
                    ws.len()
                ));
            }
        }
        Ok(())
    }

    /// Whether label `index` is positive given one slice's scores (all labels, probabilities). For
    /// mutually exclusive classes (`kind = "softmax"`) only the most probable class can be positive
    /// (ties: the first), and only at or over its threshold; otherwise each label is judged alone.
    pub fn positive(&self, scores: &[f32], index: usize) -> bool {
        label_positive(&self.labels, self.exclusive(), scores, index)
    }

    /// Whether the labels are mutually exclusive classes (`kind = "softmax"`).
    pub fn exclusive(&self) -> bool {
        matches!(
            self.outputs.kind,
            OutputKind::Softmax | OutputKind::ExclusiveProbabilities
        )
    }

    /// The preprocessing specification both the CPU and the WGSL path implement.
    pub fn preprocess_spec(&self) -> PreprocessSpec {
        PreprocessSpec {
            channels: self.input.channels,
            height: self.input.height,
            width: self.input.width,
            window: self.manifest_windows(),
            mean: self.preprocess.mean.clone(),
            std: self.preprocess.std.clone(),
            context: self.input.context,
        }
    }
}

impl Manifest {
    /// The `[preprocess]` windows as the specification takes them; `None` when none is given.
    fn manifest_windows(&self) -> Option<ManifestWindows> {
        let p = &self.preprocess;
        let list = |one: Option<WindowToml>, many: &Option<Vec<WindowToml>>| -> Vec<Window> {
            one.into_iter()
                .chain(many.iter().flatten().copied())
                .map(|w| Window {
                    center: w.center,
                    width: w.width,
                })
                .collect()
        };
        let windows = ManifestWindows {
            default: list(p.window, &p.windows),
            by_modality: p
                .modality
                .iter()
                .map(|(term, m)| (term.trim().to_ascii_uppercase(), list(m.window, &m.windows)))
                .collect(),
        };
        (!windows.default.is_empty() || !windows.by_modality.is_empty()).then_some(windows)
    }
}

/// Validates one table's `window` / `windows` pair: not both; `windows` one per `[input]` channel (at
/// most [`MAX_STACKED_WINDOWS`]); every window valid as a file's must be (PS3.3 C.11.2.1.2) — but a
/// manifest is fixed by whoever wrote it, so it is refused at load, not skipped per slice. With
/// `optional` false (a per-modality table) one of the two is required.
fn check_windows(
    table: &str,
    window: Option<WindowToml>,
    windows: Option<&[WindowToml]>,
    channels: u32,
    optional: bool,
) -> Result<(), String> {
    let named: Vec<(String, WindowToml)> = match (window, windows) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{table} window and windows are mutually exclusive: give one window for every \
                 channel (window) or one per channel stacked as channels (windows)"
            ))
        }
        (None, None) if optional => return Ok(()),
        (None, None) => {
            return Err(format!(
                "{table} needs window = {{ center, width }} or windows = [...]"
            ))
        }
        (Some(w), None) => vec![("window".to_string(), w)],
        (None, Some(ws)) => {
            if ws.len() != channels as usize || ws.len() > MAX_STACKED_WINDOWS {
                return Err(format!(
                    "{table} windows has {} entries but [input] channels = {channels}: stacked \
                     windows give one per channel (at most {MAX_STACKED_WINDOWS}); for one window \
                     on every channel use window = {{ center, width }}",
                    ws.len()
                ));
            }
            ws.iter()
                .enumerate()
                .map(|(k, w)| (format!("windows[{k}]"), *w))
                .collect()
        }
    };
    for (field, w) in named {
        if !w.center.is_finite() {
            return Err(format!(
                "{table} {field}.center must be a finite number (found {})",
                w.center
            ));
        }
        if !(w.width.is_finite() && w.width >= 1.0) {
            return Err(format!(
                "{table} {field}.width must be a finite number >= 1 (DICOM PS3.3 C.11.2.1.2; found {})",
                w.width
            ));
        }
    }
    Ok(())
}

/// A path named in a model directory must be relative and stay inside it lexically: no root, no
/// drive, no `..`. (Symlinks are checked where the file is opened, against the real directory.)
pub(crate) fn check_relative_file(file: &str) -> Result<(), String> {
    use std::path::Component;
    if file.trim().is_empty() {
        return Err("is empty; name a file inside the model directory".into());
    }
    for c in std::path::Path::new(file).components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => {
                return Err("leaves the model directory (`..`); name a file inside it".into())
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(
                    "is an absolute path; name a file relative to the model directory".into(),
                )
            }
        }
    }
    Ok(())
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
            Some(
                Window {
                    center: 40.0,
                    width: 400.0
                }
                .into()
            )
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

    #[test]
    fn input_and_output_options_default_to_todays_model_and_parse_field_by_field() {
        let m = Manifest::parse(GOOD, "t").expect("valid");
        assert_eq!(
            (m.input.layout, m.input.dtype, m.input.batch),
            (Layout::Nchw, InputDtype::Float32, Batch::Dynamic)
        );
        assert_eq!(
            (m.outputs.kind, m.outputs.dtype),
            (OutputKind::Probabilities, OutputDtype::Float32)
        );
        let bundled = include_str!("../../models/lesion-demo/1.0.0/model.toml");
        Manifest::parse(bundled, "bundled").expect("the bundled manifest stays valid");

        let with = GOOD
            .replace(
                "width = 64\n",
                "width = 64\nlayout = \"NHWC\"\ndtype = \"uint8\"\nbatch = 4\n",
            )
            .replace(
                "scores = \"scores\"\n",
                "scores = \"scores\"\nkind = \"sigmoid\"\ndtype = \"float16\"\n",
            );
        let m = Manifest::parse(&with, "t").expect("valid");
        assert_eq!(
            (m.input.layout, m.input.dtype, m.input.batch),
            (Layout::Nhwc, InputDtype::Uint8, Batch::Fixed(4))
        );
        assert_eq!(
            (m.outputs.kind, m.outputs.dtype),
            (OutputKind::Sigmoid, OutputDtype::Float16)
        );
        let dynamic = GOOD.replace("width = 64\n", "width = 64\nbatch = \"dynamic\"\n");
        assert_eq!(
            Manifest::parse(&dynamic, "t").expect("valid").input.batch,
            Batch::Dynamic
        );

        for (from, to, words) in [
            ("width = 64\n", "width = 64\nlayout = \"NWHC\"\n", "layout"),
            ("width = 64\n", "width = 64\ndtype = \"int8\"\n", "dtype"),
            ("width = 64\n", "width = 64\nbatch = 0\n", "batch"),
            ("width = 64\n", "width = 64\nbatch = \"auto\"\n", "batch"),
            ("width = 64\n", "width = 64\nbatch = 100000\n", "batch"),
            (
                "scores = \"scores\"\n",
                "scores = \"scores\"\nkind = \"logits\"\n",
                "kind",
            ),
            (
                "scores = \"scores\"\n",
                "scores = \"scores\"\ndtype = \"uint8\"\n",
                "dtype",
            ),
            (
                "scores = \"scores\"\n",
                "scores = \"scores\"\nkind = \"softmax\"\n",
                "one label",
            ),
            ("file = \"m.onnx\"", "file = \"../m.onnx\"", "[model] file"),
            ("file = \"m.onnx\"", "file = \"/models/m.onnx\"", "absolute"),
            ("file = \"m.onnx\"", "file = \"\"", "is empty"),
        ] {
            let err = Manifest::parse(&GOOD.replace(from, to), "t")
                .expect_err(to)
                .to_string();
            assert!(err.contains(words), "{to}: {err}");
        }
        check_relative_file("sub/./m.onnx").expect("relative inside");
    }

    #[test]
    fn applies_to_is_optional_and_validated_field_by_field_with_the_manifest() {
        let m = Manifest::parse(GOOD, "t").expect("valid");
        assert!(m.rules.applies_to_everything(), "absent: applies to all");
        let with = |table: &str| format!("{GOOD}[applies_to]\n{table}\n");
        let m = Manifest::parse(
            &with(
                "modalities = [\"CT\", \"MR\"]\nbody_parts = [\"head\"]\n\
                 series_description = '(?i)axial'\nslices = { min = 10, max = 400 }",
            ),
            "t",
        )
        .expect("valid rules");
        assert_eq!(m.rules.slices(), Some((10, 400)));
        assert!(!m.rules.applies_to_everything());
        for (table, words) in [
            (
                "modalities = [\"CAT\"]",
                "applies_to.modalities: \"CAT\" is not a DICOM Modality",
            ),
            ("body_parts = [\"x/y\"]", "applies_to.body_parts"),
            (
                "series_description = '[z-a]'",
                "applies_to.series_description: regex parse error",
            ),
            (
                "slices = { min = 5, max = 4 }",
                "applies_to.slices: min = 5 is greater than max = 4",
            ),
        ] {
            let err = Manifest::parse(&with(table), "models/x/model.toml")
                .expect_err(table)
                .to_string();
            assert!(
                err.contains("models/x/model.toml") && err.contains(words),
                "{table}: {err}"
            );
        }
        let err = Manifest::parse(&with("modality = [\"CT\"]"), "t")
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("modality"), "{err}");
    }

    #[test]
    fn softmax_labels_are_positive_only_for_the_most_probable_class() {
        let three = GOOD.replace(
            "[[labels]]\nname = \"lesion\"\nthreshold = 0.5\n",
            "[[labels]]\nname = \"a\"\nthreshold = 0.3\n[[labels]]\nname = \"b\"\nthreshold = 0.3\n\
             [[labels]]\nname = \"c\"\nthreshold = 0.5\n",
        );
        let sigmoid = Manifest::parse(&three, "t").expect("valid");
        let softmax = Manifest::parse(
            &three.replace(
                "scores = \"scores\"\n",
                "scores = \"scores\"\nkind = \"softmax\"\n",
            ),
            "t",
        )
        .expect("valid");
        let positives = |m: &Manifest, s: &[f32]| -> Vec<usize> {
            (0..3).filter(|&i| m.positive(s, i)).collect()
        };
        // Independent labels: each over its threshold is positive.
        assert_eq!(positives(&sigmoid, &[0.35, 0.4, 0.25]), [0, 1]);
        // Exclusive classes: only the argmax, and only at or over its threshold.
        assert_eq!(positives(&softmax, &[0.35, 0.4, 0.25]), [1]);
        assert_eq!(positives(&softmax, &[0.2, 0.35, 0.45]), Vec::<usize>::new());
        assert_eq!(
            positives(&softmax, &[0.4, 0.4, 0.2]),
            [0],
            "a tie goes to the first"
        );
        assert!(!softmax.positive(&[0.5, f32::NAN, 0.0], 1));
        assert!(
            !softmax.positive(&[0.5], 2),
            "a missing score is not positive"
        );
    }
    #[test]
    fn context_is_validated_naming_the_field_and_the_fix() {
        let m = Manifest::parse(GOOD, "t").expect("valid");
        assert_eq!((m.input.context, m.preprocess_spec().context), (0, 0));
        let ctx = |k: u32, channels: u32, extra: &str| {
            let stats = vec!["0.5"; channels as usize].join(", ");
            GOOD.replace(
                "channels = 1\n",
                &format!("channels = {channels}\ncontext = {k}\n"),
            )
            .replace(
                "mean = [0.5]\nstd = [0.25]\n",
                &format!("mean = [{stats}]\nstd = [{stats}]\n{extra}"),
            )
        };
        let m = Manifest::parse(&ctx(1, 3, ""), "t").expect("context 1, 3 channels");
        assert_eq!(
            (m.preprocess_spec().context, m.preprocess_spec().channels),
            (1, 3)
        );
        m.preprocess_spec().validate().expect("a valid spec");
        let m = Manifest::parse(
            &ctx(3, 7, "window = { center = 40.0, width = 400.0 }\n"),
            "t",
        )
        .expect("context 3, 7 channels, one window");
        m.preprocess_spec().validate().expect("a valid spec");
        let three = "{ center = 40.0, width = 80.0 }, { center = 80.0, width = 200.0 }, \
                     { center = 600.0, width = 2800.0 }";
        for (text, words) in [
            (
                ctx(1, 1, ""),
                &["[input] context = 1", "channels = 1", "set channels = 3"][..],
            ),
            (
                ctx(2, 3, ""),
                &[
                    "[input] context = 2",
                    "= 5 neighbouring slices",
                    "set channels = 5",
                ],
            ),
            (
                ctx(4, 9, ""),
                &["[input] context = 4", "at most 3", "set context to 0..=3"],
            ),
            (
                ctx(1, 3, &format!("windows = [{three}]\n")),
                &[
                    "[preprocess] windows has 3 entries but [input] context = 1",
                    "centre slice's one window",
                    "use window = { center, width }",
                ],
            ),
            (
                format!(
                    "{}[preprocess.modality.CT]\nwindows = [{three}]\n",
                    ctx(1, 3, "")
                ),
                &["[preprocess.modality.CT] windows has 3 entries but [input] context = 1"],
            ),
            (
                GOOD.replace("channels = 1\n", "channels = 1\ncontext = -1\n"),
                &["context"],
            ),
        ] {
            let err = Manifest::parse(&text, "models/x/model.toml")
                .expect_err(&text)
                .to_string();
            for w in words {
                assert!(
                    err.contains("models/x/model.toml") && err.contains(w),
                    "{w:?} not in: {err}"
                );
            }
        }
    }
}
