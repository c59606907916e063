//! The studies `bench load` pushes: N real slices re-identified into ONE consistent series (new Study,
//! Series, Frame of Reference and SOP Instance UIDs; Instance Number, Image Position (Patient) and Slice
//! Location stepped along the slice normal), written as Part-10 files in each transfer syntax asked for.
//!
//! Why a series is built once and copied by patching bytes: every stream must push a study of its own
//! (studies pushed twice would merge or be dropped as duplicates), but encoding 240 slices of JPEG 2000
//! per stream would cost the bench minutes and the files would differ between streams. Every UID of a
//! built series carries a fixed-width 6-digit "copy" field (`…<run>.1CCCCC.<k>`, no leading zero), so a
//! copy is the same file with those digits replaced — same lengths, same pixel data, valid UIDs — done
//! per slice while it is sent.
//!
//! Encoders: explicit VR little endian and JPEG-LS lossless (dicom-rs, CharLS) and RLE Lossless (here:
//! PackBits per row and byte plane, PS3.5 Annex G) in Rust; JPEG 2000 lossless with pydicom's
//! `Dataset.compress` (pylibjpeg-openjpeg) in the radstream venv, as no Rust encoder is at hand.

use std::{
    io::Cursor,
    path::{Path, PathBuf},
    sync::Arc,
};

use dicom::{
    core::{value::PixelFragmentSequence, DataElement, Length, PrimitiveValue, VR},
    dictionary_std::tags,
    object::{file::ReadPreamble, DefaultDicomObject, OpenFileOptions},
    pixeldata::Transcode,
    transfer_syntax::entries,
};

use super::{io_error, BenchError, Result};

/// A transfer syntax the bench can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Syntax {
    /// Explicit VR Little Endian (uncompressed).
    Explicit,
    /// JPEG-LS Lossless.
    JpegLs,
    /// JPEG 2000 Lossless Only.
    J2k,
    /// RLE Lossless.
    Rle,
}

impl Syntax {
    pub const ALL: [Syntax; 4] = [Syntax::Explicit, Syntax::JpegLs, Syntax::J2k, Syntax::Rle];

    pub fn name(self) -> &'static str {
        match self {
            Syntax::Explicit => "explicit",
            Syntax::JpegLs => "jpeg-ls",
            Syntax::J2k => "j2k",
            Syntax::Rle => "rle",
        }
    }

    pub fn uid(self) -> &'static str {
        match self {
            Syntax::Explicit => "1.2.840.10008.1.2.1",
            Syntax::JpegLs => "1.2.840.10008.1.2.4.80",
            Syntax::J2k => "1.2.840.10008.1.2.4.90",
            Syntax::Rle => "1.2.840.10008.1.2.5",
        }
    }

    /// `explicit`, `jpeg-ls`, `j2k`, `rle`, or `all` (comma lists are split by the caller).
    pub fn parse_list(text: &str) -> Result<Vec<Syntax>, String> {
        let mut out = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                out.extend(Syntax::ALL);
                continue;
            }
            match Syntax::ALL.into_iter().find(|s| s.name() == part) {
                Some(s) => out.push(s),
                None => {
                    return Err(format!(
                        "unknown syntax {part:?}: one of explicit, jpeg-ls, j2k, rle, all"
                    ))
                }
            }
        }
        out.sort();
        out.dedup();
        if out.is_empty() {
            return Err("no syntax given".into());
        }
        Ok(out)
    }
}

impl std::fmt::Display for Syntax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Root of the bench's UIDs (the one pydicom's `generate_uid` uses); then `<run>.1<copy:05>.<k>`.
const UID_ROOT: &str = "1.2.826.0.1.3680043.8.498.";
/// The copy field as written in the files on disk (copy 0).
const BASE_COPY: &str = "100000";
/// UIDs per file that carry the copy field: study, series, frame of reference, SOP (dataset and meta).
const UIDS_PER_FILE: usize = 5;
/// Copies a series can be made into (the copy field has 5 free digits).
pub const MAX_COPIES: u32 = 99_999;

/// One built series in one syntax, as files in `dir` and in memory.
#[derive(Debug, Clone)]
pub struct Series {
    pub syntax: Syntax,
    pub dir: PathBuf,
    pub files: Vec<PathBuf>,
    /// The files' bytes with the offsets of their copy fields.
    slices: Arc<Vec<(Vec<u8>, Vec<usize>)>>,
    run: String,
}

