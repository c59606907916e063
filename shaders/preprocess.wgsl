// Fused preprocessing kernel: one invocation per output pixel (x, y) of slice z
// computes all C channels, so each stored value is read and windowed once per
// bilinear tap. Must stay formula-for-formula identical to
// src/preprocess/cpu.rs (the reference) and to the specification in src/preprocess/mod.rs.

// Mirrors `SpecParams` (96 bytes). `n` counts model slices; with `context` = k > 0 the slice array
// holds 2k+1 views per model slice and channel c of slice n is view n·channels + c alone.
// mean/stddev of channel c: [c / 4][c % 4] (up to 8 channels: a stack of 7).
struct Spec {
    n: u32,
    channels: u32,
    height: u32,
    width: u32,
    context: u32,
    pad_a: u32,
    pad_b: u32,
    pad_c: u32,
    mean: array<vec4<f32>, 2>,
    stddev: array<vec4<f32>, 2>,
}

// Mirrors `SliceParams` in src/preprocess/mod.rs (64 bytes, 4-byte aligned fields). Window k
// (win_lo_k, win_wm1_k, step bit FLAG_STEP << k) is the one of output channel k; scalars rather than
// arrays so that no array is indexed dynamically by value.
struct Slice {
    offset: u32,
    rows: u32,
    cols: u32,
    flags: u32,
    slope: f32,
    intercept: f32,
    win_lo0: f32,
    win_lo1: f32,
    win_lo2: f32,
    win_wm1_0: f32,
    win_wm1_1: f32,
    win_wm1_2: f32,
    color_scale: f32,
    // How the stored samples are read: width in bytes | bits stored << 8 | signed << 16.
    format: u32,
    pad1: f32,
    pad2: f32,
}

const FLAG_COLOR: u32 = 1u;
const FLAG_INVERT: u32 = 2u;
const FLAG_STEP: u32 = 4u;

@group(0) @binding(0) var<uniform> spec: Spec;
@group(0) @binding(1) var<storage, read> slices: array<Slice>;
// The slices' stored samples as uploaded (little endian, 1, 2 or 4 bytes each), each slice starting
// on a word at byte `Slice.offset`.
@group(0) @binding(2) var<storage, read> pixels: array<u32>;
@group(0) @binding(3) var<storage, read_write> dst: array<f32>;

// Stored sample i of slice s: its low `bits stored` bits, sign-extended when signed (as
// `SampleFormat::value` in src/decode/samples.rs: shift the stored bits up to bit 31 and back).
fn stored(s: Slice, i: u32) -> f32 {
    let width = s.format & 0xFFu;
    let shift = 32u - ((s.format >> 8u) & 0xFFu);
    let byte = s.offset + i * width;
    let word = pixels[byte / 4u];
    var raw = word;
    if (width == 2u) {
        raw = (word >> ((byte & 2u) * 8u)) & 0xFFFFu;
    } else if (width == 1u) {
        raw = (word >> ((byte & 3u) * 8u)) & 0xFFu;
    }
    if ((s.format & 0x10000u) != 0u) {
        return f32(bitcast<i32>(raw << shift) >> shift);
    }
    return f32((raw << shift) >> shift);
}

fn tap(s: Slice, iy: u32, ix: u32) -> vec3<f32> {
    let idx = iy * s.cols + ix;
    if ((s.flags & FLAG_COLOR) != 0u) {
        let b = idx * 3u;
        let c = vec3<f32>(
            min(max(stored(s, b) * s.color_scale, 0.0), 1.0),
            min(max(stored(s, b + 1u) * s.color_scale, 0.0), 1.0),
            min(max(stored(s, b + 2u) * s.color_scale, 0.0), 1.0),
        );
        if (spec.channels == 1u) {
            let l = 0.299 * c.x + 0.587 * c.y + 0.114 * c.z;
            return vec3<f32>(l, l, l);
        }
        return c;
    }
    let v = stored(s, idx) * s.slope + s.intercept;
    let inv = (s.flags & FLAG_INVERT) != 0u;
    return vec3<f32>(
        apply_window(v, s.win_lo0, s.win_wm1_0, (s.flags & FLAG_STEP) != 0u, inv),
        apply_window(v, s.win_lo1, s.win_wm1_1, (s.flags & (FLAG_STEP << 1u)) != 0u, inv),
        apply_window(v, s.win_lo2, s.win_wm1_2, (s.flags & (FLAG_STEP << 2u)) != 0u, inv),
    );
}

