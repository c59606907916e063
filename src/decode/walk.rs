//! Iterative structural walk of the raw bytes, run over the whole data set before `dicom-rs` sees it.
//!
//! Why: `dicom-rs` 0.10 trusts the file. It allocates *and zero-fills* a buffer of each declared value
//! length before reading it (a 448-byte file declaring 4 GiB costs 4 GB), and it builds nested
//! sequences by recursion (2,000 nested undefined-length sequences — an 80 KB file — overflow a 2 MiB
//! blocking-pool stack and abort the whole process). This walk follows the same structure `dicom-rs`
//! will follow, with an explicit stack instead of recursion, and before anything is allocated it checks
//!
//! - every declared length against the bytes actually left in its *enclosing container* (the defined
//!   length item or sequence around it, else the data set);
//! - the nesting depth of sequences against [`super::Limits::max_sequence_depth`].
//!
//! Everything `dicom-rs` will read is then known to be in bounds and shallow, so handing it the checked
//! bytes is safe. The walk also finds where the data set really ends (trailing zero padding that some
//! archives write is not part of it), reads the top-level identifying UIDs so that even a data set
//! `dicom-rs` cannot parse is rejected under its UIDs, and notes every UN element of undefined length
//! in an explicit VR data set: its content is implicit VR little endian (PS3.5 6.2.2) whereas
//! `dicom-rs` would read it as explicit VR, so such elements are rewritten to their defined length and
//! reach `dicom-rs` as opaque bytes (nothing downstream needs their content).
//!
//! The walk mirrors `dicom-rs`'s reading rules (`DataSetReader`): in explicit VR any element of
//! undefined length other than Pixel Data and UN is read as a sequence in the data set's encoding; in
//! implicit VR the VR of a defined-length element comes from the standard dictionary (SQ means a
//! sequence). Anything the walk does not recognise is rejected rather than guessed at.

use dicom::core::dictionary::{DataDictionary, DataDictionaryEntry};
use dicom::core::{Tag, VR};
use dicom::dictionary_std::StandardDataDictionary;

use super::DecodeError;

const UNDEFINED: u32 = 0xFFFF_FFFF;
const PIXEL_DATA: (u16, u16) = (0x7FE0, 0x0010);
const ITEM: u16 = 0xE000;
const ITEM_DELIMITER: u16 = 0xE00D;
const SEQUENCE_DELIMITER: u16 = 0xE0DD;

/// How the elements of a data set (or of a UN element's content) are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    ExplicitLe,
    ExplicitBe,
    ImplicitLe,
}

impl Encoding {
    fn big_endian(self) -> bool {
        self == Encoding::ExplicitBe
    }
    fn explicit(self) -> bool {
        self != Encoding::ImplicitLe
    }
}

/// A top-level attribute value found by the walk: byte range in the walked buffer.
pub(crate) type ValueRange = Option<(usize, usize)>;

/// The identifying UIDs at the top level of the data set, as byte ranges (not yet validated).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TopUids {
    pub sop_instance: ValueRange,
    pub study_instance: ValueRange,
    pub series_instance: ValueRange,
}

/// What the walk learned about a data set.
#[derive(Debug)]
pub(crate) struct Walk {
    /// Where the data set ends: trailing zero padding and a trailing partial tag are not part of it.
    pub end: usize,
    /// UN elements of undefined length in an explicit VR data set: (header position, value length
    /// including the sequence delimiter). The header's length field must be rewritten to this length
    /// before `dicom-rs` parses the bytes.
    pub un_patches: Vec<(usize, u32)>,
    /// Pixel Data (7FE0,0010) of defined length at the top level: native pixel data, which the decoder
    /// takes straight from these bytes instead of letting dicom-rs copy it.
    pub pixel_data: Option<PixelValue>,
}

/// Where a top-level Pixel Data value of defined length lies in the walked buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PixelValue {
    /// Position of the element header.
    pub header: usize,
    /// Position of the value.
    pub value: usize,
    pub len: usize,
    /// The VR bytes (explicit VR only).
    pub vr: Option<[u8; 2]>,
}

impl Walk {
    /// Rewrites the UN elements of undefined length to their defined length (see the module docs).
    /// `buf` holds the walked bytes from position `base` on.
    pub(crate) fn apply_patches(&self, buf: &mut [u8], base: usize, enc: Encoding) {
        for &(header, len) in &self.un_patches {
            let Some(header) = header.checked_sub(base) else {
                continue;
            };
            // explicit VR header: tag (4) 'UN' (2) reserved (2) length (4)
            if let Some(field) = buf.get_mut(header + 4..header + 12) {
                field[0..2].copy_from_slice(b"UN");
                field[2..4].copy_from_slice(&[0, 0]);
                let bytes = if enc.big_endian() {
                    len.to_be_bytes()
                } else {
                    len.to_le_bytes()
                };
                field[4..8].copy_from_slice(&bytes);
            }
        }
    }
}

