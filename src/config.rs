//! Service configuration: built-in defaults, overridden by a TOML file, then by environment variables and
//! flags (clap gives every flag an `RADSTREAM_*` environment twin, see `main.rs`). One struct, so every
//! knob is documented in one place and printed at start-up.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::decode::Limits;

/// Which preprocessing implementation the service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PreprocessBackend {
    /// The WGSL shaders when a wgpu adapter exists, else the CPU reference (logged at start).
    #[default]
    Auto,
    /// The WGSL shaders; start-up fails when no adapter exists.
    Gpu,
    /// The CPU reference implementation.
    Cpu,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub listen: SocketAddr,
    /// Model directory holding `model.toml` and the ONNX file; unset: the default model built into the binary.
    pub model_dir: Option<PathBuf>,
    /// Path of `libonnxruntime.so`; unset: `$RADSTREAM_CACHE/onnxruntime/libonnxruntime.so.1.31.1`.
    pub ort_library: Option<PathBuf>,
    pub preprocess: PreprocessBackend,
    pub limits: LimitsConfig,
    pub study: StudyConfig,
    pub batching: BatchingConfig,
    pub inference: InferenceConfig,
    pub shutdown: ShutdownConfig,
    pub health: HealthConfig,
    pub store: StoreConfig,
    pub http: HttpConfig,
    pub watch: WatchConfig,
    pub webhook: crate::results::webhook::WebhookConfig,
    pub models: ModelsConfig,
    /// TLS for both listeners (see `security`).
    pub tls: crate::security::TlsConfig,
    /// Bearer tokens with roles.
    pub auth: crate::security::AuthConfig,
    /// The audit log: who pushed, watched or changed what.
    pub audit: crate::security::AuditConfig,
}

/// The model repository: `repository/<name>/<version>/{model.toml, model.onnx}`. Every version in it is
/// loaded at start and the newest ready version of each model activated; the directory is watched so
/// that a version dropped in later is loaded (and, with `activate_new`, activated) without a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelsConfig {
    /// Unset: `model_dir` (one version), else the model built into the binary.
    pub repository: Option<PathBuf>,
    /// Watch the repository for new versions.
    pub watch: bool,
    /// A new version found by the watcher becomes active once it has loaded (validated and dry-run);
    /// off: it is loaded and waits for `radstream models activate`.
    pub activate_new: bool,
    /// How long the watcher waits for a new version's files to stop changing before it loads them.
    pub settle_ms: u64,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        Self {
            repository: None,
            watch: true,
            activate_new: true,
            settle_ms: 1000,
        }
    }
}

/// Where the service keeps what must outlive a stream and a restart: the event log of every study.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Data directory (the event log `events.sqlite`, the webhook's delivery log). Unset: for
    /// `radstream serve`, `$XDG_DATA_HOME/radstream` (else `~/.local/share/radstream`); for a server
    /// started in-process (`radstream demo`, tests), a temporary directory removed when it stops.
    pub data_dir: Option<PathBuf>,
    /// Studies with no event for this many days are removed from the log (checked hourly).
    pub retention_days: f64,
}

/// The live web view and its JSON API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address; unset: no HTTP server.
    pub listen: Option<SocketAddr>,
}

/// Live subscriptions (`Watch`, the web view's event stream).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WatchConfig {
    /// Events buffered per subscriber; a subscriber further behind is told what it missed.
    pub subscriber_buffer: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: None,
            retention_days: 30.0,
        }
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            subscriber_buffer: crate::results::hub::DEFAULT_SUBSCRIBER_BUFFER,
        }
    }
}

/// How the service stops on SIGTERM/SIGINT (see `shutdown.rs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long a drain may take (answering accepted slices, sending summaries) before what is left is
    /// cancelled. Keep it below the orchestrator's grace period (Kubernetes 30 s, Docker 10 s by
    /// default), or SIGKILL ends the process before the cancelled streams hear why.
    pub drain_deadline_secs: f64,
}

