//! Hostile input against the real binary: nesting, length, deflate and codec bombs (generated here)
//! are each rejected with their reason while the server's peak memory stays bounded, and a normal push
//! still gets its findings afterwards. Plus real files no one here wrote: pydicom's UN_sequence.dcm
//! (3.6 GB before the structural walk) and a pydicom file followed by 2.5 MB of zero padding.

mod common;

use common::*;
use radstream::decode::{decode_instance, Limits};
use radstream::proto::v1 as pb;

/// The server's peak resident set after every bomb and a normal push, in MiB. Measured on the 2-core
/// test machine (debug build, CPU preprocessing): 62 MiB after the sample study alone, 116 MiB with
/// the bombs before it (the deflate bomb is inflated up to the 64 MiB cap, then rejected). Before the
/// structural walk and the inflate cap, the first nesting bomb aborted the process and each length
/// bomb cost gigabytes.
const PEAK_RSS_BOUND_MIB: u64 = 400;

/// The instance size limit the server runs with here, which is also the cap on inflated data sets.
const MAX_INSTANCE_BYTES: usize = 64 << 20;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";
const JPEG_BASELINE: &str = "1.2.840.10008.1.2.4.50";

const ITEM_UNDEFINED: [u8; 8] = [0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF];
const ITEM_END: [u8; 8] = [0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0];
const SEQ_END: [u8; 8] = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];

fn even(value: &[u8], pad: u8) -> Vec<u8> {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(pad);
    }
    v
}

/// One explicit VR little endian element.
fn explicit(group: u16, elem: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let pad = if vr == b"UI" || vr == b"OB" { 0 } else { b' ' };
    let v = even(value, pad);
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    if matches!(vr, b"OB" | b"OW" | b"SQ" | b"UN" | b"UT") {
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    } else {
        out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(&v);
    out
}

/// One implicit VR little endian element.
fn implicit(group: u16, elem: u16, value: &[u8], pad: u8) -> Vec<u8> {
    let v = even(value, pad);
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    out.extend_from_slice(&v);
    out
}

const SOP_CLASS: &str = "1.2.840.10008.5.1.4.1.1.7";
const STUDY: &str = "1.2.826.0.1.3680043.10.543.99";
const SERIES: &str = "1.2.826.0.1.3680043.10.543.99.1";

fn sop(n: usize) -> String {
    format!("1.2.826.0.1.3680043.10.543.99.1.{n}")
}

/// The identifying and pixel-module elements of a 64 x 64 8-bit monochrome instance (no Pixel Data).
fn header(n: usize, implicit_vr: bool) -> Vec<u8> {
    let uis = [
        ((0x0008, 0x0016), SOP_CLASS.to_string()),
        ((0x0008, 0x0018), sop(n)),
        ((0x0020, 0x000D), STUDY.to_string()),
        ((0x0020, 0x000E), SERIES.to_string()),
    ];
    let mut out = Vec::new();
    for ((g, e), v) in &uis {
        out.extend(if implicit_vr {
            implicit(*g, *e, v.as_bytes(), 0)
        } else {
            explicit(*g, *e, b"UI", v.as_bytes())
        });
    }
    let us = [
        ((0x0028, 0x0002), 1u16),
        ((0x0028, 0x0010), 64),
        ((0x0028, 0x0011), 64),
        ((0x0028, 0x0100), 8),
        ((0x0028, 0x0101), 8),
        ((0x0028, 0x0102), 7),
        ((0x0028, 0x0103), 0),
    ];
    for ((g, e), v) in us {
        if (g, e) == (0x0028, 0x0010) {
            // Photometric Interpretation (0028,0004) sorts before Rows
            out.extend(if implicit_vr {
                implicit(0x0028, 0x0004, b"MONOCHROME2", b' ')
            } else {
                explicit(0x0028, 0x0004, b"CS", b"MONOCHROME2")
            });
        }
        out.extend(if implicit_vr {
            implicit(g, e, &v.to_le_bytes(), 0)
        } else {
            explicit(g, e, b"US", &v.to_le_bytes())
        });
    }
    out
}

fn pixel_data(implicit_vr: bool) -> Vec<u8> {
    if implicit_vr {
        implicit(0x7FE0, 0x0010, &[0u8; 64 * 64], 0)
    } else {
        explicit(0x7FE0, 0x0010, b"OB", &[0u8; 64 * 64])
    }
}

/// Preamble, `DICM` and a file meta group naming `ts` and `sop`, followed by `dataset`.
fn part10(ts: &str, sop: &str, dataset: &[u8]) -> Vec<u8> {
    let mut group = explicit(0x0002, 0x0001, b"OB", &[0, 1]);
    group.extend(explicit(0x0002, 0x0002, b"UI", SOP_CLASS.as_bytes()));
    group.extend(explicit(0x0002, 0x0003, b"UI", sop.as_bytes()));
    group.extend(explicit(0x0002, 0x0010, b"UI", ts.as_bytes()));
    group.extend(explicit(
        0x0002,
        0x0012,
        b"UI",
        b"1.2.826.0.1.3680043.10.543",
    ));
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    out.extend(explicit(
        0x0002,
        0x0000,
        b"UL",
        &(group.len() as u32).to_le_bytes(),
    ));
    out.extend(group);
    out.extend_from_slice(dataset);
    out
}

/// Raw deflate of `data` from a fresh compressor, ending byte-aligned and not final (sync flush), so
/// that such chunks can be concatenated into one stream.
fn deflate_chunk(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    loop {
        let consumed = c.total_in() as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(64 << 10);
        }
        c.compress_vec(&data[consumed..], &mut out, flate2::FlushCompress::Sync)
            .expect("deflate");
        if c.total_in() as usize == data.len() && out.capacity() > out.len() {
            return out;
        }
    }
}