fn u16_at(b: &[u8], pos: usize, be: bool) -> Option<u16> {
    let s = b.get(pos..pos.checked_add(2)?)?;
    let a = [s[0], s[1]];
    Some(if be {
        u16::from_be_bytes(a)
    } else {
        u16::from_le_bytes(a)
    })
}

fn u32_at(b: &[u8], pos: usize, be: bool) -> Option<u32> {
    let s = b.get(pos..pos.checked_add(4)?)?;
    let a = [s[0], s[1], s[2], s[3]];
    Some(if be {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    })
}

/// VRs with a 2-byte length field in explicit VR (PS3.5 7.1.2); everything else, including unknown VR
/// bytes (which `dicom-rs` reads as UN), has 2 reserved bytes and a 4-byte length.
fn short_length_vr(vr: &[u8]) -> bool {
    matches!(
        vr,
        b"AE"
            | b"AS"
            | b"AT"
            | b"CS"
            | b"DA"
            | b"DS"
            | b"DT"
            | b"FL"
            | b"FD"
            | b"IS"
            | b"LO"
            | b"LT"
            | b"PN"
            | b"SH"
            | b"SL"
            | b"SS"
            | b"ST"
            | b"TM"
            | b"UI"
            | b"UL"
            | b"US"
    )
}

/// Whether `dicom-rs` reads a defined-length element of an implicit VR data set as a sequence: its
/// implicit VR decoder takes the VR from the standard dictionary (relaxed), Pixel Data and Overlay
/// Data being OW.
fn implicit_is_sequence(group: u16, elem: u16) -> bool {
    implicit_vr(group, elem) == VR::SQ
}

/// The VR `dicom-rs`'s implicit VR decoder reads a defined-length element as (see [`implicit_is_sequence`]);
/// UN for a tag the dictionary does not know.
fn implicit_vr(group: u16, elem: u16) -> VR {
    if (group, elem) == PIXEL_DATA || (group >> 8 == 0x60 && elem == 0x3000) {
        return VR::OW;
    }
    StandardDataDictionary
        .by_tag(Tag(group, elem))
        .map_or(VR::UN, |e| e.vr().relaxed())
}

/// The size of one value of a binary VR, for the VRs `dicom-rs` reads value by value.
fn value_size(vr: VR) -> Option<u32> {
    match vr {
        VR::US | VR::SS | VR::OW => Some(2),
        VR::AT | VR::FL | VR::OF | VR::SL | VR::UL | VR::OL => Some(4),
        VR::FD | VR::OD | VR::SV | VR::UV | VR::OV => Some(8),
        _ => None,
    }
}

/// Describes where in the input an offset lies, for messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    /// Added to walk positions to give offsets in the file (0 for an inflated data set).
    pub base: usize,
    /// "file" or "inflated data set".
    pub what: &'static str,
}

impl Origin {
    fn at(&self, pos: usize) -> String {
        format!("at byte {} of the {}", self.base + pos, self.what)
    }
}

fn malformed(detail: String) -> DecodeError {
    DecodeError::Malformed { detail }
}

fn too_long(origin: Origin, pos: usize, tag: (u16, u16), len: u32, rem: usize) -> DecodeError {
    malformed(format!(
        "element ({:04X},{:04X}) {} declares a value length of {len} bytes but only {rem} bytes remain in its enclosing item, sequence or data set",
        tag.0,
        tag.1,
        origin.at(pos),
    ))
}

