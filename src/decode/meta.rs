//! Instance metadata extracted from the data set before any pixel decoding.

use std::fmt;

use dicom::dictionary_std::tags;
use dicom::object::{FileDicomObject, InMemDicomObject};

use dicom::core::header::HasLength;
use dicom::core::Tag;

use super::DecodeError;

pub(crate) type Obj = FileDicomObject<InMemDicomObject>;

/// Photometric interpretation of the decoded [`super::Frame`]s.
///
/// YBR_* inputs are converted to RGB by the decoder, so only these three remain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Photometric {
    /// Minimum stored value is white.
    Monochrome1,
    /// Minimum stored value is black.
    Monochrome2,
    /// Three interleaved samples R, G, B.
    Rgb,
}

/// A VOI window: Window Center (0028,1050) / Window Width (0028,1051), or a model manifest's fixed window.
///
/// The file's values are kept as written, invalid ones included (a value that does not parse is NaN), so
/// that preprocessing can skip an invalid window *and say so* instead of the decoder silently dropping it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub center: f64,
    pub width: f64,
}

impl Window {
    /// DICOM PS3.3 C.11.2.1.2: Window Width shall be >= 1; a centre or width that is not a finite number
    /// is no window at all. Scanners do export `0 / 0`: applied as is, it turns a slice into a threshold.
    pub fn is_valid(&self) -> bool {
        self.center.is_finite() && self.width.is_finite() && self.width >= 1.0
    }
}

/// At most this many Window Center/Width pairs are kept per instance (the attributes are multi-valued
/// and a file may carry any number; the first valid one is all preprocessing ever uses).
pub const MAX_FILE_WINDOWS: usize = 16;

/// Metadata of one DICOM instance.
///
/// `patient_id` is a patient identifier and `series_description` free text: neither may ever be logged
/// or echoed. The manual `Debug` impl redacts both, so `{:?}` on this struct is safe to log.
#[derive(Clone)]
pub struct InstanceMeta {
    pub sop_instance_uid: String,
    pub sop_class_uid: String,
    /// Study Instance UID; empty string when absent from the file.
    pub study_instance_uid: String,
    /// Series Instance UID; empty string when absent from the file.
    pub series_instance_uid: String,
    /// Patient ID (0010,0020). Never log this.
    pub patient_id: Option<String>,
    /// Transfer syntax UID from the file meta group.
    pub transfer_syntax: String,
    pub modality: Option<String>,
    /// Body Part Examined (0018,0015), trimmed and upper-cased, kept only when it has the form of a
    /// defined term (see [`plausible_term`]): a Code String can still spell free text, which must never
    /// be echoed.
    pub body_part_examined: Option<String>,
    /// Series Description (0008,103E): free text, used only to match a model's
    /// `applies_to.series_description`. Never log or echo it (it may name a patient or a clinician).
    pub series_description: Option<String>,
    pub rows: u32,
    pub cols: u32,
    /// Number of Frames, 1 when absent.
    pub number_of_frames: u32,
    pub samples_per_pixel: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    /// 0 unsigned, 1 two's complement.
    pub pixel_representation: u16,
    /// Photometric interpretation of the decoded frames (after YBR -> RGB).
    pub photometric: Photometric,
    /// Photometric Interpretation (0028,0004) as written in the file.
    pub photometric_original: String,
    /// Pixel Spacing (0028,0030): [row spacing, column spacing] in mm.
    pub pixel_spacing: Option<[f64; 2]>,
    pub image_position: Option<[f64; 3]>,
    pub image_orientation: Option<[f64; 6]>,
    pub instance_number: Option<i32>,
    /// Rescale Slope, 1 when absent.
    pub rescale_slope: f64,
    /// Rescale Intercept, 0 when absent.
    pub rescale_intercept: f64,
    /// The file's Window Center / Window Width pairs in order (the first [`MAX_FILE_WINDOWS`]), invalid
    /// ones included: see [`Window::is_valid`]. Empty when the file has no window.
    pub windows: Vec<Window>,
}

