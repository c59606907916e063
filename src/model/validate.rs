//! Does a model fit its manifest? Checked before the model serves (by `ModelSession::load`) and offline
//! (`radstream models validate DIR`), with the same code: a model exported for another runtime usually
//! fits with a manifest line (layout, dtype, batch, output kind), so each problem names the field or
//! tensor, what the graph has, what the manifest says, and the line to write — the author should not
//! have to guess from an ORT shape error at the first slice.
//!
//! Two stages: the graph's declared signature against the manifest ([`check_signature`], pure, listing
//! every problem at once), then a dry run on a zero batch of the largest size the service will send
//! (in `inference`), which catches what signatures leave open (symbolic dimensions, wrong output sizes,
//! logits declared as probabilities).

use std::path::Path;

use super::{Batch, InputDtype, Layout, Manifest, ModelPackage, OutputDtype};

/// One graph input or output as ONNX Runtime declares it. `dims`: `-1` for a dynamic dimension;
/// `dtype`: `float32`, `float16`, `uint8`, … (or a description for a non-tensor value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSig {
    pub name: String,
    pub dims: Option<Vec<i64>>,
    pub dtype: String,
}

/// The graph's inputs and outputs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signature {
    pub inputs: Vec<TensorSig>,
    pub outputs: Vec<TensorSig>,
}

