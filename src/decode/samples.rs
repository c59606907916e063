//! One frame's stored sample values, kept as the bytes they were stored in.
//!
//! Why not `f32`: a 512² CT slice is 0.5 MiB of 16-bit samples, and the bundled model reads 4 taps for
//! each of its 64² output pixels — 3 % of them. Converting every sample to `f32` up front cost a pass
//! over the frame and doubled its memory (1 MiB per slice held while it waits for a batch) for values
//! that were never read. Here a frame is its little endian sample bytes plus a [`SampleFormat`] (width,
//! Bits Stored, Pixel Representation); the Bits Stored mask and the sign extension are applied when a
//! value is read ([`SampleFormat::value`]), by the CPU preprocessor per tap and by the WGSL kernel per
//! tap on the same bytes uploaded as they are (2 bytes a pixel for CT, not 4). Native little endian
//! Pixel Data is not even copied: the frame is a slice of the received message (`bytes::Bytes`).
//!
//! The frame's min/max (needed only when the window falls back to it) is computed on first use and
//! kept ([`Frame::min_max`]).

use std::sync::OnceLock;

use bytes::Bytes;

/// How to read one stored sample: its width in bytes and what Bits Stored and Pixel Representation
/// say about its value. The values read are exactly pydicom 3's `pixel_array` values: the low
/// `bits_stored` bits, two's complement when signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SampleFormat {
    /// 1, 2 or 4 bytes per sample, little endian.
    width: u8,
    /// 1..=8·width.
    bits_stored: u8,
    signed: bool,
}

impl SampleFormat {
    /// `None` unless `width` is 1, 2 or 4 and `1 <= bits_stored <= 8·width`.
    pub fn new(width: usize, bits_stored: u16, signed: bool) -> Option<Self> {
        let w = u8::try_from(width)
            .ok()
            .filter(|w| matches!(w, 1 | 2 | 4))?;
        let bits = u8::try_from(bits_stored)
            .ok()
            .filter(|b| (1..=8 * w).contains(b))?;
        Some(Self {
            width: w,
            bits_stored: bits,
            signed,
        })
    }

    /// Unsigned 8-bit samples using all 8 bits (colour converted from YBR, bit-packed data unpacked).
    pub const U8: Self = Self {
        width: 1,
        bits_stored: 8,
        signed: false,
    };

    pub fn width(self) -> usize {
        usize::from(self.width)
    }

    pub fn bits_stored(self) -> u16 {
        u16::from(self.bits_stored)
    }

    pub fn signed(self) -> bool {
        self.signed
    }

    /// The word the WGSL kernel reads (`Slice.format`): width | bits_stored << 8 | signed << 16.
    pub(crate) fn packed(self) -> u32 {
        u32::from(self.width) | u32::from(self.bits_stored) << 8 | u32::from(self.signed) << 16
    }

    /// The value of a raw little endian sample word: the low `bits_stored` bits, sign-extended when
    /// signed. Shifting the stored bits up to bit 31 and back (arithmetically when signed) is the mask
    /// and the two's complement in one step.
    #[inline(always)]
    pub fn value(self, raw: u32) -> f32 {
        let shift = 32 - u32::from(self.bits_stored);
        if self.signed {
            ((raw << shift) as i32 >> shift) as f32
        } else {
            ((raw << shift) >> shift) as f32
        }
    }
}

/// The stored samples of one frame: little endian bytes, `width` per sample, samples interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Samples {
    data: Bytes,
    format: SampleFormat,
}

impl Samples {
    /// `data` must hold whole samples; a trailing partial sample is not part of the frame.
    pub fn new(data: impl Into<Bytes>, format: SampleFormat) -> Self {
        let mut data: Bytes = data.into();
        data.truncate(data.len() / format.width() * format.width());
        Self { data, format }
    }

    /// Samples from values (tests and tools); each value is stored in `format` (truncated to its bits).
    pub fn from_values(values: impl IntoIterator<Item = i64>, format: SampleFormat) -> Self {
        let w = format.width();
        let mut data = Vec::new();
        for v in values {
            data.extend_from_slice(&v.to_le_bytes()[..w]);
        }
        Self::new(data, format)
    }

