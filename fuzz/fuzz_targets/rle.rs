//! The RLE Lossless decoder (PS3.5 Annex G, `src/decode/rle.rs`) on its own, two ways:
//!
//! - decode mode: arbitrary fragments and sizes must give `Ok` with exactly the declared number of
//!   bytes, or `Err`, never a panic or an allocation the input cannot justify;
//! - round-trip mode: arbitrary pixel bytes, encoded here by an independent PackBits / segment
//!   encoder, must decode to themselves.
//!
//! Input layout (so real files can seed it, see fuzz/README.md):
//! `[mode u8][frames u8][rows u16 LE][cols u16 LE][samples u8][bytes_per_sample u8]` then, in decode
//! mode, fragments as `[len u32 LE][len bytes]...` (the last one takes what is left), in round-trip
//! mode the pixel bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use radstream::decode::rle_decode_for_fuzzing as decode;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<8>() else {
        return;
    };
    let [mode, frames, r0, r1, c0, c1, samples, bps] = *head;
    let rows = u16::from_le_bytes([r0, r1]);
    let cols = u16::from_le_bytes([c0, c1]);
    if mode & 1 == 0 {
        decode_mode(rest, frames, rows, cols, samples, bps);
    } else {
        round_trip(rest, mode, frames, rows, cols, samples, bps);
    }
});

fn decode_mode(rest: &[u8], frames: u8, rows: u16, cols: u16, samples: u8, bps: u8) {
    let mut fragments = Vec::new();
    let mut r = rest;
    while !r.is_empty() {
        let (len, body) = match r.split_first_chunk::<4>() {
            Some((l, body)) => (u32::from_le_bytes(*l) as usize, body),
            None => (r.len(), r),
        };
        let n = len.min(body.len());
        fragments.push(body[..n].to_vec());
        r = &body[n..];
    }
    if let Ok(out) = decode(
        &fragments,
        u32::from(frames),
        u32::from(rows),
        u32::from(cols),
        u16::from(samples),
        usize::from(bps),
    ) {
        let expected = usize::from(frames)
            * usize::from(rows)
            * usize::from(cols)
            * usize::from(samples)
            * usize::from(bps);
        assert_eq!(
            out.len(),
            expected,
            "decoded length differs from the declared size"
        );
    }
}

fn round_trip(pixels: &[u8], mode: u8, frames: u8, rows: u16, cols: u16, samples: u8, bps: u8) {
    let frames = 1 + usize::from(frames % 4);
    let rows = 1 + usize::from(rows % 48);
    let cols = 1 + usize::from(cols % 48);
    let spp = if samples & 1 == 0 { 1 } else { 3 };
    let bps = [1usize, 2, 4, 4][usize::from(bps % 4)];
    let px = rows * cols;
    let frame_len = px * spp * bps;
    // the image: the input bytes, repeated to fill it (zeros if there are none)
    let image: Vec<u8> = (0..frames * frame_len)
        .map(|i| {
            if pixels.is_empty() {
                0
            } else {
                pixels[i % pixels.len()]
            }
        })
        .collect();
    let nseg = spp * bps;
    let mut fragments = Vec::new();
    for f in 0..frames {
        let frame = &image[f * frame_len..(f + 1) * frame_len];
        let mut segments = Vec::new();
        for seg in 0..nseg {
            let sample = seg / bps;
            let le_byte = bps - 1 - seg % bps;
            let plane: Vec<u8> = (0..px)
                .map(|p| frame[(p * spp + sample) * bps + le_byte])
                .collect();
            let mut enc = pack_bits(&plane, mode & 2 != 0);
            if enc.len() % 2 == 1 {
                enc.push(0x80); // PS3.5 G.3.1: segments have even length; -128 is a no-op
            }
            segments.push(enc);
        }
        let mut header = vec![0u8; 64];
        header[0..4].copy_from_slice(&(nseg as u32).to_le_bytes());
        let mut offset = 64usize;
        let mut body = Vec::new();
        for (i, s) in segments.iter().enumerate() {
            header[4 + 4 * i..8 + 4 * i].copy_from_slice(&(offset as u32).to_le_bytes());
            offset += s.len();
            body.extend_from_slice(s);
        }
        header.extend_from_slice(&body);
        fragments.push(header);
    }
    // one frame may arrive split over several fragments (PS3.5 A.4)
    if frames == 1 && mode & 4 != 0 && fragments[0].len() > 2 {
        let whole = fragments.pop().unwrap_or_default();
        let cut = 1 + usize::from(mode >> 3) % (whole.len() - 1);
        fragments = vec![whole[..cut].to_vec(), whole[cut..].to_vec()];
    }
    let out = decode(
        &fragments,
        frames as u32,
        rows as u32,
        cols as u32,
        spp as u16,
        bps,
    )
    .unwrap_or_else(|e| panic!("valid RLE data rejected: {e}"));
    assert!(out == image, "RLE round trip changed the pixels");
}

/// PackBits (PS3.5 G.3.1): runs of 2..=128 equal bytes as `257 - n, byte` (runs of 3+ only when
/// `short_runs` is false), everything else as literals of 1..=128 bytes.
fn pack_bits(src: &[u8], short_runs: bool) -> Vec<u8> {
    let min_run = if short_runs { 2 } else { 3 };
    let run_at = |i: usize| {
        let v = src[i];
        src[i..].iter().take(128).take_while(|&&b| b == v).count()
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < src.len() {
        let run = run_at(i);
        if run >= min_run {
            out.push((257 - run) as u8);
            out.push(src[i]);
            i += run;
            continue;
        }
        let start = i;
        while i < src.len() && i - start < 128 && (i == start || run_at(i) < min_run) {
            i += 1;
        }
        out.push((i - start - 1) as u8);
        out.extend_from_slice(&src[start..i]);
    }
    out
}
