//! Shadow agreement: how an ML engineer decides whether to promote a candidate. The candidate scores
//! the very slices the active version scores; per label (matched by name) the book counts the slices
//! both scored, those where both sides agree at their own thresholds (each model's positive rule,
//! exclusive classes included), and the sum of absolute score differences. Nothing of the candidate
//! reaches a viewer or the event log.

use std::{collections::BTreeMap, sync::Mutex};

use semver::Version;

use crate::model::{label_positive, Manifest, ModelInfo};

/// One label's agreement so far.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelAgreement {
    pub label: String,
    /// Slices both versions scored.
    pub slices: u64,
    /// Slices where both were positive or both negative.
    pub agreeing: u64,
    /// `agreeing / slices` (0 when nothing was compared).
    pub agreement: f64,
    /// Mean of |active score − candidate score| over the slices compared.
    pub mean_abs_diff: f64,
}

/// The shadow of one model: which candidate, against which active version, and how they agree.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowReport {
    pub model: String,
    pub candidate: String,
    /// The active version(s) compared against (the active version may change while a shadow runs).
    pub active: Vec<String>,
    pub labels: Vec<LabelAgreement>,
}

#[derive(Debug, Default)]
struct Tally {
    slices: u64,
    agreeing: u64,
    abs_diff: f64,
}

#[derive(Debug)]
struct Book {
    candidate: String,
    active: Vec<String>,
    labels: BTreeMap<String, Tally>,
    /// Label order as the active manifest lists them.
    order: Vec<String>,
}

#[derive(Debug, Default)]
pub(super) struct ShadowBook {
    books: Mutex<BTreeMap<String, Book>>,
}

impl ShadowBook {
    fn books(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Book>> {
        self.books.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new candidate (or none) for `model`: its statistics start from zero.
    pub(super) fn reset(&self, model: &str, candidate: Option<&Version>) {
        let mut books = self.books();
        match candidate {
            Some(v) => {
                books.insert(
                    model.to_string(),
                    Book {
                        candidate: v.to_string(),
                        active: Vec::new(),
                        labels: BTreeMap::new(),
                        order: Vec::new(),
                    },
                );
            }
            None => {
                books.remove(model);
            }
        }
    }

    /// `active` and `shadow`: each side's model and manifest.
    pub(super) fn record(
        &self,
        active: (&ModelInfo, &Manifest),
        shadow: (&ModelInfo, &Manifest),
        active_scores: &[f32],
        shadow_scores: &[f32],
    ) {
        let mut books = self.books();
        let Some(book) = books.get_mut(&active.0.name) else {
            return;
        };
        if book.candidate != shadow.0.version {
            return;
        }
        if !book.active.contains(&active.0.version) {
            book.active.push(active.0.version.clone());
        }
        let (a, s) = (active.1, shadow.1);
        for (i, label) in a.labels.iter().enumerate() {
            let Some(j) = s.labels.iter().position(|l| l.name == label.name) else {
                continue;
            };
            let (Some(&x), Some(&y)) = (active_scores.get(i), shadow_scores.get(j)) else {
                continue;
            };
            let pa = label_positive(&a.labels, a.exclusive(), active_scores, i);
            let ps = label_positive(&s.labels, s.exclusive(), shadow_scores, j);
            if !book.order.contains(&label.name) {
                book.order.push(label.name.clone());
            }
            let tally = book.labels.entry(label.name.clone()).or_default();
            tally.slices += 1;
            tally.agreeing += u64::from(pa == ps);
            tally.abs_diff += f64::from((x - y).abs());
        }
    }

    pub(super) fn report(&self, model: &str) -> Option<ShadowReport> {
        let books = self.books();
        let book = books.get(model)?;
        let labels = book
            .order
            .iter()
            .filter_map(|name| {
                let t = book.labels.get(name)?;
                let n = t.slices.max(1) as f64;
                Some(LabelAgreement {
                    label: name.clone(),
                    slices: t.slices,
                    agreeing: t.agreeing,
                    agreement: if t.slices == 0 {
                        0.0
                    } else {
                        t.agreeing as f64 / n
                    },
                    mean_abs_diff: if t.slices == 0 { 0.0 } else { t.abs_diff / n },
                })
            })
            .collect();
        Some(ShadowReport {
            model: model.to_string(),
            candidate: book.candidate.clone(),
            active: book.active.clone(),
            labels,
        })
    }
}
