//! Logging set-up in one place, the events that are both logged and counted ([`events`]), and the HTTP
//! endpoints an operator's monitoring reads ([`http`]: `/metrics`, `/readyz`, `/healthz`). Filters come
//! from `RADSTREAM_LOG` (then `RUST_LOG`), default `info`. Nothing in radstream logs patient
//! identifiers: slices are named by SOP Instance UID only; metrics carry no UIDs at all.
//!
//! `RADSTREAM_LOG_FORMAT=json` writes one JSON object per line instead of text, for a log shipper that
//! should not have to parse prose. Either way a line carries the spans it was written in, so a line
//! about one slice says which stream brought it and which study it belongs to without repeating
//! those fields at every call site:
//! - `stream` (`stream`: the source id, `peer`: the client's address when known) around one `Analyze`
//!   stream's session. Never the `client_ref`: it is the sender's name for an instance, often a file
//!   path, and a path can hold a patient's name.
//! - `study` (`study_instance_uid`, and `sop_instance_uid` when about one instance) around one
//!   instance's intake (filled in once its header is read) and around the registry's handling of what
//!   that instance reports, and of a study's own timers.
//!
//! The spans hold a few UIDs and are made once per stream, instance or registry command: never per
//! pixel or per frame.

pub mod events;
pub mod http;

use tracing_subscriber::EnvFilter;

/// The environment variable that picks the log format.
pub const LOG_FORMAT_ENV: &str = "RADSTREAM_LOG_FORMAT";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (the default).
    Text,
    /// One JSON object per line, with the current span's fields and the list of spans it is in.
    Json,
}

impl LogFormat {
    /// The format `RADSTREAM_LOG_FORMAT` names (`text` or `json`, any case); `Err` with the value when
    /// it names neither.
    pub fn parse(value: Option<&str>) -> Result<Self, String> {
        match value.map(str::trim) {
            None | Some("") => Ok(LogFormat::Text),
            Some(v) if v.eq_ignore_ascii_case("text") => Ok(LogFormat::Text),
            Some(v) if v.eq_ignore_ascii_case("json") => Ok(LogFormat::Json),
            Some(v) => Err(v.to_string()),
        }
    }
}

/// The crates that read an instance's bytes on radstream's behalf (the DICOM parser, the pixel codecs).
/// Their own log lines are never written: they quote what they read ("Unsupported character set
/// `…`"), and what they read is the sender's, possibly a patient's name. What they fail with reaches
/// the log only as radstream's own decode errors, which describe a value and never quote it.
const INSTANCE_READERS: &[&str] = &[
    "dicom_",
    "charls",
    "jpeg_decoder",
    "jpeg2k",
    "openjp2",
    "jxl_",
    "zune_",
];

/// Whether lines with this target are written (see [`INSTANCE_READERS`]).
fn written(target: &str) -> bool {
    !INSTANCE_READERS.iter().any(|c| target.starts_with(c))
}

/// Installs the global tracing subscriber (stderr), in the format `RADSTREAM_LOG_FORMAT` names. Safe
/// to call more than once. An unknown format is reported on the log (text) rather than failing the
/// start: logging is not worth refusing to serve over.
pub fn init(default_level: &str) {
    use tracing_subscriber::{filter::filter_fn, fmt, prelude::*};
    let filter = std::env::var("RADSTREAM_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default_level.to_string());
    let format = LogFormat::parse(std::env::var(LOG_FORMAT_ENV).ok().as_deref());
    let readers = || filter_fn(|meta| written(meta.target()));
    let subscriber = tracing_subscriber::registry().with(EnvFilter::new(filter));
    // colours only for a person at a terminal: a log file or collector gets plain text
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = || {
        fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .with_filter(readers())
    };
    match format {
        Ok(LogFormat::Json) => {
            let json = fmt::layer()
                .json()
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(std::io::stderr)
                .with_filter(readers());
            let _ = subscriber.with(json).try_init();
        }
        Ok(LogFormat::Text) => {
            let _ = subscriber.with(text()).try_init();
        }
        Err(unknown) => {
            if subscriber.with(text()).try_init().is_ok() {
                tracing::warn!(
                    "{LOG_FORMAT_ENV}={unknown:?} is neither \"text\" nor \"json\"; logging as text"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::LogFormat;

    #[test]
    fn the_log_format_is_text_unless_json_is_named() {
        assert_eq!(LogFormat::parse(None), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("text")), Ok(LogFormat::Text));
        assert_eq!(LogFormat::parse(Some("JSON")), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse(Some(" json ")), Ok(LogFormat::Json));
        assert_eq!(LogFormat::parse(Some("yaml")), Err("yaml".to_string()));
    }

    #[test]
    fn the_instance_readers_own_lines_are_not_written() {
        assert!(!super::written("dicom_parser::stateful::decode"));
        assert!(!super::written("jpeg2k::j2k"));
        assert!(super::written("radstream::ingest::grpc"));
        assert!(super::written("tonic::transport"));
    }
}