#[cfg(test)]
impl InstanceMeta {
    /// A 16-bit 8x8 monochrome CT slice of `study` with SOP Instance UID `sop`, no geometry: what unit
    /// tests elsewhere adjust with struct update syntax.
    pub(crate) fn for_test(study: &str, sop: &str) -> Self {
        Self {
            sop_instance_uid: sop.into(),
            sop_class_uid: "1.2.840.10008.5.1.4.1.1.2".into(),
            study_instance_uid: study.into(),
            series_instance_uid: format!("{study}.0"),
            patient_id: None,
            transfer_syntax: "1.2.840.10008.1.2.1".into(),
            modality: Some("CT".into()),
            body_part_examined: None,
            series_description: None,
            rows: 8,
            cols: 8,
            number_of_frames: 1,
            samples_per_pixel: 1,
            bits_allocated: 16,
            bits_stored: 16,
            pixel_representation: 0,
            photometric: Photometric::Monochrome2,
            photometric_original: "MONOCHROME2".into(),
            pixel_spacing: None,
            image_position: None,
            image_orientation: None,
            instance_number: None,
            rescale_slope: 1.0,
            rescale_intercept: 0.0,
            windows: Vec::new(),
        }
    }
}

impl fmt::Debug for InstanceMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceMeta")
            .field("sop_instance_uid", &self.sop_instance_uid)
            .field("sop_class_uid", &self.sop_class_uid)
            .field("study_instance_uid", &self.study_instance_uid)
            .field("series_instance_uid", &self.series_instance_uid)
            .field(
                "patient_id",
                &self.patient_id.as_ref().map(|_| "<redacted>"),
            )
            .field("transfer_syntax", &self.transfer_syntax)
            .field("modality", &self.modality)
            .field("body_part_examined", &self.body_part_examined)
            .field(
                "series_description",
                &self.series_description.as_ref().map(|_| "<redacted>"),
            )
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("number_of_frames", &self.number_of_frames)
            .field("samples_per_pixel", &self.samples_per_pixel)
            .field("bits_allocated", &self.bits_allocated)
            .field("bits_stored", &self.bits_stored)
            .field("pixel_representation", &self.pixel_representation)
            .field("photometric", &self.photometric)
            .field("photometric_original", &self.photometric_original)
            .field("pixel_spacing", &self.pixel_spacing)
            .field("image_position", &self.image_position)
            .field("image_orientation", &self.image_orientation)
            .field("instance_number", &self.instance_number)
            .field("rescale_slope", &self.rescale_slope)
            .field("rescale_intercept", &self.rescale_intercept)
            .field("windows", &self.windows)
            .finish()
    }
}

fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || c == '\0')
}

// Attributes are looked up with `get` (an `Option`), never `element_opt`/`element`: dicom-rs builds an
// access error for an absent attribute, with a backtrace it captures unconditionally, and absent
// optional attributes (Number of Frames, Planar Configuration, ...) are the rule: about 1 % of the
// server's CPU per slice (perf). `header.rs` looks up Pixel Data the same way.

/// Optional string attribute; empty values count as absent.
pub(crate) fn opt_str(obj: &Obj, tag: Tag) -> Option<String> {
    let e = obj.get(tag)?;
    let s = match e.value() {
        // text stored with a binary VR (e.g. UN / OB): take the bytes as ASCII
        dicom::core::value::Value::Primitive(dicom::core::PrimitiveValue::U8(b)) => {
            String::from_utf8_lossy(b).into_owned().into()
        }
        _ => e.to_str().ok()?,
    };
    let t = trim(&s);
    if t.is_empty() {
        None
    } else {
        Some(t.to_string())
    }
}

fn req_str(obj: &Obj, tag: Tag, name: &'static str) -> Result<String, DecodeError> {
    opt_str(obj, tag).ok_or(DecodeError::MissingAttribute { name })
}

