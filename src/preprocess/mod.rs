//! Pixel preprocessing: stored DICOM values -> normalized NCHW model input.
//!
//! The preprocessing definition is implemented twice: a CPU reference ([`cpu`]) that serves as the
//! oracle and the fallback when no adapter exists, and a fused WGSL kernel ([`gpu`]) for throughput.
//! Both must agree to ~1e-4, which is only realistic if they see bit-identical parameters. That is why
//! all per-slice parameter resolution (which window applies, its f64 arithmetic, the cast to f32)
//! happens once, here, into [`SliceParams`] — the exact `#[repr(C)]` struct the shader reads — and the
//! CPU path consumes the same struct instead of re-deriving anything. `tests/oracle/spec.py` is an
//! independent numpy implementation of the same definition.
//!
//! # The specification
//! Per slice (one frame of stored values, samples interleaved), for each output pixel of `[C, H, W]`:
//! 1. Monochrome: modality rescale `v = stored·slope + intercept`; window `(c, w)` per output channel
//!    `k` = the manifest's windows for the slice's Modality (`[preprocess.modality.<term>]`) if it has
//!    them, else its default windows (`window`, or `windows` stacked as channels), else the file's
//!    first *valid* WindowCenter/WindowWidth pair, else the frame's rescaled min/max
//!    (`c = (lo + hi)/2 + 0.5`, `w = hi − lo + 1`). A single window applies to every channel; a list
//!    of C windows gives channel `k` window `k` (e.g. a CT model's brain, subdural and bone windows as
//!    its three channels). DICOM PS3.3 C.11.2.1.2.1 linear function to [0, 1]:
//!    `w ≤ 1 ? (v > c − 0.5 ? 1 : 0) : clamp((v − (c − 0.5))/(w − 1) + 0.5, 0, 1)`; MONOCHROME1: `1 − y`.
//!    A pair is valid when both values are finite and `w ≥ 1` (PS3.3 C.11.2.1.2); invalid pairs are
//!    skipped, never applied — some scanners write `0 / 0`, which applied as is would turn every slice
//!    into a threshold image and every score into the same number. The manifest window is held to the
//!    same rule when the manifest is loaded. The choice ([`WindowChoice`]: source, pair index, whether a
//!    file window was skipped as invalid, the (c, w) used) of the *first* channel is reported with every
//!    finding; `w = 1` (a valid width, or a constant frame's min/max) is the step function above.
//!    Colour (RGB; YBR was converted by the decoder): each sample `clamp(stored/(2^BitsStored − 1), 0, 1)`;
//!    no window applies to colour, stacked or not.
//! 2. Channels: mono → channel k windowed with window k (one window: C equal copies); RGB → C = 3 as
//!    is, C = 1 as `0.299 R + 0.587 G + 0.114 B`.
//! 3. Bilinear resize with half-pixel centres (align_corners = false, no antialiasing): the source
//!    position `(i + 0.5)·n/out − 0.5` clamped to `[0, n − 1]`; steps 1–2 are applied to each of the
//!    four taps before interpolating.
//! 4. Normalize `(x − mean[c]) / std[c]` with the manifest's values; NCHW float32, batch contiguous.
//!
//! # 2.5D models (`context = k`)
//! A model with `[input] context = k` takes, for each slice, the 2k+1 neighbouring slices of its series
//! in slice-position order as its C = 2k+1 channels (the caller assembles them and replicates the edge
//! slices: see `study::context`). The preprocessor is then handed 2k+1 views per model slice, in
//! position order: output channel c of model slice i is steps 1 and 3–4 applied to view `i·(2k+1) + c`
//! alone (its own pixels, size, rescale and photometric), with ONE window for every channel — the one
//! the rule above chooses for the centre view `i·(2k+1) + k`. One window per input, because the stack is
//! read as a radiologist scrolls a series: at one window setting, so that the same tissue has the same
//! value on every channel and the model sees anatomy change, not each slice's own min/max or file
//! window (which vary slice by slice and would make the neighbours' contrast differ from the centre's
//! for no anatomical reason). Stacked windows are therefore refused with a context (the manifest says
//! so at load), and colour views cannot be stacked (no window applies to colour; refused per slice).

pub mod cpu;
pub mod gpu;

use std::collections::BTreeMap;

pub use cpu::CpuPreprocessor;
pub use gpu::GpuPreprocessor;

/// Photometric interpretation and VOI window as the decoder reports them (YBR is already converted to
/// RGB, so only MONOCHROME1/2 and RGB reach preprocessing).
pub use crate::decode::{Photometric, Window};

use crate::decode::Frame;

/// What the model expects, taken from the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct PreprocessSpec {
    /// 1 or 3.
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    /// The manifest's windows (one, stacked, and per modality); `None` (or a slice whose modality has
    /// no entry and no default) falls back to the file's first valid window, then to min/max.
    pub window: Option<ManifestWindows>,
    /// One per channel.
    pub mean: Vec<f32>,
    /// One per channel, each > 0.
    pub std: Vec<f32>,
    /// `[input] context`: 0 for a 2D model; k > 0 for a 2.5D model whose C = 2k+1 channels are the
    /// 2k+1 neighbouring slices (see the module docs): the preprocessor then takes 2k+1 views per slice.
    pub context: u32,
}

/// The largest `context` (a stack of 2·3+1 = 7 slices): bounds the channel count the kernels carry.
pub const MAX_CONTEXT: u32 = 3;

/// The most channels a spec can have: a stack of `2·MAX_CONTEXT + 1` slices. The WGSL `Spec` uniform
/// carries this many means and stds (in two vec4s).
pub const MAX_CHANNELS: usize = 2 * MAX_CONTEXT as usize + 1;

/// The most windows one slice can be given: one per output channel, and channels are at most 3. The
/// WGSL `Slice` struct carries exactly this many.
pub const MAX_STACKED_WINDOWS: usize = 3;

/// The manifest's fixed windows. Each list holds one window (applied to every channel) or one per
/// output channel (stacked: channel k is windowed with window k).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ManifestWindows {
    /// For a slice whose modality has no entry in `by_modality`; empty: the file's rule.
    pub default: Vec<Window>,
    /// Keyed by DICOM Modality (0008,0060) defined term (`"CT"`): replaces `default` for that modality.
    pub by_modality: BTreeMap<String, Vec<Window>>,
}

impl From<Window> for ManifestWindows {
    fn from(w: Window) -> Self {
        Self {
            default: vec![w],
            by_modality: BTreeMap::new(),
        }
    }
}

