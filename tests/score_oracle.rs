//! The service's scores, read off the real gRPC stream, against onnxruntime's Python API run on the
//! numpy-preprocessed tensors of the same files.

mod common;

use std::path::PathBuf;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_scores_equal_onnxruntime_python_on_numpy_preprocessing() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sample_study_dir())
        .expect("sample study")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    files.push(pydicom_test_files().join("CT_small.dcm"));
    files.push(pydicom_test_files().join("MR_small.dcm"));
    files.push(pydicom_data_files().join("emri_small.dcm"));
    files.push(pydicom_data_files().join("US1_UNCR.dcm"));

    let expected = oracle_scores(&files);

    let server = start(test_config()).await;
    let events = push_files(&server, &files).await;
    let findings = findings(&events);
    assert!(rejections(&events).is_empty(), "{:?}", rejections(&events));
    assert_eq!(
        findings.len(),
        expected.len(),
        "one finding per oracle frame"
    );
    let worst = assert_scores_match(&findings, &expected, 1e-4);
    println!(
        "{} slices compared, max abs score difference {worst:.2e}",
        expected.len()
    );
    server.stop().await.expect("stop");
}
