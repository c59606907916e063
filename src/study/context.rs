//! Neighbour assembly for 2.5D models (`[input] context = k`): a slice is scored from the 2k+1
//! neighbouring slices of its series, in slice order, so it can be scored only once those neighbours are
//! known — and slices stream in out of order (a PACS sends them as it likes, streams interleave). This is
//! the pure, synchronous part: slices go in as they are decoded ([`ContextAssembler::insert`]) and come out
//! with their stacks as soon as the stack is certain; [`ContextAssembler::complete`] (series/study
//! complete: end of study, stream closed, idle) releases the rest with the edges replicated.
//!
//! # Never the wrong neighbours
//! Slice order is geometry, as [`super::series::order`] has it: ImagePositionPatient projected on the
//! slice normal (`results::slice_position`) when every slice of the series has one, else InstanceNumber
//! (ties: InstanceNumber, then frame, then SOP Instance UID — arrival order is not used, so that the
//! same series gives the same stacks however it arrives). Before the series is complete, an adjacent
//! slice in that order could still turn out not to be the neighbour: the slice between them may simply
//! not have arrived yet. So a link between two slices adjacent in the current order counts as *known*
//! only when their InstanceNumbers differ by exactly 1 (slices 1 and 3 are not taken for neighbours
//! before 2 arrives), and a slice is released early only when all 2k links of its stack are known and
//! run one way (InstanceNumbers strictly monotonic along the stack). A slice at an edge of the series,
//! next to a gap, or without an InstanceNumber waits for `complete`, which uses the final order.
//!
//! The rule is certain for a series whose InstanceNumbers are unique and follow its positions — what
//! scanners write. A series that breaks it (a slice arriving between two slices already scored as
//! neighbours) cannot be repaired after the fact; the late slice is then answered with
//! [`ContextError::NeighboursGone`] if the neighbours it needs were already let go, never with others.
//!
//! # Duplicates
//! Two slices at the same position (two acquisitions, a re-sent reconstruction under a new UID) are both
//! kept: they sit next to each other, ordered by InstanceNumber then UID, and are each other's
//! neighbours — the series as a reader scrolling it would see it. The same SOP Instance UID and frame
//! inserted twice is a repeat: answered at once with [`ContextError::Duplicate`], the first one stands.
//!
//! # Memory
//! A payload (the decoded frame) is held only while a slice still waiting could need it: its own slice
//! is pending, or a pending slice lies within k of it. A released slice has k known links on each side,
//! so any slice still to come lands more than k away from it and cannot need it.

use std::{cmp::Ordering, collections::HashMap};

/// Where a slice sits in its series.
#[derive(Debug, Clone, PartialEq)]
pub struct SlicePlace {
    /// ImagePositionPatient · (row × column), mm (`results::slice_position`).
    pub position: Option<f64>,
    pub instance_number: Option<i32>,
    /// With `frame`, the slice's identity in the series.
    pub sop_instance_uid: String,
    pub frame: u32,
}

/// Why a slice comes out without a stack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContextError {
    #[error(
        "this slice (frame {frame}) was already received for its series; the repeat is not scored"
    )]
    Duplicate { frame: u32 },
    #[error(
        "the series' slice numbering is inconsistent: this slice arrived between slices already scored \
         as neighbours (InstanceNumbers not unique or not in position order), and the neighbours it \
         needs are no longer held; it is not scored with others"
    )]
    NeighboursGone,
    #[error(
        "this slice arrived after its series was complete for this 2.5D model: its neighbours were \
         scored and let go, so it is not scored with others; send the whole series again as a new \
         series"
    )]
    SeriesComplete,
    #[error(
        "the slices of this series arrived too far out of slice order for a 2.5D model: waiting for \
         their neighbours they held more than their share of the decoded-pixel budget \
         (max_decoded_bytes_in_flight), so this series' waiting and later slices are not scored by \
         this model; send a series in slice order (or raise the budget)"
    )]
    Shed,
}

/// A slice that came out: with its 2k+1 neighbour payloads in slice order (itself in the middle, edges
/// replicated), or why not.
#[derive(Debug, Clone)]
pub struct Ready<T> {
    pub series: String,
    pub place: SlicePlace,
    pub centre: T,
    pub stack: Result<Vec<T>, ContextError>,
}

