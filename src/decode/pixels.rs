//! Conversion of native (uncompressed or codec output) sample bytes into f32 frames.

use super::{DecodeError, Frame};

/// Colour handling for three-sample data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Color {
    /// Monochrome or RGB: samples copied as they are.
    AsIs,
    /// YBR_FULL: convert to RGB.
    YbrFull,
    /// YBR_FULL_422 in native form (Y1 Y2 Cb Cr per pixel pair): expand, convert to RGB.
    YbrFull422,
}

/// How the sample bytes of a pixel data buffer are laid out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Layout {
    pub rows: u32,
    pub cols: u32,
    pub frames: u32,
    pub samples: u16,
    /// 1, 2 or 4.
    pub bytes_per_sample: usize,
    pub bits_stored: u16,
    pub signed: bool,
    pub big_endian: bool,
    /// Planar configuration 1 (R plane, G plane, B plane per frame).
    pub planar: bool,
    pub color: Color,
}

impl Layout {
    pub(crate) fn pixels_per_frame(&self) -> Result<usize, DecodeError> {
        (self.rows as usize)
            .checked_mul(self.cols as usize)
            .ok_or_else(|| overflow("rows x columns"))
    }

    /// Bytes one encoded frame occupies in the buffer.
    pub(crate) fn frame_bytes(&self) -> Result<usize, DecodeError> {
        let px = self.pixels_per_frame()?;
        let samples_stored = match self.color {
            // two samples per pixel on average: Y1 Y2 Cb Cr for two pixels
            Color::YbrFull422 => px.checked_mul(2),
            _ => px.checked_mul(self.samples as usize),
        }
        .ok_or_else(|| overflow("frame size"))?;
        samples_stored
            .checked_mul(self.bytes_per_sample)
            .ok_or_else(|| overflow("frame size"))
    }

    pub(crate) fn total_bytes(&self) -> Result<usize, DecodeError> {
        self.frame_bytes()?
            .checked_mul(self.frames as usize)
            .ok_or_else(|| overflow("pixel data size"))
    }
}

fn overflow(what: &str) -> DecodeError {
    DecodeError::UnsupportedPixelFormat {
        detail: format!("{what} overflows the address space"),
    }
}

/// Reads one stored sample at byte offset `off`, applying the Bits Stored mask and
/// sign extension (two's complement when Pixel Representation = 1), which is what
/// pydicom's `pixel_array` returns.
#[inline(always)]
fn sample(buf: &[u8], off: usize, l: &Layout, mask: u32) -> f32 {
    let raw: u32 = match (l.bytes_per_sample, l.big_endian) {
        (1, _) => buf.get(off).copied().map_or(0, u32::from),
        (2, false) => match buf.get(off..off + 2) {
            Some(&[a, b]) => u32::from(u16::from_le_bytes([a, b])),
            _ => 0,
        },
        (2, true) => match buf.get(off..off + 2) {
            Some(&[a, b]) => u32::from(u16::from_be_bytes([a, b])),
            _ => 0,
        },
        (_, false) => match buf.get(off..off + 4) {
            Some(&[a, b, c, d]) => u32::from_le_bytes([a, b, c, d]),
            _ => 0,
        },
        (_, true) => match buf.get(off..off + 4) {
            Some(&[a, b, c, d]) => u32::from_be_bytes([a, b, c, d]),
            _ => 0,
        },
    };
    let v = raw & mask;
    let bits = u32::from(l.bits_stored);
    if l.signed && bits > 0 && (v >> (bits - 1)) & 1 == 1 {
        // sign-extend from `bits`
        (i64::from(v) - (1i64 << bits)) as f32
    } else {
        v as f32
    }
}

