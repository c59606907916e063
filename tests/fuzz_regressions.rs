//! Inputs that crashed, hung or exhausted memory in the fuzz targets (`fuzz/`, see fuzz/README.md), and
//! hand-made reproducers of the hostile files issue 10 reported, replayed against the library. Each file
//! under `tests/data/fuzz/<target>/` is named `<expected>__<what it is>`: `<expected>` is the
//! `DecodeError::code` a `decode_instance` input must be rejected with, `err` for RLE inputs the decoder
//! must refuse, `ok` for inputs that must decode. A panic (caught or not), an abort, another outcome, or
//! peak memory out of proportion to the input fails the test. To add one: minimize it
//! (`cargo +nightly fuzz tmin`), name it as above, drop it in the directory.

use std::{
    fs,
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use radstream::decode::{decode_instance, rle_decode_for_fuzzing, DecodedInstance, Limits};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "no regression inputs in {}",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| (file_name(&p), fs::read(&p).expect("regression input")))
        .collect()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `<expected>__...` → `<expected>`.
fn expected(name: &str) -> &str {
    name.split("__").next().unwrap_or(name)
}

/// The limits the `decode_instance` fuzz target runs with.
fn fuzz_limits() -> Limits {
    Limits {
        max_instance_bytes: 8 << 20,
        max_decoded_bytes: 64 << 20,
        max_sequence_depth: 32,
        ..Limits::default()
    }
}

/// Peak resident set of this process in KiB since the last reset (`None` where /proc does not tell).
fn peak_rss_kib() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak resident set to the current one (Linux `clear_refs` 5); false where not allowed.
fn reset_peak_rss() -> bool {
    fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// What an accepted instance promises the rest of the pipeline (as the fuzz target asserts).
fn check_decoded(name: &str, d: &DecodedInstance, limits: &Limits) {
    let m = &d.meta;
    assert_eq!(d.frames.len(), m.number_of_frames as usize, "{name}");
    let per_frame = m.rows as usize * m.cols as usize * usize::from(m.samples_per_pixel);
    let total: usize = d.frames.iter().map(|f| f.samples().as_bytes().len()).sum();
    for f in &d.frames {
        assert_eq!(f.samples().len(), per_frame, "{name}");
        assert!(f.samples().values().all(|v| v.is_finite()), "{name}");
        let (lo, hi) = f.min_max();
        assert!(lo <= hi, "{name}");
    }
    assert!(
        total <= limits.max_decoded_bytes,
        "{name}: {total} bytes decoded"
    );
}

/// Decodes on a thread with the stack of a tokio blocking thread (2 MiB), where the service decodes.
fn decode_on_service_stack(bytes: Vec<u8>, limits: Limits) -> Result<String, String> {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || match decode_instance(&bytes, &limits) {
            Ok(d) => {
                check_decoded("input", &d, &limits);
                Ok(format!("{} frame(s)", d.frames.len()))
            }
            Err(r) => Err(format!("{}: {}", r.error.code(), r.error)),
        })
        .expect("spawn decode thread")
        .join()
        .unwrap_or_else(|_| Err("panicked: the decode thread".to_string()))
}

#[test]
fn decode_instance_findings_are_rejected_cleanly_with_little_memory() {
    const BUDGET_KIB: u64 = 256 * 1024;
    for (name, bytes) in inputs("decode_instance") {
        let want = expected(&name);
        let can_reset = reset_peak_rss();
        let before = peak_rss_kib();
        for limits in [fuzz_limits(), Limits::default()] {
            let outcome = decode_on_service_stack(bytes.clone(), limits);
            match (&outcome, want) {
                (Ok(_), "ok") => {}
                (Err(e), code) => {
                    assert!(!e.contains("panicked"), "{name}: a panic was caught: {e}");
                    assert!(
                        e.starts_with(&format!("{code}: ")),
                        "{name}: expected a `{code}` rejection, got {e}"
                    );
                }
                (Ok(what), _) => panic!("{name}: expected a `{want}` rejection, decoded {what}"),
            }
        }
        // The inputs are at most a few hundred KiB: hundreds of MiB of peak memory would mean a
        // declared length or size was trusted again.
        if let (true, Some(before), Some(after)) = (can_reset, before, peak_rss_kib()) {
            assert!(
                after.saturating_sub(before) < BUDGET_KIB,
                "{name}: peak RSS grew by {} KiB decoding a {}-byte input",
                after.saturating_sub(before),
                bytes.len()
            );
        } else if let Some(after) = peak_rss_kib() {
            assert!(after < 4 * BUDGET_KIB, "{name}: peak RSS {after} KiB");
        }
    }
}

/// Arguments of the RLE decoder: fragments, frames, rows, columns, samples, bytes per sample.
struct RleCall {
    fragments: Vec<Vec<u8>>,
    frames: u32,
    rows: u32,
    cols: u32,
    samples: u16,
    bytes_per_sample: usize,
}

/// The `rle` fuzz target's decode-mode input: `[mode][frames][rows u16][cols u16][samples][bytes per
/// sample]` then fragments as `[len u32 LE][bytes]`, the last one taking what is left.
fn parse_rle_input(data: &[u8]) -> Option<RleCall> {
    let (head, mut rest) = data.split_first_chunk::<8>()?;
    let [_, frames, r0, r1, c0, c1, samples, bps] = *head;
    let mut fragments = Vec::new();
    while !rest.is_empty() {
        let (len, body) = match rest.split_first_chunk::<4>() {
            Some((l, body)) => (u32::from_le_bytes(*l) as usize, body),
            None => (rest.len(), rest),
        };
        let n = len.min(body.len());
        fragments.push(body[..n].to_vec());
        rest = &body[n..];
    }
    Some(RleCall {
        fragments,
        frames: u32::from(frames),
        rows: u32::from(u16::from_le_bytes([r0, r1])),
        cols: u32::from(u16::from_le_bytes([c0, c1])),
        samples: u16::from(samples),
        bytes_per_sample: usize::from(bps),
    })
}

#[test]
fn rle_findings_are_refused_without_panic() {
    for (name, bytes) in inputs("rle") {
        let RleCall {
            fragments,
            frames,
            rows,
            cols,
            samples,
            bytes_per_sample: bps,
        } = parse_rle_input(&bytes).unwrap_or_else(|| panic!("{name}: shorter than its header"));
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            rle_decode_for_fuzzing(&fragments, frames, rows, cols, samples, bps)
        }))
        .unwrap_or_else(|_| panic!("{name}: the RLE decoder panicked"));
        match (expected(&name), outcome) {
            ("err", Err(_)) => {}
            ("ok", Ok(out)) => assert_eq!(
                out.len(),
                frames as usize * rows as usize * cols as usize * usize::from(samples) * bps,
                "{name}"
            ),
            (want, got) => panic!("{name}: expected {want}, got {got:?}"),
        }
    }
}
