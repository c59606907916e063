//! Logging set-up in one place, the events that are both logged and counted ([`events`]), and the HTTP
//! endpoints an operator's monitoring reads ([`http`]: `/metrics`, `/readyz`, `/healthz`). Filters come
//! from `RADSTREAM_LOG` (then `RUST_LOG`), default `info`. Nothing in radstream logs patient
//! identifiers: slices are named by SOP Instance UID only; metrics carry no UIDs at all.

pub mod events;
pub mod http;

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber (stderr). Safe to call more than once.
pub fn init(default_level: &str) {
    let filter = std::env::var("RADSTREAM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.to_string());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
}
