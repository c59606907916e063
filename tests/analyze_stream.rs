//! The `Analyze` stream over a real loopback socket: what a PACS sees.

mod common;

use std::time::Duration;

use common::*;
use radstream::proto::v1::{self as pb, analyze_response::Event};

const WAIT: Duration = Duration::from_secs(120);

fn instance_number(f: &pb::SliceFinding) -> i32 {
    f.slice
        .as_ref()
        .and_then(|s| s.instance_number)
        .expect("instance number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_study_yields_one_finding_per_slice_and_a_summary_on_the_lesion() {
    let server = start(test_config()).await;
    let study = sample_study();
    let mut stream = Stream::open(&server).await;
    for (name, bytes) in &study {
        stream.send(instance(name, bytes.clone())).await;
    }
    stream.close();
    let events = stream.drain().await;

    assert_eq!(accepted(&events).len(), study.len());
    assert!(rejections(&events).is_empty(), "{:?}", rejections(&events));
    let findings = findings(&events);
    assert_eq!(findings.len(), study.len(), "one finding per slice");
    let study_uid = findings[0]
        .slice
        .as_ref()
        .unwrap()
        .study_instance_uid
        .clone();
    let mut numbers: Vec<i32> = findings.iter().map(|f| instance_number(f)).collect();
    numbers.sort();
    assert_eq!(
        numbers,
        (1..=study.len() as i32).collect::<Vec<_>>(),
        "each slice exactly once"
    );
    for f in &findings {
        let slice = f.slice.as_ref().unwrap();
        assert_eq!(
            slice.study_instance_uid, study_uid,
            "all slices in the right study"
        );
        assert!(f.client_ref.ends_with(".dcm"));
        let model = f.model.as_ref().expect("model ref");
        assert_eq!(model.name, "lesion-demo");
        assert_eq!(model.onnx_sha256.len(), 64);
        let t = f.timings.expect("timings");
        assert!(
            t.received_unix_us <= t.decoded_unix_us && t.decoded_unix_us <= t.preprocessed_unix_us
        );
        assert!(t.preprocessed_unix_us <= t.scored_unix_us && t.batch_size >= 1);
        assert_eq!(f.scores.len(), 1);
        let s = &f.scores[0];
        assert_eq!(s.positive, s.score >= s.threshold);
        let peak = s
            .peak
            .as_ref()
            .expect("the model has a map: a peak is reported");
        assert!(peak.patient.is_some(), "the sample carries its geometry");
        assert!(slice.slice_position_mm.is_some());
    }
    // Lesion slices score above every lesion-free slice.
    let min_lesion = findings
        .iter()
        .filter(|f| LESION_SLICES.contains(&instance_number(f)))
        .map(|f| f.scores[0].score)
        .fold(f32::INFINITY, f32::min);
    let max_clean = findings
        .iter()
        .filter(|f| !LESION_SLICES.contains(&instance_number(f)))
        .map(|f| f.scores[0].score)
        .fold(f32::NEG_INFINITY, f32::max);
    assert!(
        min_lesion > max_clean,
        "lesion slices {min_lesion} vs clean slices {max_clean}"
    );

    let summaries = summaries(&events);
    assert_eq!(summaries.len(), 1);
    let s = summaries[0];
    assert_eq!(s.study_instance_uid, study_uid);
    assert_eq!(s.slices_scored as usize, study.len());
    assert_eq!(s.instances_accepted as usize, study.len());
    assert_eq!(s.reason, pb::CompletionReason::StreamClosed as i32);
    let label = &s.labels[0];
    assert!(label.positive);
    let top = label
        .top_slice
        .as_ref()
        .and_then(|t| t.instance_number)
        .expect("top slice");
    assert!(
        LESION_SLICES.contains(&top),
        "top slice #{top} carries the lesion"
    );
    // The summary comes after every finding of its study.
    assert!(matches!(events.last(), Some(Event::Summary(_))));
    server.stop().await.expect("clean stop");
}

/// Replaces the Explicit VR Little Endian transfer syntax UID in the file meta by an unknown one of the
/// same length, so the file stays well-formed but names a transfer syntax nobody implements.
fn with_unknown_transfer_syntax(mut bytes: Vec<u8>) -> Vec<u8> {
    let from = b"1.2.840.10008.1.2.1\0";
    let to = b"1.2.840.10008.1.2.99";
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("sample is Explicit VR Little Endian");
    bytes[at..at + from.len()].copy_from_slice(to);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_instances_are_rejected_by_name_and_the_stream_goes_on() {
    let server = start(test_config()).await;
    let study = sample_study();
    let good = &study[0].1;
    let pyd = pydicom_test_files();
    let mut bad: Vec<(&str, Vec<u8>, &[pb::RejectReason])> = vec![
        (
            "not-dicom",
            b"this is a text file, not DICOM".to_vec(),
            &[pb::RejectReason::NotDicom],
        ),
        ("empty", Vec::new(), &[pb::RejectReason::NotDicom]),
        (
            "truncated",
            good[..good.len() * 2 / 3].to_vec(),
            &[
                pb::RejectReason::Malformed,
                pb::RejectReason::PixelDecode,
                pb::RejectReason::MissingPixelData,
            ],
        ),
        (
            "unknown-ts",
            with_unknown_transfer_syntax(good.clone()),
            &[pb::RejectReason::UnsupportedTransferSyntax],
        ),
        (
            "rtplan.dcm",
            read(&pyd.join("rtplan.dcm")),
            &[pb::RejectReason::MissingPixelData],
        ),
    ];
    for name in [
        "MR_truncated.dcm",
        "rtplan_truncated.dcm",
        "no_meta.dcm",
        "badVR.dcm",
    ] {
        bad.push((name, read(&pyd.join(name)), &[]));
    }
    let mut stream = Stream::open(&server).await;
    for (name, bytes, _) in &bad {
        stream.send(instance(name, bytes.clone())).await;
    }
    for (name, bytes) in &study {
        stream.send(instance(name, bytes.clone())).await;
    }
    stream.close();
    let events = stream.drain().await;

    let rejected = rejections(&events);
    for (name, _, expected) in &bad {
        let r = rejected
            .iter()
            .find(|r| r.client_ref == *name)
            .unwrap_or_else(|| panic!("{name} was not rejected"));
        assert!(!r.message.is_empty(), "{name}: a reason is given");
        assert_ne!(r.reason, pb::RejectReason::Unspecified as i32);
        if !expected.is_empty() {
            assert!(
                expected.iter().any(|e| *e as i32 == r.reason),
                "{name}: got {:?}: {}",
                r.reason(),
                r.message
            );
        }
    }
    let unknown = rejected
        .iter()
        .find(|r| r.client_ref == "unknown-ts")
        .unwrap();
    assert!(
        unknown.message.contains("1.2.840.10008.1.2.99"),
        "names the transfer syntax: {}",
        unknown.message
    );
    assert!(
        !unknown.sop_instance_uid.is_empty(),
        "names the SOP instance when readable"
    );
    let plan = rejected
        .iter()
        .find(|r| r.client_ref == "rtplan.dcm")
        .unwrap();
    assert!(
        plan.message.contains("Pixel Data") || plan.message.contains("(7FE0,0010)"),
        "{}",
        plan.message
    );
    assert!(!plan.sop_instance_uid.is_empty());

    assert_eq!(
        findings(&events).len(),
        study.len(),
        "every good slice is still scored"
    );
    let sample_uid = findings(&events)[0]
        .slice
        .as_ref()
        .unwrap()
        .study_instance_uid
        .clone();
    let summary = summaries(&events)
        .into_iter()
        .find(|s| s.study_instance_uid == sample_uid)
        .expect("summary");
    assert_eq!(summary.slices_scored as usize, study.len());
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_over_the_configured_limits_are_rejected_with_the_limit() {
    let mut config = test_config();
    config.limits.max_instance_bytes = 4096;
    let server = start(config).await;
    let study = sample_study();
    let mut stream = Stream::open(&server).await;
    stream.send(instance("big", study[0].1.clone())).await;
    let r = match stream.next(WAIT).await {
        Some(Event::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    };
    assert_eq!(r.reason, pb::RejectReason::TooLarge as i32);
    assert!(r.message.contains("4096"), "{}", r.message);
    stream.close();
    server.stop().await.expect("stop");

    let mut config = test_config();
    config.limits.max_rows = 32;
    let server = start(config).await;
    let mut stream = Stream::open(&server).await;
    stream.send(instance("wide", study[0].1.clone())).await;
    let r = match stream.next(WAIT).await {
        Some(Event::Rejected(r)) => r,
        other => panic!("expected a rejection, got {other:?}"),
    };
    assert_eq!(
        r.reason,
        pb::RejectReason::DimensionsTooLarge as i32,
        "{}",
        r.message
    );
    assert!(!r.sop_instance_uid.is_empty());
    stream.close();
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_study_completes_the_study_while_the_stream_stays_open() {
    let server = start(test_config()).await;
    let study = sample_study();
    let mut stream = Stream::open(&server).await;
    for (name, bytes) in &study {
        stream.send(instance(name, bytes.clone())).await;
    }
    let first = stream
        .until(WAIT, |e| matches!(e, Event::Accepted(_)))
        .await
        .pop();
    let Some(Event::Accepted(a)) = first else {
        panic!("accepted expected")
    };
    let uid = a.slice.unwrap().study_instance_uid;
    stream.send(end_of_study(&uid)).await;
    let events = stream.until(WAIT, |e| matches!(e, Event::Summary(_))).await;
    let Some(Event::Summary(s)) = events.last() else {
        unreachable!()
    };
    assert_eq!(s.reason, pb::CompletionReason::EndOfStudy as i32);
    assert_eq!(
        s.slices_scored as usize,
        study.len(),
        "the summary waits for every slice sent before the marker"
    );
    stream.close();
    assert!(stream.drain().await.is_empty(), "nothing after the summary");
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_studies_complete_without_the_client_closing() {
    let mut config = test_config();
    config.study.idle_timeout_secs = 0.5;
    let server = start(config).await;
    let study = sample_study();
    let mut stream = Stream::open(&server).await;
    for (name, bytes) in study.iter().take(3) {
        stream.send(instance(name, bytes.clone())).await;
    }
    let events = stream.until(WAIT, |e| matches!(e, Event::Summary(_))).await;
    let Some(Event::Summary(s)) = events.last() else {
        unreachable!()
    };
    assert_eq!(s.reason, pb::CompletionReason::Idle as i32);
    assert_eq!(s.slices_scored, 3);
    stream.close();
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_studies_on_one_stream_are_summarised_apart() {
    let server = start(test_config()).await;
    let study = sample_study();
    let pyd = pydicom_test_files();
    let others = [
        ("CT_small.dcm", read(&pyd.join("CT_small.dcm"))),
        ("MR_small.dcm", read(&pyd.join("MR_small.dcm"))),
    ];
    let mut stream = Stream::open(&server).await;
    for (i, (name, bytes)) in study.iter().enumerate() {
        stream.send(instance(name, bytes.clone())).await;
        if let Some((n, b)) = others.get(i) {
            stream.send(instance(n, b.clone())).await;
        }
    }
    stream.close();
    let events = stream.drain().await;
    assert_eq!(findings(&events).len(), study.len() + others.len());
    let summaries = summaries(&events);
    assert_eq!(summaries.len(), 3, "three studies");
    let sample_uid = findings(&events)
        .iter()
        .find(|f| f.client_ref == study[0].0)
        .unwrap()
        .slice
        .as_ref()
        .unwrap()
        .study_instance_uid
        .clone();
    for s in summaries {
        let expected = if s.study_instance_uid == sample_uid {
            study.len()
        } else {
            1
        };
        assert_eq!(
            s.slices_scored as usize, expected,
            "study {}",
            s.study_instance_uid
        );
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_client_does_not_disturb_other_streams() {
    let server = start(test_config()).await;
    let study = sample_study();
    // A client that sends half a study and disappears without closing its stream properly.
    let mut leaving = Stream::open(&server).await;
    for (name, bytes) in study.iter().take(study.len() / 2) {
        leaving.send(instance(name, bytes.clone())).await;
    }
    let _ = leaving.next(WAIT).await;
    drop(leaving);
    // Another client on the same server still gets everything.
    let mut staying = Stream::open(&server).await;
    for (name, bytes) in &study {
        staying.send(instance(name, bytes.clone())).await;
    }
    staying.close();
    let events = staying.drain().await;
    assert_eq!(findings(&events).len(), study.len());
    // The vanished client's half may complete (its stream closed) before the other's instances
    // arrive: the other then also gets that first revision (with its duplicates) before the one that
    // covers the whole study. Either way the last summary is the whole study.
    let summaries = summaries(&events);
    let last = summaries.last().expect("a summary");
    assert!(summaries.len() <= 2, "{} summaries", summaries.len());
    assert_eq!(last.slices_scored as usize, study.len());
    assert_eq!(last.slices_failed, 0);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_frame_instances_yield_one_finding_per_frame() {
    let server = start(test_config()).await;
    let path = pydicom_data_files().join("emri_small.dcm");
    let mut stream = Stream::open(&server).await;
    stream.send(instance("emri_small.dcm", read(&path))).await;
    stream.close();
    let events = stream.drain().await;
    let a = accepted(&events);
    assert_eq!(a.len(), 1);
    let frames = a[0].frames;
    assert!(frames > 1, "emri_small is multi-frame");
    let mut got: Vec<u32> = findings(&events)
        .iter()
        .map(|f| f.slice.as_ref().unwrap().frame)
        .collect();
    got.sort();
    assert_eq!(got, (0..frames).collect::<Vec<_>>());
    assert_eq!(summaries(&events)[0].slices_scored, frames);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::{
        health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
    };
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let server = start(test_config()).await;
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel.clone());
    let status = health
        .check(HealthCheckRequest {
            service: "radstream.v1.Analysis".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection")
        .into_inner();
    let response = responses
        .message()
        .await
        .expect("message")
        .expect("one response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("list expected")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"radstream.v1.Analysis".to_string()),
        "{names:?}"
    );
    server.stop().await.expect("stop");
}

/// A configuration whose streams answer fast on this machine (CPU preprocessing).
fn cpu_config() -> radstream::config::Config {
    let mut config = test_config();
    config.preprocess = radstream::config::PreprocessBackend::Cpu;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_ends_the_stream_resource_exhausted_after_the_summary() {
    let mut config = cpu_config();
    // Messages up to 1 MiB + 1 MiB pass the transport; a sample slice is ~0.5 MB.
    config.limits.max_instance_bytes = 1 << 20;
    let server = start(config).await;
    let study = sample_study();
    let mut stream = Stream::open(&server).await;
    for (name, bytes) in &study {
        stream.send(instance(name, bytes.clone())).await;
    }
    stream.send(instance("huge.dcm", vec![0u8; 3 << 20])).await;
    let (events, end) = stream.drain_with_status().await;

    assert_eq!(
        findings(&events).len(),
        study.len(),
        "every slice read before the oversize message is answered"
    );
    let summaries = summaries(&events);
    assert_eq!(
        summaries.len(),
        1,
        "the study of those slices is summarised"
    );
    assert_eq!(summaries[0].slices_scored as usize, study.len());
    assert!(
        matches!(events.last(), Some(Event::Summary(_))),
        "the summary comes before the stream's end"
    );
    let status = end.expect_err("the stream ends with an error, not OK");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("size limit") && status.message().contains("max_instance_bytes"),
        "the message names the limit: {}",
        status.message()
    );
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ref_over_the_limit_is_rejected_unechoed_and_the_stream_goes_on() {
    let mut config = cpu_config();
    config.limits.max_client_ref_bytes = 64;
    let server = start(config).await;
    let study = sample_study();
    let mut stream = Stream::open(&server).await;
    let long = format!("PATIENT-SMITH-{}", "x".repeat(51)); // 65 bytes
    let allowed = "y".repeat(64);
    stream.send(instance(&long, study[0].1.clone())).await;
    stream.send(instance(&allowed, study[1].1.clone())).await;
    stream.close();
    let events = stream.drain().await;

    let rejected = rejections(&events);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let r = rejected[0];
    assert_eq!(r.reason, pb::RejectReason::TooLarge as i32);
    assert!(r.client_ref.is_empty(), "the long client_ref is not echoed");
    assert!(
        r.message.contains("client_ref") && r.message.contains("max_client_ref_bytes"),
        "{}",
        r.message
    );
    assert!(!r.message.contains("SMITH"), "{}", r.message);
    let found = findings(&events);
    assert_eq!(found.len(), 1, "the next instance is analysed");
    assert_eq!(found[0].client_ref, allowed);
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_max_streams_are_refused_at_once_naming_the_limit() {
    let mut config = cpu_config();
    config.limits.max_streams = 3;
    let server = start(config).await;
    let study = sample_study();
    let mut open = Vec::new();
    for (name, bytes) in study.iter().take(3) {
        let mut stream = Stream::open(&server).await;
        stream.send(instance(name, bytes.clone())).await;
        // Accepted: its session holds one of the three places.
        stream
            .until(WAIT, |e| matches!(e, Event::Accepted(_)))
            .await;
        open.push(stream);
    }
    let refused = Stream::try_open_at(server.endpoint())
        .await
        .err()
        .expect("a fourth stream is refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(
        refused.message().contains("max_streams") && refused.message().contains('3'),
        "{}",
        refused.message()
    );
    // A stream that ends gives its place back.
    let mut first = open.remove(0);
    first.close();
    let events = first.drain().await;
    assert_eq!(summaries(&events).len(), 1);
    let mut again = Stream::try_open_at(server.endpoint())
        .await
        .expect("a place was freed");
    again.send(instance(&study[3].0, study[3].1.clone())).await;
    again.close();
    assert_eq!(findings(&again.drain().await).len(), 1);
    for mut stream in open {
        stream.close();
        stream.drain().await;
    }
    server.stop().await.expect("stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_advertises_max_streams_per_connection_to_http2_clients() {
    let mut config = cpu_config();
    config.limits.max_streams_per_connection = 5;
    let server = start(config).await;
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let (_client, mut connection) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let mut ping = connection.ping_pong().expect("ping-pong handle");
    // The server's SETTINGS precede its answer to our PING: once the PONG is in, they are applied.
    tokio::select! {
        _ = &mut connection => panic!("the connection ended before the PONG"),
        pong = ping.ping(h2::Ping::opaque()) => {
            pong.expect("pong");
        }
    }
    assert_eq!(connection.max_concurrent_send_streams(), 5);
    server.stop().await.expect("stop");
}

/// A slice cut short in its pixel data (the walk stops at the missing bytes) is rejected under its
/// SOP, Series and Study UIDs, and its study's summary counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_instance_names_its_uids_and_counts_in_its_study() {
    let server = start(test_config()).await;
    let study = sample_study();
    let mut stream = Stream::open(&server).await;
    for (name, bytes) in &study[1..] {
        stream.send(instance(name, bytes.clone())).await;
    }
    let (name, whole) = &study[0];
    let cut = whole[..whole.len() - 1000].to_vec();
    stream.send(instance(name, cut)).await;
    stream.close();
    let events = stream.drain().await;

    assert_eq!(accepted(&events).len(), study.len() - 1);
    let rejected = rejections(&events);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    let r = rejected[0];
    let original = radstream::decode::decode_instance(whole, &radstream::decode::Limits::default())
        .expect("the whole slice decodes");
    assert_eq!(r.sop_instance_uid, original.meta.sop_instance_uid);
    assert_eq!(r.series_instance_uid, original.meta.series_instance_uid);
    assert_eq!(r.study_instance_uid, original.meta.study_instance_uid);
    assert_eq!(r.reason, pb::RejectReason::Malformed as i32, "{r:?}");
    let summaries = summaries(&events);
    assert_eq!(summaries.len(), 1, "one study: {summaries:?}");
    let s = summaries[0];
    assert_eq!(s.study_instance_uid, original.meta.study_instance_uid);
    assert_eq!(s.instances_accepted as usize, study.len() - 1);
    assert_eq!(s.instances_rejected, 1, "the rejection counts in its study");
    assert_eq!(s.slices_scored as usize, study.len() - 1);
}
