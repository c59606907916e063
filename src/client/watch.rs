//! The viewer behind `radstream watch`: one `Studies.Watch` stream, printed as it arrives — a live
//! terminal view of studies (one line per event, each with the study's progress so far) or one JSON
//! object per event for tools.
//!
//! Progress is counted here, from the events this view was shown, not asked of the server: the view
//! stays a plain reader of the log, and what it shows is exactly what it received (a filtered or
//! late-started view counts only what it saw; the summary line carries the service's own counts).

use std::collections::HashMap;

use tokio_stream::StreamExt;

use super::{render, OutputFormat};
use crate::{
    error::{Error, Result},
    proto::v1::{self as pb, studies_client::StudiesClient},
};

/// Largest watch message accepted (a summary with many groups is the largest, far under this).
const MAX_WATCH_MESSAGE_BYTES: usize = 16 << 20;
/// Studies whose progress the view keeps; past this the least recently active is forgotten (a view left
/// running for weeks must not grow without bound).
const TRACKED_STUDIES: usize = 4096;

/// What to watch and how to print it (the flags of `radstream watch`).
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Only these studies (Study Instance UIDs); empty: all.
    pub studies: Vec<String>,
    /// Replay the log from this sequence number (1: from the start) before following live events.
    pub from: Option<u64>,
    /// Only studies of these modalities; empty: any.
    pub modalities: Vec<String>,
    /// Only findings positive for these labels (and summaries); empty: every event.
    pub labels: Vec<String>,
    pub critical_only: bool,
    /// End once the replay has caught up. Without `from`, the replay starts at 1 (the whole log).
    pub replay_only: bool,
    pub format: OutputFormat,
}

impl WatchOptions {
    pub fn request(&self) -> pb::WatchRequest {
        pb::WatchRequest {
            study_instance_uids: self.studies.clone(),
            from_sequence: match (self.from, self.replay_only) {
                (None, true) => Some(1),
                (from, _) => from,
            },
            modalities: self.modalities.clone(),
            labels: self.labels.clone(),
            only_critical: self.critical_only,
            replay_only: self.replay_only,
        }
    }
}

/// What one watch saw.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WatchReport {
    /// Study events received.
    pub events: u64,
    /// Events the server dropped for this view (the `Missed` counts).
    pub missed: u64,
    /// Sequence of the last study event received.
    pub last_sequence: Option<u64>,
    /// Critical findings received.
    pub critical: u64,
}

/// Per-study progress of the view, bounded to [`TRACKED_STUDIES`].
#[derive(Debug, Default)]
pub struct Tracker {
    studies: HashMap<String, (u64, render::Progress)>,
}

impl Tracker {
    /// Counts `event` into its study and returns the study's progress after it.
    pub fn record(&mut self, event: &pb::StudyEvent) -> render::Progress {
        if !self.studies.contains_key(&event.study_instance_uid)
            && self.studies.len() >= TRACKED_STUDIES
        {
            let oldest = self
                .studies
                .iter()
                .min_by_key(|(_, (last, _))| *last)
                .map(|(uid, _)| uid.clone());
            if let Some(uid) = oldest {
                self.studies.remove(&uid);
            }
        }
        let (last, progress) = self
            .studies
            .entry(event.study_instance_uid.clone())
            .or_default();
        *last = event.sequence;
        if let Some(e) = &event.event {
            progress.record(e);
        }
        *progress
    }
}

