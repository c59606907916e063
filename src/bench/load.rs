//! `radstream bench load`: K concurrent `Analyze` streams of realistic series against a `radstream serve`
//! process, reporting slices/s, MB/s, per-slice latency (the finding's arrival at the client − the
//! server's `received_unix_us`, one machine's clock) p50/p95/p99, time-to-first-finding and
//! time-to-summary per study (from the stream's first send), server CPU ms per slice and peak RSS.
//!
//! Why the server is a child process (`radstream serve`, this very executable): a fresh process per run
//! makes its peak RSS (VmHWM) and CPU time (utime+stime) that run's own, and keeps the client's memory
//! and CPU out of them. `--addr` measures an external server instead (RSS/CPU with `--server-pid`).
//!
//! With `--peer`, the same series go through `benches/peer/pipeline.py` (pydicom + numpy +
//! onnxruntime, the same model and batch size; and raw onnxruntime on ready-made tensors) and the
//! ratios are printed.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{
    io_error,
    study::{self, Series, Syntax},
    BenchError, Result,
};
use crate::{
    client::{self, Target},
    proto::v1::{self as pb, analysis_client::AnalysisClient, analyze_response::Event},
};

/// Which model the server runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelChoice {
    /// The built-in model (64×64 lesion demo).
    Bundled,
    /// The 256×256 CNN of [`super::cnn`], built when missing.
    Realistic,
    /// A model directory (model.toml + ONNX).
    Dir(PathBuf),
}

impl std::str::FromStr for ModelChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Ok(match s {
            "bundled" => ModelChoice::Bundled,
            "realistic" => ModelChoice::Realistic,
            dir => ModelChoice::Dir(PathBuf::from(dir)),
        })
    }
}

/// What `bench load` runs.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub slices: usize,
    /// One run per entry (K concurrent streams), per syntax.
    pub streams: Vec<usize>,
    pub studies_per_stream: usize,
    pub syntaxes: Vec<Syntax>,
    pub model: ModelChoice,
    /// `--preprocess` of the child server (cpu, gpu, auto); None: its default.
    pub preprocess: Option<String>,
    /// `--max-batch` of the child server and the peer's batch; None: 16 (the service default).
    pub max_batch: Option<usize>,
    /// Real DICOM to build the series from; None: the bundled sample study.
    pub from: Option<PathBuf>,
    /// Where the series (and the realistic model) are kept for later runs and the peer.
    pub keep: Option<PathBuf>,
    /// An external server instead of a child.
    pub addr: Option<Target>,
    /// The external server's process (for its RSS and CPU).
    pub server_pid: Option<u32>,
    pub peer: bool,
    /// The executable started as `serve` (tests pass the binary under test).
    pub exe: PathBuf,
    pub max_message_bytes: usize,
}

/// Figures of one run (one syntax, K streams, one server).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub syntax: String,
    pub streams: usize,
    pub studies: usize,
    pub slices_sent: usize,
    pub findings: usize,
    /// Sum over the studies' summaries of `slices_scored`.
    pub slices_scored: usize,
    pub summaries: usize,
    pub rejected: usize,
    pub wall_s: f64,
    pub slices_per_s: f64,
    pub mb_per_s: f64,
    pub latency_ms: Percentiles,
    pub ttff_ms: Percentiles,
    pub time_to_summary_ms: Percentiles,
    /// Mean model batch the slices were scored in.
    pub mean_batch: f64,
    pub preprocess_path: String,
    pub server_cpu_ms_per_slice: Option<f64>,
    pub server_peak_rss_mib: Option<f64>,
    /// Resident memory of the server before the pushes (model loaded, idle).
    pub server_idle_rss_mib: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `values` (NaN when empty).
    pub fn of(values: &mut [f64]) -> Percentiles {
        values.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if values.is_empty() {
                return f64::NAN;
            }
            let rank = ((p / 100.0) * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Percentiles {
            p50: at(50.0),
            p95: at(95.0),
            p99: at(99.0),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// The peer's figures (`benches/peer/pipeline.py`), as it prints them.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PeerReport {
    pub syntax: String,
    pub slices: usize,
    pub batch: usize,
    pub process_s: f64,
    pub in_loop_s: f64,
    pub in_loop_slices_per_s: f64,
    pub raw_ort_slices_per_s: f64,
    pub bare_inference_ms: f64,
}

/// radstream against the peer, per syntax (radstream's run at the fewest streams).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub syntax: String,
    pub streams: usize,
    /// radstream e2e slices/s ÷ the Python pipeline's in-loop slices/s.
    pub e2e_vs_python: f64,
    /// radstream e2e slices/s ÷ raw onnxruntime slices/s on ready-made tensors.
    pub e2e_vs_raw_ort: f64,
    /// radstream's median time-to-first-finding ÷ one bare inference (batch 1, median).
    pub ttff_vs_bare_inference: f64,
}

/// Everything `bench load` measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub model: String,
    pub slices_per_study: usize,
    pub study_mb: HashMap<String, f64>,
    pub study_dir: String,
    pub runs: Vec<RunReport>,
    pub peer: Vec<PeerReport>,
    pub ratios: Vec<Ratio>,
}