impl ManifestWindows {
    /// Windows stacked as channels, the same for every modality.
    pub fn stacked(windows: Vec<Window>) -> Self {
        Self {
            default: windows,
            by_modality: BTreeMap::new(),
        }
    }

    /// The manifest's windows for a slice of `modality`; empty: the file's rule applies.
    pub fn for_modality(&self, modality: Option<&str>) -> &[Window] {
        modality
            .and_then(|m| self.by_modality.get(m))
            .unwrap_or(&self.default)
    }
}

impl PreprocessSpec {
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let bad = |detail: String| Err(PreprocessError::InvalidSpec { detail });
        if self.context > MAX_CONTEXT {
            return bad(format!(
                "context must be 0..={MAX_CONTEXT}, got {}",
                self.context
            ));
        }
        if self.context > 0 && self.channels != self.stack() as u32 {
            return bad(format!(
                "context {} stacks {} slices as channels, got {} channels",
                self.context,
                self.stack(),
                self.channels
            ));
        }
        if self.context == 0 && self.channels != 1 && self.channels != 3 {
            return bad(format!("channels must be 1 or 3, got {}", self.channels));
        }
        if self.height == 0 || self.width == 0 {
            return bad(format!(
                "height and width must be > 0, got {}x{}",
                self.height, self.width
            ));
        }
        let c = self.channels as usize;
        if self.mean.len() != c || self.std.len() != c {
            return bad(format!(
                "mean/std must have {c} entries (one per channel), got {}/{}",
                self.mean.len(),
                self.std.len()
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return bad(format!("mean must be finite, got {m}"));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return bad(format!("std must be finite and > 0, got {s}"));
        }
        if let Some(mw) = &self.window {
            let lists = std::iter::once(("default", &mw.default))
                .chain(mw.by_modality.iter().map(|(k, v)| (k.as_str(), v)));
            for (which, list) in lists {
                // With a context every channel takes the centre slice's one window.
                let stacked_ok = list.len() == 1 || (list.len() == c && self.context == 0);
                if (which != "default" || !list.is_empty()) && !stacked_ok {
                    return bad(format!(
                        "{which} windows: {} given, need 1 or one per channel ({c})",
                        list.len()
                    ));
                }
                if let Some(w) = list.iter().find(|w| !w.is_valid()) {
                    return bad(format!(
                        "{which} window must have a finite center and a finite width >= 1 (DICOM PS3.3 C.11.2.1.2), got center {} width {}",
                        w.center, w.width
                    ));
                }
            }
        }
        Ok(())
    }

    /// Views per model slice: 2·context + 1 (1 for a 2D model).
    pub fn stack(&self) -> usize {
        2 * self.context as usize + 1
    }

    /// Number of f32 values one batch of `n` slices produces.
    pub fn output_len(&self, n: usize) -> usize {
        n * self.channels as usize * self.height as usize * self.width as usize
    }
}

/// One decoded slice/frame, borrowed from the decoder's buffers.
#[derive(Debug, Clone, Copy)]
pub struct SliceView<'a> {
    /// Stored values, row-major, samples interleaved, in their stored type; min/max computed on demand
    /// (only the min/max window needs them).
    pub frame: &'a Frame,
    pub rows: u32,
    pub cols: u32,
    /// Samples per pixel: 1 (monochrome) or 3 (RGB).
    pub samples: u32,
    pub photometric: Photometric,
    pub rescale_slope: f64,
    pub rescale_intercept: f64,
    /// The file's WindowCenter/WindowWidth pairs in order, invalid ones included (they are skipped).
    pub file_windows: &'a [Window],
    pub bits_stored: u16,
    /// Modality (0008,0060) defined term, if the file has one: picks the manifest's per-modality windows.
    pub modality: Option<&'a str>,
}

impl<'a> SliceView<'a> {
    /// Frame `frame` of a decoded instance; `None` when the instance has no such frame.
    pub fn of(instance: &'a crate::decode::DecodedInstance, frame: usize) -> Option<Self> {
        let f = instance.frames.get(frame)?;
        let m = &instance.meta;
        Some(Self {
            frame: f,
            rows: m.rows,
            cols: m.cols,
            samples: u32::from(m.samples_per_pixel),
            photometric: m.photometric,
            rescale_slope: m.rescale_slope,
            rescale_intercept: m.rescale_intercept,
            file_windows: &m.windows,
            bits_stored: m.bits_stored,
            modality: m.modality.as_deref(),
        })
    }
}

/// Fallible work to hand to a preprocessor; `out` is N*C*H*W, NCHW.
pub trait Preprocessor: Send {
    fn name(&self) -> &'static str;
    fn preprocess(
        &mut self,
        spec: &PreprocessSpec,
        slices: &[SliceView<'_>],
        out: &mut [f32],
    ) -> Result<(), PreprocessError>;
}

#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("no GPU adapter available: {detail}")]
    NoAdapter { detail: String },
    #[error("could not create GPU device: {detail}")]
    Device { detail: String },
    #[error("invalid preprocessing spec: {detail}")]
    InvalidSpec { detail: String },
    #[error("invalid slice {index}: {detail}")]
    InvalidSlice { index: usize, detail: String },
    #[error("output buffer has {got} values, expected {expected} (N*C*H*W)")]
    OutputSize { expected: usize, got: usize },
    #[error("batch too large for the GPU: {what} needs {needed}, device limit is {limit}")]
    BatchTooLarge {
        /// What overflowed, with its unit.
        what: &'static str,
        needed: u64,
        limit: u64,
    },
    #[error("GPU error: {detail}")]
    Gpu { detail: String },
}

/// `SliceParams::flags` bits (mirrored as constants in the shader).
pub(crate) const FLAG_COLOR: u32 = 1;
pub(crate) const FLAG_INVERT: u32 = 2;
/// Window k of the slice is the step function (`w <= 1`): bit `FLAG_STEP << k`.
pub(crate) const FLAG_STEP: u32 = 4;

/// Fully resolved per-slice parameters, laid out exactly as the shader's
/// `Slice` struct (16 x 4 bytes, no implicit padding). Window k is the one of output channel k
/// (all equal when one window applies to every channel).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SliceParams {
    /// Byte offset of the slice's first stored sample in the packed input (a multiple of 4: each
    /// slice starts on a word). The CPU path ignores it and reads the slice's own samples.
    pub offset: u32,
    pub rows: u32,
    pub cols: u32,
    pub flags: u32,
    pub slope: f32,
    pub intercept: f32,
    /// `c - 0.5`: the lower edge of window k.
    pub win_lo: [f32; MAX_STACKED_WINDOWS],
    /// `w - 1`: window k's divisor (unused when `FLAG_STEP << k` is set).
    pub win_wm1: [f32; MAX_STACKED_WINDOWS],
    /// `1 / (2^bits_stored - 1)` for colour slices.
    pub color_scale: f32,
    /// How the stored samples are read ([`crate::decode::SampleFormat`]): width | bits << 8 |
    /// signed << 16.
    pub format: u32,
    pub _pad: [f32; 2],
}

