//! The `radstream` command: `serve`, `push`, `watch`, `demo`, `bench`, `models`, `token`, `config`. Thin by design:
//! parsing, logging set-up, signals and exit codes live here; everything else is in the library.
//!
//! `serve` and signals: the first SIGTERM or SIGINT drains (health NOT_SERVING, no new streams, open
//! streams finish what they read, within `[shutdown] drain_deadline_secs`, then what is left is
//! cancelled with UNAVAILABLE) and the process exits 0 once every stream has ended. A second signal during the drain stops at once: streams are
//! cancelled with UNAVAILABLE and the process exits 128 + the signal's number (143 for SIGTERM, 130 for
//! SIGINT), as a shell reports a process killed by it.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use radstream::{
    client::{self, OutputFormat, Source},
    config::{Config, PreprocessBackend},
    demo, server,
    shutdown::Shutdown,
    telemetry,
};

#[derive(Parser)]
#[command(
    name = "radstream",
    version,
    about = "Real-time imaging analysis: DICOM in over gRPC, findings streamed back"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gRPC service.
    Serve(ServiceArgs),
    /// Stream DICOM files (and folders, recursively) to a running service and print the findings.
    Push(PushArgs),
    /// Follow the service's study log: one line per event as studies arrive (or one JSON object per
    /// event), optionally replaying the log from a sequence number first.
    Watch(WatchArgs),
    /// Start the service in-process, push the bundled sample study, print the findings, exit.
    Demo {
        #[command(flatten)]
        service: ServiceArgs,
        /// One JSON object per response instead of readable lines.
        #[arg(long)]
        json: bool,
        /// Write a PNG of every positive slice (box and peak on the windowed slice) into this folder.
        #[arg(long)]
        overlays: Option<PathBuf>,
        /// Keep serving after the push (web view, Watch) until Ctrl-C; pushes after a 5 s pause so
        /// the page can be opened first.
        #[arg(long)]
        stay: bool,
    },
    /// Measure the service over its real interfaces (figures as distributions).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Model versions: check a model directory offline, or list, load, activate, unload, roll back
    /// and shadow the versions of a running service.
    #[command(subcommand)]
    Models(ModelsCommand),
    /// Bearer tokens: `token hash` prints the SHA-256 of a token read from stdin, for the tokens file.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the effective configuration (defaults, then --config, then RADSTREAM_* variables, then
    /// flags) as TOML, each value followed by where it came from; exit 1 when it is not valid.
    Config {
        #[command(flatten)]
        service: ServiceArgs,
        /// One JSON object: {"config": {...}, "sources": {"dotted.key": "where it came from"}}.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Read a token from stdin (its first line) and print its hash, as `[auth] tokens_file` holds it.
    Hash,
    /// Print a new random token (256 bits, hex: safe in a header and a URL).
    New,
}

/// How a client authenticates to a secured service (see README: Security).
#[derive(Args, Clone)]
struct AccessArgs {
    /// Bearer token (prefer RADSTREAM_TOKEN or --token-file: a flag shows in `ps`).
    #[arg(long, env = "RADSTREAM_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File whose first line is the bearer token (used when --token / RADSTREAM_TOKEN is unset).
    #[arg(long, env = "RADSTREAM_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) that signed the service's certificate (https:// endpoints).
    #[arg(long, env = "RADSTREAM_CA")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM), for a service that asks for one (mutual TLS).
    #[arg(long, env = "RADSTREAM_CERT", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "RADSTREAM_KEY", requires = "cert")]
    key: Option<PathBuf>,
}

