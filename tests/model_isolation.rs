//! One model's failures do not touch another's (README: "Several models"): two models serve the same
//! study through one real server; one of them fails every slice (its preprocessing refuses, as a broken
//! GPU path would) and later loses its worker thread. The other model's findings, summary and the
//! study's accounting stay whole; the failures are reported per slice and per model; health turns
//! NOT_SERVING once a model can no longer score.

mod common;

use std::{sync::Arc, time::Duration};

use radstream::{
    catalog::{Catalog, EngineSettings},
    inference::{self},
    pipeline::Engine,
    preprocess::{CpuPreprocessor, Preprocessor},
    proto::v1::{self as pb, analyze_response::Event},
    server,
    shutdown::Shutdown,
};

/// The bundled model under `name`, behind `preprocessor`.
fn engine(name: &str, preprocessor: Box<dyn Preprocessor>) -> Arc<Engine> {
    common::engine_behind(name, preprocessor, 4)
}

fn events_of(events: &[Event]) -> (Vec<&pb::SliceFinding>, Vec<&pb::InstanceRejected>) {
    let mut found = Vec::new();
    let mut failed = Vec::new();
    for e in events {
        match e {
            Event::Finding(f) => found.push(f),
            Event::Rejected(r) => failed.push(r),
            _ => {}
        }
    }
    (found, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_model_fails_only_its_own_slices() {
    let config = common::test_config();
    let env = inference::runtime(&config.ort_library_path()).expect("ONNX Runtime");
    let catalog = Catalog::new(env, EngineSettings::of(&config));
    let broken = engine(
        "broken",
        // refuses every batch, as a preprocessing path that broke would
        Box::new(common::Hooked(|| Err(common::injected_failure()))),
    );
    catalog.add_engine(broken.clone()).expect("broken model");
    catalog
        .add_engine(engine("lesion-demo", Box::new(CpuPreprocessor)))
        .expect("good model");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = Shutdown::new();
    let data = tempfile::tempdir().expect("data dir");
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        let data = data.path().to_path_buf();
        let config = config.clone();
        let catalog = catalog.clone();
        async move {
            let listeners = server::Listeners {
                grpc: listener,
                http: None,
            };
            server::serve(listeners, &config, catalog, shutdown, &data).await
        }
    });
    let endpoint = format!("http://{addr}");
    let push = |study: Vec<(String, Vec<u8>)>| {
        let endpoint = endpoint.clone();
        async move {
            let mut stream = common::Stream::try_open_at(endpoint)
                .await
                .expect("analyze");
            for (name, bytes) in study {
                stream.send(common::instance(&name, bytes)).await;
            }
            stream.close();
            stream.drain().await
        }
    };

    let events = push(radstream::bench::alerts::relabelled_sample(121)).await;
    let (found, failed) = events_of(&events);
    assert_eq!(found.len(), 12, "the good model scored every slice");
    assert!(found
        .iter()
        .all(|f| f.model.as_ref().expect("model").name == "lesion-demo"));
    assert_eq!(
        failed.len(),
        12,
        "the broken model failed every slice, once each"
    );
    for r in &failed {
        assert_eq!(r.reason, pb::RejectReason::Preprocess as i32);
        assert_eq!(r.model.as_ref().expect("failing model").name, "broken");
        assert!(
            r.frame.is_some(),
            "a slice failure, not an instance rejection"
        );
    }
    let accepted = events
        .iter()
        .filter(|e| matches!(e, Event::Accepted(_)))
        .count();
    assert_eq!(accepted, 12);
    let summary = events
        .iter()
        .find_map(|e| match e {
            Event::Summary(s) => Some(s),
            _ => None,
        })
        .expect("summary");
    assert_eq!((summary.slices_scored, summary.slices_failed), (12, 12));
    let lesion = summary
        .labels
        .iter()
        .find(|l| l.model == "lesion-demo")
        .expect("the good model's label");
    assert!(
        lesion.positive,
        "the sample study's lesion is found all the same"
    );

    // the broken model's worker ends: its slices are refused at once, the other's still scored
    broken.halt_worker().await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while broken.is_healthy() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the worker ends");
    let events = push(radstream::bench::alerts::relabelled_sample(122)).await;
    let (found, failed) = events_of(&events);
    assert_eq!((found.len(), failed.len()), (12, 12));
    assert!(failed
        .iter()
        .all(|r| r.reason == pb::RejectReason::Overloaded as i32));
    // health is the worst of the active versions: a model that can no longer score turns it NOT_SERVING
    let channel = tonic::transport::Endpoint::from_shared(endpoint.clone())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let s = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .expect("health")
                .into_inner()
                .status;
            if s == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32 {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(status.is_ok(), "health never turned NOT_SERVING");

    shutdown.begin_drain();
    task.await.expect("server task").expect("serve");
}