/// Optional integer attribute: absent/empty -> Ok(None), unparsable or out of
/// range for `T` -> Malformed.
fn opt_int<T: TryFrom<i64>>(
    obj: &Obj,
    tag: Tag,
    name: &'static str,
) -> Result<Option<T>, DecodeError> {
    let Some(e) = obj.get(tag) else {
        return Ok(None);
    };
    if e.value().length().0 == 0 {
        return Ok(None);
    }
    let v: i64 = e.to_int::<i64>().map_err(|err| DecodeError::Malformed {
        // dicom-rs may quote the value: keep only its description
        detail: format!(
            "{name}: invalid value ({})",
            super::uid::redact(&err.to_string())
        ),
    })?;
    T::try_from(v)
        .map(Some)
        .map_err(|_| DecodeError::Malformed {
            detail: format!("{name}: value {v} out of range"),
        })
}

fn req_int<T: TryFrom<i64>>(obj: &Obj, tag: Tag, name: &'static str) -> Result<T, DecodeError> {
    opt_int(obj, tag, name)?.ok_or(DecodeError::MissingAttribute { name })
}

/// Optional multi-valued float attribute with at least N values; anything
/// unparsable or short is treated as absent (these are informational).
fn opt_floats<const N: usize>(obj: &Obj, tag: Tag) -> Option<[f64; N]> {
    let e = obj.get(tag)?;
    let v = e.to_multi_float64().ok()?;
    let mut out = [0.0; N];
    for (o, x) in out.iter_mut().zip(v.iter()) {
        *o = *x;
    }
    if v.len() >= N && out.iter().all(|x| x.is_finite()) {
        Some(out)
    } else {
        None
    }
}

fn opt_float(obj: &Obj, tag: Tag) -> Option<f64> {
    opt_floats::<1>(obj, tag).map(|[x]| x)
}

/// Pixel-module attributes needed to decode, read before touching pixel data.
pub(crate) struct PixelAttrs {
    pub rows: u32,
    pub cols: u32,
    pub frames: u32,
    pub samples: u16,
    pub bits_allocated: u16,
    pub bits_stored: u16,
    pub pixel_representation: u16,
    pub planar_configuration: u16,
    pub photometric_original: String,
}

pub(crate) fn pixel_attrs(obj: &Obj) -> Result<PixelAttrs, DecodeError> {
    let rows: u32 = req_int(obj, tags::ROWS, "Rows (0028,0010)")?;
    let cols: u32 = req_int(obj, tags::COLUMNS, "Columns (0028,0011)")?;
    let bits_allocated: u16 = req_int(obj, tags::BITS_ALLOCATED, "BitsAllocated (0028,0100)")?;
    let bits_stored: u16 =
        opt_int(obj, tags::BITS_STORED, "BitsStored (0028,0101)")?.unwrap_or(bits_allocated);
    let samples: u16 =
        opt_int(obj, tags::SAMPLES_PER_PIXEL, "SamplesPerPixel (0028,0002)")?.unwrap_or(1);
    let pixel_representation: u16 = opt_int(
        obj,
        tags::PIXEL_REPRESENTATION,
        "PixelRepresentation (0028,0103)",
    )?
    .unwrap_or(0);
    let planar_configuration: u16 = opt_int(
        obj,
        tags::PLANAR_CONFIGURATION,
        "PlanarConfiguration (0028,0006)",
    )?
    .unwrap_or(0);
    // Number of Frames is IS; 0 or absent means a single frame (as pydicom does).
    let frames: i64 =
        opt_int(obj, tags::NUMBER_OF_FRAMES, "NumberOfFrames (0028,0008)")?.unwrap_or(1);
    if frames < 0 || frames > u32::MAX as i64 {
        return Err(DecodeError::Malformed {
            detail: format!("NumberOfFrames (0028,0008) out of range: {frames}"),
        });
    }
    let frames = (frames as u32).max(1);
    let photometric_original = req_str(
        obj,
        tags::PHOTOMETRIC_INTERPRETATION,
        "PhotometricInterpretation (0028,0004)",
    )?;
    Ok(PixelAttrs {
        rows,
        cols,
        frames,
        samples,
        bits_allocated,
        bits_stored,
        pixel_representation,
        planar_configuration,
        photometric_original,
    })
}

