//! The clients behind the CLI. `push` (and `demo`) is the PACS side: it streams Part-10 files over one
//! `Analyze` stream (read lazily, so a large folder is never held in memory at once) and prints the
//! responses as they arrive. `watch` ([`watch`]) is the viewer side: it follows the service's study log
//! over `Studies.Watch`. Both print readable lines by default ([`render`]) or one JSON object per line
//! ([`json`], one mapping shared by both, checked against the proto descriptors). `models` ([`models`])
//! is the admin side: which model versions serve, and swapping them while studies stream.

mod access;
pub mod models;
mod render;
mod watch;

pub use crate::results::json::{study_event_json, to_json, watch_event_json};
pub use access::{Access, Authorized, Target};
pub use render::{render, short_study, Progress, Style};
pub use watch::{watch, watch_and_print, Tracker, WatchOptions, WatchReport};

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::{
    error::{Error, Result},
    proto::v1::{self as pb, analysis_client::AnalysisClient, analyze_response::Event},
    results::overlay,
};

/// Lists the files to push: files as given, folders walked recursively, in path order. Hidden files and
/// DICOMDIR index files are skipped (they are not images).
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(|source| Error::Input {
            path: path.clone(),
            source,
        })?;
        if meta.is_file() {
            files.push(path.clone());
            continue;
        }
        for entry in walkdir::WalkDir::new(path).sort_by_file_name() {
            let entry = entry.map_err(|e| Error::Input {
                path: e
                    .path()
                    .map(Path::to_path_buf)
                    .unwrap_or_else(|| path.clone()),
                source: e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("walk failed")),
            })?;
            let name = entry.file_name().to_string_lossy();
            if entry.file_type().is_file() && !name.starts_with('.') && name != "DICOMDIR" {
                files.push(entry.into_path());
            }
        }
    }
    Ok(files)
}

/// Where the instance bytes come from.
pub enum Source {
    Files(Vec<PathBuf>),
    /// (client_ref, bytes) already in memory, e.g. the built-in sample study.
    Memory(Vec<(String, Vec<u8>)>),
}

impl Source {
    fn len(&self) -> usize {
        match self {
            Source::Files(f) => f.len(),
            Source::Memory(m) => m.len(),
        }
    }

    /// What each instance is called locally (the file's path, the in-memory name), in push order.
    fn names(&self) -> Vec<String> {
        match self {
            Source::Files(f) => f.iter().map(|p| p.display().to_string()).collect(),
            Source::Memory(m) => m.iter().map(|(name, _)| name.clone()).collect(),
        }
    }
}

/// The `client_ref` sent for the `index`-th instance of a push: its position in the push, a few bytes
/// whatever the file's path (the server bounds `client_ref`, 256 bytes by default, and a deep
/// archive's paths exceed that). Responses are mapped back to the local name by [`restore_ref`].
fn wire_ref(index: usize) -> String {
    index.to_string()
}

