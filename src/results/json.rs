//! The JSON form of the wire messages, one for every way out: `push --json` and `watch --json` (one
//! object per response or watch event), the web view's event stream and its JSON API.
//!
//! One rule for every message, so a tool never has to guess: keys are the proto field names
//! (snake_case), every field is present (absent `optional` fields and messages are `null`, repeated
//! fields are arrays), enums are their proto names (`"REJECT_REASON_MISSING_PIXEL_DATA"`), 64-bit
//! integers are JSON numbers. A `oneof` the line stands for is replaced by a `"type"` tag naming its
//! member (`"finding"`, `"missed"`, …); a study event keeps its payload under the member's name.
//!
//! Why by hand and not derived (prost-reflect's serde support): that needs a dependency the build
//! does not have yet, and its canonical proto3 JSON writes 64-bit integers as strings and omits
//! defaults. What makes the hand mapping safe is `tests::every_proto_field_is_in_the_json`: it
//! walks the compiled descriptor set ([`crate::proto::FILE_DESCRIPTOR_SET`]) and fails on any field a
//! mapping here leaves out or renames.

use serde_json::{json, Map, Value};

use crate::proto::v1::{self as pb, analyze_response::Event};

pub(crate) fn window_source_name(code: i32) -> &'static str {
    pb::WindowSource::try_from(code)
        .map(|r| r.as_str_name())
        .unwrap_or("WINDOW_SOURCE_UNSPECIFIED")
}

pub(crate) fn reject_reason_name(code: i32) -> &'static str {
    pb::RejectReason::try_from(code)
        .map(|r| r.as_str_name())
        .unwrap_or("REJECT_REASON_UNSPECIFIED")
}

pub(crate) fn completion_reason_name(code: i32) -> &'static str {
    pb::CompletionReason::try_from(code)
        .map(|r| r.as_str_name())
        .unwrap_or("COMPLETION_REASON_UNSPECIFIED")
}