/// Walks the file meta information group as `dicom-rs` reads it (`FileMetaTable::from_reader`):
/// `DICM`, then (0002,0000) UL, then elements until the group length is consumed. Every length is
/// checked against the bytes present. Returns the position where the data set starts.
pub(crate) fn walk_meta(body: &[u8], origin: Origin) -> Result<usize, DecodeError> {
    const PREFIX: &str = "file meta information group (0002,xxxx)";
    // (0002,0000) UL, 2-byte length 4, value
    let (Some(group), Some(elem), Some(vr), Some(len)) = (
        u16_at(body, 4, false),
        u16_at(body, 6, false),
        body.get(8..10),
        u16_at(body, 10, false),
    ) else {
        return Err(malformed(format!(
            "{PREFIX}: truncated before its first element"
        )));
    };
    if (group, elem) != (0x0002, 0x0000) || !short_length_vr(vr) || len != 4 {
        return Err(malformed(format!(
            "{PREFIX}: must start with FileMetaInformationGroupLength (0002,0000) of VR UL and length 4"
        )));
    }
    let Some(group_length) = u32_at(body, 12, false) else {
        return Err(malformed(format!("{PREFIX}: truncated in (0002,0000)")));
    };
    let mut pos = 16usize;
    let mut total: u32 = 0;
    while total < group_length {
        let (Some(group), Some(elem)) = (u16_at(body, pos, false), u16_at(body, pos + 2, false))
        else {
            return Err(malformed(format!(
                "{PREFIX}: truncated {} (the group length (0002,0000) says {group_length} bytes)",
                origin.at(pos)
            )));
        };
        let (len, hdr) = if group == 0xFFFE {
            (u32_at(body, pos + 4, false), 8usize)
        } else {
            match body.get(pos + 4..pos + 6) {
                Some(vr) if short_length_vr(vr) => {
                    (u16_at(body, pos + 6, false).map(u32::from), 8usize)
                }
                Some(_) => (u32_at(body, pos + 8, false), 12usize),
                None => (None, 8),
            }
        };
        let Some(len) = len else {
            return Err(malformed(format!(
                "{PREFIX}: element ({group:04X},{elem:04X}) header truncated {}",
                origin.at(pos)
            )));
        };
        if len == UNDEFINED {
            return Err(malformed(format!(
                "{PREFIX}: element ({group:04X},{elem:04X}) has an undefined length"
            )));
        }
        let rem = body.len().saturating_sub(pos + hdr);
        if len as usize > rem {
            return Err(too_long(origin, pos, (group, elem), len, rem));
        }
        pos += hdr + len as usize;
        total = total.saturating_add(hdr as u32).saturating_add(len);
    }
    Ok(pos)
}

/// One open container on the walk's explicit stack.
#[derive(Debug, Clone, Copy)]
enum Frame {
    Sequence {
        /// End position for a defined length.
        end: Option<usize>,
        /// Limit of the enclosing containers (for an undefined length).
        limit: usize,
        enc: Encoding,
        pixel: bool,
        /// For an explicit VR UN of undefined length: (header position, value start).
        un: Option<(usize, usize)>,
        tag: (u16, u16),
    },
    Item {
        end: Option<usize>,
        limit: usize,
        enc: Encoding,
    },
}