/// When gRPC health reports NOT_SERVING besides a stopped engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// A preprocess or model call running longer than this marks the engine stalled (NOT_SERVING) until
    /// it returns.
    pub stall_timeout_secs: f64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_deadline_secs: 20.0,
        }
    }
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            stall_timeout_secs: 30.0,
        }
    }
}

/// Which ONNX Runtime execution provider scores the model. CPU is the default so that a machine with
/// no GPU (and no NVIDIA libraries) builds, serves and passes every test; CUDA is asked for, never
/// assumed, because it needs the GPU build of ONNX Runtime that `scripts/setup.sh --cuda` provisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProvider {
    /// ONNX Runtime's CPU provider.
    #[default]
    Cpu,
    /// ONNX Runtime's CUDA provider; loading the model fails, saying what is missing, when it cannot
    /// be used.
    Cuda,
    /// CUDA when it can be used, else the CPU provider with one warning saying why.
    Auto,
}

impl std::fmt::Display for ExecutionProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Auto => "auto",
        })
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InferenceConfig {
    /// ONNX Runtime intra-op threads; 0 = one per core.
    pub intra_threads: usize,
    /// Let ORT's threads spin-wait between runs (lower latency on a host with cores to spare; on a small
    /// host they take the cores decoding needs).
    pub spinning: bool,
    /// `"cpu"` (default), `"cuda"` or `"auto"` (see [`ExecutionProvider`]).
    pub provider: ExecutionProvider,
    /// The CUDA device (ordinal, as `nvidia-smi` numbers them) the CUDA provider runs on.
    pub cuda_device: u16,
}