/// Spec constants, laid out exactly as the shader's `Spec` uniform.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct SpecParams {
    pub n: u32,
    pub channels: u32,
    pub height: u32,
    pub width: u32,
    pub context: u32,
    pub _pad: [u32; 3],
    pub mean: [f32; 8],
    pub std: [f32; 8],
}

impl SpecParams {
    /// `n`: model slices (for a context spec, `views / (2k+1)`).
    pub(crate) fn new(spec: &PreprocessSpec, n: u32) -> Self {
        let mut mean = [0.0f32; 8];
        let mut std = [1.0f32; 8];
        let c = (spec.channels as usize).min(MAX_CHANNELS);
        mean[..c].copy_from_slice(&spec.mean[..c]);
        std[..c].copy_from_slice(&spec.std[..c]);
        Self {
            n,
            channels: spec.channels,
            height: spec.height,
            width: spec.width,
            context: spec.context,
            _pad: [0; 3],
            mean,
            std,
        }
    }
}

/// Checks one slice's geometry and metadata, independent of the spec.
pub(crate) fn validate_slice(index: usize, s: &SliceView<'_>) -> Result<(), PreprocessError> {
    let bad = |detail: String| Err(PreprocessError::InvalidSlice { index, detail });
    if s.rows == 0 || s.cols == 0 {
        return bad(format!("zero dimension {}x{}", s.rows, s.cols));
    }
    if s.samples != 1 && s.samples != 3 {
        return bad(format!(
            "samples per pixel must be 1 or 3, got {}",
            s.samples
        ));
    }
    let expected = s.rows as u64 * s.cols as u64 * s.samples as u64;
    let got = s.frame.samples().len();
    if got as u64 != expected {
        return bad(format!(
            "pixel count {got} != rows*cols*samples = {}*{}*{} = {expected}",
            s.rows, s.cols, s.samples
        ));
    }
    match (s.photometric, s.samples) {
        (Photometric::Rgb, 3) | (Photometric::Monochrome1 | Photometric::Monochrome2, 1) => {}
        (p, n) => return bad(format!("photometric {p:?} with {n} samples per pixel")),
    }
    if s.photometric == Photometric::Rgb && !(1..=32).contains(&s.bits_stored) {
        return bad(format!("bits_stored must be 1..=32, got {}", s.bits_stored));
    }
    if !(s.rescale_slope.is_finite() && s.rescale_intercept.is_finite()) {
        return bad(format!(
            "rescale slope/intercept must be finite, got {}/{}",
            s.rescale_slope, s.rescale_intercept
        ));
    }
    Ok(())
}

/// Where the window applied to a slice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSource {
    /// The model manifest's fixed window.
    Manifest,
    /// The file's Window Center/Width pair at this index (0 = the first pair).
    File { index: usize },
    /// The frame's rescaled min/max: the file has no valid window.
    MinMax,
}

/// The window a monochrome slice is (or was) windowed with, and why.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowChoice {
    pub source: WindowSource,
    /// The file carries a window pair that was skipped as invalid (width < 1 or not finite) before the
    /// chosen one. Always false with a manifest window: the file's windows are not consulted then.
    pub file_window_invalid: bool,
    /// The (c, w) applied, as DICOM defines them (for min/max: `c = (lo + hi)/2 + 0.5`, `w = hi − lo + 1`).
    pub center: f64,
    pub width: f64,
}

/// The window the finding reports: that of the first output channel ([`choose_windows`]), `None` for
/// colour slices. With windows stacked as channels the other channels' windows are the manifest's
/// (source `Manifest`), so the first one says where all of them came from.
pub fn choose_window(spec: &PreprocessSpec, s: &SliceView<'_>) -> Option<WindowChoice> {
    choose_windows(spec, s).into_iter().next()
}

/// The window rule of the specification, the one place it is decided: one window per output channel
/// (`spec.channels` of them) — the manifest's windows for the slice's modality, else its default
/// windows (one replicated to every channel, or one per channel), else the file's first valid pair,
/// else the frame's rescaled min/max (both replicated). Empty for colour slices (no window applies).
/// The slice must have passed validation (finite min/max, slope and intercept); the manifest windows
/// are checked by [`PreprocessSpec::validate`].
pub fn choose_windows(spec: &PreprocessSpec, s: &SliceView<'_>) -> Vec<WindowChoice> {
    if s.photometric == Photometric::Rgb {
        return Vec::new();
    }
    let c = spec.channels as usize;
    let manifest = spec
        .window
        .as_ref()
        .map_or(&[][..], |m| m.for_modality(s.modality));
    if !manifest.is_empty() {
        return (0..c)
            .map(|k| {
                let w = manifest[k.min(manifest.len() - 1)];
                WindowChoice {
                    source: WindowSource::Manifest,
                    file_window_invalid: false,
                    center: w.center,
                    width: w.width,
                }
            })
            .collect();
    }
    vec![file_window(s); c]
}

/// The file's rule: its first valid pair, else the frame's rescaled min/max.
fn file_window(s: &SliceView<'_>) -> WindowChoice {
    let first_valid = s.file_windows.iter().position(Window::is_valid);
    let file_window_invalid = first_valid.unwrap_or(s.file_windows.len()) > 0;
    if let Some(index) = first_valid {
        let w = s.file_windows[index];
        return WindowChoice {
            source: WindowSource::File { index },
            file_window_invalid,
            center: w.center,
            width: w.width,
        };
    }
    // Rescale min/max with the same f32 arithmetic the kernels apply per pixel, so a constant frame
    // lands exactly on the window's lower edge (-> 0) rather than one ulp either side of it.
    let (slope32, intercept32) = (s.rescale_slope as f32, s.rescale_intercept as f32);
    let (min, max) = s.frame.min_max();
    let a = (min * slope32 + intercept32) as f64;
    let b = (max * slope32 + intercept32) as f64;
    let (lo, hi) = (a.min(b), a.max(b));
    WindowChoice {
        source: WindowSource::MinMax,
        file_window_invalid,
        center: (lo + hi) / 2.0 + 0.5,
        width: hi - lo + 1.0,
    }
}