/// Walks the data set in `buf[start..]` (see the module docs). On error, `uids` still holds the
/// top-level UIDs met before the error.
pub(crate) fn walk_dataset(
    buf: &[u8],
    start: usize,
    enc0: Encoding,
    max_depth: u32,
    max_elements: u32,
    origin: Origin,
    uids: &mut TopUids,
) -> Result<Walk, DecodeError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut depth: u32 = 0; // number of Sequence frames on the stack
    let mut un_open: u32 = 0; // UN-undefined sequences on the stack
    let mut un_patches = Vec::new();
    let mut pixel_data = None;
    let mut pos = start;
    let total = buf.len();
    // everything from here on is zero: trailing padding if the top level reaches it
    let zero_tail = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);

    // every turn of the loop reads one header or closes one container, and containers are opened by
    // headers: at most two turns per element, item or delimiter
    let mut turns: u64 = 0;
    let max_turns = 2 * u64::from(max_elements);
    loop {
        turns += 1;
        if turns > max_turns {
            return Err(malformed(format!(
                "more than {max_elements} elements, items and delimiters in the data set (the limit, \
                 limits.max_elements) {}",
                origin.at(pos)
            )));
        }
        let top = stack.last().copied();
        match top {
            Some(Frame::Sequence {
                end,
                limit,
                enc,
                pixel,
                un,
                tag,
            }) => {
                if let Some(end) = end {
                    if pos == end {
                        stack.pop();
                        depth -= 1;
                        continue;
                    }
                }
                let lim = end.unwrap_or(limit);
                if pos >= lim && end.is_none() && lim == total && pixel && stack.len() == 1 {
                    // encapsulated Pixel Data at the end of the data set without its sequence
                    // delimiter: dicom-rs (like pydicom) takes the end of input as its end
                    return Ok(Walk {
                        end: pos,
                        un_patches,
                        pixel_data,
                    });
                }
                let be = enc.big_endian();
                let (Some(g), Some(e), Some(len)) = (
                    u16_at(buf, pos, be),
                    u16_at(buf, pos + 2, be),
                    u32_at(buf, pos + 4, be),
                ) else {
                    return Err(malformed(format!(
                        "sequence ({:04X},{:04X}) is truncated {}: an item or sequence delimiter was expected",
                        tag.0,
                        tag.1,
                        origin.at(pos)
                    )));
                };
                if pos + 8 > lim {
                    return Err(malformed(format!(
                        "item header of sequence ({:04X},{:04X}) {} runs past the end of its enclosing container",
                        tag.0,
                        tag.1,
                        origin.at(pos)
                    )));
                }
                match (g, e) {
                    (0xFFFE, ITEM) => {
                        let rem = lim - (pos + 8);
                        if pixel {
                            if len == UNDEFINED {
                                return Err(malformed(format!(
                                    "Pixel Data (7FE0,0010) fragment {} has an undefined length",
                                    origin.at(pos)
                                )));
                            }
                            if len as usize > rem {
                                return Err(too_long(origin, pos, (g, e), len, rem));
                            }
                            pos += 8 + len as usize;
                        } else if len == UNDEFINED {
                            stack.push(Frame::Item {
                                end: None,
                                limit: lim,
                                enc,
                            });
                            pos += 8;
                        } else {
                            if len as usize > rem {
                                return Err(too_long(origin, pos, (g, e), len, rem));
                            }
                            stack.push(Frame::Item {
                                end: Some(pos + 8 + len as usize),
                                limit: lim,
                                enc,
                            });
                            pos += 8;
                        }
                    }
                    (0xFFFE, SEQUENCE_DELIMITER) if end.is_none() => {
                        pos += 8;
                        stack.pop();
                        depth -= 1;
                        if let Some((header, value_start)) = un {
                            un_open -= 1;
                            if un_open == 0 {
                                let len = u32::try_from(pos - value_start)
                                    .ok()
                                    .filter(|&l| l != UNDEFINED)
                                    .ok_or_else(|| {
                                        malformed(format!(
                                            "UN element ({:04X},{:04X}) {} is too long",
                                            tag.0,
                                            tag.1,
                                            origin.at(header)
                                        ))
                                    })?;
                                un_patches.push((header, len));
                            }
                        }
                    }
                    _ => {
                        return Err(malformed(format!(
                            "unexpected ({g:04X},{e:04X}) {} in sequence ({:04X},{:04X}): an item{} was expected",
                            origin.at(pos),
                            tag.0,
                            tag.1,
                            if end.is_none() { " or sequence delimiter" } else { "" }
                        )));
                    }
                }
            }
            Some(Frame::Item { end, .. }) if end == Some(pos) => {
                stack.pop();
            }
            _ => {
                // element context: the data set itself or an item's data set
                let (enc, lim, item_end) = match top {
                    Some(Frame::Item { end, limit, enc }) => (enc, end.unwrap_or(limit), Some(end)),
                    _ => (enc0, total, None),
                };
                if item_end.is_none() {
                    // top level: where does the data set end?
                    if total - pos < 4 {
                        // end of input (a partial tag is ignored, as dicom-rs does)
                        return Ok(Walk {
                            end: pos,
                            un_patches,
                            pixel_data,
                        });
                    }
                    if pos >= zero_tail {
                        // trailing zero padding after the last element (pydicom and dcmtk ignore it)
                        return Ok(Walk {
                            end: pos,
                            un_patches,
                            pixel_data,
                        });
                    }
                } else if pos >= lim {
                    return Err(malformed(format!(
                        "item {} is not terminated: its item delimiter is missing",
                        origin.at(pos)
                    )));
                }
                let be = enc.big_endian();
                let (Some(g), Some(e)) = (u16_at(buf, pos, be), u16_at(buf, pos + 2, be)) else {
                    return Err(malformed(format!(
                        "element header truncated {}",
                        origin.at(pos)
                    )));
                };
                // header: (length, header size, VR bytes if explicit)
                let (len, hdr, vr): (Option<u32>, usize, Option<[u8; 2]>) =
                    if g == 0xFFFE || !enc.explicit() {
                        (u32_at(buf, pos + 4, be), 8, None)
                    } else {
                        match buf.get(pos + 4..pos + 6) {
                            Some(v) if short_length_vr(v) => (
                                u16_at(buf, pos + 6, be).map(u32::from),
                                8,
                                Some([v[0], v[1]]),
                            ),
                            Some(v) => (u32_at(buf, pos + 8, be), 12, Some([v[0], v[1]])),
                            None => (None, 8, None),
                        }
                    };
                let Some(len) = len else {
                    return Err(malformed(format!(
                        "element ({g:04X},{e:04X}) header truncated {}",
                        origin.at(pos)
                    )));
                };
                if pos + hdr > lim {
                    return Err(malformed(format!(
                        "element ({g:04X},{e:04X}) header {} runs past the end of its enclosing item",
                        origin.at(pos)
                    )));
                }
                if g == 0xFFFE {
                    match (e, top) {
                        (ITEM_DELIMITER, Some(Frame::Item { end: None, .. })) => {
                            stack.pop();
                            pos += 8;
                            continue;
                        }
                        (ITEM_DELIMITER, None) if len == 0 => {
                            // a stray item delimiter at the top level: dicom-rs skips it
                            pos += 8;
                            continue;
                        }
                        _ => {
                            return Err(malformed(format!(
                                "unexpected ({g:04X},{e:04X}) {} where a data element was expected",
                                origin.at(pos)
                            )))
                        }
                    }
                }
                let tag = (g, e);
                let is_sq = match vr {
                    Some(v) => &v == b"SQ",
                    None => implicit_is_sequence(g, e),
                };
                let rem = lim - (pos + hdr);
                if len == UNDEFINED {
                    if depth >= max_depth {
                        return Err(malformed(format!(
                            "sequences nested deeper than {max_depth} levels (the limit, \
                             limits.max_sequence_depth) at element ({g:04X},{e:04X}) {}",
                            origin.at(pos)
                        )));
                    }
                    let pixel = tag == PIXEL_DATA && !is_sq;
                    // explicit VR UN (or unknown VR bytes, which dicom-rs reads as UN)
                    let is_un = enc.explicit()
                        && !is_sq
                        && !pixel
                        && vr.is_some_and(|v| &v == b"UN" || !known_vr(&v));
                    let (seq_enc, un) = if is_un {
                        un_open += 1;
                        (Encoding::ImplicitLe, Some((pos, pos + hdr)))
                    } else if un_open > 0 {
                        // inside a UN's content everything is implicit VR LE
                        (Encoding::ImplicitLe, None)
                    } else {
                        (enc, None)
                    };
                    stack.push(Frame::Sequence {
                        end: None,
                        limit: lim,
                        enc: seq_enc,
                        pixel,
                        un,
                        tag,
                    });
                    depth += 1;
                    pos += hdr;
                    continue;
                }
                if len as usize > rem {
                    return Err(too_long(origin, pos, tag, len, rem));
                }
                // dicom-rs reads whole values of a binary VR and skips nothing after them: a length that is
                // not a multiple of the value size would leave it reading the next header from inside
                // this value, where any "length" may stand.
                if !is_sq {
                    let read_as = match vr {
                        Some(v) => VR::from_binary(v).unwrap_or(VR::UN),
                        None => implicit_vr(g, e),
                    };
                    if let Some(size) = value_size(read_as) {
                        if len % size != 0 {
                            return Err(malformed(format!(
                                "element ({g:04X},{e:04X}) {} has a value length of {len} bytes, not a \
                                 multiple of {size} as its VR {} requires",
                                origin.at(pos),
                                read_as.to_string()
                            )));
                        }
                    }
                }
                if is_sq {
                    if depth >= max_depth {
                        return Err(malformed(format!(
                            "sequences nested deeper than {max_depth} levels (the limit, \
                             limits.max_sequence_depth) at element ({g:04X},{e:04X}) {}",
                            origin.at(pos)
                        )));
                    }
                    stack.push(Frame::Sequence {
                        end: Some(pos + hdr + len as usize),
                        limit: lim,
                        enc,
                        pixel: false,
                        un: None,
                        tag,
                    });
                    depth += 1;
                    pos += hdr;
                    continue;
                }
                if top.is_none() {
                    let range = Some((pos + hdr, len as usize));
                    if tag == PIXEL_DATA {
                        pixel_data = Some(PixelValue {
                            header: pos,
                            value: pos + hdr,
                            len: len as usize,
                            vr,
                        });
                    }
                    match tag {
                        (0x0008, 0x0018) => uids.sop_instance = range,
                        (0x0020, 0x000D) => uids.study_instance = range,
                        (0x0020, 0x000E) => uids.series_instance = range,
                        _ => {}
                    }
                }
                pos += hdr + len as usize;
            }
        }
        // keep the stack bounded even for inputs that alternate items without sequences
        debug_assert!(stack.len() <= 2 * (max_depth as usize) + 2);
    }
}

/// Whether two VR bytes name a VR `dicom-rs` knows.
fn known_vr(v: &[u8; 2]) -> bool {
    VR::from_binary(*v).is_some()
}
