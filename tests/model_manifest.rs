//! Manifests that fit real models (issue 12): small ONNX graphs built with the onnx Python package
//! (`tests/oracle/make_models.py`) in NHWC, float16, uint8, fixed batches, logits and external data,
//! scored through `ModelSession` and compared with onnxruntime-Python on the same converted input;
//! the ill-fitting ones refused at load, each with its own message; `radstream models validate`.

mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use common::*;
use radstream::{
    config::Config,
    inference::{self, ModelSession},
    model::ModelPackage,
};

/// The generated models, once per test process.
fn models() -> &'static Path {
    common::generated_models()
}

fn env() -> &'static ort::environment::Environment {
    inference::runtime(&Config::default().ort_library_path()).expect("ONNX Runtime")
}

fn case(name: &str) -> PathBuf {
    models().join(name)
}

/// The NCHW float32 batch the case's scores were computed on.
fn input(dir: &Path) -> Vec<f32> {
    std::fs::read(dir.join("input.bin"))
        .expect("input.bin")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

#[derive(serde::Deserialize)]
struct Expected {
    n: usize,
    scores: Vec<Vec<f32>>,
}

fn load(dir: &Path, max_batch: usize) -> Result<ModelSession, String> {
    let package = ModelPackage::load_dir(dir).map_err(|e| e.to_string())?;
    ModelSession::load_with_max_batch(env(), &package, &Default::default(), max_batch)
        .map_err(|e| e.to_string())
}

fn assert_close(name: &str, got: &[f32], want: &[Vec<f32>]) {
    let want: Vec<f32> = want.iter().flatten().copied().collect();
    assert_eq!(got.len(), want.len(), "{name}: score count");
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4,
            "{name} score {k}: radstream {g} vs onnxruntime {w}"
        );
    }
}

#[test]
fn fitting_models_score_like_onnxruntime_python_on_the_converted_input() {
    for name in [
        "nhwc_softmax",
        "sigmoid",
        "fixed1",
        "fixed4",
        "f16",
        "uint8",
        "external",
        "context1",
    ] {
        let dir = case(name);
        let expected: Expected =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).expect("expected"))
                .expect("json");
        let mut session = load(&dir, 8).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = session
            .run(&input(&dir), expected.n)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_close(name, &out.scores, &expected.scores);
        assert!(
            out.scores.iter().all(|s| (0.0..=1.0).contains(s)),
            "{name}: {:?}",
            out.scores
        );
    }
}

#[test]
fn softmax_classes_are_exclusive_probabilities_and_only_the_argmax_is_positive() {
    let dir = case("nhwc_softmax");
    let mut session = load(&dir, 8).expect("fits");
    let out = session.run(&input(&dir), 5).expect("scores");
    let manifest = session.manifest().clone();
    for row in out.scores.chunks_exact(4) {
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{row:?}");
        let positives: Vec<usize> = (0..4).filter(|&i| manifest.positive(row, i)).collect();
        assert!(positives.len() <= 1, "{row:?}: {positives:?}");
        let argmax = (0..4)
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .expect("4 classes");
        assert_eq!(
            positives,
            if row[argmax] >= 0.3 {
                vec![argmax]
            } else {
                vec![]
            },
            "{row:?}"
        );
    }
}

#[test]
fn a_fixed_batch_model_is_split_or_padded_with_the_same_results_as_one_slice_at_a_time() {
    for (name, n) in [("fixed1", 5usize), ("fixed4", 3), ("fixed4", 9)] {
        let dir = case(name);
        let mut session = load(&dir, 16).expect("fits");
        let all = input(&dir);
        let per = all.len() / if name == "fixed1" { 5 } else { 3 };
        // Nine slices: the three of the file, three times (two full batches of 4 and a padded one).
        let batch: Vec<f32> = all.iter().copied().cycle().take(n * per).collect();
        let together = session.run(&batch, n).expect("batch").scores;
        assert_eq!(together.len(), n * 2, "{name} x{n}");
        for (i, slice) in batch.chunks_exact(per).enumerate() {
            let alone = session.run(slice, 1).expect("one").scores;
            assert_eq!(
                &together[i * 2..i * 2 + 2],
                alone.as_slice(),
                "{name} slice {i}"
            );
        }
    }
}