fn unix_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// `/proc/<pid>/status` field in KiB (VmHWM, VmRSS).
fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// utime + stime of `pid` in seconds (`/proc/<pid>/stat` fields 14 and 15).
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the command name may hold spaces and parentheses: fields start after the last ')'
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) / ticks as f64)
}

/// A `radstream serve` child on a free loopback port with its own data directory; stopped when dropped.
struct ChildServer {
    child: Child,
    endpoint: String,
    _data: tempfile::TempDir,
}

impl ChildServer {
    fn start(exe: &Path, model_dir: Option<&Path>, opts: &LoadOptions) -> Result<ChildServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| BenchError::Server(format!("no free loopback port: {e}")))?
            .port();
        let data = tempfile::tempdir().map_err(io_error(std::env::temp_dir()))?;
        let mut command = Command::new(exe);
        command
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--data-dir")
            .arg(data.path())
            .env("RADSTREAM_LOG", "info")
            .env_remove("RADSTREAM_HTTP")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(dir) = model_dir {
            command.arg("--model-dir").arg(dir);
        }
        if let Some(p) = &opts.preprocess {
            command.args(["--preprocess", p]);
        }
        if let Some(b) = opts.max_batch {
            command.args(["--max-batch", &b.to_string()]);
        }
        let mut child = command
            .spawn()
            .map_err(|e| BenchError::Server(format!("cannot start {}: {e}", exe.display())))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| BenchError::Server("no stderr".into()))?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::result::Result<(), String>>();
        std::thread::spawn(move || {
            let mut tail: Vec<String> = Vec::new();
            let mut ready = Some(ready_tx);
            for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                if ready.is_some() && line.contains("radstream serving") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                }
                if ready.is_some() {
                    tail.push(line);
                    if tail.len() > 12 {
                        tail.remove(0);
                    }
                }
            }
            if let Some(tx) = ready {
                let _ = tx.send(Err(tail.join("\n")));
            }
        });
        let mut server = ChildServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            _data: data,
        };
        match ready_rx.recv_timeout(Duration::from_secs(180)) {
            Ok(Ok(())) => Ok(server),
            Ok(Err(tail)) => {
                let _ = server.child.wait();
                Err(BenchError::Server(format!(
                    "`radstream serve` exited before serving; its last lines:\n{tail}"
                )))
            }
            Err(_) => Err(BenchError::Server(
                "`radstream serve` did not start serving within 180 s".into(),
            )),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM (a drain), then a kill after 10 s.
    fn stop(mut self) {
        // SAFETY: a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until the gRPC health check of `target` says SERVING (the model is loaded and warm).
async fn wait_ready(target: &Target, within: Duration) -> Result<()> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match client::connect(target).await {
            Ok(channel) => {
                let mut health = HealthClient::new(channel);
                match health
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                {
                    Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => return Ok(()),
                    Ok(r) => last = format!("health status {}", r.get_ref().status),
                    Err(s) => last = s.message().to_string(),
                }
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BenchError::Server(format!(
        "{} not SERVING within {} s: {last}",
        target.endpoint,
        within.as_secs()
    )))
}

/// What one study of one stream saw.
#[derive(Debug, Default, Clone)]
struct StudySeen {
    first_send: Option<Instant>,
    first_finding: Option<Instant>,
    summary: Option<Instant>,
    findings: usize,
    slices_scored: usize,
}

#[derive(Debug, Default)]
struct StreamSeen {
    studies: HashMap<String, StudySeen>,
    latencies_ms: Vec<f64>,
    batches: Vec<u32>,
    rejected: Vec<String>,
    paths: HashMap<String, usize>,
    bytes: u64,
    sent: usize,
}

/// One stream: `copies` of `series` one after the other (each ended by EndOfStudy), then closed.
async fn push_stream(
    target: Target,
    series: Series,
    copies: Vec<u32>,
    max_message: usize,
    bar: ProgressBar,
) -> Result<StreamSeen> {
    let channel = client::connect(&target).await?;
    let mut grpc = AnalysisClient::new(channel)
        .max_encoding_message_size(max_message)
        .max_decoding_message_size(max_message);
    let firsts: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (tx, rx) = mpsc::channel::<pb::AnalyzeRequest>(8);
    let producer = {
        let firsts = firsts.clone();
        let series = series.clone();
        tokio::spawn(async move {
            let mut bytes = 0u64;
            let mut sent = 0usize;
            for copy in copies {
                let uid = series.study_uid(copy);
                for i in 0..series.len() {
                    // the copy is made per slice as it is sent: one 0.5 MiB memcpy and 5 UID patches
                    let dicom = series.slice(copy, i);
                    bytes += dicom.len() as u64;
                    let request = pb::AnalyzeRequest {
                        kind: Some(pb::analyze_request::Kind::Instance(pb::Instance {
                            dicom: dicom.into(),
                            client_ref: format!("{copy}/{i}"),
                        })),
                    };
                    if i == 0 {
                        if let Ok(mut f) = firsts.lock() {
                            f.insert(uid.clone(), Instant::now());
                        }
                    }
                    if tx.send(request).await.is_err() {
                        return (bytes, sent);
                    }
                    sent += 1;
                }
                let end = pb::AnalyzeRequest {
                    kind: Some(pb::analyze_request::Kind::EndOfStudy(pb::EndOfStudy {
                        study_instance_uid: uid,
                    })),
                };
                if tx.send(end).await.is_err() {
                    break;
                }
            }
            (bytes, sent)
        })
    };
    let mut responses = grpc
        .analyze(ReceiverStream::new(rx))
        .await
        .map_err(crate::error::Error::from)?
        .into_inner();
    let mut seen = StreamSeen::default();
    while let Some(response) = responses
        .message()
        .await
        .map_err(crate::error::Error::from)?
    {
        let now_us = unix_us();
        let now = Instant::now();
        match response.event {
            Some(Event::Finding(f)) => {
                let study = f
                    .slice
                    .as_ref()
                    .map(|s| s.study_instance_uid.clone())
                    .unwrap_or_default();
                if let Some(t) = &f.timings {
                    seen.latencies_ms
                        .push((now_us - t.received_unix_us) as f64 / 1e3);
                    seen.batches.push(t.batch_size);
                }
                *seen.paths.entry(f.preprocess_path.clone()).or_default() += 1;
                let s = seen.studies.entry(study).or_default();
                s.findings += 1;
                s.first_finding.get_or_insert(now);
                bar.inc(1);
            }
            Some(Event::Summary(summary)) => {
                let s = seen
                    .studies
                    .entry(summary.study_instance_uid.clone())
                    .or_default();
                s.summary.get_or_insert(now);
                s.slices_scored += summary.slices_scored as usize;
            }
            Some(Event::Rejected(r)) => seen
                .rejected
                .push(format!("{}: {}", r.client_ref, r.message)),
            _ => {}
        }
    }
    let (bytes, sent) = producer
        .await
        .map_err(|e| BenchError::Run(format!("the sending task: {e}")))?;
    seen.bytes = bytes;
    seen.sent = sent;
    if let Ok(firsts) = firsts.lock() {
        for (uid, at) in firsts.iter() {
            seen.studies.entry(uid.clone()).or_default().first_send = Some(*at);
        }
    }
    Ok(seen)
}

fn progress_bar(total: u64, label: String) -> ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} slices scored {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(label);
    bar
}

/// One run: K streams, each pushing `studies_per_stream` copies, against `target`.
async fn run_once(
    target: &Target,
    series: &Series,
    streams: usize,
    first_copy: u32,
    opts: &LoadOptions,
    server_pid: Option<u32>,
) -> Result<RunReport> {
    let total = (streams * opts.studies_per_stream * series.len()) as u64;
    let bar = progress_bar(total, format!("{} x{streams}", series.syntax));
    let idle_rss = server_pid.and_then(|p| proc_status_kib(p, "VmRSS"));
    let cpu_before = server_pid.and_then(proc_cpu_secs);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..streams {
        let copies: Vec<u32> = (0..opts.studies_per_stream)
            .map(|s| first_copy + (k * opts.studies_per_stream + s) as u32)
            .collect();
        tasks.spawn(push_stream(
            target.clone(),
            series.clone(),
            copies,
            opts.max_message_bytes,
            bar.clone(),
        ));
    }
    let mut all = Vec::with_capacity(streams);
    while let Some(done) = tasks.join_next().await {
        all.push(done.map_err(|e| BenchError::Run(format!("a stream task: {e}")))??);
    }
    let wall_s = started.elapsed().as_secs_f64();
    let cpu_after = server_pid.and_then(proc_cpu_secs);
    let peak = server_pid.and_then(|p| proc_status_kib(p, "VmHWM"));
    bar.finish_and_clear();

    let mut latencies = Vec::new();
    let (mut ttff, mut tts) = (Vec::new(), Vec::new());
    let mut batches = Vec::new();
    let mut paths: HashMap<String, usize> = HashMap::new();
    let (mut findings, mut scored, mut summaries, mut rejected, mut bytes, mut sent) =
        (0, 0, 0, 0, 0u64, 0);
    for s in all {
        latencies.extend(s.latencies_ms);
        batches.extend(s.batches);
        rejected += s.rejected.len();
        if let Some(first) = s.rejected.first() {
            tracing::warn!("rejected instance {first}");
        }
        bytes += s.bytes;
        sent += s.sent;
        for (k, v) in s.paths {
            *paths.entry(k).or_default() += v;
        }
        for study in s.studies.values() {
            findings += study.findings;
            scored += study.slices_scored;
            if let Some(start) = study.first_send {
                if let Some(f) = study.first_finding {
                    ttff.push(f.duration_since(start).as_secs_f64() * 1e3);
                }
                if let Some(done) = study.summary {
                    tts.push(done.duration_since(start).as_secs_f64() * 1e3);
                    summaries += 1;
                }
            }
        }
    }
    let mean_batch = if batches.is_empty() {
        f64::NAN
    } else {
        batches.iter().map(|&b| f64::from(b)).sum::<f64>() / batches.len() as f64
    };
    let mut path_list: Vec<String> = paths.into_keys().collect();
    path_list.sort();
    Ok(RunReport {
        syntax: series.syntax.to_string(),
        streams,
        studies: streams * opts.studies_per_stream,
        slices_sent: sent,
        findings,
        slices_scored: scored,
        summaries,
        rejected,
        wall_s,
        slices_per_s: findings as f64 / wall_s,
        mb_per_s: bytes as f64 / 1e6 / wall_s,
        latency_ms: Percentiles::of(&mut latencies),
        ttff_ms: Percentiles::of(&mut ttff),
        time_to_summary_ms: Percentiles::of(&mut tts),
        mean_batch,
        preprocess_path: path_list.join("+"),
        server_cpu_ms_per_slice: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) if findings > 0 => Some((b - a) * 1e3 / findings as f64),
            _ => None,
        },
        server_peak_rss_mib: peak.map(|k| k as f64 / 1024.0),
        server_idle_rss_mib: idle_rss.map(|k| k as f64 / 1024.0),
    })
}

