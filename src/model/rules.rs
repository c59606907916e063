//! Which studies a model is for: the manifest's optional `[applies_to]` table, compiled at load.
//!
//! Why: the service loads one model and would otherwise score whatever arrives — a brain-MR classifier
//! scoring a CT slice answers with a number that means nothing, and nothing would say so. The rules let
//! the intake refuse such an instance right after its header is read (before it is decoded or counted
//! in its study), with a message that says which rule excluded it and what the model is for; the
//! slice-count range is a property of the whole study, so the registry notes it in the study's summary.
//!
//! What a message may say: Modality and Body Part Examined are echoed only as defined terms (the decoder
//! keeps nothing else); the Series Description is free text and is never echoed, only matched.
//!
//! Matching: `modalities` exactly (the decoder keeps only defined terms); `body_parts`
//! case-insensitively, trimmed; `series_description` is a `regex` pattern searched anywhere in the
//! description (anchor it with `^…$` to match the whole; `(?i)` for case-insensitive), in linear time.
//! An instance without the attribute a rule asks about is excluded by that rule: the model's fitness
//! cannot be confirmed.

use std::fmt;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;

use super::manifest::ModelSection;
use crate::decode::{plausible_term, InstanceMeta, MODALITY_DEFINED_TERMS};

/// The longest `series_description` pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;

/// The most memory one compiled pattern (and its lazy DFA) may take: a short pattern with large counted
/// repetitions (`a{1000}{1000}`) is refused at load instead of growing without bound.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// `[applies_to]` as written. Every field is optional; absent, the model applies to everything.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppliesToToml {
    /// Modality (0008,0060) defined terms, e.g. `["CT", "MR"]`.
    #[serde(default)]
    pub modalities: Option<Vec<String>>,
    /// Body Part Examined (0018,0015) defined terms, e.g. `["HEAD", "BRAIN"]`.
    #[serde(default)]
    pub body_parts: Option<Vec<String>>,
    /// A pattern (`regex` crate syntax) the Series Description (0008,103E) must match.
    #[serde(default)]
    pub series_description: Option<String>,
    /// The number of slices a study must have: `{ min = 10, max = 400 }`.
    #[serde(default)]
    pub slices: Option<SliceRangeToml>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SliceRangeToml {
    pub min: u32,
    pub max: u32,
}

/// The compiled rules of one model. The default applies to everything.
#[derive(Debug, Clone, Default)]
pub struct ModelRules {
    /// `name version`, for messages.
    model: String,
    modalities: Option<Vec<String>>,
    body_parts: Option<Vec<String>>,
    series_description: Option<Regex>,
    slices: Option<(u32, u32)>,
}

/// Why an instance is not for the model: its [`fmt::Display`] is the rejection message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    model: String,
    rule: Excluded,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Excluded {
    /// `found`: the instance's Modality (a defined term), if it has one.
    Modality {
        allowed: Vec<String>,
        found: Option<String>,
    },
    /// `found`: the instance's Body Part Examined (a plausible defined term), if it has one.
    BodyPart {
        allowed: Vec<String>,
        found: Option<String>,
    },
    /// The description itself is never kept here.
    SeriesDescription { absent: bool },
}

impl Exclusion {
    /// The manifest field that excluded the instance (e.g. `applies_to.modalities`).
    pub fn field(&self) -> &'static str {
        match self.rule {
            Excluded::Modality { .. } => "applies_to.modalities",
            Excluded::BodyPart { .. } => "applies_to.body_parts",
            Excluded::SeriesDescription { .. } => "applies_to.series_description",
        }
    }
}

impl Exclusion {
    /// Why, without the "no model serves this instance" lead: for joining several models' reasons.
    pub fn reason(&self) -> String {
        let field = self.field();
        let model = &self.model;
        match &self.rule {
            Excluded::Modality { allowed, found } => {
                let found = match found {
                    Some(m) => format!("this instance is {m}"),
                    None => "this instance has no Modality that is a defined term".into(),
                };
                format!(
                    "model {model} is for modalities {} ({field}); {found}",
                    allowed.join(", ")
                )
            }
            Excluded::BodyPart { allowed, found } => {
                let found = match found {
                    Some(b) => format!("this instance is {b}"),
                    None => {
                        "this instance has no BodyPartExamined (0018,0015) that is a defined term"
                            .into()
                    }
                };
                format!(
                    "model {model} is for body parts {} ({field}); {found}",
                    allowed.join(", ")
                )
            }
            Excluded::SeriesDescription { absent } => {
                let found = if *absent {
                    "this instance has no SeriesDescription".to_string()
                } else {
                    format!("its SeriesDescription does not match {field}")
                };
                format!(
                    "model {model} is for series whose SeriesDescription matches {field}; {found}"
                )
            }
        }
    }
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no model serves this instance: {}", self.reason())
    }
}