/// Converts consecutive `N`-byte monochrome samples with `read`, applying the Bits Stored mask and sign
/// extension exactly as [`sample`] does; returns the frame's (min, max). Two straight passes (convert,
/// then min/max) so both vectorise: this is most of a CT slice's decode time.
#[inline(always)]
fn mono<const N: usize>(
    fb: &[u8],
    l: &Layout,
    mask: u32,
    read: impl Fn([u8; N]) -> u32,
    pixels: &mut Vec<f32>,
) -> (f32, f32) {
    let bits = u32::from(l.bits_stored).clamp(1, 32);
    let shift = 32 - bits;
    let start = pixels.len();
    let chunks = fb.chunks_exact(N).map(|chunk| {
        let mut c = [0u8; N];
        c.copy_from_slice(chunk);
        read(c) & mask
    });
    if l.signed {
        // Two's complement from `bits`: move the sign bit to bit 31, shift back arithmetically.
        pixels.extend(chunks.map(|v| ((v << shift) as i32 >> shift) as f32));
    } else {
        pixels.extend(chunks.map(|v| v as f32));
    }
    pixels[start..]
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (if v < lo { v } else { lo }, if v > hi { v } else { hi })
        })
}

/// YBR_FULL -> RGB exactly as pydicom 3 (`_convert_YBR_FULL_to_RGB`, 8-bit):
/// float32 matrix product, floor(x + 0.5), clip to [0, 255].
#[inline(always)]
fn ybr_to_rgb(y: f32, cb: f32, cr: f32) -> [f32; 3] {
    const G_CB: f32 = (-0.114f64 * 1.772 / 0.587) as f32;
    const G_CR: f32 = (-0.299f64 * 1.402 / 0.587) as f32;
    let cb = cb - 128.0;
    let cr = cr - 128.0;
    let r = y * 1.0 + cb * 0.0 + cr * 1.402f32;
    let g = y * 1.0 + cb * G_CB + cr * G_CR;
    let b = y * 1.0 + cb * 1.772f32 + cr * 0.0;
    [r, g, b].map(|v| (v + 0.5).floor().clamp(0.0, 255.0))
}

