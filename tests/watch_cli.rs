//! `radstream watch` as a user runs it: the real binary against the real `radstream serve` with a
//! fresh data directory (`ServedProcess`), fed by the real `radstream push` of the bundled sample study. Replay (from
//! the start of the log, ending once caught up) and live (started before the push) must both print the
//! study's events in log order with no gap, as JSON for tools and readable for people; an unreachable
//! service is a clear error and a non-zero exit.

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_radstream");
const DEADLINE: Duration = Duration::from_secs(120);

/// Runs `command` to its end, failing the test (and killing it) after `limit`.
fn output_within(command: &mut Command, limit: Duration) -> Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// `radstream push --json` of the sample study; returns its JSON lines.
fn push_sample(endpoint: &str) -> Vec<Value> {
    push_json_lines(&output_within(
        Command::new(BIN)
            .args(["push", "--json", "--endpoint", endpoint])
            .arg(sample_study_dir()),
        DEADLINE,
    ))
}

/// The `push --json` payloads of one kind (canonical proto3 JSON: `{"finding": {...}}`).
fn of_type<'a>(events: &'a [Value], t: &str) -> Vec<&'a Value> {
    members(events, t)
}

/// A 64-bit integer as canonical proto3 JSON writes it: a decimal string.
fn u64_of(v: &Value) -> u64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a 64-bit integer as a string: {v}"))
}

/// Which payload a study event carries: the member of its `event` oneof present in the object.
fn kind_of(e: &Value) -> &'static str {
    ["accepted", "rejected", "finding", "critical", "summary"]
        .into_iter()
        .find(|k| e.get(*k).is_some())
        .unwrap_or("?")
}

/// The study events of a watch (JSON lines) checked against what `push` received for the sample study:
/// one study, sequences `first..` without a gap, study sequences 1.. without a gap, every instance
/// accepted before its finding, the summary last and equal to the pushed one, the same scores.
fn check_against_push(watched: &[Value], pushed: &[Value], first_sequence: u64) {
    let n = sample_study().len();
    // Canonical proto3 JSON of WatchEvent: `{"event": StudyEvent}`, `{"caught_up": ...}`, `{"missed": ...}`.
    let events: Vec<&Value> = members(watched, "event");
    let sequences: Vec<u64> = events.iter().map(|e| u64_of(&e["sequence"])).collect();
    let expected: Vec<u64> = (first_sequence..first_sequence + events.len() as u64).collect();
    assert_eq!(sequences, expected, "log sequences in order, no gap");
    let study_sequences: Vec<u64> = events
        .iter()
        .map(|e| u64_of(&e["study_sequence"]))
        .collect();
    assert_eq!(
        study_sequences,
        (1..=events.len() as u64).collect::<Vec<_>>()
    );

    let pushed_summary = of_type(pushed, "summary");
    assert_eq!(pushed_summary.len(), 1, "push got one summary");
    let study = &pushed_summary[0]["study_instance_uid"];
    assert!(events.iter().all(|e| &e["study_instance_uid"] == study));

    let kinds: Vec<&str> = events.iter().map(|e| kind_of(e)).collect();
    let count = |t: &str| kinds.iter().filter(|k| **k == t).count();
    assert_eq!(count("accepted"), n, "{kinds:?}");
    assert_eq!(count("finding"), n, "{kinds:?}");
    assert_eq!(count("summary"), 1, "{kinds:?}");
    assert_eq!(count("rejected"), 0, "{kinds:?}");
    assert_eq!(
        count("critical"),
        of_type(pushed, "critical").len(),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last(),
        Some(&"summary"),
        "the summary closes the study: {kinds:?}"
    );

    // Each payload sits under its type's name; each finding after its instance's acceptance.
    let sop = |e: &Value, t: &str| {
        e[t]["slice"]["sop_instance_uid"]
            .as_str()
            .map(str::to_string)
    };
    for (i, e) in events.iter().enumerate() {
        let t = kind_of(e);
        assert!(e[t].is_object(), "payload under {t:?}: {e}");
        if t == "finding" {
            let uid = sop(e, "finding").expect("finding names its slice");
            assert!(
                events[..i]
                    .iter()
                    .any(|a| sop(a, "accepted").as_deref() == Some(&uid)),
                "finding for {uid} before its acceptance"
            );
        }
    }

    // The log holds what the pushing client was sent: the same scores, the same summary.
    let scores = |findings: Vec<(&Value, &Value)>| {
        let mut out: Vec<String> = findings
            .into_iter()
            .map(|(slice, scores)| format!("{} {}", slice["sop_instance_uid"], scores))
            .collect();
        out.sort();
        out
    };
    let watched_scores = scores(
        events
            .iter()
            .filter(|e| kind_of(e) == "finding")
            .map(|e| (&e["finding"]["slice"], &e["finding"]["scores"]))
            .collect(),
    );
    let pushed_scores = scores(
        of_type(pushed, "finding")
            .into_iter()
            .map(|f| (&f["slice"], &f["scores"]))
            .collect(),
    );
    assert_eq!(watched_scores, pushed_scores);
    let watched_summary = &events.last().expect("events")["summary"];
    assert_eq!(watched_summary, pushed_summary[0]);
    assert_eq!(watched_summary["revision"], 1);
    assert_eq!(watched_summary["slices_scored"], n);
}

