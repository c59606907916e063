//! The real binary, as a user runs it.

mod common;

use std::process::Command;

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_radstream");

/// A log that goes to a file or a collector is plain text: no terminal colour codes.
#[test]
fn a_log_not_written_to_a_terminal_has_no_colour_codes() {
    let out = Command::new(BIN)
        .args(["demo", "--preprocess", "cpu"])
        .env("RADSTREAM_LOG", "info")
        .output()
        .expect("run demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("model version loaded"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
}

#[test]
fn demo_prints_findings_and_a_positive_study_summary() {
    let out = Command::new(BIN)
        .arg("demo")
        .env("RADSTREAM_LOG", "warn")
        .output()
        .expect("run demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let slices = stdout.lines().filter(|l| l.starts_with("slice")).count();
    assert_eq!(slices, sample_study().len(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("slice") && l.contains("POSITIVE")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("slice") && l.contains("negative")),
        "{stdout}"
    );
    assert!(
        stdout.contains("STUDY") && stdout.contains("lesion: POSITIVE"),
        "{stdout}"
    );
    // what the service does beyond the findings: the web view's address, the early warning, the
    // adjacent positive slices as one lesion
    let url = stdout
        .split_whitespace()
        .find(|w| w.starts_with("http://127.0.0.1:"))
        .unwrap_or_else(|| panic!("no web view URL: {stdout}"));
    assert!(url.ends_with('/'), "{url}");
    assert!(stdout.contains("!! CRITICAL lesion"), "{stdout}");
    assert!(
        stdout.contains("group: 4 slices #5–#8, 20.0 mm"),
        "{stdout}"
    );
}

#[test]
fn bench_alerts_reports_latency_alone_and_under_load() {
    let out = Command::new(BIN)
        .args([
            "bench",
            "alerts",
            "--pushers",
            "3",
            "--studies",
            "1",
            "--alone",
            "2",
        ])
        .args(["--preprocess", "cpu"])
        .env("RADSTREAM_LOG", "warn")
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs: Vec<&str> = stdout.lines().filter(|l| l.contains(" alerts ")).collect();
    assert_eq!(runs.len(), 2, "{stdout}");
    // every copy of the sample study raises its critical findings, and each is timed
    for (line, studies) in runs.iter().zip([2usize, 3]) {
        let alerts: usize = line
            .split_whitespace()
            .zip(line.split_whitespace().skip(1))
            .find(|(_, next)| *next == "alerts")
            .and_then(|(n, _)| n.parse().ok())
            .unwrap_or_else(|| panic!("no alert count: {line}"));
        assert!(alerts >= studies, "{line}");
        assert!(line.contains("p50") && line.contains("p99"), "{line}");
        assert!(!line.contains("NaN"), "{line}");
    }
}

#[test]
fn bench_alerts_skips_a_run_of_no_studies() {
    let out = Command::new(BIN)
        .args(["bench", "alerts", "--pushers", "2", "--studies", "1"])
        .args(["--alone", "0", "--preprocess", "cpu"])
        .env("RADSTREAM_LOG", "warn")
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let runs: Vec<&str> = stdout.lines().filter(|l| l.contains(" alerts ")).collect();
    assert_eq!(runs.len(), 1, "only the run with pushers: {stdout}");
    assert!(
        runs[0].contains("2 pushers") && !runs[0].contains("NaN"),
        "{stdout}"
    );
}

#[test]
fn push_streams_a_folder_to_a_served_process_as_json_lines() {
    let model_dir = repo().join("models/lesion-demo/1.0.0");
    let server = ServedProcess::start(&[(
        "RADSTREAM_MODEL_DIR",
        model_dir.to_str().expect("UTF-8 path"),
    )]);

    let out = Command::new(BIN)
        .args(["push", "--json", "--endpoint", &server.endpoint()])
        .arg(sample_study_dir())
        .arg(pydicom_test_files().join("rtplan.dcm"))
        .output()
        .expect("run push");
    drop(server);
    let events = push_json_lines(&out);
    // Canonical proto3 JSON: each line is one AnalyzeResponse, its oneof written as the member's name,
    // 64-bit integers as strings, enums by name, defaults left out.
    let count = |t: &str| members(&events, t).len();
    let n = sample_study().len();
    assert_eq!(count("accepted"), n);
    assert_eq!(count("finding"), n);
    assert_eq!(count("rejected"), 1);
    assert_eq!(
        count("accepted")
            + count("finding")
            + count("rejected")
            + count("summary")
            + count("critical"),
        events.len()
    );
    let rejected = members(&events, "rejected")[0];
    assert_eq!(rejected["reason"], "REJECT_REASON_MISSING_PIXEL_DATA");
    let summary = members(&events, "summary")
        .into_iter()
        .find(|s| s["slices_scored"] == n)
        .expect("summary");
    assert_eq!(summary["labels"][0]["positive"], true);
    assert_eq!(summary["reason"], "COMPLETION_REASON_STREAM_CLOSED");
}

#[test]
fn a_model_that_does_not_fit_stops_start_up_with_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = repo().join("models/lesion-demo/1.0.0");
    std::fs::copy(src.join("model.onnx"), dir.path().join("model.onnx")).expect("copy onnx");
    let manifest = std::fs::read_to_string(src.join("model.toml"))
        .expect("manifest")
        .replace("height = 64", "height = 256");
    std::fs::write(dir.path().join("model.toml"), manifest).expect("write manifest");
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--model-dir")
        .arg(dir.path())
        .output()
        .expect("run serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not fit its manifest") && stderr.contains("256"),
        "{stderr}"
    );
}

