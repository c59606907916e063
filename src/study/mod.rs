//! Per-study bookkeeping: which slices of a study are still being scored, the running per-label maxima,
//! and when the study is complete. A study is complete when nothing of it is still in flight and either
//! the client said so (EndOfStudy), the stream closed, or no instance arrived for the idle timeout.
//! The tracker is plain data driven by the stream that owns it, so completion is deterministic and
//! testable without a clock (callers pass `now`).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Where a slice sits: the identifiers every finding is tied to.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceId {
    pub study_instance_uid: String,
    pub series_instance_uid: String,
    pub sop_instance_uid: String,
    pub frame: u32,
    pub instance_number: Option<i32>,
    pub slice_position_mm: Option<f64>,
    pub modality: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    EndOfStudy,
    Idle,
    StreamClosed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LabelSummary {
    pub label: String,
    pub max_score: f32,
    pub top_slice: Option<SliceId>,
    pub positive: bool,
    pub positive_slices: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StudySummary {
    pub study_instance_uid: String,
    pub labels: Vec<LabelSummary>,
    pub slices_scored: u32,
    pub instances_accepted: u32,
    pub instances_rejected: u32,
    pub slices_failed: u32,
    pub wall_time: Duration,
    pub reason: Completion,
}

#[derive(Debug)]
struct StudyState {
    first_received: Instant,
    last_activity: Instant,
    last_scored: Option<Instant>,
    accepted: u32,
    rejected: u32,
    pending_slices: u32,
    scored: u32,
    failed: u32,
    end_requested: bool,
    best: Vec<Option<(f32, SliceId)>>,
    positives: Vec<u32>,
}

/// Tracks the open studies of one stream.
#[derive(Debug)]
pub struct StudyTracker {
    /// (label, threshold) in manifest order.
    labels: Vec<(String, f32)>,
    studies: HashMap<String, StudyState>,
}

impl StudyTracker {
    pub fn new(labels: Vec<(String, f32)>) -> Self {
        Self {
            labels,
            studies: HashMap::new(),
        }
    }

    fn state(&mut self, study: &str, now: Instant) -> &mut StudyState {
        Self::entry(&mut self.studies, self.labels.len(), study, now)
    }

    /// The open study `study` (created on first sight), marked active at `now`. A function of the map
    /// alone so callers can hold the label list at the same time.
    fn entry<'a>(
        studies: &'a mut HashMap<String, StudyState>,
        n: usize,
        study: &str,
        now: Instant,
    ) -> &'a mut StudyState {
        let state = studies
            .entry(study.to_string())
            .or_insert_with(|| StudyState {
                first_received: now,
                last_activity: now,
                last_scored: None,
                accepted: 0,
                rejected: 0,
                pending_slices: 0,
                scored: 0,
                failed: 0,
                end_requested: false,
                best: vec![None; n],
                positives: vec![0; n],
            });
        state.last_activity = now;
        state
    }

    /// An instance of `study` was decoded and its `frames` slices queued for scoring.
    pub fn accepted(&mut self, study: &str, frames: u32, now: Instant) {
        let s = self.state(study, now);
        s.accepted += 1;
        s.pending_slices += frames;
    }

    /// An instance of `study` was rejected before scoring.
    pub fn rejected(&mut self, study: &str, now: Instant) {
        self.state(study, now).rejected += 1;
    }

    /// A slice was scored: `scores` in manifest label order.
    pub fn scored(&mut self, slice: &SliceId, scores: &[f32], now: Instant) {
        let s = Self::entry(
            &mut self.studies,
            self.labels.len(),
            &slice.study_instance_uid,
            now,
        );
        s.pending_slices = s.pending_slices.saturating_sub(1);
        s.scored += 1;
        s.last_scored = Some(now);
        for (i, ((_, threshold), score)) in self.labels.iter().zip(scores).enumerate() {
            if *score >= *threshold {
                s.positives[i] += 1;
            }
            let better = match &s.best[i] {
                None => true,
                Some((best, _)) => *score > *best,
            };
            if better {
                s.best[i] = Some((*score, slice.clone()));
            }
        }
    }

    /// A queued slice failed after acceptance (preprocessing or inference).
    pub fn failed(&mut self, study: &str, now: Instant) {
        let s = self.state(study, now);
        s.pending_slices = s.pending_slices.saturating_sub(1);
        s.failed += 1;
    }

    /// The client declared the study ended. Unknown studies are recorded so a summary still follows.
    pub fn end_requested(&mut self, study: &str, now: Instant) {
        self.state(study, now).end_requested = true;
    }

    pub fn open_studies(&self) -> usize {
        self.studies.len()
    }

    /// Removes and summarises every study that is complete. `undecoded` is the number of instances of
    /// this stream still being decoded (their study is not known yet): while any exist, nothing completes
    /// on idle or end-of-study, so a summary never overtakes an instance sent before the end marker.
    pub fn take_complete(
        &mut self,
        now: Instant,
        idle_timeout: Duration,
        stream_closed: bool,
        undecoded: usize,
    ) -> Vec<StudySummary> {
        if undecoded > 0 {
            return Vec::new();
        }
        let mut done: Vec<(String, Completion)> = self
            .studies
            .iter()
            .filter(|(_, s)| s.pending_slices == 0)
            .filter_map(|(uid, s)| {
                let reason = if s.end_requested {
                    Completion::EndOfStudy
                } else if stream_closed {
                    Completion::StreamClosed
                } else if now.saturating_duration_since(s.last_activity) >= idle_timeout {
                    Completion::Idle
                } else {
                    return None;
                };
                Some((uid.clone(), reason))
            })
            .collect();
        done.sort_by(|a, b| a.0.cmp(&b.0));
        done.into_iter()
            .filter_map(|(uid, reason)| {
                let s = self.studies.remove(&uid)?;
                Some(self.summarise(uid, s, reason))
            })
            .collect()
    }

    fn summarise(&self, study: String, s: StudyState, reason: Completion) -> StudySummary {
        let labels = self
            .labels
            .iter()
            .zip(s.best)
            .zip(s.positives)
            .map(|(((label, threshold), best), positive_slices)| {
                let (max_score, top_slice) = match best {
                    Some((score, slice)) => (score, Some(slice)),
                    None => (0.0, None),
                };
                LabelSummary {
                    label: label.clone(),
                    max_score,
                    top_slice,
                    positive: top_slice_positive(max_score, *threshold, s.scored),
                    positive_slices,
                }
            })
            .collect();
        StudySummary {
            study_instance_uid: study,
            labels,
            slices_scored: s.scored,
            instances_accepted: s.accepted,
            instances_rejected: s.rejected,
            slices_failed: s.failed,
            wall_time: s
                .last_scored
                .unwrap_or(s.last_activity)
                .saturating_duration_since(s.first_received),
            reason,
        }
    }
}