#[test]
fn ill_fitting_models_are_refused_at_load_naming_the_field_and_the_fix() {
    for (name, words) in [
        (
            "bad_layout",
            &[
                "input \"x\" is [N, 8, 8, 3], which is NHWC",
                "declare layout = \"NHWC\" in [input]",
            ][..],
        ),
        (
            "bad_logits",
            &[
                "[outputs] scores",
                "looks like logits",
                "declare kind = \"sigmoid\" or \"softmax\" in [outputs]",
            ],
        ),
        (
            "bad_batch",
            &[
                "fixed batch dimension of 1",
                "[input] batch = \"dynamic\"",
                "declare batch = 1 in [input]",
            ],
        ),
        (
            "bad_dtype",
            &[
                "element type float16",
                "[input] dtype = \"float32\"",
                "declare dtype = \"float16\" in [input]",
            ],
        ),
        (
            "bad_external",
            &["\"../outside.bin\"", "`..`", "inside the model directory"],
        ),
        (
            "bad_file",
            &["[model] file = \"../sigmoid/model.onnx\"", "`..`"],
        ),
    ] {
        let err = load(&case(name), 8).expect_err(name);
        for w in words {
            assert!(err.contains(w), "{name}: {w:?} not in: {err}");
        }
    }
}

#[test]
fn a_symlinked_model_file_leaving_the_directory_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = dir.path().join("m");
    std::fs::create_dir(&m).expect("mkdir");
    std::fs::copy(case("sigmoid").join("model.toml"), m.join("model.toml")).expect("copy");
    std::os::unix::fs::symlink(case("sigmoid").join("model.onnx"), m.join("model.onnx"))
        .expect("symlink");
    let err = load(&m, 8).expect_err("escapes");
    assert!(
        err.contains("[model] file = \"model.onnx\"")
            && err.contains("outside the model directory"),
        "{err}"
    );
}

fn validate(dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_radstream"))
        .args(["models", "validate", "--max-batch", "4"])
        .arg(dir)
        .output()
        .expect("run radstream");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn models_validate_prints_ok_with_a_summary_or_the_problems() {
    let (code, out) = validate(&case("nhwc_softmax"));
    assert_eq!(code, 0, "{out}");
    for w in [
        "OK nhwc-softmax 1",
        "input   \"x\" [N, 8, 8, 3] layout NHWC dtype float32",
        "batch   dynamic",
        "kind softmax",
        "normal",
        "stroke",
    ] {
        assert!(out.contains(w), "{w:?} not in: {out}");
    }
    let (code, out) = validate(&case("context1"));
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("input   \"x\" [N, 3, 8, 8]")
            && out.contains("context 1 (2.5D: the 3 neighbouring slices"),
        "{out}"
    );
    let (code, out) = validate(&case("nhwc_softmax"));
    assert!(code == 0 && !out.contains("context"), "{out}");
    let (code, out) = validate(&case("external"));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("external data [\"weights.bin\"]"), "{out}");
    let (code, out) = validate(&repo().join("models/lesion-demo/1.0.0"));
    assert_eq!(code, 0, "{out}");

    let (code, out) = validate(&case("bad_layout"));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.starts_with("INVALID") && out.contains("declare layout = \"NHWC\" in [input]"),
        "{out}"
    );
    let (code, out) = validate(&case("bad_logits"));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("looks like logits"), "{out}");
}