fn slice_ref(s: &pb::SliceRef) -> Value {
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

fn model(m: &pb::ModelRef) -> Value {
    json!({"name": m.name, "version": m.version, "onnx_sha256": m.onnx_sha256})
}

fn location(l: &pb::Location) -> Value {
    json!({
        "row": l.row,
        "col": l.col,
        "patient": l.patient.as_ref().map(|p| json!({"x_mm": p.x_mm, "y_mm": p.y_mm, "z_mm": p.z_mm})),
    })
}

fn label_score(s: &pb::LabelScore) -> Value {
    json!({
        "label": s.label,
        "score": s.score,
        "positive": s.positive,
        "threshold": s.threshold,
        "peak": s.peak.as_ref().map(location),
        "bounding_box": s.bounding_box.as_ref().map(|b| json!({
            "row_min": b.row_min, "col_min": b.col_min, "row_max": b.row_max, "col_max": b.col_max,
        })),
    })
}

fn window(w: &pb::WindowUsed) -> Value {
    json!({
        "source": window_source_name(w.source),
        "center": w.center,
        "width": w.width,
        "file_window_index": w.file_window_index,
        "file_window_invalid": w.file_window_invalid,
    })
}

fn timings(t: &pb::StageTimings) -> Value {
    json!({
        "received_unix_us": t.received_unix_us,
        "decoded_unix_us": t.decoded_unix_us,
        "preprocessed_unix_us": t.preprocessed_unix_us,
        "scored_unix_us": t.scored_unix_us,
        "batch_size": t.batch_size,
    })
}

fn accepted(a: &pb::InstanceAccepted) -> Value {
    json!({
        "client_ref": a.client_ref,
        "slice": a.slice.as_ref().map(slice_ref),
        "frames": a.frames,
        "duplicate": a.duplicate,
        "models": a.models.iter().map(model).collect::<Vec<_>>(),
    })
}

fn rejected(r: &pb::InstanceRejected) -> Value {
    json!({
        "client_ref": r.client_ref,
        "sop_instance_uid": r.sop_instance_uid,
        "study_instance_uid": r.study_instance_uid,
        "reason": reject_reason_name(r.reason),
        "message": r.message,
        "frame": r.frame,
        "series_instance_uid": r.series_instance_uid,
        "model": r.model.as_ref().map(model),
    })
}

fn finding(f: &pb::SliceFinding) -> Value {
    json!({
        "slice": f.slice.as_ref().map(slice_ref),
        "client_ref": f.client_ref,
        "model": f.model.as_ref().map(model),
        "scores": f.scores.iter().map(label_score).collect::<Vec<_>>(),
        "timings": f.timings.as_ref().map(timings),
        "preprocess_path": f.preprocess_path,
        "window": f.window.as_ref().map(window),
        "resent": f.resent,
        "overlay": f.overlay,
    })
}

fn critical(c: &pb::CriticalFinding) -> Value {
    json!({
        "study_instance_uid": c.study_instance_uid,
        "label": c.label,
        "score": c.score,
        "critical_threshold": c.critical_threshold,
        "slice": c.slice.as_ref().map(slice_ref),
        "revision": c.revision,
        "model": c.model.as_ref().map(model),
        "peak": c.peak.as_ref().map(location),
        "slice_received_unix_us": c.slice_received_unix_us,
    })
}

fn slice_group(g: &pb::SliceGroup) -> Value {
    json!({
        "series_instance_uid": g.series_instance_uid,
        "first": g.first.as_ref().map(slice_ref),
        "last": g.last.as_ref().map(slice_ref),
        "peak": g.peak.as_ref().map(slice_ref),
        "max_score": g.max_score,
        "slices": g.slices,
        "extent_mm": g.extent_mm,
    })
}

fn label_summary(l: &pb::LabelSummary) -> Value {
    json!({
        "label": l.label,
        "max_score": l.max_score,
        "top_slice": l.top_slice.as_ref().map(slice_ref),
        "positive": l.positive,
        "positive_slices": l.positive_slices,
        "groups": l.groups.iter().map(slice_group).collect::<Vec<_>>(),
        "critical_threshold": l.critical_threshold,
        "critical": l.critical,
        "model": l.model,
    })
}

pub(crate) fn summary(s: &pb::StudySummary) -> Value {
    json!({
        "study_instance_uid": s.study_instance_uid,
        "model": s.model.as_ref().map(model),
        "labels": s.labels.iter().map(label_summary).collect::<Vec<_>>(),
        "slices_scored": s.slices_scored,
        "instances_accepted": s.instances_accepted,
        "instances_rejected": s.instances_rejected,
        "slices_failed": s.slices_failed,
        "wall_time_ms": s.wall_time_ms,
        "reason": completion_reason_name(s.reason),
        "revision": s.revision,
        "modality": s.modality,
        "series": s.series,
        "outside_model_rules": s.outside_model_rules,
        "models": s.models.iter().map(model).collect::<Vec<_>>(),
    })
}

/// Adds `"type": tag` in front of an object's fields.
fn tagged(tag: &str, body: Value) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), Value::from(tag));
    if let Value::Object(fields) = body {
        out.extend(fields);
    }
    Value::Object(out)
}

/// One JSON object per `Analyze` response: `{"type": "accepted" | "rejected" | "finding" | "critical" |
/// "summary", <the payload's fields>}` (`"empty"` for a response without an event).
pub fn to_json(response: &pb::AnalyzeResponse) -> Value {
    match &response.event {
        None => json!({"type": "empty"}),
        Some(Event::Accepted(a)) => tagged("accepted", accepted(a)),
        Some(Event::Rejected(r)) => tagged("rejected", rejected(r)),
        Some(Event::Finding(f)) => tagged("finding", finding(f)),
        Some(Event::Critical(c)) => tagged("critical", critical(c)),
        Some(Event::Summary(s)) => tagged("summary", summary(s)),
    }
}

/// A logged study event: `{"type": <payload member>, "sequence", "study_instance_uid",
/// "study_sequence", "logged_unix_us", "modality", <payload member>: {…}}`.
pub fn study_event_json(e: &pb::StudyEvent) -> Value {
    use pb::study_event::Event as E;
    let (tag, body) = match &e.event {
        None => ("empty", Value::Null),
        Some(E::Accepted(a)) => ("accepted", accepted(a)),
        Some(E::Rejected(r)) => ("rejected", rejected(r)),
        Some(E::Finding(f)) => ("finding", finding(f)),
        Some(E::Critical(c)) => ("critical", critical(c)),
        Some(E::Summary(s)) => ("summary", summary(s)),
    };
    let mut out = json!({
        "type": tag,
        "sequence": e.sequence,
        "study_instance_uid": e.study_instance_uid,
        "study_sequence": e.study_sequence,
        "logged_unix_us": e.logged_unix_us,
        "modality": e.modality,
    });
    if let (Value::Object(fields), false) = (&mut out, body.is_null()) {
        fields.insert(tag.into(), body);
    }
    out
}