impl Series {
    pub fn len(&self) -> usize {
        self.slices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slices.is_empty()
    }

    /// Part-10 bytes of the whole series (one copy).
    pub fn bytes(&self) -> u64 {
        self.slices.iter().map(|(b, _)| b.len() as u64).sum()
    }

    /// Slice `index` of copy `copy` (0 ..= [`MAX_COPIES`]): the file with its UIDs made the copy's.
    pub fn slice(&self, copy: u32, index: usize) -> Vec<u8> {
        let (bytes, at) = &self.slices[index];
        let mut out = bytes.clone();
        let field = format!("1{:05}", copy.min(MAX_COPIES));
        for &i in at {
            out[i..i + field.len()].copy_from_slice(field.as_bytes());
        }
        out
    }

    /// The Study Instance UID of copy `copy`.
    pub fn study_uid(&self, copy: u32) -> String {
        format!("{UID_ROOT}{}.1{:05}.1", self.run, copy.min(MAX_COPIES))
    }
}

/// The real slices a series is made of: the bundled sample study (12 real-CT-derived 512² 16-bit
/// slices), or the DICOM files under `from` (path order), each of one frame.
pub fn source_slices(from: Option<&Path>) -> Result<Vec<Vec<u8>>> {
    match from {
        None => Ok(crate::demo::SAMPLE_STUDY
            .iter()
            .map(|(_, b)| b.to_vec())
            .collect()),
        Some(dir) => {
            let files = crate::client::collect_files(&[dir.to_path_buf()])?;
            let mut out = Vec::with_capacity(files.len());
            for f in files {
                out.push(std::fs::read(&f).map_err(io_error(&f))?);
            }
            if out.is_empty() {
                return Err(BenchError::Run(format!(
                    "no DICOM files under {}",
                    dir.display()
                )));
            }
            Ok(out)
        }
    }
}

fn dicom_err(what: impl Into<String>) -> impl FnOnce(String) -> BenchError {
    let what = what.into();
    move |detail| BenchError::Dicom { what, detail }
}

fn read_object(bytes: &[u8], what: &str) -> Result<DefaultDicomObject> {
    OpenFileOptions::new()
        .read_preamble(ReadPreamble::Auto)
        .from_reader(Cursor::new(bytes))
        .map_err(|e| dicom_err(what)(e.to_string()))
}

fn write_object(obj: &DefaultDicomObject, what: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    obj.write_all(&mut out)
        .map_err(|e| dicom_err(what)(e.to_string()))?;
    Ok(out)
}

fn floats(obj: &DefaultDicomObject, tag: dicom::core::Tag) -> Option<Vec<f64>> {
    let v = obj.element(tag).ok()?.to_multi_float64().ok()?;
    Some(v)
}

fn ds(values: &[f64]) -> PrimitiveValue {
    PrimitiveValue::Strs(values.iter().map(|v| format!("{v:.4}")).collect())
}

/// Where a series of `slices` slices taken from `sources` is stepped: the first source's position and
/// orientation, the spacing between slices (Spacing Between Slices, else Slice Thickness, else 1 mm).
struct Geometry {
    origin: [f64; 3],
    orientation: [f64; 6],
    normal: [f64; 3],
    spacing: f64,
}

impl Geometry {
    fn of(first: &DefaultDicomObject) -> Geometry {
        let origin = floats(first, tags::IMAGE_POSITION_PATIENT)
            .filter(|v| v.len() == 3)
            .map(|v| [v[0], v[1], v[2]])
            .unwrap_or([0.0; 3]);
        let orientation = floats(first, tags::IMAGE_ORIENTATION_PATIENT)
            .filter(|v| v.len() == 6)
            .map(|v| [v[0], v[1], v[2], v[3], v[4], v[5]])
            .unwrap_or([1.0, 0.0, 0.0, 0.0, 1.0, 0.0]);
        let [r0, r1, r2, c0, c1, c2] = orientation;
        let n = [r1 * c2 - r2 * c1, r2 * c0 - r0 * c2, r0 * c1 - r1 * c0];
        let norm = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
        let normal = if norm > 1e-6 {
            [n[0] / norm, n[1] / norm, n[2] / norm]
        } else {
            [0.0, 0.0, 1.0]
        };
        let spacing = [tags::SPACING_BETWEEN_SLICES, tags::SLICE_THICKNESS]
            .into_iter()
            .filter_map(|t| floats(first, t)?.first().copied())
            .find(|s| s.is_finite() && *s > 0.0)
            .unwrap_or(1.0);
        Geometry {
            origin,
            orientation,
            normal,
            spacing,
        }
    }

