//! Service configuration: one struct, so every knob is documented in one place and printed at start-up.
//!
//! Layering (lowest first), done by figment rather than by hand so that every value keeps where it came
//! from — `radstream config` prints it, and an error names the file or variable to fix:
//! 1. built-in defaults (the `Default` impls below);
//! 2. the TOML file (`--config` / `RADSTREAM_CONFIG`);
//! 3. the environment: every setting `a.b` has the twin `RADSTREAM_A__B` (upper case, `__` between
//!    levels: `RADSTREAM_LIMITS__MAX_FRAMES=8`, `RADSTREAM_LISTEN=0.0.0.0:50051`), derived from the key,
//!    so a new setting has its twin without anyone writing it. The older short names of the service flags
//!    (`RADSTREAM_MAX_BATCH`, [`ENV_ALIASES`]) still work; the nested name wins when both are set;
//! 4. the service flags given on the command line (`main.rs` passes only those given).
//!
//! Unknown keys are errors in the file and in the environment alike, so a typo cannot silently leave a
//! default in force; `RADSTREAM_*` variables that are not settings ([`ENV_NOT_SETTINGS`]) are skipped.

use std::{
    ffi::OsString,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    value::{Dict, Map, Value},
    Figment, Metadata, Profile, Provider,
};
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
    /// Largest decoded pixel buffer per instance (stored samples), in bytes.
    pub max_decoded_bytes: usize,
    /// Deepest accepted nesting of sequences in an instance; deeper is rejected (MALFORMED). Real data
    /// uses a handful of levels; the limit keeps the DICOM parser's recursion shallow.
    pub max_sequence_depth: u32,
    /// Most elements (items and delimiters included) in one data set; more is rejected (MALFORMED).
    pub max_elements: u32,
    /// Instances being decoded or scored per stream before the stream stops reading (backpressure).
    pub max_in_flight_per_stream: usize,
    /// Decoded pixels (stored samples) held between decode and scoring, across all streams. An instance
    /// over it is not refused (`max_decoded_bytes` does that): it waits for the whole budget and runs
    /// alone. 32 MiB: four batches of 16 CT slices of 512² at 2 bytes a sample, enough to keep the engine
    /// busy.
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
    /// the server per stream. 256 KiB: a 0.5 MB CT slice is 2 windows instead of 8 of the HTTP/2
    /// default (65,535, enough to keep a LAN link full), and each window update is a wake-up of both
    /// peers. Measured with `radstream bench load` (240-slice 512² series, 2 cores, one session):
    /// one stream 729-778 -> 909-1081 slices/s, server CPU 1.37-1.50 -> 1.12-1.29 ms per slice; peak
    /// RSS with 32 streams +14-24 MiB in two runs (`max_streams` × this at most). Raise it for long-RTT
    /// links.
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
    /// How long the first slice of a batch waits for company while the model is busy.
    pub max_wait_ms: u64,
    /// Slices waiting for the scoring stage, across all streams.
    pub queue_depth: usize,
    /// When the model has nothing to do, what is queued goes to it at once instead of waiting
    /// `max_wait_ms` for company: the first slice of a study is scored in about one inference, and
    /// batches still form under load (while the model is busy, slices gather).
    pub dispatch_when_idle: bool,
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
            max_decoded_bytes_in_flight: 32 << 20,
            max_request_bytes_in_flight: 16 << 20,
            max_streams: 256,
            max_streams_per_connection: 64,
            max_client_ref_bytes: 256,
            stream_window_bytes: 256 << 10,
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
            dispatch_when_idle: true,
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
    /// A value of one layer is refused: `origin` is the file, `env RADSTREAM_...` or `flag --...`.
    #[error("invalid configuration: {origin}: `{key}`: {detail}")]
    Setting {
        key: String,
        origin: String,
        detail: String,
    },
}

/// The environment's prefix: `RADSTREAM_A__B` sets `a.b`.
pub const ENV_PREFIX: &str = "RADSTREAM_";

/// `RADSTREAM_*` variables that are not settings (logging, the client commands, test and set-up
/// tools, the configuration file itself): skipped by the environment layer, so they are not refused as
/// unknown settings. `RADSTREAM_ORT_LIB` is read where the library is loaded
/// ([`Config::ort_library_path`]), below a configured `ort_library`.
pub const ENV_NOT_SETTINGS: &[&str] = &[
    "RADSTREAM_CONFIG",
    "RADSTREAM_LOG",
    "RADSTREAM_LOG_FORMAT",
    "RADSTREAM_ORT_LIB",
    "RADSTREAM_CACHE",
    "RADSTREAM_PYTHON",
    "RADSTREAM_ENDPOINT",
    "RADSTREAM_TOKEN",
    "RADSTREAM_TOKEN_FILE",
    "RADSTREAM_CA",
    "RADSTREAM_CERT",
    "RADSTREAM_KEY",
    "RADSTREAM_BIN",
    "RADSTREAM_CHROMIUM",
    "RADSTREAM_FUZZ_IGNORE_CAUGHT_PANICS",
];