const PEER_SCRIPT: &str = include_str!("../../benches/peer/pipeline.py");
const SPEC_SCRIPT: &str = include_str!("../../tests/oracle/spec.py");
const BUNDLED_MANIFEST: &str = include_str!("../../models/lesion-demo/1.0.0/model.toml");
const BUNDLED_ONNX: &[u8] = include_bytes!("../../models/lesion-demo/1.0.0/model.onnx");

/// Runs the peer on `series` with the model in `model_dir`.
fn run_peer(work: &Path, series: &Series, model_dir: &Path, batch: usize) -> Result<PeerReport> {
    let scripts = work.join("peer");
    std::fs::create_dir_all(&scripts).map_err(io_error(&scripts))?;
    for (name, text) in [("pipeline.py", PEER_SCRIPT), ("spec.py", SPEC_SCRIPT)] {
        let p = scripts.join(name);
        std::fs::write(&p, text).map_err(io_error(&p))?;
    }
    let python = super::python();
    let fail = |detail: String| BenchError::Python {
        what: "--peer".into(),
        python: python.clone(),
        detail,
    };
    if !python.exists() {
        return Err(fail("no such file".into()));
    }
    let out = Command::new(&python)
        .arg(scripts.join("pipeline.py"))
        .arg("--study")
        .arg(&series.dir)
        .arg("--model")
        .arg(model_dir)
        .args(["--batch", &batch.to_string(), "--json"])
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(fail(err.lines().last().unwrap_or("").to_string()));
    }
    let mut report: PeerReport = serde_json::from_slice(&out.stdout)
        .map_err(|e| BenchError::Run(format!("the peer's output: {e}")))?;
    report.syntax = series.syntax.to_string();
    Ok(report)
}

