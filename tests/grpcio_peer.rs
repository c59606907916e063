//! The API from another stack: a Python client generated from proto/ with grpcio-tools talks to the real
//! server over loopback (health check, then one Analyze stream with the sample study and a bad file).

mod common;

use std::process::Command;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpcio_client_built_from_the_proto_gets_findings_and_rejections() {
    let server = start(test_config()).await;
    let mut files: Vec<String> = std::fs::read_dir(sample_study_dir())
        .expect("sample study")
        .map(|e| e.expect("entry").path().display().to_string())
        .collect();
    files.sort();
    files.push(
        pydicom_test_files()
            .join("rtplan.dcm")
            .display()
            .to_string(),
    );
    let endpoint = server.addr.to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(repo().join("tests/peers/grpcio_client.py"))
            .args(["--endpoint", &endpoint, "--proto-dir"])
            .arg(repo().join("proto"))
            .args(&files)
            .output()
            .expect("run the grpcio client")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "grpcio client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(
        events[0],
        serde_json::json!({"type": "health", "status": "SERVING"})
    );
    let of = |t: &str| events.iter().filter(|e| e["type"] == t).collect::<Vec<_>>();
    let n = sample_study().len();
    assert_eq!(of("accepted").len(), n);
    assert_eq!(of("finding").len(), n);
    let rejected = of("rejected");
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0]["reason"], "REJECT_REASON_MISSING_PIXEL_DATA");
    assert_eq!(rejected[0]["client_ref"], "rtplan.dcm");
    let finding = of("finding")[0];
    assert_eq!(finding["model"]["name"], "lesion-demo");
    assert!(finding["slice"]["sop_instance_uid"]
        .as_str()
        .is_some_and(|s| !s.is_empty()));
    let summary = of("summary")
        .into_iter()
        .find(|s| s["slices_scored"] == n)
        .expect("sample study summary");
    assert_eq!(summary["labels"][0]["positive"], true);
    let top = summary["labels"][0]["top_slice"]["instance_number"]
        .as_i64()
        .expect("top slice number");
    assert!(LESION_SLICES.contains(&(top as i32)), "top slice #{top}");
    server.stop().await.expect("stop");
}