// One window (lower edge lo = c - 0.5, divisor wm1 = w - 1) applied to a rescaled value.
fn apply_window(v: f32, lo: f32, wm1: f32, step: bool, invert: bool) -> f32 {
    var y: f32;
    if (step) {
        y = select(0.0, 1.0, v > lo);
    } else {
        y = min(max((v - lo) / wm1 + 0.5, 0.0), 1.0);
    }
    if (invert) {
        y = 1.0 - y;
    }
    return y;
}

// Source coordinate along one axis for output index i of `out` samples over `n` input samples:
// the half-pixel position (i + 0.5)·n/out − 0.5 = ((2i + 1)·n − out) / (2·out), clamped to [0, n − 1],
// split into integer part and fraction with integer arithmetic so the fraction is exact to one f32
// rounding (as `axis` in src/preprocess/cpu.rs).
struct Axis {
    i0: u32,
    i1: u32,
    f: f32,
}

fn axis(i: u32, out: u32, n: u32) -> Axis {
    let num = i32((2u * i + 1u) * n) - i32(out);
    let den = 2u * out;
    if (num <= 0) {
        return Axis(0u, min(1u, n - 1u), 0.0);
    }
    let i0 = u32(num) / den;
    if (i0 >= n - 1u) {
        return Axis(n - 1u, n - 1u, 0.0);
    }
    return Axis(i0, i0 + 1u, f32(u32(num) % den) / f32(den));
}

fn norm_channel(v: f32, c: u32) -> f32 {
    return (v - spec.mean[c / 4u][c % 4u]) / spec.stddev[c / 4u][c % 4u];
}

// 2.5D: output channel c of model slice n is view n·channels + c (its own geometry and rescale; the
// window, shared by the stack, is already the centre view's in every view's lane 0). Monochrome only.
fn stacked(x: u32, y: u32, n: u32) {
    let plane = spec.height * spec.width;
    let base = n * spec.channels * plane + y * spec.width + x;
    for (var c = 0u; c < spec.channels; c = c + 1u) {
        let s = slices[n * spec.channels + c];
        let ax = axis(x, spec.width, s.cols);
        let ay = axis(y, spec.height, s.rows);
        let p00 = tap(s, ay.i0, ax.i0).x;
        let p01 = tap(s, ay.i0, ax.i1).x;
        let p10 = tap(s, ay.i1, ax.i0).x;
        let p11 = tap(s, ay.i1, ax.i1).x;
        let top = (1.0 - ax.f) * p00 + ax.f * p01;
        let bot = (1.0 - ax.f) * p10 + ax.f * p11;
        let v = (1.0 - ay.f) * top + ay.f * bot;
        dst[base + c * plane] = norm_channel(v, c);
    }
}

@compute @workgroup_size(16, 16, 1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let x = gid.x;
    let y = gid.y;
    let n = gid.z;
    if (x >= spec.width || y >= spec.height || n >= spec.n) {
        return;
    }
    if (spec.context > 0u) {
        stacked(x, y, n);
        return;
    }
    let s = slices[n];

    let ax = axis(x, spec.width, s.cols);
    let ay = axis(y, spec.height, s.rows);
    let x0 = ax.i0;
    let x1 = ax.i1;
    let fx = ax.f;
    let y0 = ay.i0;
    let y1 = ay.i1;
    let fy = ay.f;

    let p00 = tap(s, y0, x0);
    let p01 = tap(s, y0, x1);
    let p10 = tap(s, y1, x0);
    let p11 = tap(s, y1, x1);
    let top = (1.0 - fx) * p00 + fx * p01;
    let bot = (1.0 - fx) * p10 + fx * p11;
    let v = (1.0 - fy) * top + fy * bot;

    let plane = spec.height * spec.width;
    let base = n * spec.channels * plane + y * spec.width + x;
    for (var c = 0u; c < spec.channels; c = c + 1u) {
        dst[base + c * plane] = norm_channel(v[c], c);
    }
}