fn top_slice_positive(max_score: f32, threshold: f32, scored: u32) -> bool {
    scored > 0 && max_score >= threshold
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(study: &str, sop: &str, n: i32) -> SliceId {
        SliceId {
            study_instance_uid: study.into(),
            series_instance_uid: "1.2".into(),
            sop_instance_uid: sop.into(),
            frame: 0,
            instance_number: Some(n),
            slice_position_mm: None,
            modality: "CT".into(),
        }
    }

    fn tracker() -> StudyTracker {
        StudyTracker::new(vec![("lesion".into(), 0.5)])
    }

    #[test]
    fn summary_holds_the_maximum_and_its_slice() {
        let t0 = Instant::now();
        let mut t = tracker();
        for (i, score) in [0.1f32, 0.9, 0.7].iter().enumerate() {
            t.accepted("S", 1, t0);
            t.scored(&slice("S", &format!("sop{i}"), i as i32 + 1), &[*score], t0);
        }
        t.rejected("S", t0);
        t.end_requested("S", t0);
        let done = t.take_complete(t0, Duration::from_secs(10), false, 0);
        assert_eq!(done.len(), 1);
        let s = &done[0];
        assert_eq!(s.reason, Completion::EndOfStudy);
        assert_eq!(
            (s.slices_scored, s.instances_accepted, s.instances_rejected),
            (3, 3, 1)
        );
        assert_eq!(s.labels[0].max_score, 0.9);
        assert_eq!(
            s.labels[0]
                .top_slice
                .as_ref()
                .map(|x| x.sop_instance_uid.as_str()),
            Some("sop1")
        );
        assert_eq!(s.labels[0].positive_slices, 2);
        assert!(s.labels[0].positive);
        assert_eq!(t.open_studies(), 0);
    }

    #[test]
    fn nothing_completes_while_slices_or_decodes_are_pending() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.accepted("S", 2, t0);
        t.scored(&slice("S", "a", 1), &[0.2], t0);
        t.end_requested("S", t0);
        assert!(
            t.take_complete(t0, Duration::from_secs(1), true, 0)
                .is_empty(),
            "one slice pending"
        );
        t.failed("S", t0);
        assert!(
            t.take_complete(t0, Duration::from_secs(1), false, 1)
                .is_empty(),
            "an instance is decoding"
        );
        let done = t.take_complete(t0, Duration::from_secs(1), false, 0);
        assert_eq!(done[0].slices_failed, 1);
    }

    #[test]
    fn idle_studies_complete_after_the_timeout_only() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.accepted("A", 1, t0);
        t.scored(&slice("A", "a", 1), &[0.2], t0);
        let idle = Duration::from_secs(5);
        assert!(t
            .take_complete(t0 + Duration::from_secs(4), idle, false, 0)
            .is_empty());
        let done = t.take_complete(t0 + Duration::from_secs(5), idle, false, 0);
        assert_eq!(done[0].reason, Completion::Idle);
        assert!(!done[0].labels[0].positive);
    }

    #[test]
    fn interleaved_studies_are_kept_apart() {
        let t0 = Instant::now();
        let mut t = tracker();
        t.accepted("A", 1, t0);
        t.accepted("B", 1, t0);
        t.scored(&slice("B", "b", 1), &[0.8], t0);
        t.scored(&slice("A", "a", 1), &[0.1], t0);
        let done = t.take_complete(t0, Duration::from_secs(1), true, 0);
        assert_eq!(done.len(), 2);
        assert_eq!(done[0].study_instance_uid, "A");
        assert_eq!(done[0].labels[0].max_score, 0.1);
        assert_eq!(done[1].labels[0].max_score, 0.8);
        assert!(done.iter().all(|s| s.reason == Completion::StreamClosed));
    }
}

