//! Cheap structural pre-scan of the raw bytes before `dicom-rs` parses them.
//!
//! `dicom-rs` 0.10 allocates *and zero-fills* a buffer of the declared value length
//! before reading an element's value, so a 200-byte input declaring a 4 GiB element costs
//! seconds of CPU and gigabytes of memory before failing. This scan walks the element
//! headers and rejects any defined value length larger than the bytes that remain. It is
//! conservative: whenever it cannot follow the structure (UN of undefined length,
//! deflated data set) it stops checking and lets the real parser decide.

use super::DecodeError;

const UNDEFINED: u32 = 0xFFFF_FFFF;

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

/// VRs with a 2-byte length field; everything else, including unknown VR bytes (which
/// dicom-rs reads as UN), has 2 reserved bytes and a 4-byte length.
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

/// Scans elements from `pos`. With `meta_only`, stops at the first element outside group
/// 0002 and returns its position. Returns the position where scanning stopped.
pub(crate) fn check_lengths(
    b: &[u8],
    mut pos: usize,
    explicit: bool,
    be: bool,
    meta_only: bool,
) -> Result<usize, DecodeError> {
    let mut in_fragments = false;
    while pos.saturating_add(8) <= b.len() {
        let (Some(group), Some(elem)) = (u16_at(b, pos, be), u16_at(b, pos + 2, be)) else {
            break;
        };
        if meta_only && group != 0x0002 {
            return Ok(pos);
        }
        let remaining_after = |hdr: usize| b.len().saturating_sub(pos + hdr);
        if group == 0xFFFE {
            let Some(len) = u32_at(b, pos + 4, be) else {
                break;
            };
            pos += 8;
            match elem {
                0xE000 if in_fragments && len != UNDEFINED => {
                    let rem = b.len().saturating_sub(pos);
                    if len as usize > rem {
                        return Err(too_long(group, elem, len, rem));
                    }
                    pos += len as usize;
                }
                0xE0DD => in_fragments = false,
                _ => {} // item start inside a sequence: descend into its elements
            }
            continue;
        }
        let (len, hdr, vr) = if explicit {
            let Some(vr) = b.get(pos + 4..pos + 6) else {
                break;
            };
            if short_length_vr(vr) {
                let Some(len) = u16_at(b, pos + 6, be) else {
                    break;
                };
                (u32::from(len), 8usize, Some(vr))
            } else {
                let Some(len) = u32_at(b, pos + 8, be) else {
                    break;
                };
                (len, 12usize, Some(vr))
            }
        } else {
            let Some(len) = u32_at(b, pos + 4, be) else {
                break;
            };
            (len, 8usize, None)
        };
        if len == UNDEFINED {
            if (group, elem) == (0x7FE0, 0x0010) {
                in_fragments = true;
            } else if vr != Some(b"SQ".as_slice()) {
                // UN (or unknown VR) of undefined length: implicit VR content follows,
                // which this scan does not track; leave the rest to the parser
                break;
            }
            pos += hdr;
            continue;
        }
        let rem = remaining_after(hdr);
        if len as usize > rem {
            return Err(too_long(group, elem, len, rem));
        }
        pos += hdr;
        let item_tag: [u8; 4] = if be {
            [0xFF, 0xFE, 0xE0, 0x00]
        } else {
            [0xFE, 0xFF, 0x00, 0xE0]
        };
        let is_sequence = vr == Some(b"SQ".as_slice())
            || (vr.is_none() && len >= 8 && b.get(pos..pos + 4) == Some(&item_tag[..]));
        if !is_sequence {
            pos += len as usize;
        }
    }
    Ok(pos)
}

fn too_long(group: u16, elem: u16, len: u32, rem: usize) -> DecodeError {
    DecodeError::Malformed {
        detail: format!(
            "element ({group:04X},{elem:04X}) declares a value length of {len} bytes but only {rem} bytes remain"
        ),
    }
}