impl InferenceConfig {
    /// The thread count to give ORT.
    pub fn threads(&self) -> usize {
        match self.intra_threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted instance, in bytes.
    pub max_instance_bytes: usize,
    pub max_rows: u32,
    pub max_cols: u32,
    pub max_frames: u32,
    /// Largest decoded pixel buffer per instance (f32 samples), in bytes.
    pub max_decoded_bytes: usize,
    /// Deepest accepted nesting of sequences in an instance; deeper is rejected (MALFORMED). Real data
    /// uses a handful of levels; the limit keeps the DICOM parser's recursion shallow.
    pub max_sequence_depth: u32,
    /// Most elements (items and delimiters included) in one data set; more is rejected (MALFORMED).
    pub max_elements: u32,
    /// Instances being decoded or scored per stream before the stream stops reading (backpressure).
    pub max_in_flight_per_stream: usize,
    /// Decoded pixels (f32) held between decode and scoring, across all streams. An instance over it is
    /// not refused (`max_decoded_bytes` does that): it waits for the whole budget and runs alone.
    /// 64 MiB: four batches of 16 CT slices of 512², enough to keep the engine busy.
    pub max_decoded_bytes_in_flight: usize,
    /// Received Part-10 bytes not yet decoded, across all streams; when it is used up every stream stops
    /// reading until decodes finish. A message over it waits for the whole budget. 16 MiB: two CT
    /// slices waiting per decode slot on a 16-core host.
    pub max_request_bytes_in_flight: usize,
    /// Concurrent `Analyze` streams in the whole service; one more is refused with RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Concurrent HTTP/2 streams per connection (the SETTINGS_MAX_CONCURRENT_STREAMS the server
    /// advertises); a client opening more waits.
    pub max_streams_per_connection: u32,
    /// Longest `client_ref` accepted; an instance with a longer one is rejected (TOO_LARGE) unread.
    pub max_client_ref_bytes: usize,
    /// HTTP/2 receive window per stream: what a client may send before the server reads it, held by
    /// the server per stream. The HTTP/2 default, 65,535, keeps a LAN link full (1 Gbit/s x 0.5 ms);
    /// raise it for long-RTT links.
    pub stream_window_bytes: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StudyConfig {
    /// A study with no new instance for this long (and nothing left to score) is complete (Orthanc's
    /// StableAge).
    pub idle_timeout_secs: f64,
    /// A completed study stays in memory this long, to recognise re-sent and late instances cheaply;
    /// after it, a late instance rebuilds the study from the event log.
    pub retain_completed_secs: f64,
    /// At most this many completed studies stay in memory (the oldest go first).
    pub max_retained_studies: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchingConfig {
    /// Most slices scored in one model call.
    pub max_batch: usize,
    /// How long the first slice of a batch waits for company.
    pub max_wait_ms: u64,
    /// Slices waiting for the scoring stage, across all streams.
    pub queue_depth: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            model_dir: None,
            ort_library: None,
            preprocess: PreprocessBackend::Auto,
            limits: LimitsConfig::default(),
            study: StudyConfig::default(),
            batching: BatchingConfig::default(),
            inference: InferenceConfig::default(),
            shutdown: ShutdownConfig::default(),
            health: HealthConfig::default(),
            store: StoreConfig::default(),
            http: HttpConfig::default(),
            watch: WatchConfig::default(),
            webhook: Default::default(),
            models: ModelsConfig::default(),
            tls: Default::default(),
            auth: Default::default(),
            audit: Default::default(),
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = Limits::default();
        Self {
            max_instance_bytes: d.max_instance_bytes,
            max_rows: d.max_rows,
            max_cols: d.max_cols,
            max_frames: d.max_frames,
            max_decoded_bytes: d.max_decoded_bytes,
            max_sequence_depth: d.max_sequence_depth,
            max_elements: d.max_elements,
            max_in_flight_per_stream: 32,
            max_decoded_bytes_in_flight: 64 << 20,
            max_request_bytes_in_flight: 16 << 20,
            max_streams: 256,
            max_streams_per_connection: 64,
            max_client_ref_bytes: 256,
            stream_window_bytes: 65_535,
        }
    }
}

impl Default for StudyConfig {
    fn default() -> Self {
        Self {
            idle_timeout_secs: 10.0,
            retain_completed_secs: 3600.0,
            max_retained_studies: 1000,
        }
    }
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch: 16,
            max_wait_ms: 5,
            queue_depth: 256,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads a TOML file; keys left out keep their defaults.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Checks values that would otherwise fail later and less clearly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.batching.max_batch == 0 {
            return bad("batching.max_batch must be at least 1");
        }
        if self.batching.queue_depth == 0 {
            return bad("batching.queue_depth must be at least 1");
        }
        if self.limits.max_in_flight_per_stream == 0 {
            return bad("limits.max_in_flight_per_stream must be at least 1");
        }
        if !(self.study.retain_completed_secs.is_finite()
            && self.study.retain_completed_secs >= 0.0)
        {
            return bad("study.retain_completed_secs must be a number of seconds >= 0");
        }
        if !(self.store.retention_days.is_finite() && self.store.retention_days > 0.0) {
            return bad("store.retention_days must be a positive number of days");
        }
        if self.watch.subscriber_buffer < 2 {
            return bad("watch.subscriber_buffer must be at least 2");
        }
        if !(self.study.idle_timeout_secs.is_finite() && self.study.idle_timeout_secs > 0.0) {
            return bad("study.idle_timeout_secs must be a positive number of seconds");
        }
        if self.limits.max_instance_bytes == 0 {
            return bad("limits.max_instance_bytes must be positive");
        }
        if self.limits.max_sequence_depth == 0 {
            return bad("limits.max_sequence_depth must be at least 1");
        }
        if self.limits.max_elements == 0 {
            return bad("limits.max_elements must be at least 1");
        }
        if self.limits.max_decoded_bytes_in_flight == 0
            || self.limits.max_request_bytes_in_flight == 0
        {
            return bad("limits.max_decoded_bytes_in_flight and limits.max_request_bytes_in_flight must be positive");
        }
        // HTTP/2 (RFC 9113 6.5.2): a window below the default is legal, above 2^31-1 is not.
        if !(1024..=(i32::MAX as u32)).contains(&self.limits.stream_window_bytes) {
            return bad("limits.stream_window_bytes must be between 1024 and 2147483647");
        }
        if self.limits.max_streams == 0 || self.limits.max_streams_per_connection == 0 {
            return bad(
                "limits.max_streams and limits.max_streams_per_connection must be at least 1",
            );
        }
        if !(self.shutdown.drain_deadline_secs.is_finite()
            && self.shutdown.drain_deadline_secs >= 0.0)
        {
            return bad("shutdown.drain_deadline_secs must be a number of seconds, 0 or more");
        }
        if !(self.health.stall_timeout_secs.is_finite() && self.health.stall_timeout_secs > 0.0) {
            return bad("health.stall_timeout_secs must be a positive number of seconds");
        }
        crate::security::check_config(self).map_err(ConfigError::Invalid)?;
        Ok(())
    }

    pub fn decode_limits(&self) -> Limits {
        Limits {
            max_instance_bytes: self.limits.max_instance_bytes,
            max_rows: self.limits.max_rows,
            max_cols: self.limits.max_cols,
            max_frames: self.limits.max_frames,
            max_decoded_bytes: self.limits.max_decoded_bytes,
            max_sequence_depth: self.limits.max_sequence_depth,
            max_elements: self.limits.max_elements,
        }
    }

    /// The largest gRPC message: `max_instance_bytes` plus 1 MiB of headroom, so an instance just over
    /// the limit reaches the decoder and is rejected by name instead of failing the whole stream at the
    /// transport. Clients use the same figure.
    pub fn max_message_bytes(&self) -> usize {
        self.limits.max_instance_bytes.saturating_add(1 << 20)
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.study.idle_timeout_secs)
    }