/// The short environment names the service flags had before every setting had its nested twin: kept
/// working, below the nested name of the same setting.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("RADSTREAM_MODELS", "models.repository"),
    ("RADSTREAM_PROVIDER", "inference.provider"),
    ("RADSTREAM_IDLE_TIMEOUT_SECS", "study.idle_timeout_secs"),
    ("RADSTREAM_MAX_BATCH", "batching.max_batch"),
    ("RADSTREAM_MAX_INSTANCE_BYTES", "limits.max_instance_bytes"),
    (
        "RADSTREAM_DRAIN_DEADLINE_SECS",
        "shutdown.drain_deadline_secs",
    ),
    ("RADSTREAM_DATA_DIR", "store.data_dir"),
    ("RADSTREAM_HTTP", "http.listen"),
    ("RADSTREAM_WEBHOOK_URL", "webhook.url"),
];

/// The environment twin of a setting: `limits.max_frames` -> `RADSTREAM_LIMITS__MAX_FRAMES`.
pub fn env_name(key: &str) -> String {
    format!(
        "{ENV_PREFIX}{}",
        key.to_ascii_uppercase().replace('.', "__")
    )
}

/// One value given on the command line: the flag's name (for `radstream config` and errors), the
/// setting it sets, its value.
#[derive(Debug, Clone)]
pub struct FlagSetting {
    flag: String,
    key: String,
    value: Value,
}

impl FlagSetting {
    pub fn new(flag: &str, key: &str, value: impl Serialize) -> Result<Self, ConfigError> {
        let value = Value::serialize(value).map_err(|e| ConfigError::Setting {
            key: key.to_string(),
            origin: format!("flag {flag}"),
            detail: e.to_string(),
        })?;
        Ok(Self {
            flag: flag.to_string(),
            key: key.to_string(),
            value,
        })
    }
}

/// One provider of values: its origin (what `radstream config` prints as the source) and its values.
#[derive(Clone)]
struct Layer {
    origin: String,
    data: Dict,
}

impl Layer {
    /// `value` at the dotted `key`.
    fn one(origin: String, key: &str, value: Value) -> Self {
        let data = figment::util::nest(key, value)
            .into_dict()
            .unwrap_or_default();
        Self { origin, data }
    }

    /// The layer alone must make a valid `Config` (the rest from defaults): so an unknown key or a
    /// value of the wrong type is reported against the layer that holds it, not wherever figment's
    /// merged tables happen to be tagged.
    fn check(&self) -> Result<(), ConfigError> {
        Figment::from(self.clone())
            .extract::<Config>()
            .map(drop)
            .map_err(|e| setting_error(&self.origin, e))
    }
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        Metadata::named(self.origin.clone())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.data.clone()))
    }
}

/// A figment error as the setting it is about, where that came from, and what is wrong.
fn setting_error(origin: &str, e: figment::Error) -> ConfigError {
    let mut path = e.path.clone();
    let detail = match &e.kind {
        figment::error::Kind::UnknownField(field, expected) => {
            // figment's path ends at the unknown key; serde's alone would end at its table.
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            format!("unknown setting (known here: {})", expected.join(", "))
        }
        kind => kind.to_string(),
    };
    let origin = e
        .metadata
        .as_ref()
        .map(|m| m.name.to_string())
        .unwrap_or_else(|| origin.to_string());
    ConfigError::Setting {
        key: path.join("."),
        origin,
        detail,
    }
}

/// The environment layer: one [`Layer`] per `RADSTREAM_*` variable (so each value names its variable),
/// aliases first so that the nested name wins.
fn env_layers(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Vec<Layer>, ConfigError> {
    let mut aliased = Vec::new();
    let mut nested = Vec::new();
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) || ENV_NOT_SETTINGS.contains(&name) {
            continue;
        }
        let origin = format!("env {name}");
        let value = value.into_string().map_err(|_| ConfigError::Setting {
            key: name.to_string(),
            origin: origin.clone(),
            detail: "the value is not UTF-8".into(),
        })?;
        let value: Value = match value.parse() {
            Ok(v) => v,
            Err(never) => match never {},
        };
        match ENV_ALIASES.iter().find(|(alias, _)| *alias == name) {
            Some((_, key)) => aliased.push(Layer::one(origin, key, value)),
            None => {
                let key = name[ENV_PREFIX.len()..]
                    .to_ascii_lowercase()
                    .replace("__", ".");
                if key.is_empty() || key.split('.').any(str::is_empty) {
                    return Err(ConfigError::Setting {
                        key,
                        origin,
                        detail: "not a setting's name".into(),
                    });
                }
                nested.push((name.to_string(), Layer::one(origin, &key, value)));
            }
        }
    }
    aliased.sort_by(|a, b| a.origin.cmp(&b.origin));
    nested.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(aliased
        .into_iter()
        .chain(nested.into_iter().map(|(_, l)| l))
        .collect())
}