/// Replaces the wire `client_ref` of `response` (an index, see [`wire_ref`]) by the local name it
/// stands for. A ref that is not one of ours is left as the server sent it.
fn restore_ref(response: &mut pb::AnalyzeResponse, names: &[String]) {
    let client_ref = match response.event.as_mut() {
        Some(Event::Accepted(a)) => &mut a.client_ref,
        Some(Event::Rejected(r)) => &mut r.client_ref,
        Some(Event::Finding(f)) => &mut f.client_ref,
        Some(Event::Summary(_)) | Some(Event::Critical(_)) | None => return,
    };
    if let Some(name) = client_ref.parse::<usize>().ok().and_then(|i| names.get(i)) {
        client_ref.clone_from(name);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutputFormat {
    #[default]
    Readable,
    Json,
}

/// What came back from one push.
#[derive(Debug, Default)]
pub struct PushReport {
    pub accepted: usize,
    pub rejected: Vec<pb::InstanceRejected>,
    pub findings: Vec<pb::SliceFinding>,
    pub summaries: Vec<pb::StudySummary>,
    pub critical: Vec<pb::CriticalFinding>,
}

/// A channel to `target` (TLS and token as its [`Access`] says); an unreachable one is
/// [`Error::Connect`] with a hint.
pub(crate) async fn connect(target: &Target) -> Result<Authorized> {
    access::connect(target).await
}

/// Streams `source` to `endpoint`; `on_response` sees every response as it arrives. Each instance goes
/// out with its index as `client_ref`; responses (and the report) carry the local name again: the
/// file's path, or the in-memory name.
pub async fn push(
    target: impl Into<Target>,
    source: Source,
    max_message_bytes: usize,
    mut on_response: impl FnMut(&pb::AnalyzeResponse),
) -> Result<PushReport> {
    let target: Target = target.into();
    let endpoint = target.endpoint.as_str();
    let channel = connect(&target).await?;
    let mut client = AnalysisClient::new(channel)
        .max_encoding_message_size(max_message_bytes)
        .max_decoding_message_size(max_message_bytes);
    let names = source.names();
    let (tx, rx) = mpsc::channel::<pb::AnalyzeRequest>(4);
    let producer = tokio::spawn(async move {
        let send = |index: usize, dicom: Vec<u8>| pb::AnalyzeRequest {
            kind: Some(pb::analyze_request::Kind::Instance(pb::Instance {
                dicom: dicom.into(),
                client_ref: wire_ref(index),
            })),
        };
        match source {
            Source::Files(files) => {
                for (index, path) in files.into_iter().enumerate() {
                    let bytes = tokio::fs::read(&path)
                        .await
                        .map_err(|source| Error::Input {
                            path: path.clone(),
                            source,
                        })?;
                    if tx.send(send(index, bytes)).await.is_err() {
                        break;
                    }
                }
            }
            Source::Memory(items) => {
                for (index, (_, bytes)) in items.into_iter().enumerate() {
                    if tx.send(send(index, bytes)).await.is_err() {
                        break;
                    }
                }
            }
        }
        Ok::<(), Error>(())
    });
    let mut responses = client.analyze(ReceiverStream::new(rx)).await?.into_inner();
    let mut report = PushReport::default();
    while let Some(mut response) = responses.message().await? {
        restore_ref(&mut response, &names);
        on_response(&response);
        match response.event {
            Some(Event::Accepted(_)) => report.accepted += 1,
            Some(Event::Rejected(r)) => report.rejected.push(r),
            Some(Event::Finding(f)) => report.findings.push(f),
            Some(Event::Summary(s)) => report.summaries.push(s),
            Some(Event::Critical(c)) => report.critical.push(c),
            None => {}
        }
    }
    match producer.await {
        Ok(result) => result?,
        Err(join) => {
            return Err(Error::Connect {
                endpoint: endpoint.to_string(),
                detail: join.to_string(),
            })
        }
    }
    Ok(report)
}

/// `push` with a progress bar and printed responses, as the CLI does it. With `overlays`, a PNG of every
/// slice with a positive finding (box and peak drawn on the windowed slice) is written there.
pub async fn push_and_print(
    target: impl Into<Target>,
    source: Source,
    max_message_bytes: usize,
    format: OutputFormat,
    overlays: Option<&Path>,
) -> Result<PushReport> {
    // In-memory instances are kept for their overlays; files are read again from their paths.
    let kept: Option<HashMap<String, Vec<u8>>> = match (&overlays, &source) {
        (Some(_), Source::Memory(items)) => Some(items.iter().cloned().collect()),
        _ => None,
    };
    let bar = ProgressBar::new(source.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} instances {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let style = Style::for_stdout();
    let report = push(target, source, max_message_bytes, |response| {
        if matches!(
            response.event,
            Some(Event::Accepted(_))
                | Some(Event::Rejected(pb::InstanceRejected { frame: None, .. }))
        ) {
            bar.inc(1);
        }
        let line = match format {
            OutputFormat::Readable => render(response, style),
            OutputFormat::Json => Some(to_json(response).to_string()),
        };
        if let Some(line) = line {
            bar.suspend(|| println!("{line}"));
        }
    })
    .await;
    bar.finish_and_clear();
    let report = report?;
    if let Some(dir) = overlays {
        write_overlays(dir, &report, kept.as_ref());
    }
    Ok(report)
}

fn write_overlays(dir: &Path, report: &PushReport, kept: Option<&HashMap<String, Vec<u8>>>) {
    for finding in report
        .findings
        .iter()
        .filter(|f| f.scores.iter().any(|s| s.positive))
    {
        let bytes = match kept {
            Some(items) => items.get(&finding.client_ref).cloned(),
            None => std::fs::read(&finding.client_ref).ok(),
        };
        match bytes.map(|b| overlay::write(dir, &b, finding)) {
            Some(Ok(path)) => eprintln!("overlay: {}", path.display()),
            Some(Err(e)) => eprintln!("warning: {e}"),
            None => eprintln!(
                "warning: cannot read {} again for its overlay",
                finding.client_ref
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_refs_are_short_and_map_back_to_the_local_name() {
        let long = format!("/archive/{}/slice.dcm", "deep/".repeat(100));
        let names = vec!["a.dcm".to_string(), long.clone()];
        assert!(wire_ref(1).len() < 8);
        let mut response = pb::AnalyzeResponse {
            event: Some(Event::Finding(pb::SliceFinding {
                client_ref: wire_ref(1),
                ..Default::default()
            })),
        };
        restore_ref(&mut response, &names);
        assert!(matches!(&response.event, Some(Event::Finding(f)) if f.client_ref == long));

        // A ref that is not one of ours (not an index, out of range) is shown as the server sent it.
        for foreign in ["x.dcm", "2", ""] {
            let mut response = pb::AnalyzeResponse {
                event: Some(Event::Rejected(pb::InstanceRejected {
                    client_ref: foreign.into(),
                    ..Default::default()
                })),
            };
            restore_ref(&mut response, &names);
            assert!(matches!(&response.event, Some(Event::Rejected(r)) if r.client_ref == foreign));
        }
    }
}
