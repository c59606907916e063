//! DICOM decode stage: Part-10 bytes in, stored pixel values out.
//!
//! Why this module exists: everything after it (preprocessing on CPU or GPU, ONNX
//! scoring) wants one thing — the *stored* pixel values of each frame as `f32`, plus
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
//! - [`InstanceMeta`] contains the Patient ID; its `Debug` output redacts it and it must
//!   never be logged.
//!
//! Supported transfer syntaxes: implicit / explicit VR little endian, explicit VR big
//! endian, deflated explicit VR little endian, RLE lossless (own decoder, 8/16/32-bit),
//! JPEG baseline / extended (8-bit) / lossless, JPEG-LS lossless / near-lossless,
//! JPEG 2000 (lossless and lossy). Bits Allocated 8/16/32, and 1 (bit-packed,
//! uncompressed monochrome; values 0/1). Anything else is rejected with
//! [`DecodeError::UnsupportedTransferSyntax`] or [`DecodeError::UnsupportedPixelFormat`].
//!
//! Before `dicom-rs` parses the bytes, a cheap header walk (`scan`) rejects any element
//! whose declared length exceeds the input: dicom-rs allocates and zero-fills declared
//! lengths before reading, so a few hundred bytes could otherwise cost gigabytes.

mod meta;
mod pixels;
mod rle;
mod scan;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::panic::{catch_unwind, AssertUnwindSafe};

use dicom::core::value::DicomValueType;
use dicom::core::value::{PrimitiveValue, Value};
use dicom::dictionary_std::tags;
use dicom::encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom::object::file::ReadPreamble;
use dicom::object::meta::FileMetaTable;
use dicom::object::OpenFileOptions;
use dicom::transfer_syntax::TransferSyntaxRegistry;

pub use meta::{InstanceMeta, Photometric, Window};

use meta::{Obj, PixelAttrs};
use pixels::{Color, Layout};

/// Resource limits applied before decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Maximum size of the Part-10 input in bytes.
    pub max_instance_bytes: usize,
    pub max_rows: u32,
    pub max_cols: u32,
    pub max_frames: u32,
    /// Maximum size of the decoded pixels (as f32 samples), in bytes. Compressed pixel data can expand
    /// by orders of magnitude, so this is checked from Rows × Columns × frames × samples before decoding.
    pub max_decoded_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instance_bytes: 512 * 1024 * 1024,
            max_rows: 8192,
            max_cols: 8192,
            max_frames: 4096,
            max_decoded_bytes: 2 * 1024 * 1024 * 1024,
        }
    }
}

/// One decoded frame: stored values (no rescale), row-major, samples interleaved.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// `rows * cols * samples_per_pixel` values.
    pub pixels: Vec<f32>,
    /// Minimum of `pixels` (0 for an empty frame).
    pub min: f32,
    /// Maximum of `pixels` (0 for an empty frame).
    pub max: f32,
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
pub struct Reservation(Box<dyn Send + Sync>);

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
/// [`decode_instance_with_budget`] calls `reserve` once per instance, after the header told how much
/// the decode will hold and before any pixel is decoded; it may block (it runs on a blocking thread).
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
    #[error("instance of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
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
         as f32), over the limit of {limit} bytes"
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
    UnsupportedTransferSyntax { uid: String, name: String },
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

/// A rejected instance: the error plus the SOP Instance UID when it could be read.
#[derive(Debug)]
pub struct Rejection {
    pub sop_instance_uid: Option<String>,
    /// StudyInstanceUID (0020,000D) when the data set could be read, so the rejection counts in its study.
    pub study_instance_uid: Option<String>,
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
    let mut uid: Option<String> = None;
    let mut study: Option<String> = None;
    // Last line of defence: nothing in here should panic, but dicom-rs and the codec
    // crates are not under our control.
    let result = catch_unwind(AssertUnwindSafe(|| {
        decode_inner(bytes, limits, &mut uid, &mut study)
    }));
    let result = match result {
        Ok(r) => r,
        Err(payload) => Err(DecodeError::Malformed {
            detail: format!("parser panicked: {}", panic_message(&payload)),
        }),
    };
    result.map_err(|error| Rejection {
        sop_instance_uid: uid,
        study_instance_uid: study,
        error,
    })
}

fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