/// Resolves a validated slice into the parameters both paths consume.
pub(crate) fn resolve_slice(spec: &PreprocessSpec, s: &SliceView<'_>, offset: u32) -> SliceParams {
    let slope32 = s.rescale_slope as f32;
    let intercept32 = s.rescale_intercept as f32;
    let mut flags = 0;
    let mut win_lo = [0.0f32; MAX_STACKED_WINDOWS];
    let mut win_wm1 = [0.0f32; MAX_STACKED_WINDOWS];
    let mut color_scale = 0.0f32;
    if s.photometric == Photometric::Rgb {
        flags |= FLAG_COLOR;
        color_scale = (1.0 / ((2.0f64).powi(s.bits_stored as i32) - 1.0)) as f32;
    } else {
        if s.photometric == Photometric::Monochrome1 {
            flags |= FLAG_INVERT;
        }
        // Window k as (c - 0.5, w - 1) in f64, cast once; lanes past the channel count repeat the
        // last channel's window (the shader computes every lane).
        let chosen = choose_windows(spec, s);
        for k in 0..MAX_STACKED_WINDOWS {
            let Some(w) = chosen.get(k).or(chosen.last()) else {
                break;
            };
            let (lo, wm1) = (w.center - 0.5, w.width - 1.0);
            win_lo[k] = lo as f32;
            // w <= 1  <=>  w - 1 <= 0 (decided in f64, before the cast).
            if wm1 <= 0.0 {
                flags |= FLAG_STEP << k;
            } else {
                win_wm1[k] = wm1 as f32;
            }
        }
    }
    SliceParams {
        offset,
        rows: s.rows,
        cols: s.cols,
        flags,
        slope: slope32,
        intercept: intercept32,
        win_lo,
        win_wm1,
        color_scale,
        format: s.frame.samples().format().packed(),
        _pad: [0.0; 2],
    }
}

/// Bytes a slice takes in the packed input: its stored samples, padded to a whole word.
pub(crate) fn packed_len(s: &SliceView<'_>) -> u64 {
    (s.frame.samples().as_bytes().len() as u64).next_multiple_of(4)
}

