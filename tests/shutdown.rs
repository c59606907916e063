//! Signals against the real binary (`radstream serve`), as systemd, Docker and Kubernetes send them.
//!
//! What is held: SIGTERM and SIGINT both drain — every instance the server read is answered, the
//! studies it started are summarised, the stream ends UNAVAILABLE (the client had not closed its side,
//! so it cannot be told everything it sent was analysed) and the process exits 0; an open idle stream
//! does not hold the process; a second signal during a drain held open by a client ends the process at
//! once with 128 + the signal's number. No duration is asserted: states are waited for with generous
//! timeouts.

mod common;

use std::{
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use futures::StreamExt;
use radstream::proto::v1::{self as pb, analysis_client::AnalysisClient, analyze_response::Event};
use tonic::{transport::Endpoint, Code};
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

const PATIENCE: Duration = Duration::from_secs(120);

/// `radstream serve` on a free loopback port, its log in a temporary file.
struct Service {
    child: Child,
    endpoint: String,
    log: tempfile::NamedTempFile,
    _data: tempfile::TempDir,
}

impl Service {
    async fn start(drain_deadline_secs: f64) -> Self {
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            probe.local_addr().expect("addr").port()
        };
        let log = tempfile::NamedTempFile::new().expect("log file");
        let data = tempfile::tempdir().expect("data dir");
        let child = Command::new(env!("CARGO_BIN_EXE_radstream"))
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data.path())
            .env("RADSTREAM_PREPROCESS", "cpu")
            .env(
                "RADSTREAM_DRAIN_DEADLINE_SECS",
                drain_deadline_secs.to_string(),
            )
            .env("RADSTREAM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log handle"))
            .spawn()
            .expect("start radstream serve");
        let mut service = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            log,
            _data: data,
        };
        service.wait_serving().await;
        service
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    async fn wait_serving(&mut self) {
        let ready = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!("radstream exited early ({status}):\n{}", self.log());
                }
                let endpoint = Endpoint::from_shared(self.endpoint.clone()).expect("endpoint");
                if let Ok(channel) = endpoint.connect().await {
                    let mut health = HealthClient::new(channel);
                    if let Ok(r) = health.check(HealthCheckRequest::default()).await {
                        if r.into_inner().status == ServingStatus::Serving as i32 {
                            return;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(ready.is_ok(), "radstream never served:\n{}", self.log());
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit.
    async fn exit(&mut self) -> ExitStatus {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Some(status) = self.child.try_wait().expect("wait") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        match waited {
            Ok(status) => status,
            Err(_) => {
                let _ = self.child.kill();
                panic!("radstream did not exit:\n{}", self.log());
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

async fn client(endpoint: &str, small_windows: bool) -> AnalysisClient<tonic::transport::Channel> {
    let mut endpoint = Endpoint::from_shared(endpoint.to_string()).expect("endpoint");
    if small_windows {
        // HTTP/2 flow control then stops the server after a few dozen unread responses.
        endpoint = endpoint
            .initial_stream_window_size(Some(65_535))
            .initial_connection_window_size(Some(65_535));
    }
    let channel = endpoint.connect().await.expect("connect");
    AnalysisClient::new(channel)
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
}

/// The sample study sent `rounds` times, each instance with its own client_ref; the request stream
/// stays open after the last one (the client never closes its side). `pulled` counts the requests the
/// transport has taken.
fn endless_push(
    rounds: usize,
    pulled: Arc<AtomicUsize>,
) -> impl futures::Stream<Item = pb::AnalyzeRequest> + Send + 'static {
    // One study of distinct instances (the same instance twice would be a duplicate, not work).
    let dir = tempfile::tempdir().expect("series dir");
    let files = common::write_series(dir.path(), rounds * common::sample_study().len());
    let requests: Vec<pb::AnalyzeRequest> = files
        .iter()
        .map(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            common::instance(&name.unwrap_or_default(), common::read(path))
        })
        .collect();
    futures::stream::iter(requests)
        .inspect(move |_| {
            pulled.fetch_add(1, Ordering::SeqCst);
        })
        .chain(futures::stream::pending())
}

/// Reads until the stream ends; returns the events and the final status (OK when it ended cleanly).
async fn read_to_end(
    rx: &mut tonic::Streaming<pb::AnalyzeResponse>,
    mut on_event: impl FnMut(&[Event]),
) -> (Vec<Event>, tonic::Status) {
    let mut events = Vec::new();
    loop {
        let next = tokio::time::timeout(PATIENCE, rx.message())
            .await
            .expect("the stream ends");
        match next {
            Ok(Some(response)) => {
                events.push(response.event.expect("response carries an event"));
                on_event(&events);
            }
            Ok(None) => return (events, tonic::Status::ok("")),
            Err(status) => return (events, status),
        }
    }
}

/// Every accepted instance's slices answered (finding or per-slice rejection) and counted in the
/// study summary.
fn assert_all_accepted_answered(events: &[Event]) {
    let accepted = common::accepted(events);
    assert!(!accepted.is_empty(), "nothing was accepted");
    let findings = common::findings(events);
    let slice_failures: Vec<_> = common::rejections(events)
        .into_iter()
        .filter(|r| r.frame.is_some())
        .collect();
    for a in &accepted {
        let answered = findings
            .iter()
            .filter(|f| f.client_ref == a.client_ref)
            .count()
            + slice_failures
                .iter()
                .filter(|r| r.client_ref == a.client_ref)
                .count();
        assert_eq!(
            answered, a.frames as usize,
            "instance {} accepted but not answered",
            a.client_ref
        );
    }
    let summaries = common::summaries(events);
    assert_eq!(summaries.len(), 1, "one study, one summary");
    let summary = summaries[0];
    assert_eq!(summary.instances_accepted as usize, accepted.len());
    assert_eq!(
        (summary.slices_scored + summary.slices_failed) as usize,
        accepted.iter().map(|a| a.frames as usize).sum::<usize>()
    );
    let last = events.last().expect("events");
    assert!(
        matches!(last, Event::Summary(_)),
        "the summary comes after every finding"
    );
}

/// A push of 204 instances, the signal after the first 20 are answered.
async fn signal_during_a_push_drains(signal: &str) {
    let mut service = Service::start(60.0).await;
    let mut client = client(&service.endpoint, false).await;
    let pulled = Arc::new(AtomicUsize::new(0));
    let mut rx = client
        .analyze(endless_push(17, pulled.clone()))
        .await
        .expect("analyze")
        .into_inner();
    let mut signalled = false;
    let (events, status) = read_to_end(&mut rx, |events| {
        if !signalled && common::findings(events).len() >= 20 {
            service.signal(signal);
            signalled = true;
        }
    })
    .await;
    assert!(signalled, "the stream ended before the signal");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("server shutting down")
            && status.message().contains("stopped reading"),
        "{status:?}"
    );
    assert_all_accepted_answered(&events);
    let accepted = common::accepted(&events).len();
    assert!(
        accepted < 204,
        "the drain stopped reading the push ({accepted} of 204 read)"
    );
    let exit = service.exit().await;
    assert_eq!(exit.code(), Some(0), "{exit}\n{}", service.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_push_answers_every_accepted_slice_and_exits_0() {
    signal_during_a_push_drains("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_drains_like_sigterm() {
    signal_during_a_push_drains("INT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_idle_stream_does_not_hold_the_process() {
    let mut service = Service::start(2.0).await;
    let mut client = client(&service.endpoint, false).await;
    let (tx, requests) = tokio::sync::mpsc::channel::<pb::AnalyzeRequest>(4);
    let mut rx = client
        .analyze(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .expect("analyze")
        .into_inner();
    // One slice answered, then the stream sits open and idle.
    let study = common::sample_study();
    tx.send(common::instance("only", study[5].1.clone()))
        .await
        .expect("send");
    let mut events = Vec::new();
    while common::findings(&events).is_empty() {
        let e = tokio::time::timeout(PATIENCE, rx.message())
            .await
            .expect("a finding")
            .expect("stream")
            .expect("open");
        events.push(e.event.expect("event"));
    }

    service.signal("TERM");
    let (rest, status) = read_to_end(&mut rx, |_| {}).await;
    events.extend(rest);
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_all_accepted_answered(&events);
    let exit = service.exit().await;
    assert_eq!(exit.code(), Some(0), "{exit}\n{}", service.log());
    drop(tx);
}

/// Opens a stream whose client pushes the sample study 17 times over small HTTP/2 windows and never
/// reads; returns once the server has stopped taking requests (its session waits to send, instances
/// stay in flight): a drain now cannot finish by itself.
async fn push_without_reading(service: &Service) -> tonic::Streaming<pb::AnalyzeResponse> {
    let mut client = client(&service.endpoint, true).await;
    let pulled = Arc::new(AtomicUsize::new(0));
    let rx = client
        .analyze(endless_push(17, pulled.clone()))
        .await
        .expect("analyze")
        .into_inner();
    let stalled = tokio::time::timeout(PATIENCE, async {
        let mut last = usize::MAX;
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let now = pulled.load(Ordering::SeqCst);
            if now == last {
                return now;
            }
            last = now;
        }
    })
    .await
    .expect("the push stalls on flow control");
    assert!(
        stalled < 204,
        "the server stopped reading ({stalled} of 204 taken)"
    );
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_held_open_by_a_client_ends_at_the_deadline() {
    let mut service = Service::start(2.0).await;
    let mut rx = push_without_reading(&service).await;
    service.signal("TERM");
    let exit = service.exit().await;
    assert_eq!(exit.code(), Some(0), "{exit}\n{}", service.log());
    let log = service.log();
    assert!(log.contains("drain deadline passed"), "{log}");
    assert!(log.contains("instances cancelled"), "{log}");
    // The unread stream was cut: whatever was buffered, it does not end OK.
    let (_, status) = read_to_end(&mut rx, |_| {}).await;
    assert_ne!(status.code(), Code::Ok, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_ends_a_drain_held_open_by_a_client() {
    // A deadline far beyond this test's patience: only the second signal can end the drain.
    let mut service = Service::start(3600.0).await;
    let mut rx = push_without_reading(&service).await;
    service.signal("TERM");
    // Held: the client still does not read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        service.child.try_wait().expect("wait").is_none(),
        "the drain is held open by the unread stream:\n{}",
        service.log()
    );

    service.signal("TERM");
    let exit = service.exit().await;
    assert_eq!(
        exit.code(),
        Some(128 + 15),
        "a forced stop exits 128 + SIGTERM\n{}",
        service.log()
    );
    let (_, status) = read_to_end(&mut rx, |_| {}).await;
    assert_ne!(status.code(), Code::Ok, "{status:?}");
}
