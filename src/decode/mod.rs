//! DICOM decode stage: Part-10 bytes in, stored pixel values out.
//!
//! Why this module exists: everything after it (preprocessing on CPU or GPU, ONNX
//! scoring) wants one thing — the *stored* pixel values of each frame, plus
//! the few attributes needed to interpret them — and must never see the many ways a
//! DICOM file can be encoded or broken. This module is the only place that touches
//! `dicom-rs`.
//!
//! What it guarantees for [`decode_instance`]:
//! - It never panics on any input. Malformed input yields a [`Rejection`] carrying a
//!   [`DecodeError`] whose message names the offending tag or transfer syntax and whose
//!   [`DecodeError::code`] is a stable machine-readable string. Panics inside codec
//!   crates are caught (`catch_unwind`) and reported as [`DecodeError::PixelDecode`].
//! - Resource limits ([`Limits`]) are checked before work is done: the byte size first,
//!   then rows / columns / frames from the metadata, before any pixel data is decoded.
//! - Each [`Frame`] holds the stored values exactly as pydicom 3's `ds.pixel_array`
//!   returns them (Bits Stored mask, two's complement sign extension for Pixel
//!   Representation 1, planar configuration undone, YBR_FULL / YBR_FULL_422 converted to
//!   RGB with pydicom's formula); no modality rescale or windowing is applied. Layout is
//!   row-major with samples interleaved. Photometric is MONOCHROME1, MONOCHROME2 or RGB.
//!   The values are kept in their stored type and read through their [`SampleFormat`]
//!   (`samples`): native little endian Pixel Data stays in the received bytes.
//! - [`InstanceMeta`] contains the Patient ID; its `Debug` output redacts it and it must
//!   never be logged.
//!
//! Two phases (`header`): [`read_header`] reads and checks everything but the pixels and returns an
//! [`InstanceHeader`] (its [`InstanceMeta`] and frame count); [`InstanceHeader::decode_pixels`] then
//! reserves the decoded size and decodes. [`decode_instance`] is the two in one call. The split exists
//! so the service's study bookkeeping never waits for pixels: it learns an instance (UIDs, geometry,
//! modality, rows / columns / frames) from the cheap header, and it can skip the pixel decode, with its
//! codec time and its share of the decoded-bytes budget, where the pixels are not needed (a re-sent
//! duplicate SOP Instance UID). Every guarantee above holds for each phase; a rejection from the pixel
//! phase carries the UIDs the header read.
//!
//! Supported transfer syntaxes: implicit / explicit VR little endian, explicit VR big
//! endian, deflated explicit VR little endian, RLE lossless (own decoder, 8/16/32-bit),
//! JPEG baseline / extended (8-bit) / lossless, JPEG-LS lossless / near-lossless,
//! JPEG 2000 (lossless and lossy). Bits Allocated 8/16/32, and 1 (bit-packed,
//! uncompressed monochrome; values 0/1). Anything else is rejected with
//! [`DecodeError::UnsupportedTransferSyntax`] or [`DecodeError::UnsupportedPixelFormat`].
//!
//! Hostile input costs little. Before `dicom-rs` parses anything, an iterative structural walk
//! (`walk`) goes over the whole data set: every declared length is checked against the bytes left in
//! its enclosing container and sequence nesting is limited ([`Limits::max_sequence_depth`]), because
//! dicom-rs allocates and zero-fills declared lengths before reading (a few hundred bytes could cost
//! gigabytes) and builds nested sequences by recursion (deep nesting overflows the stack and aborts
//! the process). Deflated data sets are inflated here with a byte cap, then walked the same way.
//! Codestream headers (JPEG, JPEG-LS, JPEG 2000) must agree with Rows / Columns / Samples per Pixel
//! before a codec runs (`codestream`), so codec output is bounded by the decoded-size limit, which
//! is reserved from an optional global [`DecodeBudget`] before any pixel is decoded. Trailing zero
//! padding after the last element is not parsed.
//!
//! Messages never quote element values: only pixel-module numbers, defined terms and UIDs that
//! validate (PS3.5 9.1) appear in them; anything else is described (`uid`).

