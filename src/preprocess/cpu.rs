//! CPU reference implementation.
//!
//! This is the oracle the GPU kernel is tested against and the fallback when no
//! adapter is available, so it mirrors `shaders/preprocess.wgsl` operation for
//! operation (same f32 formulas, same order, window/convert each bilinear tap
//! before interpolating). It reads only the stored samples its taps need (4 per
//! output pixel), through a reader compiled once per sample width, so its cost
//! follows the model's input size, not the slice's.

use crate::decode::{ReadWith, SampleRead};

use super::{
    resolve_batch, PreprocessError, PreprocessSpec, Preprocessor, SliceParams, SliceView,
    FLAG_COLOR, FLAG_INVERT, FLAG_STEP,
};

#[derive(Debug, Default, Clone, Copy)]
pub struct CpuPreprocessor;

impl CpuPreprocessor {
    pub fn new() -> Self {
        Self
    }
}

impl Preprocessor for CpuPreprocessor {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn preprocess(
        &mut self,
        spec: &PreprocessSpec,
        slices: &[SliceView<'_>],
        out: &mut [f32],
    ) -> Result<(), PreprocessError> {
        let params = resolve_batch(spec, slices, out.len())?;
        let plane = spec.height as usize * spec.width as usize;
        let per_slice = plane * spec.channels as usize;
        if per_slice == 0 {
            return Ok(());
        }
        if spec.context > 0 {
            // 2.5D: channel c of model slice i is view i·(2k+1) + c alone (windows already shared).
            let stack = spec.stack();
            for ((views, ps), dst) in slices
                .chunks_exact(stack)
                .zip(params.chunks_exact(stack))
                .zip(out.chunks_exact_mut(per_slice))
            {
                for (c, ((s, p), plane_out)) in views
                    .iter()
                    .zip(ps)
                    .zip(dst.chunks_exact_mut(plane))
                    .enumerate()
                {
                    s.frame.samples().reader(ToPlane {
                        spec,
                        p,
                        c,
                        dst: plane_out,
                    });
                }
            }
            return Ok(());
        }
        for ((s, p), dst) in slices
            .iter()
            .zip(&params)
            .zip(out.chunks_exact_mut(per_slice))
        {
            s.frame.samples().reader(ToChw { spec, p, dst });
        }
        Ok(())
    }
}

/// A one-sample "frame" holding one value: [`tap`] of it is the output for that stored value.
struct OneValue(f32);

impl SampleRead for OneValue {
    fn at(&self, _: usize) -> f32 {
        self.0
    }
    fn bits(&self, _: usize) -> u32 {
        0
    }
    fn format(&self) -> crate::decode::SampleFormat {
        crate::decode::SampleFormat::U8
    }
}

/// [`slice_to_chw`] for one frame, specialised to its sample width.
struct ToChw<'a> {
    spec: &'a PreprocessSpec,
    p: &'a SliceParams,
    dst: &'a mut [f32],
}

impl ReadWith<()> for ToChw<'_> {
    fn call<S: SampleRead>(self, px: &S) {
        slice_to_chw(self.spec, self.p, px, self.dst)
    }
}

/// [`view_to_plane`] for one view of a stack, specialised to its sample width.
struct ToPlane<'a> {
    spec: &'a PreprocessSpec,
    p: &'a SliceParams,
    c: usize,
    dst: &'a mut [f32],
}

impl ReadWith<()> for ToPlane<'_> {
    fn call<S: SampleRead>(self, px: &S) {
        view_to_plane(self.spec, self.p, px, self.c, self.dst)
    }
}

/// Source coordinate along one axis, for output index `i` of `out` samples over `n` input samples:
/// (index0, index1, fraction). The half-pixel position `(i + 0.5)·n/out − 0.5` is
/// `((2i + 1)·n − out) / (2·out)`; computing its integer part and remainder in integers keeps the
/// fraction exact to one f32 rounding however large the image (an f32 position would lose ~1e-4 of a
/// pixel at 1024 px). The shader computes the same expression.
#[inline]
pub(crate) fn axis(i: u32, out: u32, n: u32) -> (u32, u32, f32) {
    let num = i64::from(2 * i + 1) * i64::from(n) - i64::from(out);
    let den = 2 * i64::from(out);
    if num <= 0 {
        return (0, 1.min(n - 1), 0.0);
    }
    let i0 = (num / den) as u32;
    if i0 >= n - 1 {
        return (n - 1, n - 1, 0.0);
    }
    (i0, i0 + 1, (num % den) as f32 / den as f32)
}

