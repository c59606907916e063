//! RLE Lossless (PS3.5 Annex G) decoder for 8, 16 and 32-bit samples.
//!
//! Own implementation rather than the dicom-rs adapter, which rejects 32-bit samples
//! (RT Dose) and maps fragments to frames one-to-one without checks.

/// Decodes all frames into little endian, sample-interleaved bytes.
pub(crate) fn decode(
    fragments: &[Vec<u8>],
    frames: u32,
    rows: u32,
    cols: u32,
    samples: u16,
    bytes_per_sample: usize,
) -> Result<Vec<u8>, String> {
    if frames == 0 {
        return Err("no frames to decode".to_string());
    }
    let spp = usize::from(samples);
    let nseg = spp.saturating_mul(bytes_per_sample);
    // PS3.5 G.5: the header holds at most 15 segment offsets. Checked first: the sizes below
    // bound the allocations only when every pixel has at least one segment.
    if !(1..=15).contains(&nseg) {
        return Err(format!(
            "{spp} sample(s) of {bytes_per_sample} byte(s) would need {nseg} RLE segments; 1 to 15 are possible"
        ));
    }
    let frames = frames as usize;
    let frame_data: Vec<std::borrow::Cow<'_, [u8]>> = if fragments.len() == frames {
        fragments
            .iter()
            .map(|f| std::borrow::Cow::Borrowed(&f[..]))
            .collect()
    } else if frames == 1 {
        vec![std::borrow::Cow::Owned(fragments.concat())]
    } else {
        return Err(format!(
            "{} fragments for {} frames (one fragment per frame required)",
            fragments.len(),
            frames
        ));
    };
    let px = (rows as usize)
        .checked_mul(cols as usize)
        .ok_or("image size overflows")?;
    let frame_len = px.checked_mul(nseg).ok_or("frame size overflows")?;
    let total = frame_len
        .checked_mul(frames)
        .ok_or("pixel data size overflows")?;
    // Every frame starts with a 64-byte header naming its segment count: checked for all frames
    // before the output is allocated, so empty or foreign fragments cost nothing.
    for (f, data) in frame_data.iter().enumerate() {
        let n = data
            .get(0..4)
            .filter(|_| data.len() >= 64)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or(format!("frame {f}: RLE header truncated"))?;
        if n != nseg {
            return Err(format!(
                "frame {f}: RLE header has {n} segments, {nseg} expected for {spp} sample(s) of {bytes_per_sample} byte(s)"
            ));
        }
    }
    // PackBits expands 2 input bytes to at most 128 output bytes: refuse declared sizes
    // the data cannot possibly fill before allocating for them.
    let input: usize = frame_data.iter().map(|d| d.len()).sum();
    if total / 64 > input.saturating_add(64 * frames) {
        return Err(format!(
            "{input} bytes of RLE data cannot hold the declared {total} bytes of pixel data"
        ));
    }
    let mut out = Vec::new();
    out.try_reserve_exact(total)
        .map_err(|_| format!("cannot allocate {total} bytes"))?;
    out.resize(total, 0);
    let mut segment = Vec::with_capacity(px);
    for (f, data) in frame_data.iter().enumerate() {
        let header = data
            .get(0..64)
            .ok_or(format!("frame {f}: RLE header truncated"))?;
        let word = |i: usize| {
            let b = &header[i * 4..i * 4 + 4];
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
        };
        let n = word(0);
        if n != nseg {
            return Err(format!(
                "frame {f}: RLE header has {n} segments, {nseg} expected for {spp} sample(s) of {bytes_per_sample} byte(s)"
            ));
        }
        let frame_out = &mut out[f * frame_len..(f + 1) * frame_len];
        for seg in 0..nseg {
            let start = word(seg + 1);
            let end = if seg + 1 < nseg {
                word(seg + 2)
            } else {
                data.len()
            };
            let src = data
                .get(start..end.max(start).min(data.len()))
                .ok_or(format!(
                    "frame {f}: RLE segment {seg} offset {start} out of range"
                ))?;
            unpack_bits(src, px, &mut segment);
            if segment.len() < px {
                return Err(format!(
                    "frame {f}: RLE segment {seg} decoded to {} bytes, {px} expected",
                    segment.len()
                ));
            }
            // segment order: sample 0 MSB .. LSB, sample 1 MSB .. LSB, ...
            let sample = seg / bytes_per_sample;
            let byte_from_msb = seg % bytes_per_sample;
            let le_byte = bytes_per_sample - 1 - byte_from_msb;
            let stride = nseg;
            let offset = sample * bytes_per_sample + le_byte;
            for (dst, &v) in frame_out
                .iter_mut()
                .skip(offset)
                .step_by(stride)
                .zip(segment.iter())
            {
                *dst = v;
            }
        }
    }
    Ok(out)
}

/// PackBits: n >= 0 copies n + 1 literal bytes, -127..=-1 repeats the next byte 1 - n
/// times, -128 is a no-op. Stops after `limit` output bytes.
fn unpack_bits(src: &[u8], limit: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0usize;
    while i < src.len() && out.len() < limit {
        let n = src[i] as i8;
        i += 1;
        if n >= 0 {
            let cnt = n as usize + 1;
            let end = (i + cnt).min(src.len());
            out.extend_from_slice(&src[i..end]);
            i = end;
        } else if n != -128 {
            let cnt = 1 + (-(n as i16)) as usize;
            if let Some(&v) = src.get(i) {
                out.extend(std::iter::repeat_n(v, cnt));
            }
            i += 1;
        }
    }
    out.truncate(limit);
}