struct Entry<T> {
    place: SlicePlace,
    /// `None` once no pending slice can need it.
    payload: Option<T>,
    released: bool,
}

struct Series<T> {
    /// In slice order (see the module docs).
    entries: Vec<Entry<T>>,
    /// Every slice has a finite position: ordered by it; else by InstanceNumber.
    by_position: bool,
    /// Completed or shed: nothing is held; a later slice is answered with this, never given the
    /// neighbours that are left (see [`ContextAssembler::complete`], [`ContextAssembler::shed`]).
    closed: Option<ContextError>,
}

/// Closed series remembered (their places only, so a late slice is recognised); the oldest go first.
const CLOSED_REMEMBERED: usize = 4096;

/// The neighbour assembly of every open series, for one context `k`.
pub struct ContextAssembler<T> {
    k: usize,
    series: HashMap<String, Series<T>>,
    /// Closed series, oldest first.
    closed: std::collections::VecDeque<String>,
}

impl<T> std::fmt::Debug for ContextAssembler<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextAssembler")
            .field("k", &self.k)
            .field("series", &self.series.len())
            .finish()
    }
}

fn positioned(p: &SlicePlace) -> bool {
    p.position.is_some_and(f64::is_finite)
}

/// Slice order: by position (when the whole series has one) else by InstanceNumber; then
/// InstanceNumber, frame and UID, so the order does not depend on arrival.
fn cmp_places(by_position: bool, a: &SlicePlace, b: &SlicePlace) -> Ordering {
    let number = |p: &SlicePlace| p.instance_number.unwrap_or(i32::MAX);
    let head = if by_position {
        a.position
            .unwrap_or_default()
            .total_cmp(&b.position.unwrap_or_default())
    } else {
        Ordering::Equal
    };
    head.then(number(a).cmp(&number(b)))
        .then(a.frame.cmp(&b.frame))
        .then(a.sop_instance_uid.cmp(&b.sop_instance_uid))
}

impl<T: Clone> Series<T> {
    /// The InstanceNumber step from slice `a` to slice `a + 1` when the link is known (±1).
    fn link(&self, a: usize) -> Option<i32> {
        let (x, y) = (
            self.entries.get(a)?.place.instance_number?,
            self.entries.get(a + 1)?.place.instance_number?,
        );
        let d = y.checked_sub(x)?;
        (d == 1 || d == -1).then_some(d)
    }

    /// Slice `j`'s stack is certain: its 2k links are known and run one way.
    fn certain(&self, j: usize, k: usize) -> bool {
        if k == 0 {
            return true;
        }
        let Some(first) = j.checked_sub(k) else {
            return false;
        };
        if j + k >= self.entries.len() {
            return false;
        }
        let Some(dir) = self.link(first) else {
            return false;
        };
        (first..j + k).all(|a| self.link(a) == Some(dir))
    }

    /// The stack of slice `j` in the current order, edges replicated.
    fn stack(&self, j: usize, k: usize) -> Result<Vec<T>, ContextError> {
        let last = self.entries.len() - 1;
        (0..=2 * k)
            .map(|d| {
                let at = (j + d).saturating_sub(k).min(last);
                self.entries[at]
                    .payload
                    .clone()
                    .ok_or(ContextError::NeighboursGone)
            })
            .collect()
    }

    fn release(&mut self, name: &str, j: usize, k: usize) -> Option<Ready<T>> {
        let e = &self.entries[j];
        let centre = e.payload.clone()?;
        let place = e.place.clone();
        let stack = self.stack(j, k);
        self.entries[j].released = true;
        Some(Ready {
            series: name.to_string(),
            place,
            centre,
            stack,
        })
    }

    /// Lets go of the payloads in `range` that no pending slice within k needs.
    fn drop_unneeded(&mut self, range: std::ops::RangeInclusive<usize>, k: usize) {
        let n = self.entries.len();
        for j in range.filter(|&j| j < n) {
            if self.entries[j].payload.is_none() || !self.entries[j].released {
                continue;
            }
            let lo = j.saturating_sub(k);
            let hi = (j + k).min(n - 1);
            if (lo..=hi).all(|m| self.entries[m].released) {
                self.entries[j].payload = None;
            }
        }
    }
}

