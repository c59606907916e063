//! `radstream bench load` end to end: the real binary builds the series in every syntax, starts a
//! `radstream serve` child per run, pushes K concurrent streams and reports; every slice of every
//! study must come back scored and the figures must be positive and consistent. The Python peer is
//! run on demand only (`--peer`); here its script is only checked to start.

mod common;

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_radstream"));
    c.env_remove("RADSTREAM_CONFIG");
    c
}

#[test]
fn bench_load_scores_every_slice_of_every_study_in_every_syntax() {
    let keep = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .args([
            "bench",
            "load",
            "--slices",
            "24",
            "--streams",
            "1,2",
            "--syntax",
            "all",
        ])
        .args(["--preprocess", "cpu", "--json", "--keep"])
        .arg(keep.path())
        .output()
        .expect("run radstream bench load");
    assert!(
        out.status.success(),
        "bench load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 8, "4 syntaxes x 2 stream counts");
    let mut syntaxes: Vec<&str> = runs
        .iter()
        .map(|r| r["syntax"].as_str().unwrap_or(""))
        .collect();
    syntaxes.dedup();
    assert_eq!(syntaxes, ["explicit", "jpeg-ls", "j2k", "rle"]);
    for r in runs {
        let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
        let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
        let streams = n("streams");
        assert_eq!(n("studies"), streams, "{r}");
        assert_eq!(n("slices_sent"), 24 * streams, "{r}");
        assert_eq!(n("findings"), 24 * streams, "every slice scored: {r}");
        assert_eq!(
            n("slices_scored"),
            24 * streams,
            "summaries count them all: {r}"
        );
        assert_eq!(n("summaries"), streams, "one summary per study: {r}");
        assert_eq!(n("rejected"), 0, "{r}");
        assert_eq!(r["preprocess_path"], "cpu", "{r}");
        for k in ["wall_s", "slices_per_s", "mb_per_s", "mean_batch"] {
            assert!(f(k) > 0.0, "{k}: {r}");
        }
        for k in [
            "server_cpu_ms_per_slice",
            "server_peak_rss_mib",
            "server_idle_rss_mib",
        ] {
            assert!(f(k) > 0.0, "{k}: {r}");
        }
        assert!(f("server_peak_rss_mib") >= f("server_idle_rss_mib"), "{r}");
        for k in ["latency_ms", "ttff_ms", "time_to_summary_ms"] {
            let p = &r[k];
            let (p50, p95, p99, max) = (
                p["p50"].as_f64().expect("p50"),
                p["p95"].as_f64().expect("p95"),
                p["p99"].as_f64().expect("p99"),
                p["max"].as_f64().expect("max"),
            );
            assert!(
                0.0 < p50 && p50 <= p95 && p95 <= p99 && p99 <= max,
                "{k}: {r}"
            );
        }
        // a study's first finding comes before its summary
        assert!(
            r["ttff_ms"]["max"].as_f64() <= r["time_to_summary_ms"]["max"].as_f64(),
            "{r}"
        );
    }
    // the compressed series are smaller than the explicit one
    let mb = &report["study_mb"];
    for s in ["jpeg-ls", "j2k", "rle"] {
        assert!(mb[s].as_f64() < mb["explicit"].as_f64(), "{mb}");
    }
    // kept: one folder of 24 files per syntax, reused by the next run
    for s in ["explicit", "jpeg-ls", "j2k", "rle"] {
        let dir = keep.path().join("studies-sample").join(s);
        assert_eq!(
            std::fs::read_dir(&dir).expect("kept").count(),
            24,
            "{}",
            dir.display()
        );
    }
}

#[test]
fn bench_load_refuses_an_unknown_syntax_and_zero_streams() {
    for args in [["--syntax", "jpeg-xl"], ["--streams", "0"]] {
        let out = bin()
            .args(["bench", "load", "--slices", "2"])
            .args(args)
            .output()
            .expect("run");
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("syntax") || err.contains("streams"), "{err}");
    }
}

#[test]
fn the_peer_script_starts() {
    let out = Command::new(common::python())
        .arg(common::repo().join("benches/peer/pipeline.py"))
        .arg("--help")
        .output()
        .expect("run the peer");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("--study"));
}

/// Against a server that is already running, named as a PACS administrator writes an address
/// (host:port, no scheme), with its process for the CPU and RSS figures.
#[test]
fn bench_load_measures_a_running_server_named_by_host_and_port() {
    let server = common::ServedProcess::start(&[("RADSTREAM_PREPROCESS", "cpu")]);
    let keep = tempfile::tempdir().expect("tempdir");
    let out = bin()
        .args(["bench", "load", "--slices", "8", "--streams", "1", "--json"])
        .args(["--addr", &format!("127.0.0.1:{}", server.port)])
        .args(["--server-pid", &server.pid().to_string(), "--keep"])
        .arg(keep.path())
        .output()
        .expect("run radstream bench load");
    assert!(
        out.status.success(),
        "bench load --addr failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let runs = report["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{report}");
    let r = &runs[0];
    assert_eq!(
        r["findings"], 8,
        "every slice scored by the running server: {r}"
    );
    assert_eq!(r["summaries"], 1, "{r}");
    for k in [
        "server_cpu_ms_per_slice",
        "server_peak_rss_mib",
        "server_idle_rss_mib",
    ] {
        assert!(r[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {r}");
    }
}