impl std::error::Error for Exclusion {}

impl ModelRules {
    /// Validates `[applies_to]` field by field and compiles it; the error names the field.
    pub fn compile(model: &ModelSection, t: &AppliesToToml) -> Result<Self, String> {
        let modalities = t
            .modalities
            .as_ref()
            .map(|terms| {
                terms_list(terms, "applies_to.modalities", |term| {
                    let upper = term.trim().to_ascii_uppercase();
                    if MODALITY_DEFINED_TERMS.contains(&upper.as_str()) {
                        Ok(upper)
                    } else {
                        Err(format!(
                            "{term:?} is not a DICOM Modality (0008,0060) defined term (PS3.3 \
                             C.7.3.1.1.1); accepted: {}",
                            MODALITY_DEFINED_TERMS.join(", ")
                        ))
                    }
                })
            })
            .transpose()?;
        let body_parts = t
            .body_parts
            .as_ref()
            .map(|terms| {
                terms_list(terms, "applies_to.body_parts", |term| {
                    plausible_term(term).ok_or_else(|| {
                        format!(
                            "{term:?} is not a BodyPartExamined (0018,0015) defined term: letters, \
                             digits, spaces and underscores, at most {} characters (e.g. \"HEAD\", \
                             \"BRAIN\", \"CHEST\")",
                            crate::decode::MAX_TERM_CHARS
                        )
                    })
                })
            })
            .transpose()?;
        let series_description = t
            .series_description
            .as_deref()
            .map(compile_pattern)
            .transpose()
            .map_err(|e| format!("applies_to.series_description: {e}"))?;
        let slices = t
            .slices
            .map(|r| {
                if r.min > r.max {
                    Err(format!(
                        "applies_to.slices: min = {} is greater than max = {}",
                        r.min, r.max
                    ))
                } else if r.max == 0 {
                    Err("applies_to.slices: max = 0 admits no study; max must be at least 1".into())
                } else {
                    Ok((r.min, r.max))
                }
            })
            .transpose()?;
        Ok(Self {
            model: format!("{} {}", model.name, model.version),
            modalities,
            body_parts,
            series_description,
            slices,
        })
    }

