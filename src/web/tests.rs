use super::*;

fn slice(sop: &str, n: i32) -> pb::SliceRef {
    pb::SliceRef {
        study_instance_uid: "1.2.3".into(),
        series_instance_uid: "1.2.3.4".into(),
        sop_instance_uid: sop.into(),
        frame: 0,
        instance_number: Some(n),
        slice_position_mm: None,
        modality: "CT".into(),
    }
}

fn entry(sequence: u64, event: pb::study_event::Event) -> pb::StudyEvent {
    pb::StudyEvent {
        sequence,
        study_instance_uid: "1.2.3".into(),
        study_sequence: sequence,
        logged_unix_us: 1_700_000_000_000_000,
        modality: "CT".into(),
        event: Some(event),
    }
}

#[test]
fn event_json_names_the_oneof_member_and_keeps_proto_field_names() {
    use pb::study_event::Event as E;
    let finding = pb::SliceFinding {
        slice: Some(slice("1.2.3.4.5", 6)),
        scores: vec![pb::LabelScore {
            label: "lesion".into(),
            score: 0.75,
            positive: true,
            threshold: 0.5,
            peak: Some(pb::Location {
                row: 10.0,
                col: 20.0,
                patient: None,
            }),
            bounding_box: Some(pb::BoundingBox {
                row_min: 1.0,
                col_min: 2.0,
                row_max: 3.0,
                col_max: 4.0,
            }),
        }],
        window: Some(pb::WindowUsed {
            source: pb::WindowSource::MinMax as i32,
            center: 40.0,
            width: 400.0,
            file_window_index: None,
            file_window_invalid: true,
        }),
        overlay: true,
        ..Default::default()
    };
    let v = event_json(&entry(7, E::Finding(finding)));
    assert_eq!(v["sequence"], 7);
    assert_eq!(v["study_sequence"], 7);
    assert_eq!(v["modality"], "CT");
    let f = &v["finding"];
    assert!(v.get("summary").is_none(), "only the member that is set");
    assert_eq!(f["slice"]["sop_instance_uid"], "1.2.3.4.5");
    assert_eq!(f["slice"]["instance_number"], 6);
    assert_eq!(f["slice"]["slice_position_mm"], Value::Null);
    assert_eq!(f["scores"][0]["positive"], true);
    assert_eq!(f["scores"][0]["score"], 0.75);
    assert_eq!(f["scores"][0]["peak"]["row"], 10.0);
    assert_eq!(f["scores"][0]["peak"]["patient"], Value::Null);
    assert_eq!(f["scores"][0]["bounding_box"]["col_max"], 4.0);
    assert_eq!(f["window"]["source"], "WINDOW_SOURCE_MIN_MAX");
    assert_eq!(f["overlay"], true);
    assert_eq!(f["resent"], false);
    assert_eq!(f["timings"], Value::Null);
}

#[test]
fn event_json_renders_enums_by_name() {
    use pb::study_event::Event as E;
    let summary = pb::StudySummary {
        reason: pb::CompletionReason::Idle as i32,
        revision: 2,
        labels: vec![pb::LabelSummary {
            label: "lesion".into(),
            critical_threshold: Some(0.9),
            critical: true,
            groups: vec![pb::SliceGroup {
                slices: 4,
                extent_mm: Some(20.0),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    };
    let v = event_json(&entry(3, E::Summary(summary)));
    assert_eq!(v["summary"]["reason"], "COMPLETION_REASON_IDLE");
    assert_eq!(v["summary"]["revision"], 2);
    assert_eq!(v["summary"]["labels"][0]["critical"], true);
    assert_eq!(v["summary"]["labels"][0]["groups"][0]["extent_mm"], 20.0);

    let rejected = pb::InstanceRejected {
        reason: pb::RejectReason::MissingPixelData as i32,
        frame: Some(2),
        ..Default::default()
    };
    let v = event_json(&entry(4, E::Rejected(rejected)));
    assert_eq!(v["rejected"]["reason"], "REJECT_REASON_MISSING_PIXEL_DATA");
    assert_eq!(v["rejected"]["frame"], 2);

    // An enum value this build does not know is shown as UNSPECIFIED, not as a number.
    let unknown = pb::InstanceRejected {
        reason: 999,
        ..Default::default()
    };
    let v = event_json(&entry(5, E::Rejected(unknown)));
    assert_eq!(v["rejected"]["reason"], "REJECT_REASON_UNSPECIFIED");

    let critical = pb::CriticalFinding {
        label: "lesion".into(),
        revision: 1,
        slice: Some(slice("9.9", 7)),
        ..Default::default()
    };
    let v = event_json(&entry(6, E::Critical(critical)));
    assert_eq!(v["critical"]["slice"]["instance_number"], 7);
    assert_eq!(v["critical"]["revision"], 1);

    let accepted = pb::InstanceAccepted {
        frames: 3,
        duplicate: true,
        ..Default::default()
    };
    let v = event_json(&entry(8, E::Accepted(accepted)));
    assert_eq!(v["accepted"]["duplicate"], true);
    assert_eq!(v["accepted"]["slice"], Value::Null);
}

fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn events_request_reads_filters_and_resumes_after_last_event_id() {
    let r = events_request(
        &pairs(&[
            ("from", "5"),
            ("study", "1.2"),
            ("study", "1.3"),
            ("only_critical", "true"),
            ("label", "lesion"),
        ]),
        None,
    )
    .expect("valid");
    assert_eq!(r.from, Some(5));
    assert_eq!(r.filter.studies, vec!["1.2", "1.3"]);
    assert!(r.filter.only_critical);
    assert_eq!(r.filter.labels, vec!["lesion"]);

    // The browser's reconnect: Last-Event-ID wins over the URL's `from`.
    let r = events_request(&pairs(&[("from", "5")]), Some("41")).expect("valid");
    assert_eq!(r.from, Some(42));
    // No `from`, no header: live only.
    assert_eq!(events_request(&[], None).expect("valid").from, None);
    // from=0 means the start of the log.
    assert_eq!(
        events_request(&pairs(&[("from", "0")]), None)
            .expect("valid")
            .from,
        Some(1)
    );
    assert_eq!(
        events_request(&[], Some(" ")).expect("blank header").from,
        None
    );
}

#[test]
fn events_request_rejects_what_it_cannot_read() {
    assert!(events_request(&pairs(&[("from", "x")]), None).is_err());
    assert!(events_request(&pairs(&[("only_critical", "maybe")]), None).is_err());
    assert!(events_request(&pairs(&[("studies", "1.2")]), None).is_err());
    assert!(events_request(&[], Some("abc")).is_err());
}

#[test]
fn the_page_inserts_no_markup_from_data() {
    // Every string from the service goes in through textContent/attributes; markup sinks are banned
    // outright so a later edit cannot start using them with data.
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!PAGE_JS.contains(sink), "page.js uses {sink}");
    }
    assert!(PAGE_HTML.contains("src=\"/page.js\""));
    assert!(PAGE_HTML.contains("href=\"/page.css\""));
}