    fn position(&self, index: usize) -> [f64; 3] {
        let d = index as f64 * self.spacing;
        [
            self.origin[0] + d * self.normal[0],
            self.origin[1] + d * self.normal[1],
            self.origin[2] + d * self.normal[2],
        ]
    }

    fn location(&self, index: usize) -> f64 {
        let p = self.position(index);
        p[0] * self.normal[0] + p[1] * self.normal[1] + p[2] * self.normal[2]
    }
}

/// A fresh run number: 10 digits, no leading zero (time and process id), so series built by different
/// runs never share UIDs.
fn new_run() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = (nanos / 1000) as u64 ^ (u64::from(std::process::id()) << 20);
    format!("{}", 1_000_000_000 + mixed % 9_000_000_000)
}

/// The explicit-VR series: slice `i` is source `i % sources.len()` (decoded first when compressed),
/// re-identified and placed at position `i` of the series.
fn build_explicit(sources: &[Vec<u8>], slices: usize, run: &str) -> Result<Vec<Vec<u8>>> {
    let uid = |k: &str| format!("{UID_ROOT}{run}.{BASE_COPY}.{k}");
    let explicit = entries::EXPLICIT_VR_LITTLE_ENDIAN.erased();
    let mut geometry = None;
    let mut out = Vec::with_capacity(slices);
    for i in 0..slices {
        let what = format!("source slice {}", i % sources.len());
        let mut obj = read_object(&sources[i % sources.len()], &what)?;
        obj.transcode(&explicit)
            .map_err(|e| dicom_err(&what)(e.to_string()))?;
        let g = geometry.get_or_insert_with(|| Geometry::of(&obj));
        let sop = uid(&format!("{}", 1000 + i));
        let put = |obj: &mut DefaultDicomObject, tag, vr, value: PrimitiveValue| {
            obj.put(DataElement::new(tag, vr, value));
        };
        put(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, uid("1").into());
        put(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, uid("2").into());
        put(
            &mut obj,
            tags::FRAME_OF_REFERENCE_UID,
            VR::UI,
            uid("3").into(),
        );
        put(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, sop.clone().into());
        put(
            &mut obj,
            tags::INSTANCE_NUMBER,
            VR::IS,
            format!("{}", i + 1).into(),
        );
        put(
            &mut obj,
            tags::IMAGE_POSITION_PATIENT,
            VR::DS,
            ds(&g.position(i)),
        );
        put(
            &mut obj,
            tags::IMAGE_ORIENTATION_PATIENT,
            VR::DS,
            ds(&g.orientation),
        );
        put(&mut obj, tags::SLICE_LOCATION, VR::DS, ds(&[g.location(i)]));
        put(
            &mut obj,
            tags::STUDY_DESCRIPTION,
            VR::LO,
            "radstream bench".into(),
        );
        obj.update_meta(|m| m.media_storage_sop_instance_uid = sop);
        out.push(write_object(&obj, &what)?);
    }
    Ok(out)
}

/// PackBits (PS3.5 G.3.1) of one row of one byte plane, appended to `out`.
fn packbits(row: &[u8], out: &mut Vec<u8>) {
    let n = row.len();
    let mut i = 0;
    while i < n {
        let mut run = 1;
        while i + run < n && run < 128 && row[i + run] == row[i] {
            run += 1;
        }
        if run >= 2 {
            out.push((257 - run) as u8);
            out.push(row[i]);
            i += run;
            continue;
        }
        let start = i;
        while i < n && i - start < 128 {
            if i + 1 < n && row[i] == row[i + 1] {
                break;
            }
            i += 1;
        }
        out.push((i - start - 1) as u8);
        out.extend_from_slice(&row[start..i]);
    }
}