/// One bilinear tap after rescale/window/invert/colour scaling and channel
/// mapping; lanes beyond `channels` are unused.
#[inline(always)]
fn tap(p: &SliceParams, channels: u32, px: &impl SampleRead, iy: u32, ix: u32) -> [f32; 3] {
    let idx = (iy * p.cols + ix) as usize;
    if p.flags & FLAG_COLOR != 0 {
        let b = idx * 3;
        let c = [
            (px.at(b) * p.color_scale).clamp(0.0, 1.0),
            (px.at(b + 1) * p.color_scale).clamp(0.0, 1.0),
            (px.at(b + 2) * p.color_scale).clamp(0.0, 1.0),
        ];
        if channels == 1 {
            let l = 0.299f32 * c[0] + 0.587f32 * c[1] + 0.114f32 * c[2];
            return [l, l, l];
        }
        return c;
    }
    let v = px.at(idx) * p.slope + p.intercept;
    // Channel k through window k (all equal when one window applies to every channel).
    let mut out = [0.0f32; 3];
    for (k, y) in out.iter_mut().enumerate().take(channels as usize) {
        *y = if p.flags & (FLAG_STEP << k) != 0 {
            if v > p.win_lo[k] {
                1.0
            } else {
                0.0
            }
        } else {
            ((v - p.win_lo[k]) / p.win_wm1[k] + 0.5).clamp(0.0, 1.0)
        };
        if p.flags & FLAG_INVERT != 0 {
            *y = 1.0 - *y;
        }
    }
    out
}

/// One monochrome view of a stack as output channel `c`: rescale, the (shared) window lane 0, invert,
/// bilinear resize, normalisation with channel `c`'s mean and std.
fn view_to_plane(
    spec: &PreprocessSpec,
    p: &SliceParams,
    px: &impl SampleRead,
    c: usize,
    dst: &mut [f32],
) {
    let (h, w) = (spec.height, spec.width);
    let cols: Vec<(u32, u32, f32)> = (0..w).map(|x| axis(x, w, p.cols)).collect();
    for y in 0..h {
        let (y0, y1, fy) = axis(y, h, p.rows);
        for (x, &(x0, x1, fx)) in cols.iter().enumerate() {
            let p00 = tap(p, 1, px, y0, x0)[0];
            let p01 = tap(p, 1, px, y0, x1)[0];
            let p10 = tap(p, 1, px, y1, x0)[0];
            let p11 = tap(p, 1, px, y1, x1)[0];
            let top = (1.0 - fx) * p00 + fx * p01;
            let bot = (1.0 - fx) * p10 + fx * p11;
            let v = (1.0 - fy) * top + fy * bot;
            dst[y as usize * w as usize + x] = (v - spec.mean[c]) / spec.std[c];
        }
    }
}

/// One channel at the frame's own size, each pixel's windowed value passed through `f`.
///
/// Same size (an overlay at native resolution): every source position is a pixel centre, the fractions
/// are 0 and the bilinear sum is exactly the one tap, so one tap per pixel gives the same values as the
/// four. A monochrome value then depends on the stored value alone: with fewer possible stored values
/// than pixels (16 bits or less on a 512² slice), `f` of each is computed once into a table, and a
/// pixel costs one read and one lookup.
fn native_plane<T: Copy + Default>(
    p: &SliceParams,
    px: &impl SampleRead,
    f: impl Fn(f32) -> T,
    dst: &mut [T],
) {
    let bits = px.format().bits_stored();
    let pixels = dst.len();
    if p.flags & FLAG_COLOR == 0 && bits <= 16 && (1usize << bits) < pixels {
        let table: Vec<T> = (0..1u32 << bits)
            .map(|raw| f(tap(p, 1, &OneValue(px.format().value(raw)), 0, 0)[0]))
            .collect();
        for (i, out) in dst.iter_mut().enumerate() {
            *out = table.get(px.bits(i) as usize).copied().unwrap_or_default();
        }
        return;
    }
    for (y, row) in (0..p.rows).zip(dst.chunks_exact_mut(p.cols as usize)) {
        for (x, out) in (0..p.cols).zip(row) {
            *out = f(tap(p, 1, px, y, x)[0]);
        }
    }
}

