//! The two phases of a decode: [`read_header`] (everything but pixels) and
//! [`InstanceHeader::decode_pixels`].
//!
//! Why the split: the service's study bookkeeping needs an instance's identity and geometry (UIDs,
//! modality, rows / columns / frames, position) to place it in its study, and that is known long before
//! its pixels are. Reading the header alone lets the bookkeeping learn the instance without waiting
//! for a codec, and lets the service skip the pixel decode entirely when it has no use for the pixels
//! (a re-sent duplicate SOP Instance UID): the expensive, memory-hungry half then never runs and never
//! takes a share of the decoded-bytes budget.
//!
//! The header phase does every check that needs no pixel decode: size, magic, file meta, transfer
//! syntax, the structural walk (and inflation of a deflated data set), the dicom-rs parse up to the
//! pixels, the pixel attributes, the dimension and decoded-size limits, the instance metadata with its
//! UIDs normalised, and the codestream headers (JPEG / JPEG-LS / JPEG 2000 fragment headers must agree
//! with Rows / Columns / Samples per Pixel; reading them is cheap). What remains for the pixel phase
//! is the budget reservation of the decoded size and the decode itself, so an accepted header is
//! rejected later only for the pixels (or a budget refusal).
//!
//! Both phases run under `catch_unwind`, and a rejection from either carries the UIDs read so far.

use std::borrow::Cow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use bytes::Bytes;
use dicom::core::value::Value;
use dicom::dictionary_std::tags;
use dicom::encoding::transfer_syntax::{Codec, TransferSyntaxIndex};
use dicom::encoding::TransferSyntax;
use dicom::object::meta::FileMetaTable;
use dicom::object::InMemDicomObject;
use dicom::transfer_syntax::TransferSyntaxRegistry;

use super::meta::{self, Obj, PixelAttrs};
use super::pixels::{self, Color, Layout};
use super::{
    check_jpeg_rgb, codestream, codestream_family, is_deflated, native_stream_bytes, panic_message,
    raw_stream_bytes, rle, uid, validate_format, walk, DecodeBudget, DecodeError, DecodedInstance,
    Ids, InstanceMeta, Limits, Rejection, Reservation, JPEG_TS, MODALITY_DEFINED_TERMS,
    TS_EXPLICIT_VR_BIG_ENDIAN, TS_RLE_LOSSLESS,
};

const TS_IMPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2";
const TS_EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// Everything read before pixels: the parsed data set (up to native Pixel Data, which stays in the
/// input bytes), the instance metadata and what the pixel decode needs. Cheap to get from
/// [`read_header`]; [`decode_pixels`](Self::decode_pixels) does the expensive half.
///
/// A deflated instance's header holds the inflation's share of the decoded-bytes budget (see
/// [`read_header`]) until it is decoded or dropped.
pub struct InstanceHeader<'a> {
    obj: Obj,
    /// The walked bytes from walk position `base` on: the input itself, or an inflated / patched copy.
    walked_buf: Cow<'a, [u8]>,
    base: usize,
    /// Top-level native Pixel Data, taken from `walked_buf` instead of the parsed data set.
    raw_pixels: Option<walk::PixelValue>,
    px: PixelAttrs,
    ts: &'static TransferSyntax,
    ts_uid: String,
    encapsulated: bool,
    color: Color,
    meta: InstanceMeta,
    decoded_bytes: u64,
    /// The budget share held while a deflated data set was inflated; given back before the decoded
    /// size is reserved, or when the header is dropped.
    inflate_hold: Option<Reservation>,
    ids: Ids,
}

impl std::fmt::Debug for InstanceHeader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the data set holds the Patient ID: only the (redacting) metadata is shown
        f.debug_struct("InstanceHeader")
            .field("meta", &self.meta)
            .field("transfer_syntax", &self.ts_uid)
            .field("decoded_bytes", &self.decoded_bytes)
            .finish_non_exhaustive()
    }
}