mod codestream;
mod header;
mod meta;
mod pixels;
mod rle;
mod samples;
pub mod uid;
mod walk;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use dicom::core::value::DicomValueType;
use dicom::core::value::PrimitiveValue;

pub use header::{read_header, InstanceHeader};
pub use meta::{plausible_term, InstanceMeta, Photometric, Window, MAX_TERM_CHARS};
pub use samples::{Frame, ReadWith, SampleFormat, SampleRead, Samples};

use meta::PixelAttrs;
use pixels::Color;

/// Resource limits applied before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size of the Part-10 input in bytes.
    pub max_instance_bytes: usize,
    pub max_rows: u32,
    pub max_cols: u32,
    pub max_frames: u32,
    /// Maximum size of the decoded pixels (stored samples; 8-bit RGB for YBR), in bytes. Compressed pixel data can expand
    /// by orders of magnitude, so this is checked from Rows × Columns × frames × samples before decoding.
    pub max_decoded_bytes: usize,
    /// Deepest accepted nesting of sequences (SQ, UN and implicit VR sequences of undefined length,
    /// encapsulated Pixel Data). Real data stays within a handful of levels; dicom-rs reads nested
    /// sequences by recursion, so this also keeps its stack use small.
    pub max_sequence_depth: u32,
    /// Most elements, items and delimiters in one data set. dicom-rs holds each as a node of its own
    /// (~100 bytes), so a file of tiny elements would cost about ten times its size; real data sets,
    /// enhanced multi-frame with per-frame groups included, hold well under a million.
    pub max_elements: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instance_bytes: 512 * 1024 * 1024,
            max_rows: 8192,
            max_cols: 8192,
            max_frames: 4096,
            max_decoded_bytes: 2 * 1024 * 1024 * 1024,
            max_sequence_depth: 32,
            max_elements: 1_000_000,
        }
    }
}

/// A decoded instance: metadata plus `meta.number_of_frames` frames.
#[derive(Debug, Clone)]
pub struct DecodedInstance {
    pub meta: InstanceMeta,
    pub frames: Vec<Frame>,
    /// The share of the global decoded-bytes budget this instance holds; given back when the last
    /// clone of the instance is dropped (after its last frame was scored or skipped).
    pub reservation: Option<Arc<Reservation>>,
}

/// Memory held against a [`DecodeBudget`]; dropping it gives the memory back.
pub struct Reservation(
    // held only to be dropped
    #[allow(dead_code)] Box<dyn Send + Sync>,
);

impl Reservation {
    /// Wraps whatever gives the memory back on drop (e.g. a semaphore permit).
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self(Box::new(guard))
    }
}

impl fmt::Debug for Reservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Reservation")
    }
}

/// One budget of decoded bytes shared by every stream, so memory stays flat as streams grow.
///
/// [`InstanceHeader::decode_pixels`] (so [`decode_instance_with_budget`]) calls `reserve` once per
/// instance, after the header told how much the decode will hold and before any pixel is decoded; a
/// deflated data set also asks once in [`read_header`], for its inflation. It may block (it runs on a
/// blocking thread).
pub trait DecodeBudget: Send + Sync {
    /// Waits until `bytes` may be held. An error rejects the instance (e.g. larger than the budget).
    fn reserve(&self, bytes: u64) -> Result<Reservation, DecodeError>;
}