/// `[N, 240, 240, 3]`: a dynamic first dimension is `N`, any other `?`.
pub fn show_dims(dims: &[i64]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match (i, *d) {
            (0, d) if d < 0 => "N".to_string(),
            (_, d) if d < 0 => "?".to_string(),
            (_, d) => d.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn fits(actual: i64, expected: u32) -> bool {
    actual < 0 || actual == i64::from(expected)
}

/// `[c, h, w]` in the order `layout` puts them after the batch axis.
fn image_dims(layout: Layout, c: u32, h: u32, w: u32) -> [u32; 3] {
    match layout {
        Layout::Nchw => [c, h, w],
        Layout::Nhwc => [h, w, c],
    }
}

fn names(sigs: &[TensorSig]) -> String {
    let n: Vec<String> = sigs.iter().map(|s| format!("{:?}", s.name)).collect();
    format!("[{}]", n.join(", "))
}

/// Every way the graph's declared signature does not fit the manifest (empty: it fits).
pub fn check_signature(manifest: &Manifest, sig: &Signature) -> Vec<String> {
    let mut problems = Vec::new();
    let i = &manifest.input;
    if sig.inputs.len() != 1 {
        problems.push(format!(
            "the graph has {} inputs {}; radstream feeds exactly one image tensor — export the model \
             with one input",
            sig.inputs.len(),
            names(&sig.inputs)
        ));
    }
    match sig.inputs.iter().find(|t| t.name == i.name) {
        None => {
            let hint = match sig.inputs.as_slice() {
                [only] => format!("; set name = {:?} in [input]", only.name),
                _ => String::new(),
            };
            problems.push(format!(
                "[input] name = {:?}: {:?} is not an input of the graph (it has {}){hint}",
                i.name,
                i.name,
                names(&sig.inputs)
            ));
        }
        Some(input) => check_input(manifest, input, &mut problems),
    }
    let labels = manifest.labels.len();
    let label_names: Vec<&str> = manifest.labels.iter().map(|l| l.name.as_str()).collect();
    let out = &manifest.outputs;
    let mut output = |field: &str, name: &str, rank: usize, shape: &str| {
        let Some(o) = sig.outputs.iter().find(|t| t.name == name) else {
            problems.push(format!(
                "[outputs] {field} = {name:?} is not an output of the graph (it has {}); name one of \
                 them",
                names(&sig.outputs)
            ));
            return;
        };
        let Some(d) = &o.dims else {
            problems.push(format!(
                "output {name:?} is a {}, not a tensor; [outputs] {field} must name a {shape} tensor",
                o.dtype
            ));
            return;
        };
        if d.len() != rank || !fits(d[1], labels as u32) {
            problems.push(format!(
                "output {name:?} is {} but [outputs] {field} must be {shape} with {labels} labels \
                 ({label_names:?}); declare one [[labels]] entry per {field} channel, in output order",
                show_dims(d)
            ));
        }
        if let Batch::Fixed(b) = manifest.input.batch {
            if d.first().is_some_and(|n| *n >= 0 && *n != i64::from(b)) {
                problems.push(format!(
                    "output {name:?} has batch dimension {} but [input] batch = {b}; the graph's \
                     outputs must have the input's batch size",
                    d[0]
                ));
            }
        }
        let want = match out.dtype {
            OutputDtype::Float32 => "float32",
            OutputDtype::Float16 => "float16",
        };
        if o.dtype != want {
            let fix = match o.dtype.as_str() {
                "float32" | "float16" => format!("declare dtype = {:?} in [outputs]", o.dtype),
                _ => "radstream reads float32 or float16 outputs: cast the output in the graph"
                    .to_string(),
            };
            problems.push(format!(
                "output {name:?} has element type {} but [outputs] dtype = \"{want}\"; {fix}",
                o.dtype
            ));
        }
    };
    output("scores", &out.scores, 2, "[N, labels]");
    if let Some(map) = &out.map {
        output("map", map, 4, "[N, labels, h, w]");
    }
    problems
}

fn check_input(manifest: &Manifest, input: &TensorSig, problems: &mut Vec<String>) {
    let i = &manifest.input;
    let name = &i.name;
    let Some(d) = &input.dims else {
        problems.push(format!(
            "input {name:?} is a {}, not a tensor; radstream feeds an image tensor",
            input.dtype
        ));
        return;
    };
    if d.len() != 4 {
        problems.push(format!(
            "input {name:?} is {} (rank {}); radstream feeds a 4-D image batch: [N, C, H, W] \
             (layout = \"NCHW\") or [N, H, W, C] (layout = \"NHWC\")",
            show_dims(d),
            d.len()
        ));
    } else {
        let (c, h, w) = (i.channels, i.height, i.width);
        let matches = |l: Layout| {
            d[1..]
                .iter()
                .zip(image_dims(l, c, h, w))
                .all(|(a, e)| fits(*a, e))
        };
        let other = match i.layout {
            Layout::Nchw => Layout::Nhwc,
            Layout::Nhwc => Layout::Nchw,
        };
        if !matches(i.layout) {
            if matches(other) {
                problems.push(format!(
                    "input {name:?} is {}, which is {other}; declare layout = \"{other}\" in [input]",
                    show_dims(d)
                ));
            } else {
                // Name the fields that differ, read in the declared layout.
                let (gc, gh, gw) = match i.layout {
                    Layout::Nchw => (d[1], d[2], d[3]),
                    Layout::Nhwc => (d[3], d[1], d[2]),
                };
                let fixes: Vec<String> = [("channels", gc, c), ("height", gh, h), ("width", gw, w)]
                    .into_iter()
                    .filter(|(_, g, m)| !fits(*g, *m))
                    .map(|(f, g, _)| format!("{f} = {g}"))
                    .collect();
                let [a, b, e] = image_dims(i.layout, c, h, w);
                problems.push(format!(
                    "input {name:?} is {} but [input] declares channels = {c}, height = {h}, width = \
                     {w}, layout = \"{}\" ([N, {a}, {b}, {e}]); set {} in [input] (and resize in \
                     [preprocess] accordingly)",
                    show_dims(d),
                    i.layout,
                    fixes.join(", ")
                ));
            }
        }
        match (d[0], i.batch) {
            (n, Batch::Dynamic) if n >= 0 => problems.push(format!(
                "input {name:?} has a fixed batch dimension of {n} ({}) but [input] batch = \
                 \"dynamic\"; declare batch = {n} in [input]",
                show_dims(d)
            )),
            (n, Batch::Fixed(b)) if n >= 0 && n != i64::from(b) => problems.push(format!(
                "input {name:?} has a fixed batch dimension of {n} ({}) but [input] batch = {b}; \
                 declare batch = {n} in [input]",
                show_dims(d)
            )),
            _ => {}
        }
    }
    let want = match i.dtype {
        InputDtype::Float32 => "float32",
        InputDtype::Float16 => "float16",
        InputDtype::Uint8 => "uint8",
    };
    if input.dtype != want {
        let fix = match input.dtype.as_str() {
            "float32" | "float16" | "uint8" => {
                format!("declare dtype = {:?} in [input]", input.dtype)
            }
            _ => "radstream feeds float32, float16 or uint8: cast the input in the graph".into(),
        };
        problems.push(format!(
            "input {name:?} has element type {} but [input] dtype = \"{want}\"; {fix}",
            input.dtype
        ));
    }
}

/// What `radstream models validate` prints for a model that fits.
pub fn summary(package: &ModelPackage, max_batch: usize) -> String {
    let m = &package.manifest;
    let i = &m.input;
    let o = &m.outputs;
    let [a, b, c] = image_dims(i.layout, i.channels, i.height, i.width);
    let sent = match i.batch {
        Batch::Dynamic => format!("dynamic (dry run: {max_batch})"),
        Batch::Fixed(n) => format!("{n} (batches split/padded to {n})"),
    };
    let labels: Vec<String> = m
        .labels
        .iter()
        .map(|l| format!("{} (threshold {})", l.name, l.threshold))
        .collect();
    let mut s = format!(
        "OK {} {} (sha256 {})\n  input   {:?} [N, {a}, {b}, {c}] layout {} dtype {}\n  batch   {sent}\n  \
         outputs scores {:?}{} kind {} dtype {}\n  labels  {}\n",
        package.info.name,
        package.info.version,
        package.info.onnx_sha256,
        i.name,
        i.layout,
        i.dtype,
        o.scores,
        o.map
            .as_ref()
            .map(|m| format!(", map {m:?}"))
            .unwrap_or_default(),
        o.kind,
        o.dtype,
        labels.join(", ")
    );
    if i.context > 0 {
        s.push_str(&format!(
            "  context {} (2.5D: the {} neighbouring slices of the series as channels, centre's window)\n",
            i.context,
            2 * i.context + 1
        ));
    }
    if !package.external.is_empty() {
        let files: Vec<&str> = package.external.iter().map(|(l, _)| l.as_str()).collect();
        s.push_str(&format!("  external data {files:?}\n"));
    }
    let window = |w: &crate::preprocess::Window| format!("{}/{}", w.center, w.width);
    let windows =
        |ws: &[crate::preprocess::Window]| ws.iter().map(window).collect::<Vec<_>>().join(" + ");
    match &m.preprocess_spec().window {
        None => s.push_str("  windows the file's first valid window, else min/max\n"),
        Some(w) => {
            let mut line = if w.default.is_empty() {
                "the file's first valid window, else min/max".to_string()
            } else {
                windows(&w.default)
            };
            for (modality, ws) in &w.by_modality {
                line.push_str(&format!("; {modality}: {}", windows(ws)));
            }
            s.push_str(&format!("  windows {line}\n"));
        }
    }
    s.push_str(&format!(
        "  for     {}\n",
        m.rules
            .describe()
            .unwrap_or_else(|| "every study (no [applies_to])".into())
    ));
    s
}

/// Why a model directory does not validate: each problem on its own.
#[derive(Debug, thiserror::Error)]
#[error("{}", problems.join("\n"))]
pub struct Invalid {
    pub problems: Vec<String>,
}

/// Loads `dir` as the service would and runs every check, including the dry run with `max_batch`
/// slices; returns the summary to print.
pub fn validate_dir(
    env: &ort::environment::Environment,
    dir: &Path,
    max_batch: usize,
) -> Result<String, Invalid> {
    let package = ModelPackage::load_dir(dir).map_err(|e| Invalid {
        problems: vec![e.to_string()],
    })?;
    // what the service checks before it serves a version: a semantic version, and a directory
    // models/<name>/<version>/ that matches the manifest
    crate::catalog::repository::check_placement(dir, &package.manifest).map_err(|e| Invalid {
        problems: vec![e.to_string()],
    })?;
    crate::inference::ModelSession::load_with_max_batch(
        env,
        &package,
        &Default::default(),
        max_batch,
    )
    .map_err(|e| Invalid {
        problems: match e {
            crate::inference::InferenceError::ModelMismatch { problems, .. } => problems,
            other => vec![other.to_string()],
        },
    })?;
    Ok(summary(&package, max_batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
[model]
name = "m"
version = "1"
file = "m.onnx"
[input]
name = "x"
channels = 3
height = 240
width = 240
[preprocess]
mean = [0.5, 0.5, 0.5]
std = [0.25, 0.25, 0.25]
[outputs]
scores = "logits"
[[labels]]
name = "a"
threshold = 0.5
[[labels]]
name = "b"
threshold = 0.5
"#;

    fn sig(input: Vec<i64>, in_type: &str, output: Vec<i64>, out_type: &str) -> Signature {
        Signature {
            inputs: vec![TensorSig {
                name: "x".into(),
                dims: Some(input),
                dtype: in_type.into(),
            }],
            outputs: vec![TensorSig {
                name: "logits".into(),
                dims: Some(output),
                dtype: out_type.into(),
            }],
        }
    }

    fn manifest(edit: impl Fn(&str) -> String) -> Manifest {
        Manifest::parse(&edit(MANIFEST), "t").expect("valid manifest")
    }

    #[test]
    fn a_fitting_signature_has_no_problems() {
        let m = manifest(|s| s.to_string());
        assert!(check_signature(
            &m,
            &sig(vec![-1, 3, 240, 240], "float32", vec![-1, 2], "float32")
        )
        .is_empty());
        let m = manifest(|s| {
            s.replace(
                "width = 240",
                "width = 240\nlayout = \"NHWC\"\ndtype = \"uint8\"\nbatch = 4",
            )
            .replace(
                "scores = \"logits\"",
                "scores = \"logits\"\ndtype = \"float16\"",
            )
        });
        assert!(check_signature(
            &m,
            &sig(vec![4, 240, 240, 3], "uint8", vec![4, 2], "float16")
        )
        .is_empty());
    }

    #[test]
    fn each_misfit_names_the_field_and_the_fix() {
        let m = manifest(|s| s.to_string());
        let cases: Vec<(Signature, &[&str])> = vec![
            (
                sig(vec![-1, 240, 240, 3], "float32", vec![-1, 2], "float32"),
                &["input \"x\" is [N, 240, 240, 3], which is NHWC; declare layout = \"NHWC\" in [input]"],
            ),
            (
                sig(vec![-1, 3, 224, 224], "float32", vec![-1, 2], "float32"),
                &["height = 224, width = 224", "[N, 3, 240, 240]"],
            ),
            (
                sig(vec![1, 3, 240, 240], "float32", vec![1, 2], "float32"),
                &["fixed batch dimension of 1", "declare batch = 1 in [input]"],
            ),
            (
                sig(vec![-1, 3, 240, 240], "float16", vec![-1, 2], "float32"),
                &["element type float16", "declare dtype = \"float16\" in [input]"],
            ),
            (
                sig(vec![-1, 3, 240, 240], "double", vec![-1, 2], "float32"),
                &["cast the input in the graph"],
            ),
            (
                sig(vec![-1, 3, 240, 240], "float32", vec![-1, 4], "float32"),
                &["is [N, 4]", "2 labels", "[[labels]]"],
            ),
            (
                sig(vec![-1, 3, 240, 240], "float32", vec![-1, 2], "float16"),
                &["declare dtype = \"float16\" in [outputs]"],
            ),
            (
                sig(vec![-1, 240, 240], "float32", vec![-1, 2], "float32"),
                &["rank 3", "4-D"],
            ),
        ];
        for (s, words) in cases {
            let problems = check_signature(&m, &s).join("\n");
            for w in words {
                assert!(problems.contains(w), "{w:?} not in: {problems}");
            }
        }
        let mut s = sig(vec![-1, 3, 240, 240], "float32", vec![-1, 2], "float32");
        s.inputs[0].name = "pixels".into();
        s.outputs[0].name = "probs".into();
        let problems = check_signature(&m, &s);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].contains("set name = \"pixels\" in [input]"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("[outputs] scores = \"logits\""),
            "{problems:?}"
        );
    }

    #[test]
    fn dims_are_shown_with_n_for_a_dynamic_batch() {
        assert_eq!(show_dims(&[-1, 240, 240, 3]), "[N, 240, 240, 3]");
        assert_eq!(show_dims(&[4, -1, 3]), "[4, ?, 3]");
    }
}