    pub fn format(&self) -> SampleFormat {
        self.format
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.data.len() / self.format.width()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The stored bytes (little endian): what the GPU kernel reads.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data
    }

    /// Sample `i`'s value, 0 past the end.
    #[inline]
    pub fn value(&self, i: usize) -> f32 {
        let raw = match self.format.width {
            1 => load::<1>(&self.data, i),
            2 => load::<2>(&self.data, i),
            _ => load::<4>(&self.data, i),
        };
        self.format.value(raw)
    }

    /// Every value in order (oracle tests, tools); the hot paths read through [`Self::reader`].
    pub fn values(&self) -> impl Iterator<Item = f32> + '_ {
        (0..self.len()).map(|i| self.value(i))
    }

    /// Calls `f` with a reader specialised to this frame's sample width, so loops over many taps are
    /// compiled once per width instead of branching on it per value.
    #[inline]
    pub fn reader<R>(&self, f: impl ReadWith<R>) -> R {
        let fmt = self.format;
        match fmt.width {
            1 => f.call(&Reader::<1> {
                data: &self.data,
                fmt,
            }),
            2 => f.call(&Reader::<2> {
                data: &self.data,
                fmt,
            }),
            _ => f.call(&Reader::<4> {
                data: &self.data,
                fmt,
            }),
        }
    }

    /// (min, max) of the values, (0, 0) when there are none.
    fn min_max(&self) -> (f32, f32) {
        if self.is_empty() {
            return (0.0, 0.0);
        }
        // Integer min/max of the raw words as the format reads them, in one vectorisable pass per width.
        fn fold<const W: usize>(data: &[u8], fmt: SampleFormat) -> (f32, f32) {
            let shift = 32 - u32::from(fmt.bits_stored);
            let words = data.chunks_exact(W).map(|c| word::<W>(c) << shift);
            if fmt.signed {
                let (lo, hi) = words
                    .map(|v| v as i32 >> shift)
                    .fold((i32::MAX, i32::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
                (lo as f32, hi as f32)
            } else {
                let (lo, hi) = words
                    .map(|v| v >> shift)
                    .fold((u32::MAX, u32::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
                (lo as f32, hi as f32)
            }
        }
        match self.format.width {
            1 => fold::<1>(&self.data, self.format),
            2 => fold::<2>(&self.data, self.format),
            _ => fold::<4>(&self.data, self.format),
        }
    }
}

/// Reads sample values of one width (`W` bytes).
pub struct Reader<'a, const W: usize> {
    data: &'a [u8],
    fmt: SampleFormat,
}

/// Random access to a frame's values, for the preprocessors' taps.
pub trait SampleRead {
    /// Sample `i`'s value, 0 past the end (the callers' indices are validated; this keeps a bad one
    /// from panicking).
    fn at(&self, i: usize) -> f32;
    /// Sample `i`'s stored bits (the low `bits_stored` bits, not sign-extended), 0 past the end: an
    /// index into a table of the 2^bits_stored values ([`SampleFormat::value`] of it is [`Self::at`]).
    fn bits(&self, i: usize) -> u32;
    fn format(&self) -> SampleFormat;
}

/// The little endian word of one `W`-byte sample.
#[inline(always)]
fn word<const W: usize>(sample: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b[..W].copy_from_slice(sample);
    u32::from_le_bytes(b)
}

/// Sample `i`'s raw word, 0 past the end.
#[inline(always)]
fn load<const W: usize>(data: &[u8], i: usize) -> u32 {
    data.get(i * W..i * W + W).map_or(0, word::<W>)
}

impl<const W: usize> SampleRead for Reader<'_, W> {
    #[inline(always)]
    fn at(&self, i: usize) -> f32 {
        self.fmt.value(load::<W>(self.data, i))
    }

    #[inline(always)]
    fn bits(&self, i: usize) -> u32 {
        let shift = 32 - u32::from(self.fmt.bits_stored);
        (load::<W>(self.data, i) << shift) >> shift
    }

    fn format(&self) -> SampleFormat {
        self.fmt
    }
}

/// A computation generic over the reader type (closures cannot be generic): see [`Samples::reader`].
pub trait ReadWith<R> {
    fn call<S: SampleRead>(self, read: &S) -> R;
}

/// One decoded frame: its stored values (no rescale), row-major, samples interleaved.
#[derive(Debug, Clone)]
pub struct Frame {
    samples: Samples,
    /// Min/max of the values, computed on first use.
    range: OnceLock<(f32, f32)>,
}

/// Frames are equal when their stored samples are (the cached min/max follows from them).
impl PartialEq for Frame {
    fn eq(&self, other: &Self) -> bool {
        self.samples == other.samples
    }
}

impl Frame {
    pub fn new(samples: Samples) -> Self {
        Self {
            samples,
            range: OnceLock::new(),
        }
    }

    pub fn samples(&self) -> &Samples {
        &self.samples
    }

    /// Whether [`Self::min_max`] has been computed (tests: it is not, unless a window needed it).
    #[cfg(test)]
    pub(crate) fn range_computed(&self) -> bool {
        self.range.get().is_some()
    }

    /// (min, max) of the stored values, (0, 0) for an empty frame; one pass over the frame the first
    /// time it is asked, then kept.
    pub fn min_max(&self) -> (f32, f32) {
        *self.range.get_or_init(|| self.samples.min_max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_apply_bits_stored_and_sign_as_pydicom() {
        // 12 bits stored in 16, unsigned: high bits (an old overlay) are masked off.
        let f = SampleFormat::new(2, 12, false).unwrap();
        let s = Samples::new(vec![0xFF, 0xFF, 0x34, 0x12, 0x00, 0x08], f);
        assert_eq!(
            s.values().collect::<Vec<_>>(),
            [4095.0, 0x234 as f32, 2048.0]
        );
        assert_eq!(Frame::new(s).min_max(), (564.0, 4095.0));
        // 12 bits signed: bit 11 is the sign.
        let f = SampleFormat::new(2, 12, true).unwrap();
        let s = Samples::new(vec![0xFF, 0x0F, 0x00, 0x08, 0xFF, 0x07], f);
        assert_eq!(s.values().collect::<Vec<_>>(), [-1.0, -2048.0, 2047.0]);
        assert_eq!(Frame::new(s).min_max(), (-2048.0, 2047.0));
        // full-width signed 16 and 32 bits, and 8 bits
        let s = Samples::from_values([-1024, 3071, 0], SampleFormat::new(2, 16, true).unwrap());
        assert_eq!(s.values().collect::<Vec<_>>(), [-1024.0, 3071.0, 0.0]);
        let s = Samples::from_values([-5, 1 << 20], SampleFormat::new(4, 32, true).unwrap());
        assert_eq!(s.values().collect::<Vec<_>>(), [-5.0, (1 << 20) as f32]);
        let s = Samples::from_values([200, 7], SampleFormat::U8);
        assert_eq!(Frame::new(s).min_max(), (7.0, 200.0));
    }

    #[test]
    fn reader_agrees_with_value_and_is_safe_past_the_end() {
        struct Sum(usize);
        impl ReadWith<f32> for Sum {
            fn call<S: SampleRead>(self, read: &S) -> f32 {
                (0..self.0).map(|i| read.at(i)).sum()
            }
        }
        for (w, bits, signed) in [(1, 8, false), (2, 12, true), (2, 16, false), (4, 24, true)] {
            let fmt = SampleFormat::new(w, bits, signed).unwrap();
            let bytes = (0..=255u8).cycle().take(64 * w + w - 1).collect::<Vec<_>>();
            let s = Samples::new(bytes, fmt);
            assert_eq!(s.len(), 64, "a trailing partial sample is dropped");
            let want: f32 = s.values().sum();
            assert_eq!(s.reader(Sum(64)), want);
            assert_eq!(s.reader(Sum(80)), want, "indices past the end read 0");
        }
    }

    #[test]
    fn formats_outside_dicom_are_refused() {
        assert!(SampleFormat::new(3, 16, false).is_none());
        assert!(SampleFormat::new(2, 17, false).is_none());
        assert!(SampleFormat::new(2, 0, false).is_none());
        assert!(SampleFormat::new(4, 32, true).is_some());
    }

    #[test]
    fn empty_frames_have_a_zero_range() {
        let f = Frame::new(Samples::new(Vec::<u8>::new(), SampleFormat::U8));
        assert_eq!(f.min_max(), (0.0, 0.0));
    }
}