/// Why an instance could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not a DICOM Part-10 file: {detail}")]
    NotDicom { detail: String },
    #[error("malformed DICOM: {detail}")]
    Malformed { detail: String },
    #[error("{}", too_large_message(*.bytes, *.limit, *.inflated))]
    TooLarge {
        bytes: usize,
        limit: usize,
        /// The limit was crossed while inflating a deflated data set (`bytes` is where inflating stopped).
        inflated: bool,
    },
    #[error(
        "image dimensions {rows} rows x {cols} columns x {frames} frames exceed the limits \
         ({max_rows} x {max_cols} x {max_frames}) (Rows (0028,0010), Columns (0028,0011), NumberOfFrames (0028,0008))"
    )]
    DimensionsTooLarge {
        rows: u32,
        cols: u32,
        frames: u32,
        max_rows: u32,
        max_cols: u32,
        max_frames: u32,
    },
    #[error(
        "decoded pixels would take {bytes} bytes ({rows} x {cols} x {frames} frames x {samples} samples \
         as stored), over the limit of {limit} bytes"
    )]
    DecodedTooLarge {
        bytes: u64,
        limit: usize,
        rows: u32,
        cols: u32,
        frames: u32,
        samples: u16,
    },
    #[error("missing required attribute {name}")]
    MissingAttribute { name: &'static str },
    #[error("no Pixel Data (7FE0,0010) in the instance")]
    MissingPixelData,
    #[error("unsupported transfer syntax {uid} ({name})")]
    UnsupportedTransferSyntax {
        uid: String,
        /// A registry name (static: keeps the error, and so [`Rejection`], small).
        name: &'static str,
    },
    #[error("unsupported pixel format: {detail}")]
    UnsupportedPixelFormat { detail: String },
    #[error("pixel data decoding failed for transfer syntax {transfer_syntax}: {detail}")]
    PixelDecode {
        transfer_syntax: String,
        detail: String,
    },
}

impl DecodeError {
    /// Stable machine-readable code for this variant.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::NotDicom { .. } => "not_dicom",
            DecodeError::Malformed { .. } => "malformed",
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::DimensionsTooLarge { .. } => "dimensions_too_large",
            DecodeError::DecodedTooLarge { .. } => "decoded_too_large",
            DecodeError::MissingAttribute { .. } => "missing_attribute",
            DecodeError::MissingPixelData => "missing_pixel_data",
            DecodeError::UnsupportedTransferSyntax { .. } => "unsupported_transfer_syntax",
            DecodeError::UnsupportedPixelFormat { .. } => "unsupported_pixel_format",
            DecodeError::PixelDecode { .. } => "pixel_decode",
        }
    }
}

fn too_large_message(bytes: usize, limit: usize, inflated: bool) -> String {
    if inflated {
        format!(
            "the deflated data set inflates past {limit} bytes (limits.max_instance_bytes); inflating stopped there"
        )
    } else {
        format!("instance of {bytes} bytes exceeds the limit of {limit} bytes")
    }
}

/// A rejected instance: the error plus the identifying UIDs that could be read and are valid UIDs
/// (PS3.5 9.1; a malformed UID is described in the error, never carried here).
#[derive(Debug)]
pub struct Rejection {
    /// SOPInstanceUID (0008,0018), else MediaStorageSOPInstanceUID (0002,0003).
    pub sop_instance_uid: Option<String>,
    /// StudyInstanceUID (0020,000D), so the rejection counts in its study.
    pub study_instance_uid: Option<String>,
    /// SeriesInstanceUID (0020,000E).
    pub series_instance_uid: Option<String>,
    pub error: DecodeError,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.sop_instance_uid {
            Some(uid) => write!(f, "instance {uid} rejected: {}", self.error),
            None => write!(f, "instance rejected: {}", self.error),
        }
    }
}

