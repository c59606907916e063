//! Shared helpers for the integration tests: the real server on a loopback port, the bundled sample
//! study, public test files from the pydicom packages, and the Python oracle.
#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::Duration,
};

use radstream::{
    config::Config,
    proto::v1::{self as pb, analysis_client::AnalysisClient, analyze_response::Event},
    server::{self, RunningServer},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The oracle's interpreter: `RADSTREAM_PYTHON`, else the venv `scripts/setup.sh --test` creates.
pub fn python() -> PathBuf {
    let path = std::env::var_os("RADSTREAM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Config::cache_dir().join("venv/bin/python"));
    assert!(
        path.exists(),
        "oracle Python not found at {} — run scripts/test.sh (or scripts/setup.sh --test)",
        path.display()
    );
    path
}

/// Runs `python -c code` and returns its stdout.
pub fn python_eval(code: &str) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// pydicom's bundled test files (shipped in the pydicom wheel).
pub fn pydicom_test_files() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        PathBuf::from(python_eval(
            "import os, pydicom; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))",
        ))
    })
}

/// pydicom-data's full-size files.
pub fn pydicom_data_files() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        PathBuf::from(python_eval("import os, data_store; print(os.path.join(os.path.dirname(data_store.__file__), 'data'))"))
    })
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn sample_study_dir() -> PathBuf {
    repo().join("models/lesion-demo/sample-study")
}

/// (file name, bytes) of the bundled sample study, in order.
pub fn sample_study() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sample_study_dir())
        .expect("sample study dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "sample study too small");
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read(&p),
            )
        })
        .collect()
}

/// Slices of the sample study that carry the synthetic lesion (by InstanceNumber).
pub const LESION_SLICES: std::ops::RangeInclusive<i32> = 5..=8;

pub fn test_config() -> Config {
    Config {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..Config::default()
    }
}

pub async fn start(config: Config) -> RunningServer {
    server::start(config).await.expect("server starts")
}

pub async fn connect(server: &RunningServer) -> AnalysisClient<tonic::transport::Channel> {
    AnalysisClient::connect(server.endpoint())
        .await
        .expect("connect")
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
}

pub fn instance(client_ref: &str, dicom: Vec<u8>) -> pb::AnalyzeRequest {
    pb::AnalyzeRequest {
        kind: Some(pb::analyze_request::Kind::Instance(pb::Instance {
            dicom,
            client_ref: client_ref.into(),
        })),
    }
}

pub fn end_of_study(uid: &str) -> pb::AnalyzeRequest {
    pb::AnalyzeRequest {
        kind: Some(pb::analyze_request::Kind::EndOfStudy(pb::EndOfStudy {
            study_instance_uid: uid.into(),
        })),
    }
}

/// An open Analyze stream: send requests, read events.
pub struct Stream {
    pub tx: Option<mpsc::Sender<pb::AnalyzeRequest>>,
    pub rx: tonic::Streaming<pb::AnalyzeResponse>,
}

impl Stream {
    pub async fn open(server: &RunningServer) -> Self {
        let mut client = connect(server).await;
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .analyze(ReceiverStream::new(rx))
            .await
            .expect("analyze")
            .into_inner();
        Self { tx: Some(tx), rx }
    }

    pub async fn send(&self, request: pb::AnalyzeRequest) {
        self.tx
            .as_ref()
            .expect("open")
            .send(request)
            .await
            .expect("send");
    }

    pub fn close(&mut self) {
        self.tx.take();
    }

    /// The next event, failing the test after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Event> {
        tokio::time::timeout(timeout, self.rx.message())
            .await
            .expect("timed out waiting for a response")
            .expect("stream error")
            .map(|r| r.event.expect("response carries an event"))
    }

    /// Everything until the server ends the stream.
    pub async fn drain(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some(e) = self.next(Duration::from_secs(120)).await {
            events.push(e);
        }
        events
    }

    /// Reads until `pred` matches an event; returns all events read, the match last.
    pub async fn until(&mut self, timeout: Duration, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        let mut events = Vec::new();
        loop {
            let e = self
                .next(timeout)
                .await
                .expect("stream ended before the expected event");
            let done = pred(&e);
            events.push(e);
            if done {
                return events;
            }
        }
    }
}

/// The payloads of one kind of event, in order.
macro_rules! select {
    ($events:expr, $variant:path) => {
        $events
            .iter()
            .filter_map(|e| if let $variant(x) = e { Some(x) } else { None })
            .collect()
    };
}

pub fn findings(events: &[Event]) -> Vec<&pb::SliceFinding> {
    select!(events, Event::Finding)
}

pub fn rejections(events: &[Event]) -> Vec<&pb::InstanceRejected> {
    select!(events, Event::Rejected)
}

pub fn summaries(events: &[Event]) -> Vec<&pb::StudySummary> {
    select!(events, Event::Summary)
}

pub fn accepted(events: &[Event]) -> Vec<&pb::InstanceAccepted> {
    select!(events, Event::Accepted)
}