/// Reads and checks everything of a Part-10 instance (with the 128-byte preamble, or starting at
/// `DICM`) but its pixels; see the module docs for what is checked.
///
/// `budget` only matters for a deflated data set: it is inflated into memory of its own before its size
/// is known, so the whole cap (`limits.max_instance_bytes`) is held against the budget while inflating,
/// and the returned header keeps holding it until [`InstanceHeader::decode_pixels`] gives it back (just
/// before it reserves the decoded size) or the header is dropped.
pub fn read_header<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    budget: Option<&dyn DecodeBudget>,
) -> Result<InstanceHeader<'a>, Rejection> {
    let mut ids = Ids::default();
    // Last line of defence: nothing in here should panic, but dicom-rs is not under our control.
    let result = catch_unwind(AssertUnwindSafe(|| {
        read_header_inner(bytes, limits, budget, &mut ids)
    }));
    let result = match result {
        Ok(r) => r,
        Err(payload) => Err(DecodeError::Malformed {
            detail: format!("parser panicked: {}", panic_message(&payload)),
        }),
    };
    match result {
        Ok(mut header) => {
            header.ids = ids;
            Ok(header)
        }
        Err(error) => Err(ids.reject(error)),
    }
}

impl<'a> InstanceHeader<'a> {
    /// The instance's metadata, exactly as the full decode returns it in [`DecodedInstance::meta`].
    pub fn meta(&self) -> &InstanceMeta {
        &self.meta
    }

    /// Number of Frames (0028,0008), 1 when absent: how many frames the decode will return.
    pub fn frames(&self) -> u32 {
        self.px.frames
    }

    /// The size the decoded pixels will take (stored samples), as reserved from the budget.
    pub fn decoded_bytes(&self) -> u64 {
        self.decoded_bytes
    }

    /// Gives back the inflation's budget share (if any), reserves the decoded size against `budget`
    /// (when given) and decodes the pixels. The returned instance holds the reservation
    /// ([`DecodedInstance::reservation`]) until it is dropped. A rejection carries the header's UIDs.
    pub fn decode_pixels(
        self,
        budget: Option<&dyn DecodeBudget>,
    ) -> Result<DecodedInstance, Rejection> {
        self.decode_pixels_of(None, budget)
    }

    /// [`decode_pixels`](Self::decode_pixels) for a header read from `message` (the same bytes, held
    /// as [`Bytes`]): native little endian Pixel Data is then not copied, its frames are slices of
    /// `message` (which they keep alive).
    pub fn decode_pixels_sharing(
        self,
        message: &Bytes,
        budget: Option<&dyn DecodeBudget>,
    ) -> Result<DecodedInstance, Rejection> {
        self.decode_pixels_of(Some(message), budget)
    }

    fn decode_pixels_of(
        mut self,
        message: Option<&Bytes>,
        budget: Option<&dyn DecodeBudget>,
    ) -> Result<DecodedInstance, Rejection> {
        let ids = std::mem::take(&mut self.ids);
        // codecs are caught on their own (as PixelDecode); this catches anything else
        let result = catch_unwind(AssertUnwindSafe(move || {
            self.decode_pixels_inner(message, budget)
        }));
        let result = match result {
            Ok(r) => r,
            Err(payload) => Err(DecodeError::Malformed {
                detail: format!("parser panicked: {}", panic_message(&payload)),
            }),
        };
        result.map_err(|error| ids.reject(error))
    }

    fn decode_pixels_inner(
        mut self,
        message: Option<&Bytes>,
        budget: Option<&dyn DecodeBudget>,
    ) -> Result<DecodedInstance, DecodeError> {
        // 8. hold the decoded size against the global budget, then decode. The inflation's share goes
        // first: no decode waits for room while holding a share.
        drop(self.inflate_hold.take());
        let reservation = match budget {
            Some(b) => Some(Arc::new(b.reserve(self.decoded_bytes)?)),
            None => None,
        };
        let InstanceHeader {
            obj,
            walked_buf,
            base,
            raw_pixels,
            px,
            ts,
            ts_uid,
            encapsulated,
            color,
            meta,
            ..
        } = self;
        let unsupported = || DecodeError::UnsupportedTransferSyntax {
            uid: ts.uid().to_string(),
            name: ts.name(),
        };
        let raw_pixels: Option<(&[u8], Option<[u8; 2]>)> = raw_pixels.map(|p| {
            let start = p.value - base;
            (walked_buf.get(start..start + p.len).unwrap_or(&[]), p.vr)
        });
        let pixel_elem = match raw_pixels {
            Some(_) => None,
            None => obj.get(tags::PIXEL_DATA),
        };
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
            let Some(pixel_elem) = pixel_elem else {
                return Err(DecodeError::MissingPixelData);
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
                    Ok(Err(e)) => return Err(pixel_decode(uid::redact_chain(&e))),
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
            pixels::to_frames(Bytes::from(data), &layout)?
        } else {
            let stream: Cow<'_, [u8]> = match (raw_pixels, pixel_elem.map(|e| e.value())) {
                (Some((bytes, vr)), _) => {
                    raw_stream_bytes(bytes, vr, layout.big_endian, layout.bytes_per_sample)?
                }
                (None, Some(Value::Primitive(p))) => {
                    native_stream_bytes(p, layout.big_endian, layout.bytes_per_sample)?
                }
                (None, Some(Value::PixelSequence(_))) => {
                    return Err(DecodeError::Malformed {
                        detail: format!(
                            "Pixel Data (7FE0,0010) is encapsulated but transfer syntax {} ({}) is native",
                            ts.uid(),
                            ts.name()
                        ),
                    })
                }
                (None, Some(Value::Sequence(_))) => {
                    return Err(DecodeError::Malformed {
                        detail: "Pixel Data (7FE0,0010) is a sequence".to_string(),
                    })
                }
                (None, None) => return Err(DecodeError::MissingPixelData),
            };
            if px.bits_allocated == 1 {
                pixels::to_frames_1bit(&stream, px.rows, px.cols, px.frames)?
            } else {
                // Pixel Data still in the received message is shared with it, not copied.
                let stream = match (stream, message) {
                    (Cow::Borrowed(b), Some(m)) if within(m, b) => m.slice_ref(b),
                    (stream, _) => Bytes::from(stream.into_owned()),
                };
                pixels::to_frames(stream, &layout)?
            }
        };