impl std::error::Error for Rejection {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

const TS_EXPLICIT_VR_BIG_ENDIAN: &str = "1.2.840.10008.1.2.2";
const TS_RLE_LOSSLESS: &str = "1.2.840.10008.1.2.5";
const JPEG2000_TS: &[&str] = &[
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.92",
    "1.2.840.10008.1.2.4.93",
    "1.2.840.10008.1.2.4.201",
    "1.2.840.10008.1.2.4.202",
    "1.2.840.10008.1.2.4.203",
];

const JPEG_TS: &[&str] = &[
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
];

/// JPEG with Photometric Interpretation RGB: `jpeg-decoder` applies a YCbCr -> RGB
/// transform unless the codestream says otherwise (component ids 'R','G','B' or an
/// Adobe APP14 marker with transform 0), whereas the DICOM header says the samples are
/// already RGB (pydicom/libjpeg keep them as is). With no JFIF/Adobe marker and
/// non-standard component ids the two disagree; reject rather than return wrong colours.
fn check_jpeg_rgb(frag: &[u8]) -> Result<(), DecodeError> {
    if frag.get(0..2) != Some(&[0xFF, 0xD8][..]) {
        return Ok(());
    }
    let mut pos = 2usize;
    let mut jfif = false;
    let mut adobe = false;
    let mut ids: Option<[u8; 3]> = None;
    while let (Some(&ff), Some(&m)) = (frag.get(pos), frag.get(pos + 1)) {
        if ff != 0xFF {
            return Ok(()); // not at a marker: give up checking
        }
        if m == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        if m == 0x01 || (0xD0..=0xD7).contains(&m) {
            pos += 2;
            continue;
        }
        let Some(len) = frag
            .get(pos + 2..pos + 4)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return Ok(());
        };
        let payload = frag.get(pos + 4..pos + 2 + len.max(2)).unwrap_or(&[]);
        match m {
            0xE0 if payload.starts_with(b"JFIF") => jfif = true,
            0xEE if payload.starts_with(b"Adobe") => adobe = true,
            0xC0..=0xCF if m != 0xC4 && m != 0xC8 && m != 0xCC && payload.get(5) == Some(&3) => {
                if let (Some(&a), Some(&b), Some(&c)) =
                    (payload.get(6), payload.get(9), payload.get(12))
                {
                    ids = Some([a, b, c]);
                }
            }
            0xDA => break,
            _ => {}
        }
        pos += 2 + len;
    }
    match ids {
        Some(ids) if !jfif && !adobe && ids != [b'R', b'G', b'B'] && ids != [1, 2, 3] => {
            Err(DecodeError::UnsupportedPixelFormat {
                detail: format!(
                    "JPEG with PhotometricInterpretation (0028,0004) RGB, component ids {ids:?} and no JFIF/Adobe marker: \
                     the colour transform is ambiguous and the JPEG codec would apply YCbCr -> RGB"
                ),
            })
        }
        _ => Ok(()),
    }
}

/// Decodes one Part-10 instance (with the 128-byte preamble, or starting at `DICM`).
pub fn decode_instance(bytes: &[u8], limits: &Limits) -> Result<DecodedInstance, Rejection> {
    decode_instance_with_budget(bytes, limits, None)
}

/// The identifying UIDs read so far (valid ones only), carried by a rejection.
#[derive(Debug, Default)]
struct Ids {
    sop: Option<String>,
    study: Option<String>,
    series: Option<String>,
}

impl Ids {
    fn reject(self, error: DecodeError) -> Rejection {
        Rejection {
            sop_instance_uid: self.sop,
            study_instance_uid: self.study,
            series_instance_uid: self.series,
            error,
        }
    }
}

/// [`decode_instance`], holding the decoded size against `budget` (when given) from the moment the
/// header told it until the returned instance is dropped ([`DecodedInstance::reservation`]).
///
/// The same as [`read_header`] followed by [`InstanceHeader::decode_pixels`].
pub fn decode_instance_with_budget(
    bytes: &[u8],
    limits: &Limits,
    budget: Option<&dyn DecodeBudget>,
) -> Result<DecodedInstance, Rejection> {
    read_header(bytes, limits, budget)?.decode_pixels(budget)
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    let raw = if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.as_str()
    } else {
        "unknown panic"
    };
    uid::redact(raw)
}