impl AccessArgs {
    fn target(&self, endpoint: &str) -> anyhow::Result<client::Target> {
        Ok(client::Target::new(
            endpoint,
            client::Access {
                token: client::Access::token_from(self.token.clone(), self.token_file.as_deref())?,
                ca: self.ca.clone(),
                cert: self.cert.clone(),
                key: self.key.clone(),
            },
        ))
    }
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Check a model directory offline as the service does before serving it (manifest, graph
    /// signature, a dry run of the largest batch); prints OK and a summary, or every problem (exit 1).
    Validate {
        /// The model directory.
        dir: PathBuf,
        /// The largest batch the service will send (`[batching] max_batch`).
        #[arg(long, env = "RADSTREAM_MAX_BATCH", default_value_t = 16)]
        max_batch: usize,
        /// Path of libonnxruntime.so (1.31).
        #[arg(long, env = "RADSTREAM_ORT_LIB")]
        ort_library: Option<PathBuf>,
    },
    /// Every version the service knows: state, active/shadow, sha256, counters, what it applies to,
    /// why a failed one did not load; then each shadow's agreement with its active version.
    List(AdminArgs),
    /// Load repository/<name>/<version>/ into the service (validated and dry-run; the active version
    /// keeps serving meanwhile).
    Load {
        name: String,
        version: String,
        /// Make it the active version once it has loaded.
        #[arg(long)]
        activate: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make a loaded version active: new studies get it; studies in flight finish on their version.
    Activate {
        name: String,
        version: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove a version that is not active; studies pinned to it finish on it.
    Unload {
        name: String,
        version: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the version that was active before the current one active again.
    Rollback {
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run VERSION beside the model's active version on the same slices (its findings reach no one;
    /// `models list` shows the agreement); without VERSION, stop the shadow.
    Shadow {
        name: String,
        version: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// How the `models` admin commands reach the service.
#[derive(Args)]
struct AdminArgs {
    /// Service endpoint: a URL, or host:port (http://, or https:// with --ca).
    #[arg(
        long,
        env = "RADSTREAM_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// One JSON object (proto field names) instead of readable lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    access: AccessArgs,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Critical-finding latency (decisive slice received -> alert at a Watch subscriber), p50/p99:
    /// alone (one pusher), then with concurrent pushers; each on a fresh in-process server.
    Alerts {
        #[command(flatten)]
        service: ServiceArgs,
        /// Concurrent pushing streams in the loaded run.
        #[arg(long, default_value_t = 32)]
        pushers: usize,
        /// Studies (copies of the sample study, 12 slices each) per pusher in the loaded run.
        #[arg(long, default_value_t = 2)]
        studies: usize,
        /// Studies pushed one after the other in the run alone.
        #[arg(long, default_value_t = 16)]
        alone: usize,
    },
    /// Load: K concurrent streams of realistic series (512² 16-bit CT, explicit or compressed) against
    /// a fresh `radstream serve` child per run; slices/s, MB/s, latency p50/p95/p99, time to first
    /// finding and to summary, server CPU per slice and peak RSS; with --peer, the Python pipeline's
    /// figures and the ratios.
    Load(LoadArgs),
    /// Preprocessing throughput on real slices (the sample study, 512² 16-bit CT): the CPU reference
    /// and the WGSL path per output size, slices/s and the bytes a batch moves (stored samples up, f32
    /// down) per second.
    Preprocess {
        /// Output sides (square), comma list.
        #[arg(long, value_delimiter = ',', default_value = "64,256")]
        sizes: Vec<u32>,
        /// Slices per call.
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// cpu, gpu, or both (comma list).
        #[arg(long, value_delimiter = ',', default_value = "cpu,gpu")]
        backend: Vec<String>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct LoadArgs {
    /// Slices per study (one series).
    #[arg(long, default_value_t = 240)]
    slices: usize,
    /// Concurrent streams: one run per value, each on a fresh server (comma list).
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    streams: Vec<usize>,
    /// Studies each stream pushes, one after the other.
    #[arg(long, default_value_t = 1)]
    studies_per_stream: usize,
    /// Transfer syntax of the series: explicit, jpeg-ls, j2k, rle or all (comma list).
    #[arg(long, default_value = "explicit")]
    syntax: String,
    /// bundled (the built-in 64x64 model), realistic (a 256x256 CNN of ~2.4 M parameters, built
    /// into the cache when missing) or a model directory.
    #[arg(long, default_value = "bundled")]
    model: radstream::bench::load::ModelChoice,
    /// Preprocessing of the server (cpu, gpu, auto); default: the server's.
    #[arg(long, value_enum)]
    preprocess: Option<PreprocessBackend>,
    /// Most slices per model call, of the server and the peer (default 16).
    #[arg(long)]
    max_batch: Option<usize>,
    /// Build the series from the DICOM files under this folder instead of the bundled sample study.
    #[arg(long)]
    from: Option<PathBuf>,
    /// Keep the series (and the realistic model) here; a later run with the same slices reuses them.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Push to this running server (URL or host:port) instead of starting one (RSS and CPU only with
    /// --server-pid).
    #[arg(long)]
    addr: Option<String>,
    /// The process id of the --addr server, for its peak RSS and CPU time.
    #[arg(long, requires = "addr")]
    server_pid: Option<u32>,
    /// Also run the Python peer (benches/peer/pipeline.py via RADSTREAM_PYTHON) and print the ratios.
    #[arg(long)]
    peer: bool,
    /// One JSON object instead of the table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    access: AccessArgs,
}

/// Service settings: these flags override the environment, which overrides the TOML file (see README:
/// Configuration). Every setting, flag or not, has an environment twin `RADSTREAM_SECTION__KEY`; the
/// short names below are kept for the flags that had them.
#[derive(Args, Clone)]
struct ServiceArgs {
    /// TOML configuration file (see README: Configuration).
    #[arg(long, env = "RADSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address [env: RADSTREAM_LISTEN].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Model directory (model.toml + ONNX file); default: the built-in model [env: RADSTREAM_MODEL_DIR].
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Model repository (models/<name>/<version>/): every version loaded, the newest of each model
    /// active, new versions picked up while serving [env: RADSTREAM_MODELS].
    #[arg(long)]
    models: Option<PathBuf>,
    /// Path of libonnxruntime.so (1.31); unset: RADSTREAM_ORT_LIB, else the set-up's cache.
    #[arg(long)]
    ort_library: Option<PathBuf>,
    /// Preprocessing implementation [env: RADSTREAM_PREPROCESS].
    #[arg(long, value_enum)]
    preprocess: Option<PreprocessBackend>,
    /// Where ONNX Runtime runs the models (cuda: needs `scripts/setup.sh --cuda` and a GPU)
    /// [env: RADSTREAM_PROVIDER].
    #[arg(long, value_enum)]
    provider: Option<radstream::config::ExecutionProvider>,
    /// Seconds without a new instance after which a study is complete [env: RADSTREAM_IDLE_TIMEOUT_SECS].
    #[arg(long)]
    idle_timeout_secs: Option<f64>,
    /// Most slices per model call [env: RADSTREAM_MAX_BATCH].
    #[arg(long)]
    max_batch: Option<usize>,
    /// Largest accepted instance in bytes [env: RADSTREAM_MAX_INSTANCE_BYTES].
    #[arg(long)]
    max_instance_bytes: Option<usize>,
    /// Seconds a drain (on SIGTERM/SIGINT) may take before what is left is cancelled
    /// [env: RADSTREAM_DRAIN_DEADLINE_SECS].
    #[arg(long)]
    drain_deadline_secs: Option<f64>,
    /// Data directory: the durable event log of every study (default for `serve`:
    /// $XDG_DATA_HOME/radstream; `demo`: a temporary one) [env: RADSTREAM_DATA_DIR].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Serve the live web view and its JSON API on this address (e.g. 127.0.0.1:8080); off if unset
    /// [env: RADSTREAM_HTTP].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// POST every critical finding as JSON to this URL (retried with backoff; see README)
    /// [env: RADSTREAM_WEBHOOK_URL].
    #[arg(long)]
    webhook_url: Option<String>,
}

impl ServiceArgs {
    /// The layered configuration (defaults, file, environment, these flags), not yet validated.
    fn layered(&self) -> anyhow::Result<radstream::config::Layered> {
        use radstream::config::FlagSetting as F;
        fn given<T: serde::Serialize>(
            out: &mut Vec<F>,
            flag: &str,
            key: &str,
            value: &Option<T>,
        ) -> anyhow::Result<()> {
            if let Some(v) = value {
                out.push(F::new(flag, key, v)?);
            }
            Ok(())
        }
        let mut flags = Vec::new();
        given(&mut flags, "--listen", "listen", &self.listen)?;
        given(&mut flags, "--model-dir", "model_dir", &self.model_dir)?;
        given(&mut flags, "--models", "models.repository", &self.models)?;
        given(
            &mut flags,
            "--ort-library",
            "ort_library",
            &self.ort_library,
        )?;
        given(&mut flags, "--preprocess", "preprocess", &self.preprocess)?;
        given(
            &mut flags,
            "--provider",
            "inference.provider",
            &self.provider,
        )?;
        given(
            &mut flags,
            "--idle-timeout-secs",
            "study.idle_timeout_secs",
            &self.idle_timeout_secs,
        )?;
        given(
            &mut flags,
            "--max-batch",
            "batching.max_batch",
            &self.max_batch,
        )?;
        given(
            &mut flags,
            "--max-instance-bytes",
            "limits.max_instance_bytes",
            &self.max_instance_bytes,
        )?;
        given(
            &mut flags,
            "--drain-deadline-secs",
            "shutdown.drain_deadline_secs",
            &self.drain_deadline_secs,
        )?;
        given(&mut flags, "--data-dir", "store.data_dir", &self.data_dir)?;
        given(&mut flags, "--http", "http.listen", &self.http)?;
        given(
            &mut flags,
            "--webhook-url",
            "webhook.url",
            &self.webhook_url,
        )?;
        Ok(Config::load(self.config.as_deref(), flags)?)
    }

    fn into_config(self) -> anyhow::Result<Config> {
        let config = self.layered()?.config;
        config.validate()?;
        Ok(config)
    }
}

#[derive(Args)]
struct PushArgs {
    /// Service endpoint: a URL, or host:port (http://, or https:// with --ca).
    #[arg(
        long,
        env = "RADSTREAM_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// One JSON object per response instead of readable lines.
    #[arg(long)]
    json: bool,
    /// Write a PNG of every positive slice (box and peak on the windowed slice) into this folder.
    #[arg(long)]
    overlays: Option<PathBuf>,
    /// Largest message the client sends or accepts, in bytes.
    #[arg(long, default_value_t = Config::default().max_message_bytes())]
    max_message_bytes: usize,
    /// DICOM files or folders.
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    #[command(flatten)]
    access: AccessArgs,
}

#[derive(Args)]
struct WatchArgs {
    /// Service endpoint: a URL, or host:port (http://, or https:// with --ca).
    #[arg(
        long,
        env = "RADSTREAM_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// Only this study (Study Instance UID); repeat for several.
    #[arg(long = "study", value_name = "UID")]
    studies: Vec<String>,
    /// First replay the log from this sequence number (1: the whole log), then follow live events.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    from: Option<u64>,
    /// Only studies of this modality (e.g. CT); repeat for several.
    #[arg(long = "modality", value_name = "M")]
    modalities: Vec<String>,
    /// Only findings positive for this label (and summaries); repeat for several.
    #[arg(long = "label", value_name = "L")]
    labels: Vec<String>,
    /// Only critical findings.
    #[arg(long)]
    critical_only: bool,
    /// Print what the log holds (from --from, else from 1) and exit instead of following live events.
    #[arg(long)]
    replay_only: bool,
    /// One JSON object per event instead of readable lines.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    access: AccessArgs,
}

fn format(json: bool) -> OutputFormat {
    if json {
        OutputFormat::Json
    } else {
        OutputFormat::Readable
    }
}

/// Watches SIGTERM and SIGINT: the first begins the drain, the second aborts it. Returns the second
/// signal's number (the process then exits at once); pending while at most one signal came.
#[cfg(unix)]
async fn watch_signals(shutdown: Shutdown) -> anyhow::Result<i32> {
    use tokio::signal::unix::{signal, Signal, SignalKind};
    async fn next(term: &mut Signal, int: &mut Signal) -> i32 {
        tokio::select! {
            _ = term.recv() => libc::SIGTERM,
            _ = int.recv() => libc::SIGINT,
        }
    }
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
    let first = next(&mut term, &mut int).await;
    tracing::info!(
        signal = first,
        "shutting down: draining (no new streams; open streams finish what they sent; a second signal stops at once)"
    );
    shutdown.begin_drain();
    let second = next(&mut term, &mut int).await;
    tracing::warn!(
        signal = second,
        "second signal: stopping now, cancelling open streams"
    );
    shutdown.abort();
    Ok(second)
}

#[cfg(not(unix))]
async fn watch_signals(shutdown: Shutdown) -> anyhow::Result<i32> {
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    shutdown.begin_drain();
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    shutdown.abort();
    Ok(libc::SIGINT)
}

/// After a second signal, how long cancelled streams get to hear why before the process exits anyway.
const FORCED_EXIT_GRACE: Duration = Duration::from_millis(300);

async fn serve(args: ServiceArgs) -> anyhow::Result<ExitCode> {
    let config = args.into_config()?;
    let (grpc, addr) = server::bind(config.listen).await?;
    let http = match config.http.listen {
        Some(a) => {
            let (listener, bound) = server::bind(a).await?;
            tracing::info!("http listening on http://{bound}/ (live web view and JSON API)");
            Some(listener)
        }
        None => None,
    };
    let data_dir = config
        .store
        .data_dir
        .clone()
        .unwrap_or_else(Config::default_data_dir);
    let catalog = server::build_catalog(&config, &data_dir)?;
    tracing::info!(
        addr = %addr,
        data_dir = %data_dir.display(),
        drain_deadline_secs = config.shutdown.drain_deadline_secs,
        "radstream serving (SIGTERM or Ctrl-C drains; a second one stops at once)"
    );
    let shutdown = Shutdown::new();
    let signals = watch_signals(shutdown.clone());
    let served = server::serve(
        server::Listeners { grpc, http },
        &config,
        catalog,
        shutdown.clone(),
        &data_dir,
    );
    tokio::pin!(signals, served);
    tokio::select! {
        result = &mut served => {
            result?;
            tracing::info!("drained: every stream ended; exiting");
            Ok(ExitCode::SUCCESS)
        }
        second = &mut signals => {
            let signo = second?;
            // Give the cancelled streams a moment to carry their status out, but no more.
            let _ = tokio::time::timeout(FORCED_EXIT_GRACE, &mut served).await;
            Ok(ExitCode::from(128 + signo as u8))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => return serve(args).await,
        Command::Push(args) => {
            let files = client::collect_files(&args.paths)?;
            anyhow::ensure!(!files.is_empty(), "no files found under {:?}", args.paths);
            let report = client::push_and_print(
                args.access.target(&args.endpoint)?,
                Source::Files(files),
                args.max_message_bytes,
                format(args.json),
                args.overlays.as_deref(),
            )
            .await?;
            if !args.json {
                eprintln!(
                    "{} accepted, {} rejected, {} findings, {} study summaries",
                    report.accepted,
                    report.rejected.len(),
                    report.findings.len(),
                    report.summaries.len()
                );
            }
        }
        Command::Bench(command) => bench(command).await?,
        Command::Config { service, json } => {
            let layered = service.layered()?;
            if json {
                println!("{}", layered.to_json());
            } else {
                print!("{}", layered.to_toml());
            }
            layered.config.validate()?;
        }
        Command::Models(ModelsCommand::Validate {
            dir,
            max_batch,
            ort_library,
        }) => {
            let config = Config {
                ort_library,
                ..Config::default()
            };
            let env = radstream::inference::runtime(&config.ort_library_path())?;
            return Ok(
                match radstream::model::validate::validate_dir(env, &dir, max_batch) {
                    Ok(summary) => {
                        print!("{summary}");
                        ExitCode::SUCCESS
                    }
                    Err(invalid) => {
                        println!("INVALID {}", dir.display());
                        for p in &invalid.problems {
                            println!("  - {p}");
                        }
                        ExitCode::FAILURE
                    }
                },
            );
        }
        Command::Models(command) => models(command).await?,
        Command::Token(TokenCommand::Hash) => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("cannot read the token from stdin")?;
            anyhow::ensure!(!line.trim().is_empty(), "no token on stdin");
            println!("{}", radstream::security::auth::hash_token(&line));
        }
        Command::Token(TokenCommand::New) => {
            use std::io::Read;
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut bytes))
                .context("cannot read /dev/urandom")?;
            println!("{}", hex::encode(bytes));
        }
        Command::Watch(args) => {
            let options = client::WatchOptions {
                studies: args.studies,
                from: args.from,
                modalities: args.modalities,
                labels: args.labels,
                critical_only: args.critical_only,
                replay_only: args.replay_only,
                format: format(args.json),
            };
            client::watch_and_print(args.access.target(&args.endpoint)?, options).await?;
        }
        Command::Demo {
            service,
            json,
            overlays,
            stay,
        } => {
            let config = service.into_config()?;
            let options = demo::DemoOptions {
                wait_before_push: if stay {
                    Duration::from_secs(5)
                } else {
                    Duration::ZERO
                },
                stay,
            };
            let stop = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            let report =
                demo::run(config, format(json), overlays.as_deref(), options, stop).await?;
            anyhow::ensure!(
                !report.summaries.is_empty(),
                "the demo study produced no summary"
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The admin commands of `radstream models` (`validate` is handled in [`run`]: it needs no service).
async fn models(command: ModelsCommand) -> anyhow::Result<()> {
    use client::models::ModelsRequest as R;
    let (request, admin) = match command {
        ModelsCommand::Validate { .. } => {
            anyhow::bail!("models validate runs offline, not against a service")
        }
        ModelsCommand::List(admin) => (R::List, admin),
        ModelsCommand::Load {
            name,
            version,
            activate,
            admin,
        } => (
            R::Load {
                name,
                version,
                activate,
            },
            admin,
        ),
        ModelsCommand::Activate {
            name,
            version,
            admin,
        } => (R::Activate { name, version }, admin),
        ModelsCommand::Unload {
            name,
            version,
            admin,
        } => (R::Unload { name, version }, admin),
        ModelsCommand::Rollback { name, admin } => (R::Rollback { name }, admin),
        ModelsCommand::Shadow {
            name,
            version,
            admin,
        } => (R::Shadow { name, version }, admin),
    };
    // A refusal's message is the service's own (it says what to do); printed as `error: ...`, exit 1.
    client::models::request_and_print(admin.access.target(&admin.endpoint)?, request, admin.json)
        .await?;
    Ok(())
}

async fn bench(command: BenchCommand) -> anyhow::Result<()> {
    use radstream::bench::alerts::{self, AlertBench};
    match command {
        BenchCommand::Alerts {
            service,
            pushers,
            studies,
            alone,
        } => {
            let config = service.into_config()?;
            println!(
                "critical-finding latency: decisive slice received -> alert at a Watch subscriber"
            );
            for run in [
                AlertBench {
                    pushers: 1,
                    studies: alone,
                },
                AlertBench { pushers, studies },
            ]
            .into_iter()
            // `--alone 0` (or `--studies 0`): that run is not wanted
            .filter(|run| run.studies > 0)
            {
                let mut config = config.clone();
                config.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
                config.store.data_dir = None;
                let report = alerts::run(config, run).await?;
                println!("{report}");
            }
        }
        BenchCommand::Preprocess {
            sizes,
            batch,
            backend,
            seconds,
            json,
        } => {
            use radstream::bench::preprocess::{self, PreprocessBench};
            let bench = PreprocessBench {
                sizes,
                batch,
                backends: backend,
                seconds,
            };
            let figures = tokio::task::spawn_blocking(move || preprocess::run(&bench)).await??;
            if json {
                println!("{}", serde_json::to_string(&figures)?);
            } else {
                for f in &figures {
                    println!("{f}");
                }
            }
        }
        BenchCommand::Load(args) => {
            use radstream::bench::{load, study::Syntax};
            let syntaxes = Syntax::parse_list(&args.syntax).map_err(anyhow::Error::msg)?;
            let addr = match &args.addr {
                Some(a) => Some(args.access.target(a)?),
                None => None,
            };
            let options = load::LoadOptions {
                slices: args.slices,
                streams: args.streams,
                studies_per_stream: args.studies_per_stream,
                syntaxes,
                model: args.model,
                preprocess: args.preprocess.map(|p| {
                    serde_json::to_value(p)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_else(|| "auto".into())
                }),
                max_batch: args.max_batch,
                from: args.from,
                keep: args.keep,
                addr,
                server_pid: args.server_pid,
                peer: args.peer,
                exe: std::env::current_exe().context("cannot find this executable")?,
                max_message_bytes: Config::default().max_message_bytes(),
            };
            let report = load::run(options).await?;
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                print!("{report}");
            }
        }
    }
    Ok(())
}

/// glibc malloc tuning, before any thread (and so any arena) exists.
///
/// Why: the service's large buffers — a received instance (~0.5 MiB for a 512² CT slice, in a receive
/// buffer tonic may have grown to 1 MiB), which its frames now keep until they are scored, model
/// batches, overlay images — are allocated and freed per slice, from many threads. Two settings keep
/// them on the heaps, reused, instead of being faulted in afresh for every slice:
/// - `M_MMAP_THRESHOLD` 4 MiB: above it each buffer is a fresh mapping (page faults and zeroing on first
///   touch, `munmap` on free). With the threshold at 256 KiB (this setting before issue 14) that was a
///   quarter of the server's CPU per slice; the budgets (`ingest::budget`) bound what is live.
/// - `M_TRIM_THRESHOLD` 8 MiB (2× the mmap threshold, the ratio glibc's own dynamic rule keeps): setting
///   the mmap threshold fixes the trim threshold at its 128 KiB default, so every freed receive buffer at
///   the top of a heap was handed back to the kernel (`madvise`/`brk`) and faulted in again for the next
///   slice: 92 page faults per slice, 73 % of them in tonic's copy into a new receive buffer (`perf record
///   -e page-faults`). With 8 MiB an arena keeps at most that much free memory at its top.
/// - `M_ARENA_MAX` one per core: glibc's default (8 per core) gave each blocking thread that decodes or
///   renders an overlay an arena of its own, each holding freed slices the others cannot reuse. Under 32
///   streams `malloc_stats` showed 146 MB taken from the kernel for 71 MB in use, 13 arenas of 3-6 MB
///   with under 1 MB in use each. Peak RSS with 32 streams (bench load, one session): 16 arenas
///   162-176 MiB, 4 157-158, 2 145-151, 1 146-147, throughput the same within noise.
///
/// Measured with `radstream bench load` (release, 240-slice 512² series, `--preprocess cpu`, 2-core
/// shared machine, one run each; "32 × 1" = 32 concurrent streams of one study each, "1 × 32" = the
/// same 32 studies one after the other on one stream, so both end with the same studies retained):
/// - mmap 256 KiB: 1 × 32 440 slices/s, 2.20 ms CPU/slice, 103 MiB; 32 × 1 611 slices/s, 1.93 ms, 142 MiB
/// - mmap 1 MiB:   1 × 32 606 slices/s, 1.82 ms, 119 MiB; 32 × 1 908 slices/s, 1.55 ms, 179 MiB
/// - mmap 4 MiB:   1 × 32 698 slices/s, 1.77 ms, 126 MiB; 32 × 1 935 slices/s, 1.55 ms, 184 MiB: kept
///
/// The trim threshold, on one server over 4 pushes of the 240-slice series (`perf stat -p`): default
/// 128 KiB 84k page faults, 2.00 ms CPU/slice; 4 MiB 4.0k, 1.72 ms; 8 MiB 2.0k, 1.64 ms; 16 MiB 4.9k,
/// 1.72 ms; 64 MiB 3.1k, 1.74 ms: 8 MiB kept.
///
/// And with `tests/memory.rs` (debug binary, one 32-slice study per stream): 4 MiB 1 stream 90-94 MiB,
/// 32 streams 105-108 MiB, ratio 1.13-1.17 (3 runs); 256 KiB 1.12-1.14 (2 runs).
///
/// Left as the environment says when the operator tuned malloc there (`MALLOC_MMAP_THRESHOLD_`,
/// `MALLOC_TRIM_THRESHOLD_`, `MALLOC_ARENA_MAX`, `GLIBC_TUNABLES`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    const MMAP_THRESHOLD: libc::c_int = 4 * 1024 * 1024;
    const TRIM_THRESHOLD: libc::c_int = 2 * MMAP_THRESHOLD;
    if [
        "MALLOC_MMAP_THRESHOLD_",
        "MALLOC_TRIM_THRESHOLD_",
        "MALLOC_ARENA_MAX",
        "GLIBC_TUNABLES",
    ]
    .iter()
    .any(|v| std::env::var_os(v).is_some())
    {
        return;
    }
    let arenas = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 64) as libc::c_int;
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread runs.
    let done = unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            + libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD)
            + libc::mallopt(libc::M_ARENA_MAX, arenas)
    };
    if done != 3 {
        eprintln!("warning: could not tune malloc's thresholds; memory may grow with streams");
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}

/// Error backtraces off in the libraries unless asked for (`RUST_LIB_BACKTRACE`), whatever
/// `RUST_BACKTRACE` says (it still governs panics). dicom-rs raises an error with an optional
/// backtrace while reading every instance's data set, expected and handled: with `RUST_BACKTRACE=1`
/// in the service's environment, capturing it was 1.1 % of the server's CPU (perf, 240-slice pushes).
fn quiet_library_backtraces() {
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // Before any thread exists: nothing reads the environment concurrently.
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
}

fn main() -> ExitCode {
    tune_malloc();
    quiet_library_backtraces();
    telemetry::init("info");
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Tasks still running (a forced stop, a decode in flight) must not hold the exit.
    runtime.shutdown_timeout(Duration::from_secs(2));
    code
}