/// [`native_plane`] for one frame, specialised to its sample width.
struct ToNative<'a, T, F> {
    p: &'a SliceParams,
    f: F,
    dst: &'a mut [T],
}

impl<T: Copy + Default, F: Fn(f32) -> T> ReadWith<()> for ToNative<'_, T, F> {
    fn call<S: SampleRead>(self, px: &S) {
        native_plane(self.p, px, self.f, self.dst)
    }
}

impl CpuPreprocessor {
    /// The slice at its own size as one channel (colour as luminance), windowed exactly as
    /// [`Preprocessor::preprocess`] would with `spec` at that size (`spec.height`/`width` must be the
    /// slice's, one channel, no context), each value passed through `f` into `dst`. What an overlay
    /// needs: its 8-bit levels straight from the stored values, through a table of at most 2^16 entries
    /// rather than a float image of the slice.
    pub fn native<T: Copy + Default>(
        &self,
        spec: &PreprocessSpec,
        view: &SliceView<'_>,
        f: impl Fn(f32) -> T,
        dst: &mut [T],
    ) -> Result<(), PreprocessError> {
        if spec.channels != 1 || spec.context != 0 {
            return Err(PreprocessError::InvalidSpec {
                detail: "a native-size plane has one channel and no context".into(),
            });
        }
        let params = resolve_batch(spec, std::slice::from_ref(view), dst.len())?;
        let p = &params[0];
        if (spec.height, spec.width) != (p.rows, p.cols) {
            return Err(PreprocessError::InvalidSpec {
                detail: format!(
                    "a native-size plane is {}x{}, the slice is {}x{}",
                    spec.width, spec.height, p.cols, p.rows
                ),
            });
        }
        view.frame.samples().reader(ToNative { p, f, dst });
        Ok(())
    }
}

