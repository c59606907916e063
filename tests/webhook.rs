//! The critical-finding webhook against real HTTP receivers on loopback: a hand-rolled HTTP/1.1 server in
//! this file that can fail, drop the connection, hang, or be down entirely. Most tests drive the
//! deliverer over a real hub and event log of their own, publishing alerts exactly as the service does
//! (so failures, restarts and a fallen-behind subscriber can be staged precisely); the last one runs the
//! real `radstream serve --webhook-url` binary and pushes the bundled sample study over gRPC.

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use radstream::{
    proto::v1::{self as pb, analyze_response::Event as Resp},
    results::{
        hub::{Hub, Outgoing},
        log::SqliteLog,
        webhook::{self, DeliveryRecord, Outcome, WebhookConfig},
    },
    shutdown::Shutdown,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};

// ---- the hub, as the service builds it ----

/// The service's hub over the event log in `dir` (as `radstream serve --data-dir` opens it), with a
/// small live buffer per subscriber so falling behind is quick to provoke.
fn open_hub(dir: &Path) -> Hub {
    let log = SqliteLog::in_data_dir(dir).expect("open log");
    Hub::start(Arc::new(log), 64).expect("hub")
}

fn critical(study: &str, label: &str, revision: u32, score: f32) -> pb::StudyEvent {
    pb::StudyEvent {
        study_instance_uid: study.into(),
        modality: "CT".into(),
        event: Some(pb::study_event::Event::Critical(pb::CriticalFinding {
            study_instance_uid: study.into(),
            label: label.into(),
            score,
            critical_threshold: 0.9,
            slice: Some(pb::SliceRef {
                study_instance_uid: study.into(),
                series_instance_uid: format!("{study}.1"),
                sop_instance_uid: format!("{study}.1.{revision}"),
                frame: 0,
                instance_number: Some(revision as i32),
                slice_position_mm: Some(12.5),
                modality: "CT".into(),
            }),
            revision,
            model: Some(pb::ModelRef {
                name: "lesion-demo".into(),
                version: "1".into(),
                onnx_sha256: "00".into(),
            }),
            peak: None,
            slice_received_unix_us: 1,
        })),
        ..Default::default()
    }
}