impl<T: Clone> ContextAssembler<T> {
    /// An assembler for a model with `[input] context = k` (0: every slice is ready at once).
    pub fn new(context: u32) -> Self {
        Self {
            k: context as usize,
            series: HashMap::new(),
            closed: std::collections::VecDeque::new(),
        }
    }

    pub fn context(&self) -> u32 {
        self.k as u32
    }

    /// Adds a decoded slice of `series`; returns the slices whose stacks became certain (this one among
    /// them or not), each with its 2k+1 payloads in slice order.
    pub fn insert(&mut self, series: &str, place: SlicePlace, payload: T) -> Vec<Ready<T>> {
        let k = self.k;
        let s = self
            .series
            .entry(series.to_string())
            .or_insert_with(|| Series {
                entries: Vec::new(),
                by_position: true,
                closed: None,
            });
        if let Some(reason) = &s.closed {
            return vec![Ready {
                series: series.to_string(),
                place,
                centre: payload,
                stack: Err(reason.clone()),
            }];
        }
        if s.entries.iter().any(|e| {
            e.place.sop_instance_uid == place.sop_instance_uid && e.place.frame == place.frame
        }) {
            let frame = place.frame;
            return vec![Ready {
                series: series.to_string(),
                place,
                centre: payload,
                stack: Err(ContextError::Duplicate { frame }),
            }];
        }
        let entry = Entry {
            place,
            payload: Some(payload),
            released: false,
        };
        let candidates = if s.by_position && !positioned(&entry.place) {
            // The series falls back to InstanceNumber order: every stack is looked at again.
            s.by_position = false;
            s.entries.push(entry);
            s.entries
                .sort_by(|a, b| cmp_places(false, &a.place, &b.place));
            0..=s.entries.len() - 1
        } else {
            let by_position = s.by_position;
            let at = s
                .entries
                .partition_point(|e| cmp_places(by_position, &e.place, &entry.place).is_lt());
            s.entries.insert(at, entry);
            at.saturating_sub(k)..=(at + k).min(s.entries.len() - 1)
        };
        let mut out = Vec::new();
        for j in candidates.clone() {
            if !s.entries[j].released && s.certain(j, k) {
                out.extend(s.release(series, j, k));
            }
        }
        let (lo, hi) = (*candidates.start(), *candidates.end());
        s.drop_unneeded(lo.saturating_sub(k)..=hi + k, k);
        out
    }

    /// The series is complete: every slice still waiting comes out, its stack from the final order
    /// with the edges replicated. The series is then closed: nothing of it is held, and a slice of it
    /// arriving later is answered [`ContextError::SeriesComplete`] (its neighbours are gone).
    pub fn complete(&mut self, series: &str) -> Vec<Ready<T>> {
        let k = self.k;
        let Some(s) = self.series.get_mut(series).filter(|s| s.closed.is_none()) else {
            return Vec::new();
        };
        let out = (0..s.entries.len())
            .filter_map(|j| {
                if s.entries[j].released {
                    None
                } else {
                    s.release(series, j, k)
                }
            })
            .collect();
        self.close(series, ContextError::SeriesComplete);
        out
    }

    /// Gives up on `series` (it holds too much while its slices wait): every slice still waiting
    /// comes out with [`ContextError::Shed`], and so does any later slice of it.
    pub fn shed(&mut self, series: &str) -> Vec<Ready<T>> {
        let Some(s) = self.series.get_mut(series).filter(|s| s.closed.is_none()) else {
            return Vec::new();
        };
        let out = s
            .entries
            .iter_mut()
            .filter(|e| !e.released)
            .filter_map(|e| {
                e.released = true;
                Some(Ready {
                    series: series.to_string(),
                    place: e.place.clone(),
                    centre: e.payload.clone()?,
                    stack: Err(ContextError::Shed),
                })
            })
            .collect();
        self.close(series, ContextError::Shed);
        out
    }

    fn close(&mut self, series: &str, reason: ContextError) {
        if let Some(s) = self.series.get_mut(series) {
            for e in &mut s.entries {
                e.payload = None;
                e.released = true;
            }
            s.closed = Some(reason);
        }
        self.closed.push_back(series.to_string());
        while self.closed.len() > CLOSED_REMEMBERED {
            if let Some(old) = self.closed.pop_front() {
                self.series.remove(&old);
            }
        }
    }

