//! `push --json`, `watch --json` and `models --json` print the canonical proto3 JSON mapping of the
//! messages the service sent, so a tool that speaks proto3 JSON reads them. The proof uses the reference
//! implementation: Python's google.protobuf.json_format (stubs generated from proto/) parses every line
//! the real binary printed back into its message, and the message must equal the one the service sent,
//! read here over gRPC (the watch replay and the model list are the same on every read; a push's
//! responses are the log's events, which the replay gives).

mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
};

use common::*;
use prost::Message;
use radstream::proto::v1::{self as pb, analyze_response::Event, study_event};

const BIN: &str = env!("CARGO_BIN_EXE_radstream");

/// Runs the binary with `args`; its stdout lines (it must succeed).
fn lines_of(args: &[&str]) -> Vec<String> {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run radstream");
    assert!(
        out.status.success(),
        "radstream {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Parses each (message name, JSON line) with json_format in Python; the messages it read, encoded.
fn read_back(lines: &[(&str, &str)]) -> Vec<Vec<u8>> {
    let mut child = Command::new(python())
        .arg(repo().join("tests/peers/proto_json_reader.py"))
        .arg("--proto-dir")
        .arg(repo().join("proto"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the proto3 JSON reader");
    let mut input = String::new();
    for (name, line) in lines {
        input.push_str(&format!("{name}\t{line}\n"));
    }
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write lines");
    let out = child.wait_with_output().expect("reader ends");
    assert!(
        out.status.success(),
        "json_format did not read the lines: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let encoded: Vec<Vec<u8>> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| hex::decode(l).expect("hex"))
        .collect();
    assert_eq!(encoded.len(), lines.len(), "one message per line");
    encoded
}

/// The push response a logged study event stands for (the log keeps what the stream was sent).
fn as_response(e: &pb::StudyEvent) -> Option<Event> {
    Some(match e.event.clone()? {
        study_event::Event::Accepted(a) => Event::Accepted(a),
        study_event::Event::Rejected(r) => Event::Rejected(r),
        study_event::Event::Finding(f) => Event::Finding(f),
        study_event::Event::Critical(c) => Event::Critical(c),
        study_event::Event::Summary(s) => Event::Summary(s),
    })
}

/// `client_ref` is the push client's own name for a file (the path it was given; the wire and the log
/// carry a short ref): the one field where what push prints differs from what the log keeps.
fn without_client_ref(mut e: Event) -> Event {
    match &mut e {
        Event::Accepted(a) => a.client_ref.clear(),
        Event::Rejected(r) => r.client_ref.clear(),
        Event::Finding(f) => f.client_ref.clear(),
        Event::Critical(_) | Event::Summary(_) => {}
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_proto3_json_that_protobuf_reads_back_as_the_messages_sent() {
    let server = start(test_config()).await;
    let endpoint = server.endpoint();

    // push --json: one AnalyzeResponse per line.
    let push = {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            let study = sample_study_dir().display().to_string();
            lines_of(&["push", "--json", "--endpoint", &endpoint, &study])
        })
        .await
        .expect("join")
    };
    let n = sample_study().len();
    assert!(
        push.len() > 2 * n,
        "accepted, finding per slice and a summary: {push:#?}"
    );

    // What the service sent, read over gRPC: the whole log replayed, and the model list.
    let mut studies = pb::studies_client::StudiesClient::connect(endpoint.clone())
        .await
        .expect("connect")
        .max_decoding_message_size(64 << 20);
    let mut stream = studies
        .watch(pb::WatchRequest {
            from_sequence: Some(1),
            replay_only: true,
            ..Default::default()
        })
        .await
        .expect("watch")
        .into_inner();
    let mut sent_watch = Vec::new();
    while let Some(event) = stream.message().await.expect("watch event") {
        sent_watch.push(event);
    }
    let sent_list = pb::models_client::ModelsClient::connect(endpoint.clone())
        .await
        .expect("connect")
        .list(pb::ListModelsRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(!sent_list.versions.is_empty());

    // watch --json (the same replay) and models list --json, printed by the binary.
    let (watch, models) = {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            let watch = lines_of(&[
                "watch",
                "--json",
                "--replay-only",
                "--from",
                "1",
                "--endpoint",
                &endpoint,
            ]);
            let models = lines_of(&["models", "list", "--json", "--endpoint", &endpoint]);
            (watch, models)
        })
        .await
        .expect("join")
    };
    assert_eq!(models.len(), 1, "one object: {models:?}");

    let mut named: Vec<(&str, &str)> = Vec::new();
    named.extend(push.iter().map(|l| ("AnalyzeResponse", l.as_str())));
    named.extend(watch.iter().map(|l| ("WatchEvent", l.as_str())));
    named.push(("ListModelsResponse", &models[0]));
    let encoded = read_back(&named);
    let (pushed, rest) = encoded.split_at(push.len());
    let (watched, listed) = rest.split_at(watch.len());

    // watch and models: exactly the messages the service sent.
    let watched: Vec<pb::WatchEvent> = watched
        .iter()
        .map(|b| pb::WatchEvent::decode(b.as_slice()).expect("decodes"))
        .collect();
    assert_eq!(watched, sent_watch);
    assert_eq!(
        pb::ListModelsResponse::decode(listed[0].as_slice()).expect("decodes"),
        sent_list
    );

    // push: each response is one the log recorded for the stream, and every logged one was printed.
    let mut logged: Vec<Event> = sent_watch
        .iter()
        .filter_map(|w| match &w.kind {
            Some(pb::watch_event::Kind::Event(e)) => as_response(e).map(without_client_ref),
            _ => None,
        })
        .collect();
    assert_eq!(logged.len(), push.len(), "{push:#?}");
    for bytes in pushed {
        let response = pb::AnalyzeResponse::decode(bytes.as_slice()).expect("decodes");
        let event = without_client_ref(response.event.expect("an event"));
        let at = logged
            .iter()
            .position(|l| *l == event)
            .unwrap_or_else(|| panic!("printed but not sent: {event:?}"));
        logged.remove(at);
    }
    assert!(logged.is_empty(), "sent but not printed: {logged:?}");
    server.stop().await.expect("stop");
}
