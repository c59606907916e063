//! gRPC health follows the scoring engine and the drain (README: "gRPC health reports NOT_SERVING if
//! the scoring engine ever stops"). Each case makes the condition happen on a real server with a real
//! engine — a preprocessing call that hangs, a worker thread that ends, a drain — and watches health
//! change through the grpc.health.v1 service, for the whole server ("") and for radstream.v1.Analysis.
//! The same hanging engine holds a drain open, to show its deadline cancelling what is left.

mod common;

use std::{sync::Arc, time::Duration};

use radstream::{
    catalog::{Catalog, EngineSettings},
    config::Config,
    decode,
    inference::{self},
    pipeline::{Engine, EngineError},
    preprocess::{CpuPreprocessor, Preprocessor},
    server,
    shutdown::Shutdown,
};
use tokio::task::JoinHandle;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const NAMES: [&str; 2] = ["", "radstream.v1.Analysis"];
/// Generous: the state is waited for, never timed.
const PATIENCE: Duration = Duration::from_secs(60);

fn engine(preprocessor: Box<dyn Preprocessor>) -> Arc<Engine> {
    common::engine_behind("lesion-demo", preprocessor, 4)
}

struct Served {
    endpoint: String,
    shutdown: Shutdown,
    task: JoinHandle<radstream::error::Result<()>>,
}

async fn serve(engine: Arc<Engine>, config: Config) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    let task = tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let data = tempfile::tempdir().expect("data dir");
            let listeners = server::Listeners {
                grpc: listener,
                http: None,
            };
            let env = inference::runtime(&config.ort_library_path()).expect("ONNX Runtime");
            let catalog = Catalog::new(env, EngineSettings::of(&config));
            catalog.add_engine(engine).expect("model");
            server::serve(listeners, &config, catalog, shutdown, data.path()).await
        }
    });
    Served {
        endpoint,
        shutdown,
        task,
    }
}

async fn health_client(endpoint: &str) -> HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    HealthClient::new(channel)
}

async fn check(client: &mut HealthClient<tonic::transport::Channel>, name: &str) -> ServingStatus {
    let response = client
        .check(HealthCheckRequest {
            service: name.into(),
        })
        .await
        .expect("health check")
        .into_inner();
    ServingStatus::try_from(response.status).expect("known status")
}