    /// The series with slices held, to complete when the study is.
    pub fn open_series(&self) -> impl Iterator<Item = &str> {
        self.series
            .iter()
            .filter(|(_, s)| s.closed.is_none())
            .map(|(name, _)| name.as_str())
    }

    /// Slices of `series` waiting for their neighbours.
    pub fn pending(&self, series: &str) -> usize {
        self.series
            .get(series)
            .map_or(0, |s| s.entries.iter().filter(|e| !e.released).count())
    }

    /// Payloads of `series` still held (pending slices and the neighbours they need).
    pub fn held(&self, series: &str) -> usize {
        self.series.get(series).map_or(0, |s| {
            s.entries.iter().filter(|e| e.payload.is_some()).count()
        })
    }
}

/// The stacks of a whole series known at once, by index into `places` (the reference the assembler must
/// match however the slices arrive): slice order, 2k+1 neighbours, edges replicated.
pub fn reference_stacks(places: &[SlicePlace], context: u32) -> Vec<(usize, Vec<usize>)> {
    let k = context as usize;
    let by_position = places.iter().all(positioned);
    let mut order: Vec<usize> = (0..places.len()).collect();
    order.sort_by(|&a, &b| cmp_places(by_position, &places[a], &places[b]));
    let last = order.len().saturating_sub(1);
    (0..order.len())
        .map(|j| {
            let stack = (0..=2 * k)
                .map(|d| order[(j + d).saturating_sub(k).min(last)])
                .collect();
            (order[j], stack)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn place(n: i32, position: Option<f64>) -> SlicePlace {
        SlicePlace {
            position,
            instance_number: Some(n),
            sop_instance_uid: format!("1.2.3.{n}"),
            frame: 0,
        }
    }

    /// Inserts `places` (payload: their index) in `arrival` order, then completes; returns each slice's
    /// stack by payload (sorted), and how many came out before `complete`.
    fn run(places: &[SlicePlace], arrival: &[usize], k: u32) -> (Vec<(usize, Vec<usize>)>, usize) {
        let mut a = ContextAssembler::new(k);
        let mut out = Vec::new();
        for &i in arrival {
            for r in a.insert("s", places[i].clone(), i) {
                out.push((r.centre, r.stack.expect("a stack")));
            }
        }
        let early = out.len();
        out.extend(
            a.complete("s")
                .into_iter()
                .map(|r| (r.centre, r.stack.expect("a stack"))),
        );
        assert_eq!(a.pending("s"), 0);
        out.sort();
        (out, early)
    }

    fn sorted(mut v: Vec<(usize, Vec<usize>)>) -> Vec<(usize, Vec<usize>)> {
        v.sort();
        v
    }

    #[test]
    fn a_complete_or_shed_series_answers_later_slices_instead_of_starting_anew() {
        let places: Vec<_> = (1..=8).map(|n| place(n, Some(n as f64))).collect();
        let mut a = ContextAssembler::new(1);
        for i in [0, 1, 2, 4] {
            a.insert("s", places[i].clone(), i);
        }
        // slice 2 is released at once (1 and 3 arrived); 1 (an edge), 3 (4 missing) and 5 wait
        let done = a.complete("s");
        assert_eq!(done.len(), 3, "the waiting ones come out at completion");
        assert_eq!(
            (a.held("s"), a.pending("s")),
            (0, 0),
            "nothing is held after it"
        );
        assert_eq!(a.open_series().count(), 0);
        // the missing slice 4 arrives late: its neighbours were scored and let go
        let late = a.insert("s", places[3].clone(), 3);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].stack, Err(ContextError::SeriesComplete));

        // shedding: the waiting slices and every later one come out with Shed
        let mut a = ContextAssembler::new(1);
        for i in [0, 3, 6] {
            assert!(a.insert("t", places[i].clone(), i).is_empty());
        }
        let shed = a.shed("t");
        assert_eq!(shed.len(), 3);
        assert!(shed.iter().all(|r| r.stack == Err(ContextError::Shed)));
        assert_eq!(a.held("t"), 0);
        let later = a.insert("t", places[1].clone(), 1);
        assert_eq!(later[0].stack, Err(ContextError::Shed));
        assert!(
            a.complete("t").is_empty(),
            "a closed series completes to nothing"
        );
    }

    #[test]
    fn slices_out_of_order_wait_for_their_neighbours_and_never_take_the_wrong_ones() {
        // Feet-first: InstanceNumber runs against position.
        let places: Vec<_> = (1..=6).map(|n| place(n, Some(-2.5 * n as f64))).collect();
        let mut a = ContextAssembler::new(1);
        let ins = |a: &mut ContextAssembler<usize>, n: usize| -> Vec<usize> {
            a.insert("s", places[n - 1].clone(), n)
                .into_iter()
                .map(|r| {
                    let stack = r.stack.expect("stack");
                    assert_eq!(stack.len(), 3);
                    assert_eq!(stack[1], r.centre);
                    r.centre
                })
                .collect()
        };
        assert!(ins(&mut a, 1).is_empty());
        assert!(ins(&mut a, 3).is_empty(), "1 and 3 are not neighbours");
        assert!(ins(&mut a, 5).is_empty());
        assert_eq!(ins(&mut a, 2), [2], "2 has 1 and 3; 1 is an edge (for now)");
        let mut both = ins(&mut a, 4);
        both.sort();
        assert_eq!(both, [3, 4]);
        assert_eq!(a.pending("s"), 2, "1 (edge) and 5 (6 may come)");
        let rest = a.complete("s");
        let got: Vec<(usize, Vec<usize>)> = rest
            .into_iter()
            .map(|r| (r.centre, r.stack.expect("stack")))
            .collect();
        // Order by position: 6 is absent, 5 is the top edge, 1 the bottom one (positions descend).
        assert_eq!(got, [(5, vec![5, 5, 4]), (1, vec![2, 1, 1])]);
        assert!(a.complete("s").is_empty(), "the series is forgotten");
    }

    #[test]
    fn a_repeat_is_refused_and_a_slice_without_a_number_waits_for_complete() {
        let mut a = ContextAssembler::new(1);
        assert!(a.insert("s", place(1, Some(0.0)), 1).is_empty());
        let r = a.insert("s", place(1, Some(0.0)), 99);
        assert_eq!(r.len(), 1);
        assert_eq!(
            (r[0].centre, r[0].stack.clone()),
            (99, Err(ContextError::Duplicate { frame: 0 }))
        );
        let anon = |uid: &str, pos| SlicePlace {
            position: Some(pos),
            instance_number: None,
            sop_instance_uid: uid.into(),
            frame: 0,
        };
        assert!(a.insert("s", anon("a", 1.0), 2).is_empty());
        assert!(a.insert("s", anon("b", 2.0), 3).is_empty());
        let got: Vec<_> = a
            .complete("s")
            .into_iter()
            .map(|r| (r.centre, r.stack.expect("stack")))
            .collect();
        assert_eq!(
            got,
            [(1, vec![1, 1, 2]), (2, vec![1, 2, 3]), (3, vec![2, 3, 3])]
        );
    }

    #[test]
    fn context_0_releases_every_slice_at_once_and_keeps_nothing() {
        let mut a = ContextAssembler::new(0);
        let r = a.insert("s", place(7, None), "x");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].stack, Ok(vec!["x"]));
        assert_eq!((a.pending("s"), a.held("s")), (0, 0));
    }

    #[test]
    fn two_slices_at_one_position_are_each_others_neighbours() {
        // InstanceNumbers 1..=4, slices 2 and 3 at the same position.
        let pos = [0.0, 5.0, 5.0, 10.0];
        let places: Vec<_> = (1..=4)
            .map(|n| place(n, Some(pos[n as usize - 1])))
            .collect();
        for arrival in [[0, 1, 2, 3], [3, 2, 1, 0], [2, 0, 3, 1]] {
            let (got, _) = run(&places, &arrival, 1);
            assert_eq!(got, sorted(reference_stacks(&places, 1)));
            assert_eq!(got[1], (1, vec![0, 1, 2]));
            assert_eq!(got[2], (2, vec![1, 2, 3]));
        }
    }

    #[test]
    fn a_slice_without_position_switches_the_series_to_instance_number_order() {
        // Positions disagree with InstanceNumbers; one slice has none: InstanceNumber order wins.
        let mut places: Vec<_> = (1..=5).map(|n| place(n, Some(f64::from(n % 3)))).collect();
        places[4].position = None;
        let (got, _) = run(&places, &[4, 0, 1, 2, 3], 1);
        assert_eq!(
            got,
            [
                (0, vec![0, 0, 1]),
                (1, vec![0, 1, 2]),
                (2, vec![1, 2, 3]),
                (3, vec![2, 3, 4]),
                (4, vec![3, 4, 4])
            ]
        );
    }

    #[test]
    fn payloads_no_pending_slice_needs_are_let_go() {
        for k in 1..=3u32 {
            let mut a = ContextAssembler::new(k);
            let mut most = 0;
            for n in 1..=200 {
                a.insert("s", place(n, Some(f64::from(n))), n);
                most = most.max(a.held("s"));
            }
            // The first k slices wait (edge) with their k neighbours, the last 2k+1 are recent.
            assert!(
                most <= 4 * k as usize + 2,
                "k={k}: {most} payloads held at once"
            );
            let done = a.complete("s");
            assert_eq!(done.len(), 2 * k as usize);
            assert!(done.iter().all(|r| r.stack.is_ok()));
        }
    }

    #[test]
    fn a_slice_landing_between_scored_neighbours_is_refused_not_given_others() {
        // Inconsistent numbering: 1, 2, 3 at 0, 1, 2 mm and a slice numbered 7 at 1.5 mm.
        let mut a = ContextAssembler::new(1);
        for n in 1..=4 {
            a.insert("s", place(n, Some(f64::from(n - 1))), n);
        }
        a.insert("s", place(5, Some(4.0)), 5);
        // 2, 3 and 4 are out; 3 is no longer held (2, 4 are released and 1, 5 are far).
        let r = a.insert("s", place(7, Some(2.5)), 7);
        let late: Vec<_> = r.iter().filter(|r| r.centre == 7).collect();
        assert!(late.is_empty(), "7 has no known links");
        let done = a.complete("s");
        let seven = done.iter().find(|r| r.centre == 7).expect("7 comes out");
        // Its true neighbours are 3 and 4; 3 was let go when its stack and its neighbours' were out.
        assert_eq!(seven.stack, Err(ContextError::NeighboursGone));
    }

    /// A series as scanners write it: InstanceNumbers 1..=n in position order (either direction),
    /// optionally pairs at one position, optionally no positions; some slices never arrive.
    fn series_strategy() -> impl Strategy<Value = (Vec<SlicePlace>, Vec<usize>, u32)> {
        (
            1usize..14,
            0u32..=3,
            prop::bool::ANY,
            prop::bool::ANY,
            prop::bool::ANY,
            prop::collection::vec(prop::bool::weighted(0.85), 14),
        )
            .prop_flat_map(|(n, k, descending, pairs, no_position, kept)| {
                let places: Vec<SlicePlace> = (1..=n as i32)
                    .filter(|i| kept[*i as usize - 1])
                    .map(|i| {
                        let step = if pairs { (i - 1) / 2 } else { i - 1 };
                        let pos = f64::from(step) * 2.5 * if descending { -1.0 } else { 1.0 };
                        place(i, (!no_position).then_some(pos))
                    })
                    .collect();
                let len = places.len();
                (
                    Just(places),
                    Just((0..len).collect::<Vec<_>>()).prop_shuffle(),
                    Just(k),
                )
            })
    }

    proptest! {
        #[test]
        fn any_arrival_order_gives_every_slice_the_neighbours_it_has_in_order(
            (places, arrival, k) in series_strategy()
        ) {
            let reference = sorted(reference_stacks(&places, k));
            let (shuffled, _) = run(&places, &arrival, k);
            prop_assert_eq!(&shuffled, &reference);
            let in_order: Vec<usize> = reference_stacks(&places, k).iter().map(|(i, _)| *i).collect();
            let (ordered, _) = run(&places, &in_order, k);
            prop_assert_eq!(&ordered, &reference);
        }
    }
}
