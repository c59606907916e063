//! Codestream headers read before a codec runs.
//!
//! Why: the JPEG, JPEG-LS and JPEG 2000 codecs size their output from the codestream's own header, not
//! from the DICOM Rows / Columns. A JPEG that says 65535 x 65535 inside a 64 x 64 DICOM header makes the
//! codec allocate and fill 4 GB before anything notices. The decoded-size limit is checked against the
//! DICOM header, so here every frame's codestream header (each fragment that starts a codestream) is
//! read and must agree with Rows, Columns and Samples per Pixel; then the codec's output is bounded by
//! the same limit.

use super::DecodeError;

/// Width, height and component count a codestream declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub width: u32,
    pub height: u32,
    pub components: u32,
}

/// Which codestream family a transfer syntax carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// JPEG (ISO 10918, incl. lossless) and JPEG-LS (SOF55).
    Jpeg,
    /// JPEG 2000 (raw codestream or JP2 file format).
    J2k,
}

/// How many bytes of a frame's fragments are searched for its header.
const HEADER_WINDOW: usize = 1 << 20;

/// JPEG / JPEG-LS: the frame header (SOFn, SOF55) of a codestream starting at `b` (SOI). `Ok(None)`
/// when `b` ends before the frame header.
fn jpeg_dims(b: &[u8]) -> Result<Option<Dims>, String> {
    let mut pos = 2usize; // after SOI
    loop {
        let (Some(&ff), Some(&m)) = (b.get(pos), b.get(pos + 1)) else {
            return Ok(None);
        };
        if ff != 0xFF {
            return Err(format!("no marker at byte {pos} of the JPEG header"));
        }
        match m {
            0xFF => {
                pos += 1; // fill byte
                continue;
            }
            0x01 | 0xD0..=0xD7 => {
                pos += 2;
                continue;
            }
            0xD9 | 0xDA => {
                return Err("JPEG codestream has no frame header (SOF) before its scan".to_string())
            }
            _ => {}
        }
        let Some(len) = b
            .get(pos + 2..pos + 4)
            .map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])))
        else {
            return Ok(None);
        };
        if len < 2 {
            return Err(format!("JPEG marker segment length {len} at byte {pos}"));
        }
        let is_sof = matches!(m, 0xC0..=0xCF if m != 0xC4 && m != 0xC8 && m != 0xCC) || m == 0xF7;
        if is_sof {
            // Lf(2) P(1) Y(2) X(2) Nf(1)
            let Some(p) = b.get(pos + 4..pos + 10) else {
                return Ok(None);
            };
            return Ok(Some(Dims {
                height: u32::from(u16::from_be_bytes([p[1], p[2]])),
                width: u32::from(u16::from_be_bytes([p[3], p[4]])),
                components: u32::from(p[5]),
            }));
        }
        pos += 2 + len;
    }
}