/// The effective configuration and where each of its values came from.
pub struct Layered {
    pub config: Config,
    figment: Figment,
}

/// One setting of the effective configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// Dotted key: `limits.max_frames`.
    pub key: String,
    /// Its value (JSON: `null` when unset).
    pub value: serde_json::Value,
    /// `default`, `file PATH`, `env RADSTREAM_...` or `flag --...`.
    pub source: String,
}

impl Layered {
    /// Every setting, in the order of the struct (top-level values first, then each table).
    pub fn settings(&self) -> Vec<Setting> {
        let mut out = Vec::new();
        let json = serde_json::to_value(&self.config).unwrap_or_default();
        self.walk("", &json, &mut out);
        out
    }

    fn walk(&self, prefix: &str, value: &serde_json::Value, out: &mut Vec<Setting>) {
        let Some(table) = value.as_object() else {
            return;
        };
        let key_of = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}.{k}")
            }
        };
        for (k, v) in table.iter().filter(|(_, v)| !v.is_object()) {
            let key = key_of(k);
            let source = self
                .figment
                .find_metadata(&key)
                .map(|m| m.name.to_string())
                .unwrap_or_else(|| "default".into());
            out.push(Setting {
                key,
                value: v.clone(),
                source,
            });
        }
        for (k, v) in table.iter().filter(|(_, v)| v.is_object()) {
            self.walk(&key_of(k), v, out);
        }
    }

    /// The effective configuration as TOML, each value followed by where it came from; an unset value
    /// is a comment.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let mut table = String::new();
        for s in self.settings() {
            let (section, name) = match s.key.rsplit_once('.') {
                Some((section, name)) => (section, name),
                None => ("", s.key.as_str()),
            };
            if section != table {
                out.push_str(&format!("\n[{section}]\n"));
                table = section.to_string();
            }
            // JSON scalars are valid TOML values (strings: basic strings with JSON's escapes).
            match &s.value {
                serde_json::Value::Null => {
                    out.push_str(&format!("# {name} unset  # {}\n", s.source))
                }
                v => out.push_str(&format!("{name} = {v}  # {}\n", s.source)),
            }
        }
        out
    }

    /// `{"config": {...}, "sources": {"limits.max_frames": "env RADSTREAM_LIMITS__MAX_FRAMES", ...}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let sources: serde_json::Map<String, serde_json::Value> = self
            .settings()
            .into_iter()
            .map(|s| (s.key, serde_json::Value::String(s.source)))
            .collect();
        serde_json::json!({
            "config": serde_json::to_value(&self.config).unwrap_or_default(),
            "sources": sources,
        })
    }
}

impl Config {
    /// Defaults, then `file`, then the process environment, then `flags` (see the module docs). Not
    /// validated: call [`Config::validate`].
    pub fn load(file: Option<&Path>, flags: Vec<FlagSetting>) -> Result<Layered, ConfigError> {
        Self::load_from(file, std::env::vars_os(), flags)
    }

