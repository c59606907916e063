//! The readable output of `push` and `watch`: one line per event, written for a person watching a
//! terminal. What must not be missed stands out: critical findings are red and bold on a terminal and
//! always start with `!! CRITICAL` (so they survive a pipe, a log file or a colour-blind reader);
//! positive findings are bold, negative ones compact. Full UIDs and every field are in `--json`.

use std::io::IsTerminal;

use crate::proto::v1::{self as pb, analyze_response::Event};

use crate::results::json::{completion_reason_name, reject_reason_name};

/// Whether lines get ANSI colours: only on a terminal, and never with `NO_COLOR` set (no-color.org).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    pub color: bool,
}

impl Style {
    pub const PLAIN: Style = Style { color: false };
    pub const ANSI: Style = Style { color: true };

    pub fn for_stdout() -> Self {
        Style {
            color: std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Red and bold.
    pub fn critical(&self, text: &str) -> String {
        self.paint("1;31", text)
    }

    /// Bold.
    pub fn positive(&self, text: &str) -> String {
        self.paint("1", text)
    }

    /// Yellow and bold.
    pub fn warning(&self, text: &str) -> String {
        self.paint("1;33", text)
    }

    /// Dim.
    pub fn quiet(&self, text: &str) -> String {
        self.paint("2", text)
    }
}

/// The last `n` characters of `uid` (the end is what tells UIDs of one study apart on screen).
fn tail(uid: &str, n: usize) -> &str {
    let cut = uid
        .char_indices()
        .rev()
        .nth(n - 1)
        .map(|(i, _)| i)
        .unwrap_or(0);
    &uid[cut..]
}

/// A SOP Instance UID on screen: its last 10 characters.
pub(crate) fn uid_tail(uid: &str) -> &str {
    tail(uid, 10)
}

/// A study on screen: `…` and its last 12 characters, or the whole UID when it is that short.
pub fn short_study(uid: &str) -> String {
    let end = tail(uid, 12);
    if end.len() == uid.len() {
        uid.to_string()
    } else {
        format!("…{end}")
    }
}

/// `#5`, `#5 frame 2`, or `…<sop tail>` when the slice has no InstanceNumber.
fn slice_name(slice: Option<&pb::SliceRef>) -> String {
    let Some(s) = slice else {
        return "-".into();
    };
    let mut name = match s.instance_number {
        Some(n) => format!("#{n}"),
        None => format!("…{}", uid_tail(&s.sop_instance_uid)),
    };
    if s.frame > 0 {
        name.push_str(&format!(" frame {}", s.frame));
    }
    name
}

fn peak_text(peak: Option<&pb::Location>) -> String {
    let Some(peak) = peak else {
        return String::new();
    };
    let mut text = format!(" at pixel (row {:.0}, col {:.0})", peak.row, peak.col);
    if let Some(p) = &peak.patient {
        text.push_str(&format!(
            " = ({:.1}, {:.1}, {:.1}) mm",
            p.x_mm, p.y_mm, p.z_mm
        ));
    }
    text
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

/// `!! CRITICAL lesion 0.973 >= 0.900 on slice #6 at pixel (…) (revision 1)`, red and bold with colour.
pub fn critical_text(c: &pb::CriticalFinding, style: Style) -> String {
    style.critical(&format!(
        "!! CRITICAL {} {:.3} >= {:.3} on slice {}{} (revision {})",
        c.label,
        c.score,
        c.critical_threshold,
        slice_name(c.slice.as_ref()),
        peak_text(c.peak.as_ref()),
        c.revision
    ))
}

/// `DUPLICATE <ref>: already received, earlier findings re-sent` for a re-sent instance.
pub fn duplicate_text(a: &pb::InstanceAccepted) -> String {
    let name = if a.client_ref.is_empty() {
        slice_name(a.slice.as_ref())
    } else {
        a.client_ref.clone()
    };
    format!("DUPLICATE {name}: already received, earlier findings re-sent")
}

fn rejected_text(r: &pb::InstanceRejected, name: &str) -> String {
    format!(
        "REJECTED  {name}{}  {}: {}",
        r.frame.map(|f| format!(" frame {f}")).unwrap_or_default(),
        reject_reason_name(r.reason).trim_start_matches("REJECT_REASON_"),
        r.message
    )
}

/// A finding as `push` prints it: every label, its peak when positive, the window and the stage times.
fn finding_text(f: &pb::SliceFinding, style: Style) -> String {
    let slice = f.slice.clone().unwrap_or_default();
    let labels: Vec<String> = f
        .scores
        .iter()
        .map(|s| {
            if s.positive {
                style.positive(&format!(
                    "{} {:.3} POSITIVE{}",
                    s.label,
                    s.score,
                    peak_text(s.peak.as_ref())
                ))
            } else {
                format!("{} {:.3} negative", s.label, s.score)
            }
        })
        .collect();
    let t = f.timings.unwrap_or_default();
    let ms = |a: i64, b: i64| (b - a) as f64 / 1e3;
    format!(
        "{}slice {:>4}  {} …{}{}  {}{}  [decode {:.1} ms, queue+preprocess({}) {:.1} ms, score {:.1} ms, batch {}]",
        if f.resent { "(resent) " } else { "" },
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
    )
}

/// `4 slices #5–#8, 10.0 mm, max 0.970 on #6`.
fn group_text(g: &pb::SliceGroup) -> String {
    format!(
        "{} slice{} {}–{}{}, max {:.3} on {}",
        g.slices,
        if g.slices == 1 { "" } else { "s" },
        slice_name(g.first.as_ref()),
        slice_name(g.last.as_ref()),
        g.extent_mm
            .map(|mm| format!(", {mm:.1} mm"))
            .unwrap_or_default(),
        g.max_score,
        slice_name(g.peak.as_ref()),
    )
}

/// The per-label lines of a summary (each starting with a newline and `indent`), then the model; first,
/// when the study is outside the model's study-level rules, a line that says so.
fn summary_details(s: &pb::StudySummary, style: Style, indent: &str) -> String {
    let mut out = String::new();
    if !s.outside_model_rules.is_empty() {
        out.push_str(&format!(
            "\n{indent}{}",
            style.warning(&format!("OUTSIDE MODEL RULES: {}", s.outside_model_rules))
        ));
    }
    for l in &s.labels {
        let verdict = if l.positive {
            style.positive("POSITIVE")
        } else {
            "negative".to_string()
        };
        out.push_str(&format!(
            "\n{indent}{}: {verdict} — max {:.3} on slice {} (…{}), {} positive slice(s)",
            l.label,
            l.max_score,
            slice_name(l.top_slice.as_ref()),
            l.top_slice
                .as_ref()
                .map(|t| uid_tail(&t.sop_instance_uid))
                .unwrap_or("-"),
            l.positive_slices
        ));
        if l.critical {
            let threshold = l
                .critical_threshold
                .map(|t| format!(" (>= {t:.3})"))
                .unwrap_or_default();
            out.push_str(&format!(
                ", {}",
                style.critical(&format!("!! CRITICAL{threshold}"))
            ));
        }
        for g in &l.groups {
            out.push_str(&format!("\n{indent}  group: {}", group_text(g)));
        }
    }
    if let Some(m) = &s.model {
        out.push_str(&format!(
            "\n{indent}model {} {} (onnx sha256 {})",
            m.name, m.version, &m.onnx_sha256
        ));
    }
    out
}

fn summary_head(s: &pb::StudySummary) -> String {
    format!(
        "revision {}: {} slices scored, {} instances accepted, {} rejected, {} slices failed, {} series, {:.0} ms ({})",
        s.revision,
        s.slices_scored,
        s.instances_accepted,
        s.instances_rejected,
        s.slices_failed,
        s.series,
        s.wall_time_ms,
        completion_reason_name(s.reason).trim_start_matches("COMPLETION_REASON_")
    )
}

/// One readable line per `Analyze` response, as `push` prints it. Plain acceptances are shown only
/// through the progress bar; a duplicate one gets its line.
pub fn render(response: &pb::AnalyzeResponse, style: Style) -> Option<String> {
    match response.event.as_ref()? {
        Event::Accepted(a) if a.duplicate => Some(duplicate_text(a)),
        Event::Accepted(_) => None,
        Event::Critical(c) => Some(critical_text(c, style)),
        Event::Rejected(r) => Some(rejected_text(r, &r.client_ref)),
        Event::Finding(f) => Some(finding_text(f, style)),
        Event::Summary(s) => Some(format!(
            "STUDY {} {}{}",
            short_study(&s.study_instance_uid),
            summary_head(s),
            summary_details(s, style, "  ")
        )),
    }
}

/// What a viewer has seen of one study so far, counted from the events it was shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Instances accepted (duplicates not counted again).
    pub accepted: u32,
    /// Instances rejected (a single frame's rejection does not count: its instance was accepted).
    pub rejected: u32,
    /// Slices scored (re-sent findings not counted again).
    pub scored: u32,
}

impl Progress {
    /// Counts `event` in.
    pub fn record(&mut self, event: &pb::study_event::Event) {
        use pb::study_event::Event as E;
        match event {
            E::Accepted(a) if !a.duplicate => self.accepted += 1,
            E::Rejected(r) if r.frame.is_none() => self.rejected += 1,
            E::Finding(f) if !f.resent => self.scored += 1,
            _ => {}
        }
    }

    fn text(&self) -> String {
        format!(
            "[{:>3} acc {:>2} rej {:>3} scored]",
            self.accepted, self.rejected, self.scored
        )
    }
}

/// The body of a watched study event (after sequence, study and progress).
fn study_event_body(event: &pb::study_event::Event, style: Style) -> String {
    use pb::study_event::Event as E;
    match event {
        E::Accepted(a) if a.duplicate => format!(
            "DUPLICATE {} …{}: already received, earlier findings re-sent",
            slice_name(a.slice.as_ref()),
            a.slice
                .as_ref()
                .map(|s| uid_tail(&s.sop_instance_uid))
                .unwrap_or("-")
        ),
        E::Accepted(a) => format!(
            "accepted {} …{}{}",
            slice_name(a.slice.as_ref()),
            a.slice
                .as_ref()
                .map(|s| uid_tail(&s.sop_instance_uid))
                .unwrap_or("-"),
            if a.frames > 1 {
                format!(" ({} frames)", a.frames)
            } else {
                String::new()
            }
        ),
        E::Rejected(r) => rejected_text(r, &format!("…{}", uid_tail(&r.sop_instance_uid))),
        E::Finding(f) => {
            let resent = if f.resent { " (resent)" } else { "" };
            let slice = slice_name(f.slice.as_ref());
            let positive: Vec<String> = f
                .scores
                .iter()
                .filter(|s| s.positive)
                .map(|s| {
                    format!(
                        "{} {:.3} POSITIVE{}",
                        s.label,
                        s.score,
                        peak_text(s.peak.as_ref())
                    )
                })
                .collect();
            let negative: Vec<String> = f
                .scores
                .iter()
                .filter(|s| !s.positive)
                .map(|s| format!("{} {:.2}", s.label, s.score))
                .collect();
            if positive.is_empty() {
                style.quiet(&format!(
                    "slice {slice} neg ({}){resent}",
                    negative.join(", ")
                ))
            } else {
                let mut text = style.positive(&format!(
                    "FINDING slice {slice}: {}{resent}",
                    positive.join("; ")
                ));
                if !negative.is_empty() {
                    text.push_str(&format!(" (neg {})", negative.join(", ")));
                }
                text
            }
        }
        E::Critical(c) => critical_text(c, Style::PLAIN),
        E::Summary(s) => format!("SUMMARY {}", summary_head(s)),
    }
}

/// One watched event as readable line(s). `progress` is the study's count after this event (none: not
/// shown, e.g. when a filter hides the events it counts); `ending` says the stream ends after catching
/// up (replay only), so the separator does not announce "live".
pub fn watch_text(
    event: &pb::WatchEvent,
    progress: Option<&Progress>,
    ending: bool,
    style: Style,
) -> Option<String> {
    use pb::watch_event::Kind;
    match event.kind.as_ref()? {
        Kind::Missed(m) => Some(style.warning(&format!(
            "WARNING missed {} event(s), sequence {}–{} (this view read too slowly): re-read them with `radstream watch --from {}`",
            m.count, m.first_sequence, m.last_sequence, m.first_sequence
        ))),
        Kind::CaughtUp(c) if ending => Some(format!(
            "— end of replay (log at sequence {}) —",
            c.sequence
        )),
        Kind::CaughtUp(_) => Some("— live —".to_string()),
        Kind::Event(e) => {
            let inner = e.event.as_ref()?;
            let line = format!(
                "{:>6}  {:<13}  {:<3} {}{}",
                e.sequence,
                short_study(&e.study_instance_uid),
                e.modality,
                progress
                    .map(|p| format!("{}  ", p.text()))
                    .unwrap_or_default(),
                study_event_body(inner, style)
            );
            Some(match inner {
                pb::study_event::Event::Critical(_) => style.critical(&line),
                pb::study_event::Event::Summary(s) => {
                    format!("{line}{}", summary_details(s, style, "          "))
                }
                _ => line,
            })
        }
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

    fn slice(n: i32) -> pb::SliceRef {
        pb::SliceRef {
            study_instance_uid: "1.2.826.0.1.3680043.8.498.12345678901234".into(),
            sop_instance_uid: format!("1.2.826.0.1.3680043.8.498.99.{n}"),
            instance_number: Some(n),
            slice_position_mm: Some(f64::from(n) * 2.5),
            modality: "CT".into(),
            ..Default::default()
        }
    }

    fn critical() -> pb::CriticalFinding {
        pb::CriticalFinding {
            study_instance_uid: "1.2.826.0.1.3680043.8.498.12345678901234".into(),
            label: "lesion".into(),
            score: 0.973,
            critical_threshold: 0.9,
            slice: Some(slice(6)),
            revision: 2,
            ..Default::default()
        }
    }

    fn summary() -> pb::StudySummary {
        pb::StudySummary {
            study_instance_uid: "1.2.826.0.1.3680043.8.498.12345678901234".into(),
            labels: vec![pb::LabelSummary {
                label: "lesion".into(),
                max_score: 0.973,
                top_slice: Some(slice(6)),
                positive: true,
                positive_slices: 4,
                groups: vec![pb::SliceGroup {
                    first: Some(slice(5)),
                    last: Some(slice(8)),
                    peak: Some(slice(6)),
                    max_score: 0.973,
                    slices: 4,
                    extent_mm: Some(10.0),
                    ..Default::default()
                }],
                critical_threshold: Some(0.9),
                critical: true,
                ..Default::default()
            }],
            slices_scored: 12,
            instances_accepted: 12,
            revision: 3,
            series: 1,
            reason: pb::CompletionReason::EndOfStudy as i32,
            ..Default::default()
        }
    }

    fn watched(sequence: u64, event: pb::study_event::Event) -> pb::WatchEvent {
        pb::WatchEvent {
            kind: Some(pb::watch_event::Kind::Event(pb::StudyEvent {
                sequence,
                study_instance_uid: "1.2.826.0.1.3680043.8.498.12345678901234".into(),
                study_sequence: sequence,
                modality: "CT".into(),
                event: Some(event),
                ..Default::default()
            })),
        }
    }

    #[test]
    fn a_study_is_shown_by_the_end_of_its_uid() {
        assert_eq!(
            short_study("1.2.826.0.1.3680043.8.498.12345678901234"),
            "…345678901234"
        );
        assert_eq!(short_study("1.2.3"), "1.2.3");
        assert_eq!(short_study("123456789012"), "123456789012");
        assert_eq!(short_study("0123456789012"), "…123456789012");
    }

    #[test]
    fn critical_findings_stand_out_on_a_terminal_and_in_a_pipe() {
        let plain = critical_text(&critical(), Style::PLAIN);
        assert_eq!(
            plain,
            "!! CRITICAL lesion 0.973 >= 0.900 on slice #6 (revision 2)"
        );
        let ansi = critical_text(&critical(), Style::ANSI);
        assert_eq!(ansi, format!("\x1b[1;31m{plain}\x1b[0m"));

        // push: the response line; watch: the whole line, prefix included, red and bold.
        let response = pb::AnalyzeResponse {
            event: Some(Event::Critical(critical())),
        };
        assert_eq!(
            render(&response, Style::PLAIN).as_deref(),
            Some(plain.as_str())
        );
        let event = watched(17, pb::study_event::Event::Critical(critical()));
        let line = watch_text(&event, None, false, Style::ANSI).expect("a line");
        assert!(
            line.starts_with("\x1b[1;31m    17  …345678901234"),
            "{line:?}"
        );
        assert!(line.ends_with("(revision 2)\x1b[0m"), "{line:?}");
        let line = watch_text(&event, None, false, Style::PLAIN).expect("a line");
        assert!(!line.contains('\x1b'), "{line:?}");
        assert!(
            !line.contains(" acc "),
            "no progress column without progress: {line:?}"
        );
        assert!(line.contains("!! CRITICAL lesion 0.973"), "{line:?}");
    }

    #[test]
    fn summaries_show_their_revision_groups_and_critical_labels() {
        let response = pb::AnalyzeResponse {
            event: Some(Event::Summary(summary())),
        };
        let text = render(&response, Style::PLAIN).expect("a line");
        assert!(
            text.starts_with("STUDY …345678901234 revision 3: 12 slices scored"),
            "{text}"
        );
        assert!(text.contains("(END_OF_STUDY)"), "{text}");
        assert!(
            text.contains("lesion: POSITIVE — max 0.973 on slice #6"),
            "{text}"
        );
        assert!(text.contains("!! CRITICAL (>= 0.900)"), "{text}");
        assert!(
            text.contains("\n    group: 4 slices #5–#8, 10.0 mm, max 0.973 on #6"),
            "{text}"
        );

        let event = watched(40, pb::study_event::Event::Summary(summary()));
        let progress = Progress {
            accepted: 12,
            rejected: 0,
            scored: 12,
        };
        let text = watch_text(&event, Some(&progress), false, Style::PLAIN).expect("a line");
        let first = text.lines().next().unwrap_or_default();
        assert!(
            first.contains("[ 12 acc  0 rej  12 scored]  SUMMARY revision 3:"),
            "{text}"
        );
        assert!(text.contains("group: 4 slices #5–#8, 10.0 mm"), "{text}");

        // A group without positions has no extent.
        let mut no_position = summary();
        no_position.labels[0].groups[0].extent_mm = None;
        let text = render(
            &pb::AnalyzeResponse {
                event: Some(Event::Summary(no_position)),
            },
            Style::PLAIN,
        )
        .expect("a line");
        assert!(text.contains("group: 4 slices #5–#8, max 0.973"), "{text}");
    }

    #[test]
    fn a_study_outside_the_models_rules_says_so_under_its_study_line() {
        let note = "the study has 12 slices; model m 1 is for 20..=400 (applies_to.slices)";
        let outside = pb::StudySummary {
            outside_model_rules: note.into(),
            ..summary()
        };
        let text = render(
            &pb::AnalyzeResponse {
                event: Some(Event::Summary(outside.clone())),
            },
            Style::PLAIN,
        )
        .expect("a line");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("STUDY "), "{text}");
        assert_eq!(lines[1], format!("  OUTSIDE MODEL RULES: {note}"), "{text}");
        let event = watched(41, pb::study_event::Event::Summary(outside));
        let text = watch_text(&event, None, false, Style::PLAIN).expect("a line");
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("SUMMARY revision 3"), "{text}");
        assert_eq!(
            lines[1].trim(),
            format!("OUTSIDE MODEL RULES: {note}"),
            "{text}"
        );
        // a study that fits shows no such line
        let text = render(
            &pb::AnalyzeResponse {
                event: Some(Event::Summary(summary())),
            },
            Style::PLAIN,
        )
        .expect("a line");
        assert!(!text.contains("OUTSIDE"), "{text}");
    }

    #[test]
    fn duplicates_and_resent_findings_are_marked() {
        let duplicate = pb::AnalyzeResponse {
            event: Some(Event::Accepted(pb::InstanceAccepted {
                client_ref: "study/slice-05.dcm".into(),
                slice: Some(slice(5)),
                frames: 1,
                duplicate: true,
                models: Vec::new(),
            })),
        };
        assert_eq!(
            render(&duplicate, Style::PLAIN).as_deref(),
            Some("DUPLICATE study/slice-05.dcm: already received, earlier findings re-sent")
        );
        let fresh = pb::AnalyzeResponse {
            event: Some(Event::Accepted(pb::InstanceAccepted {
                duplicate: false,
                ..match duplicate.event.clone() {
                    Some(Event::Accepted(a)) => a,
                    _ => unreachable!(),
                }
            })),
        };
        assert_eq!(render(&fresh, Style::PLAIN), None);

        let mut resent = finding(None);
        if let Some(Event::Finding(f)) = resent.event.as_mut() {
            f.resent = true;
        }
        let line = render(&resent, Style::PLAIN).expect("a line");
        assert!(line.starts_with("(resent) slice   #3"), "{line}");
    }

    #[test]
    fn watch_lines_count_progress_and_keep_negatives_compact() {
        use pb::study_event::Event as E;
        let mut progress = Progress::default();
        let positive = pb::SliceFinding {
            slice: Some(slice(6)),
            scores: vec![pb::LabelScore {
                label: "lesion".into(),
                score: 0.973,
                positive: true,
                peak: Some(pb::Location {
                    row: 30.0,
                    col: 40.0,
                    patient: None,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let negative = pb::SliceFinding {
            slice: Some(slice(2)),
            scores: vec![pb::LabelScore {
                label: "lesion".into(),
                score: 0.12,
                ..Default::default()
            }],
            ..Default::default()
        };
        let events = [
            E::Accepted(pb::InstanceAccepted {
                slice: Some(slice(2)),
                frames: 1,
                ..Default::default()
            }),
            E::Accepted(pb::InstanceAccepted {
                slice: Some(slice(2)),
                frames: 1,
                duplicate: true,
                ..Default::default()
            }),
            E::Rejected(pb::InstanceRejected {
                sop_instance_uid: "1.2.3.9".into(),
                reason: pb::RejectReason::MissingPixelData as i32,
                message: "no pixel data".into(),
                ..Default::default()
            }),
            E::Finding(negative.clone()),
            E::Finding(pb::SliceFinding {
                resent: true,
                ..negative
            }),
            E::Finding(positive),
        ];
        let lines: Vec<String> = events
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                progress.record(&e);
                watch_text(
                    &watched(i as u64 + 1, e),
                    Some(&progress),
                    false,
                    Style::PLAIN,
                )
                .expect("a line")
            })
            .collect();
        assert!(
            lines[0].ends_with("[  1 acc  0 rej   0 scored]  accepted #2 …8.498.99.2"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].contains("[  1 acc  0 rej   0 scored]  DUPLICATE #2"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("[  1 acc  1 rej   0 scored]  REJECTED  …1.2.3.9  MISSING_PIXEL_DATA: no pixel data"),
            "{}",
            lines[2]
        );
        assert!(
            lines[3].ends_with("[  1 acc  1 rej   1 scored]  slice #2 neg (lesion 0.12)"),
            "{}",
            lines[3]
        );
        assert!(
            lines[4].ends_with("1 scored]  slice #2 neg (lesion 0.12) (resent)"),
            "{}",
            lines[4]
        );
        assert!(
            lines[5].ends_with("[  1 acc  1 rej   2 scored]  FINDING slice #6: lesion 0.973 POSITIVE at pixel (row 30, col 40)"),
            "{}",
            lines[5]
        );
        assert!(
            lines[0].starts_with("     1  …345678901234  CT  "),
            "{}",
            lines[0]
        );
        // Positive findings are bold on a terminal, negatives dim.
        let e = watched(
            6,
            E::Finding(pb::SliceFinding {
                slice: Some(slice(6)),
                scores: vec![pb::LabelScore {
                    label: "lesion".into(),
                    score: 0.97,
                    positive: true,
                    ..Default::default()
                }],
                ..Default::default()
            }),
        );
        assert!(watch_text(&e, None, false, Style::ANSI)
            .expect("line")
            .contains("\x1b[1mFINDING slice #6"));
    }

    #[test]
    fn missed_and_caught_up_read_as_warning_and_separator() {
        let missed = pb::WatchEvent {
            kind: Some(pb::watch_event::Kind::Missed(pb::Missed {
                count: 37,
                first_sequence: 100,
                last_sequence: 136,
            })),
        };
        let line = watch_text(&missed, None, false, Style::PLAIN).expect("a line");
        assert!(
            line.starts_with("WARNING missed 37 event(s), sequence 100–136"),
            "{line}"
        );
        assert!(line.ends_with("`radstream watch --from 100`"), "{line}");
        let caught_up = pb::WatchEvent {
            kind: Some(pb::watch_event::Kind::CaughtUp(pb::CaughtUp {
                sequence: 99,
            })),
        };
        assert_eq!(
            watch_text(&caught_up, None, false, Style::PLAIN).as_deref(),
            Some("— live —")
        );
        assert_eq!(
            watch_text(&caught_up, None, true, Style::PLAIN).as_deref(),
            Some("— end of replay (log at sequence 99) —")
        );
    }

    #[test]
    fn the_window_used_is_shown() {
        let min_max = pb::WindowUsed {
            source: pb::WindowSource::MinMax as i32,
            center: 442.5,
            width: 885.0,
            file_window_index: None,
            file_window_invalid: true,
        };
        let line = render(&finding(Some(min_max)), Style::PLAIN).expect("a line");
        assert!(
            line.contains("window min/max (file window invalid)"),
            "{line}"
        );
        let second = pb::WindowUsed {
            source: pb::WindowSource::File as i32,
            center: 40.0,
            width: 400.0,
            file_window_index: Some(1),
            file_window_invalid: true,
        };
        let line = render(&finding(Some(second)), Style::PLAIN).expect("a line");
        assert!(
            line.contains("window file pair 2 (file window invalid)"),
            "{line}"
        );
        let first = pb::WindowUsed {
            file_window_index: Some(0),
            file_window_invalid: false,
            ..second
        };
        let line = render(&finding(Some(first)), Style::PLAIN).expect("a line");
        assert!(line.contains("window file  ["), "{line}");
        // Colour slices: no window, nothing shown.
        let line = render(&finding(None), Style::PLAIN).expect("a line");
        assert!(!line.contains("window"), "{line}");
    }
}