/// One RLE Lossless frame (PS3.5 Annex G) of `pixels` (little-endian samples, `bytes` per sample,
/// one sample per pixel): a segment per byte plane, most significant first, each row encoded alone.
fn rle_frame(pixels: &[u8], rows: usize, cols: usize, bytes: usize) -> Vec<u8> {
    let mut segments = Vec::with_capacity(bytes);
    let mut plane = vec![0u8; cols];
    for b in (0..bytes).rev() {
        let mut seg = Vec::new();
        for r in 0..rows {
            for (c, v) in plane.iter_mut().enumerate() {
                *v = pixels[(r * cols + c) * bytes + b];
            }
            packbits(&plane, &mut seg);
        }
        if seg.len() % 2 == 1 {
            seg.push(0);
        }
        segments.push(seg);
    }
    let mut out = Vec::with_capacity(64 + segments.iter().map(Vec::len).sum::<usize>());
    out.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    let mut offset = 64u32;
    for i in 0..15 {
        let at = if i < segments.len() { offset } else { 0 };
        out.extend_from_slice(&at.to_le_bytes());
        if let Some(s) = segments.get(i) {
            offset += s.len() as u32;
        }
    }
    for s in segments {
        out.extend_from_slice(&s);
    }
    out
}

/// Re-encodes an explicit-VR single-frame monochrome file as RLE Lossless.
fn to_rle(explicit: &[u8], what: &str) -> Result<Vec<u8>> {
    let mut obj = read_object(explicit, what)?;
    let num = |tag| {
        obj.element(tag)
            .ok()
            .and_then(|e| e.to_int::<u32>().ok())
            .ok_or_else(|| dicom_err(what)(format!("no usable {tag}")))
    };
    let (rows, cols, bits, samples) = (
        num(tags::ROWS)? as usize,
        num(tags::COLUMNS)? as usize,
        num(tags::BITS_ALLOCATED)? as usize,
        num(tags::SAMPLES_PER_PIXEL)?,
    );
    if samples != 1 || !(bits == 8 || bits == 16) {
        return Err(dicom_err(what)(format!(
            "RLE here takes one sample of 8 or 16 bits, not {samples} x {bits}"
        )));
    }
    let bytes = bits / 8;
    let pixels = obj
        .element(tags::PIXEL_DATA)
        .map_err(|e| dicom_err(what)(e.to_string()))?
        .to_bytes()
        .map_err(|e| dicom_err(what)(e.to_string()))?
        .into_owned();
    if pixels.len() < rows * cols * bytes {
        return Err(dicom_err(what)("pixel data shorter than one frame".into()));
    }
    let fragment = rle_frame(&pixels, rows, cols, bytes);
    obj.put(DataElement::new_with_len(
        tags::PIXEL_DATA,
        VR::OB,
        Length::UNDEFINED,
        PixelFragmentSequence::new(Vec::<u32>::new(), vec![fragment]),
    ));
    obj.update_meta(|m| m.set_transfer_syntax(&entries::RLE_LOSSLESS));
    write_object(&obj, what)
}

fn to_jpeg_ls(explicit: &[u8], what: &str) -> Result<Vec<u8>> {
    let mut obj = read_object(explicit, what)?;
    obj.transcode(&entries::JPEG_LS_LOSSLESS_IMAGE_COMPRESSION.erased())
        .map_err(|e| dicom_err(what)(format!("JPEG-LS encoding: {e}")))?;
    write_object(&obj, what)
}

/// pydicom's JPEG 2000 lossless encoder over a folder: argv[1] explicit files, argv[2] output folder.
const J2K_SCRIPT: &str = r#"
import os, sys
import pydicom
from pydicom.uid import JPEG2000Lossless
src, dst = sys.argv[1], sys.argv[2]
for name in sorted(os.listdir(src)):
    ds = pydicom.dcmread(os.path.join(src, name))
    ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    ds.save_as(os.path.join(dst, name), enforce_file_format=True)
"#;

fn j2k_with_python(explicit_dir: &Path, dir: &Path) -> Result<()> {
    let python = super::python();
    let fail = |detail: String| BenchError::Python {
        what: "JPEG 2000 encoding".into(),
        python: python.clone(),
        detail,
    };
    if !python.exists() {
        return Err(fail("no such file".into()));
    }
    let out = std::process::Command::new(&python)
        .arg("-c")
        .arg(J2K_SCRIPT)
        .arg(explicit_dir)
        .arg(dir)
        .output()
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().last().unwrap_or("").to_string();
        return Err(fail(last));
    }
    Ok(())
}