    pub fn drain_deadline(&self) -> Duration {
        Duration::from_secs_f64(self.shutdown.drain_deadline_secs)
    }

    /// How the study registry completes and keeps studies.
    pub fn registry(&self) -> crate::study::RegistryConfig {
        crate::study::RegistryConfig {
            idle_timeout: self.idle_timeout(),
            retain_completed: Duration::from_secs_f64(self.study.retain_completed_secs),
            max_retained: self.study.max_retained_studies,
        }
    }

    /// The default data directory of `radstream serve` (see [`StoreConfig::data_dir`]).
    pub fn default_data_dir() -> PathBuf {
        let base = std::env::var_os("XDG_DATA_HOME")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("share"))
            })
            .unwrap_or_else(|| PathBuf::from("."));
        base.join("radstream")
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_secs_f64(self.health.stall_timeout_secs)
    }

    /// Where the set-up scripts put downloaded runtime files (`RADSTREAM_CACHE`, else `~/.cache/radstream`).
    pub fn cache_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("RADSTREAM_CACHE") {
            return PathBuf::from(dir);
        }
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(".cache"));
        base.join("radstream")
    }

    /// The ONNX Runtime library to load: configured path, `RADSTREAM_ORT_LIB`, else the set-up's cache.
    pub fn ort_library_path(&self) -> PathBuf {
        self.ort_library
            .clone()
            .or_else(|| std::env::var_os("RADSTREAM_ORT_LIB").map(PathBuf::from))
            .unwrap_or_else(|| {
                Self::cache_dir()
                    .join("onnxruntime")
                    .join("libonnxruntime.so.1.31.1")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_only_what_it_names() {
        let cfg: Config = toml::from_str(
            "listen = \"0.0.0.0:6000\"\n[batching]\nmax_batch = 4\n[study]\nidle_timeout_secs = 2.5\n[inference]\nintra_threads = 1\n\
             [tls]\nallow_plaintext = true\n[auth]\nallow_anonymous = true\n",
        )
        .expect("valid toml");
        assert_eq!(cfg.listen.port(), 6000);
        assert_eq!(cfg.batching.max_batch, 4);
        assert_eq!(
            cfg.batching.max_wait_ms,
            BatchingConfig::default().max_wait_ms
        );
        assert_eq!(cfg.idle_timeout(), Duration::from_millis(2500));
        assert_eq!(cfg.inference.threads(), 1);
        assert!(!cfg.inference.spinning);
        assert!(
            Config::default().inference.threads() >= 1,
            "0 means one per core"
        );
        cfg.validate().expect("valid");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        let mut cfg = Config::default();
        cfg.batching.max_batch = 0;
        let err = cfg.validate().expect_err("zero batch refused").to_string();
        assert!(err.contains("max_batch"), "{err}");
        let mut cfg = Config::default();
        cfg.shutdown.drain_deadline_secs = f64::NAN;
        let err = cfg
            .validate()
            .expect_err("NaN deadline refused")
            .to_string();
        assert!(err.contains("drain_deadline_secs"), "{err}");
        let mut cfg = Config::default();
        cfg.health.stall_timeout_secs = 0.0;
        let err = cfg
            .validate()
            .expect_err("zero stall timeout refused")
            .to_string();
        assert!(err.contains("stall_timeout_secs"), "{err}");
    }

    #[test]
    fn the_execution_provider_is_cpu_unless_asked_and_unknown_ones_are_refused_by_name() {
        let cfg = Config::default();
        assert_eq!(cfg.inference.provider, ExecutionProvider::Cpu);
        assert_eq!(cfg.inference.cuda_device, 0);
        for (text, want) in [
            ("cpu", ExecutionProvider::Cpu),
            ("cuda", ExecutionProvider::Cuda),
            ("auto", ExecutionProvider::Auto),
        ] {
            let cfg: Config = toml::from_str(&format!(
                "[inference]\nprovider = \"{text}\"\ncuda_device = 1\n"
            ))
            .expect("valid provider");
            assert_eq!(cfg.inference.provider, want);
            assert_eq!(cfg.inference.provider.to_string(), text);
            assert_eq!(cfg.inference.cuda_device, 1);
        }
        for bad in ["\"tensorrt\"", "\"CUDA\"", "1"] {
            let err = toml::from_str::<Config>(&format!("[inference]\nprovider = {bad}\n"))
                .expect_err(bad)
                .to_string();
            assert!(err.contains("provider"), "{bad}: {err}");
            if bad.starts_with('"') {
                assert!(
                    err.contains("`cpu`, `cuda`, `auto`"),
                    "names the choices: {err}"
                );
            }
        }
        let err = toml::from_str::<Config>("[inference]\ncuda_device = -1\n")
            .expect_err("negative device")
            .to_string();
        assert!(err.contains("cuda_device"), "{err}");
    }

    #[test]
    fn stream_and_memory_limits_are_read_and_checked() {
        let cfg: Config = toml::from_str(
            "[limits]\nmax_streams = 8\nmax_streams_per_connection = 2\nmax_client_ref_bytes = 16\n\
             max_decoded_bytes_in_flight = 1048576\nmax_request_bytes_in_flight = 524288\n\
             stream_window_bytes = 131072\n",
        )
        .expect("valid toml");
        assert_eq!(cfg.limits.max_streams, 8);
        assert_eq!(cfg.limits.max_streams_per_connection, 2);
        assert_eq!(cfg.limits.max_client_ref_bytes, 16);
        assert_eq!(cfg.limits.max_decoded_bytes_in_flight, 1 << 20);
        assert_eq!(cfg.limits.max_request_bytes_in_flight, 1 << 19);
        assert_eq!(cfg.limits.stream_window_bytes, 128 << 10);
        cfg.validate().expect("valid");
        for (name, bad) in [
            ("max_streams", {
                let mut c = Config::default();
                c.limits.max_streams = 0;
                c
            }),
            ("max_decoded_bytes_in_flight", {
                let mut c = Config::default();
                c.limits.max_decoded_bytes_in_flight = 0;
                c
            }),
            ("stream_window_bytes", {
                let mut c = Config::default();
                c.limits.stream_window_bytes = u32::MAX;
                c
            }),
        ] {
            let err = bad.validate().expect_err(name).to_string();
            assert!(err.contains(name), "{err}");
        }
    }
}