/// The end of a raw deflate stream: an empty final block with fixed Huffman codes.
const DEFLATE_END: [u8; 2] = [0x03, 0x00];

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut out = deflate_chunk(data);
    out.extend_from_slice(&DEFLATE_END);
    out
}

/// `depth` nested sequences of undefined length (ContentSequence (0040,A730)), built without recursion.
fn nested(depth: usize) -> Vec<u8> {
    let mut open = vec![
        0x40, 0x00, 0x30, 0xA7, b'S', b'Q', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    open.extend_from_slice(&ITEM_UNDEFINED);
    let mut out = Vec::with_capacity(depth * 36);
    for _ in 0..depth {
        out.extend_from_slice(&open);
    }
    for _ in 0..depth {
        out.extend_from_slice(&ITEM_END);
        out.extend_from_slice(&SEQ_END);
    }
    out
}

fn nesting_bomb(n: usize, depth: usize, deflated: bool) -> Vec<u8> {
    let mut ds = header(n, false);
    ds.extend(nested(depth));
    ds.extend(pixel_data(false));
    if deflated {
        part10(DEFLATED, &sop(n), &deflate(&ds))
    } else {
        part10(EXPLICIT_LE, &sop(n), &ds)
    }
}

/// A UN element of undefined length whose implicit VR content declares a ~4 GiB element.
fn un_length_bomb(n: usize) -> Vec<u8> {
    let mut ds = header(n, false);
    ds.extend_from_slice(&[
        0x09, 0x00, 0x10, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    ds.extend_from_slice(&ITEM_UNDEFINED);
    ds.extend_from_slice(&[0x09, 0x00, 0x11, 0x10, 0xF0, 0xFF, 0xFF, 0xFF]);
    part10(EXPLICIT_LE, &sop(n), &ds)
}

/// An implicit VR sequence of undefined length whose item declares a ~4 GiB element.
fn implicit_length_bomb(n: usize) -> Vec<u8> {
    let mut ds = header(n, true);
    ds.extend_from_slice(&[0x40, 0x00, 0x30, 0xA7, 0xFF, 0xFF, 0xFF, 0xFF]);
    ds.extend_from_slice(&ITEM_UNDEFINED);
    ds.extend_from_slice(&[0x08, 0x00, 0x04, 0x01, 0x00, 0xFF, 0xFF, 0xFF]);
    part10(IMPLICIT_LE, &sop(n), &ds)
}

/// A deflated data set that inflates to 1 GiB (a Pixel Data element of zeros): about 1 MB on the wire.
/// The zeros are compressed once in 1 MiB chunks and the chunk repeated, so the inflated data is
/// never held here.
fn deflate_bomb(n: usize) -> Vec<u8> {
    const INFLATED: usize = 1 << 30;
    const CHUNK: usize = 1 << 20;
    let mut head = header(n, false);
    head.extend_from_slice(&[0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0]);
    head.extend_from_slice(&(INFLATED as u32).to_le_bytes());
    let mut stream = deflate_chunk(&head);
    let zeros = deflate_chunk(&vec![0u8; CHUNK]);
    for _ in 0..INFLATED / CHUNK {
        stream.extend_from_slice(&zeros);
    }
    stream.extend_from_slice(&DEFLATE_END);
    part10(DEFLATED, &sop(n), &stream)
}

/// A JPEG baseline frame whose own header says 65535 x 65535, inside a 64 x 64 DICOM header.
fn jpeg_bomb(n: usize) -> Vec<u8> {
    let mut jpeg = vec![
        0xFF, 0xD8, 0xFF, 0xC0, 0x00, 11, 8, 0xFF, 0xFF, 0xFF, 0xFF, 1, 1, 0x11, 0,
    ];
    jpeg.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 63, 0, 0xFF, 0xD9]);
    let mut ds = header(n, false);
    ds.extend_from_slice(&[
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    let frag = even(&jpeg, 0);
    ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    ds.extend_from_slice(&(frag.len() as u32).to_le_bytes());
    ds.extend_from_slice(&frag);
    ds.extend_from_slice(&SEQ_END);
    part10(JPEG_BASELINE, &sop(n), &ds)
}

#[test]
fn the_generated_bombs_are_well_formed_around_their_payload() {
    // the same builders without a payload decode: the rejections below are the payload's doing
    let mut ds = header(0, false);
    ds.extend(nested(3));
    ds.extend(pixel_data(false));
    for bytes in [
        part10(EXPLICIT_LE, &sop(0), &ds),
        part10(DEFLATED, &sop(0), &deflate(&ds)),
        part10(
            IMPLICIT_LE,
            &sop(0),
            &[header(0, true), pixel_data(true)].concat(),
        ),
    ] {
        let d = decode_instance(&bytes, &Limits::default()).unwrap_or_else(|r| panic!("{r}"));
        assert_eq!((d.meta.rows, d.meta.cols), (64, 64));
        assert_eq!(d.meta.series_instance_uid, SERIES);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bombs_are_rejected_by_reason_and_a_normal_push_still_works_in_bounded_memory() {
    use pb::RejectReason as R;
    let bombs: Vec<(&str, Vec<u8>, R, &str)> = vec![
        (
            "nest-2000",
            nesting_bomb(1, 2_000, false),
            R::Malformed,
            "nested deeper than 32 levels",
        ),
        (
            "nest-10000",
            nesting_bomb(2, 10_000, false),
            R::Malformed,
            "nested deeper than 32 levels",
        ),
        (
            "nest-2000-deflated",
            nesting_bomb(3, 2_000, true),
            R::Malformed,
            "nested deeper than 32 levels",
        ),
        (
            "nest-10000-deflated",
            nesting_bomb(4, 10_000, true),
            R::Malformed,
            "nested deeper than 32 levels",
        ),
        (
            "un-length",
            un_length_bomb(5),
            R::Malformed,
            "(0009,1011) at byte",
        ),
        (
            "implicit-length",
            implicit_length_bomb(6),
            R::Malformed,
            "(0008,0104) at byte",
        ),
        (
            "deflate-bomb",
            deflate_bomb(7),
            R::TooLarge,
            "inflates past 67108864 bytes",
        ),
        (
            "jpeg-65535",
            jpeg_bomb(8),
            R::Malformed,
            "declares 65535 columns x 65535 rows",
        ),
    ];
    let server = ServedProcess::start(&[
        ("RADSTREAM_PREPROCESS", "cpu"),
        (
            "RADSTREAM_MAX_INSTANCE_BYTES",
            &MAX_INSTANCE_BYTES.to_string(),
        ),
    ]);
    let start_hwm = server.status_field("VmHWM");

    let mut stream = Stream::try_open_at(server.endpoint()).await.expect("open");
    for (name, bytes, _, _) in &bombs {
        stream.send(instance(name, bytes.clone())).await;
    }
    stream.close();
    let events = stream.drain().await;
    let rejected = rejections(&events);
    assert_eq!(rejected.len(), bombs.len(), "{events:?}");
    for (name, _, reason, cause) in &bombs {
        let r = rejected
            .iter()
            .find(|r| r.client_ref == *name)
            .unwrap_or_else(|| panic!("{name}: no rejection"));
        assert_eq!(r.reason(), *reason, "{name}: {}", r.message);
        assert!(r.message.contains(cause), "{name}: {}", r.message);
        // named by the UIDs read before the payload, so the study counts it
        assert_eq!(r.study_instance_uid, STUDY, "{name}");
        assert_eq!(r.series_instance_uid, SERIES, "{name}");
        assert!(r.sop_instance_uid.starts_with(SERIES), "{name}");
    }

    let study = sample_study();
    let mut stream = Stream::try_open_at(server.endpoint()).await.expect("open");
    for (name, bytes) in &study {
        stream.send(instance(name, bytes.clone())).await;
    }
    stream.close();
    let events = stream.drain().await;
    assert_eq!(findings(&events).len(), study.len(), "{events:?}");
    let summaries = summaries(&events);
    assert_eq!(summaries.len(), 1, "{events:?}");
    assert_eq!(summaries[0].slices_scored as usize, study.len());

    let hwm_mib = server.status_field("VmHWM") / 1024;
    println!(
        "server peak RSS: {} MiB at start, {hwm_mib} MiB after {} bombs and the sample study (bound {PEAK_RSS_BOUND_MIB} MiB)",
        start_hwm / 1024,
        bombs.len()
    );
    assert!(
        hwm_mib <= PEAK_RSS_BOUND_MIB,
        "server peak RSS {hwm_mib} MiB over the bound of {PEAK_RSS_BOUND_MIB} MiB"
    );
}

/// Peak resident set of this test process, in MiB.
fn own_peak_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmHWM")
        / 1024
}

#[test]
fn pydicom_un_sequence_is_decoded_or_rejected_cheaply() {
    // pydicom's file: an explicit VR UN element of undefined length holding an implicit VR sequence.
    // Read as explicit VR (as dicom-rs does) its content declares a 3.6 GB element.
    let bytes = read(&pydicom_test_files().join("UN_sequence.dcm"));
    let result = decode_instance(&bytes, &Limits::default());
    match &result {
        Ok(d) => println!("UN_sequence.dcm decoded: {} x {}", d.meta.rows, d.meta.cols),
        Err(r) => {
            println!("UN_sequence.dcm rejected: {r}");
            // it has no pixel data: that, not its UN element, is why it is rejected
            assert_eq!(r.error.code(), "missing_pixel_data", "{r}");
        }
    }
    let peak = own_peak_mib();
    assert!(peak < 512, "decoding UN_sequence.dcm peaked at {peak} MiB");
}

#[test]
fn trailing_zero_padding_after_a_real_file_is_ignored() {
    for name in [
        "CT_small.dcm",
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
    ] {
        let bytes = read(&pydicom_test_files().join(name));
        let want = decode_instance(&bytes, &Limits::default()).expect("original decodes");
        let mut padded = bytes.clone();
        padded.resize(bytes.len() + 2_500_000, 0);
        let got = decode_instance(&padded, &Limits::default())
            .unwrap_or_else(|r| panic!("{name} with 2.5 MB of zero padding: {r}"));
        assert_eq!(got.frames, want.frames, "{name}");
        assert_eq!(
            got.meta.sop_instance_uid, want.meta.sop_instance_uid,
            "{name}"
        );
    }
}
