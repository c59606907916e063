//! Turning scores into what a radiologist reads: per-label findings tied to their slice, the map peak and
//! box in original-image pixels and in patient coordinates (LPS, mm), and the study summary; and their
//! wire form in `radstream.v1`. Geometry follows DICOM PS3.3 C.7.6.2.1.1: the patient position of pixel
//! (row r, column c) is `IPP + c·Δc·X + r·Δr·Y`, with X/Y the row/column direction cosines of
//! ImageOrientationPatient and Δr/Δc the PixelSpacing row/column spacing.

pub mod hub;
pub mod json;
pub mod log;
pub mod overlay;
pub mod overlay_files;
pub mod webhook;

use std::time::SystemTime;

use crate::{
    decode::InstanceMeta,
    model::{Manifest, ModelInfo},
    pipeline::{ScoredSlice, SliceMap},
    preprocess::{WindowChoice, WindowSource},
    proto::v1 as pb,
    study::SliceId,
};

/// Slice identity for frame `frame` of an instance.
pub fn slice_id(meta: &InstanceMeta, frame: u32) -> SliceId {
    SliceId {
        study_instance_uid: meta.study_instance_uid.clone(),
        series_instance_uid: meta.series_instance_uid.clone(),
        sop_instance_uid: meta.sop_instance_uid.clone(),
        frame,
        instance_number: meta.instance_number,
        slice_position_mm: slice_position(meta),
        modality: meta.modality.clone().unwrap_or_default(),
    }
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [
        a[1] * b[2] - a[2] * b[1],
        a[2] * b[0] - a[0] * b[2],
        a[0] * b[1] - a[1] * b[0],
    ]
}

/// ImagePositionPatient projected on the slice normal (row × column direction).
pub fn slice_position(meta: &InstanceMeta) -> Option<f64> {
    let ipp = meta.image_position?;
    let o = meta.image_orientation?;
    let n = cross([o[0], o[1], o[2]], [o[3], o[4], o[5]]);
    Some(ipp[0] * n[0] + ipp[1] * n[1] + ipp[2] * n[2])
}

/// Patient coordinates (mm) of a (possibly fractional) pixel position, when the geometry is known.
pub fn pixel_to_patient(meta: &InstanceMeta, row: f64, col: f64) -> Option<[f64; 3]> {
    let ipp = meta.image_position?;
    let o = meta.image_orientation?;
    let [row_spacing, col_spacing] = meta.pixel_spacing?;
    Some(std::array::from_fn(|k| {
        ipp[k] + col * col_spacing * o[k] + row * row_spacing * o[3 + k]
    }))
}

/// A point of the map located in the original image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapPeak {
    pub row: f64,
    pub col: f64,
    /// (row_min, col_min, row_max, col_max) of the map cells at or over the threshold, in pixels.
    pub bbox: Option<[f64; 4]>,
}

/// Finds the peak of one label's map and the box of cells over `threshold`, in original-image pixels.
/// A map cell (i, j) of an h×w grid covers the original image evenly, so its centre is at
/// `((i + 0.5)·rows/h − 0.5, (j + 0.5)·cols/w − 0.5)` — the half-pixel convention of the resize.
pub fn locate(
    map: &SliceMap,
    label: usize,
    rows: u32,
    cols: u32,
    threshold: f32,
) -> Option<MapPeak> {
    let (h, w) = (map.height, map.width);
    let cells = map.values.get(label * h * w..(label + 1) * h * w)?;
    let (best, _) = cells
        .iter()
        .enumerate()
        .fold((None, f32::NEG_INFINITY), |(bi, bv), (i, v)| {
            if *v > bv {
                (Some(i), *v)
            } else {
                (bi, bv)
            }
        });
    let best = best?;
    let (sy, sx) = (f64::from(rows) / h as f64, f64::from(cols) / w as f64);
    let (pi, pj) = (best / w, best % w);
    let mut bbox: Option<[usize; 4]> = None;
    for (idx, v) in cells.iter().enumerate() {
        if *v >= threshold {
            let (i, j) = (idx / w, idx % w);
            bbox = Some(match bbox {
                None => [i, j, i, j],
                Some([a, b, c, d]) => [a.min(i), b.min(j), c.max(i), d.max(j)],
            });
        }
    }
    Some(MapPeak {
        row: (pi as f64 + 0.5) * sy - 0.5,
        col: (pj as f64 + 0.5) * sx - 0.5,
        bbox: bbox.map(|[a, b, c, d]| {
            [
                a as f64 * sy,
                b as f64 * sx,
                (c + 1) as f64 * sy - 1.0,
                (d + 1) as f64 * sx - 1.0,
            ]
        }),
    })
}

fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

pub fn model_ref(info: &ModelInfo) -> pb::ModelRef {
    pb::ModelRef {
        name: info.name.clone(),
        version: info.version.clone(),
        onnx_sha256: info.onnx_sha256.clone(),
    }
}