        Ok(DecodedInstance {
            meta,
            frames,
            reservation,
        })
    }
}

/// Whether `part` lies inside `whole`'s memory (so `whole.slice_ref(part)` is defined).
fn within(whole: &Bytes, part: &[u8]) -> bool {
    let (w, p) = (whole.as_ptr() as usize, part.as_ptr() as usize);
    p >= w && p + part.len() <= w + whole.len()
}

/// Inflates a deflated data set (raw deflate, PS3.5 A.5), stopping after `cap` bytes. Returns the
/// inflated bytes and whether the cap was crossed (then the bytes are only its first `cap + 1`).
fn inflate_capped(deflated: &[u8], cap: usize) -> Result<(Vec<u8>, bool), DecodeError> {
    use std::io::Read;
    let mut out = Vec::new();
    // a guess at the final size, bounded by the cap; growth beyond it is amortised
    out.try_reserve(deflated.len().saturating_mul(4).min(cap))
        .map_err(|_| DecodeError::TooLarge {
            bytes: deflated.len().saturating_mul(4),
            limit: cap,
            inflated: true,
        })?;
    let mut reader = flate2::read::DeflateDecoder::new(deflated).take(cap as u64 + 1);
    reader
        .read_to_end(&mut out)
        .map_err(|e| DecodeError::Malformed {
            detail: format!(
                "the deflated data set could not be inflated: {}",
                uid::redact(&e.to_string())
            ),
        })?;
    let over = out.len() > cap;
    Ok((out, over))
}

/// Takes the top-level UIDs the walk found into `ids`: valid ones as they are, malformed ones as
/// their stand-in (`uid::identity`), so even an instance rejected later is named without echoing them.
fn take_uids(buf: &[u8], found: &walk::TopUids, ids: &mut Ids) {
    for (range, slot, name) in [
        (
            found.sop_instance,
            &mut ids.sop,
            "SOPInstanceUID (0008,0018)",
        ),
        (
            found.study_instance,
            &mut ids.study,
            "StudyInstanceUID (0020,000D)",
        ),
        (
            found.series_instance,
            &mut ids.series,
            "SeriesInstanceUID (0020,000E)",
        ),
    ] {
        let Some((start, len)) = range else {
            continue;
        };
        let raw = buf.get(start..start.saturating_add(len)).unwrap_or(&[]);
        if let Some(id) = uid::identity(raw, name) {
            *slot = Some(id.uid);
        }
    }
}

