//! The PACS-side client behind `radstream push` and `radstream demo`: streams Part-10 files over one
//! `Analyze` stream (read lazily, so a large folder is never held in memory at once) and renders the
//! responses as they arrive, readable by default or one JSON object per line.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
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
        Some(Event::Summary(_)) | None => return,
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
}

/// Streams `source` to `endpoint`; `on_response` sees every response as it arrives. Each instance goes
/// out with its index as `client_ref`; responses (and the report) carry the local name again: the
/// file's path, or the in-memory name.
pub async fn push(
    endpoint: &str,
    source: Source,
    max_message_bytes: usize,
    mut on_response: impl FnMut(&pb::AnalyzeResponse),
) -> Result<PushReport> {
    let connect_err = |detail: String| Error::Connect {
        endpoint: endpoint.to_string(),
        detail,
    };
    let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| connect_err(e.to_string()))?
        .connect()
        .await
        .map_err(|e| connect_err(format!("{e} (is `radstream serve` running there?)")))?;
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
    endpoint: &str,
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
    let report = push(endpoint, source, max_message_bytes, |response| {
        if matches!(
            response.event,
            Some(Event::Accepted(_))
                | Some(Event::Rejected(pb::InstanceRejected { frame: None, .. }))
        ) {
            bar.inc(1);
        }
        let line = match format {
            OutputFormat::Readable => render(response),
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

fn uid_tail(uid: &str) -> &str {
    // The end of a UID is what tells instances apart on screen; the full UID is in --json.
    let cut = uid.char_indices().rev().nth(9).map(|(i, _)| i).unwrap_or(0);
    &uid[cut..]
}

fn window_source_name(code: i32) -> &'static str {
    pb::WindowSource::try_from(code)
        .map(|r| r.as_str_name())
        .unwrap_or("WINDOW_SOURCE_UNSPECIFIED")
}

/// " window min/max (file window invalid)", " window file", " window file pair 2" …; empty for colour.
fn window_text(w: Option<&pb::WindowUsed>) -> String {
    let Some(w) = w else {
        return String::new();
    };
    let source = match pb::WindowSource::try_from(w.source) {
        Ok(pb::WindowSource::Manifest) => "manifest".to_string(),
        Ok(pb::WindowSource::File) => match w.file_window_index {
            Some(i) if i > 0 => format!("file pair {}", i + 1),
            _ => "file".to_string(),
        },
        Ok(pb::WindowSource::MinMax) => "min/max".to_string(),
        _ => "unspecified".to_string(),
    };
    format!(
        "  window {source}{}",
        if w.file_window_invalid {
            " (file window invalid)"
        } else {
            ""
        }
    )
}

fn reason_name(code: i32) -> &'static str {
    pb::RejectReason::try_from(code)
        .map(|r| r.as_str_name())
        .unwrap_or("REJECT_REASON_UNSPECIFIED")
}

/// One readable line per response (acceptances are shown only through the progress bar).
pub fn render(response: &pb::AnalyzeResponse) -> Option<String> {
    match response.event.as_ref()? {
        Event::Accepted(_) => None,
        Event::Rejected(r) => Some(format!(
            "REJECTED  {}{}  {}: {}",
            r.client_ref,
            r.frame.map(|f| format!(" frame {f}")).unwrap_or_default(),
            reason_name(r.reason).trim_start_matches("REJECT_REASON_"),
            r.message
        )),
        Event::Finding(f) => {
            let slice = f.slice.clone().unwrap_or_default();
            let labels: Vec<String> = f
                .scores
                .iter()
                .map(|s| {
                    let mut text = format!(
                        "{} {:.3} {}",
                        s.label,
                        s.score,
                        if s.positive { "POSITIVE" } else { "negative" }
                    );
                    if let (true, Some(peak)) = (s.positive, &s.peak) {
                        text.push_str(&format!(
                            " at pixel (row {:.0}, col {:.0})",
                            peak.row, peak.col
                        ));
                        if let Some(p) = &peak.patient {
                            text.push_str(&format!(
                                " = ({:.1}, {:.1}, {:.1}) mm",
                                p.x_mm, p.y_mm, p.z_mm
                            ));
                        }
                    }
                    text
                })
                .collect();
            let t = f.timings.unwrap_or_default();
            let ms = |a: i64, b: i64| (b - a) as f64 / 1e3;
            Some(format!(
                "slice {:>4}  {} …{}{}  {}{}  [decode {:.1} ms, queue+preprocess({}) {:.1} ms, score {:.1} ms, batch {}]",
                slice.instance_number.map(|n| format!("#{n}")).unwrap_or_else(|| "-".into()),
                slice.modality,
                uid_tail(&slice.sop_instance_uid),
                if slice.frame > 0 { format!(" frame {}", slice.frame) } else { String::new() },
                labels.join("; "),
                window_text(f.window.as_ref()),
                ms(t.received_unix_us, t.decoded_unix_us),
                f.preprocess_path,
                ms(t.decoded_unix_us, t.preprocessed_unix_us),
                ms(t.preprocessed_unix_us, t.scored_unix_us),
                t.batch_size
            ))
        }
        Event::Summary(s) => {
            let mut out = format!(
                "STUDY …{}: {} slices scored, {} instances accepted, {} rejected, {} slices failed, {:.0} ms ({})",
                uid_tail(&s.study_instance_uid),
                s.slices_scored,
                s.instances_accepted,
                s.instances_rejected,
                s.slices_failed,
                s.wall_time_ms,
                pb::CompletionReason::try_from(s.reason)
                    .map(|r| r.as_str_name().trim_start_matches("COMPLETION_REASON_"))
                    .unwrap_or("UNSPECIFIED")
            );
            for l in &s.labels {
                let top = l.top_slice.as_ref();
                out.push_str(&format!(
                    "\n  {}: {} — max {:.3} on slice {} (…{}), {} positive slice(s)",
                    l.label,
                    if l.positive { "POSITIVE" } else { "negative" },
                    l.max_score,
                    top.and_then(|t| t.instance_number)
                        .map(|n| format!("#{n}"))
                        .unwrap_or_else(|| "-".into()),
                    top.map(|t| uid_tail(&t.sop_instance_uid)).unwrap_or("-"),
                    l.positive_slices
                ));
            }
            if let Some(m) = &s.model {
                out.push_str(&format!(
                    "\n  model {} {} (onnx sha256 {})",
                    m.name, m.version, &m.onnx_sha256
                ));
            }
            Some(out)
        }
    }
}

fn slice_json(s: &pb::SliceRef) -> serde_json::Value {
    json!({
        "study_instance_uid": s.study_instance_uid,
        "series_instance_uid": s.series_instance_uid,
        "sop_instance_uid": s.sop_instance_uid,
        "frame": s.frame,
        "instance_number": s.instance_number,
        "slice_position_mm": s.slice_position_mm,
        "modality": s.modality,
    })
}

fn model_json(m: &Option<pb::ModelRef>) -> serde_json::Value {
    m.as_ref().map_or(
        serde_json::Value::Null,
        |m| json!({"name": m.name, "version": m.version, "onnx_sha256": m.onnx_sha256}),
    )
}

/// One JSON object per response, `{"type": ..., ...}`.
pub fn to_json(response: &pb::AnalyzeResponse) -> serde_json::Value {
    match &response.event {
        None => json!({"type": "empty"}),
        Some(Event::Accepted(a)) => json!({
            "type": "accepted",
            "client_ref": a.client_ref,
            "slice": a.slice.as_ref().map(slice_json),
            "frames": a.frames,
        }),
        Some(Event::Rejected(r)) => json!({
            "type": "rejected",
            "client_ref": r.client_ref,
            "sop_instance_uid": r.sop_instance_uid,
            "study_instance_uid": r.study_instance_uid,
            "reason": reason_name(r.reason),
            "message": r.message,
            "frame": r.frame,
        }),
        Some(Event::Finding(f)) => json!({
            "type": "finding",
            "client_ref": f.client_ref,
            "slice": f.slice.as_ref().map(slice_json),
            "model": model_json(&f.model),
            "preprocess_path": f.preprocess_path,
            "window": f.window.as_ref().map(|w| json!({
                "source": window_source_name(w.source),
                "center": w.center,
                "width": w.width,
                "file_window_index": w.file_window_index,
                "file_window_invalid": w.file_window_invalid,
            })),
            "scores": f.scores.iter().map(|s| json!({
                "label": s.label,
                "score": s.score,
                "positive": s.positive,
                "threshold": s.threshold,
                "peak": s.peak.as_ref().map(|p| json!({
                    "row": p.row, "col": p.col,
                    "patient_mm": p.patient.as_ref().map(|q| [q.x_mm, q.y_mm, q.z_mm]),
                })),
                "box": s.bounding_box.as_ref().map(|b| [b.row_min, b.col_min, b.row_max, b.col_max]),
            })).collect::<Vec<_>>(),
            "timings_unix_us": f.timings.as_ref().map(|t| json!({
                "received": t.received_unix_us, "decoded": t.decoded_unix_us,
                "preprocessed": t.preprocessed_unix_us, "scored": t.scored_unix_us, "batch_size": t.batch_size,
            })),
        }),
        Some(Event::Summary(s)) => json!({
            "type": "summary",
            "study_instance_uid": s.study_instance_uid,
            "model": model_json(&s.model),
            "labels": s.labels.iter().map(|l| json!({
                "label": l.label, "max_score": l.max_score, "positive": l.positive,
                "positive_slices": l.positive_slices, "top_slice": l.top_slice.as_ref().map(slice_json),
            })).collect::<Vec<_>>(),
            "slices_scored": s.slices_scored,
            "instances_accepted": s.instances_accepted,
            "instances_rejected": s.instances_rejected,
            "slices_failed": s.slices_failed,
            "wall_time_ms": s.wall_time_ms,
            "reason": pb::CompletionReason::try_from(s.reason).map(|r| r.as_str_name()).unwrap_or("COMPLETION_REASON_UNSPECIFIED"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(window: Option<pb::WindowUsed>) -> pb::AnalyzeResponse {
        pb::AnalyzeResponse {
            event: Some(Event::Finding(pb::SliceFinding {
                slice: Some(pb::SliceRef {
                    sop_instance_uid: "1.2.3.4.5.6.7.8.9.10.11".into(),
                    instance_number: Some(3),
                    modality: "MR".into(),
                    ..Default::default()
                }),
                scores: vec![pb::LabelScore {
                    label: "lesion".into(),
                    score: 0.25,
                    threshold: 0.5,
                    ..Default::default()
                }],
                window,
                ..Default::default()
            })),
        }
    }

    #[test]
    fn wire_refs_are_short_and_map_back_to_the_local_name() {
        let long = format!("/archive/{}/slice.dcm", "deep/".repeat(100));
        let names = vec!["a.dcm".to_string(), long.clone()];
        assert!(wire_ref(1).len() < 8);
        let mut response = finding(None);
        if let Some(Event::Finding(f)) = response.event.as_mut() {
            f.client_ref = wire_ref(1);
        }
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

    #[test]
    fn the_window_used_is_shown_and_serialised() {
        let min_max = pb::WindowUsed {
            source: pb::WindowSource::MinMax as i32,
            center: 442.5,
            width: 885.0,
            file_window_index: None,
            file_window_invalid: true,
        };
        let line = render(&finding(Some(min_max))).expect("a line");
        assert!(
            line.contains("window min/max (file window invalid)"),
            "{line}"
        );
        let json = to_json(&finding(Some(min_max)));
        assert_eq!(json["window"]["source"], "WINDOW_SOURCE_MIN_MAX");
        assert_eq!(json["window"]["file_window_invalid"], true);
        assert_eq!(json["window"]["center"], 442.5);
        assert_eq!(json["window"]["width"], 885.0);
        assert!(json["window"]["file_window_index"].is_null());

        let second = pb::WindowUsed {
            source: pb::WindowSource::File as i32,
            center: 40.0,
            width: 400.0,
            file_window_index: Some(1),
            file_window_invalid: true,
        };
        let line = render(&finding(Some(second))).expect("a line");
        assert!(
            line.contains("window file pair 2 (file window invalid)"),
            "{line}"
        );
        assert_eq!(
            to_json(&finding(Some(second)))["window"]["file_window_index"],
            1
        );

        let first = pb::WindowUsed {
            source: pb::WindowSource::File as i32,
            file_window_index: Some(0),
            ..second
        };
        let first = pb::WindowUsed {
            file_window_invalid: false,
            ..first
        };
        let line = render(&finding(Some(first))).expect("a line");
        assert!(line.contains("window file  ["), "{line}");

        // Colour slices: no window, nothing shown, null in JSON.
        let line = render(&finding(None)).expect("a line");
        assert!(!line.contains("window"), "{line}");
        assert!(to_json(&finding(None))["window"].is_null());
    }
}
