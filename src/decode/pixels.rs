//! Native (uncompressed or codec output) sample bytes into frames of stored samples.

use bytes::Bytes;

use super::samples::{Frame, SampleFormat, Samples};
use super::DecodeError;

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

/// Reads one raw stored sample word at byte offset `off` (0 past the end), in the buffer's byte order.
#[inline(always)]
fn raw_sample(buf: &[u8], off: usize, l: &Layout) -> u32 {
    match (l.bytes_per_sample, l.big_endian) {
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
    }
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

/// Splits `buf` (all frames, laid out per `l`) into one [`Frame`] per frame, keeping the stored
/// sample type. Little endian samples in pixel-interleaved order are not copied: each frame is a slice of
/// `buf` (which is the received message itself for native Pixel Data). Big endian samples are swapped
/// into a buffer of their own, planar colour is interleaved, and YBR is converted to 8-bit RGB.
pub(crate) fn to_frames(buf: Bytes, l: &Layout) -> Result<Vec<Frame>, DecodeError> {
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
    let bps = l.bytes_per_sample;
    let stored = SampleFormat::new(bps, l.bits_stored, l.signed).ok_or_else(|| {
        DecodeError::UnsupportedPixelFormat {
            detail: format!(
                "Bits Stored (0028,0101) {} with {} byte(s) per sample",
                l.bits_stored, bps
            ),
        }
    })?;
    let mut frames = Vec::with_capacity(l.frames as usize);
    for f in 0..l.frames as usize {
        let start = f * frame_bytes; // <= total, cannot overflow
        let fb = buf.slice(start..start + frame_bytes);
        let samples = match l.color {
            Color::AsIs if !l.big_endian && (spp == 1 || !l.planar) => {
                // The hot path (CT, MR, CR, DX, interleaved RGB): the bytes as they are.
                Samples::new(fb, stored)
            }
            Color::AsIs => {
                // Big endian, or planar colour: little endian, pixel-interleaved bytes of our own.
                let mut out = Vec::with_capacity(frame_bytes);
                for p in 0..px {
                    for s in 0..spp {
                        let off = if l.planar {
                            (s * px + p) * bps
                        } else {
                            (p * spp + s) * bps
                        };
                        out.extend_from_slice(&raw_sample(&fb, off, l).to_le_bytes()[..bps]);
                    }
                }
                Samples::new(out, stored)
            }
            Color::YbrFull => {
                let mut out = Vec::with_capacity(px * 3);
                for p in 0..px {
                    let mut s3 = [0f32; 3];
                    for (s, slot) in s3.iter_mut().enumerate().take(spp.min(3)) {
                        let off = if l.planar {
                            (s * px + p) * bps
                        } else {
                            (p * spp + s) * bps
                        };
                        *slot = stored.value(raw_sample(&fb, off, l));
                    }
                    let [y, cb, cr] = s3;
                    out.extend(ybr_to_rgb(y, cb, cr).map(|v| v as u8));
                }
                Samples::new(out, SampleFormat::U8)
            }
            Color::YbrFull422 => {
                // Y1 Y2 Cb Cr -> (Y1 Cb Cr) (Y2 Cb Cr); columns are even (checked by caller)
                let mut out = Vec::with_capacity(px * 3);
                let v = |o: usize| stored.value(raw_sample(&fb, o, l));
                for pair in 0..px / 2 {
                    let o = pair * 4 * bps;
                    let (y1, y2, cb, cr) = (v(o), v(o + bps), v(o + 2 * bps), v(o + 3 * bps));
                    out.extend(ybr_to_rgb(y1, cb, cr).map(|v| v as u8));
                    out.extend(ybr_to_rgb(y2, cb, cr).map(|v| v as u8));
                }
                Samples::new(out, SampleFormat::U8)
            }
        };
        frames.push(Frame::new(samples));
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
        let pixels: Vec<u8> = (f * px..(f + 1) * px)
            .map(|i| buf.get(i / 8).map_or(0, |b| (b >> (i % 8)) & 1))
            .collect();
        out.push(Frame::new(Samples::new(pixels, SampleFormat::U8)));
    }
    Ok(out)
}