/// Identification and geometry attributes (everything not needed to decode).
pub(crate) fn instance_meta(
    obj: &Obj,
    transfer_syntax: &str,
    px: &PixelAttrs,
    photometric: Photometric,
) -> Result<InstanceMeta, DecodeError> {
    let sop_instance_uid = opt_str(obj, tags::SOP_INSTANCE_UID)
        .or_else(|| non_empty(obj.meta().media_storage_sop_instance_uid()))
        .ok_or(DecodeError::MissingAttribute {
            name: "SOPInstanceUID (0008,0018)",
        })?;
    let sop_class_uid = opt_str(obj, tags::SOP_CLASS_UID)
        .or_else(|| non_empty(obj.meta().media_storage_sop_class_uid()))
        .ok_or(DecodeError::MissingAttribute {
            name: "SOPClassUID (0008,0016)",
        })?;
    // Study / Series UIDs are type 1 but absent in some real files; they do not
    // affect decoding, so an absent value is reported as "" rather than rejected.
    let study_instance_uid = opt_str(obj, tags::STUDY_INSTANCE_UID).unwrap_or_default();
    let series_instance_uid = opt_str(obj, tags::SERIES_INSTANCE_UID).unwrap_or_default();
    let windows = file_windows(obj);
    Ok(InstanceMeta {
        sop_instance_uid,
        sop_class_uid,
        study_instance_uid,
        series_instance_uid,
        patient_id: opt_str(obj, tags::PATIENT_ID),
        transfer_syntax: transfer_syntax.to_string(),
        modality: opt_str(obj, tags::MODALITY),
        body_part_examined: opt_str(obj, tags::BODY_PART_EXAMINED).and_then(|v| plausible_term(&v)),
        series_description: opt_str(obj, tags::SERIES_DESCRIPTION),
        rows: px.rows,
        cols: px.cols,
        number_of_frames: px.frames,
        samples_per_pixel: px.samples,
        bits_allocated: px.bits_allocated,
        bits_stored: px.bits_stored,
        pixel_representation: px.pixel_representation,
        photometric,
        photometric_original: px.photometric_original.clone(),
        pixel_spacing: opt_floats::<2>(obj, tags::PIXEL_SPACING),
        image_position: opt_floats::<3>(obj, tags::IMAGE_POSITION_PATIENT),
        image_orientation: opt_floats::<6>(obj, tags::IMAGE_ORIENTATION_PATIENT),
        instance_number: opt_int(obj, tags::INSTANCE_NUMBER, "InstanceNumber (0020,0013)")
            .ok()
            .flatten(),
        rescale_slope: opt_float(obj, tags::RESCALE_SLOPE).unwrap_or(1.0),
        rescale_intercept: opt_float(obj, tags::RESCALE_INTERCEPT).unwrap_or(0.0),
        windows,
    })
}

/// The values of a decimal-string attribute in order, at most `max`; a value that does not parse as a
/// number is NaN (kept, so that its pair is seen as invalid). Absent or empty: no values.
fn ds_values(obj: &Obj, tag: Tag, max: usize) -> Vec<f64> {
    let Some(e) = obj.get(tag) else {
        return Vec::new();
    };
    let text = match e.value() {
        // text stored with a binary VR (e.g. UN): take the bytes as ASCII
        dicom::core::value::Value::Primitive(dicom::core::PrimitiveValue::U8(b)) => {
            String::from_utf8_lossy(b).into_owned()
        }
        _ => match e.to_str() {
            Ok(s) => s.into_owned(),
            Err(_) => return Vec::new(),
        },
    };
    if trim(&text).is_empty() {
        return Vec::new();
    }
    text.split('\\')
        .take(max)
        .map(|v| trim(v).parse::<f64>().unwrap_or(f64::NAN))
        .collect()
}

/// Every Window Center / Window Width pair of the file, in order, bounded by [`MAX_FILE_WINDOWS`]. A
/// centre without its width (or the reverse) makes an invalid pair rather than none, so that "the file's
/// window is invalid" can be reported.
fn file_windows(obj: &Obj) -> Vec<Window> {
    let centers = ds_values(obj, tags::WINDOW_CENTER, MAX_FILE_WINDOWS);
    let widths = ds_values(obj, tags::WINDOW_WIDTH, MAX_FILE_WINDOWS);
    let n = centers.len().max(widths.len());
    (0..n)
        .map(|i| Window {
            center: centers.get(i).copied().unwrap_or(f64::NAN),
            width: widths.get(i).copied().unwrap_or(f64::NAN),
        })
        .collect()
}

