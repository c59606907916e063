//! Studies belong to the service, not to a stream: over a real loopback socket, one study pushed over
//! several streams is one study, studies interleaved over concurrent streams stay apart, a re-sent
//! instance is answered but not scored or counted twice, a late instance re-opens a completed study
//! with the next revision, and `Studies.Watch` replays the durable log from any sequence and then
//! follows live with no gap and no duplicate, tells a slow viewer what it missed without holding up
//! ingest, and still has every event after a restart.

mod common;

use std::{collections::HashSet, time::Duration};

use common::*;
use radstream::proto::v1::{
    self as pb, analyze_response::Event, studies_client::StudiesClient, watch_event::Kind,
};

const WAIT: Duration = Duration::from_secs(120);
/// The prefix of every UID in the sample study's files; relabelling replaces its last digit.
const UID_ROOT: &[u8] = b"3680043.8.498.";

/// Completion in these tests comes from EndOfStudy or stream close, never from the idle timer.
fn config() -> radstream::config::Config {
    let mut config = test_config();
    config.study.idle_timeout_secs = 600.0;
    config
}

/// The sample study as a distinct study: every UID (study, series, SOP, media storage) gets its
/// `3680043.8.498.` root replaced by `3680043.8.49{digit}.` (same length, so the files stay valid).
fn relabelled_study(digit: u8) -> Vec<(String, Vec<u8>)> {
    assert!(digit <= 7, "8 is the sample's own digit");
    let mut to = UID_ROOT.to_vec();
    to[UID_ROOT.len() - 2] = b'0' + digit;
    sample_study()
        .into_iter()
        .map(|(name, mut bytes)| {
            let mut replaced = 0;
            let mut i = 0;
            while i + UID_ROOT.len() <= bytes.len() {
                if &bytes[i..i + UID_ROOT.len()] == UID_ROOT {
                    bytes[i..i + UID_ROOT.len()].copy_from_slice(&to);
                    replaced += 1;
                    i += UID_ROOT.len();
                } else {
                    i += 1;
                }
            }
            assert!(replaced >= 4, "{name}: study, series, SOP and media UIDs");
            (name, bytes)
        })
        .collect()
}

/// StudyInstanceUID (0020,000D) of an Explicit VR Little Endian file.
fn study_uid_of(bytes: &[u8]) -> String {
    let tag = [0x20, 0x00, 0x0D, 0x00, b'U', b'I'];
    let at = bytes
        .windows(tag.len())
        .position(|w| w == tag)
        .expect("StudyInstanceUID");
    let len = u16::from_le_bytes([bytes[at + 6], bytes[at + 7]]) as usize;
    String::from_utf8_lossy(&bytes[at + 8..at + 8 + len])
        .trim_end_matches(['\0', ' '])
        .to_string()
}

fn sop_of(f: &pb::SliceFinding) -> &str {
    &f.slice.as_ref().expect("slice").sop_instance_uid
}

fn instance_number(s: Option<&pb::SliceRef>) -> i32 {
    s.and_then(|s| s.instance_number).expect("instance number")
}

async fn studies_client(endpoint: String) -> StudiesClient<tonic::transport::Channel> {
    StudiesClient::connect(endpoint).await.expect("connect")
}

/// Opens a Watch; the stream of its messages.
async fn watch(
    client: &mut StudiesClient<tonic::transport::Channel>,
    request: pb::WatchRequest,
) -> tonic::Streaming<pb::WatchEvent> {
    client.watch(request).await.expect("watch").into_inner()
}

/// The next Watch message (None: the stream ended), failing the test after `WAIT`.
async fn next_watched(stream: &mut tonic::Streaming<pb::WatchEvent>) -> Option<Kind> {
    tokio::time::timeout(WAIT, stream.message())
        .await
        .expect("timed out waiting for a watch message")
        .expect("watch stream error")
        .map(|m| m.kind.expect("watch message carries a kind"))
}