    /// [`Config::load`] with the environment given.
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
        flags: Vec<FlagSetting>,
    ) -> Result<Layered, ConfigError> {
        let defaults = Value::serialize(Config::default())
            .ok()
            .and_then(Value::into_dict)
            .ok_or_else(|| ConfigError::Invalid("the defaults do not serialize".into()))?;
        let mut layers = vec![Layer {
            origin: "default".into(),
            data: defaults,
        }];
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let data: Dict = toml::from_str(&text).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
            layers.push(Layer {
                origin: format!("file {}", path.display()),
                data,
            });
        }
        layers.extend(env_layers(env)?);
        layers.extend(
            flags
                .into_iter()
                .map(|f| Layer::one(format!("flag {}", f.flag), &f.key, f.value)),
        );
        let mut figment = Figment::new();
        for layer in layers {
            layer.check()?;
            figment = figment.merge(layer);
        }
        let config = figment
            .extract::<Config>()
            .map_err(|e| setting_error("the merged configuration", e))?;
        Ok(Layered { config, figment })
    }

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

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    fn source(layered: &Layered, key: &str) -> String {
        layered
            .settings()
            .into_iter()
            .find(|s| s.key == key)
            .map(|s| s.source)
            .unwrap_or_else(|| panic!("no setting {key}"))
    }

    #[test]
    fn layers_apply_in_order_and_remember_where_each_value_came_from() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "[batching]\nmax_batch = 2\nmax_wait_ms = 7\nqueue_depth = 9\n",
        )
        .expect("write");
        let layered = Config::load_from(
            Some(&file),
            env(&[
                ("RADSTREAM_BATCHING__MAX_BATCH", "5"),
                ("RADSTREAM_BATCHING__QUEUE_DEPTH", "10"),
                ("RADSTREAM_MAX_INSTANCE_BYTES", "1"),
                ("RADSTREAM_LIMITS__MAX_INSTANCE_BYTES", "2"),
                ("RADSTREAM_ORT_LIB", "/not/a/setting"),
                ("RADSTREAM_LOG", "debug"),
                ("UNRELATED", "x"),
            ]),
            vec![FlagSetting::new("--max-batch", "batching.max_batch", 6usize).expect("flag")],
        )
        .expect("loads");
        let c = &layered.config;
        assert_eq!(c.batching.max_batch, 6);
        assert_eq!(c.batching.queue_depth, 10);
        assert_eq!(c.batching.max_wait_ms, 7);
        assert_eq!(
            c.limits.max_instance_bytes, 2,
            "the nested name wins over the short one"
        );
        assert_eq!(c.ort_library, None);
        assert_eq!(source(&layered, "batching.max_batch"), "flag --max-batch");
        assert_eq!(
            source(&layered, "batching.queue_depth"),
            "env RADSTREAM_BATCHING__QUEUE_DEPTH"
        );
        assert_eq!(
            source(&layered, "batching.max_wait_ms"),
            format!("file {}", file.display())
        );
        assert_eq!(source(&layered, "limits.max_frames"), "default");
        assert_eq!(source(&layered, "tls.cert"), "default");
        assert_eq!(
            env_name("limits.max_frames"),
            "RADSTREAM_LIMITS__MAX_FRAMES"
        );
    }

    #[test]
    fn every_alias_names_a_setting_and_no_alias_is_also_skipped() {
        let keys: Vec<String> = Config::load_from(None, env(&[]), vec![])
            .expect("defaults load")
            .settings()
            .into_iter()
            .map(|s| s.key)
            .collect();
        for (alias, key) in ENV_ALIASES {
            assert!(keys.iter().any(|k| k == key), "{alias} -> {key}");
            assert!(!ENV_NOT_SETTINGS.contains(alias), "{alias}");
        }
        for key in &keys {
            assert!(!ENV_NOT_SETTINGS.contains(&env_name(key).as_str()), "{key}");
        }
    }

    #[test]
    fn unknown_or_mistyped_values_name_the_key_and_the_layer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "[limits]\nmax_framez = 1\n").expect("write");
        let err = Config::load_from(Some(&file), env(&[]), vec![])
            .err()
            .expect("unknown key in the file")
            .to_string();
        assert!(err.contains("`limits.max_framez`"), "{err}");
        assert!(err.contains(&file.display().to_string()), "{err}");
        for (name, value, key) in [
            ("RADSTREAM_LIMITS__MAX_FRAMEZ", "1", "`limits.max_framez`"),
            ("RADSTREAM_NOPE", "1", "`nope`"),
            (
                "RADSTREAM_LIMITS__MAX_FRAMES",
                "many",
                "`limits.max_frames`",
            ),
            ("RADSTREAM_PROVIDER", "tensorrt", "`inference.provider`"),
        ] {
            let err = Config::load_from(None, env(&[(name, value)]), vec![])
                .err()
                .unwrap_or_else(|| panic!("{name}={value} accepted"))
                .to_string();
            assert!(
                err.contains(key) && err.contains(&format!("env {name}")),
                "{err}"
            );
        }
        let missing = dir.path().join("missing.toml");
        let err = Config::load_from(Some(&missing), env(&[]), vec![])
            .err()
            .expect("missing file")
            .to_string();
        assert!(err.contains("missing.toml"), "{err}");
    }

    #[test]
    fn the_toml_printout_reads_back_as_the_same_configuration() {
        let layered = Config::load_from(
            None,
            env(&[("RADSTREAM_WEBHOOK__URL", "http://127.0.0.1:9/a \"b\"")]),
            vec![FlagSetting::new("--listen", "listen", "127.0.0.1:7").expect("flag")],
        )
        .expect("loads");
        let text = layered.to_toml();
        let reread: Config = toml::from_str(&text).expect("valid TOML");
        assert_eq!(
            serde_json::to_value(&reread).expect("json"),
            serde_json::to_value(&layered.config).expect("json"),
            "{text}"
        );
        assert_eq!(layered.to_json()["sources"]["listen"], "flag --listen");
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