/// One JSON object per `Watch` event: a study event as [`study_event_json`], `{"type": "missed",
/// "count", "first_sequence", "last_sequence"}` or `{"type": "caught_up", "sequence"}`.
pub fn watch_event_json(w: &pb::WatchEvent) -> Value {
    use pb::watch_event::Kind;
    match &w.kind {
        None => json!({"type": "empty"}),
        Some(Kind::Event(e)) => study_event_json(e),
        Some(Kind::Missed(m)) => json!({
            "type": "missed",
            "count": m.count,
            "first_sequence": m.first_sequence,
            "last_sequence": m.last_sequence,
        }),
        Some(Kind::CaughtUp(c)) => json!({"type": "caught_up", "sequence": c.sequence}),
    }
}

#[cfg(test)]
mod tests {
    //! The descriptor walk behind the "hand mapping is fragile" worry: every field of every message
    //! these mappings print must appear under its proto name, message fields recursively.
    use std::collections::{HashMap, HashSet};

    use prost::Message;

    use super::*;

    // The few descriptor.proto fields the walk needs (prost skips the rest); prost-types would give the
    // full types but is not a direct dependency.
    #[derive(Clone, PartialEq, Message)]
    struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<FileDescriptorProto>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct FileDescriptorProto {
        #[prost(string, tag = "2")]
        package: String,
        #[prost(message, repeated, tag = "4")]
        message_type: Vec<DescriptorProto>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct DescriptorProto {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(message, repeated, tag = "2")]
        field: Vec<FieldDescriptorProto>,
        #[prost(message, repeated, tag = "3")]
        nested_type: Vec<DescriptorProto>,
        #[prost(message, repeated, tag = "8")]
        oneof_decl: Vec<OneofDescriptorProto>,
    }
    #[derive(Clone, PartialEq, Message)]
    struct OneofDescriptorProto {
        #[prost(string, tag = "1")]
        name: String,
    }
    #[derive(Clone, PartialEq, Message)]
    struct FieldDescriptorProto {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(int32, tag = "4")]
        label: i32,
        #[prost(int32, tag = "5")]
        r#type: i32,
        #[prost(string, tag = "6")]
        type_name: String,
        #[prost(int32, optional, tag = "9")]
        oneof_index: Option<i32>,
        #[prost(bool, tag = "17")]
        proto3_optional: bool,
    }
    const TYPE_MESSAGE: i32 = 11;
    const TYPE_ENUM: i32 = 14;
    const LABEL_REPEATED: i32 = 3;

    impl FieldDescriptorProto {
        /// A member of a real `oneof` (proto3 `optional` is a synthetic one-field oneof).
        fn in_oneof(&self) -> bool {
            self.oneof_index.is_some() && !self.proto3_optional
        }
    }

    /// Messages by full name (".radstream.v1.SliceRef").
    fn messages() -> HashMap<String, DescriptorProto> {
        fn add(prefix: &str, d: &DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
            let name = format!("{prefix}.{}", d.name);
            for n in &d.nested_type {
                add(&name, n, out);
            }
            out.insert(name, d.clone());
        }
        let set = FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET)
            .expect("the compiled descriptor set decodes");
        let mut out = HashMap::new();
        for file in &set.file {
            for d in &file.message_type {
                add(&format!(".{}", file.package), d, &mut out);
            }
        }
        out
    }

    /// The members of `message`'s oneof `oneof`, by name.
    fn oneof_members(
        all: &HashMap<String, DescriptorProto>,
        message: &str,
        oneof: &str,
    ) -> Vec<String> {
        let d = &all[&format!(".radstream.v1.{message}")];
        let index = d
            .oneof_decl
            .iter()
            .position(|o| o.name == oneof)
            .expect("oneof") as i32;
        d.field
            .iter()
            .filter(|f| f.in_oneof() && f.oneof_index == Some(index))
            .map(|f| f.name.clone())
            .collect()
    }

    /// Checks `value` against message `name`: every non-oneof field present under its proto name, no
    /// key that is not a field (or `type`), enums as names, messages (which the samples fill) recursed.
    fn check(
        all: &HashMap<String, DescriptorProto>,
        name: &str,
        value: &Value,
        path: &str,
        problems: &mut Vec<String>,
    ) {
        let Some(object) = value.as_object() else {
            problems.push(format!("{path}: {name} is not an object: {value}"));
            return;
        };
        let d = &all[name];
        let fields: HashSet<&str> = d.field.iter().map(|f| f.name.as_str()).collect();
        for key in object.keys() {
            if key != "type" && !fields.contains(key.as_str()) {
                problems.push(format!("{path}.{key}: not a field of {name} (renamed?)"));
            }
        }
        for f in &d.field {
            let Some(v) = object.get(&f.name) else {
                if !f.in_oneof() {
                    problems.push(format!("{path}.{}: field of {name} missing", f.name));
                }
                continue;
            };
            let items: Vec<&Value> = match (f.label == LABEL_REPEATED, v) {
                (true, Value::Array(items)) => items.iter().collect(),
                (true, other) => {
                    problems.push(format!("{path}.{}: repeated but {other}", f.name));
                    continue;
                }
                (false, v) => vec![v],
            };
            if f.label == LABEL_REPEATED && items.is_empty() && f.r#type == TYPE_MESSAGE {
                problems.push(format!("{path}.{}: empty (fill it in the sample)", f.name));
            }
            for item in items {
                let at = format!("{path}.{}", f.name);
                match f.r#type {
                    TYPE_MESSAGE if item.is_null() => {
                        problems.push(format!("{at}: null (fill it in the sample)"))
                    }
                    TYPE_MESSAGE => check(all, &f.type_name, item, &at, problems),
                    TYPE_ENUM if !item.is_string() => {
                        problems.push(format!("{at}: enum not written by name: {item}"))
                    }
                    _ => {}
                }
            }
        }
    }

    fn full_slice(n: i32) -> pb::SliceRef {
        pb::SliceRef {
            study_instance_uid: "1.2.3".into(),
            series_instance_uid: "1.2.3.4".into(),
            sop_instance_uid: format!("1.2.3.4.{n}"),
            frame: 0,
            instance_number: Some(n),
            slice_position_mm: Some(f64::from(n) * 2.5),
            modality: "CT".into(),
        }
    }

    fn full_model() -> pb::ModelRef {
        pb::ModelRef {
            name: "lesion-demo".into(),
            version: "1.0.0".into(),
            onnx_sha256: "ab".repeat(32),
        }
    }

    fn full_location() -> pb::Location {
        pb::Location {
            row: 10.0,
            col: 20.0,
            patient: Some(pb::PatientPoint {
                x_mm: 1.0,
                y_mm: 2.0,
                z_mm: 3.0,
            }),
        }
    }

    fn full_group() -> pb::SliceGroup {
        pb::SliceGroup {
            series_instance_uid: "1.2.3.4".into(),
            first: Some(full_slice(5)),
            last: Some(full_slice(8)),
            peak: Some(full_slice(6)),
            max_score: 0.97,
            slices: 4,
            extent_mm: Some(10.0),
        }
    }

    /// One fully filled sample per payload (every message field set, every repeated field non-empty).
    fn full_payload(member: &str) -> Option<Event> {
        Some(match member {
            "accepted" => Event::Accepted(pb::InstanceAccepted {
                client_ref: "a.dcm".into(),
                slice: Some(full_slice(1)),
                frames: 1,
                duplicate: true,
                models: vec![full_model()],
            }),
            "rejected" => Event::Rejected(pb::InstanceRejected {
                client_ref: "b.dcm".into(),
                sop_instance_uid: "1.9".into(),
                study_instance_uid: "1.2.3".into(),
                reason: pb::RejectReason::MissingPixelData as i32,
                message: "no pixel data".into(),
                frame: Some(2),
                series_instance_uid: "1.2.3.4".into(),
                model: Some(full_model()),
            }),
            "finding" => Event::Finding(pb::SliceFinding {
                slice: Some(full_slice(6)),
                client_ref: "c.dcm".into(),
                model: Some(full_model()),
                scores: vec![pb::LabelScore {
                    label: "lesion".into(),
                    score: 0.97,
                    positive: true,
                    threshold: 0.573,
                    peak: Some(full_location()),
                    bounding_box: Some(pb::BoundingBox {
                        row_min: 1.0,
                        col_min: 2.0,
                        row_max: 3.0,
                        col_max: 4.0,
                    }),
                }],
                timings: Some(pb::StageTimings {
                    received_unix_us: 1,
                    decoded_unix_us: 2,
                    preprocessed_unix_us: 3,
                    scored_unix_us: 4,
                    batch_size: 8,
                }),
                preprocess_path: "cpu".into(),
                window: Some(pb::WindowUsed {
                    source: pb::WindowSource::File as i32,
                    center: 40.0,
                    width: 400.0,
                    file_window_index: Some(0),
                    file_window_invalid: false,
                }),
                resent: true,
                overlay: true,
            }),
            "critical" => Event::Critical(pb::CriticalFinding {
                study_instance_uid: "1.2.3".into(),
                label: "lesion".into(),
                score: 0.97,
                critical_threshold: 0.9,
                slice: Some(full_slice(6)),
                revision: 2,
                model: Some(full_model()),
                peak: Some(full_location()),
                slice_received_unix_us: 5,
            }),
            "summary" => Event::Summary(pb::StudySummary {
                study_instance_uid: "1.2.3".into(),
                model: Some(full_model()),
                labels: vec![pb::LabelSummary {
                    label: "lesion".into(),
                    max_score: 0.97,
                    top_slice: Some(full_slice(6)),
                    positive: true,
                    positive_slices: 4,
                    groups: vec![full_group()],
                    critical_threshold: Some(0.9),
                    critical: true,
                    model: "m".into(),
                }],
                slices_scored: 12,
                instances_accepted: 12,
                instances_rejected: 1,
                slices_failed: 0,
                wall_time_ms: 123.0,
                reason: pb::CompletionReason::EndOfStudy as i32,
                revision: 2,
                modality: "CT".into(),
                series: 1,
                outside_model_rules: "the study has 12 slices; model m 1 is for 20..=400 \
                                      (applies_to.slices)"
                    .into(),
                models: vec![full_model()],
            }),
            _ => return None,
        })
    }

    fn as_study_event(e: Event) -> pb::study_event::Event {
        use pb::study_event::Event as E;
        match e {
            Event::Accepted(a) => E::Accepted(a),
            Event::Rejected(r) => E::Rejected(r),
            Event::Finding(f) => E::Finding(f),
            Event::Critical(c) => E::Critical(c),
            Event::Summary(s) => E::Summary(s),
        }
    }

    /// The proto message type of a oneof member of `message`.
    fn member_type(all: &HashMap<String, DescriptorProto>, message: &str, member: &str) -> String {
        all[&format!(".radstream.v1.{message}")]
            .field
            .iter()
            .find(|f| f.name == member)
            .map(|f| f.type_name.clone())
            .expect("member")
    }

    #[test]
    fn every_proto_field_is_in_the_json() {
        let all = messages();
        let mut problems = Vec::new();

        // push: every member of AnalyzeResponse.event, flattened under its type tag.
        for member in oneof_members(&all, "AnalyzeResponse", "event") {
            let Some(event) = full_payload(&member) else {
                problems.push(format!("AnalyzeResponse.{member}: no sample, no mapping?"));
                continue;
            };
            let json = to_json(&pb::AnalyzeResponse { event: Some(event) });
            assert_eq!(json["type"], member.as_str());
            let name = member_type(&all, "AnalyzeResponse", &member);
            check(&all, &name, &json, &member, &mut problems);
        }

        // watch: every member of WatchEvent.kind; study events with every member of StudyEvent.event.
        for member in oneof_members(&all, "WatchEvent", "kind") {
            let samples: Vec<pb::WatchEvent> = match member.as_str() {
                "event" => oneof_members(&all, "StudyEvent", "event")
                    .iter()
                    .map(|m| {
                        let payload = full_payload(m).map(as_study_event);
                        if payload.is_none() {
                            problems.push(format!("StudyEvent.{m}: no sample, no mapping?"));
                        }
                        pb::WatchEvent {
                            kind: Some(pb::watch_event::Kind::Event(pb::StudyEvent {
                                sequence: 7,
                                study_instance_uid: "1.2.3".into(),
                                study_sequence: 3,
                                logged_unix_us: 9,
                                modality: "CT".into(),
                                event: payload,
                            })),
                        }
                    })
                    .collect(),
                "missed" => vec![pb::WatchEvent {
                    kind: Some(pb::watch_event::Kind::Missed(pb::Missed {
                        count: 3,
                        first_sequence: 4,
                        last_sequence: 6,
                    })),
                }],
                "caught_up" => vec![pb::WatchEvent {
                    kind: Some(pb::watch_event::Kind::CaughtUp(pb::CaughtUp {
                        sequence: 9,
                    })),
                }],
                other => {
                    problems.push(format!("WatchEvent.{other}: no sample, no mapping?"));
                    continue;
                }
            };
            for sample in samples {
                let json = watch_event_json(&sample);
                let name = member_type(&all, "WatchEvent", &member);
                if member == "event" {
                    let tag = json["type"].as_str().unwrap_or_default().to_string();
                    if json.get(&tag).is_none_or(Value::is_null) {
                        problems.push(format!("event: payload not under its type {tag:?}: {json}"));
                    }
                } else {
                    assert_eq!(json["type"], member.as_str());
                }
                check(&all, &name, &json, &member, &mut problems);
            }
        }
        assert!(
            problems.is_empty(),
            "JSON mapping vs proto:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn the_descriptor_walk_catches_a_missing_or_renamed_field() {
        // The check itself must be able to fail: drop one nested field, rename another.
        let all = messages();
        let mut json = to_json(&pb::AnalyzeResponse {
            event: full_payload("summary"),
        });
        let group = &mut json["labels"][0]["groups"][0];
        let extent = group
            .as_object_mut()
            .and_then(|g| g.remove("extent_mm"))
            .expect("extent_mm is written");
        group["extent"] = extent;
        let mut problems = Vec::new();
        check(
            &all,
            ".radstream.v1.StudySummary",
            &json,
            "summary",
            &mut problems,
        );
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("groups.extent_mm: field of")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("groups.extent: not a field")),
            "{problems:?}"
        );
    }

    #[test]
    fn the_window_used_is_serialised_by_name() {
        let finding = |window| pb::AnalyzeResponse {
            event: Some(Event::Finding(pb::SliceFinding {
                window: Some(window),
                ..Default::default()
            })),
        };
        let json = to_json(&finding(pb::WindowUsed {
            source: pb::WindowSource::MinMax as i32,
            center: 442.5,
            width: 885.0,
            file_window_index: None,
            file_window_invalid: true,
        }));
        assert_eq!(
            json["window"],
            json!({"source": "WINDOW_SOURCE_MIN_MAX", "center": 442.5, "width": 885.0,
                   "file_window_index": null, "file_window_invalid": true})
        );
        let json = to_json(&finding(pb::WindowUsed {
            source: pb::WindowSource::File as i32,
            file_window_index: Some(1),
            ..Default::default()
        }));
        assert_eq!(json["window"]["source"], "WINDOW_SOURCE_FILE");
        assert_eq!(json["window"]["file_window_index"], 1);
        // Colour slices: no window.
        let json = to_json(&pb::AnalyzeResponse {
            event: Some(Event::Finding(pb::SliceFinding::default())),
        });
        assert!(json["window"].is_null());
    }

    #[test]
    fn study_events_carry_their_payload_under_its_name() {
        let event = pb::WatchEvent {
            kind: Some(pb::watch_event::Kind::Event(pb::StudyEvent {
                sequence: 41,
                study_instance_uid: "1.2.3".into(),
                study_sequence: 2,
                logged_unix_us: 1_700_000_000_000_000,
                modality: "CT".into(),
                event: full_payload("critical").map(as_study_event),
            })),
        };
        let json = watch_event_json(&event);
        assert_eq!(json["type"], "critical");
        assert_eq!(json["sequence"], 41);
        assert_eq!(json["logged_unix_us"], 1_700_000_000_000_000_i64);
        assert_eq!(json["critical"]["label"], "lesion");
        assert_eq!(json["critical"]["revision"], 2);
        assert_eq!(json["critical"]["slice"]["instance_number"], 6);
        let missed = watch_event_json(&pb::WatchEvent {
            kind: Some(pb::watch_event::Kind::Missed(pb::Missed {
                count: 3,
                first_sequence: 4,
                last_sequence: 6,
            })),
        });
        assert_eq!(
            missed,
            json!({"type": "missed", "count": 3, "first_sequence": 4, "last_sequence": 6})
        );
    }
}