/// Reads Watch messages until `pred` matches one; returns all read, the match last.
async fn watch_until(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
    pred: impl Fn(&Kind) -> bool,
) -> Vec<Kind> {
    let mut read = Vec::new();
    loop {
        let k = next_watched(stream)
            .await
            .expect("watch ended before the expected message");
        let done = pred(&k);
        read.push(k);
        if done {
            return read;
        }
    }
}

/// Every message until the stream ends.
async fn watch_drain(stream: &mut tonic::Streaming<pb::WatchEvent>) -> Vec<Kind> {
    let mut read = Vec::new();
    while let Some(k) = next_watched(stream).await {
        read.push(k);
    }
    read
}

fn study_events(kinds: &[Kind]) -> Vec<&pb::StudyEvent> {
    kinds
        .iter()
        .filter_map(|k| match k {
            Kind::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn is_summary(k: &Kind) -> bool {
    matches!(
        k,
        Kind::Event(pb::StudyEvent {
            event: Some(pb::study_event::Event::Summary(_)),
            ..
        })
    )
}

/// How many study events of each kind: (accepted, rejected, finding, critical, summary).
fn census(events: &[&pb::StudyEvent]) -> (usize, usize, usize, usize, usize) {
    use pb::study_event::Event as E;
    let mut c = (0, 0, 0, 0, 0);
    for e in events {
        match e.event.as_ref().expect("study event carries an event") {
            E::Accepted(_) => c.0 += 1,
            E::Rejected(_) => c.1 += 1,
            E::Finding(_) => c.2 += 1,
            E::Critical(_) => c.3 += 1,
            E::Summary(_) => c.4 += 1,
        }
    }
    c
}

fn sequences(events: &[&pb::StudyEvent]) -> Vec<u64> {
    events.iter().map(|e| e.sequence).collect()
}

fn lesion_score(f: &pb::SliceFinding) -> f32 {
    f.scores
        .iter()
        .find(|s| s.label == "lesion")
        .expect("lesion score")
        .score
}

async fn push(
    server: &radstream::server::RunningServer,
    files: &[(String, Vec<u8>)],
) -> Vec<Event> {
    let mut stream = Stream::open(server).await;
    for (name, bytes) in files {
        stream.send(instance(name, bytes.clone())).await;
    }
    stream.close();
    stream.drain().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_study_pushed_over_two_streams_is_one_study() {
    let server = start(config()).await;
    let study = sample_study();
    let uid = study_uid_of(&study[0].1);
    let mut a = Stream::open(&server).await;
    let mut b = Stream::open(&server).await;
    let (mut sent_a, mut sent_b) = (HashSet::new(), HashSet::new());
    for (i, (name, bytes)) in study.iter().enumerate() {
        if i % 2 == 0 {
            a.send(instance(&format!("a/{name}"), bytes.clone())).await;
            sent_a.insert(format!("a/{name}"));
        } else {
            b.send(instance(&format!("b/{name}"), bytes.clone())).await;
            sent_b.insert(format!("b/{name}"));
        }
    }
    // A study completes on close once every stream that sent to it closed: neither stream closes
    // before both had their instances accepted, or the first close could complete a half study.
    let (mut events_a, mut events_b) = (Vec::new(), Vec::new());
    while accepted(&events_a).len() < 6 {
        events_a.push(a.next(WAIT).await.expect("stream open"));
    }
    while accepted(&events_b).len() < 6 {
        events_b.push(b.next(WAIT).await.expect("stream open"));
    }
    a.close();
    b.close();
    let (rest_a, rest_b) = tokio::join!(a.drain(), b.drain());
    events_a.extend(rest_a);
    events_b.extend(rest_b);

    for (events, sent) in [(&events_a, &sent_a), (&events_b, &sent_b)] {
        assert!(rejections(events).is_empty(), "{:?}", rejections(events));
        let accepted = accepted(events);
        assert_eq!(accepted.len(), 6);
        assert!(accepted.iter().all(|a| !a.duplicate));
        let found = findings(events);
        assert_eq!(found.len(), 6, "one finding per slice this stream sent");
        let refs: HashSet<String> = found.iter().map(|f| f.client_ref.clone()).collect();
        assert_eq!(&refs, sent, "findings carry this stream's own names");
        assert!(found.iter().all(|f| !f.resent));
        let summaries = summaries(events);
        assert_eq!(summaries.len(), 1, "one summary per stream");
        let s = summaries[0];
        assert_eq!(s.study_instance_uid, uid);
        assert_eq!(s.instances_accepted, 12, "the whole study, both streams");
        assert_eq!(s.slices_scored, 12);
        assert_eq!(s.revision, 1);
        assert_eq!(s.reason, pb::CompletionReason::StreamClosed as i32);
    }
    assert_eq!(
        summaries(&events_a)[0],
        summaries(&events_b)[0],
        "both streams are told the same summary"
    );
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interleaved_studies_from_concurrent_pushers_stay_apart() {
    let server = start(config()).await;
    let studies: Vec<Vec<(String, Vec<u8>)>> = (0..4).map(relabelled_study).collect();
    let uids: Vec<String> = studies.iter().map(|s| study_uid_of(&s[0].1)).collect();
    assert_eq!(uids.iter().collect::<HashSet<_>>().len(), 4);

    // A study completes on close once every stream that sent to it closed: the pushers close only
    // once every one of them has had all its instances accepted, so no study completes early.
    let all_accepted = std::sync::Arc::new(tokio::sync::Barrier::new(4));
    let mut pushers = Vec::new();
    for p in 0..4usize {
        let studies = studies.clone();
        let endpoint = server.endpoint();
        let all_accepted = all_accepted.clone();
        pushers.push(tokio::spawn(async move {
            let mut stream = Stream::try_open_at(endpoint).await.expect("analyze");
            // Slices 3p..3p+3 of every study, the studies interleaved slice by slice.
            for slice in 3 * p..3 * p + 3 {
                for (s, study) in studies.iter().enumerate() {
                    let (name, bytes) = &study[slice];
                    stream
                        .send(instance(&format!("study{s}/{name}"), bytes.clone()))
                        .await;
                }
            }
            let mut events = Vec::new();
            while accepted(&events).len() < 12 {
                events.push(stream.next(WAIT).await.expect("stream open"));
            }
            all_accepted.wait().await;
            stream.close();
            events.extend(stream.drain().await);
            events
        }));
    }
    let mut all_summaries: Vec<pb::StudySummary> = Vec::new();
    for pusher in pushers {
        let events = pusher.await.expect("pusher");
        assert!(rejections(&events).is_empty(), "{:?}", rejections(&events));
        assert_eq!(accepted(&events).len(), 12);
        let found = findings(&events);
        assert_eq!(found.len(), 12);
        for f in &found {
            // The finding is about the study its client_ref names.
            let s: usize = f.client_ref["study".len()..="study".len()]
                .parse()
                .expect("study index");
            let slice = f.slice.as_ref().expect("slice");
            assert_eq!(slice.study_instance_uid, uids[s], "{}", f.client_ref);
            let root = format!("3680043.8.49{s}.");
            assert!(slice.series_instance_uid.contains(&root));
            assert!(slice.sop_instance_uid.contains(&root));
        }
        let summaries = summaries(&events);
        assert_eq!(
            summaries.len(),
            4,
            "one summary per study this stream sent to"
        );
        let got: HashSet<&str> = summaries
            .iter()
            .map(|s| s.study_instance_uid.as_str())
            .collect();
        assert_eq!(got, uids.iter().map(String::as_str).collect());
        all_summaries.extend(summaries.into_iter().cloned());
    }
    for uid in &uids {
        let of_study: Vec<&pb::StudySummary> = all_summaries
            .iter()
            .filter(|s| &s.study_instance_uid == uid)
            .collect();
        assert_eq!(of_study.len(), 4, "every pusher hears the study's summary");
        assert!(
            of_study.iter().all(|s| *s == of_study[0]),
            "one summary of one study: {of_study:#?}"
        );
        let s = of_study[0];
        assert_eq!(s.revision, 1);
        assert_eq!(s.instances_accepted, 12);
        assert_eq!(s.slices_scored, 12);
        assert_eq!(s.series, 1);
        let label = &s.labels[0];
        assert_eq!(label.label, "lesion");
        assert_eq!(label.positive_slices, 4, "{label:?}");
        assert_eq!(label.groups.len(), 1, "one lesion: {:?}", label.groups);
        let group = &label.groups[0];
        assert_eq!(group.slices, 4);
        assert_eq!(
            group.extent_mm,
            Some(20.0),
            "15 mm between ends + 5 mm spacing"
        );
        let top = instance_number(label.top_slice.as_ref());
        assert!(LESION_SLICES.contains(&top), "top slice #{top}");
        assert_eq!(
            (
                instance_number(group.first.as_ref()).min(instance_number(group.last.as_ref())),
                instance_number(group.first.as_ref()).max(instance_number(group.last.as_ref()))
            ),
            (5, 8),
            "the group spans the lesion slices"
        );
    }
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_re_sent_instance_is_neither_scored_nor_counted_twice() {
    let server = start(config()).await;
    let study = sample_study();
    let mut stream = Stream::open(&server).await;
    for (name, bytes) in &study {
        stream.send(instance(name, bytes.clone())).await;
    }
    for (name, bytes) in &study[2..5] {
        stream
            .send(instance(&format!("again/{name}"), bytes.clone()))
            .await;
    }
    stream.close();
    let events = stream.drain().await;

    assert!(rejections(&events).is_empty(), "{:?}", rejections(&events));
    let accepted = accepted(&events);
    assert_eq!(accepted.len(), 15);
    let dup: Vec<_> = accepted.iter().filter(|a| a.duplicate).collect();
    assert_eq!(dup.len(), 3);
    assert!(dup.iter().all(|a| a.client_ref.starts_with("again/")));
    let found = findings(&events);
    assert_eq!(found.len(), 15);
    let (resent, original): (Vec<&pb::SliceFinding>, Vec<&pb::SliceFinding>) =
        found.iter().partition(|f| f.resent);
    assert_eq!(resent.len(), 3);
    let sops: HashSet<&str> = original.iter().map(|f| sop_of(f)).collect();
    assert_eq!(sops.len(), 12, "every slice scored once");
    for r in &resent {
        assert!(r.client_ref.starts_with("again/"), "{}", r.client_ref);
        let first = original
            .iter()
            .find(|f| sop_of(f) == sop_of(r))
            .expect("the original finding of the re-sent SOP");
        assert_eq!(r.scores, first.scores, "the earlier result, not a new one");
        assert_eq!(
            r.timings.expect("timings").scored_unix_us,
            first.timings.expect("timings").scored_unix_us,
            "not scored again"
        );
    }
    let summaries = summaries(&events);
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].instances_accepted, 12);
    assert_eq!(summaries[0].slices_scored, 12);
    assert_eq!(summaries[0].revision, 1);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_instance_reopens_the_completed_study_with_the_next_revision() {
    let server = start(config()).await;
    let study = sample_study();
    let uid = study_uid_of(&study[0].1);

    let mut first = Stream::open(&server).await;
    for (name, bytes) in &study[..11] {
        first.send(instance(name, bytes.clone())).await;
    }
    first.send(end_of_study(&uid)).await;
    let events = first.until(WAIT, |e| matches!(e, Event::Summary(_))).await;
    assert_eq!(findings(&events).len(), 11);
    let s = summaries(&events)[0].clone();
    assert_eq!(s.study_instance_uid, uid);
    assert_eq!(
        (s.revision, s.slices_scored, s.instances_accepted),
        (1, 11, 11)
    );
    assert_eq!(s.reason, pb::CompletionReason::EndOfStudy as i32);
    first.close();
    let rest = first.drain().await;
    assert!(
        summaries(&rest).is_empty(),
        "the study was complete: {rest:?}"
    );

    let (name, bytes) = &study[11];
    let mut late = Stream::open(&server).await;
    late.send(instance(name, bytes.clone())).await;
    late.close();
    let events = late.drain().await;
    assert_eq!(accepted(&events).len(), 1);
    assert!(!accepted(&events)[0].duplicate);
    assert_eq!(findings(&events).len(), 1);
    let summaries = summaries(&events);
    assert_eq!(summaries.len(), 1);
    let s = summaries[0];
    assert_eq!(s.study_instance_uid, uid);
    assert_eq!(s.revision, 2, "the next revision");
    assert_eq!(s.slices_scored, 12, "covers the whole study");
    assert_eq!(s.instances_accepted, 12);
    assert_eq!(s.reason, pb::CompletionReason::StreamClosed as i32);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_replays_from_a_sequence_then_follows_live_each_event_once() {
    let server = start(config()).await;
    let study = sample_study();
    let uid = study_uid_of(&study[0].1);

    let mut stream = Stream::open(&server).await;
    for (name, bytes) in &study[..6] {
        stream.send(instance(name, bytes.clone())).await;
    }
    let mut pushed = Vec::new();
    while findings(&pushed).len() < 6 {
        pushed.push(stream.next(WAIT).await.expect("stream open"));
    }

    let mut client = studies_client(server.endpoint()).await;
    let mut watcher = watch(
        &mut client,
        pb::WatchRequest {
            study_instance_uids: vec![uid.clone()],
            from_sequence: Some(1),
            ..Default::default()
        },
    )
    .await;
    let mut read = watch_until(&mut watcher, |k| matches!(k, Kind::CaughtUp(_))).await;
    let replayed = study_events(&read).len();
    assert!(
        replayed >= 12,
        "6 accepted + 6 findings were logged: {replayed}"
    );

    for (name, bytes) in &study[6..] {
        stream.send(instance(name, bytes.clone())).await;
    }
    stream.close();
    pushed.extend(stream.drain().await);
    read.extend(watch_until(&mut watcher, is_summary).await);

    let caught_up: Vec<u64> = read
        .iter()
        .filter_map(|k| match k {
            Kind::CaughtUp(c) => Some(c.sequence),
            _ => None,
        })
        .collect();
    assert_eq!(
        caught_up,
        vec![replayed as u64],
        "one CaughtUp, at the replay's end"
    );
    assert!(
        !read.iter().any(|k| matches!(k, Kind::Missed(_))),
        "nothing missed"
    );
    let events = study_events(&read);
    let n = events.len() as u64;
    assert_eq!(
        sequences(&events),
        (1..=n).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert_eq!(
        events.iter().map(|e| e.study_sequence).collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );
    assert!(events.iter().all(|e| e.study_instance_uid == uid));
    let (acc, rej, fin, crit, sum) = census(&events);
    assert_eq!((acc, rej, fin, sum), (12, 0, 12, 1));

    // Critical findings: raised once, then again only for a higher score.
    let pushed_findings = findings(&pushed);
    assert_eq!(pushed_findings.len(), 12);
    let max_lesion = pushed_findings
        .iter()
        .map(|f| lesion_score(f))
        .fold(f32::NEG_INFINITY, f32::max);
    let criticals: Vec<&pb::CriticalFinding> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(pb::study_event::Event::Critical(c)) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(criticals.len(), crit);
    assert!(
        max_lesion >= 0.9,
        "the sample's lesion is certain: {max_lesion}"
    );
    assert!(crit >= 1, "max lesion score {max_lesion} crosses 0.9");
    assert_eq!(criticals.last().expect("critical").score, max_lesion);
    for (i, c) in criticals.iter().enumerate() {
        assert_eq!(c.revision as usize, i + 1);
        assert_eq!(c.critical_threshold, 0.9);
        assert!(c.score >= 0.9);
        if i > 0 {
            assert!(c.score > criticals[i - 1].score, "a higher score each time");
        }
    }
    let stream_criticals = pushed
        .iter()
        .filter(|e| matches!(e, Event::Critical(_)))
        .count();
    assert_eq!(
        stream_criticals, crit,
        "the sender is told the same criticals"
    );

    // From the middle of the log: exactly k..=last, the same events byte for byte.
    let k = n / 2;
    let mut again = watch(
        &mut client,
        pb::WatchRequest {
            study_instance_uids: vec![uid.clone()],
            from_sequence: Some(k),
            replay_only: true,
            ..Default::default()
        },
    )
    .await;
    let replay = watch_drain(&mut again).await;
    assert!(matches!(replay.last(), Some(Kind::CaughtUp(c)) if c.sequence == n));
    let from_k = study_events(&replay);
    assert_eq!(sequences(&from_k), (k..=n).collect::<Vec<_>>());
    assert_eq!(
        from_k.iter().map(|e| (*e).clone()).collect::<Vec<_>>(),
        events[(k - 1) as usize..]
            .iter()
            .map(|e| (*e).clone())
            .collect::<Vec<_>>(),
        "replay is what was sent live"
    );
    drop(watcher);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_watcher_is_told_what_it_missed_and_ingest_does_not_wait() {
    let mut config = config();
    config.watch.subscriber_buffer = 4;
    let server = start(config).await;

    // A viewer whose connection takes 1 KiB before the server must wait for it to read.
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("endpoint")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .expect("connect");
    let mut slow_client = StudiesClient::new(channel);
    let mut slow = watch(&mut slow_client, pb::WatchRequest::default()).await;
    let first = next_watched(&mut slow).await;
    assert!(
        matches!(first, Some(Kind::CaughtUp(pb::CaughtUp { sequence: 0 }))),
        "{first:?}"
    );

    // The viewer reads nothing now; ingest goes on regardless.
    let files: Vec<(String, Vec<u8>)> = (0..3)
        .flat_map(|d| {
            relabelled_study(d)
                .into_iter()
                .map(move |(name, bytes)| (format!("study{d}/{name}"), bytes))
        })
        .collect();
    let events = tokio::time::timeout(Duration::from_secs(90), push(&server, &files))
        .await
        .expect("ingest is not held up by a viewer that does not read");
    assert_eq!(findings(&events).len(), 36);
    assert_eq!(summaries(&events).len(), 3);

    // Now the viewer reads: what it got, then what it missed.
    let read = watch_until(&mut slow, |k| matches!(k, Kind::Missed(_))).await;
    let Some(Kind::Missed(missed)) = read.last() else {
        unreachable!()
    };
    let got = study_events(&read);
    assert!(missed.count > 0);
    assert!(missed.first_sequence <= missed.last_sequence);
    assert_eq!(
        missed.count,
        missed.last_sequence - missed.first_sequence + 1,
        "an unfiltered viewer misses every event of its range"
    );
    assert_eq!(
        sequences(&got),
        (1..missed.first_sequence).collect::<Vec<_>>(),
        "what it got runs without a gap up to what it missed"
    );

    // What it missed is in the log.
    let mut client = studies_client(server.endpoint()).await;
    let mut replay = watch(
        &mut client,
        pb::WatchRequest {
            from_sequence: Some(missed.first_sequence),
            replay_only: true,
            ..Default::default()
        },
    )
    .await;
    let replayed = watch_drain(&mut replay).await;
    assert!(matches!(replayed.last(), Some(Kind::CaughtUp(_))));
    let in_range: Vec<u64> = study_events(&replayed)
        .iter()
        .map(|e| e.sequence)
        .filter(|s| *s <= missed.last_sequence)
        .collect();
    assert_eq!(in_range.len() as u64, missed.count);
    assert_eq!(
        in_range,
        (missed.first_sequence..=missed.last_sequence).collect::<Vec<_>>()
    );
    drop(slow);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn findings_survive_a_restart_and_can_be_replayed() {
    let data = tempfile::tempdir().expect("data dir");
    let study = sample_study();
    let uid = study_uid_of(&study[0].1);
    let with_data = || {
        let mut config = config();
        config.store.data_dir = Some(data.path().to_path_buf());
        config
    };

    let server = start(with_data()).await;
    let events = push(&server, &study[..11]).await;
    assert_eq!(findings(&events).len(), 11);
    let s = summaries(&events);
    assert_eq!(s.len(), 1);
    assert_eq!((s[0].revision, s[0].slices_scored), (1, 11));
    server.stop().await.expect("clean stop");

    let server = start(with_data()).await;
    let mut client = studies_client(server.endpoint()).await;
    let mut replay = watch(
        &mut client,
        pb::WatchRequest {
            from_sequence: Some(1),
            replay_only: true,
            ..Default::default()
        },
    )
    .await;
    let read = watch_drain(&mut replay).await;
    let events = study_events(&read);
    let n = events.len() as u64;
    assert!(
        matches!(read.last(), Some(Kind::CaughtUp(c)) if c.sequence == n),
        "{:?}",
        read.last()
    );
    assert_eq!(
        read.len() as u64,
        n + 1,
        "events, then CaughtUp, then the end"
    );
    assert_eq!(sequences(&events), (1..=n).collect::<Vec<_>>());
    assert!(events.iter().all(|e| e.study_instance_uid == uid));
    let (acc, rej, fin, _crit, sum) = census(&events);
    assert_eq!((acc, rej, fin, sum), (11, 0, 11, 1));
    assert!(
        matches!(
            events.last().and_then(|e| e.event.as_ref()),
            Some(pb::study_event::Event::Summary(s)) if s.revision == 1 && s.slices_scored == 11
        ),
        "the log ends with the summary"
    );

    let events = push(&server, &study[11..]).await;
    let s = summaries(&events);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].study_instance_uid, uid);
    assert_eq!(s[0].revision, 2, "the study was rebuilt from the log");
    assert_eq!(s[0].slices_scored, 12);
    assert_eq!(s[0].instances_accepted, 12);
    server.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_without_its_study_or_sop_uid_is_rejected_not_merged_or_taken_for_a_resend() {
    let dir = tempfile::tempdir().expect("tempdir");
    python_eval(&format!(
        r#"
import glob, os, pydicom
src = sorted(glob.glob(os.path.join({src:?}, "*.dcm")))
ds = pydicom.dcmread(src[0]); del ds.StudyInstanceUID
ds.save_as(os.path.join({dir:?}, "no-study.dcm"))
for i, name in ((1, "no-sop-a.dcm"), (2, "no-sop-b.dcm")):
    ds = pydicom.dcmread(src[i]); del ds.SOPInstanceUID; del ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(os.path.join({dir:?}, name), enforce_file_format=False)
"#,
        src = sample_study_dir().display().to_string(),
        dir = dir.path().display().to_string(),
    ));
    let server = start(test_config()).await;
    let mut stream = Stream::open(&server).await;
    for name in ["no-study.dcm", "no-sop-a.dcm", "no-sop-b.dcm"] {
        stream
            .send(instance(name, read(&dir.path().join(name))))
            .await;
    }
    stream.close();
    let events = stream.drain().await;
    assert!(accepted(&events).is_empty(), "{events:?}");
    let rejected = rejections(&events);
    assert_eq!(rejected.len(), 3, "{events:?}");
    for r in rejected {
        assert_eq!(r.reason, pb::RejectReason::MissingAttribute as i32, "{r:?}");
        let named = if r.client_ref == "no-study.dcm" {
            "StudyInstanceUID (0020,000D)"
        } else {
            "SOPInstanceUID (0008,0018)"
        };
        assert!(r.message.contains(named), "{r:?}");
    }
    server.stop().await.expect("stop");
}