/// Checks the pixel format and decides the output photometric and colour handling.
fn validate_format(
    px: &PixelAttrs,
    ts_uid: &str,
    encapsulated: bool,
) -> Result<(Photometric, Color), DecodeError> {
    let unsupported = |detail: String| DecodeError::UnsupportedPixelFormat { detail };
    match px.bits_allocated {
        8 | 16 | 32 => {}
        1 if !encapsulated
            && px.samples == 1
            && px.pixel_representation == 0
            && px.photometric_original.starts_with("MONOCHROME") => {}
        b => {
            return Err(unsupported(format!(
                "BitsAllocated (0028,0100) = {b}; only 8, 16 and 32 are supported (1 for uncompressed unsigned monochrome)"
            )))
        }
    }
    if encapsulated && px.bits_allocated == 32 && ts_uid != TS_RLE_LOSSLESS {
        return Err(unsupported(format!(
            "BitsAllocated (0028,0100) = 32 with compressed transfer syntax {ts_uid}"
        )));
    }
    if px.bits_stored == 0 || px.bits_stored > px.bits_allocated {
        return Err(DecodeError::Malformed {
            detail: format!(
                "BitsStored (0028,0101) = {} is invalid for BitsAllocated (0028,0100) = {}",
                px.bits_stored, px.bits_allocated
            ),
        });
    }
    if px.pixel_representation > 1 {
        return Err(DecodeError::Malformed {
            detail: format!(
                "PixelRepresentation (0028,0103) = {} (must be 0 or 1)",
                px.pixel_representation
            ),
        });
    }
    let pi = px.photometric_original.as_str();
    let want_samples = |n: u16| {
        if px.samples == n {
            Ok(())
        } else {
            Err(unsupported(format!(
                "SamplesPerPixel (0028,0002) = {} does not match PhotometricInterpretation (0028,0004) {pi}",
                px.samples
            )))
        }
    };
    let is_j2k = JPEG2000_TS.contains(&ts_uid);
    let ybr_8bit = || {
        if px.bits_allocated == 8 {
            Ok(())
        } else {
            Err(unsupported(format!(
                "PhotometricInterpretation (0028,0004) {pi} with BitsAllocated (0028,0100) = {}; only 8-bit YBR is supported",
                px.bits_allocated
            )))
        }
    };
    match pi {
        "MONOCHROME1" => want_samples(1).map(|_| (Photometric::Monochrome1, Color::AsIs)),
        "MONOCHROME2" => want_samples(1).map(|_| (Photometric::Monochrome2, Color::AsIs)),
        "RGB" => want_samples(3).map(|_| (Photometric::Rgb, Color::AsIs)),
        "YBR_FULL" | "YBR_FULL_422" => {
            want_samples(3)?;
            if !encapsulated {
                ybr_8bit()?;
                if pi == "YBR_FULL_422" {
                    #[allow(clippy::manual_is_multiple_of)] // MSRV 1.85
                    if px.cols % 2 != 0 {
                        return Err(DecodeError::Malformed {
                            detail: format!(
                                "PhotometricInterpretation (0028,0004) YBR_FULL_422 requires an even Columns (0028,0011), got {}",
                                px.cols
                            ),
                        });
                    }
                    Ok((Photometric::Rgb, Color::YbrFull422))
                } else {
                    Ok((Photometric::Rgb, Color::YbrFull))
                }
            } else if ts_uid == TS_RLE_LOSSLESS || ts_uid.starts_with("1.2.840.10008.1.2.4.8") {
                // RLE and JPEG-LS codecs return the samples as stored
                ybr_8bit()?;
                Ok((Photometric::Rgb, Color::YbrFull))
            } else {
                // JPEG and JPEG 2000 codecs apply the colour transform themselves
                Ok((Photometric::Rgb, Color::AsIs))
            }
        }
        "YBR_ICT" | "YBR_RCT" if is_j2k => {
            want_samples(3).map(|_| (Photometric::Rgb, Color::AsIs))
        }
        other => Err(unsupported(format!(
            "PhotometricInterpretation (0028,0004) {} is not supported (MONOCHROME1, MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422; YBR_ICT/YBR_RCT in JPEG 2000)",
            describe_photometric(other)
        ))),
    }
}

/// Defined terms of Photometric Interpretation (PS3.3 C.7.6.3.1.2), the only values quoted in messages.
const PHOTOMETRIC_DEFINED_TERMS: &[&str] = &[
    "MONOCHROME1",
    "MONOCHROME2",
    "PALETTE COLOR",
    "RGB",
    "HSV",
    "ARGB",
    "CMYK",
    "YBR_FULL",
    "YBR_FULL_422",
    "YBR_PARTIAL_422",
    "YBR_PARTIAL_420",
    "YBR_ICT",
    "YBR_RCT",
    "XYB",
];