#[test]
fn demo_overlays_box_the_lesion_slices_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["demo", "--overlays"])
        .arg(dir.path())
        .env("RADSTREAM_LOG", "warn")
        .output()
        .expect("run demo");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .expect("overlay dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let expected: Vec<String> = LESION_SLICES
        .map(|n| format!("slice-{n:02}-frame0.png"))
        .collect();
    assert_eq!(
        names, expected,
        "one overlay per positive slice, the lesion slices"
    );
    let img = image::open(dir.path().join(&expected[1]))
        .expect("png")
        .to_rgb8();
    let red = img.pixels().filter(|p| p.0 == [255, 40, 40]).count();
    assert!(red > 100, "a box is drawn ({red} box pixels)");
    let decoded = radstream::decode::decode_instance(
        &sample_study()[5].1,
        &radstream::decode::Limits::default(),
    )
    .expect("sample decodes");
    assert_eq!(
        (img.width(), img.height()),
        (decoded.meta.cols, decoded.meta.rows),
        "native resolution"
    );
}

#[test]
fn push_sends_files_whose_paths_exceed_the_client_ref_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Folders nested until every file's path is well past the server's client_ref limit (256 bytes
    // by default), as in a deep archive tree.
    let mut deep = dir.path().to_path_buf();
    for level in 0..4 {
        deep.push(format!("{level}-{}", "d".repeat(100)));
    }
    std::fs::create_dir_all(&deep).expect("deep folders");
    let study = sample_study();
    for (name, bytes) in &study {
        std::fs::write(deep.join(name), bytes).expect("copy a slice");
    }
    let shortest = study
        .iter()
        .map(|(name, _)| deep.join(name).as_os_str().len())
        .min()
        .expect("files");
    assert!(shortest > 400, "paths of {shortest} bytes");

    let server = ServedProcess::start(&[("RADSTREAM_PREPROCESS", "cpu")]);
    let overlays = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args([
            "push",
            "--json",
            "--endpoint",
            &server.endpoint(),
            "--overlays",
        ])
        .arg(overlays.path())
        .arg(dir.path())
        .output()
        .expect("run push");
    drop(server);
    let events = push_json_lines(&out);
    let of = |t: &str| members(&events, t);
    assert!(of("rejected").is_empty(), "{:?}", of("rejected"));
    assert_eq!(of("accepted").len(), study.len());
    // Every answer names its file by the path pushed, though the wire carried a short ref.
    let mut named: Vec<String> = of("finding")
        .iter()
        .map(|f| f["client_ref"].as_str().expect("client_ref").to_string())
        .collect();
    named.sort();
    let mut expected: Vec<String> = study
        .iter()
        .map(|(name, _)| deep.join(name).display().to_string())
        .collect();
    expected.sort();
    assert_eq!(named, expected);
    // Overlays read each positive slice again from its path: one per lesion slice.
    let mut written: Vec<String> = std::fs::read_dir(overlays.path())
        .expect("overlay dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    let lesions: Vec<String> = LESION_SLICES
        .map(|n| format!("slice-{n:02}-frame0.png"))
        .collect();
    assert_eq!(written, lesions);
}

/// `serve` without `--data-dir` keeps its event log in `$XDG_DATA_HOME/radstream` (README: Using it).
#[test]
fn serve_keeps_its_event_log_in_the_default_data_dir() {
    use std::io::{BufRead, BufReader};
    let home = tempfile::tempdir().expect("data home");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("XDG_DATA_HOME", home.path())
        .env("RADSTREAM_LOG", "info")
        .env_remove("RADSTREAM_DATA_DIR")
        .env_remove("RADSTREAM_CONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start serve");
    let stderr = child.stderr.take().expect("stderr");
    let serving = BufReader::new(stderr)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("radstream serving"));
    let log = home.path().join("radstream").join("events.sqlite");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !log.is_file() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving, "the server did not start");
    assert!(log.is_file(), "no event log at {}", log.display());
}
