//! `radstream demo`: the whole service on its built-in defaults. It starts the real server on a free
//! loopback port with the live web view on, pushes the bundled sample study over a real gRPC stream,
//! prints what comes back, and stops (or, with `stay`, keeps serving so the page can be explored) —
//! the shortest way to see radstream work end to end. Its event log lives in a temporary directory.

use std::{net::SocketAddr, path::Path, time::Duration};

use crate::{
    client::{self, OutputFormat, PushReport, Source},
    config::Config,
    error::Result,
    server,
};

include!(concat!(env!("OUT_DIR"), "/sample_study.rs"));

/// How the demo runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct DemoOptions {
    /// Wait this long after printing the web view's address before pushing (time to open the page).
    pub wait_before_push: Duration,
    /// Keep serving after the push until `stop` resolves (Ctrl-C in the binary).
    pub stay: bool,
}

/// Runs the demo with `config` (its gRPC listen address is replaced by a free loopback port; the web
/// view listens on `config.http.listen`, else on a free loopback port); with `overlays`, PNGs of the
/// positive slices are written there. With `options.stay`, serves on until `stop` resolves.
pub async fn run(
    mut config: Config,
    format: OutputFormat,
    overlays: Option<&Path>,
    options: DemoOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<PushReport> {
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    if config.http.listen.is_none() {
        config.http.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    }
    let readable = format == OutputFormat::Readable;
    let server = server::start(config.clone()).await?;
    let web = server
        .http_addr
        .map(|a| format!("http://{a}/"))
        .unwrap_or_default();
    if readable {
        let models: Vec<String> = server
            .catalog()
            .list()
            .into_iter()
            .filter(|v| v.active)
            .filter_map(|v| v.served)
            .map(|s| {
                format!(
                    "{} {} (sha256 {}…; preprocessing {}, ONNX Runtime {})",
                    s.info.name,
                    s.info.version,
                    &s.info.onnx_sha256[..12.min(s.info.onnx_sha256.len())],
                    s.engine().preprocess_path(),
                    s.engine().provider()
                )
            })
            .collect();
        println!(
            "radstream demo: service listening on {}; live web view: {web}\n\
             model: {} — its card and counters: `radstream models list --endpoint {}` (with --stay)\n\
             pushing the bundled sample study ({} CT slices; slices #5-#8 carry a synthetic lesion)\n",
            server.addr,
            models.join(", "),
            server.endpoint(),
            SAMPLE_STUDY.len()
        );
    } else {
        eprintln!("live web view: {web}");
    }
    if !options.wait_before_push.is_zero() {
        if readable {
            println!(
                "open {web} now: the study appears and fills in live; pushing in {} s…",
                options.wait_before_push.as_secs()
            );
        }
        tokio::time::sleep(options.wait_before_push).await;
    }
    let source = Source::Memory(
        SAMPLE_STUDY
            .iter()
            .map(|(name, bytes)| (name.to_string(), bytes.to_vec()))
            .collect(),
    );
    let max_message = config.max_message_bytes();
    let report =
        client::push_and_print(&server.endpoint(), source, max_message, format, overlays).await;
    if readable {
        if let Ok(report) = &report {
            println!(
                "\n{} instances accepted, {} rejected, {} findings, {} critical alert(s), {} study \
                 summary(ies)",
                report.accepted,
                report.rejected.len(),
                report.findings.len(),
                report.critical.len(),
                report.summaries.len()
            );
        }
    }
    if options.stay && report.is_ok() {
        if readable {
            println!(
                "\nstill serving: the web view {web} and `radstream watch --endpoint {} --from 1` \
                 replay the study; Ctrl-C stops",
                server.endpoint()
            );
        }
        stop.await;
    }
    server.stop().await?;
    report
}