fn slice_to_chw(spec: &PreprocessSpec, p: &SliceParams, px: &impl SampleRead, dst: &mut [f32]) {
    let (h, w, ch) = (spec.height, spec.width, spec.channels);
    let plane = h as usize * w as usize;
    if (h, w) == (p.rows, p.cols) {
        if ch == 1 {
            let (mean, std) = (spec.mean[0], spec.std[0]);
            native_plane(p, px, |v| (v - mean) / std, &mut dst[..plane]);
            return;
        }
        for y in 0..h {
            for x in 0..w {
                let t = tap(p, ch, px, y, x);
                let o = y as usize * w as usize + x as usize;
                for c in 0..ch as usize {
                    dst[c * plane + o] = (t[c] - spec.mean[c]) / spec.std[c];
                }
            }
        }
        return;
    }
    // Column coordinates are the same for every row.
    let cols: Vec<(u32, u32, f32)> = (0..w).map(|x| axis(x, w, p.cols)).collect();
    for y in 0..h {
        let (y0, y1, fy) = axis(y, h, p.rows);
        for (x, &(x0, x1, fx)) in cols.iter().enumerate() {
            let p00 = tap(p, ch, px, y0, x0);
            let p01 = tap(p, ch, px, y0, x1);
            let p10 = tap(p, ch, px, y1, x0);
            let p11 = tap(p, ch, px, y1, x1);
            let o = y as usize * w as usize + x;
            for c in 0..ch as usize {
                let top = (1.0 - fx) * p00[c] + fx * p01[c];
                let bot = (1.0 - fx) * p10[c] + fx * p11[c];
                let v = (1.0 - fy) * top + fy * bot;
                dst[c * plane + o] = (v - spec.mean[c]) / spec.std[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::super::{Photometric, Window};
    use super::*;

    fn run(spec: &PreprocessSpec, owned: &[OwnedSlice]) -> Vec<f32> {
        let mut out = vec![f32::NAN; spec.output_len(owned.len())];
        CpuPreprocessor
            .preprocess(spec, &views(owned), &mut out)
            .unwrap();
        out
    }

    fn plain(channels: u32, h: u32, w: u32, window: Option<Window>) -> PreprocessSpec {
        PreprocessSpec {
            channels,
            height: h,
            width: w,
            window: window.map(Into::into),
            mean: vec![0.0; channels as usize],
            std: vec![1.0; channels as usize],
            context: 0,
        }
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-6,
                "index {i}: got {g}, want {w}\n got {got:?}\nwant {want:?}"
            );
        }
    }

    /// 2x2 -> 4x4. Window c=150.5, w=301 makes y = v/300 exactly, so the taps
    /// are [0, 1/3; 2/3, 1]. Half-pixel centres at scale 0.5 give source
    /// coordinates -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1), so the
    /// weight of the second row/column is [0, 1/4, 3/4, 1] and
    /// out[y][x] = wx/3 + 2*wy/3.
    #[test]
    fn hand_2x2_to_4x4() {
        let s = [OwnedSlice::mono(2, 2, vec![0.0, 100.0, 200.0, 300.0])];
        let spec = plain(
            1,
            4,
            4,
            Some(Window {
                center: 150.5,
                width: 301.0,
            }),
        );
        #[rustfmt::skip]
        let want = [
            0.0,       1.0 / 12.0, 3.0 / 12.0,  4.0 / 12.0,
            2.0 / 12.0, 3.0 / 12.0, 5.0 / 12.0,  6.0 / 12.0,
            6.0 / 12.0, 7.0 / 12.0, 9.0 / 12.0, 10.0 / 12.0,
            8.0 / 12.0, 9.0 / 12.0, 11.0 / 12.0, 1.0,
        ];
        assert_close(&run(&spec, &s), &want);

        // Normalization: (y - 0.5) / 0.25, replicated to 3 channels.
        let spec3 = PreprocessSpec {
            channels: 3,
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
            ..spec
        };
        let got = run(&spec3, &s);
        let norm: Vec<f32> = want.iter().map(|y| (y - 0.5) / 0.25).collect();
        for c in 0..3 {
            assert_close(&got[c * 16..(c + 1) * 16], &norm);
        }
    }

    /// 4x4 -> 2x2 averages each 2x2 block (source coords 0.5 and 2.5).
    #[test]
    fn hand_4x4_to_2x2() {
        #[rustfmt::skip]
        let px = vec![
            0.0, 2.0, 4.0, 6.0,
            2.0, 4.0, 6.0, 8.0,
            10.0, 10.0, 20.0, 20.0,
            10.0, 10.0, 20.0, 30.0,
        ];
        // c = 50.5, w = 101 -> y = (v - 50)/100 + 0.5 = v / 100.
        let spec = plain(
            1,
            2,
            2,
            Some(Window {
                center: 50.5,
                width: 101.0,
            }),
        );
        let got = run(&spec, &[OwnedSlice::mono(4, 4, px)]);
        assert_close(&got, &[0.02, 0.06, 0.10, 0.225]);
    }

    /// A 1x1 image is constant under resize.
    #[test]
    fn hand_single_pixel() {
        // Manifest window c=40, w=400: y = (40 - 39.5)/399 + 0.5.
        let s = [OwnedSlice {
            intercept: -1024.0,
            ..OwnedSlice::mono(1, 1, vec![1064.0])
        }];
        let y = 0.5f32 / 399.0 + 0.5;
        let got = run(
            &plain(
                1,
                3,
                2,
                Some(Window {
                    center: 40.0,
                    width: 400.0,
                }),
            ),
            &s,
        );
        assert_close(&got, &[y; 6]);

        // MONOCHROME1 with min/max window: min == max -> w = 1 -> step, v is
        // not above c - 0.5 = v -> 0, inverted -> 1.
        let s = [OwnedSlice {
            photometric: Photometric::Monochrome1,
            ..OwnedSlice::mono(1, 1, vec![7.0])
        }];
        assert_close(&run(&plain(1, 2, 2, None), &s), &[1.0; 4]);
        // Same as MONOCHROME2 -> 0.
        let s = [OwnedSlice::mono(1, 1, vec![7.0])];
        assert_close(&run(&plain(1, 2, 2, None), &s), &[0.0; 4]);
    }

    #[test]
    fn hand_rgb() {
        let px = OwnedSlice {
            pixels: wide(vec![255.0, 0.0, 128.0]),
            ..rgb8(1, 1, 0)
        };
        let b = 128.0f32 / 255.0;
        // C = 3: channels pass through, normalized per channel.
        let spec3 = PreprocessSpec {
            mean: vec![0.5, 0.0, 0.25],
            std: vec![0.5, 2.0, 0.25],
            ..plain(3, 1, 1, None)
        };
        assert_close(
            &run(&spec3, std::slice::from_ref(&px)),
            &[1.0, 0.0, (b - 0.25) / 0.25],
        );
        // C = 1: luminance of the [0,1] values.
        assert_close(&run(&plain(1, 1, 1, None), &[px]), &[0.299 + 0.114 * b]);
        // Values above 2^bits - 1 clamp to 1; the manifest window is ignored for colour.
        let px = OwnedSlice {
            pixels: wide(vec![300.0, 255.0, 51.0]),
            ..rgb8(1, 1, 0)
        };
        let w = Some(Window {
            center: 0.0,
            width: 1.0,
        });
        assert_close(&run(&plain(3, 1, 1, w), &[px]), &[1.0, 1.0, 0.2]);
    }

    #[test]
    fn hand_window_linear_and_step() {
        // CT: stored 0, 1024, 1064, 1264 with intercept -1024 -> HU -1024, 0, 40, 240.
        // Window 40/400: y = (v - 39.5)/399 + 0.5 -> 0, 0.5 - 39.5/399, 0.5 + 0.5/399, 1.
        let s = [OwnedSlice {
            intercept: -1024.0,
            ..OwnedSlice::mono(1, 4, vec![0.0, 1024.0, 1064.0, 1264.0])
        }];
        let spec = plain(
            1,
            1,
            4,
            Some(Window {
                center: 40.0,
                width: 400.0,
            }),
        );
        let want = [0.0, 0.5 - 39.5 / 399.0, 0.5 + 0.5 / 399.0, 1.0];
        assert_close(&run(&spec, &s), &want);
        // w = 1: y = v > c - 0.5 (w < 1 is no window: refused, see the spec validation tests).
        let spec = plain(
            1,
            1,
            4,
            Some(Window {
                center: 39.5,
                width: 1.0,
            }),
        );
        assert_close(&run(&spec, &s), &[0.0, 0.0, 1.0, 1.0]);
        // MONOCHROME1 inverts.
        let s = [OwnedSlice {
            photometric: Photometric::Monochrome1,
            ..s[0].clone()
        }];
        assert_close(&run(&spec, &s), &[1.0, 1.0, 0.0, 0.0]);
    }

    /// At native size each output is the windowed stored value (one tap); the table made for frames
    /// with fewer possible values than pixels gives exactly that, MONOCHROME1, signed and masked
    /// bits included.
    #[test]
    fn native_size_is_each_pixel_windowed() {
        let window = Some(Window {
            center: 1500.0,
            width: 2500.0,
        });
        for s in [
            xray_mono1(70, 90, 3),
            ct_signed(300, 230, 4),
            ct(300, 260, 5),
        ] {
            let spec = plain(1, s.rows, s.cols, window);
            let got = run(&spec, std::slice::from_ref(&s));
            let values: Vec<f32> = s.pixels.samples().values().collect();
            for (i, (&g, &v)) in got.iter().zip(&values).enumerate().step_by(97) {
                let one = OwnedSlice {
                    rows: 1,
                    cols: 1,
                    pixels: wide(vec![v]),
                    ..s.clone()
                };
                let want = run(&plain(1, 1, 1, window), &[one])[0];
                assert_eq!(g.to_bits(), want.to_bits(), "pixel {i} (stored {v})");
            }
        }
    }

    /// The frame's min/max is read only when the window falls back to it: a file or manifest window
    /// leaves the frame's other pixels untouched.
    #[test]
    fn min_max_is_computed_only_for_the_min_max_window() {
        let with_file_window = ct(32, 32, 1);
        run(
            &plain(1, 8, 8, None),
            std::slice::from_ref(&with_file_window),
        );
        assert!(!with_file_window.pixels.range_computed(), "file window");
        let manifest = Some(Window {
            center: 40.0,
            width: 400.0,
        });
        let no_window = OwnedSlice {
            file_windows: Vec::new(),
            ..ct(32, 32, 2)
        };
        run(&plain(1, 8, 8, manifest), std::slice::from_ref(&no_window));
        assert!(!no_window.pixels.range_computed(), "manifest window");
        run(&plain(1, 8, 8, None), std::slice::from_ref(&no_window));
        assert!(no_window.pixels.range_computed(), "min/max window");
    }

    #[test]
    fn empty_batch_is_ok() {
        let mut out = [];
        CpuPreprocessor
            .preprocess(&plain(1, 4, 4, None), &[], &mut out)
            .unwrap();
    }
}