/// Runs `bench load` as `opts` says.
pub async fn run(opts: LoadOptions) -> Result<LoadReport> {
    if opts.streams.is_empty() || opts.streams.contains(&0) || opts.studies_per_stream == 0 {
        return Err(BenchError::Run(
            "--streams and --studies-per-stream must be at least 1".into(),
        ));
    }
    let temp = tempfile::tempdir().map_err(io_error(std::env::temp_dir()))?;
    let root = opts
        .keep
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let study_root = root.join(format!(
        "studies-{}",
        opts.from.as_ref().map(|_| "from").unwrap_or("sample")
    ));
    let build_root = study_root.clone();
    let (from, slices, syntaxes) = (opts.from.clone(), opts.slices, opts.syntaxes.clone());
    let series = tokio::task::spawn_blocking(move || {
        study::build(&build_root, from.as_deref(), slices, &syntaxes)
    })
    .await
    .map_err(|e| BenchError::Run(format!("building the series: {e}")))??;

    let (model_dir, model_name): (Option<PathBuf>, String) = match &opts.model {
        ModelChoice::Bundled => (None, "bundled (lesion-demo 1.0.0, 64x64)".into()),
        ModelChoice::Realistic => {
            let base = opts
                .keep
                .as_ref()
                .map(|k| k.join("models"))
                .unwrap_or_else(super::cnn::default_root);
            let dir = super::cnn::ensure(&base)?;
            (
                Some(dir),
                format!(
                    "realistic ({} {}, 256x256 CNN)",
                    super::cnn::NAME,
                    super::cnn::VERSION
                ),
            )
        }
        ModelChoice::Dir(d) => (Some(d.clone()), d.display().to_string()),
    };

    let mut runs = Vec::new();
    // distinct copies across runs: an external server keeps every study it saw
    let mut next_copy: u32 = match &opts.addr {
        Some(_) => (unix_us() as u64 % 40_000) as u32 + 1,
        None => 1,
    };
    for s in &series {
        for &k in &opts.streams {
            let copies = (k * opts.studies_per_stream) as u32;
            if next_copy + copies > study::MAX_COPIES {
                return Err(BenchError::Run(format!(
                    "more than {} studies in one bench",
                    study::MAX_COPIES
                )));
            }
            let report = match &opts.addr {
                Some(target) => {
                    wait_ready(target, Duration::from_secs(30)).await?;
                    run_once(target, s, k, next_copy, &opts, opts.server_pid).await?
                }
                None => {
                    let exe = opts.exe.clone();
                    let dir = model_dir.clone();
                    let o = opts.clone();
                    let server = tokio::task::spawn_blocking(move || {
                        ChildServer::start(&exe, dir.as_deref(), &o)
                    })
                    .await
                    .map_err(|e| BenchError::Run(format!("starting the server: {e}")))??;
                    let target = Target::from(server.endpoint.clone());
                    wait_ready(&target, Duration::from_secs(120)).await?;
                    let pid = server.pid();
                    let report = run_once(&target, s, k, next_copy, &opts, Some(pid)).await;
                    tokio::task::spawn_blocking(move || server.stop())
                        .await
                        .map_err(|e| BenchError::Run(format!("stopping the server: {e}")))?;
                    report?
                }
            };
            next_copy += copies;
            runs.push(report);
        }
    }

    let mut peer = Vec::new();
    let mut ratios = Vec::new();
    if opts.peer {
        let peer_model = match &model_dir {
            Some(d) => d.clone(),
            None => {
                let d = root.join("models/lesion-demo/1.0.0");
                std::fs::create_dir_all(&d).map_err(io_error(&d))?;
                std::fs::write(d.join("model.toml"), BUNDLED_MANIFEST)
                    .map_err(io_error(d.join("model.toml")))?;
                std::fs::write(d.join("model.onnx"), BUNDLED_ONNX)
                    .map_err(io_error(d.join("model.onnx")))?;
                d
            }
        };
        let batch = opts.max_batch.unwrap_or(16);
        for s in &series {
            let (s2, m, r) = (s.clone(), peer_model.clone(), root.clone());
            let p = tokio::task::spawn_blocking(move || run_peer(&r, &s2, &m, batch))
                .await
                .map_err(|e| BenchError::Run(format!("the peer: {e}")))??;
            if let Some(base) = runs
                .iter()
                .filter(|r| r.syntax == s.syntax.name())
                .min_by_key(|r| r.streams)
            {
                ratios.push(Ratio {
                    syntax: p.syntax.clone(),
                    streams: base.streams,
                    e2e_vs_python: base.slices_per_s / p.in_loop_slices_per_s,
                    e2e_vs_raw_ort: base.slices_per_s / p.raw_ort_slices_per_s,
                    ttff_vs_bare_inference: base.ttff_ms.p50 / p.bare_inference_ms,
                });
            }
            peer.push(p);
        }
    }
    let study_mb = series
        .iter()
        .map(|s| (s.syntax.to_string(), s.bytes() as f64 / 1e6))
        .collect();
    Ok(LoadReport {
        model: model_name,
        slices_per_study: opts.slices,
        study_mb,
        study_dir: study_root.display().to_string(),
        runs,
        peer,
        ratios,
    })
    // `temp` (the series when not kept) is removed here
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "model: {}; {} slices per study; series in {}",
            self.model, self.slices_per_study, self.study_dir
        )?;
        writeln!(
            f,
            "{:<8} {:>3} {:>7} {:>8} {:>7} {:>7} | {:>23} | {:>9} {:>9} | {:>6} {:>8} {:>8} {:>5}",
            "syntax",
            "K",
            "slices",
            "slices/s",
            "MB/s",
            "scored",
            "latency ms p50/p95/p99",
            "TTFF p50",
            "TTS p50",
            "batch",
            "cpu ms/sl",
            "peak MiB",
            "path"
        )?;
        for r in &self.runs {
            writeln!(
                f,
                "{:<8} {:>3} {:>7} {:>8.1} {:>7.1} {:>7} | {:>7.1}/{:>7.1}/{:>7.1} | {:>9.1} {:>9.1} | {:>6.1} {:>8} {:>8} {:>5}",
                r.syntax,
                r.streams,
                r.slices_sent,
                r.slices_per_s,
                r.mb_per_s,
                r.slices_scored,
                r.latency_ms.p50,
                r.latency_ms.p95,
                r.latency_ms.p99,
                r.ttff_ms.p50,
                r.time_to_summary_ms.p50,
                r.mean_batch,
                opt(r.server_cpu_ms_per_slice, 2),
                opt(r.server_peak_rss_mib, 1),
                r.preprocess_path
            )?;
        }
        if !self.peer.is_empty() {
            writeln!(
                f,
                "\npeer (Python: pydicom + numpy + onnxruntime, batch {}):",
                self.peer[0].batch
            )?;
            writeln!(
                f,
                "{:<8} {:>14} {:>14} {:>12} {:>12} | {:>10} {:>10} {:>10}",
                "syntax",
                "py in-loop sl/s",
                "raw ORT sl/s",
                "bare inf ms",
                "py process s",
                "e2e/py",
                "e2e/rawORT",
                "TTFF/bare"
            )?;
            for p in &self.peer {
                let r = self.ratios.iter().find(|r| r.syntax == p.syntax);
                writeln!(
                    f,
                    "{:<8} {:>14.1} {:>14.1} {:>12.2} {:>12.2} | {:>10} {:>10} {:>10}",
                    p.syntax,
                    p.in_loop_slices_per_s,
                    p.raw_ort_slices_per_s,
                    p.bare_inference_ms,
                    p.process_s,
                    opt(r.map(|r| r.e2e_vs_python), 2),
                    opt(r.map(|r| r.e2e_vs_raw_ort), 2),
                    opt(r.map(|r| r.ttff_vs_bare_inference), 1),
                )?;
            }
            writeln!(f, "(ratios use radstream's run with the fewest streams)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank_and_ordered() {
        let mut v: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (100.0, 190.0, 198.0, 200.0));
        assert!(Percentiles::of(&mut []).p50.is_nan());
    }

    #[test]
    fn own_process_figures_are_read_from_proc() {
        let pid = std::process::id();
        assert!(proc_status_kib(pid, "VmHWM").is_some_and(|k| k > 0));
        let before = proc_cpu_secs(pid).expect("cpu time");
        let mut x = 0u64;
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = proc_cpu_secs(pid).expect("cpu time");
        assert!(after > before, "{before} -> {after}");
    }
}
