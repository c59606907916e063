//! The admin side of `radstream models`: list, load, activate, unload, roll back and shadow model
//! versions of a running service over `radstream.v1.Models`. An ML engineer swaps models while studies
//! stream, so what matters in the output is which version serves (`active`), which one is compared
//! against it (`shadow`), which one was refused and why (a failed version's reason names the field and
//! the fix), and what each has scored so far: the table says exactly that, one row per version.
//!
//! The server's refusals (unloading the active version, activating a failed one, a broken manifest)
//! come back as [`ModelsError::Refused`] carrying the service's own message, which already says what to
//! do; the CLI prints it and exits 1. `--json` prints the response message in the canonical proto3
//! JSON mapping with proto field names (generated, so a new field appears without code here; see
//! [`super::proto_json`]).

use crate::proto::v1::{self as pb, models_client::ModelsClient};

/// Why a `models` command did not do what it asked.
#[derive(Debug, thiserror::Error)]
pub enum ModelsError {
    /// The service could not be reached.
    #[error(transparent)]
    Connect(#[from] crate::error::Error),
    /// The service refused the request; `message` is its reason as it gave it.
    #[error("{message}")]
    Refused { code: tonic::Code, message: String },
}

impl From<tonic::Status> for ModelsError {
    fn from(status: tonic::Status) -> Self {
        ModelsError::Refused {
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// One `radstream models` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelsRequest {
    List,
    Load {
        name: String,
        version: String,
        activate: bool,
    },
    Activate {
        name: String,
        version: String,
    },
    Unload {
        name: String,
        version: String,
    },
    Rollback {
        name: String,
    },
    /// `version: None` stops the model's shadow.
    Shadow {
        name: String,
        version: Option<String>,
    },
}

/// What the service answered.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelsReply {
    List(pb::ListModelsResponse),
    /// The version a load, activate, unload or rollback acted on, as it stands afterwards.
    Version(&'static str, Box<pb::ModelVersion>),
    Shadow(pb::ShadowAgreement),
}

/// Sends `request` to the service at `target`.
pub async fn request(
    target: impl Into<super::Target>,
    request: ModelsRequest,
) -> Result<ModelsReply, ModelsError> {
    let mut client = ModelsClient::new(super::connect(&target.into()).await?);
    let version_request = |name: String, version: String, activate: bool| pb::ModelVersionRequest {
        name,
        version,
        activate,
    };
    Ok(match request {
        ModelsRequest::List => {
            ModelsReply::List(client.list(pb::ListModelsRequest {}).await?.into_inner())
        }
        ModelsRequest::Load {
            name,
            version,
            activate,
        } => ModelsReply::Version(
            if activate {
                "loaded and activated"
            } else {
                "loaded"
            },
            Box::new(
                client
                    .load(version_request(name, version, activate))
                    .await?
                    .into_inner(),
            ),
        ),
        ModelsRequest::Activate { name, version } => ModelsReply::Version(
            "activated",
            Box::new(
                client
                    .activate(version_request(name, version, false))
                    .await?
                    .into_inner(),
            ),
        ),
        ModelsRequest::Unload { name, version } => ModelsReply::Version(
            "unloaded",
            Box::new(
                client
                    .unload(version_request(name, version, false))
                    .await?
                    .into_inner(),
            ),
        ),
        ModelsRequest::Rollback { name } => ModelsReply::Version(
            "rolled back to",
            Box::new(
                client
                    .rollback(pb::RollbackRequest { name })
                    .await?
                    .into_inner(),
            ),
        ),
        ModelsRequest::Shadow { name, version } => ModelsReply::Shadow(
            client
                .shadow(version_request(name, version.unwrap_or_default(), false))
                .await?
                .into_inner(),
        ),
    })
}

/// Sends `request` and prints the answer (readable, or one JSON object); the CLI's `models` commands.
pub async fn request_and_print(
    target: impl Into<super::Target>,
    request: ModelsRequest,
    json: bool,
) -> Result<ModelsReply, ModelsError> {
    let reply = self::request(target, request).await?;
    if json {
        if let Some(line) = reply_json(&reply) {
            super::print_line(&line);
        }
    } else {
        super::print_line(render_reply(&reply).trim_end_matches('\n'));
    }
    Ok(reply)
}

pub fn state_name(code: i32) -> &'static str {
    pb::ModelState::try_from(code)
        .map(|s| s.as_str_name())
        .unwrap_or("MODEL_STATE_UNSPECIFIED")
}

/// The state as the table shows it: `ready`, `loading`, `failed`.
fn state_word(code: i32) -> &'static str {
    match pb::ModelState::try_from(code) {
        Ok(pb::ModelState::Ready) => "ready",
        Ok(pb::ModelState::Loading) => "loading",
        Ok(pb::ModelState::Failed) => "failed",
        _ => "unknown",
    }
}

/// The reply as `--json` prints it: the response message in the canonical proto3 JSON mapping (see
/// [`super::proto_json`]); `None` when it cannot be written (an enum value this client does not know).
pub fn reply_json(reply: &ModelsReply) -> Option<String> {
    match reply {
        ModelsReply::List(list) => super::proto_json(list),
        ModelsReply::Version(_, v) => super::proto_json(v.as_ref()),
        ModelsReply::Shadow(s) => super::proto_json(s),
    }
}

/// The first 12 hex digits of a sha256: enough to tell versions apart at a glance.
fn short_sha(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// The version table: one row per version, a failed version's reason under it, each ready version's
/// description under it, then each shadow's agreement per label.
pub fn render_list(list: &pb::ListModelsResponse) -> String {
    const HEADER: [&str; 9] = [
        "MODEL",
        "VERSION",
        "STATE",
        "SERVING",
        "SHA256",
        "INSTANCES",
        "SCORED",
        "FAILED",
        "APPLIES TO",
    ];
    if list.versions.is_empty() {
        return "no model versions (see `radstream models load`)\n".to_string();
    }
    let rows: Vec<[String; 9]> = list
        .versions
        .iter()
        .map(|v| {
            let serving = match (v.active, v.shadow) {
                (true, _) => "active",
                (false, true) => "shadow",
                (false, false) => "-",
            };
            let (instances, scored, failed) = match &v.counters {
                Some(c) => (
                    c.instances.to_string(),
                    c.slices_scored.to_string(),
                    c.slices_failed.to_string(),
                ),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let applies_to = match (v.state == pb::ModelState::Ready as i32, &v.applies_to) {
                (false, _) => "-".to_string(),
                (true, a) if a.is_empty() => "every instance".to_string(),
                (true, a) => a.clone(),
            };
            [
                v.name.clone(),
                v.version.clone(),
                state_word(v.state).to_string(),
                serving.to_string(),
                if v.onnx_sha256.is_empty() {
                    "-".to_string()
                } else {
                    short_sha(&v.onnx_sha256).to_string()
                },
                instances,
                scored,
                failed,
                applies_to,
            ]
        })
        .collect();
    let mut widths = HEADER.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(&HEADER.map(String::from));
    for (row, v) in rows.iter().zip(&list.versions) {
        out.push_str(&line(row));
        if !v.reason.is_empty() {
            out.push_str(&format!("    reason: {}\n", v.reason));
        }
        if let Some(card) = v.card.as_ref().filter(|c| !c.description.is_empty()) {
            out.push_str(&format!("    {}\n", card.description));
        }
    }
    for shadow in &list.shadows {
        out.push_str(&render_shadow(shadow));
    }
    out
}

/// A shadow's agreement with the active version, per label.
pub fn render_shadow(s: &pb::ShadowAgreement) -> String {
    if s.candidate.is_empty() {
        return format!("{}: no shadow runs\n", s.model);
    }
    let against = if s.active.is_empty() {
        "the active version (nothing compared yet)".to_string()
    } else {
        format!("active {}", s.active.join(", "))
    };
    let mut out = format!("shadow {} {} vs {against}\n", s.model, s.candidate);
    for l in &s.labels {
        out.push_str(&format!(
            "    {}: {} slices, agreement {:.1}% ({}/{}), mean |diff| {:.4}\n",
            l.label,
            l.slices,
            l.agreement * 100.0,
            l.agreeing,
            l.slices,
            l.mean_abs_diff
        ));
    }
    out
}

/// One version after a load, activate, unload or rollback.
fn render_version(verb: &str, v: &pb::ModelVersion) -> String {
    let mut marks = vec![state_word(v.state).to_string()];
    if v.active {
        marks.push("active".into());
    }
    if v.shadow {
        marks.push("shadow".into());
    }
    if !v.onnx_sha256.is_empty() {
        marks.push(format!("sha256 {}", short_sha(&v.onnx_sha256)));
    }
    format!("{verb} {} {} ({})\n", v.name, v.version, marks.join(", "))
}

pub fn render_reply(reply: &ModelsReply) -> String {
    match reply {
        ModelsReply::List(list) => render_list(list),
        ModelsReply::Version(verb, v) => render_version(verb, v),
        ModelsReply::Shadow(s) if s.candidate.is_empty() => {
            format!("shadow of {} stopped\n", s.model)
        }
        ModelsReply::Shadow(s) => format!(
            "{} {} runs as the shadow of the active version; its agreement starts from zero \
             (see `radstream models list`)\n",
            s.model, s.candidate
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(version: &str, active: bool) -> pb::ModelVersion {
        pb::ModelVersion {
            name: "lesion-demo".into(),
            version: version.into(),
            state: pb::ModelState::Ready as i32,
            active,
            onnx_sha256: "0123456789abcdef".repeat(4),
            counters: Some(pb::ModelCounters {
                instances: 12,
                slices_scored: 12,
                slices_failed: 0,
            }),
            labels: vec!["lesion".into()],
            card: Some(pb::ModelCard {
                description: "Demo detector".into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_table_marks_the_active_version_and_gives_a_failed_ones_reason() {
        let list = pb::ListModelsResponse {
            versions: vec![
                ready("1.0.0", true),
                pb::ModelVersion {
                    name: "lesion-demo".into(),
                    version: "1.1.0".into(),
                    state: pb::ModelState::Failed as i32,
                    reason: "declare layout = \"NHWC\" in [input]".into(),
                    ..Default::default()
                },
            ],
            shadows: vec![pb::ShadowAgreement {
                model: "lesion-demo".into(),
                candidate: "1.2.0".into(),
                active: vec!["1.0.0".into()],
                labels: vec![pb::LabelAgreement {
                    label: "lesion".into(),
                    slices: 4,
                    agreeing: 3,
                    agreement: 0.75,
                    mean_abs_diff: 0.125,
                }],
            }],
        };
        let table = render_list(&list);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("MODEL"), "{table}");
        let words: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            words[..9],
            [
                "lesion-demo",
                "1.0.0",
                "ready",
                "active",
                "0123456789ab",
                "12",
                "12",
                "0",
                "every"
            ],
            "{table}"
        );
        assert_eq!(lines[2], "    Demo detector");
        assert!(
            lines[3].starts_with("lesion-demo  1.1.0    failed"),
            "{table}"
        );
        assert_eq!(lines[4], "    reason: declare layout = \"NHWC\" in [input]");
        assert_eq!(lines[5], "shadow lesion-demo 1.2.0 vs active 1.0.0");
        assert_eq!(
            lines[6],
            "    lesion: 4 slices, agreement 75.0% (3/4), mean |diff| 0.1250"
        );
    }

    #[test]
    fn json_is_canonical_proto3_with_proto_field_names() {
        let line = reply_json(&ModelsReply::Version(
            "loaded",
            Box::new(ready("1.0.0", true)),
        ))
        .expect("a known state writes");
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(v["state"], "MODEL_STATE_READY");
        // uint64 is a string in proto3 JSON; a default (slices_failed = 0) is left out.
        assert_eq!(v["counters"]["slices_scored"], "12");
        assert!(v["counters"].get("slices_failed").is_none(), "{v}");
        assert_eq!(v["card"]["description"], "Demo detector");
        assert_eq!(v["onnx_sha256"], "0123456789abcdef".repeat(4));
        let failed = reply_json(&ModelsReply::Version(
            "loaded",
            Box::new(pb::ModelVersion {
                state: pb::ModelState::Failed as i32,
                ..Default::default()
            }),
        ))
        .expect("writes");
        assert_eq!(failed, r#"{"state":"MODEL_STATE_FAILED"}"#);
        let unknown = pb::ModelVersion {
            state: 99,
            ..Default::default()
        };
        assert_eq!(
            reply_json(&ModelsReply::Version("loaded", Box::new(unknown))),
            None
        );
    }
}