/// Modality (0008,0060) defined terms, PS3.3 C.7.3.1.1.1 (current and retired).
pub(crate) const MODALITY_DEFINED_TERMS: &[&str] = &[
    "AR",
    "ASMT",
    "AU",
    "BDUS",
    "BI",
    "BMD",
    "CFM",
    "CR",
    "CT",
    "CTPROTOCOL",
    "DG",
    "DMS",
    "DOC",
    "DX",
    "ECG",
    "EEG",
    "EMG",
    "EOG",
    "EPS",
    "ES",
    "FID",
    "GM",
    "HC",
    "HD",
    "IO",
    "IOL",
    "IVOCT",
    "IVUS",
    "KER",
    "KO",
    "LEN",
    "LS",
    "M3D",
    "MG",
    "MR",
    "NM",
    "OAM",
    "OCT",
    "OP",
    "OPM",
    "OPT",
    "OPTBSV",
    "OPTENF",
    "OPV",
    "OSS",
    "OT",
    "PA",
    "PLAN",
    "POS",
    "PR",
    "PT",
    "PX",
    "REG",
    "RESP",
    "RF",
    "RG",
    "RTDOSE",
    "RTIMAGE",
    "RTINTENT",
    "RTPLAN",
    "RTRAD",
    "RTRECORD",
    "RTSEGANN",
    "RTSTRUCT",
    "RWV",
    "SEG",
    "SM",
    "SMR",
    "SR",
    "SRF",
    "STAIN",
    "TEXTUREMAP",
    "TG",
    "US",
    "VA",
    "XA",
    "XAPROTOCOL",
    "XC",
    // retired
    "AS",
    "CD",
    "CF",
    "CP",
    "CS",
    "DD",
    "DF",
    "DM",
    "DS",
    "EC",
    "FA",
    "FS",
    "LP",
    "MA",
    "MS",
    "OPR",
    "ST",
    "VF",
];

/// A Photometric Interpretation for a message: quoted when it is a defined term, else described.
fn describe_photometric(value: &str) -> String {
    if PHOTOMETRIC_DEFINED_TERMS.contains(&value) {
        format!("'{value}'")
    } else {
        format!(
            "(a value of {} characters that is not a defined term)",
            value.chars().count()
        )
    }
}

/// Native Pixel Data taken from the walked bytes, as the sample stream [`native_stream_bytes`] would
/// give for the value dicom-rs reads from them: the file's bytes, except 8-bit (and bit-packed)
/// samples held in OW words of a big endian file, which are the little endian bytes of the words.
fn raw_stream_bytes(
    bytes: &[u8],
    vr: Option<[u8; 2]>,
    big_endian: bool,
    bytes_per_sample: usize,
) -> Result<Cow<'_, [u8]>, DecodeError> {
    // implicit VR: OW (dicom-rs's rule for Pixel Data); unknown VR bytes: read as UN
    let vr = vr.map_or(Some(dicom::core::VR::OW), dicom::core::VR::from_binary);
    match vr {
        Some(dicom::core::VR::OW) if big_endian && bytes_per_sample <= 1 => {
            let mut swapped = bytes.to_vec();
            for pair in swapped.chunks_exact_mut(2) {
                pair.swap(0, 1);
            }
            Ok(Cow::Owned(swapped))
        }
        None
        | Some(dicom::core::VR::OB)
        | Some(dicom::core::VR::OW)
        | Some(dicom::core::VR::OL)
        | Some(dicom::core::VR::UN) => Ok(Cow::Borrowed(bytes)),
        Some(other) => Err(DecodeError::Malformed {
            detail: format!(
                "Pixel Data (7FE0,0010) has the unexpected VR {other:?} (OB or OW expected)"
            ),
        }),
    }
}