/// Offsets of the copy fields of `bytes` (a file built by this module with run `run`).
fn copy_fields(bytes: &[u8], run: &str, path: &Path) -> Result<Vec<usize>> {
    let pattern = format!("{UID_ROOT}{run}.{BASE_COPY}.");
    let p = pattern.as_bytes();
    let mut at = Vec::new();
    let mut i = 0;
    while i + p.len() <= bytes.len() {
        if &bytes[i..i + p.len()] == p {
            at.push(i + UID_ROOT.len() + run.len() + 1);
            i += p.len();
        } else {
            i += 1;
        }
    }
    if at.len() != UIDS_PER_FILE {
        return Err(BenchError::Run(format!(
            "{} holds {} of the bench's UIDs, not {UIDS_PER_FILE}: not a series built by this run \
             (delete the folder to rebuild it)",
            path.display(),
            at.len()
        )));
    }
    Ok(at)
}

/// What a study folder holds (`bench-study.json`): reused by a later run with the same slices and source.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct StudyInfo {
    slices: usize,
    source: String,
    run: String,
}

fn slice_name(i: usize) -> String {
    format!("slice-{:04}.dcm", i + 1)
}

/// Builds (or reuses) the series of `slices` slices from `from` (None: the bundled sample) in each of
/// `syntaxes` under `root/<syntax>/`. A folder built earlier with the same slices and source is reused
/// as it is, so `--keep DIR` runs and the peer see the same files.
pub fn build(
    root: &Path,
    from: Option<&Path>,
    slices: usize,
    syntaxes: &[Syntax],
) -> Result<Vec<Series>> {
    if slices == 0 {
        return Err(BenchError::Run("a study needs at least one slice".into()));
    }
    std::fs::create_dir_all(root).map_err(io_error(root))?;
    let info_path = root.join("bench-study.json");
    let source = from
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "bundled sample study".into());
    let earlier: Option<StudyInfo> = std::fs::read(&info_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|i: &StudyInfo| i.slices == slices && i.source == source);
    let info = match earlier {
        Some(info) => info,
        None => {
            for s in Syntax::ALL {
                let d = root.join(s.name());
                if d.exists() {
                    std::fs::remove_dir_all(&d).map_err(io_error(&d))?;
                }
            }
            let info = StudyInfo {
                slices,
                source,
                run: new_run(),
            };
            let json = serde_json::to_vec_pretty(&info)
                .map_err(|e| BenchError::Run(format!("bench-study.json: {e}")))?;
            std::fs::write(&info_path, json).map_err(io_error(&info_path))?;
            info
        }
    };
    let complete = |dir: &Path| (0..slices).all(|i| dir.join(slice_name(i)).is_file());
    let explicit_dir = root.join(Syntax::Explicit.name());
    if !complete(&explicit_dir) {
        let files = build_explicit(&source_slices(from)?, slices, &info.run)?;
        write_dir(&explicit_dir, &files)?;
    }
    let mut out = Vec::new();
    for &syntax in syntaxes {
        let dir = root.join(syntax.name());
        if !complete(&dir) {
            let tmp = root.join(format!(".{}.partial", syntax.name()));
            if tmp.exists() {
                std::fs::remove_dir_all(&tmp).map_err(io_error(&tmp))?;
            }
            std::fs::create_dir_all(&tmp).map_err(io_error(&tmp))?;
            match syntax {
                Syntax::Explicit => {}
                Syntax::J2k => j2k_with_python(&explicit_dir, &tmp)?,
                Syntax::JpegLs | Syntax::Rle => {
                    for i in 0..slices {
                        let path = explicit_dir.join(slice_name(i));
                        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
                        let what = path.display().to_string();
                        let encoded = if syntax == Syntax::Rle {
                            to_rle(&bytes, &what)?
                        } else {
                            to_jpeg_ls(&bytes, &what)?
                        };
                        let p = tmp.join(slice_name(i));
                        std::fs::write(&p, encoded).map_err(io_error(&p))?;
                    }
                }
            }
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(io_error(&dir))?;
            }
            std::fs::rename(&tmp, &dir).map_err(io_error(&dir))?;
        }
        out.push(load_dir(syntax, &dir, slices, &info.run)?);
    }
    Ok(out)
}