#[test]
fn replay_prints_the_pushed_study_in_log_order_then_ends() {
    let server = ServedProcess::start(&[]);
    let pushed = push_sample(&server.endpoint());

    let out = output_within(
        Command::new(BIN).args([
            "watch",
            "--endpoint",
            &server.endpoint(),
            "--from",
            "1",
            "--replay-only",
            "--json",
        ]),
        DEADLINE,
    );
    assert!(
        out.status.success(),
        "watch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = push_json_lines(&out);
    check_against_push(&lines, &pushed, 1);
    // The end of the replay is said, and nothing is live after it.
    let last = lines.last().expect("lines");
    assert_eq!(
        last["caught_up"]["sequence"],
        lines[lines.len() - 2]["event"]["sequence"],
        "{last}"
    );

    // From the middle: exactly the tail of the log.
    let out = output_within(
        Command::new(BIN).args([
            "watch",
            "--endpoint",
            &server.endpoint(),
            "--from",
            "5",
            "--replay-only",
            "--json",
        ]),
        DEADLINE,
    );
    let tail = push_json_lines(&out);
    let sequences: Vec<u64> = members(&tail, "event")
        .iter()
        .map(|e| u64_of(&e["sequence"]))
        .collect();
    let all = lines.len() as u64 - 1;
    assert_eq!(sequences, (5..=all).collect::<Vec<_>>());
}

#[test]
fn replay_reads_well_without_json() {
    let server = ServedProcess::start(&[]);
    let pushed = push_sample(&server.endpoint());
    let out = output_within(
        Command::new(BIN).args(["watch", "--endpoint", &server.endpoint(), "--replay-only"]),
        DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "watch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Not a terminal: no colour codes, the critical marker in plain text.
    assert!(!stdout.contains('\x1b'), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let n = sample_study().len();
    let summary = of_type(&pushed, "summary")[0];
    let study = summary["study_instance_uid"].as_str().expect("uid");
    let short = format!("…{}", &study[study.len() - 12..]);
    let events: Vec<&&str> = lines.iter().filter(|l| l.contains(&short)).collect();
    assert_eq!(
        events.len(),
        2 * n + 1 + of_type(&pushed, "critical").len(),
        "{stdout}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains("!! CRITICAL")).count(),
        of_type(&pushed, "critical").len() + usize::from(summary["labels"][0]["critical"] == true),
        "{stdout}"
    );
    // Progress counts up with the events: the summary line has seen every instance and slice.
    let summary_line = events.last().expect("lines");
    assert!(
        summary_line.contains(&format!(
            "[ {n} acc  0 rej  {n} scored]  SUMMARY revision 1: {n} slices scored"
        )),
        "{stdout}"
    );
    // Positive slices stand out by name, negatives are compact; groups are listed with their extent.
    for f in of_type(&pushed, "finding") {
        let number = &f["slice"]["instance_number"];
        let positive = f["scores"][0]["positive"] == true;
        let expected = if positive {
            format!("FINDING slice #{number}: lesion")
        } else {
            format!("slice #{number} neg (lesion ")
        };
        assert!(stdout.contains(&expected), "{expected:?} in {stdout}");
    }
    let label = &summary["labels"][0];
    assert_eq!(label["positive"], true, "the sample study has a lesion");
    for g in label["groups"].as_array().expect("groups") {
        let expected = format!(
            "group: {} slices #{}–#{}",
            g["slices"], g["first"]["instance_number"], g["last"]["instance_number"]
        );
        assert!(stdout.contains(&expected), "{expected:?} in {stdout}");
    }
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with("— end of replay (log at sequence ")),
        "{stdout}"
    );
}

#[test]
fn a_live_watch_prints_a_study_pushed_after_it_started() {
    let server = ServedProcess::start(&[]);
    let mut watcher: Child = Command::new(BIN)
        .args(["watch", "--endpoint", &server.endpoint(), "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start watch");
    struct Kill(Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = watcher.stdout.take().expect("stdout");
    let mut watcher = Kill(watcher);
    let (tx, rx) = mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            if tx.send(value).is_err() {
                break;
            }
        }
    });
    // Subscribed once it says where live begins (an empty log: sequence 0, a default, so left out).
    let first = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("watch says it is live");
    assert_eq!(first, serde_json::json!({"caught_up": {}}));

    let pushed = push_sample(&server.endpoint());
    let mut lines = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no summary; got {lines:?}"));
        let done = line["event"].get("summary").is_some();
        lines.push(line);
        if done {
            break;
        }
    }
    check_against_push(&lines, &pushed, 1);
    // Live: it does not end with the study.
    assert!(
        watcher.0.try_wait().expect("wait").is_none(),
        "a live watch keeps running"
    );
}

#[test]
fn an_unreachable_service_is_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = output_within(
        Command::new(BIN).args(["watch", "--endpoint", &endpoint]),
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot connect to {endpoint}")),
        "{stderr}"
    );
    assert!(
        stderr.contains("is `radstream serve` running there?"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn push_marks_duplicates_and_resent_findings() {
    let server = ServedProcess::start(&[]);
    push_sample(&server.endpoint());
    // The same files again, readable: each is a known SOP Instance UID.
    let out = output_within(
        Command::new(BIN)
            .args(["push", "--endpoint", &server.endpoint()])
            .arg(sample_study_dir()),
        DEADLINE,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = sample_study().len();
    let duplicates: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("DUPLICATE "))
        .collect();
    assert_eq!(duplicates.len(), n, "{stdout}");
    for (name, _) in sample_study() {
        assert!(
            duplicates.iter().any(|l| l.contains(&name)
                && l.ends_with(": already received, earlier findings re-sent")),
            "{name} in {stdout}"
        );
    }
    // Every earlier finding comes again, each marked.
    let findings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start_matches("(resent) ").starts_with("slice "))
        .collect();
    assert_eq!(findings.len(), n, "{stdout}");
    assert!(
        findings.iter().all(|l| l.starts_with("(resent) slice")),
        "{stdout}"
    );
}