/// The pixel data value as the byte stream it was in the file (file byte order).
///
/// dicom-rs parses OW pixel data into `u16` values in host order; reconstructing the
/// file's byte stream lets one sample reader handle 8/16/32-bit samples in either
/// byte order (e.g. 32-bit big endian RT Dose, 8-bit samples in OW).
///
/// Exception (as pydicom): 8-bit samples held in OW words are the little endian bytes of
/// the words even in a big endian file (the writer swapped the words, not the bytes).
fn native_stream_bytes(
    p: &PrimitiveValue,
    big_endian: bool,
    bytes_per_sample: usize,
) -> Result<Cow<'_, [u8]>, DecodeError> {
    // (bit-packed 1-bit data has bytes_per_sample 0 and is treated the same way)
    let big_endian = big_endian && bytes_per_sample > 1;
    fn collect<const N: usize, T: Copy>(
        vals: &[T],
        big_endian: bool,
        be: fn(T) -> [u8; N],
        le: fn(T) -> [u8; N],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(vals.len() * N);
        for &v in vals {
            out.extend_from_slice(&if big_endian { be(v) } else { le(v) });
        }
        out
    }
    let host_le = cfg!(target_endian = "little");
    Ok(match p {
        PrimitiveValue::Empty => Cow::Borrowed(&[][..]),
        PrimitiveValue::U8(v) => Cow::Borrowed(&v[..]),
        _ if host_le
            && !big_endian
            && matches!(
                p,
                PrimitiveValue::U16(_)
                    | PrimitiveValue::I16(_)
                    | PrimitiveValue::U32(_)
                    | PrimitiveValue::I32(_)
            ) =>
        {
            p.to_bytes()
        }
        PrimitiveValue::U16(v) => {
            Cow::Owned(collect(v, big_endian, u16::to_be_bytes, u16::to_le_bytes))
        }
        PrimitiveValue::I16(v) => {
            Cow::Owned(collect(v, big_endian, i16::to_be_bytes, i16::to_le_bytes))
        }
        PrimitiveValue::U32(v) => {
            Cow::Owned(collect(v, big_endian, u32::to_be_bytes, u32::to_le_bytes))
        }
        PrimitiveValue::I32(v) => {
            Cow::Owned(collect(v, big_endian, i32::to_be_bytes, i32::to_le_bytes))
        }
        other => {
            return Err(DecodeError::Malformed {
                detail: format!(
                    "Pixel Data (7FE0,0010) has an unexpected value type {:?}",
                    other.value_type()
                ),
            })
        }
    })
}

/// Which codestream family an encapsulated transfer syntax carries, for the header check.
fn codestream_family(ts_uid: &str) -> Option<codestream::Family> {
    let process = ts_uid
        .strip_prefix("1.2.840.10008.1.2.4.")
        .and_then(|p| p.parse::<u32>().ok());
    match process {
        // JPEG processes (baseline, extended, lossless; retired ones too) and JPEG-LS
        Some(50..=70) | Some(80) | Some(81) => Some(codestream::Family::Jpeg),
        _ if JPEG2000_TS.contains(&ts_uid) => Some(codestream::Family::J2k),
        _ => None,
    }
}

fn is_deflated(ts_uid: &str) -> bool {
    ts_uid == "1.2.840.10008.1.2.1.99"
}

#[cfg(test)]
mod tests;

/// The RLE Lossless decoder on its own, for the fuzz target (`fuzz/fuzz_targets/rle.rs`) and the
/// regression tests of what it found: the decoder takes attacker-controlled fragments and sizes, and
/// reaching it through a whole Part-10 file would spend most fuzzing time in the parser. Returns the
/// decoded little endian, sample-interleaved bytes of all frames. Not part of the API.
#[doc(hidden)]
pub fn rle_decode_for_fuzzing(
    fragments: &[Vec<u8>],
    frames: u32,
    rows: u32,
    cols: u32,
    samples: u16,
    bytes_per_sample: usize,
) -> Result<Vec<u8>, String> {
    rle::decode(fragments, frames, rows, cols, samples, bytes_per_sample)
}
