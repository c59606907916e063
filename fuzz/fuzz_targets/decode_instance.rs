//! Part-10 bytes → `radstream::decode::decode_instance`, with small limits so that whatever the
//! limits let through stays cheap and an allocation past them shows up as a finding
//! (run with `-malloc_limit_mb=1024 -rss_limit_mb=2048`, see fuzz/README.md).
//!
//! libfuzzer-sys aborts on every panic, including the ones `decode_instance` catches around
//! dicom-rs and the codecs (the service survives those, but each is a bug and its memory is not
//! bounded). Set `RADSTREAM_FUZZ_IGNORE_CAUGHT_PANICS=1` to report only panics that escape.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use radstream::decode::{decode_instance, Limits};

/// Small limits; fields added later keep their defaults.
fn limits() -> Limits {
    Limits {
        max_instance_bytes: 8 << 20,
        max_decoded_bytes: 64 << 20,
        max_sequence_depth: 32,
        ..Limits::default()
    }
}

static HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    HOOK.call_once(|| {
        if std::env::var_os("RADSTREAM_FUZZ_IGNORE_CAUGHT_PANICS").is_some() {
            // Unwinding instead of aborting: decode_instance's catch_unwind turns the panic into a
            // rejection, and one that escapes still reaches libfuzzer-sys's own catch_unwind (abort).
            std::panic::set_hook(Box::new(|_| {}));
        }
    });
    let limits = limits();
    let Ok(decoded) = decode_instance(data, &limits) else {
        return;
    };
    // What an accepted instance promises the rest of the pipeline.
    let m = &decoded.meta;
    assert_eq!(decoded.frames.len(), m.number_of_frames as usize);
    let per_frame = m.rows as usize * m.cols as usize * usize::from(m.samples_per_pixel);
    let mut total = 0usize;
    for f in &decoded.frames {
        assert_eq!(f.samples().len(), per_frame);
        let (lo, hi) = f.min_max();
        assert!(lo <= hi);
        assert!(f.samples().values().all(|v| v.is_finite()));
        total += f.samples().as_bytes().len();
    }
    assert!(
        total <= limits.max_decoded_bytes,
        "decoded {total} bytes past the limit"
    );
});