fn be32(b: &[u8], pos: usize) -> Option<u32> {
    b.get(pos..pos + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// JPEG 2000 codestream starting at `b` (SOC, then SIZ).
fn j2k_codestream_dims(b: &[u8]) -> Result<Option<Dims>, String> {
    if b.get(0..4) != Some(&[0xFF, 0x4F, 0xFF, 0x51][..]) {
        if b.len() < 4 {
            return Ok(None);
        }
        return Err("JPEG 2000 codestream does not start with SOC followed by SIZ".to_string());
    }
    // SOC(2) SIZ(2) Lsiz(2) Rsiz(2) Xsiz Ysiz XOsiz YOsiz XTsiz YTsiz XTOsiz YTOsiz (4 each) Csiz(2)
    let (Some(x), Some(y), Some(xo), Some(yo), Some(c)) = (
        be32(b, 8),
        be32(b, 12),
        be32(b, 16),
        be32(b, 20),
        b.get(40..42).map(|s| u16::from_be_bytes([s[0], s[1]])),
    ) else {
        return Ok(None);
    };
    let (Some(width), Some(height)) = (x.checked_sub(xo), y.checked_sub(yo)) else {
        return Err("JPEG 2000 SIZ image offset lies beyond the image size".to_string());
    };
    Ok(Some(Dims {
        width,
        height,
        components: u32::from(c),
    }))
}

const JP2_SIGNATURE: [u8; 12] = [0, 0, 0, 12, b'j', b'P', b' ', b' ', 0x0D, 0x0A, 0x87, 0x0A];

/// JPEG 2000 in the JP2 file format: the contiguous codestream box (jp2c) holds the codestream.
fn jp2_dims(b: &[u8]) -> Result<Option<Dims>, String> {
    let mut pos = 0usize;
    loop {
        let (Some(lbox), Some(tbox)) = (be32(b, pos), b.get(pos + 4..pos + 8)) else {
            return Ok(None);
        };
        let (hdr, len) = match lbox {
            0 => (8usize, b.len().saturating_sub(pos)),
            1 => {
                let Some(x) = b.get(pos + 8..pos + 16) else {
                    return Ok(None);
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(x);
                (
                    16,
                    usize::try_from(u64::from_be_bytes(a)).unwrap_or(usize::MAX),
                )
            }
            n => (8, n as usize),
        };
        if len < hdr {
            return Err(format!("JP2 box length {len} at byte {pos}"));
        }
        if tbox == b"jp2c" {
            return j2k_codestream_dims(b.get(pos + hdr..).unwrap_or(&[]));
        }
        pos = pos.saturating_add(len);
    }
}

/// Whether a fragment starts a codestream of `family`.
fn starts_codestream(frag: &[u8], family: Family) -> bool {
    match family {
        Family::Jpeg => frag.starts_with(&[0xFF, 0xD8]),
        Family::J2k => {
            frag.starts_with(&[0xFF, 0x4F, 0xFF, 0x51]) || frag.starts_with(&JP2_SIGNATURE)
        }
    }
}

fn dims_of(b: &[u8], family: Family) -> Result<Option<Dims>, String> {
    match family {
        Family::Jpeg => jpeg_dims(b),
        Family::J2k if b.starts_with(&JP2_SIGNATURE) => jp2_dims(b),
        Family::J2k => j2k_codestream_dims(b),
    }
}

/// Checks every codestream header found at the start of a fragment against the DICOM header; the
/// first fragment must start a codestream. The header may run into the following fragments (up to
/// 1 MiB are searched).
pub(crate) fn check_fragments(
    fragments: &[Vec<u8>],
    family: Family,
    rows: u32,
    cols: u32,
    samples: u16,
) -> Result<(), DecodeError> {
    let name = match family {
        Family::Jpeg => "JPEG",
        Family::J2k => "JPEG 2000",
    };
    let malformed = |detail: String| DecodeError::Malformed { detail };
    match fragments.first() {
        Some(f) if starts_codestream(f, family) => {}
        Some(_) => {
            return Err(malformed(format!(
                "the first Pixel Data (7FE0,0010) fragment does not start a {name} codestream"
            )))
        }
        None => {
            return Err(malformed(
                "encapsulated Pixel Data (7FE0,0010) has no fragments".to_string(),
            ))
        }
    }
    for (i, frag) in fragments.iter().enumerate() {
        if !starts_codestream(frag, family) {
            continue;
        }
        let mut found = dims_of(frag, family);
        if matches!(found, Ok(None)) {
            // the header continues in the next fragments: search a bounded window of them
            let mut window: Vec<u8> = Vec::new();
            for f in &fragments[i..] {
                if window.len() >= HEADER_WINDOW {
                    break;
                }
                let take = (HEADER_WINDOW - window.len()).min(f.len());
                window.extend_from_slice(&f[..take]);
            }
            found = dims_of(&window, family);
        }
        let dims = match found {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(malformed(format!(
                    "the {name} codestream in Pixel Data (7FE0,0010) fragment {i} ends before its header"
                )))
            }
            Err(e) => {
                return Err(malformed(format!(
                    "Pixel Data (7FE0,0010) fragment {i}: {e}"
                )))
            }
        };
        if dims.width != cols || dims.height != rows || dims.components != u32::from(samples) {
            return Err(malformed(format!(
                "the {name} codestream in Pixel Data (7FE0,0010) fragment {i} declares {} columns x {} rows x {} \
                 components, but Columns (0028,0011) x Rows (0028,0010) x SamplesPerPixel (0028,0002) are \
                 {cols} x {rows} x {samples}; the codec is not run",
                dims.width, dims.height, dims.components
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal JPEG header: SOI, APP0, SOFn with the given size.
    pub(crate) fn jpeg_header(sof: u8, width: u16, height: u16, nf: u8) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, b'J', b'F'];
        v.extend_from_slice(&[0xFF, sof, 0x00, 8 + 3 * nf, 8]);
        v.extend_from_slice(&height.to_be_bytes());
        v.extend_from_slice(&width.to_be_bytes());
        v.push(nf);
        for c in 0..nf {
            v.extend_from_slice(&[c + 1, 0x11, 0]);
        }
        v.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x02, 0xFF, 0xD9]);
        v
    }

    #[test]
    fn jpeg_and_jpeg_ls_headers() {
        for sof in [0xC0u8, 0xC1, 0xC3, 0xF7] {
            let h = jpeg_header(sof, 640, 480, 3);
            assert_eq!(
                jpeg_dims(&h).expect("parses"),
                Some(Dims {
                    width: 640,
                    height: 480,
                    components: 3
                })
            );
            // split across fragments
            assert!(check_fragments(
                &[h[..7].to_vec(), h[7..].to_vec()],
                Family::Jpeg,
                480,
                640,
                3
            )
            .is_ok());
        }
        let bomb = jpeg_header(0xC0, 65535, 65535, 1);
        let e = check_fragments(&[bomb], Family::Jpeg, 64, 64, 1).expect_err("mismatch");
        assert!(e.to_string().contains("65535 columns x 65535 rows"), "{e}");
        assert!(jpeg_dims(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2]).is_err());
        assert_eq!(jpeg_dims(&[0xFF, 0xD8, 0xFF]).expect("short"), None);
    }

    pub(crate) fn j2k_header(width: u32, height: u32, comps: u16) -> Vec<u8> {
        let mut v = vec![0xFF, 0x4F, 0xFF, 0x51, 0x00, 41, 0x00, 0x00];
        for x in [width, height, 0, 0, width, height, 0, 0] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(&comps.to_be_bytes());
        v
    }

    #[test]
    fn j2k_and_jp2_headers() {
        let cs = j2k_header(512, 256, 1);
        let want = Some(Dims {
            width: 512,
            height: 256,
            components: 1,
        });
        assert_eq!(dims_of(&cs, Family::J2k).expect("parses"), want);
        let mut jp2 = JP2_SIGNATURE.to_vec();
        jp2.extend_from_slice(&[0, 0, 0, 12, b'f', b't', b'y', b'p', 0, 0, 0, 0]);
        jp2.extend_from_slice(&(8 + cs.len() as u32).to_be_bytes());
        jp2.extend_from_slice(b"jp2c");
        jp2.extend_from_slice(&cs);
        assert_eq!(dims_of(&jp2, Family::J2k).expect("parses"), want);
        assert!(check_fragments(&[jp2.clone()], Family::J2k, 256, 512, 1).is_ok());
        let e = check_fragments(&[jp2], Family::J2k, 64, 64, 1).expect_err("mismatch");
        assert!(e.to_string().contains("JPEG 2000"), "{e}");
        let e = check_fragments(&[vec![1, 2, 3, 4]], Family::J2k, 64, 64, 1).expect_err("junk");
        assert!(e.to_string().contains("does not start"), "{e}");
    }
}