/// Polls Check until every name reports `want`; fails after `PATIENCE`.
async fn wait_for(client: &mut HealthClient<tonic::transport::Channel>, want: ServingStatus) {
    let polled = tokio::time::timeout(PATIENCE, async {
        loop {
            let mut all = true;
            for name in NAMES {
                all &= check(client, name).await == want;
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "health never became {want:?}");
}

fn sample_slice() -> Arc<decode::DecodedInstance> {
    let bytes = common::read(&common::sample_study_dir().join("slice-06.dcm"));
    Arc::new(decode::decode_instance(&bytes, &decode::Limits::default()).expect("decodes"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_engine_call_turns_health_not_serving_until_it_returns() {
    let gate = Arc::new(common::Gate::default());
    let engine = engine(common::gated(gate.clone()));
    engine.set_stall_timeout(Duration::from_millis(200));
    let served = serve(engine.clone(), common::test_config()).await;
    let mut health = health_client(&served.endpoint).await;
    for name in NAMES {
        assert_eq!(check(&mut health, name).await, ServingStatus::Serving);
    }

    gate.set_closed(true);
    let answer = engine.submit(sample_slice(), 0).await.expect("queued");
    wait_for(&mut health, ServingStatus::NotServing).await;

    gate.set_closed(false);
    let scored = tokio::time::timeout(PATIENCE, answer)
        .await
        .expect("the released call returns")
        .expect("answered")
        .expect("scored");
    assert!(scored.scores[0] > 0.5, "slice 6 carries the lesion");
    wait_for(&mut health, ServingStatus::Serving).await;

    served.shutdown.begin_drain();
    served.task.await.expect("server task").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_ends_turns_health_not_serving() {
    let engine = engine(Box::new(CpuPreprocessor));
    let served = serve(engine.clone(), common::test_config()).await;
    let mut health = health_client(&served.endpoint).await;
    wait_for(&mut health, ServingStatus::Serving).await;

    engine.halt_worker().await;
    wait_for(&mut health, ServingStatus::NotServing).await;
    assert!(!engine.is_healthy());
    let after = match engine.submit(sample_slice(), 0).await {
        Ok(rx) => rx.await.unwrap_or(Err(EngineError::ShutDown)),
        Err(e) => Err(e),
    };
    assert!(
        matches!(after, Err(EngineError::ShutDown)),
        "a stopped engine scores nothing: {after:?}"
    );

    served.shutdown.begin_drain();
    served.task.await.expect("server task").expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_not_serving_as_the_drain_begins() {
    let engine = engine(Box::new(CpuPreprocessor));
    let mut config = common::test_config();
    // The Watch streams below stay open: the deadline is what ends them.
    config.shutdown.drain_deadline_secs = 1.0;
    let served = serve(engine, config).await;
    let mut health = health_client(&served.endpoint).await;
    // Watch, opened before the drain: a new call after it begins would be refused by the transport.
    let mut watches = Vec::new();
    for name in NAMES {
        let mut watch = health
            .watch(HealthCheckRequest {
                service: name.into(),
            })
            .await
            .expect("watch")
            .into_inner();
        let first = tokio::time::timeout(PATIENCE, watch.message())
            .await
            .expect("first status")
            .expect("watch stream")
            .expect("a status");
        assert_eq!(first.status, ServingStatus::Serving as i32, "{name:?}");
        watches.push(watch);
    }

    served.shutdown.begin_drain();
    for (name, watch) in NAMES.iter().zip(&mut watches) {
        let next = tokio::time::timeout(PATIENCE, watch.message())
            .await
            .expect("a status change")
            .expect("watch stream")
            .expect("a status");
        assert_eq!(next.status, ServingStatus::NotServing as i32, "{name:?}");
    }
    // A new stream during the drain is refused UNAVAILABLE (by the transport or the service).
    let mut analysis =
        radstream::proto::v1::analysis_client::AnalysisClient::connect(served.endpoint.clone())
            .await;
    if let Ok(client) = analysis.as_mut() {
        let refused = client
            .analyze(futures::stream::iter(Vec::new()))
            .await
            .expect_err("no new stream during a drain");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    }
    // Open Watch streams do not hold the server past the deadline.
    tokio::time::timeout(PATIENCE, served.task)
        .await
        .expect("serve returns after the drain deadline")
        .expect("server task")
        .expect("serve");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_cancels_what_is_left_with_unavailable() {
    use radstream::proto::v1::{analysis_client::AnalysisClient, analyze_response::Event};

    let gate = Arc::new(common::Gate::default());
    let engine = engine(common::gated(gate.clone()));
    let mut config = common::test_config();
    config.shutdown.drain_deadline_secs = 1.0;
    // The test keeps a handle, so the engine is joined only after its call is released, at the end.
    let served = serve(engine.clone(), config).await;
    let mut client = AnalysisClient::connect(served.endpoint.clone())
        .await
        .expect("connect")
        .max_encoding_message_size(64 << 20);
    let (tx, requests) = tokio::sync::mpsc::channel(4);
    let mut rx = client
        .analyze(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .expect("analyze")
        .into_inner();

    // The slice is accepted and then hangs in preprocessing: the drain cannot finish it.
    gate.set_closed(true);
    let bytes = common::read(&common::sample_study_dir().join("slice-06.dcm"));
    tx.send(common::instance("hangs", bytes))
        .await
        .expect("send");
    let first = tokio::time::timeout(PATIENCE, rx.message())
        .await
        .expect("a response")
        .expect("stream")
        .expect("open")
        .event;
    assert!(matches!(first, Some(Event::Accepted(_))), "{first:?}");

    served.shutdown.begin_drain();
    let end = tokio::time::timeout(PATIENCE, rx.message())
        .await
        .expect("the deadline ends the stream");
    let status = end.expect_err("the stream ends with a status");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("drain deadline passed")
            && status.message().contains("1 instances were cancelled"),
        "{status:?}"
    );
    tokio::time::timeout(PATIENCE, served.task)
        .await
        .expect("serve returns after the abort")
        .expect("server task")
        .expect("serve");
    gate.set_closed(false);
    drop(tx);
    drop(engine);
}