/// The longest defined term kept (a Code String value is at most 16 characters, PS3.5 6.2).
pub const MAX_TERM_CHARS: usize = 16;

/// `value` trimmed and upper-cased when it has the form of a defined term — letters, digits, spaces and
/// underscores, at most [`MAX_TERM_CHARS`] — else `None`. The defined terms of Body Part Examined are
/// many (PS3.16 Annex L) and grow; the form is what keeps free text out of messages. Lower case is
/// accepted (and upper-cased) because terms are compared case-insensitively.
pub fn plausible_term(value: &str) -> Option<String> {
    let t = trim(value);
    let plausible = !t.is_empty()
        && t.chars().count() <= MAX_TERM_CHARS
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '_');
    plausible.then(|| t.to_ascii_uppercase())
}

fn non_empty(s: &str) -> Option<String> {
    let t = trim(s);
    if t.is_empty() {
        None
    } else {
        Some(t.to_string())
    }
}

#[cfg(test)]
mod tests {
    use dicom::core::{DataElement, PrimitiveValue, VR};
    use dicom::object::FileMetaTableBuilder;

    use super::*;

    /// A data set holding only what `with_meta` needs plus the given window attributes (values as
    /// written in the file; `None` leaves the attribute out).
    fn obj(center: Option<(VR, &str)>, width: Option<(VR, &str)>) -> Obj {
        let mut o = InMemDicomObject::new_empty();
        let mut put = |tag, vr, v: &str| {
            let value = if vr == VR::UN {
                PrimitiveValue::from(v.as_bytes().to_vec())
            } else {
                PrimitiveValue::from(v)
            };
            o.put(DataElement::new(tag, vr, value));
        };
        put(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.4");
        put(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3");
        if let Some((vr, v)) = center {
            put(tags::WINDOW_CENTER, vr, v);
        }
        if let Some((vr, v)) = width {
            put(tags::WINDOW_WIDTH, vr, v);
        }
        o.with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
            .expect("meta")
    }

    fn pairs(center: &str, width: &str) -> Vec<(f64, f64)> {
        file_windows(&obj(Some((VR::DS, center)), Some((VR::DS, width))))
            .iter()
            .map(|w| (w.center, w.width))
            .collect()
    }

    fn same(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
        let eq = |x: f64, y: f64| x == y || (x.is_nan() && y.is_nan());
        a.len() == b.len() && a.iter().zip(b).all(|(p, q)| eq(p.0, q.0) && eq(p.1, q.1))
    }

    #[test]
    fn every_pair_is_kept_in_order_invalid_ones_included() {
        let nan = f64::NAN;
        type Case<'a> = (&'a str, &'a str, &'a [(f64, f64)]);
        let cases: &[Case<'_>] = &[
            ("40", "400", &[(40.0, 400.0)]),
            ("0", "0", &[(0.0, 0.0)]),
            (
                " 40 \\-600.5",
                "400\\1500 ",
                &[(40.0, 400.0), (-600.5, 1500.0)],
            ),
            // Unparsable and non-finite values stay, as invalid pairs.
            ("abc\\40", "400\\400", &[(nan, 400.0), (40.0, 400.0)]),
            ("40", "inf", &[(40.0, f64::INFINITY)]),
            ("NaN", "400", &[(nan, 400.0)]),
            // A centre without its width is an invalid pair, not no pair.
            ("40\\50", "400", &[(40.0, 400.0), (50.0, nan)]),
            (
                "40\\\\50",
                "1\\2\\3",
                &[(40.0, 1.0), (nan, 2.0), (50.0, 3.0)],
            ),
        ];
        for (c, w, want) in cases {
            let got = pairs(c, w);
            assert!(same(&got, want), "{c:?}/{w:?}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn absent_or_empty_attributes_give_no_window_and_many_are_bounded() {
        assert!(file_windows(&obj(None, None)).is_empty());
        assert!(file_windows(&obj(Some((VR::DS, "")), Some((VR::DS, "")))).is_empty());
        let lone = file_windows(&obj(Some((VR::DS, "40")), None));
        assert_eq!(lone.len(), 1);
        assert!(!lone[0].is_valid(), "a centre without a width is invalid");
        let many: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let many = many.join("\\");
        let got = pairs(&many, &many);
        assert_eq!(got.len(), MAX_FILE_WINDOWS);
        assert_eq!(got[15], (15.0, 15.0));
        // Text written with a binary VR (UN) is read as text too.
        let un = file_windows(&obj(Some((VR::UN, "40")), Some((VR::UN, "400"))));
        assert!(same(
            &un.iter().map(|w| (w.center, w.width)).collect::<Vec<_>>(),
            &[(40.0, 400.0)]
        ));
    }

    #[test]
    fn only_plausible_terms_are_kept_as_body_parts() {
        assert_eq!(plausible_term(" HEAD ").as_deref(), Some("HEAD"));
        assert_eq!(plausible_term("brain\0").as_deref(), Some("BRAIN"));
        assert_eq!(
            plausible_term("ABDOMEN_PELVIS").as_deref(),
            Some("ABDOMEN_PELVIS")
        );
        assert_eq!(plausible_term("C SPINE 2").as_deref(), Some("C SPINE 2"));
        for free_text in [
            "",
            "   ",
            "Doe^John",
            "HEAD-NECK",
            "A VERY LONG BODY PART",
            "KOPF\u{e4}",
            "HEAD\\NECK",
        ] {
            assert_eq!(plausible_term(free_text), None, "{free_text:?}");
        }
    }

    #[test]
    fn debug_redacts_the_series_description() {
        let o = obj(None, None);
        let px = PixelAttrs {
            rows: 1,
            cols: 1,
            frames: 1,
            samples: 1,
            bits_allocated: 16,
            bits_stored: 16,
            pixel_representation: 0,
            planar_configuration: 0,
            photometric_original: "MONOCHROME2".into(),
        };
        let read = |o: &Obj| {
            instance_meta(o, "1.2.840.10008.1.2.1", &px, Photometric::Monochrome2).expect("meta")
        };
        let meta = read(&o);
        assert_eq!(
            (meta.body_part_examined, meta.series_description),
            (None, None)
        );
        let mut o = o;
        o.put(DataElement::new(
            tags::BODY_PART_EXAMINED,
            VR::CS,
            PrimitiveValue::from("head "),
        ));
        o.put(DataElement::new(
            tags::SERIES_DESCRIPTION,
            VR::LO,
            PrimitiveValue::from("Dr Planted Descr"),
        ));
        let meta = read(&o);
        assert_eq!(meta.body_part_examined.as_deref(), Some("HEAD"));
        assert_eq!(meta.series_description.as_deref(), Some("Dr Planted Descr"));
        o.put(DataElement::new(
            tags::BODY_PART_EXAMINED,
            VR::CS,
            PrimitiveValue::from("Doe^John"),
        ));
        assert_eq!(read(&o).body_part_examined, None, "free text is not kept");
        let debug = format!("{meta:?}");
        assert!(!debug.contains("Planted"), "{debug}");
        assert!(
            debug.contains("<redacted>") && debug.contains("HEAD"),
            "{debug}"
        );
    }

    #[test]
    fn validity_follows_ps3_3_c_11_2_1_2() {
        let w = |center, width| Window { center, width };
        assert!(w(40.0, 400.0).is_valid());
        assert!(
            w(0.0, 1.0).is_valid(),
            "width 1 is the smallest valid width"
        );
        assert!(w(-1e6, 1.0 + 1e-9).is_valid());
        for bad in [
            w(0.0, 0.0),
            w(40.0, 0.5),
            w(40.0, 1.0 - 1e-9),
            w(40.0, -400.0),
            w(f64::NAN, 400.0),
            w(40.0, f64::NAN),
            w(f64::INFINITY, 400.0),
            w(40.0, f64::INFINITY),
        ] {
            assert!(!bad.is_valid(), "{bad:?}");
        }
    }
}