/// Property tests: random interleavings of what a stream does to its studies (decodes started,
/// instances accepted or rejected, slices scored or failed, end markers, time passing, polls) checked
/// against a plain model of what the tracker promises.
#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    const STUDIES: [&str; 3] = ["1.2.3", "1.2.4", "1.2.5"];
    const THRESHOLDS: [f32; 2] = [0.5, 0.9];
    const IDLE: Duration = Duration::from_secs(5);

    #[derive(Debug, Clone)]
    enum Op {
        /// An instance of an unknown study starts decoding.
        StartDecode,
        /// A decode ends: accepted with `frames` slices queued.
        Accept {
            study: usize,
            frames: u32,
        },
        /// A decode ends: rejected.
        Reject {
            study: usize,
        },
        /// One queued slice of `study` (if any) is scored, or fails.
        Finish {
            study: usize,
            fail: bool,
            scores: [f32; 2],
        },
        End {
            study: usize,
        },
        Advance {
            ms: u64,
        },
        Poll,
    }

    fn op() -> impl Strategy<Value = Op> {
        let study = 0..STUDIES.len();
        prop_oneof![
            1 => Just(Op::StartDecode),
            3 => (study.clone(), 1u32..4).prop_map(|(study, frames)| Op::Accept { study, frames }),
            1 => study.clone().prop_map(|study| Op::Reject { study }),
            5 => (study.clone(), prop::bool::weighted(0.2), [0f32..=1.0, 0f32..=1.0])
                .prop_map(|(study, fail, scores)| Op::Finish { study, fail, scores }),
            1 => study.clone().prop_map(|study| Op::End { study }),
            2 => (0u64..4000).prop_map(|ms| Op::Advance { ms }),
            2 => Just(Op::Poll),
        ]
    }

    /// What the model knows of one study since it was opened (or last summarised).
    #[derive(Debug, Default)]
    struct Model {
        active: bool,
        first: Option<Instant>,
        last_activity: Option<Instant>,
        last_scored: Option<Instant>,
        accepted: u32,
        rejected: u32,
        frames: u32,
        pending: u32,
        failed: u32,
        end: bool,
        /// (SOP Instance UID, scores) of every scored slice, in order.
        scored: Vec<(String, [f32; 2])>,
    }

    impl Model {
        fn touch(&mut self, now: Instant) {
            self.active = true;
            self.first.get_or_insert(now);
            self.last_activity = Some(now);
        }
    }

    fn slice_of(study: usize, sop: String) -> SliceId {
        SliceId {
            study_instance_uid: STUDIES[study].into(),
            series_instance_uid: "1.2.9".into(),
            sop_instance_uid: sop,
            frame: 0,
            instance_number: None,
            slice_position_mm: None,
            modality: "CT".into(),
        }
    }

    /// Checks one summary against the model of its study.
    fn check_summary(s: &StudySummary, m: &Model, closed: bool) -> Result<(), TestCaseError> {
        let ctx = &s.study_instance_uid;
        prop_assert!(m.active, "{ctx}: summarised without activity");
        prop_assert_eq!(m.pending, 0, "{}: summarised with slices in flight", ctx);
        prop_assert_eq!(s.instances_accepted, m.accepted, "{}: accepted", ctx);
        prop_assert_eq!(s.instances_rejected, m.rejected, "{}: rejected", ctx);
        prop_assert_eq!(s.slices_scored as usize, m.scored.len(), "{}: scored", ctx);
        prop_assert_eq!(s.slices_failed, m.failed, "{}: failed", ctx);
        prop_assert_eq!(
            s.slices_scored + s.slices_failed,
            m.frames,
            "{}: scored + failed != frames accepted",
            ctx
        );
        let expected_reason = if m.end {
            Completion::EndOfStudy
        } else if closed {
            Completion::StreamClosed
        } else {
            Completion::Idle
        };
        prop_assert_eq!(s.reason, expected_reason, "{}: reason", ctx);
        let (Some(first), Some(last)) = (m.first, m.last_activity) else {
            return Err(TestCaseError::fail("active study without times"));
        };
        prop_assert_eq!(
            s.wall_time,
            m.last_scored.unwrap_or(last).duration_since(first),
            "{}: wall time",
            ctx
        );
        prop_assert_eq!(s.labels.len(), THRESHOLDS.len());
        for (i, label) in s.labels.iter().enumerate() {
            let max = m.scored.iter().map(|(_, sc)| sc[i]).reduce(f32::max);
            let top = max.and_then(|max| m.scored.iter().find(|(_, sc)| sc[i] == max));
            prop_assert_eq!(
                label.max_score,
                max.unwrap_or(0.0),
                "{}: label {} max",
                ctx,
                i
            );
            prop_assert_eq!(
                label
                    .top_slice
                    .as_ref()
                    .map(|t| t.sop_instance_uid.as_str()),
                top.map(|(sop, _)| sop.as_str()),
                "{}: label {} top slice",
                ctx,
                i
            );
            let positives = m.scored.iter().filter(|(_, sc)| sc[i] >= THRESHOLDS[i]);
            prop_assert_eq!(label.positive_slices as usize, positives.count());
            prop_assert_eq!(
                label.positive,
                max.is_some_and(|max| max >= THRESHOLDS[i]),
                "{}: label {} positive",
                ctx,
                i
            );
        }
        Ok(())
    }

    /// Polls the tracker and checks that exactly the studies the model calls complete are
    /// summarised, each as the model says; summarised studies start afresh in the model.
    fn poll(
        t: &mut StudyTracker,
        models: &mut [Model],
        now: Instant,
        undecoded: usize,
        closed: bool,
        summaries: &mut usize,
    ) -> Result<(), TestCaseError> {
        let done = t.take_complete(now, IDLE, closed, undecoded);
        let expected: Vec<&str> = STUDIES
            .iter()
            .zip(models.iter())
            .filter(|(_, m)| {
                m.active
                    && m.pending == 0
                    && undecoded == 0
                    && (m.end
                        || closed
                        || m.last_activity
                            .is_some_and(|l| now.duration_since(l) >= IDLE))
            })
            .map(|(uid, _)| *uid)
            .collect();
        let got: Vec<&str> = done.iter().map(|s| s.study_instance_uid.as_str()).collect();
        prop_assert_eq!(got, expected, "studies summarised at this poll");
        for s in &done {
            let i = STUDIES
                .iter()
                .position(|u| *u == s.study_instance_uid)
                .ok_or_else(|| TestCaseError::fail("summary of an unknown study"))?;
            check_summary(s, &models[i], closed)?;
            models[i] = Model::default();
            *summaries += 1;
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            cases: 128,
            failure_persistence: None,
            ..ProptestConfig::default()
        })]

        #[test]
        fn bookkeeping_matches_the_model(ops in prop::collection::vec(op(), 1..80)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut t = StudyTracker::new(vec![
                ("lesion".into(), THRESHOLDS[0]),
                ("bleed".into(), THRESHOLDS[1]),
            ]);
            let mut models: Vec<Model> = STUDIES.iter().map(|_| Model::default()).collect();
            let mut undecoded = 0usize;
            let mut sop = 0u32;
            let mut summaries = 0usize;
            let mut opened = 0usize;
            for op in ops {
                match op {
                    Op::StartDecode => undecoded += 1,
                    Op::Accept { study, frames } => {
                        undecoded = undecoded.saturating_sub(1);
                        opened += usize::from(!models[study].active);
                        t.accepted(STUDIES[study], frames, now);
                        let m = &mut models[study];
                        m.touch(now);
                        m.accepted += 1;
                        m.frames += frames;
                        m.pending += frames;
                    }
                    Op::Reject { study } => {
                        undecoded = undecoded.saturating_sub(1);
                        opened += usize::from(!models[study].active);
                        t.rejected(STUDIES[study], now);
                        models[study].touch(now);
                        models[study].rejected += 1;
                    }
                    Op::Finish { study, fail, scores } => {
                        // the engine only finishes slices that were queued
                        let Some(study) = (0..STUDIES.len())
                            .map(|k| (study + k) % STUDIES.len())
                            .find(|&k| models[k].pending > 0)
                        else {
                            continue;
                        };
                        let m = &mut models[study];
                        m.touch(now);
                        m.pending -= 1;
                        if fail {
                            t.failed(STUDIES[study], now);
                            m.failed += 1;
                        } else {
                            sop += 1;
                            let uid = format!("1.2.9.{sop}");
                            t.scored(&slice_of(study, uid.clone()), &scores, now);
                            m.last_scored = Some(now);
                            m.scored.push((uid, scores));
                        }
                    }
                    Op::End { study } => {
                        opened += usize::from(!models[study].active);
                        t.end_requested(STUDIES[study], now);
                        models[study].touch(now);
                        models[study].end = true;
                    }
                    Op::Advance { ms } => now += Duration::from_millis(ms),
                    Op::Poll => poll(&mut t, &mut models, now, undecoded, false, &mut summaries)?,
                }
                let open = models.iter().filter(|m| m.active).count();
                prop_assert_eq!(t.open_studies(), open, "open studies");
            }
            // The stream closes: in-flight decodes end (rejected, study unknown) and every queued
            // slice is answered; then every study with activity is summarised, once.
            undecoded = 0;
            let ids: Vec<usize> = (0..STUDIES.len()).collect();
            for study in ids {
                while models[study].pending > 0 {
                    now += Duration::from_millis(10);
                    sop += 1;
                    let uid = format!("1.2.9.{sop}");
                    t.scored(&slice_of(study, uid.clone()), &[0.25, 0.95], now);
                    let m = &mut models[study];
                    m.touch(now);
                    m.pending -= 1;
                    m.last_scored = Some(now);
                    m.scored.push((uid, [0.25, 0.95]));
                }
            }
            poll(&mut t, &mut models, now, undecoded, true, &mut summaries)?;
            prop_assert_eq!(t.open_studies(), 0);
            prop_assert_eq!(summaries, opened, "every opened study summarised exactly once");
            prop_assert!(t.take_complete(now, IDLE, true, 0).is_empty(), "nothing summarised twice");
        }
    }
}