/// Converts `buf` (all frames, laid out per `l`) into one [`Frame`] per frame.
/// Exactly one `Vec<f32>` is allocated per frame; min/max are computed in the same pass.
pub(crate) fn to_frames(buf: &[u8], l: &Layout) -> Result<Vec<Frame>, DecodeError> {
    let frame_bytes = l.frame_bytes()?;
    let total = l.total_bytes()?;
    if buf.len() < total {
        return Err(DecodeError::Malformed {
            detail: format!(
                "Pixel Data (7FE0,0010) holds {} bytes, {} expected for {} frame(s) of {}x{}x{} at {} byte(s) per sample",
                buf.len(),
                total,
                l.frames,
                l.rows,
                l.cols,
                l.samples,
                l.bytes_per_sample
            ),
        });
    }
    let px = l.pixels_per_frame()?;
    let spp = l.samples as usize;
    let out_len = px.checked_mul(spp).ok_or_else(|| overflow("frame size"))?;
    let bps = l.bytes_per_sample;
    let mask: u32 = if l.bits_stored >= 32 {
        u32::MAX
    } else {
        (1u32 << l.bits_stored) - 1
    };

    let mut frames = Vec::with_capacity(l.frames as usize);
    for f in 0..l.frames as usize {
        let start = f * frame_bytes; // <= total, cannot overflow
        let fb = buf.get(start..start + frame_bytes).unwrap_or(&[]);
        let mut pixels: Vec<f32> = Vec::with_capacity(out_len);
        let mut min = f32::INFINITY;
        let mut max = f32::NEG_INFINITY;
        let mut push = |v: f32, pixels: &mut Vec<f32>| {
            min = min.min(v);
            max = max.max(v);
            pixels.push(v);
        };
        match (l.color, spp) {
            (Color::AsIs, 1) => {
                // The hot path (CT, MR, CR, DX): one monomorphic loop per sample width and byte order.
                let fb = fb.get(..px * bps).unwrap_or(fb);
                (min, max) = match (bps, l.big_endian) {
                    (1, _) => mono(fb, l, mask, |c: [u8; 1]| u32::from(c[0]), &mut pixels),
                    (2, false) => mono(
                        fb,
                        l,
                        mask,
                        |c: [u8; 2]| u32::from(u16::from_le_bytes(c)),
                        &mut pixels,
                    ),
                    (2, true) => mono(
                        fb,
                        l,
                        mask,
                        |c: [u8; 2]| u32::from(u16::from_be_bytes(c)),
                        &mut pixels,
                    ),
                    (_, false) => mono(fb, l, mask, u32::from_le_bytes, &mut pixels),
                    (_, true) => mono(fb, l, mask, u32::from_be_bytes, &mut pixels),
                };
            }
            (Color::AsIs, _) | (Color::YbrFull, _) => {
                for p in 0..px {
                    let mut s3 = [0f32; 3];
                    for (s, slot) in s3.iter_mut().enumerate().take(spp.min(3)) {
                        let off = if l.planar {
                            (s * px + p) * bps
                        } else {
                            (p * spp + s) * bps
                        };
                        *slot = sample(fb, off, l, mask);
                    }
                    let rgb = if l.color == Color::YbrFull {
                        ybr_to_rgb(s3[0], s3[1], s3[2])
                    } else {
                        s3
                    };
                    for v in rgb {
                        push(v, &mut pixels);
                    }
                }
            }
            (Color::YbrFull422, _) => {
                // Y1 Y2 Cb Cr -> (Y1 Cb Cr) (Y2 Cb Cr); columns are even (checked by caller)
                for pair in 0..px / 2 {
                    let o = pair * 4 * bps;
                    let y1 = sample(fb, o, l, mask);
                    let y2 = sample(fb, o + bps, l, mask);
                    let cb = sample(fb, o + 2 * bps, l, mask);
                    let cr = sample(fb, o + 3 * bps, l, mask);
                    for v in ybr_to_rgb(y1, cb, cr)
                        .into_iter()
                        .chain(ybr_to_rgb(y2, cb, cr))
                    {
                        push(v, &mut pixels);
                    }
                }
            }
        }
        if pixels.is_empty() {
            min = 0.0;
            max = 0.0;
        }
        frames.push(Frame { pixels, min, max });
    }
    Ok(frames)
}

/// Bit-packed (Bits Allocated 1) monochrome data: pixel i of the whole pixel data is bit
/// i % 8 (LSB first) of byte i / 8; frames need not start on a byte boundary. Values are
/// 0 / 1, as pydicom returns them.
pub(crate) fn to_frames_1bit(
    buf: &[u8],
    rows: u32,
    cols: u32,
    frames: u32,
) -> Result<Vec<Frame>, DecodeError> {
    let px = (rows as usize)
        .checked_mul(cols as usize)
        .ok_or_else(|| overflow("rows x columns"))?;
    let total_bits = px
        .checked_mul(frames as usize)
        .ok_or_else(|| overflow("pixel data size"))?;
    let needed = total_bits.div_ceil(8);
    if buf.len() < needed {
        return Err(DecodeError::Malformed {
            detail: format!(
                "Pixel Data (7FE0,0010) holds {} bytes, {needed} expected for {frames} frame(s) of {rows}x{cols} at 1 bit per pixel",
                buf.len()
            ),
        });
    }
    let mut out = Vec::with_capacity(frames as usize);
    for f in 0..frames as usize {
        let mut pixels = Vec::with_capacity(px);
        let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
        for i in f * px..(f + 1) * px {
            let bit = buf.get(i / 8).map_or(0, |b| (b >> (i % 8)) & 1);
            let v = f32::from(bit);
            min = min.min(v);
            max = max.max(v);
            pixels.push(v);
        }
        if pixels.is_empty() {
            (min, max) = (0.0, 0.0);
        }
        out.push(Frame { pixels, min, max });
    }
    Ok(out)
}