/// Steps 1–7 of a decode; the UIDs read so far go into `ids` (the returned header's own `ids` is
/// left empty: [`read_header`] fills it).
fn read_header_inner<'a>(
    bytes: &'a [u8],
    limits: &Limits,
    budget: Option<&dyn DecodeBudget>,
    ids: &mut Ids,
) -> Result<InstanceHeader<'a>, DecodeError> {
    // 1. size limit before anything else
    if bytes.len() > limits.max_instance_bytes {
        return Err(DecodeError::TooLarge {
            bytes: bytes.len(),
            limit: limits.max_instance_bytes,
            inflated: false,
        });
    }

    // 2. magic: preamble + DICM, or DICM at offset 0
    let (body, body_offset) = if bytes.get(128..132) == Some(b"DICM") {
        (&bytes[128..], 128)
    } else if bytes.get(0..4) == Some(b"DICM") {
        (bytes, 0)
    } else {
        return Err(DecodeError::NotDicom {
            detail: format!(
                "no 'DICM' magic at offset 128 or 0 ({} bytes); raw data sets without a file meta group are not accepted",
                bytes.len()
            ),
        });
    };
    let in_file = walk::Origin {
        base: body_offset,
        what: "file",
    };

    // 3. file meta group -> transfer syntax, checked before parsing the data set.
    let dataset_start = walk::walk_meta(body, in_file)?;
    let file_meta =
        FileMetaTable::from_reader(&body[..dataset_start]).map_err(|e| DecodeError::Malformed {
            detail: format!(
                "file meta information group (0002,xxxx) could not be read: {}",
                uid::redact_chain(&e)
            ),
        })?;
    let media_uid = uid::identity(
        file_meta.media_storage_sop_instance_uid().as_bytes(),
        "MediaStorageSOPInstanceUID (0002,0003)",
    );
    if let Some(id) = &media_uid {
        ids.sop = Some(id.uid.clone());
    }
    let ts_uid = match uid::validate(
        file_meta.transfer_syntax().as_bytes(),
        "TransferSyntaxUID (0002,0010)",
    ) {
        Ok(Some(u)) => u,
        Ok(None) => {
            return Err(DecodeError::MissingAttribute {
                name: "TransferSyntaxUID (0002,0010)",
            })
        }
        Err(detail) => return Err(DecodeError::Malformed { detail }),
    };
    // the registry is a static: what it hands out lives as long (and goes into the header)
    let registry: &'static TransferSyntaxRegistry = &TransferSyntaxRegistry;
    let Some(ts) = registry.get(&ts_uid) else {
        return Err(DecodeError::UnsupportedTransferSyntax {
            uid: ts_uid,
            name: "unknown transfer syntax",
        });
    };
    let unsupported = || DecodeError::UnsupportedTransferSyntax {
        uid: ts.uid().to_string(),
        name: ts.name(),
    };
    let deflated = is_deflated(&ts_uid);
    let encapsulated = match ts.codec() {
        Codec::None => false,
        Codec::Dataset(_) if deflated => false,
        Codec::Dataset(Some(_)) => false,
        Codec::Dataset(None) => return Err(unsupported()),
        Codec::EncapsulatedPixelData(Some(_), _) => true,
        Codec::EncapsulatedPixelData(None, _) => return Err(unsupported()),
    };

    // 4. walk the whole data set (inflated first when deflated), then let dicom-rs parse exactly the
    // checked bytes
    let encoding = if deflated {
        walk::Encoding::ExplicitLe
    } else if ts_uid == TS_IMPLICIT_VR_LITTLE_ENDIAN {
        walk::Encoding::ImplicitLe
    } else if ts_uid == TS_EXPLICIT_VR_BIG_ENDIAN {
        walk::Encoding::ExplicitBe
    } else {
        walk::Encoding::ExplicitLe
    };
    let mut top = walk::TopUids::default();
    // `walked_buf` holds the walked bytes from walk position `base` on
    // A deflated data set is inflated into memory of its own (up to `max_instance_bytes`) before its
    // size is known: that memory is held against the budget too, as the whole cap, so concurrent
    // deflated instances (or deflate bombs) queue for it instead of each inflating at once. The header
    // keeps holding it; the pixel decode gives it back before the decoded size is reserved (no decode
    // waits while holding a share), and dropping the header gives it back too.
    let inflate_hold = match (deflated, budget) {
        (true, Some(b)) => Some(b.reserve(limits.max_instance_bytes as u64)?),
        _ => None,
    };
    let (walked_buf, base, walked): (Cow<'a, [u8]>, usize, walk::Walk) = if deflated {
        let (mut inflated, over) =
            inflate_capped(&body[dataset_start..], limits.max_instance_bytes)?;
        let origin = walk::Origin {
            base: 0,
            what: "inflated data set",
        };
        let walked = walk::walk_dataset(
            &inflated,
            0,
            encoding,
            limits.max_sequence_depth,
            limits.max_elements,
            origin,
            &mut top,
        );
        if over {
            // the walk of what was inflated only serves to name the instance
            take_uids(&inflated, &top, ids);
            return Err(DecodeError::TooLarge {
                bytes: inflated.len(),
                limit: limits.max_instance_bytes,
                inflated: true,
            });
        }
        take_uids(&inflated, &top, ids);
        let walked = walked?;
        inflated.truncate(walked.end);
        walked.apply_patches(&mut inflated, 0, encoding);
        (Cow::Owned(inflated), 0, walked)
    } else {
        let walked = walk::walk_dataset(
            body,
            dataset_start,
            encoding,
            limits.max_sequence_depth,
            limits.max_elements,
            in_file,
            &mut top,
        );
        take_uids(body, &top, ids);
        let walked = walked?;
        if walked.un_patches.is_empty() {
            (Cow::Borrowed(body), 0, walked)
        } else {
            // rare: UN of undefined length in explicit VR; rewrite a copy (see walk.rs)
            let mut copy = body[dataset_start..walked.end].to_vec();
            walked.apply_patches(&mut copy, dataset_start, encoding);
            (Cow::Owned(copy), dataset_start, walked)
        }
    };
    let ds_start = if deflated { 0 } else { dataset_start };
    // Native Pixel Data at the top level is taken straight from the walked bytes: dicom-rs parses the
    // data set up to it (nothing after Pixel Data is needed), so it never holds a copy of the pixels.
    let raw_pixels = match walked.pixel_data {
        Some(p) if !encapsulated => Some(p),
        _ => None,
    };
    let parse_end = raw_pixels.map_or(walked.end, |p| p.header);
    let read_ts = if deflated {
        registry
            .get(TS_EXPLICIT_VR_LITTLE_ENDIAN)
            .ok_or_else(unsupported)?
    } else {
        ts
    };
    let to_parse = walked_buf
        .get(ds_start - base..parse_end - base)
        .unwrap_or(&[]);
    let obj: Obj = InMemDicomObject::read_dataset_with_ts(to_parse, read_ts)
        .map_err(|e| DecodeError::Malformed {
            detail: format!("data set could not be parsed: {}", uid::redact_chain(&e)),
        })?
        .with_exact_meta(file_meta);

    // 5. pixel data presence and attributes
    let pixel_elem = match (raw_pixels, obj.get(tags::PIXEL_DATA)) {
        (Some(_), _) => None,
        (None, Some(e)) => Some(e),
        (None, None) => {
            for (tag, name) in [
                (tags::FLOAT_PIXEL_DATA, "Float Pixel Data (7FE0,0008)"),
                (
                    tags::DOUBLE_FLOAT_PIXEL_DATA,
                    "Double Float Pixel Data (7FE0,0009)",
                ),
            ] {
                if obj.get(tag).is_some() {
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
        * u64::from(px.bits_allocated / 8).max(1);
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
    let mut meta = meta::instance_meta(&obj, &ts_uid, &px, photometric)?;
    // Modality is echoed in every finding: only a defined term is kept (a Code String can still spell a
    // name: "DOE"), so free text never leaves here.
    meta.modality = meta
        .modality
        .filter(|m| MODALITY_DEFINED_TERMS.contains(&m.as_str()));
    // The identifying UIDs are echoed in every response and log line: the instance is named by what the
    // walk took from the same elements (valid values as they are, malformed ones as their stand-in).
    for (slot, taken) in [
        (&mut meta.sop_instance_uid, &ids.sop),
        (&mut meta.study_instance_uid, &ids.study),
        (&mut meta.series_instance_uid, &ids.series),
    ] {
        if let Some(uid) = taken {
            slot.clone_from(uid);
        } else if !slot.is_empty() {
            // read by dicom-rs but not seen by the walk: never echo what was not checked
            *slot = uid::identity(slot.as_bytes(), "UID attribute")
                .map(|id| id.uid)
                .unwrap_or_default();
        }
    }

    // 7. the codestream headers must agree with the DICOM header before any codec runs (cheap: only
    // the fragments' headers are read, so it belongs to the header phase)
    if let (Some(family), Some(Value::PixelSequence(seq))) =
        (codestream_family(&ts_uid), pixel_elem.map(|e| e.value()))
    {
        codestream::check_fragments(seq.fragments(), family, px.rows, px.cols, px.samples)?;
    }

    Ok(InstanceHeader {
        obj,
        walked_buf,
        base,
        raw_pixels,
        px,
        ts,
        ts_uid,
        encapsulated,
        color,
        meta,
        decoded_bytes,
        inflate_hold,
        ids: Ids::default(),
    })
}
