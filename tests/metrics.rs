//! `/metrics` counts what happened (README: "Metrics"): a real server with its HTTP listener on takes
//! the sample study and one file that is not DICOM on one stream; `/metrics` is then read the way a
//! Prometheus scraper would and parsed by an independent OpenMetrics parser (Python's
//! `prometheus_client`), and every count must equal what was pushed and answered.
//!
//! The metrics are process-wide (see `telemetry::events`), so this binary holds this one test: nothing
//! else in the process adds to them. The counts are still taken as the difference of two scrapes, so a
//! scrape that starts non-empty cannot pass for a correct one.

mod common;

use std::{collections::HashMap, time::Duration};

use radstream::proto::v1::{self as pb, analyze_response::Event};
use serde_json::Value;

/// One sample: (name, labels) → value.
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// Parses an OpenMetrics exposition with prometheus_client's parser (strict: a malformed line, a bad
/// type or a missing `# EOF` fails it).
fn parse(text: &str) -> Samples {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("metrics.txt");
    std::fs::write(&path, text).expect("write scrape");
    let code = format!(
        r#"
import json
from prometheus_client.openmetrics.parser import text_string_to_metric_families
text = open({path:?}).read()
out = []
for family in text_string_to_metric_families(text):
    for s in family.samples:
        out.append([s.name, sorted(s.labels.items()), s.value])
print(json.dumps(out))
"#,
        path = path.display().to_string()
    );
    let json: Value = serde_json::from_str(&common::python_eval(&code)).expect("parser's JSON");
    json.as_array()
        .expect("samples")
        .iter()
        .map(|s| {
            let name = s[0].as_str().expect("name").to_string();
            let labels = s[1]
                .as_array()
                .expect("labels")
                .iter()
                .map(|kv| {
                    (
                        kv[0].as_str().expect("key").to_string(),
                        kv[1].as_str().expect("value").to_string(),
                    )
                })
                .collect();
            ((name, labels), s[2].as_f64().expect("numeric value"))
        })
        .collect()
}

async fn scrape(http: std::net::SocketAddr) -> (Samples, String) {
    let response = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await.expect("body");
    (parse(&text), text)
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    samples
        .get(&(name.to_string(), labels))
        .copied()
        .unwrap_or(0.0)
}

/// The sum over every label set of `name`.
fn total(samples: &Samples, name: &str) -> f64 {
    samples
        .iter()
        .filter(|((n, _), _)| n == name)
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_count_what_was_pushed() {
    let mut config = common::test_config();
    config.http.listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let server = common::start(config).await;
    let http = server.http_addr.expect("http listener");
    let (before, _) = scrape(http).await;

    let mut stream = common::Stream::open(&server).await;
    for (name, bytes) in common::sample_study() {
        stream.send(common::instance(&name, bytes)).await;
    }
    stream
        .send(common::instance(
            "not-dicom.txt",
            b"this is not a DICOM file".to_vec(),
        ))
        .await;
    stream.close();
    let events = stream.drain().await;

    // what the stream was told
    let accepted = common::accepted(&events);
    let rejected = common::rejections(&events);
    let findings = common::findings(&events);
    let criticals = events
        .iter()
        .filter(|e| matches!(e, Event::Critical(_)))
        .count() as f64;
    assert_eq!(accepted.len(), 12);
    assert_eq!(findings.len(), 12);
    assert_eq!(rejected.len(), 1);
    assert_eq!(common::summaries(&events).len(), 1);
    assert!(criticals >= 1.0, "the sample study's lesion is critical");
    let reason = pb::RejectReason::try_from(rejected[0].reason).expect("known reason");
    assert_eq!(reason, pb::RejectReason::NotDicom);

    // once the stream has gone, the gauges fall back (the session ends just after its last answer)
    let mut after = scrape(http).await;
    for _ in 0..200 {
        if value(&after.0, "radstream_open_streams", &[]) == 0.0
            && value(&after.0, "radstream_studies_open", &[]) == 0.0
            && value(&after.0, "radstream_decoded_bytes_in_flight", &[]) == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        after = scrape(http).await;
    }
    let (after, text) = after;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let delta_total = |name: &str| total(&after, name) - total(&before, name);
    let model = [("model", "lesion-demo"), ("version", "1.0.0")];

    assert_eq!(delta("radstream_instances_received_total", &[]), 13.0);
    assert_eq!(delta("radstream_instances_accepted_total", &[]), 12.0);
    assert_eq!(
        delta(
            "radstream_instances_rejected_total",
            &[("reason", "not_dicom")]
        ),
        1.0
    );
    assert_eq!(delta_total("radstream_instances_rejected_total"), 1.0);
    assert_eq!(delta("radstream_slices_scored_total", &model), 12.0);
    assert_eq!(delta_total("radstream_slices_scored_total"), 12.0);
    assert_eq!(delta_total("radstream_slices_failed_total"), 0.0);
    assert_eq!(
        delta("radstream_critical_findings_total", &model),
        criticals
    );
    assert_eq!(
        delta(
            "radstream_studies_completed_total",
            &[("reason", "stream_closed")]
        ),
        1.0
    );
    // per-stage latency histograms: one observation per decoded instance, per queued and per
    // reported slice, per alert
    for (stage, count) in [
        ("decode", 12.0),
        ("queue", 12.0),
        ("finding", 12.0),
        ("alert", criticals),
    ] {
        assert_eq!(
            delta(
                "radstream_stage_duration_seconds_count",
                &[("stage", stage)]
            ),
            count,
            "stage {stage}"
        );
        let in_inf = delta(
            "radstream_stage_duration_seconds_bucket",
            &[("stage", stage), ("le", "+Inf")],
        );
        assert_eq!(in_inf, count, "stage {stage}: +Inf bucket = count");
    }
    let batches = delta(
        "radstream_stage_duration_seconds_count",
        &[("stage", "score")],
    );
    assert!((1.0..=12.0).contains(&batches), "{batches} batches");
    assert_eq!(
        delta(
            "radstream_stage_duration_seconds_count",
            &[("stage", "preprocess")]
        ),
        batches
    );
    // batch sizes add up to the slices scored, in as many batches as were scored
    assert_eq!(delta("radstream_batch_size_sum", &model), 12.0);
    assert_eq!(delta("radstream_batch_size_count", &model), batches);
    // gauges back at rest
    for gauge in [
        "radstream_open_streams",
        "radstream_studies_open",
        "radstream_decoded_bytes_in_flight",
        "radstream_subscribers",
    ] {
        assert_eq!(value(&after, gauge, &[]), 0.0, "{gauge}");
    }
    assert_eq!(value(&after, "radstream_queue_depth", &model), 0.0);

    // no identifier in any label: none of the pushed UIDs, nor the client's names, appear anywhere
    for a in &accepted {
        let slice = a.slice.as_ref().expect("slice");
        for uid in [
            &slice.sop_instance_uid,
            &slice.series_instance_uid,
            &slice.study_instance_uid,
        ] {
            assert!(!text.contains(uid.as_str()), "{uid} in /metrics");
        }
    }
    assert!(!text.contains("slice-0") && !text.contains("not-dicom"));

    server.stop().await.expect("stop");
}