fn decode_inner(
    bytes: &[u8],
    limits: &Limits,
    uid_out: &mut Option<String>,
    study_out: &mut Option<String>,
) -> Result<DecodedInstance, DecodeError> {
    // 1. size limit before anything else
    if bytes.len() > limits.max_instance_bytes {
        return Err(DecodeError::TooLarge {
            bytes: bytes.len(),
            limit: limits.max_instance_bytes,
        });
    }

    // 2. magic: preamble + DICM, or DICM at offset 0
    let body = if bytes.get(128..132) == Some(b"DICM") {
        &bytes[128..]
    } else if bytes.get(0..4) == Some(b"DICM") {
        bytes
    } else {
        return Err(DecodeError::NotDicom {
            detail: format!(
                "no 'DICM' magic at offset 128 or 0 ({} bytes); raw data sets without a file meta group are not accepted",
                bytes.len()
            ),
        });
    };

    // 3. file meta group -> transfer syntax, checked before parsing the data set.
    // Lengths are pre-checked: dicom-rs allocates declared lengths before reading.
    let meta_end = scan::check_lengths(body, 4, true, false, true)?;
    let file_meta = FileMetaTable::from_reader(body).map_err(|e| DecodeError::Malformed {
        detail: format!("file meta information group (0002,xxxx): {e}"),
    })?;
    let ms_uid = file_meta.media_storage_sop_instance_uid().trim();
    if !ms_uid.is_empty() {
        *uid_out = Some(ms_uid.to_string());
    }
    let ts_uid = file_meta.transfer_syntax().trim().to_string();
    if ts_uid.is_empty() {
        return Err(DecodeError::MissingAttribute {
            name: "TransferSyntaxUID (0002,0010)",
        });
    }
    let Some(ts) = TransferSyntaxRegistry.get(&ts_uid) else {
        return Err(DecodeError::UnsupportedTransferSyntax {
            uid: ts_uid,
            name: "unknown transfer syntax".to_string(),
        });
    };
    let unsupported = || DecodeError::UnsupportedTransferSyntax {
        uid: ts.uid().to_string(),
        name: ts.name().to_string(),
    };
    let encapsulated = match ts.codec() {
        Codec::None => false,
        Codec::Dataset(Some(_)) => false,
        Codec::Dataset(None) => return Err(unsupported()),
        Codec::EncapsulatedPixelData(Some(_), _) => true,
        Codec::EncapsulatedPixelData(None, _) => return Err(unsupported()),
    };

    // 4. parse the data set (after the same length pre-check; deflated data cannot be
    // checked this way and relies on the parser)
    if !is_deflated(&ts_uid) {
        scan::check_lengths(
            body,
            meta_end,
            ts_uid != "1.2.840.10008.1.2",
            ts_uid == TS_EXPLICIT_VR_BIG_ENDIAN,
            false,
        )?;
    }
    let obj: Obj = OpenFileOptions::new()
        .read_preamble(ReadPreamble::Never)
        .from_reader(body)
        .map_err(|e| DecodeError::Malformed {
            detail: format!("data set could not be parsed: {}", error_chain(&e)),
        })?;
    if let Some(u) = meta::opt_str(&obj, tags::SOP_INSTANCE_UID) {
        *uid_out = Some(u);
    }
    *study_out = meta::opt_str(&obj, tags::STUDY_INSTANCE_UID);

    // 5. pixel data presence and attributes
    let pixel_elem = match obj.element_opt(tags::PIXEL_DATA).ok().flatten() {
        Some(e) => e,
        None => {
            for (tag, name) in [
                (tags::FLOAT_PIXEL_DATA, "Float Pixel Data (7FE0,0008)"),
                (
                    tags::DOUBLE_FLOAT_PIXEL_DATA,
                    "Double Float Pixel Data (7FE0,0009)",
                ),
            ] {
                if obj.element_opt(tag).ok().flatten().is_some() {
                    return Err(DecodeError::UnsupportedPixelFormat {
                        detail: format!(
                            "{name} is not supported, only integer Pixel Data (7FE0,0010)"
                        ),
                    });
                }
            }
            return Err(DecodeError::MissingPixelData);
        }
    };
    let px = meta::pixel_attrs(&obj)?;

    // 6. limits before any decoding
    if px.rows > limits.max_rows || px.cols > limits.max_cols || px.frames > limits.max_frames {
        return Err(DecodeError::DimensionsTooLarge {
            rows: px.rows,
            cols: px.cols,
            frames: px.frames,
            max_rows: limits.max_rows,
            max_cols: limits.max_cols,
            max_frames: limits.max_frames,
        });
    }
    let decoded_bytes = u64::from(px.rows)
        * u64::from(px.cols)
        * u64::from(px.frames)
        * u64::from(px.samples)
        * std::mem::size_of::<f32>() as u64;
    if decoded_bytes > limits.max_decoded_bytes as u64 {
        return Err(DecodeError::DecodedTooLarge {
            bytes: decoded_bytes,
            limit: limits.max_decoded_bytes,
            rows: px.rows,
            cols: px.cols,
            frames: px.frames,
            samples: px.samples,
        });
    }
    if px.rows == 0 || px.cols == 0 {
        return Err(DecodeError::Malformed {
            detail: format!(
                "Rows (0028,0010) = {} / Columns (0028,0011) = {}: empty image",
                px.rows, px.cols
            ),
        });
    }
    let (photometric, color) = validate_format(&px, &ts_uid, encapsulated)?;
    let meta = meta::instance_meta(&obj, &ts_uid, &px, photometric)?;

    // 7. decode
    let layout = Layout {
        rows: px.rows,
        cols: px.cols,
        frames: px.frames,
        samples: px.samples,
        bytes_per_sample: usize::from(px.bits_allocated / 8),
        bits_stored: px.bits_stored,
        signed: px.pixel_representation == 1,
        big_endian: ts_uid == TS_EXPLICIT_VR_BIG_ENDIAN,
        planar: px.samples > 1 && px.planar_configuration == 1 && !encapsulated,
        color,
    };
    let frames = if encapsulated {
        let pixel_decode = |detail: String| DecodeError::PixelDecode {
            transfer_syntax: format!("{} ({})", ts.uid(), ts.name()),
            detail,
        };
        let Some(reader) = ts.pixel_data_reader() else {
            return Err(unsupported());
        };
        if !matches!(pixel_elem.value(), Value::PixelSequence(_)) {
            return Err(DecodeError::Malformed {
                detail: format!(
                    "Pixel Data (7FE0,0010) is not encapsulated although transfer syntax {} requires it",
                    ts.uid()
                ),
            });
        }
        if let Value::PixelSequence(seq) = pixel_elem.value() {
            if JPEG_TS.contains(&ts_uid.as_str()) && px.photometric_original == "RGB" {
                if let Some(first) = seq.fragments().first() {
                    check_jpeg_rgb(first)?;
                }
            }
        }
        let mut data: Vec<u8> = Vec::new();
        if ts_uid == TS_RLE_LOSSLESS {
            let Value::PixelSequence(seq) = pixel_elem.value() else {
                return Err(unsupported());
            };
            data = rle::decode(
                seq.fragments(),
                px.frames,
                px.rows,
                px.cols,
                px.samples,
                layout.bytes_per_sample,
            )
            .map_err(pixel_decode)?;
        } else {
            let r = catch_unwind(AssertUnwindSafe(|| reader.decode(&obj, &mut data)));
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(pixel_decode(error_chain(&e))),
                Err(p) => {
                    return Err(pixel_decode(format!(
                        "codec panicked: {}",
                        panic_message(&p)
                    )))
                }
            }
        }
        let expected = layout.total_bytes()?;
        if data.len() < expected {
            return Err(pixel_decode(format!(
                "codec produced {} bytes, {} expected",
                data.len(),
                expected
            )));
        }
        pixels::to_frames(&data, &layout)?
    } else {
        let stream = match pixel_elem.value() {
            Value::Primitive(p) => {
                native_stream_bytes(p, layout.big_endian, layout.bytes_per_sample)?
            }
            Value::PixelSequence(_) => {
                return Err(DecodeError::Malformed {
                    detail: format!(
                    "Pixel Data (7FE0,0010) is encapsulated but transfer syntax {} ({}) is native",
                    ts.uid(),
                    ts.name()
                ),
                })
            }
            Value::Sequence(_) => {
                return Err(DecodeError::Malformed {
                    detail: "Pixel Data (7FE0,0010) is a sequence".to_string(),
                })
            }
        };
        if px.bits_allocated == 1 {
            pixels::to_frames_1bit(&stream, px.rows, px.cols, px.frames)?
        } else {
            pixels::to_frames(&stream, &layout)?
        }
    };

    Ok(DecodedInstance {
        meta,
        frames,
        reservation: None,
    })
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
            "PhotometricInterpretation (0028,0004) '{other}' is not supported (MONOCHROME1, MONOCHROME2, RGB, YBR_FULL, YBR_FULL_422; YBR_ICT/YBR_RCT in JPEG 2000)"
        ))),
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

fn is_deflated(ts_uid: &str) -> bool {
    ts_uid == "1.2.840.10008.1.2.1.99"
}

/// Error message with its source chain, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    let mut depth = 0;
    while let Some(c) = cur {
        if depth > 8 {
            break;
        }
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
        depth += 1;
    }
    s
}

#[cfg(test)]
mod tests;