/// Validates spec, slices and output size, and resolves every slice; input
/// offsets are assigned as if the slices were packed back to back. For a context spec `slices` holds
/// 2k+1 views per model slice (see the module docs): each view keeps its own rescale, photometric and
/// geometry, and takes the window of its stack's centre view.
pub(crate) fn resolve_batch(
    spec: &PreprocessSpec,
    slices: &[SliceView<'_>],
    out_len: usize,
) -> Result<Vec<SliceParams>, PreprocessError> {
    spec.validate()?;
    let stack = spec.stack();
    if slices.len() % stack != 0 {
        return Err(PreprocessError::InvalidSpec {
            detail: format!(
                "context {} needs {stack} views per slice, got {} views (not a multiple of {stack})",
                spec.context,
                slices.len()
            ),
        });
    }
    let expected = spec.output_len(slices.len() / stack);
    if out_len != expected {
        return Err(PreprocessError::OutputSize {
            expected,
            got: out_len,
        });
    }
    let mut params = Vec::with_capacity(slices.len());
    let mut offset: u64 = 0;
    for (i, s) in slices.iter().enumerate() {
        validate_slice(i, s)?;
        if spec.context > 0 && s.photometric == Photometric::Rgb {
            return Err(PreprocessError::InvalidSlice {
                index: i,
                detail: format!(
                    "a 2.5D model (context = {}) stacks monochrome slices; a colour (RGB) slice has no \
                     window to share with its neighbours and cannot be stacked",
                    spec.context
                ),
            });
        }
        let off = u32::try_from(offset).map_err(|_| PreprocessError::BatchTooLarge {
            what: "packed input (bytes, u32 byte offsets)",
            needed: offset,
            limit: u32::MAX as u64,
        })?;
        params.push(resolve_slice(spec, s, off));
        offset += packed_len(s);
    }
    if spec.context > 0 {
        // Every view of a stack is windowed with its centre's window (one window per input).
        let centre = spec.context as usize;
        for stack_params in params.chunks_exact_mut(stack) {
            let c = stack_params[centre];
            for p in stack_params.iter_mut() {
                p.win_lo = c.win_lo;
                p.win_wm1 = c.win_wm1;
                let step_bits = ((1u32 << MAX_STACKED_WINDOWS) - 1) * FLAG_STEP;
                p.flags = (p.flags & !step_bits) | (c.flags & step_bits);
            }
        }
    }
    Ok(params)
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    use crate::decode::{SampleFormat, Samples};

    /// Owned pixels + metadata from which test `SliceView`s are borrowed.
    #[derive(Debug, Clone)]
    pub struct OwnedSlice {
        pub pixels: Frame,
        pub rows: u32,
        pub cols: u32,
        pub samples: u32,
        pub photometric: Photometric,
        pub slope: f64,
        pub intercept: f64,
        pub file_windows: Vec<Window>,
        pub bits_stored: u16,
        pub modality: Option<&'static str>,
    }

    /// Integer values as stored samples of `width` bytes with `bits` bits stored.
    pub fn stored(values: Vec<f32>, width: usize, bits: u16, signed: bool) -> Frame {
        let format = SampleFormat::new(width, bits, signed).expect("a DICOM sample format");
        Frame::new(Samples::from_values(
            values.into_iter().map(|v| v as i64),
            format,
        ))
    }

    /// Integer values as 32-bit signed samples (any value the hand-computed tests use).
    pub fn wide(values: Vec<f32>) -> Frame {
        stored(values, 4, 32, true)
    }

    impl OwnedSlice {
        pub fn view(&self) -> SliceView<'_> {
            SliceView {
                frame: &self.pixels,
                rows: self.rows,
                cols: self.cols,
                samples: self.samples,
                photometric: self.photometric,
                rescale_slope: self.slope,
                rescale_intercept: self.intercept,
                file_windows: &self.file_windows,
                bits_stored: self.bits_stored,
                modality: self.modality,
            }
        }

        /// Monochrome, 32-bit signed samples.
        pub fn mono(rows: u32, cols: u32, pixels: Vec<f32>) -> Self {
            Self::mono_stored(rows, cols, wide(pixels), 16)
        }

        pub fn mono_stored(rows: u32, cols: u32, pixels: Frame, bits_stored: u16) -> Self {
            Self {
                pixels,
                rows,
                cols,
                samples: 1,
                photometric: Photometric::Monochrome2,
                slope: 1.0,
                intercept: 0.0,
                file_windows: Vec::new(),
                bits_stored,
                modality: None,
            }
        }
    }

    /// Deterministic xorshift noise in [0, 1).
    pub struct Rng(u64);
    impl Rng {
        pub fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }
        pub fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// Integer stored values in [lo, hi]: a smooth gradient/blob plus noise,
    /// so both flat regions and edges are exercised.
    pub fn field(rows: u32, cols: u32, samples: u32, lo: f32, hi: f32, seed: u64) -> Vec<f32> {
        let mut rng = Rng::new(seed);
        let mut v = Vec::with_capacity((rows * cols * samples) as usize);
        for y in 0..rows {
            for x in 0..cols {
                for s in 0..samples {
                    let gy = y as f32 / rows as f32;
                    let gx = x as f32 / cols as f32;
                    let blob = (-((gx - 0.5).powi(2) + (gy - 0.4).powi(2)) * 12.0).exp();
                    let t = (0.45 * blob + 0.25 * gx + 0.1 * s as f32 / 3.0 + 0.3 * rng.next())
                        .clamp(0.0, 1.0);
                    v.push((lo + t * (hi - lo)).round());
                }
            }
        }
        v
    }

    /// CT-like: unsigned 16-bit stored 0..4024 with intercept -1024 (HU -1024..3000).
    pub fn ct(rows: u32, cols: u32, seed: u64) -> OwnedSlice {
        let px = stored(field(rows, cols, 1, 0.0, 4024.0, seed), 2, 16, false);
        OwnedSlice {
            intercept: -1024.0,
            file_windows: vec![Window {
                center: 40.0,
                width: 400.0,
            }],
            ..OwnedSlice::mono_stored(rows, cols, px, 16)
        }
    }

    /// Signed 16-bit stored values -1024..3000 with a non-trivial slope/intercept.
    pub fn ct_signed(rows: u32, cols: u32, seed: u64) -> OwnedSlice {
        let px = stored(field(rows, cols, 1, -1024.0, 3000.0, seed), 2, 16, true);
        OwnedSlice {
            slope: 0.5,
            intercept: -100.25,
            ..OwnedSlice::mono_stored(rows, cols, px, 16)
        }
    }

    /// MONOCHROME1 12-bit radiograph (12 of 16 bits stored) with a file window.
    pub fn xray_mono1(rows: u32, cols: u32, seed: u64) -> OwnedSlice {
        let px = stored(field(rows, cols, 1, 0.0, 4095.0, seed), 2, 12, false);
        OwnedSlice {
            photometric: Photometric::Monochrome1,
            file_windows: vec![Window {
                center: 2047.0,
                width: 3000.0,
            }],
            ..OwnedSlice::mono_stored(rows, cols, px, 12)
        }
    }

    /// 8-bit RGB.
    pub fn rgb8(rows: u32, cols: u32, seed: u64) -> OwnedSlice {
        OwnedSlice {
            pixels: stored(field(rows, cols, 3, 0.0, 255.0, seed), 1, 8, false),
            rows,
            cols,
            samples: 3,
            photometric: Photometric::Rgb,
            slope: 1.0,
            intercept: 0.0,
            file_windows: Vec::new(),
            bits_stored: 8,
            modality: None,
        }
    }

    pub fn spec(channels: u32, height: u32, width: u32, window: Option<Window>) -> PreprocessSpec {
        PreprocessSpec {
            channels,
            height,
            width,
            window: window.map(ManifestWindows::from),
            mean: [0.485f32, 0.456, 0.406][..channels as usize].to_vec(),
            std: [0.229f32, 0.224, 0.225][..channels as usize].to_vec(),
            context: 0,
        }
    }

    /// A 2.5D spec: context `k`, 2k+1 channels with distinct means and stds.
    pub fn context_spec(k: u32, height: u32, width: u32, window: Option<Window>) -> PreprocessSpec {
        let c = 2 * k as usize + 1;
        PreprocessSpec {
            channels: c as u32,
            height,
            width,
            window: window.map(ManifestWindows::from),
            mean: (0..c).map(|i| 0.1 * i as f32).collect(),
            std: (0..c).map(|i| 0.2 + 0.05 * i as f32).collect(),
            context: k,
        }
    }

    pub fn views(owned: &[OwnedSlice]) -> Vec<SliceView<'_>> {
        owned.iter().map(OwnedSlice::view).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::*;
    use super::*;

    fn run_cpu(spec: &PreprocessSpec, owned: &[OwnedSlice]) -> Result<Vec<f32>, PreprocessError> {
        let mut out = vec![0.0; spec.output_len(owned.len())];
        CpuPreprocessor.preprocess(spec, &views(owned), &mut out)?;
        Ok(out)
    }

    #[test]
    fn spec_validation_rejects_bad_specs() {
        let ok = spec(3, 8, 8, None);
        ok.validate().unwrap();
        let cases: Vec<(&str, PreprocessSpec)> = vec![
            (
                "channels",
                PreprocessSpec {
                    channels: 2,
                    mean: vec![0.0; 2],
                    std: vec![1.0; 2],
                    ..ok.clone()
                },
            ),
            (
                "height",
                PreprocessSpec {
                    height: 0,
                    ..ok.clone()
                },
            ),
            (
                "width",
                PreprocessSpec {
                    width: 0,
                    ..ok.clone()
                },
            ),
            (
                "mean len",
                PreprocessSpec {
                    mean: vec![0.0],
                    ..ok.clone()
                },
            ),
            (
                "std len",
                PreprocessSpec {
                    std: vec![1.0; 4],
                    ..ok.clone()
                },
            ),
            (
                "std zero",
                PreprocessSpec {
                    std: vec![1.0, 0.0, 1.0],
                    ..ok.clone()
                },
            ),
            (
                "std negative",
                PreprocessSpec {
                    std: vec![1.0, -1.0, 1.0],
                    ..ok.clone()
                },
            ),
            (
                "std nan",
                PreprocessSpec {
                    std: vec![1.0, f32::NAN, 1.0],
                    ..ok.clone()
                },
            ),
            (
                "window inf",
                PreprocessSpec {
                    window: Some(
                        Window {
                            center: f64::INFINITY,
                            width: 1.0,
                        }
                        .into(),
                    ),
                    ..ok.clone()
                },
            ),
            (
                "window width 0",
                PreprocessSpec {
                    window: Some(
                        Window {
                            center: 0.0,
                            width: 0.0,
                        }
                        .into(),
                    ),
                    ..ok.clone()
                },
            ),
            (
                "window width 0.5",
                PreprocessSpec {
                    window: Some(
                        Window {
                            center: 40.0,
                            width: 0.5,
                        }
                        .into(),
                    ),
                    ..ok.clone()
                },
            ),
            (
                "window width nan",
                PreprocessSpec {
                    window: Some(
                        Window {
                            center: 40.0,
                            width: f64::NAN,
                        }
                        .into(),
                    ),
                    ..ok.clone()
                },
            ),
        ];
        for (what, s) in cases {
            match s.validate() {
                Err(PreprocessError::InvalidSpec { .. }) => {}
                other => panic!("{what}: expected InvalidSpec, got {other:?}"),
            }
            // And the preprocessor surfaces the same error before touching pixels.
            let one = [OwnedSlice::mono(1, 1, vec![0.0])];
            let mut out = vec![0.0; s.output_len(1)];
            assert!(
                matches!(
                    CpuPreprocessor.preprocess(&s, &views(&one), &mut out),
                    Err(PreprocessError::InvalidSpec { .. })
                ),
                "{what}"
            );
        }
    }

    #[test]
    fn slice_validation_rejects_bad_slices() {
        let s = spec(1, 4, 4, None);
        let good = OwnedSlice::mono(2, 2, vec![0.0; 4]);
        let cases: Vec<(&str, OwnedSlice)> = vec![
            (
                "len mismatch",
                OwnedSlice {
                    pixels: wide(vec![0.0; 3]),
                    ..good.clone()
                },
            ),
            (
                "zero rows",
                OwnedSlice {
                    rows: 0,
                    pixels: wide(vec![]),
                    ..good.clone()
                },
            ),
            (
                "zero cols",
                OwnedSlice {
                    cols: 0,
                    pixels: wide(vec![]),
                    ..good.clone()
                },
            ),
            (
                "samples 2",
                OwnedSlice {
                    samples: 2,
                    pixels: wide(vec![0.0; 8]),
                    ..good.clone()
                },
            ),
            (
                "rgb with 1 sample",
                OwnedSlice {
                    photometric: Photometric::Rgb,
                    ..good.clone()
                },
            ),
            (
                "mono with 3 samples",
                OwnedSlice {
                    samples: 3,
                    pixels: wide(vec![0.0; 12]),
                    ..good.clone()
                },
            ),
            (
                "rgb bits 0",
                OwnedSlice {
                    bits_stored: 0,
                    ..rgb8(2, 2, 1)
                },
            ),
            (
                "slope nan",
                OwnedSlice {
                    slope: f64::NAN,
                    ..good.clone()
                },
            ),
        ];
        for (what, bad) in cases {
            // The bad slice is second in the batch: the index must say so.
            let batch = [good.clone(), bad];
            match run_cpu(&s, &batch) {
                Err(PreprocessError::InvalidSlice { index: 1, detail }) => {
                    assert!(!detail.is_empty(), "{what}")
                }
                other => panic!("{what}: expected InvalidSlice{{index: 1}}, got {other:?}"),
            }
        }
    }

    #[test]
    fn output_size_is_checked() {
        let s = spec(3, 4, 5, None);
        let one = [OwnedSlice::mono(2, 2, vec![0.0; 4])];
        let mut out = vec![0.0; 59];
        match CpuPreprocessor.preprocess(&s, &views(&one), &mut out) {
            Err(PreprocessError::OutputSize {
                expected: 60,
                got: 59,
            }) => {}
            other => panic!("expected OutputSize, got {other:?}"),
        }
    }

    #[test]
    fn window_resolution_precedence() {
        let manifest = Window {
            center: 40.0,
            width: 400.0,
        };
        let file = Window {
            center: 300.0,
            width: 1500.0,
        };
        let sl = OwnedSlice {
            file_windows: vec![file],
            intercept: -1024.0,
            ..OwnedSlice::mono(1, 2, vec![24.0, 1024.0])
        };
        let v = sl.view();
        let p = resolve_slice(&spec(1, 1, 1, Some(manifest)), &v, 0);
        assert_eq!((p.win_lo[0], p.win_wm1[0]), (39.5, 399.0));
        let p = resolve_slice(&spec(1, 1, 1, None), &v, 0);
        assert_eq!((p.win_lo[0], p.win_wm1[0]), (299.5, 1499.0));
        // min/max of rescaled values: lo = -1000, hi = 0 -> c = -499.5, w = 1001.
        let sl = OwnedSlice {
            file_windows: Vec::new(),
            ..sl
        };
        let p = resolve_slice(&spec(1, 1, 1, None), &sl.view(), 0);
        assert_eq!((p.win_lo[0], p.win_wm1[0], p.flags), (-500.0, 1000.0, 0));
        // Negative slope flips min/max: -48 and -2048 -> c - 0.5 = -1048, w - 1 = 2000.
        let sl = OwnedSlice {
            slope: -2.0,
            intercept: 0.0,
            ..sl
        };
        let p = resolve_slice(&spec(1, 1, 1, None), &sl.view(), 0);
        assert_eq!((p.win_lo[0], p.win_wm1[0]), (-1048.0, 2000.0));
        // w <= 1 -> step flag.
        let p = resolve_slice(
            &spec(
                1,
                1,
                1,
                Some(Window {
                    center: 10.0,
                    width: 1.0,
                }),
            ),
            &sl.view(),
            0,
        );
        assert_eq!((p.flags & FLAG_STEP, p.win_lo[0]), (FLAG_STEP, 9.5));
        assert_eq!(std::mem::size_of::<SliceParams>(), 64);
        assert_eq!(std::mem::size_of::<SpecParams>(), 96);
    }

    fn win(center: f64, width: f64) -> Window {
        Window { center, width }
    }

    /// An MR-like slice: stored 0..=884, no rescale, with the given file windows.
    fn mr(file_windows: Vec<Window>) -> OwnedSlice {
        let mut px = field(16, 16, 1, 0.0, 884.0, 3);
        px[0] = 0.0;
        px[1] = 884.0;
        OwnedSlice {
            file_windows,
            ..OwnedSlice::mono(16, 16, px)
        }
    }

    #[test]
    fn invalid_file_windows_are_skipped_for_min_max_and_said_so() {
        let none = spec(1, 8, 8, None);
        // min/max of 0..=884: c = 442 + 0.5, w = 885.
        let minmax = (442.5, 885.0);
        let nan = f64::NAN;
        let inf = f64::INFINITY;
        for (what, windows) in [
            ("width 0 (as scanners export it)", vec![win(0.0, 0.0)]),
            ("width 0.5", vec![win(40.0, 0.5)]),
            ("width just under 1", vec![win(40.0, 1.0 - 1e-12)]),
            ("negative width", vec![win(40.0, -400.0)]),
            ("width NaN", vec![win(40.0, nan)]),
            ("centre NaN", vec![win(nan, 400.0)]),
            ("width inf", vec![win(40.0, inf)]),
            ("centre -inf", vec![win(-inf, 400.0)]),
            ("every pair invalid", vec![win(0.0, 0.0), win(nan, 1.0)]),
        ] {
            let sl = mr(windows);
            let v = sl.view();
            let c = choose_window(&none, &v).expect("monochrome");
            assert_eq!(c.source, WindowSource::MinMax, "{what}");
            assert!(c.file_window_invalid, "{what}");
            assert_eq!((c.center, c.width), minmax, "{what}");
            // The slice is preprocessed (no longer an error), exactly like a slice without a window,
            // and it is not the all-ones threshold image that applying 0/0 produced.
            let out = run_cpu(&none, std::slice::from_ref(&sl)).expect(what);
            let plain = run_cpu(&none, &[mr(Vec::new())]).expect("no window");
            assert_eq!(out, plain, "{what}");
            let p = resolve_slice(&none, &v, 0);
            assert_eq!(
                (p.win_lo[0], p.win_wm1[0], p.flags),
                (442.0, 884.0, 0),
                "{what}"
            );
        }
        // No window at all: min/max, and nothing was invalid.
        let c = choose_window(&none, &mr(Vec::new()).view()).expect("monochrome");
        assert_eq!(
            (c.source, c.file_window_invalid),
            (WindowSource::MinMax, false)
        );
    }

    #[test]
    fn the_first_valid_file_pair_is_used() {
        let none = spec(1, 8, 8, None);
        // Width exactly 1 is valid: the step function, not a skip.
        let sl = mr(vec![win(300.0, 1.0)]);
        let c = choose_window(&none, &sl.view()).expect("mono");
        assert_eq!(c.source, WindowSource::File { index: 0 });
        assert!(!c.file_window_invalid);
        let p = resolve_slice(&none, &sl.view(), 0);
        assert_eq!((p.win_lo[0], p.flags & FLAG_STEP), (299.5, FLAG_STEP));
        // An invalid first pair is skipped for the second, and the finding will say so.
        let sl = mr(vec![win(0.0, 0.0), win(40.0, 400.0), win(1.0, 2.0)]);
        let c = choose_window(&none, &sl.view()).expect("mono");
        assert_eq!(
            c,
            WindowChoice {
                source: WindowSource::File { index: 1 },
                file_window_invalid: true,
                center: 40.0,
                width: 400.0,
            }
        );
        let p = resolve_slice(&none, &sl.view(), 0);
        assert_eq!((p.win_lo[0], p.win_wm1[0], p.flags), (39.5, 399.0, 0));
        // A valid first pair wins over later ones; later invalid pairs do not matter.
        let sl = mr(vec![win(40.0, 400.0), win(0.0, 0.0)]);
        let c = choose_window(&none, &sl.view()).expect("mono");
        assert_eq!(
            (c.source, c.file_window_invalid),
            (WindowSource::File { index: 0 }, false)
        );
    }

    #[test]
    fn a_manifest_window_wins_and_colour_has_none() {
        let fixed = spec(1, 8, 8, Some(win(40.0, 400.0)));
        let sl = mr(vec![win(0.0, 0.0)]);
        let c = choose_window(&fixed, &sl.view()).expect("mono");
        assert_eq!(
            c,
            WindowChoice {
                source: WindowSource::Manifest,
                file_window_invalid: false,
                center: 40.0,
                width: 400.0,
            }
        );
        assert_eq!(choose_window(&fixed, &rgb8(4, 4, 1).view()), None);
    }

    #[test]
    fn stacked_and_per_modality_windows_are_chosen_per_channel() {
        let brain = win(40.0, 80.0);
        let subdural = win(80.0, 200.0);
        let bone = win(600.0, 2800.0);
        let manifest = |source, w: Window| WindowChoice {
            source,
            file_window_invalid: false,
            center: w.center,
            width: w.width,
        };
        let stacked = PreprocessSpec {
            window: Some(ManifestWindows {
                default: vec![brain, subdural, bone],
                by_modality: [("MR".to_string(), vec![win(300.0, 600.0)])].into(),
            }),
            ..spec(3, 8, 8, None)
        };
        let ct = OwnedSlice {
            modality: Some("CT"),
            ..mr(vec![win(1.0, 2.0)])
        };
        let chosen = choose_windows(&stacked, &ct.view());
        let m = WindowSource::Manifest;
        assert_eq!(
            chosen,
            [manifest(m, brain), manifest(m, subdural), manifest(m, bone)]
        );
        // The finding reports the first channel's.
        assert_eq!(choose_window(&stacked, &ct.view()), Some(chosen[0]));
        let p = resolve_slice(&stacked, &ct.view(), 0);
        assert_eq!(
            (p.win_lo, p.win_wm1, p.flags),
            ([39.5, 79.5, 599.5], [79.0, 199.0, 2799.0], 0)
        );
        // MR has its own single window, on every channel.
        let mr_slice = OwnedSlice {
            modality: Some("MR"),
            ..ct.clone()
        };
        assert_eq!(
            choose_windows(&stacked, &mr_slice.view()),
            [manifest(m, win(300.0, 600.0)); 3]
        );
        // A CT-only manifest: other modalities (and none) keep the file's rule, replicated.
        let ct_only = PreprocessSpec {
            window: Some(ManifestWindows {
                default: Vec::new(),
                by_modality: [("CT".to_string(), vec![brain, subdural, bone])].into(),
            }),
            ..stacked.clone()
        };
        let file = WindowChoice {
            source: WindowSource::File { index: 0 },
            file_window_invalid: false,
            center: 1.0,
            width: 2.0,
        };
        assert_eq!(choose_windows(&ct_only, &mr_slice.view()), [file; 3]);
        let unknown = OwnedSlice {
            modality: None,
            ..ct.clone()
        };
        assert_eq!(choose_windows(&ct_only, &unknown.view()), [file; 3]);
        assert_eq!(choose_windows(&ct_only, &ct.view())[2], manifest(m, bone));
        // A step window (w = 1) in the middle channel only sets that channel's step bit.
        let step = PreprocessSpec {
            window: Some(ManifestWindows::stacked(vec![brain, win(10.0, 1.0), bone])),
            ..stacked.clone()
        };
        let p = resolve_slice(&step, &ct.view(), 0);
        assert_eq!(p.flags, FLAG_STEP << 1);
        // Colour: no window, stacked or not, and the output is the unwindowed colour one.
        let rgb = rgb8(4, 4, 1);
        assert!(choose_windows(&stacked, &rgb.view()).is_empty());
        assert_eq!(
            run_cpu(&stacked, std::slice::from_ref(&rgb)).expect("rgb"),
            run_cpu(&spec(3, 8, 8, None), &[rgb]).expect("rgb")
        );
        // Channel k of the stacked output is the single-window output of window k.
        let out = run_cpu(&stacked, std::slice::from_ref(&ct)).expect("stacked");
        for (k, w) in [brain, subdural, bone].into_iter().enumerate() {
            let one = run_cpu(&spec(3, 8, 8, Some(w)), std::slice::from_ref(&ct)).expect("one");
            assert_eq!(
                out[k * 64..(k + 1) * 64],
                one[k * 64..(k + 1) * 64],
                "channel {k}"
            );
        }
    }

    #[test]
    fn stacked_window_lists_must_fit_the_channels() {
        let three = vec![win(40.0, 80.0), win(80.0, 200.0), win(600.0, 2800.0)];
        for (what, channels, windows) in [
            (
                "two windows for three channels",
                3,
                ManifestWindows::stacked(three[..2].to_vec()),
            ),
            (
                "three windows for one channel",
                1,
                ManifestWindows::stacked(three.clone()),
            ),
            (
                "an invalid stacked window",
                3,
                ManifestWindows::stacked(vec![three[0], win(0.0, 0.0), three[2]]),
            ),
            (
                "an empty modality list",
                1,
                ManifestWindows {
                    default: Vec::new(),
                    by_modality: [("CT".to_string(), Vec::new())].into(),
                },
            ),
        ] {
            let s = PreprocessSpec {
                window: Some(windows),
                ..spec(channels, 4, 4, None)
            };
            assert!(
                matches!(s.validate(), Err(PreprocessError::InvalidSpec { .. })),
                "{what}"
            );
        }
    }
    fn run_stack(spec: &PreprocessSpec, owned: &[OwnedSlice]) -> Result<Vec<f32>, PreprocessError> {
        let mut out = vec![f32::NAN; spec.output_len(owned.len() / spec.stack())];
        CpuPreprocessor.preprocess(spec, &views(owned), &mut out)?;
        Ok(out)
    }

    /// A stack of views with different sizes, rescales, file windows and photometrics.
    fn stack_views(seed: u64) -> Vec<OwnedSlice> {
        vec![
            OwnedSlice {
                intercept: -1000.0,
                ..ct(20, 24, seed)
            },
            mr(vec![win(300.0, 500.0)]),
            OwnedSlice {
                file_windows: Vec::new(),
                ..ct_signed(16, 16, seed + 1)
            },
            xray_mono1(12, 30, seed + 2),
            ct(24, 20, seed + 3),
        ]
    }

    #[test]
    fn a_context_stack_takes_channel_c_from_view_c_with_the_centre_window() {
        for k in [1u32, 2] {
            let cs = context_spec(k, 9, 7, None);
            let stack = cs.stack();
            let plane = 9 * 7;
            // Two model slices: the second stack is the first one reversed.
            let mut owned: Vec<OwnedSlice> = stack_views(10 * u64::from(k))[..stack].to_vec();
            owned.extend(owned.clone().into_iter().rev());
            let out = run_stack(&cs, &owned).expect("stack");
            for (i, views) in owned.chunks(stack).enumerate() {
                let centre = &views[k as usize];
                let chosen = choose_window(&cs, &centre.view()).expect("mono");
                for (c, v) in views.iter().enumerate() {
                    let alone = PreprocessSpec {
                        window: Some(
                            Window {
                                center: chosen.center,
                                width: chosen.width,
                            }
                            .into(),
                        ),
                        mean: vec![cs.mean[c]],
                        std: vec![cs.std[c]],
                        ..spec(1, 9, 7, None)
                    };
                    let one = run_cpu(&alone, std::slice::from_ref(v)).expect("alone");
                    let at = (i * stack + c) * plane;
                    assert_eq!(out[at..at + plane], one[..], "k={k} slice {i} channel {c}");
                }
            }
            // A manifest window applies to the whole stack alike.
            let fixed = context_spec(k, 9, 7, Some(win(40.0, 400.0)));
            let out = run_stack(&fixed, &owned[..stack]).expect("fixed");
            let alone = PreprocessSpec {
                mean: vec![fixed.mean[0]],
                std: vec![fixed.std[0]],
                ..spec(1, 9, 7, Some(win(40.0, 400.0)))
            };
            let one = run_cpu(&alone, &owned[..1]).expect("alone");
            assert_eq!(out[..plane], one[..]);
        }
    }

    #[test]
    fn context_specs_and_stacks_are_validated() {
        let ok = context_spec(1, 4, 4, None);
        ok.validate().expect("valid");
        let three = [ct(4, 4, 1), ct(4, 4, 2), ct(4, 4, 3)];
        // Views must come in whole stacks.
        let mut out = vec![0.0; ok.output_len(1)];
        assert!(matches!(
            CpuPreprocessor.preprocess(&ok, &views(&three[..2]), &mut out),
            Err(PreprocessError::InvalidSpec { .. })
        ));
        // A colour view cannot be stacked.
        let with_rgb = [ct(4, 4, 1), rgb8(4, 4, 2), ct(4, 4, 3)];
        match CpuPreprocessor.preprocess(&ok, &views(&with_rgb), &mut out) {
            Err(PreprocessError::InvalidSlice { index: 1, detail }) => {
                assert!(detail.contains("colour"), "{detail}")
            }
            other => panic!("expected InvalidSlice, got {other:?}"),
        }
        for (what, bad) in [
            (
                "channels not 2k+1",
                PreprocessSpec {
                    context: 2,
                    ..ok.clone()
                },
            ),
            (
                "context over the cap",
                PreprocessSpec {
                    context: MAX_CONTEXT + 1,
                    channels: 2 * MAX_CONTEXT + 3,
                    mean: vec![0.0; 2 * MAX_CONTEXT as usize + 3],
                    std: vec![1.0; 2 * MAX_CONTEXT as usize + 3],
                    ..ok.clone()
                },
            ),
            (
                "windows stacked as channels",
                PreprocessSpec {
                    window: Some(ManifestWindows::stacked(vec![
                        win(40.0, 80.0),
                        win(80.0, 200.0),
                        win(600.0, 2800.0),
                    ])),
                    ..ok.clone()
                },
            ),
        ] {
            assert!(
                matches!(bad.validate(), Err(PreprocessError::InvalidSpec { .. })),
                "{what}"
            );
        }
        // Seven channels (k = 3) are fine.
        context_spec(MAX_CONTEXT, 4, 4, None)
            .validate()
            .expect("k = 3");
    }
}
