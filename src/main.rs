//! The `radstream` command: `serve`, `push`, `demo`. Thin by design: parsing, logging set-up and exit
//! codes live here; everything else is in the library.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use radstream::{
    client::{self, OutputFormat, Source},
    config::{Config, PreprocessBackend},
    demo, server, telemetry,
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
    },
}

/// Service settings: each flag has an environment twin and overrides the TOML file.
#[derive(Args, Clone)]
struct ServiceArgs {
    /// TOML configuration file (see README: Configuration).
    #[arg(long, env = "RADSTREAM_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address.
    #[arg(long, env = "RADSTREAM_LISTEN")]
    listen: Option<SocketAddr>,
    /// Model directory (model.toml + ONNX file); default: the built-in model.
    #[arg(long, env = "RADSTREAM_MODEL_DIR")]
    model_dir: Option<PathBuf>,
    /// Path of libonnxruntime.so (1.31).
    #[arg(long, env = "RADSTREAM_ORT_LIB")]
    ort_library: Option<PathBuf>,
    /// Preprocessing implementation.
    #[arg(long, env = "RADSTREAM_PREPROCESS", value_enum)]
    preprocess: Option<PreprocessBackend>,
    /// Seconds without a new instance after which a study is complete.
    #[arg(long, env = "RADSTREAM_IDLE_TIMEOUT_SECS")]
    idle_timeout_secs: Option<f64>,
    /// Most slices per model call.
    #[arg(long, env = "RADSTREAM_MAX_BATCH")]
    max_batch: Option<usize>,
    /// Largest accepted instance in bytes.
    #[arg(long, env = "RADSTREAM_MAX_INSTANCE_BYTES")]
    max_instance_bytes: Option<usize>,
}

impl ServiceArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.model_dir {
            config.model_dir = Some(v);
        }
        if let Some(v) = self.ort_library {
            config.ort_library = Some(v);
        }
        if let Some(v) = self.preprocess {
            config.preprocess = v;
        }
        if let Some(v) = self.idle_timeout_secs {
            config.study.idle_timeout_secs = v;
        }
        if let Some(v) = self.max_batch {
            config.batching.max_batch = v;
        }
        if let Some(v) = self.max_instance_bytes {
            config.limits.max_instance_bytes = v;
        }
        config.validate()?;
        Ok(config)
    }
}

#[derive(Args)]
struct PushArgs {
    /// Service endpoint.
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
}

fn format(json: bool) -> OutputFormat {
    if json {
        OutputFormat::Json
    } else {
        OutputFormat::Readable
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.into_config()?;
            let engine = server::build_engine(&config)?;
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.listen))?;
            tracing::info!(addr = %config.listen, "radstream serving (Ctrl-C to stop)");
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down: finishing open streams");
            };
            server::serve(listener, &config, engine, shutdown).await?;
        }
        Command::Push(args) => {
            let files = client::collect_files(&args.paths)?;
            anyhow::ensure!(!files.is_empty(), "no files found under {:?}", args.paths);
            let report = client::push_and_print(
                &args.endpoint,
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
        Command::Demo {
            service,
            json,
            overlays,
        } => {
            let config = service.into_config()?;
            let report = demo::run(config, format(json), overlays.as_deref()).await?;
            anyhow::ensure!(
                !report.summaries.is_empty(),
                "the demo study produced no summary"
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