/// Opens `Studies.Watch` on `endpoint` and hands every event to `on_event` until the server ends the
/// stream (with `replay_only`, once the replay has caught up). An unreachable server is
/// [`Error::Connect`]; a stream the server ends with an error is [`Error::Stream`].
pub async fn watch(
    target: impl Into<super::Target>,
    options: &WatchOptions,
    mut on_event: impl FnMut(&pb::WatchEvent),
) -> Result<WatchReport> {
    let target: super::Target = target.into();
    let endpoint = target.endpoint.as_str();
    let channel = super::connect(&target).await?;
    let mut client = StudiesClient::new(channel).max_decoding_message_size(MAX_WATCH_MESSAGE_BYTES);
    let mut stream = match client.watch(options.request()).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => {
            return Err(Error::Connect {
                endpoint: endpoint.to_string(),
                detail:
                    "the service there does not offer Studies.Watch (a radstream before issue 11?)"
                        .into(),
            })
        }
        Err(status) => return Err(status.into()),
    };
    let mut report = WatchReport::default();
    while let Some(event) = stream.next().await {
        let event = event?;
        match &event.kind {
            Some(pb::watch_event::Kind::Event(e)) => {
                report.events += 1;
                report.last_sequence = Some(e.sequence);
                if matches!(e.event, Some(pb::study_event::Event::Critical(_))) {
                    report.critical += 1;
                }
            }
            Some(pb::watch_event::Kind::Missed(m)) => report.missed += m.count,
            Some(pb::watch_event::Kind::CaughtUp(_)) | None => {}
        }
        on_event(&event);
    }
    Ok(report)
}

/// [`watch`] printing every event to stdout: readable lines with progress (colours on a terminal), or
/// one JSON object per event.
pub async fn watch_and_print(
    target: impl Into<super::Target>,
    options: WatchOptions,
) -> Result<WatchReport> {
    let style = render::Style::for_stdout();
    let mut tracker = Tracker::default();
    // Counts need every event of a study: a label or critical-only filter hides most of them.
    let counted = options.labels.is_empty() && !options.critical_only;
    watch(target, &options, |event| {
        let line = match options.format {
            OutputFormat::Json => super::proto_json(event),
            OutputFormat::Readable => {
                let progress = match &event.kind {
                    Some(pb::watch_event::Kind::Event(e)) if counted => Some(tracker.record(e)),
                    _ => None,
                };
                render::watch_text(event, progress.as_ref(), options.replay_only, style)
            }
        };
        if let Some(line) = line {
            super::print_line(&line);
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(sequence: u64, study: &str) -> pb::StudyEvent {
        pb::StudyEvent {
            sequence,
            study_instance_uid: study.into(),
            event: Some(pb::study_event::Event::Accepted(pb::InstanceAccepted {
                frames: 1,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn progress_is_kept_per_study_and_bounded() {
        let mut tracker = Tracker::default();
        assert_eq!(tracker.record(&accepted(1, "a")).accepted, 1);
        assert_eq!(tracker.record(&accepted(2, "b")).accepted, 1);
        assert_eq!(tracker.record(&accepted(3, "a")).accepted, 2);
        for i in 0..TRACKED_STUDIES as u64 {
            tracker.record(&accepted(10 + i, &format!("s{i}")));
        }
        assert_eq!(tracker.studies.len(), TRACKED_STUDIES);
        // "a" and "b" were the least recently active: forgotten, counted afresh.
        assert_eq!(tracker.record(&accepted(99_999, "a")).accepted, 1);
        assert!(!tracker.studies.contains_key("b"));
    }

    #[test]
    fn replay_only_without_from_replays_the_whole_log() {
        let options = WatchOptions {
            replay_only: true,
            ..Default::default()
        };
        assert_eq!(options.request().from_sequence, Some(1));
        let live = WatchOptions::default();
        assert_eq!(live.request().from_sequence, None);
        let from = WatchOptions {
            from: Some(40),
            replay_only: true,
            critical_only: true,
            studies: vec!["1.2.3".into()],
            ..Default::default()
        };
        let request = from.request();
        assert_eq!(request.from_sequence, Some(40));
        assert!(request.only_critical && request.replay_only);
        assert_eq!(request.study_instance_uids, ["1.2.3"]);
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let endpoint = format!("http://127.0.0.1:{port}");
        let err = watch(&endpoint, &WatchOptions::default(), |_| {})
            .await
            .expect_err("nothing listens there");
        assert!(matches!(err, Error::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&endpoint), "{err}");
    }
}
