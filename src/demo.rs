//! `radstream demo`: the whole service on its built-in defaults. It starts the real server on a free
//! loopback port, pushes the bundled sample study over a real gRPC stream, prints what comes back, and
//! stops — the shortest way to see radstream work end to end.

use std::{net::SocketAddr, path::Path};

use crate::{
    client::{self, OutputFormat, PushReport, Source},
    config::Config,
    error::Result,
    server,
};

include!(concat!(env!("OUT_DIR"), "/sample_study.rs"));

/// Runs the demo with `config` (its listen address is replaced by a free loopback port); with
/// `overlays`, PNGs of the positive slices are written there.
pub async fn run(
    mut config: Config,
    format: OutputFormat,
    overlays: Option<&Path>,
) -> Result<PushReport> {
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let readable = format == OutputFormat::Readable;
    let server = server::start(config.clone()).await?;
    if readable {
        println!(
            "radstream demo: service listening on {} — pushing the bundled sample study ({} CT slices; \
             slices #5-#8 carry a synthetic lesion)\n",
            server.addr,
            SAMPLE_STUDY.len()
        );
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
    server.stop().await?;
    let report = report?;
    if readable {
        println!(
            "\n{} instances accepted, {} rejected, {} findings, {} study summary(ies)",
            report.accepted,
            report.rejected.len(),
            report.findings.len(),
            report.summaries.len()
        );
    }
    Ok(report)
}