fn write_dir(dir: &Path, files: &[Vec<u8>]) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    for (i, bytes) in files.iter().enumerate() {
        let p = dir.join(slice_name(i));
        std::fs::write(&p, bytes).map_err(io_error(&p))?;
    }
    Ok(())
}

fn load_dir(syntax: Syntax, dir: &Path, slices: usize, run: &str) -> Result<Series> {
    let mut loaded = Vec::with_capacity(slices);
    let mut files = Vec::with_capacity(slices);
    for i in 0..slices {
        let p = dir.join(slice_name(i));
        let bytes = std::fs::read(&p).map_err(io_error(&p))?;
        let at = copy_fields(&bytes, run, &p)?;
        loaded.push((bytes, at));
        files.push(p);
    }
    Ok(Series {
        syntax,
        dir: dir.to_path_buf(),
        files,
        slices: Arc::new(loaded),
        run: run.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{decode_instance, Limits};

    fn unpackbits(mut src: &[u8], n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while out.len() < n && !src.is_empty() {
            let h = src[0] as i8;
            src = &src[1..];
            if h >= 0 {
                let k = h as usize + 1;
                out.extend_from_slice(&src[..k]);
                src = &src[k..];
            } else if h != -128 {
                out.extend(std::iter::repeat_n(src[0], (1 - h as isize) as usize));
                src = &src[1..];
            }
        }
        out
    }

    #[test]
    fn packbits_round_trips_runs_literals_and_long_rows() {
        let mut rows: Vec<Vec<u8>> = vec![
            vec![],
            vec![7],
            vec![1, 2],
            vec![5; 300],
            (0..=255).collect(),
        ];
        rows.push(
            (0..1000)
                .map(|i| if i % 7 < 3 { 9 } else { i as u8 })
                .collect(),
        );
        for row in rows {
            let mut enc = Vec::new();
            packbits(&row, &mut enc);
            assert_eq!(unpackbits(&enc, row.len()), row, "row of {}", row.len());
        }
    }

    /// Every syntax, decoded by the service's own decoder, holds the stored values of the explicit
    /// series; the series is one study with stepped positions and distinct SOP UIDs per copy.
    #[test]
    fn every_syntax_decodes_to_the_same_stored_values() {
        let root = tempfile::tempdir().expect("tempdir");
        let series = build(root.path(), None, 3, &Syntax::ALL).expect("build");
        assert_eq!(series.len(), 4);
        let limits = Limits::default();
        let explicit = &series[0];
        assert_eq!(explicit.syntax, Syntax::Explicit);
        for s in &series {
            assert_eq!(s.len(), 3);
            for i in 0..3 {
                let a = decode_instance(&explicit.slice(0, i), &limits).expect("explicit decodes");
                let b = decode_instance(&s.slice(7, i), &limits)
                    .unwrap_or_else(|e| panic!("{} slice {i}: {:?}", s.syntax, e.error));
                assert_eq!(b.meta.transfer_syntax, s.syntax.uid(), "{}", s.syntax);
                assert!(
                    a.frames[0]
                        .samples()
                        .values()
                        .eq(b.frames[0].samples().values()),
                    "{} slice {i}",
                    s.syntax
                );
                assert_eq!(b.meta.study_instance_uid, s.study_uid(7));
                assert_ne!(a.meta.sop_instance_uid, b.meta.sop_instance_uid);
            }
        }
        // Positions step by the sample's 5 mm slice thickness along the normal.
        let z: Vec<f64> = (0..3)
            .map(|i| {
                decode_instance(&explicit.slice(0, i), &limits)
                    .expect("decodes")
                    .meta
                    .image_position
                    .expect("position")[2]
            })
            .collect();
        assert!(
            (z[1] - z[0] - 5.0).abs() < 1e-6 && (z[2] - z[1] - 5.0).abs() < 1e-6,
            "{z:?}"
        );
        // A second build with the same slices reuses the folder (same UIDs).
        let again = build(root.path(), None, 3, &[Syntax::Rle]).expect("rebuild");
        assert_eq!(again[0].study_uid(1), series[3].study_uid(1));
        assert_eq!(again[0].slice(1, 2), series[3].slice(1, 2));
    }
}