/// Issue 12: `[preprocess] windows` (stacked as channels) and `[preprocess.modality.<term>]` are parsed
/// into the preprocessing spec, and every ill-formed combination is refused at load naming the field.
#[test]
fn stacked_and_per_modality_windows_are_validated_naming_the_field() {
    use radstream::{
        model::Manifest,
        preprocess::{ManifestWindows, Window},
    };
    let manifest = |preprocess: &str, channels: u32| {
        let stats = vec!["0.5"; channels as usize].join(", ");
        format!(
            "[model]\nname = \"m\"\nversion = \"1\"\nfile = \"m.onnx\"\n\
             [input]\nname = \"x\"\nchannels = {channels}\nheight = 8\nwidth = 8\n\
             [outputs]\nscores = \"y\"\n[[labels]]\nname = \"a\"\nthreshold = 0.5\n\
             [preprocess]\nmean = [{stats}]\nstd = [{stats}]\n{preprocess}\n"
        )
    };
    let w = |center, width| Window { center, width };
    let stacked = "windows = [{ center = 40.0, width = 80.0 }, { center = 80.0, width = 200.0 }, \
                   { center = 600.0, width = 2800.0 }]";
    let m = Manifest::parse(&manifest(stacked, 3), "t").expect("three stacked windows");
    assert_eq!(
        m.preprocess_spec().window,
        Some(ManifestWindows::stacked(vec![
            w(40.0, 80.0),
            w(80.0, 200.0),
            w(600.0, 2800.0)
        ]))
    );
    let per_modality = "[preprocess.modality.ct]\nwindow = { center = 40.0, width = 400.0 }\n\
                        [preprocess.modality.MR]\nwindows = [{ center = 300.0, width = 600.0 }]";
    let m = Manifest::parse(&manifest(per_modality, 1), "t").expect("per-modality windows");
    let spec = m.preprocess_spec().window.expect("windows");
    assert!(spec.default.is_empty());
    assert_eq!(spec.for_modality(Some("CT")), [w(40.0, 400.0)]);
    assert_eq!(spec.for_modality(Some("MR")), [w(300.0, 600.0)]);
    assert_eq!(spec.for_modality(Some("US")), []);
    assert_eq!(
        Manifest::parse(&manifest("", 1), "t")
            .expect("none")
            .preprocess_spec()
            .window,
        None
    );

    let one = "{ center = 40.0, width = 80.0 }";
    for (preprocess, channels, words) in [
        (
            format!("windows = [{one}, {one}]"),
            3,
            "[preprocess] windows has 2 entries but [input] channels = 3",
        ),
        (
            format!("windows = [{one}, {one}, {one}]"),
            1,
            "[preprocess] windows has 3 entries but [input] channels = 1",
        ),
        (
            format!("window = {one}\nwindows = [{one}]"),
            1,
            "[preprocess] window and windows are mutually exclusive",
        ),
        (
            format!("windows = [{one}, {{ center = 80.0, width = 0.0 }}, {one}]"),
            3,
            "[preprocess] windows[1].width must be a finite number >= 1",
        ),
        (
            format!("windows = [{{ center = nan, width = 80.0 }}, {one}, {one}]"),
            3,
            "[preprocess] windows[0].center must be a finite number",
        ),
        (
            format!("[preprocess.modality.CAT]\nwindow = {one}"),
            1,
            "[preprocess.modality.CAT]: \"CAT\" is not a DICOM Modality",
        ),
        (
            format!("[preprocess.modality.CT]\nwindows = [{one}, {one}]"),
            3,
            "[preprocess.modality.CT] windows has 2 entries but [input] channels = 3",
        ),
        (
            format!("[preprocess.modality.CT]\nwindow = {one}\nwindows = [{one}]"),
            1,
            "[preprocess.modality.CT] window and windows are mutually exclusive",
        ),
        (
            "[preprocess.modality.CT]\nwindow = { center = 40.0, width = 0.5 }".to_string(),
            1,
            "[preprocess.modality.CT] window.width must be a finite number >= 1",
        ),
        (
            "[preprocess.modality.CT]".to_string(),
            1,
            "[preprocess.modality.CT] needs window",
        ),
        (
            format!("[preprocess.modality.CT]\nwindow = {one}\n[preprocess.modality.ct]\nwindow = {one}"),
            1,
            "modality \"ct\" is given windows twice",
        ),
        (
            format!("[preprocess.modality.CT]\nwindw = {one}"),
            1,
            "unknown field `windw`",
        ),
    ] {
        let err = Manifest::parse(&manifest(&preprocess, channels), "models/x/model.toml")
            .expect_err(&preprocess)
            .to_string();
        assert!(
            err.contains("models/x/model.toml") && err.contains(words),
            "{preprocess}: {words:?} not in: {err}"
        );
    }
}
