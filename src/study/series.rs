//! A series in slice order, and the runs of adjacent positive slices in it. Slices arrive in any order
//! (a PACS sends them as it likes, several streams interleave), so order is a property of geometry, not
//! of arrival: each slice sits at ImagePositionPatient projected on its plane's normal; a series where
//! some slice has no position falls back to InstanceNumber, then to arrival. A lesion seen on five
//! adjacent slices is then one finding with an extent, not five findings.

use crate::proto::v1 as pb;

/// One scored slice of a series.
#[derive(Debug, Clone)]
pub struct ScoredSliceRef {
    pub slice: pb::SliceRef,
    /// One score per manifest label.
    pub scores: Vec<f32>,
    /// Whether each label is positive on this slice (the manifest's rule: for exclusive classes only
    /// the most probable one can be).
    pub positive: Vec<bool>,
    /// Arrival order within the study, the last tie-breaker.
    pub arrival: u64,
}

/// A run of adjacent positive slices (before it becomes a `pb::SliceGroup`).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub first: usize,
    pub last: usize,
    pub peak: usize,
    pub max_score: f32,
    pub slices: u32,
    pub extent_mm: Option<f64>,
}

/// Sorts `slices` into slice order (see the module docs).
pub fn order(slices: &mut [ScoredSliceRef]) {
    let all_positioned = slices
        .iter()
        .all(|s| s.slice.slice_position_mm.is_some_and(f64::is_finite));
    if all_positioned {
        slices.sort_by(|a, b| {
            let (pa, pb) = (
                a.slice.slice_position_mm.unwrap_or_default(),
                b.slice.slice_position_mm.unwrap_or_default(),
            );
            pa.total_cmp(&pb)
                .then(a.slice.frame.cmp(&b.slice.frame))
                .then(a.arrival.cmp(&b.arrival))
        });
    } else {
        slices.sort_by(|a, b| {
            let key = |s: &ScoredSliceRef| s.slice.instance_number.unwrap_or(i32::MAX);
            key(a)
                .cmp(&key(b))
                .then(a.slice.frame.cmp(&b.slice.frame))
                .then(a.arrival.cmp(&b.arrival))
        });
    }
}

/// The median distance between neighbouring slice positions (ordered slices), when every slice has
/// one and at least two differ.
pub fn spacing(ordered: &[ScoredSliceRef]) -> Option<f64> {
    let positions: Option<Vec<f64>> = ordered.iter().map(|s| s.slice.slice_position_mm).collect();
    let positions = positions?;
    let mut gaps: Vec<f64> = positions
        .windows(2)
        .map(|w| (w[1] - w[0]).abs())
        .filter(|g| *g > 1e-6)
        .collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_by(f64::total_cmp);
    Some(gaps[gaps.len() / 2])
}

/// Runs of adjacent slices positive for `label`, in `ordered` (already in slice order), highest first.
pub fn runs(ordered: &[ScoredSliceRef], label: usize) -> Vec<Run> {
    let step = spacing(ordered);
    let mut out = Vec::new();
    let mut i = 0;
    while i < ordered.len() {
        let score = |k: usize| ordered[k].scores.get(label).copied().unwrap_or(f32::NAN);
        let at_or_over = |k: usize| ordered[k].positive.get(label).copied().unwrap_or(false);
        if !at_or_over(i) {
            i += 1;
            continue;
        }
        let first = i;
        let mut peak = i;
        while i + 1 < ordered.len() && at_or_over(i + 1) {
            i += 1;
            if score(i) > score(peak) {
                peak = i;
            }
        }
        let last = i;
        let extent_mm = match (
            step,
            ordered[first].slice.slice_position_mm,
            ordered[last].slice.slice_position_mm,
        ) {
            (Some(step), Some(a), Some(b)) => Some((b - a).abs() + step),
            _ => None,
        };
        out.push(Run {
            first,
            last,
            peak,
            max_score: score(peak),
            slices: (last - first + 1) as u32,
            extent_mm,
        });
        i += 1;
    }
    out.sort_by(|a, b| b.max_score.total_cmp(&a.max_score));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(n: i32, pos: Option<f64>, score: f32, arrival: u64) -> ScoredSliceRef {
        ScoredSliceRef {
            slice: pb::SliceRef {
                sop_instance_uid: format!("1.2.{n}"),
                instance_number: Some(n),
                slice_position_mm: pos,
                ..Default::default()
            },
            scores: vec![score],
            positive: vec![score >= 0.5],
            arrival,
        }
    }

    fn sops(s: &[ScoredSliceRef]) -> Vec<i32> {
        s.iter().filter_map(|s| s.slice.instance_number).collect()
    }

    #[test]
    fn slices_are_ordered_by_position_not_by_arrival_or_number() {
        // instance numbers run against the positions (a feet-first acquisition)
        let mut s = vec![
            slice(1, Some(30.0), 0.1, 0),
            slice(3, Some(20.0), 0.1, 1),
            slice(2, Some(25.0), 0.1, 2),
        ];
        order(&mut s);
        assert_eq!(sops(&s), [3, 2, 1]);
        // one slice without a position: the whole series falls back to InstanceNumber
        s.push(slice(0, None, 0.1, 3));
        order(&mut s);
        assert_eq!(sops(&s), [0, 1, 2, 3]);
    }

    #[test]
    fn adjacent_positives_are_one_run_with_its_extent() {
        let scores = [0.1, 0.7, 0.9, 0.8, 0.2, 0.6, 0.1];
        let mut s: Vec<_> = scores
            .iter()
            .enumerate()
            .rev()
            .map(|(i, sc)| slice(i as i32, Some(i as f64 * 2.5), *sc, i as u64))
            .collect();
        order(&mut s);
        let r = runs(&s, 0);
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].first, r[0].last, r[0].peak, r[0].slices),
            (1, 3, 2, 3)
        );
        assert_eq!(r[0].max_score, 0.9);
        // slices at 2.5, 5.0 and 7.5 mm, 2.5 mm apart: 5 mm between centres + one slab
        assert_eq!(r[0].extent_mm, Some(7.5));
        assert_eq!((r[1].first, r[1].slices, r[1].extent_mm), (5, 1, Some(2.5)));
        for x in &mut s {
            x.positive = vec![x.scores[0] >= 0.95];
        }
        assert!(runs(&s, 0).is_empty());
    }

    #[test]
    fn without_positions_runs_have_no_extent() {
        let mut s = vec![slice(2, None, 0.9, 0), slice(1, None, 0.9, 1)];
        order(&mut s);
        let r = runs(&s, 0);
        assert_eq!((r.len(), r[0].slices, r[0].extent_mm), (1, 2, None));
    }
}