    /// Whether the instance of `meta` is for this model; the first rule that excludes it otherwise.
    pub fn admits(&self, meta: &InstanceMeta) -> Result<(), Exclusion> {
        let exclusion = |rule| {
            Err(Exclusion {
                model: self.model.clone(),
                rule,
            })
        };
        if let Some(allowed) = &self.modalities {
            // The decoder keeps a Modality only when it is a defined term: it may be echoed.
            let found = meta.modality.clone();
            if !found.as_ref().is_some_and(|m| allowed.contains(m)) {
                return exclusion(Excluded::Modality {
                    allowed: allowed.clone(),
                    found,
                });
            }
        }
        if let Some(allowed) = &self.body_parts {
            // Kept only in a defined term's form, trimmed and upper-cased: it may be echoed.
            let found = meta.body_part_examined.as_deref().and_then(plausible_term);
            if !found.as_ref().is_some_and(|b| allowed.contains(b)) {
                return exclusion(Excluded::BodyPart {
                    allowed: allowed.clone(),
                    found,
                });
            }
        }
        if let Some(pattern) = &self.series_description {
            match meta.series_description.as_deref() {
                None => return exclusion(Excluded::SeriesDescription { absent: true }),
                Some(d) if !pattern.is_match(d) => {
                    return exclusion(Excluded::SeriesDescription { absent: false })
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// The slice-count range a study must fall in (`applies_to.slices`), if any.
    pub fn slices(&self) -> Option<(u32, u32)> {
        self.slices
    }

    /// The rules in one line (`modalities CT, MR; body parts HEAD; SeriesDescription /…/; slices
    /// 10..=400`), `None` when there are none: what `radstream models validate` shows.
    pub fn describe(&self) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(m) = &self.modalities {
            parts.push(format!("modalities {}", m.join(", ")));
        }
        if let Some(b) = &self.body_parts {
            parts.push(format!("body parts {}", b.join(", ")));
        }
        if let Some(r) = &self.series_description {
            parts.push(format!("SeriesDescription /{}/", r.as_str()));
        }
        if let Some((min, max)) = self.slices {
            parts.push(format!("slices {min}..={max}"));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Whether no rule is set (the model applies to everything).
    pub fn applies_to_everything(&self) -> bool {
        self.modalities.is_none()
            && self.body_parts.is_none()
            && self.series_description.is_none()
            && self.slices.is_none()
    }
}

/// The note a study's summary carries when its slice count is outside the model's range; `None` inside.
/// `model` names the model (`name version`).
pub fn slice_note(model: &str, range: (u32, u32), slices: u32) -> Option<String> {
    let (min, max) = range;
    if (min..=max).contains(&slices) {
        return None;
    }
    Some(format!(
        "the study has {slices} slice{}; model {model} is for {min}..={max} (applies_to.slices)",
        if slices == 1 { "" } else { "s" }
    ))
}

/// A non-empty list of terms, each checked by `term`, without repeats.
fn terms_list(
    terms: &[String],
    field: &str,
    term: impl Fn(&str) -> Result<String, String>,
) -> Result<Vec<String>, String> {
    if terms.is_empty() {
        return Err(format!(
            "{field} is empty: list at least one term, or leave it out to apply to all"
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(terms.len());
    for t in terms {
        let t = term(t).map_err(|e| format!("{field}: {e}"))?;
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}

fn compile_pattern(pattern: &str) -> Result<Regex, String> {
    if pattern.is_empty() {
        return Err("is empty: give a pattern, or leave it out to apply to every series".into());
    }
    if pattern.len() > MAX_PATTERN_BYTES {
        return Err(format!(
            "the pattern is {} bytes; at most {MAX_PATTERN_BYTES} are accepted",
            pattern.len()
        ));
    }
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section() -> ModelSection {
        ModelSection {
            name: "brain-mr".into(),
            version: "2.1".into(),
            file: "m.onnx".into(),
            description: String::new(),
        }
    }

    fn rules(toml_text: &str) -> Result<ModelRules, String> {
        let t: AppliesToToml = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        ModelRules::compile(&section(), &t)
    }

    fn meta(modality: Option<&str>, body: Option<&str>, description: Option<&str>) -> InstanceMeta {
        InstanceMeta {
            modality: modality.map(Into::into),
            body_part_examined: body.map(Into::into),
            series_description: description.map(Into::into),
            instance_number: Some(1),
            ..InstanceMeta::for_test("1.2.3", "1.2.3.4")
        }
    }

    #[test]
    fn no_rules_admit_everything() {
        let r = rules("").expect("empty table");
        assert!(r.applies_to_everything());
        assert_eq!(r.admits(&meta(None, None, None)), Ok(()));
        assert_eq!(
            r.admits(&meta(Some("US"), Some("CHEST"), Some("x"))),
            Ok(())
        );
        assert!(ModelRules::default()
            .admits(&meta(None, None, None))
            .is_ok());
    }

    #[test]
    fn modality_rule_names_the_field_the_terms_and_the_instance() {
        let r = rules(r#"modalities = ["ct", " MR "]"#).expect("valid");
        assert!(r.admits(&meta(Some("CT"), None, None)).is_ok());
        assert!(r.admits(&meta(Some("MR"), None, None)).is_ok());
        let e = r.admits(&meta(Some("US"), None, None)).expect_err("US");
        assert_eq!(e.field(), "applies_to.modalities");
        assert_eq!(
            e.to_string(),
            "no model serves this instance: model brain-mr 2.1 is for modalities CT, MR \
             (applies_to.modalities); this instance is US"
        );
        let e = r.admits(&meta(None, None, None)).expect_err("no modality");
        assert!(
            e.to_string()
                .ends_with("has no Modality that is a defined term"),
            "{e}"
        );
    }

    #[test]
    fn body_parts_match_case_insensitively_and_trimmed() {
        let r = rules(r#"body_parts = ["head", "BRAIN"]"#).expect("valid");
        assert!(r.admits(&meta(None, Some("HEAD"), None)).is_ok());
        assert!(r.admits(&meta(None, Some(" brain "), None)).is_ok());
        assert!(r.admits(&meta(None, Some("Brain"), None)).is_ok());
        let e = r
            .admits(&meta(None, Some("CHEST"), None))
            .expect_err("chest");
        assert_eq!(
            e.to_string(),
            "no model serves this instance: model brain-mr 2.1 is for body parts HEAD, BRAIN \
             (applies_to.body_parts); this instance is CHEST"
        );
        let e = r.admits(&meta(None, None, None)).expect_err("absent");
        assert!(e.to_string().contains("has no BodyPartExamined"), "{e}");
        // Free text that reached the meta some other way is still never echoed.
        let e = r
            .admits(&meta(None, Some("Doe^John head"), None))
            .expect_err("free text");
        assert!(!e.to_string().contains("Doe"), "{e}");
    }

    #[test]
    fn series_description_is_matched_by_its_pattern_and_never_echoed() {
        let r = rules(r#"series_description = '(?i)\bT1\b|^FSE PD'"#).expect("valid");
        assert!(r
            .admits(&meta(None, None, Some("FSE PD AXIAL OBL")))
            .is_ok());
        assert!(r.admits(&meta(None, None, Some("sag t1 post"))).is_ok());
        let e = r
            .admits(&meta(None, None, Some("Secret Planted T2 FLAIR")))
            .expect_err("no match");
        let text = e.to_string();
        assert_eq!(e.field(), "applies_to.series_description");
        assert!(
            text.ends_with("its SeriesDescription does not match applies_to.series_description"),
            "{text}"
        );
        assert!(
            !text.contains("Planted") && !text.contains("FLAIR"),
            "{text}"
        );
        assert!(!format!("{e:?}").contains("Planted"));
        let e = r.admits(&meta(None, None, None)).expect_err("absent");
        assert!(e.to_string().ends_with("has no SeriesDescription"), "{e}");
    }

    #[test]
    fn rules_apply_in_order_modality_first() {
        let r = rules(
            r#"
modalities = ["MR"]
body_parts = ["HEAD"]
series_description = "T1"
"#,
        )
        .expect("valid");
        assert!(r
            .admits(&meta(Some("MR"), Some("HEAD"), Some("T1 AX")))
            .is_ok());
        let field = |m: InstanceMeta| r.admits(&m).expect_err("excluded").field();
        assert_eq!(
            field(meta(Some("CT"), Some("HEAD"), Some("T1"))),
            "applies_to.modalities"
        );
        assert_eq!(
            field(meta(Some("MR"), Some("KNEE"), Some("T1"))),
            "applies_to.body_parts"
        );
        assert_eq!(
            field(meta(Some("MR"), Some("HEAD"), Some("T2"))),
            "applies_to.series_description"
        );
    }

    #[test]
    fn invalid_rules_are_refused_naming_the_field() {
        for (text, words) in [
            (
                r#"modalities = ["XX"]"#,
                "applies_to.modalities: \"XX\" is not",
            ),
            (r#"modalities = []"#, "applies_to.modalities is empty"),
            (
                r#"body_parts = ["HEAD-NECK"]"#,
                "applies_to.body_parts: \"HEAD-NECK\"",
            ),
            (r#"body_parts = []"#, "applies_to.body_parts is empty"),
            (
                r#"series_description = "(unclosed""#,
                "applies_to.series_description: regex parse error",
            ),
            (
                r#"series_description = """#,
                "applies_to.series_description: is empty",
            ),
            (
                r#"series_description = "a{1000}{1000}""#,
                "applies_to.series_description",
            ),
            (
                "slices = { min = 10, max = 3 }",
                "min = 10 is greater than max = 3",
            ),
            (
                "slices = { min = 0, max = 0 }",
                "applies_to.slices: max = 0",
            ),
        ] {
            let err = rules(text).expect_err(text);
            assert!(err.contains(words), "{text}: {err}");
        }
        // The list of accepted terms comes with an unknown modality.
        let err = rules(r#"modalities = ["XX"]"#).expect_err("XX");
        assert!(
            err.contains("accepted: AR,") && err.contains(" CT,") && err.contains(" MR,"),
            "{err}"
        );
        // An over-long pattern is refused before it is compiled.
        let long = format!(
            "series_description = \"{}\"",
            "a".repeat(MAX_PATTERN_BYTES + 1)
        );
        let err = rules(&long).expect_err("long");
        assert!(err.contains("at most 1024"), "{err}");
        let at_limit = format!("series_description = \"{}\"", "a".repeat(MAX_PATTERN_BYTES));
        rules(&at_limit).expect("a pattern at the limit compiles");
        // Unknown keys are refused (a typo must not silently widen the model's scope).
        assert!(rules(r#"modality = ["CT"]"#).is_err());
        assert!(rules("slices = { min = 1 }").is_err());
    }

    #[test]
    fn the_slice_note_names_the_range() {
        assert_eq!(slice_note("m 1", (10, 400), 10), None);
        assert_eq!(slice_note("m 1", (10, 400), 400), None);
        assert_eq!(
            slice_note("m 1", (10, 400), 3).as_deref(),
            Some("the study has 3 slices; model m 1 is for 10..=400 (applies_to.slices)")
        );
        assert_eq!(
            slice_note("m 1", (2, 4), 1).as_deref(),
            Some("the study has 1 slice; model m 1 is for 2..=4 (applies_to.slices)")
        );
        let r = rules("slices = { min = 20, max = 400 }").expect("valid");
        assert_eq!(r.slices(), Some((20, 400)));
        assert!(
            r.admits(&meta(None, None, None)).is_ok(),
            "study-level only"
        );
    }

    #[test]
    fn the_rules_are_described_in_one_line() {
        assert_eq!(rules("").expect("empty").describe(), None);
        let r = rules(
            "modalities = [\"MR\"]\nbody_parts = [\"brain\", \"HEAD\"]\n\
             series_description = \"^FSE\"\nslices = { min = 10, max = 400 }\n",
        )
        .expect("valid");
        assert_eq!(
            r.describe().as_deref(),
            Some(
                "modalities MR; body parts BRAIN, HEAD; SeriesDescription /^FSE/; slices 10..=400"
            )
        );
    }
}
