//! HTTP readiness tells the truth (README: "Health"): `/readyz` answers 200 while the engine serves and
//! 503, naming the model version and why, when its worker has stopped, while a call hangs past the
//! stall timeout, or when every recent slice failed — and 200 again once the call returns or a slice
//! is scored. gRPC health follows the same channel and is checked
//! beside it. `/healthz` (liveness) stays 200 throughout: a failing model is not a dead process. Each
//! case makes the condition happen on a real server with a real engine.
//!
//! Kept apart from tests/metrics.rs: these failures add to the process-wide metrics that test counts.

mod common;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use radstream::{
    catalog::{Catalog, EngineSettings},
    decode,
    inference::{self},
    pipeline::{Engine, EngineHealth, FAILING_AFTER},
    preprocess::{CpuPreprocessor, Preprocessor},
    server,
    shutdown::Shutdown,
};
use serde_json::Value;
use tokio::task::JoinHandle;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// Generous: states are waited for, never timed.
const PATIENCE: Duration = Duration::from_secs(60);

fn engine(preprocessor: Box<dyn Preprocessor>) -> Arc<Engine> {
    // one slice per batch: each failure is its own, so the count of failures is exact
    common::engine_behind("lesion-demo", preprocessor, 1)
}

struct Served {
    grpc: String,
    http: String,
    shutdown: Shutdown,
    task: JoinHandle<radstream::error::Result<()>>,
}

async fn serve(engine: Arc<Engine>) -> Served {
    let config = common::test_config();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let http = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let grpc_addr = format!("http://{}", grpc.local_addr().expect("addr"));
    let http_addr = format!("http://{}", http.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let data = tempfile::tempdir().expect("data dir");
            let env = inference::runtime(&config.ort_library_path()).expect("ONNX Runtime");
            let catalog = Catalog::new(env, EngineSettings::of(&config));
            catalog.add_engine(engine).expect("model");
            let listeners = server::Listeners {
                grpc,
                http: Some(http),
            };
            server::serve(listeners, &config, catalog, shutdown, data.path()).await
        }
    });
    Served {
        grpc: grpc_addr,
        http: http_addr,
        shutdown,
        task,
    }
}

async fn get(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

/// Polls `/readyz` until it answers `status`; returns its body.
async fn readyz_becomes(served: &Served, status: u16) -> Value {
    let url = format!("{}/readyz", served.http);
    let polled = tokio::time::timeout(PATIENCE, async {
        loop {
            let (s, body) = get(&url).await;
            if s == status {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    polled.unwrap_or_else(|_| panic!("/readyz never answered {status}"))
}

async fn grpc_health(endpoint: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("known status")
}

async fn grpc_health_becomes(endpoint: &str, want: ServingStatus) {
    let polled = tokio::time::timeout(PATIENCE, async {
        while grpc_health(endpoint).await != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "gRPC health never became {want:?}");
}

fn sample_slice() -> Arc<decode::DecodedInstance> {
    let bytes = common::read(&common::sample_study_dir().join("slice-06.dcm"));
    Arc::new(decode::decode_instance(&bytes, &decode::Limits::default()).expect("decodes"))
}

/// Scores one slice directly on the engine; whether it was scored.
async fn score(engine: &Engine) -> bool {
    let answer = engine
        .submit(sample_slice(), 0)
        .await
        .expect("queued")
        .await
        .expect("answered");
    answer.is_ok()
}

async fn assert_alive(served: &Served) {
    let (status, body) = get(&format!("{}/healthz", served.http)).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "alive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_turns_503_when_the_worker_stops() {
    let engine = engine(Box::new(CpuPreprocessor));
    let served = serve(engine.clone()).await;
    let body = readyz_becomes(&served, 200).await;
    assert_eq!(body["status"], "ready");
    assert_eq!(body["models"][0]["name"], "lesion-demo");
    assert_eq!(body["models"][0]["health"], "serving");
    assert!(score(&engine).await);

    engine.halt_worker().await;
    let body = readyz_becomes(&served, 503).await;
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["health"], "stopped");
    let reason = body["reason"].as_str().expect("reason");
    assert!(
        reason.contains("lesion-demo 1.0.0") && reason.contains("the scoring worker has stopped"),
        "{reason}"
    );
    grpc_health_becomes(&served.grpc, ServingStatus::NotServing).await;
    assert_alive(&served).await;

    served.shutdown.begin_drain();
    served.task.await.expect("server task").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_turns_503_while_every_recent_slice_fails_and_200_after_a_success() {
    let refuse = Arc::new(AtomicBool::new(true));
    let engine = engine({
        let refuse = refuse.clone();
        Box::new(common::Hooked(move || {
            if refuse.load(Ordering::SeqCst) {
                return Err(common::injected_failure());
            }
            Ok(())
        }))
    });
    let served = serve(engine.clone()).await;
    readyz_becomes(&served, 200).await;

    // one failure short of the threshold: still serving
    for _ in 1..FAILING_AFTER {
        assert!(!score(&engine).await, "the slice fails");
    }
    assert_eq!(*engine.health().borrow(), EngineHealth::Serving);
    let (status, _) = get(&format!("{}/readyz", served.http)).await;
    assert_eq!(
        status,
        200,
        "{} failures are not all recent slices",
        FAILING_AFTER - 1
    );

    // the last one of the run: not ready, saying why
    assert!(!score(&engine).await);
    let body = readyz_becomes(&served, 503).await;
    assert_eq!(body["health"], "failing");
    assert_eq!(body["models"][0]["health"], "failing");
    let reason = body["reason"].as_str().expect("reason");
    assert!(
        reason.contains("lesion-demo 1.0.0: every recent slice failed"),
        "{reason}"
    );
    grpc_health_becomes(&served.grpc, ServingStatus::NotServing).await;
    assert_alive(&served).await;

    // the path mends; one scored slice is enough
    refuse.store(false, Ordering::SeqCst);
    assert!(score(&engine).await, "the slice is scored");
    let body = readyz_becomes(&served, 200).await;
    assert_eq!(body["models"][0]["health"], "serving");
    grpc_health_becomes(&served.grpc, ServingStatus::Serving).await;

    served.shutdown.begin_drain();
    served.task.await.expect("server task").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readyz_turns_503_while_a_call_hangs_and_200_when_it_returns() {
    let gate = Arc::new(common::Gate::default());
    gate.set_closed(true);
    let engine = engine(common::gated(gate.clone()));
    engine.set_stall_timeout(Duration::from_millis(100));
    let served = serve(engine.clone()).await;
    readyz_becomes(&served, 200).await;

    let answer = engine.submit(sample_slice(), 0).await.expect("queued");
    let body = readyz_becomes(&served, 503).await;
    assert_eq!(body["health"], "stalled");
    let reason = body["reason"].as_str().expect("reason");
    assert!(
        reason
            .contains("lesion-demo 1.0.0: a preprocess/model call has run past the stall timeout"),
        "{reason}"
    );
    assert_alive(&served).await;

    gate.set_closed(false);
    assert!(answer.await.expect("answered").is_ok(), "the call returns");
    readyz_becomes(&served, 200).await;

    served.shutdown.begin_drain();
    served.task.await.expect("server task").expect("serve");
}