/// A non-critical event (the deliverer must not send it).
fn summary(study: &str) -> pb::StudyEvent {
    pb::StudyEvent {
        study_instance_uid: study.into(),
        modality: "CT".into(),
        event: Some(pb::study_event::Event::Summary(pb::StudySummary {
            study_instance_uid: study.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Publishes one event as the service does and waits until it is logged and handed to every
/// subscriber (never waiting for one); returns its sequence.
async fn publish(hub: &Hub, mut event: pb::StudyEvent) -> u64 {
    // Unique per study, as the study registry numbers them (increasing, not necessarily dense here).
    static STUDY_SEQUENCE: AtomicU64 = AtomicU64::new(1);
    event.study_sequence = STUDY_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    hub.publish(
        vec![Outgoing {
            event,
            targets: vec![],
        }],
        vec![],
    )
    .await;
    hub.flush().await;
    let sequence = hub.log().last_sequence().expect("last sequence");
    let logged = hub.log().read(sequence, sequence, &[], 1).expect("read");
    assert_eq!(logged.len(), 1, "the event was logged");
    sequence
}

// ---- a real HTTP/1.1 receiver ----

#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    head: String,
    headers: HashMap<String, String>,
    body: serde_json::Value,
}

#[derive(Debug, Clone, Copy)]
enum Reply {
    Status(u16),
    /// Read the request, then close the connection without answering.
    Close,
    /// Hold the request until the test releases the receiver, then answer 200.
    Hang,
}

type Rule = dyn Fn(usize, &Received) -> Reply + Send + Sync;

struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    /// Listens on `addr` (port 0: any) and answers request `i` as `rule(i, request)` says.
    async fn start(
        addr: SocketAddr,
        rule: impl Fn(usize, &Received) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = bind_retrying(addr).await;
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let (release, released) = watch::channel(false);
        let rule: Arc<Rule> = Arc::new(rule);
        let task = tokio::spawn({
            let received = received.clone();
            async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else {
                        return;
                    };
                    tokio::spawn(serve_connection(
                        socket,
                        received.clone(),
                        rule.clone(),
                        released.clone(),
                    ));
                }
            }
        });
        Self {
            addr,
            received,
            release,
            task,
        }
    }

    fn url(&self) -> String {
        // Userinfo and query as a real receiver's token would be: sent, never logged.
        format!("http://hook:s3cret@{}/alerts?token=s3cret", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    fn release(&self) {
        let _ = self.release.send(true);
    }

    /// Stops listening (connections already open finish on their own).
    fn stop(self) {
        self.task.abort();
    }
}

async fn bind_retrying(addr: SocketAddr) -> TcpListener {
    // Rebinding a port just closed can race with its TIME_WAIT/other users for a moment.
    for _ in 0..50 {
        if let Ok(l) = TcpListener::bind(addr).await {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cannot bind {addr}");
}

async fn serve_connection(
    mut socket: TcpStream,
    received: Arc<Mutex<Vec<Received>>>,
    rule: Arc<Rule>,
    mut released: watch::Receiver<bool>,
) {
    let mut buf = Vec::new();
    loop {
        let Some(request) = read_request(&mut socket, &mut buf).await else {
            return;
        };
        let index = {
            let mut r = received.lock().expect("lock");
            r.push(request.clone());
            r.len() - 1
        };
        let status = match rule(index, &request) {
            Reply::Status(s) => s,
            Reply::Close => return,
            Reply::Hang => {
                let _ = released.wait_for(|r| *r).await;
                200
            }
        };
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: 11\r\nconnection: keep-alive\r\n\r\nbody secret"
        );
        if socket.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// One request (head + Content-Length body) from `socket`; `None` at EOF or on a malformed request.
async fn read_request(socket: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let at = Instant::now();
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let start = head_end + 4;
    while buf.len() < start + len {
        let mut chunk = [0u8; 4096];
        let n = socket.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = serde_json::from_slice(&buf[start..start + len]).ok()?;
    buf.drain(..start + len);
    Some(Received {
        at,
        head: request_line,
        headers,
        body,
    })
}

// ---- helpers ----

fn config(url: String) -> WebhookConfig {
    WebhookConfig {
        url: Some(url),
        timeout_secs: 5.0,
        max_attempts: 8,
        initial_backoff_ms: 100,
        max_backoff_ms: 400,
    }
}

/// Polls the delivery log until `done` holds (panics after 60 s).
async fn wait_for(
    dir: &Path,
    what: &str,
    done: impl Fn(&[DeliveryRecord]) -> bool,
) -> Vec<DeliveryRecord> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = webhook::deliveries(dir).expect("delivery log");
        if done(&rows) {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn delivered(rows: &[DeliveryRecord]) -> Vec<u64> {
    rows.iter()
        .filter(|r| matches!(r.outcome, Outcome::Delivered { .. }))
        .map(|r| r.sequence)
        .collect()
}

fn keys(received: &[Received]) -> Vec<String> {
    received
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

/// Everything this test binary logs (installed once, shared by the tests running in parallel).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = buf.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(writer.clone()))
            .try_init();
        buf
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// ---- tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_is_retried_with_backoff_until_the_receiver_takes_it() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = open_hub(dir.path());
    // 500, dropped connection, 500, then 200.
    let receiver = Receiver::start("127.0.0.1:0".parse().expect("addr"), |i, _| match i {
        0 | 2 => Reply::Status(500),
        1 => Reply::Close,
        _ => Reply::Status(200),
    })
    .await;
    let shutdown = Shutdown::new();
    let task = webhook::spawn(
        hub.clone(),
        config(receiver.url()),
        dir.path(),
        shutdown.clone(),
    )
    .expect("spawn")
    .expect("a url is set");

    publish(&hub, summary("1.2.3")).await;
    let seq = publish(&hub, critical("1.2.3", "lesion", 1, 0.97)).await;
    publish(&hub, summary("1.2.3")).await;

    let rows = wait_for(dir.path(), "the delivery", |r| !delivered(r).is_empty()).await;
    let outcomes: Vec<_> = rows
        .iter()
        .map(|r| (r.sequence, r.attempt, r.outcome.clone()))
        .collect();
    assert!(
        matches!(outcomes[1].2, Outcome::Error { .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes
            .iter()
            .map(|(s, a, o)| (*s, *a, matches!(o, Outcome::Error { .. })))
            .collect::<Vec<_>>(),
        [
            (seq, 1, false),
            (seq, 2, true),
            (seq, 3, false),
            (seq, 4, false)
        ]
    );
    assert_eq!(outcomes[0].2, Outcome::HttpStatus { status: 500 });
    assert_eq!(outcomes[2].2, Outcome::HttpStatus { status: 500 });
    assert_eq!(outcomes[3].2, Outcome::Delivered { status: 200 });
    for r in &rows {
        assert_eq!(
            (r.study_instance_uid.as_str(), r.label.as_str(), r.revision),
            ("1.2.3", "lesion", 1)
        );
        assert!(!r.gave_up);
        if let Outcome::Error { message } = &r.outcome {
            assert!(
                !message.contains("s3cret") && !message.contains("alerts"),
                "{message}"
            );
        }
    }
    // Finished through the alert (and perhaps the summary after it, once caught up).
    let cursor = webhook::cursor(dir.path()).expect("cursor").expect("set");
    assert!((seq..=seq + 1).contains(&cursor), "cursor {cursor}");

    // Give a wrong extra delivery a moment to show up: exactly four requests, one success.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receiver.received();
    assert_eq!(got.len(), 4, "{got:#?}");
    for r in &got {
        assert_eq!(r.head, "POST /alerts?token=s3cret HTTP/1.1");
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["idempotency-key"], "1.2.3/lesion/1");
        assert_eq!(r.body, got[0].body, "every attempt sends the same alert");
    }
    let body = &got[3].body;
    assert_eq!(body["type"], "critical_finding");
    assert_eq!(body["sequence"], seq);
    assert_eq!(body["study_instance_uid"], "1.2.3");
    assert_eq!(body["label"], "lesion");
    assert_eq!(body["revision"], 1);
    assert!((body["score"].as_f64().expect("score") - 0.97).abs() < 1e-6);
    assert!((body["critical_threshold"].as_f64().expect("threshold") - 0.9).abs() < 1e-6);
    assert_eq!(body["slice"]["sop_instance_uid"], "1.2.3.1.1");
    assert_eq!(body["model"]["name"], "lesion-demo");
    assert!(body["logged_unix_us"].as_i64().expect("logged") > 0);

    // Backoff: 100 ms doubling, jittered to 50–100 %: at least 50, 100, 200 ms between attempts.
    let gaps: Vec<Duration> = got.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (gap, min_ms) in gaps.iter().zip([50u64, 100, 200]) {
        assert!(*gap >= Duration::from_millis(min_ms), "gaps {gaps:?}");
    }
    assert!(gaps[2] < Duration::from_secs(2), "gaps {gaps:?}");

    // Logs: a warn per failed attempt, an info for the delivery, the endpoint without its token.
    let logs = String::from_utf8_lossy(&logs.lock().expect("lock")).into_owned();
    let endpoint = format!("endpoint=http://127.0.0.1:{}/alerts", receiver.addr.port());
    let mine: Vec<&str> = logs.lines().filter(|l| l.contains(&endpoint)).collect();
    let count = |level: &str, what: &str| {
        mine.iter()
            .filter(|l| l.contains(level) && l.contains(what))
            .count()
    };
    assert_eq!(count("WARN", "delivery attempt failed"), 3, "{logs}");
    assert_eq!(count("INFO", "critical finding delivered"), 1, "{logs}");
    assert!(
        !logs.contains("s3cret") && !logs.contains("body secret"),
        "{logs}"
    );

    shutdown.abort();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task ends on abort")
        .expect("no panic");
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_that_keeps_failing_is_given_up_and_the_next_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = open_hub(dir.path());
    // Refuses everything about label "a"; takes the rest.
    let receiver = Receiver::start("127.0.0.1:0".parse().expect("addr"), |_, r| {
        if r.body["label"] == "a" {
            Reply::Status(503)
        } else {
            Reply::Status(204)
        }
    })
    .await;
    let shutdown = Shutdown::new();
    let mut cfg = config(receiver.url());
    cfg.max_attempts = 3;
    cfg.initial_backoff_ms = 20;
    cfg.max_backoff_ms = 40;
    let _task = webhook::spawn(hub.clone(), cfg, dir.path(), shutdown.clone())
        .expect("spawn")
        .expect("a url is set");
    let a = publish(&hub, critical("9.9", "a", 1, 0.95)).await;
    let b = publish(&hub, critical("9.9", "b", 1, 0.99)).await;

    let rows = wait_for(dir.path(), "b delivered", |r| delivered(r) == [b]).await;
    let seen: Vec<_> = rows
        .iter()
        .map(|r| (r.sequence, r.attempt, r.outcome.clone(), r.gave_up))
        .collect();
    let fail = Outcome::HttpStatus { status: 503 };
    assert_eq!(
        seen,
        [
            (a, 1, fail.clone(), false),
            (a, 2, fail.clone(), false),
            (a, 3, fail, true),
            (b, 1, Outcome::Delivered { status: 204 }, false),
        ]
    );
    assert_eq!(webhook::cursor(dir.path()).expect("cursor"), Some(b));
    assert_eq!(
        keys(&receiver.received()),
        ["9.9/a/1", "9.9/a/1", "9.9/a/1", "9.9/b/1"]
    );
    shutdown.abort();
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_delays_only_its_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = open_hub(dir.path());
    // A port with nobody listening: connections are refused.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let shutdown = Shutdown::new();
    let mut cfg = config(format!("http://{addr}/hook"));
    cfg.max_attempts = 1000;
    cfg.initial_backoff_ms = 50;
    cfg.max_backoff_ms = 200;
    let _task = webhook::spawn(hub.clone(), cfg, dir.path(), shutdown.clone())
        .expect("spawn")
        .expect("a url is set");

    const N: usize = 300;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut sequences = Vec::new();
    for i in 0..N {
        let t = Instant::now();
        sequences.push(publish(&hub, critical(&format!("5.{i}"), "lesion", 1, 0.95)).await);
        slowest = slowest.max(t.elapsed());
    }
    let publishing = started.elapsed();
    eprintln!(
        "published {N} alerts in {publishing:?} (slowest {slowest:?}) with the receiver down"
    );
    // Nothing could be delivered (the deliverer is stuck retrying the first alert), yet every publish
    // returned: had it waited for the deliverer it would not have returned at all. The bound is loose
    // (a loaded CI machine) but far below what waiting out even one retry sequence would take.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest publish {slowest:?}"
    );
    let rows = webhook::deliveries(dir.path()).expect("log");
    assert!(delivered(&rows).is_empty());
    assert!(rows.iter().all(|r| r.sequence == sequences[0]), "{rows:#?}");

    // The receiver comes up: every alert arrives, once, in log order.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let receiver = Receiver::start(addr, |_, _| Reply::Status(200)).await;
    let rows = wait_for(dir.path(), "all delivered", |r| delivered(r).len() == N).await;
    assert_eq!(delivered(&rows), sequences, "log order");
    let first: Vec<_> = rows.iter().filter(|r| r.sequence == sequences[0]).collect();
    assert!(first.len() >= 2, "the first alert was retried");
    assert!(
        first[..first.len() - 1].iter().all(
            |r| matches!(&r.outcome, Outcome::Error { message } if message.contains("connect"))
        ),
        "{first:#?}"
    );
    let got = keys(&receiver.received());
    let want: Vec<String> = (0..N).map(|i| format!("5.{i}/lesion/1")).collect();
    assert_eq!(got, want);
    shutdown.abort();
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_receiver_does_not_hold_the_producer_and_a_fallen_behind_deliverer_catches_up() {
    let logs = captured_logs();
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = open_hub(dir.path());
    // Takes the first request and does not answer until released; answers the rest at once.
    let receiver = Receiver::start("127.0.0.1:0".parse().expect("addr"), |i, _| {
        if i == 0 {
            Reply::Hang
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let shutdown = Shutdown::new();
    let mut cfg = config(receiver.url());
    cfg.timeout_secs = 60.0;
    let _task = webhook::spawn(hub.clone(), cfg, dir.path(), shutdown.clone())
        .expect("spawn")
        .expect("a url is set");

    // Far more than a subscriber's buffer, while the deliverer waits on its first request.
    const N: usize = 500;
    let mut sequences = Vec::new();
    let started = Instant::now();
    sequences.push(publish(&hub, critical("7.0", "lesion", 1, 0.95)).await);
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.received().is_empty() {
        assert!(Instant::now() < deadline, "the first alert never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 1..N {
        sequences.push(publish(&hub, critical(&format!("7.{i}"), "lesion", 1, 0.95)).await);
        publish(&hub, summary(&format!("7.{i}"))).await;
    }
    let publishing = started.elapsed();
    eprintln!("published {N} alerts in {publishing:?} while the receiver held the first");
    assert_eq!(
        receiver.received().len(),
        1,
        "the deliverer is still inside its first attempt"
    );
    assert!(webhook::deliveries(dir.path()).expect("log").is_empty());

    receiver.release();
    let rows = wait_for(dir.path(), "all delivered", |r| delivered(r).len() == N).await;
    assert_eq!(
        delivered(&rows),
        sequences,
        "log order, no gap, no duplicate"
    );
    assert!(rows.iter().all(|r| r.attempt == 1));
    let want: Vec<String> = (0..N).map(|i| format!("7.{i}/lesion/1")).collect();
    assert_eq!(keys(&receiver.received()), want);
    // It did fall behind (its live buffer is 64 alerts) and re-read what it missed from the log.
    let logs = String::from_utf8_lossy(&logs.lock().expect("lock")).into_owned();
    let endpoint = format!("endpoint=http://127.0.0.1:{}/alerts", receiver.addr.port());
    assert!(
        logs.lines()
            .any(|l| l.contains("fell behind") && l.contains(&endpoint)),
        "no Missed seen"
    );
    shutdown.abort();
    receiver.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_delivers_what_was_pending_and_not_what_was_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = open_hub(dir.path());
    // Logged before the webhook was ever configured: not sent (no history replay on first start).
    publish(&hub, critical("1.0", "lesion", 1, 0.95)).await;

    // 500 for "3.0" while `failing` holds; 200 otherwise.
    let failing = Arc::new(Mutex::new(true));
    let receiver = Receiver::start("127.0.0.1:0".parse().expect("addr"), {
        let failing = failing.clone();
        move |_, r| {
            if r.body["study_instance_uid"] == "3.0" && *failing.lock().expect("lock") {
                Reply::Status(500)
            } else {
                Reply::Status(200)
            }
        }
    })
    .await;
    let mut cfg = config(receiver.url());
    cfg.initial_backoff_ms = 300;
    cfg.max_backoff_ms = 300;

    // Run 1: two alerts delivered, the third failing when the service stops.
    let shutdown = Shutdown::new();
    let task = webhook::spawn(hub.clone(), cfg.clone(), dir.path(), shutdown.clone())
        .expect("spawn")
        .expect("a url is set");
    let s1 = publish(&hub, critical("2.0", "lesion", 1, 0.95)).await;
    let s2 = publish(&hub, critical("2.0", "lesion", 2, 0.97)).await;
    let s3 = publish(&hub, critical("3.0", "lesion", 1, 0.99)).await;
    wait_for(dir.path(), "two delivered and a failed attempt", |r| {
        delivered(r) == [s1, s2] && r.iter().any(|x| x.sequence == s3)
    })
    .await;
    shutdown.abort();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("ends on abort")
        .expect("no panic");
    assert_eq!(webhook::cursor(dir.path()).expect("cursor"), Some(s2));

    // Stopped: nothing more is sent. The service goes down, the receiver recovers.
    let before_restart = receiver.received().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.received().len(), before_restart);
    drop(hub);
    *failing.lock().expect("lock") = false;

    // Run 2, a new hub over the same data directory: the pending alert, then a new one; nothing twice.
    let hub = open_hub(dir.path());
    let shutdown = Shutdown::new();
    let task = webhook::spawn(hub.clone(), cfg, dir.path(), shutdown.clone())
        .expect("spawn")
        .expect("a url is set");
    let s4 = publish(&hub, critical("4.0", "lesion", 1, 0.95)).await;
    let rows = wait_for(dir.path(), "all delivered", |r| delivered(r).len() == 4).await;
    assert_eq!(delivered(&rows), [s1, s2, s3, s4]);
    let s3_attempts: Vec<_> = rows
        .iter()
        .filter(|r| r.sequence == s3)
        .map(|r| r.attempt)
        .collect();
    let n = s3_attempts.len() as u32;
    assert_eq!(
        s3_attempts,
        (1..=n).collect::<Vec<_>>(),
        "attempt numbers continue"
    );
    let keys = keys(&receiver.received());
    let ok: Vec<&String> = keys.iter().filter(|k| !k.starts_with("3.0/")).collect();
    assert_eq!(ok, ["2.0/lesion/1", "2.0/lesion/2", "4.0/lesion/1"]);
    assert_eq!(keys.last().map(String::as_str), Some("4.0/lesion/1"));
    assert!(
        !keys.iter().any(|k| k.starts_with("1.0/")),
        "no history replay on first start"
    );

    // A drain with nothing left to send ends the deliverer.
    shutdown.begin_drain();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("ends once drained and idle")
        .expect("no panic");
    receiver.stop();
}

#[tokio::test]
async fn no_url_no_task_and_bad_urls_fail_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let hub = open_hub(dir.path());
    let none = webhook::spawn(
        hub.clone(),
        WebhookConfig::default(),
        dir.path(),
        Shutdown::new(),
    )
    .expect("no webhook is fine");
    assert!(none.is_none());
    assert!(
        !dir.path().join(webhook::DB_FILE).exists(),
        "no delivery log without a webhook"
    );
    for bad in ["https://h:1/x?token=s3cret", "h:1/x", "http://"] {
        let e = webhook::spawn(hub.clone(), config(bad.into()), dir.path(), Shutdown::new())
            .expect_err(bad)
            .to_string();
        assert!(!e.contains("s3cret"), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_binary_posts_the_sample_studys_critical_findings() {
    // The first POST fails: the real service retries it too.
    let receiver = Receiver::start("127.0.0.1:0".parse().expect("addr"), |i, _| {
        if i == 0 {
            Reply::Status(503)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let server = common::ServedProcess::start(&[
        ("RADSTREAM_PREPROCESS", "cpu"),
        ("RADSTREAM_WEBHOOK_URL", &receiver.url()),
    ]);
    let mut stream = common::Stream::try_open_at(server.endpoint())
        .await
        .expect("analyze");
    for (name, bytes) in common::sample_study() {
        stream.send(common::instance(&name, bytes)).await;
    }
    stream.close();
    let events = stream.drain().await;
    let streamed: Vec<&pb::CriticalFinding> = events
        .iter()
        .filter_map(|e| match e {
            Resp::Critical(c) => Some(c),
            _ => None,
        })
        .collect();
    assert!(
        !streamed.is_empty(),
        "the sample study's lesion crosses the demo model's critical threshold"
    );

    // Every alert the stream carried is POSTed (at least once), the first after a retry.
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered_keys = |received: &[Received]| {
        let mut k = keys(&received[1.min(received.len())..]);
        k.dedup();
        k
    };
    while delivered_keys(&receiver.received()).len() < streamed.len() {
        assert!(
            Instant::now() < deadline,
            "alerts not delivered: {:#?}",
            receiver.received()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = receiver.received();
    assert_eq!(
        received[0].headers["idempotency-key"], received[1].headers["idempotency-key"],
        "the refused alert is sent again"
    );
    for (c, r) in streamed.iter().zip(&received[1..]) {
        let body = &r.body;
        assert_eq!(body["type"], "critical_finding");
        assert_eq!(body["study_instance_uid"], c.study_instance_uid.as_str());
        assert_eq!(body["label"], "lesion");
        assert_eq!(body["revision"], c.revision);
        assert_eq!(body["score"].as_f64().expect("score") as f32, c.score);
        assert!(c.score >= c.critical_threshold);
        let sop = c.slice.as_ref().map(|s| s.sop_instance_uid.as_str());
        assert_eq!(body["slice"]["sop_instance_uid"].as_str(), sop);
        assert_eq!(
            r.headers["idempotency-key"],
            format!("{}/lesion/{}", c.study_instance_uid, c.revision)
        );
    }
    // The server's delivery log, in its data directory, says the same (written once the receiver
    // answered, so it may trail what the receiver saw by a moment).
    let rows = wait_for(server.data.path(), "the server's delivery log", |r| {
        delivered(r).len() == streamed.len()
    })
    .await;
    assert_eq!(rows[0].outcome, Outcome::HttpStatus { status: 503 });
    assert_eq!(rows.len(), streamed.len() + 1, "{rows:#?}");
    receiver.stop();
}