pub fn slice_ref(id: &SliceId) -> pb::SliceRef {
    pb::SliceRef {
        study_instance_uid: id.study_instance_uid.clone(),
        series_instance_uid: id.series_instance_uid.clone(),
        sop_instance_uid: id.sop_instance_uid.clone(),
        frame: id.frame,
        instance_number: id.instance_number,
        slice_position_mm: id.slice_position_mm,
        modality: id.modality.clone(),
    }
}

/// When the slice arrived and left decoding, in wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub received: SystemTime,
    pub decoded: SystemTime,
}

/// The finding for one scored slice.
#[allow(clippy::too_many_arguments)]
pub fn slice_finding(
    manifest: &Manifest,
    model: &ModelInfo,
    meta: &InstanceMeta,
    id: &SliceId,
    client_ref: &str,
    scored: &ScoredSlice,
    arrival: Arrival,
    preprocess_path: &str,
) -> pb::SliceFinding {
    let scores = manifest
        .labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let score = scored.scores.get(i).copied().unwrap_or(f32::NAN);
            let peak = scored
                .map
                .as_ref()
                .and_then(|m| locate(m, i, meta.rows, meta.cols, label.threshold));
            pb::LabelScore {
                label: label.name.clone(),
                score,
                positive: manifest.positive(&scored.scores, i),
                threshold: label.threshold,
                peak: peak.map(|p| pb::Location {
                    row: p.row,
                    col: p.col,
                    patient: pixel_to_patient(meta, p.row, p.col).map(|[x, y, z]| {
                        pb::PatientPoint {
                            x_mm: x,
                            y_mm: y,
                            z_mm: z,
                        }
                    }),
                }),
                bounding_box: peak
                    .and_then(|p| p.bbox)
                    .map(|[a, b, c, d]| pb::BoundingBox {
                        row_min: a,
                        col_min: b,
                        row_max: c,
                        col_max: d,
                    }),
            }
        })
        .collect();
    pb::SliceFinding {
        slice: Some(slice_ref(id)),
        client_ref: client_ref.to_string(),
        model: Some(model_ref(model)),
        scores,
        timings: Some(pb::StageTimings {
            received_unix_us: unix_us(arrival.received),
            decoded_unix_us: unix_us(arrival.decoded),
            preprocessed_unix_us: unix_us(scored.preprocessed_at),
            scored_unix_us: unix_us(scored.scored_at),
            batch_size: scored.batch_size as u32,
        }),
        preprocess_path: preprocess_path.to_string(),
        window: scored.window.as_ref().map(window_used),
        resent: false,
        overlay: false,
    }
}

/// The wire form of the window a slice was windowed with.
pub fn window_used(c: &WindowChoice) -> pb::WindowUsed {
    let (source, file_window_index) = match c.source {
        WindowSource::Manifest => (pb::WindowSource::Manifest, None),
        WindowSource::File { index } => (
            pb::WindowSource::File,
            Some(u32::try_from(index).unwrap_or(u32::MAX)),
        ),
        WindowSource::MinMax => (pb::WindowSource::MinMax, None),
    };
    pb::WindowUsed {
        source: source as i32,
        center: c.center,
        width: c.width,
        file_window_index,
        file_window_invalid: c.file_window_invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_and_box_map_back_to_original_pixels() {
        // 4x4 map over a 64x128 image: cell (1, 2) peaks, cells (1,2) and (2,3) pass the threshold.
        let mut values = vec![0.0f32; 16];
        values[4 + 2] = 0.9;
        values[2 * 4 + 3] = 0.6;
        let map = SliceMap {
            values,
            height: 4,
            width: 4,
        };
        let p = locate(&map, 0, 64, 128, 0.5).expect("peak");
        assert_eq!((p.row, p.col), (1.5 * 16.0 - 0.5, 2.5 * 32.0 - 0.5));
        assert_eq!(p.bbox, Some([16.0, 64.0, 47.0, 127.0]));
        assert!(locate(&map, 0, 64, 128, 0.95).expect("peak").bbox.is_none());
        assert!(locate(&map, 1, 64, 128, 0.5).is_none(), "no second label");
    }

    #[test]
    fn window_choices_map_to_the_wire() {
        let w = window_used(&WindowChoice {
            source: WindowSource::File { index: 2 },
            file_window_invalid: true,
            center: 40.0,
            width: 400.0,
        });
        assert_eq!(w.source, pb::WindowSource::File as i32);
        assert_eq!(w.file_window_index, Some(2));
        assert!(w.file_window_invalid);
        assert_eq!((w.center, w.width), (40.0, 400.0));
        let w = window_used(&WindowChoice {
            source: WindowSource::MinMax,
            file_window_invalid: true,
            center: 442.5,
            width: 885.0,
        });
        assert_eq!(w.source, pb::WindowSource::MinMax as i32);
        assert_eq!(w.file_window_index, None);
        let w = window_used(&WindowChoice {
            source: WindowSource::Manifest,
            file_window_invalid: false,
            center: 1.0,
            width: 2.0,
        });
        assert_eq!(
            (w.source, w.file_window_index, w.file_window_invalid),
            (pb::WindowSource::Manifest as i32, None, false)
        );
    }
}
