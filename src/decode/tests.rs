//! Error-path and small-format tests with in-memory instances.

use super::*;
use dicom::core::{DataElement, PrimitiveValue, VR};
use dicom::dictionary_std::tags;
use dicom::encoding::transfer_syntax::TransferSyntaxIndex;
use dicom::object::{FileMetaTableBuilder, InMemDicomObject};
use dicom::transfer_syntax::TransferSyntaxRegistry;

const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";

struct Spec {
    rows: u16,
    cols: u16,
    frames: Option<&'static str>,
    samples: u16,
    bits_allocated: u16,
    bits_stored: u16,
    pixel_rep: u16,
    planar: Option<u16>,
    pi: &'static str,
    pixels: Option<Vec<u8>>,
    with_rows: bool,
    sop_uid: &'static str,
    study_uid: &'static str,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            rows: 2,
            cols: 3,
            frames: None,
            samples: 1,
            bits_allocated: 16,
            bits_stored: 16,
            pixel_rep: 0,
            planar: None,
            pi: "MONOCHROME2",
            pixels: Some((0u16..6).flat_map(|v| (v * 100).to_le_bytes()).collect()),
            with_rows: true,
            sop_uid: "1.2.3.4.5",
            study_uid: "1.2.3.4",
        }
    }
}

fn build(s: Spec) -> Vec<u8> {
    let file = object(s)
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(EXPLICIT_LE))
        .expect("meta");
    let mut out = Vec::new();
    file.write_all(&mut out).expect("write");
    out
}

fn object(s: Spec) -> InMemDicomObject {
    let mut obj = InMemDicomObject::new_empty();
    let put_str = |obj: &mut InMemDicomObject, tag, vr, v: &str| {
        obj.put(DataElement::new(tag, vr, PrimitiveValue::from(v)));
    };
    let put_us = |obj: &mut InMemDicomObject, tag, v: u16| {
        obj.put(DataElement::new(tag, VR::US, PrimitiveValue::from(v)));
    };
    put_str(
        &mut obj,
        tags::SOP_CLASS_UID,
        VR::UI,
        "1.2.840.10008.5.1.4.1.1.7",
    );
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, s.sop_uid);
    put_str(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, s.study_uid);
    put_str(&mut obj, tags::SERIES_INSTANCE_UID, VR::UI, "1.2.3.4.1");
    put_str(&mut obj, tags::PATIENT_ID, VR::LO, "SECRET-ID");
    put_str(&mut obj, tags::MODALITY, VR::CS, "OT");
    put_str(&mut obj, tags::WINDOW_CENTER, VR::DS, "40\\50");
    put_str(&mut obj, tags::WINDOW_WIDTH, VR::DS, "400\\500");
    put_str(&mut obj, tags::PIXEL_SPACING, VR::DS, "0.5\\0.25");
    put_us(&mut obj, tags::SAMPLES_PER_PIXEL, s.samples);
    put_str(&mut obj, tags::PHOTOMETRIC_INTERPRETATION, VR::CS, s.pi);
    if s.with_rows {
        put_us(&mut obj, tags::ROWS, s.rows);
    }
    put_us(&mut obj, tags::COLUMNS, s.cols);
    if let Some(f) = s.frames {
        put_str(&mut obj, tags::NUMBER_OF_FRAMES, VR::IS, f);
    }
    if let Some(p) = s.planar {
        put_us(&mut obj, tags::PLANAR_CONFIGURATION, p);
    }
    put_us(&mut obj, tags::BITS_ALLOCATED, s.bits_allocated);
    put_us(&mut obj, tags::BITS_STORED, s.bits_stored);
    put_us(&mut obj, tags::HIGH_BIT, s.bits_stored.saturating_sub(1));
    put_us(&mut obj, tags::PIXEL_REPRESENTATION, s.pixel_rep);
    if let Some(px) = s.pixels {
        obj.put(DataElement::new(
            tags::PIXEL_DATA,
            VR::OB,
            PrimitiveValue::from(px),
        ));
    }
    obj
}

fn err(bytes: &[u8], limits: &Limits) -> DecodeError {
    match decode_instance(bytes, limits) {
        Ok(_) => panic!("expected a rejection"),
        Err(r) => r.error,
    }
}

#[test]
fn decodes_small_unsigned() {
    let bytes = build(Spec::default());
    let d = decode_instance(&bytes, &Limits::default()).expect("decodes");
    assert_eq!(d.meta.rows, 2);
    assert_eq!(d.meta.cols, 3);
    assert_eq!(d.meta.photometric, Photometric::Monochrome2);
    assert_eq!(d.meta.sop_instance_uid, "1.2.3.4.5");
    assert_eq!(
        d.meta.windows,
        vec![
            Window {
                center: 40.0,
                width: 400.0
            },
            Window {
                center: 50.0,
                width: 500.0
            }
        ]
    );
    assert_eq!(d.meta.pixel_spacing, Some([0.5, 0.25]));
    assert_eq!(d.meta.rescale_slope, 1.0);
    assert_eq!(d.frames.len(), 1);
    assert_eq!(
        values(&d.frames[0]),
        vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0]
    );
    assert_eq!(d.frames[0].min_max(), (0.0, 500.0));
    // patient id is present but redacted from Debug output
    assert_eq!(d.meta.patient_id.as_deref(), Some("SECRET-ID"));
    assert!(!format!("{:?}", d.meta).contains("SECRET"));
}

#[test]
fn accepts_bytes_without_preamble() {
    let bytes = build(Spec::default());
    let d = decode_instance(&bytes[128..], &Limits::default()).expect("decodes");
    assert_eq!(d.frames[0].samples().len(), 6);
}

#[test]
fn signed_bits_stored_sign_extension_and_mask() {
    // 12 bits stored, signed: 0x0FFF -> -1, 0x0800 -> -2048, 0xF7FF (junk high bits) -> 2047
    let vals: [u16; 6] = [0x0FFF, 0x0800, 0xF7FF, 0x0001, 0x0000, 0x1005];
    let bytes = build(Spec {
        bits_stored: 12,
        pixel_rep: 1,
        pixels: Some(vals.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Spec::default()
    });
    let d = decode_instance(&bytes, &Limits::default()).expect("decodes");
    assert_eq!(
        values(&d.frames[0]),
        vec![-1.0, -2048.0, 2047.0, 1.0, 0.0, 5.0]
    );
    assert_eq!(d.frames[0].min_max(), (-2048.0, 2047.0));
}

#[test]
fn multiframe_and_planar_rgb() {
    // 1x2 RGB, 2 frames, planar configuration 1
    let f0 = [1u8, 2, 10, 20, 100, 200]; // R R G G B B
    let f1 = [3u8, 4, 30, 40, 130, 140];
    let bytes = build(Spec {
        rows: 1,
        cols: 2,
        frames: Some("2"),
        samples: 3,
        bits_allocated: 8,
        bits_stored: 8,
        planar: Some(1),
        pi: "RGB",
        pixels: Some(f0.iter().chain(f1.iter()).copied().collect()),
        ..Spec::default()
    });
    let d = decode_instance(&bytes, &Limits::default()).expect("decodes");
    assert_eq!(d.frames.len(), 2);
    assert_eq!(
        values(&d.frames[0]),
        vec![1.0, 10.0, 100.0, 2.0, 20.0, 200.0]
    );
    assert_eq!(
        values(&d.frames[1]),
        vec![3.0, 30.0, 130.0, 4.0, 40.0, 140.0]
    );
    assert_eq!(d.meta.photometric, Photometric::Rgb);
}

#[test]
fn ybr_full_422_expands_and_converts() {
    // 1x2: Y1 Y2 Cb Cr, neutral chroma -> grey
    let bytes = build(Spec {
        rows: 1,
        cols: 2,
        samples: 3,
        bits_allocated: 8,
        bits_stored: 8,
        pi: "YBR_FULL_422",
        pixels: Some(vec![50, 200, 128, 128]),
        ..Spec::default()
    });
    let d = decode_instance(&bytes, &Limits::default()).expect("decodes");
    assert_eq!(
        values(&d.frames[0]),
        vec![50.0, 50.0, 50.0, 200.0, 200.0, 200.0]
    );
    assert_eq!(d.meta.photometric_original, "YBR_FULL_422");
}

#[test]
fn not_dicom() {
    let e = err(b"hello world, definitely not DICOM", &Limits::default());
    assert_eq!(e.code(), "not_dicom");
    assert_eq!(err(&[], &Limits::default()).code(), "not_dicom");
    assert_eq!(err(&[0u8; 200], &Limits::default()).code(), "not_dicom");
}

#[test]
fn too_large_checked_first() {
    let limits = Limits {
        max_instance_bytes: 10,
        ..Limits::default()
    };
    let e = err(&[0u8; 11], &limits);
    assert!(matches!(
        e,
        DecodeError::TooLarge {
            bytes: 11,
            limit: 10,
            inflated: false
        }
    ));
    assert_eq!(e.code(), "too_large");
}

/// 300 rows x 3 columns x 1 sample (3600 bytes as f32) with pixel data deliberately too short: a
/// limit must reject it before decoding is attempted.
fn oversized() -> Vec<u8> {
    build(Spec {
        rows: 300,
        cols: 3,
        pixels: Some(vec![0; 4]),
        ..Spec::default()
    })
}

#[test]
fn dims_over_limit_before_decoding() {
    let bytes = oversized();
    let limits = Limits {
        max_rows: 256,
        ..Limits::default()
    };
    let e = err(&bytes, &limits);
    assert_eq!(e.code(), "dimensions_too_large");
    assert!(e.to_string().contains("Rows (0028,0010)"));
    let e = err(
        &build(Spec {
            frames: Some("5"),
            ..Spec::default()
        }),
        &Limits {
            max_frames: 4,
            ..Limits::default()
        },
    );
    assert_eq!(e.code(), "dimensions_too_large");
}

#[test]
fn decoded_size_over_limit_before_decoding() {
    let bytes = oversized();
    let limits = Limits {
        max_decoded_bytes: 1799,
        ..Limits::default()
    };
    let e = err(&bytes, &limits);
    assert_eq!(e.code(), "decoded_too_large");
    // 300 x 3 samples of 2 bytes: the stored size, not f32
    assert!(e.to_string().contains("1800 bytes"), "{e}");
}

#[test]
fn missing_pixel_data() {
    let bytes = build(Spec {
        pixels: None,
        ..Spec::default()
    });
    let r = decode_instance(&bytes, &Limits::default()).expect_err("rejected");
    assert_eq!(r.error.code(), "missing_pixel_data");
    assert_eq!(r.sop_instance_uid.as_deref(), Some("1.2.3.4.5"));
    assert!(r.to_string().contains("7FE0,0010"));
}

#[test]
fn missing_rows() {
    let e = err(
        &build(Spec {
            with_rows: false,
            ..Spec::default()
        }),
        &Limits::default(),
    );
    assert!(matches!(e, DecodeError::MissingAttribute { name } if name.contains("(0028,0010)")));
}

#[test]
fn short_pixel_data_is_malformed() {
    let e = err(
        &build(Spec {
            pixels: Some(vec![0; 10]),
            ..Spec::default()
        }),
        &Limits::default(),
    );
    assert_eq!(e.code(), "malformed");
    assert!(e.to_string().contains("7FE0,0010"));
}

#[test]
fn palette_color_is_unsupported() {
    let e = err(
        &build(Spec {
            pi: "PALETTE COLOR",
            ..Spec::default()
        }),
        &Limits::default(),
    );
    assert_eq!(e.code(), "unsupported_pixel_format");
    assert!(e
        .to_string()
        .contains("PhotometricInterpretation (0028,0004)"));
}

#[test]
fn unknown_transfer_syntax() {
    let mut bytes = build(Spec::default());
    // rewrite the transfer syntax UID value in place (same length)
    let needle = EXPLICIT_LE.as_bytes();
    let pos = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("ts uid in meta");
    bytes[pos..pos + needle.len()].copy_from_slice(b"1.2.840.10008.9.9.9");
    let e = err(&bytes, &Limits::default());
    assert_eq!(e.code(), "unsupported_transfer_syntax");
    assert!(e.to_string().contains("1.2.840.10008.9.9.9"));
}

#[test]
fn every_truncation_is_rejected_without_panic() {
    let bytes = build(Spec::default());
    for n in 0..bytes.len() {
        let r = decode_instance(&bytes[..n], &Limits::default());
        assert!(r.is_err(), "prefix of {n} bytes was accepted");
    }
}

#[test]
fn byte_flips_never_panic() {
    let bytes = build(Spec::default());
    for i in 128..bytes.len() {
        for v in [0x00u8, 0xFF, 0x7F, 0x80] {
            let mut b = bytes.clone();
            b[i] = v;
            let t = std::time::Instant::now();
            let r = decode_instance(&b, &Limits::default());
            let el = t.elapsed();
            // declared lengths are pre-checked, so no input costs a huge allocation
            assert!(
                el.as_millis() < 500,
                "flip at {i} -> {v:#x} took {el:?}: {:?}",
                r.as_ref().err().map(|e| e.to_string())
            );
        }
    }
}

#[test]
fn huge_declared_length_rejected_cheaply() {
    let mut bytes = build(Spec::default());
    // Pixel Data header: (7FE0,0010) OB 00 00 <len u32>; declare ~4 GiB
    let tag = [0xE0u8, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0];
    let pos = bytes
        .windows(8)
        .rposition(|w| w == tag)
        .expect("pixel data header");
    bytes[pos + 8..pos + 12].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
    let t = std::time::Instant::now();
    let e = err(&bytes, &Limits::default());
    assert_eq!(e.code(), "malformed");
    assert!(e.to_string().contains("(7FE0,0010)"), "{e}");
    assert!(t.elapsed().as_millis() < 200);
}

#[test]
fn rle_packbits_roundtrip_16bit() {
    // 1x3 16-bit mono: values 0x0102, 0x0102, 0x0A0B; segments MSB then LSB
    let seg_msb: Vec<u8> = vec![0xFF, 0x01, 0x00, 0x0A]; // -1: 2 x 0x01, then 0: literal 0x0A
    let seg_lsb: Vec<u8> = vec![0x02, 0x02, 0x02, 0x0B]; // 2: literal x3
    let mut frag = vec![0u8; 64];
    frag[0..4].copy_from_slice(&2u32.to_le_bytes());
    frag[4..8].copy_from_slice(&64u32.to_le_bytes());
    frag[8..12].copy_from_slice(&(64u32 + seg_msb.len() as u32).to_le_bytes());
    frag.extend_from_slice(&seg_msb);
    frag.extend_from_slice(&seg_lsb);
    let out = rle::decode(&[frag], 1, 1, 3, 1, 2).expect("rle");
    assert_eq!(out, vec![0x02, 0x01, 0x02, 0x01, 0x0B, 0x0A]);
    // truncated segment -> error, no panic
    assert!(rle::decode(&[vec![0u8; 10]], 1, 1, 3, 1, 2).is_err());
}

#[test]
fn one_bit_packed_multiframe() {
    // 3 frames of 1x3 = 9 bits, LSB first, frame 1 starts mid-byte
    let bytes = build(Spec {
        rows: 1,
        cols: 3,
        frames: Some("3"),
        bits_allocated: 1,
        bits_stored: 1,
        pixels: Some(vec![0b1010_1101, 0b0000_0001]),
        ..Spec::default()
    });
    let d = decode_instance(&bytes, &Limits::default()).expect("decodes");
    let got: Vec<Vec<f32>> = d.frames.iter().map(values).collect();
    assert_eq!(
        got,
        vec![
            vec![1.0, 0.0, 1.0],
            vec![1.0, 0.0, 1.0],
            vec![0.0, 1.0, 1.0]
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Hostile structure: raw Part-10 files assembled byte by byte.
// ---------------------------------------------------------------------------------------------

const IMPLICIT_LE: &str = "1.2.840.10008.1.2";
const DEFLATED: &str = "1.2.840.10008.1.2.1.99";

/// A short explicit VR little endian element (meta group style), value padded to even length.
fn explicit_short(group: u16, elem: u16, vr: &[u8; 2], value: &[u8], pad: u8) -> Vec<u8> {
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(pad);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    out.extend_from_slice(&v);
    out
}

/// Preamble, `DICM` and a file meta group naming `ts`, followed by `dataset`.
fn part10(ts: &str, dataset: &[u8]) -> Vec<u8> {
    let mut group = Vec::new();
    group.extend_from_slice(&[0x02, 0x00, 0x01, 0x00, b'O', b'B', 0, 0, 2, 0, 0, 0, 0, 1]);
    group.extend(explicit_short(2, 2, b"UI", b"1.2.840.10008.5.1.4.1.1.7", 0));
    group.extend(explicit_short(2, 3, b"UI", b"1.2.3.4.5", 0));
    group.extend(explicit_short(2, 0x10, b"UI", ts.as_bytes(), 0));
    group.extend(explicit_short(2, 0x12, b"UI", b"1.2.3.999", 0));
    let mut out = vec![0u8; 128];
    out.extend_from_slice(b"DICM");
    out.extend(explicit_short(
        2,
        0,
        b"UL",
        &(group.len() as u32).to_le_bytes(),
        0,
    ));
    out.extend(group);
    out.extend_from_slice(dataset);
    out
}

/// The data set of `s` encoded in `ts` (explicit or implicit VR little endian).
fn dataset(s: Spec, ts: &str) -> Vec<u8> {
    let ts = TransferSyntaxRegistry.get(ts).expect("known ts");
    let mut out = Vec::new();
    object(s)
        .write_dataset_with_ts(&mut out, ts)
        .expect("write");
    out
}

/// Inserts raw element bytes right before Pixel Data (the last element of [`dataset`]).
fn insert_before_pixel_data(mut ds: Vec<u8>, raw: &[u8]) -> Vec<u8> {
    let at = ds
        .windows(4)
        .rposition(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .expect("pixel data");
    ds.splice(at..at, raw.iter().copied());
    ds
}

const ITEM_UNDEFINED: [u8; 8] = [0xFE, 0xFF, 0x00, 0xE0, 0xFF, 0xFF, 0xFF, 0xFF];
const ITEM_END: [u8; 8] = [0xFE, 0xFF, 0x0D, 0xE0, 0, 0, 0, 0];
const SEQ_END: [u8; 8] = [0xFE, 0xFF, 0xDD, 0xE0, 0, 0, 0, 0];

/// `depth` nested sequences of undefined length (ContentSequence (0040,A730)), each in an item of
/// undefined length, built without recursion.
fn nested(depth: usize, explicit: bool) -> Vec<u8> {
    let mut open = vec![0x40, 0x00, 0x30, 0xA7];
    if explicit {
        open.extend_from_slice(&[b'S', b'Q', 0, 0]);
    }
    open.extend_from_slice(&[0xFF; 4]);
    open.extend_from_slice(&ITEM_UNDEFINED);
    let mut out = Vec::with_capacity(depth * 28);
    for _ in 0..depth {
        out.extend_from_slice(&open);
    }
    for _ in 0..depth {
        out.extend_from_slice(&ITEM_END);
        out.extend_from_slice(&SEQ_END);
    }
    out
}

fn nested_file(depth: usize, ts: &str) -> Vec<u8> {
    let enc_ts = if ts == IMPLICIT_LE {
        IMPLICIT_LE
    } else {
        EXPLICIT_LE
    };
    let ds = insert_before_pixel_data(
        dataset(Spec::default(), enc_ts),
        &nested(depth, ts != IMPLICIT_LE),
    );
    if ts == DEFLATED {
        part10(ts, &deflate(&ds))
    } else {
        part10(ts, &ds)
    }
}

fn deflate(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("deflate");
    enc.finish().expect("deflate")
}

fn reject(bytes: &[u8], limits: &Limits) -> Rejection {
    match decode_instance(bytes, limits) {
        Ok(_) => panic!("expected a rejection"),
        Err(r) => r,
    }
}

#[test]
fn raw_builders_produce_files_that_decode() {
    for ts in [EXPLICIT_LE, IMPLICIT_LE, DEFLATED] {
        let d = decode_instance(&nested_file(0, ts), &Limits::default())
            .unwrap_or_else(|r| panic!("{ts}: {r}"));
        assert_eq!(
            values(&d.frames[0]),
            vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0],
            "{ts}"
        );
    }
}

#[test]
fn sequence_depth_limit_is_exact() {
    for ts in [EXPLICIT_LE, IMPLICIT_LE, DEFLATED] {
        for max in [3u32, 32] {
            let limits = Limits {
                max_sequence_depth: max,
                ..Limits::default()
            };
            let ok = decode_instance(&nested_file(max as usize, ts), &limits);
            assert!(ok.is_ok(), "{ts}: depth {max} of {max}: {:?}", ok.err());
            let r = reject(&nested_file(max as usize + 1, ts), &limits);
            assert_eq!(r.error.code(), "malformed", "{ts}");
            let msg = r.error.to_string();
            assert!(
                msg.contains(&format!("nested deeper than {max} levels"))
                    && msg.contains("max_sequence_depth"),
                "{ts}: {msg}"
            );
        }
    }
}

#[test]
fn deep_nesting_is_rejected_without_recursion() {
    // 10,000 levels: dicom-rs would recurse once per level and overflow this 2 MiB test thread stack
    for ts in [EXPLICIT_LE, IMPLICIT_LE, DEFLATED] {
        let r = reject(&nested_file(10_000, ts), &Limits::default());
        assert_eq!(r.error.code(), "malformed", "{ts}");
        assert!(
            r.error.to_string().contains("nested deeper than 32"),
            "{ts}: {}",
            r.error
        );
        // the UIDs read before the bomb still name the instance
        assert_eq!(r.sop_instance_uid.as_deref(), Some("1.2.3.4.5"), "{ts}");
        assert_eq!(r.study_instance_uid.as_deref(), Some("1.2.3.4"), "{ts}");
        assert_eq!(r.series_instance_uid.as_deref(), Some("1.2.3.4.1"), "{ts}");
    }
}

/// An explicit VR UN element of undefined length (private (0009,1010)) whose implicit VR content is
/// `content`, inserted into the default instance.
fn un_file(content: &[u8]) -> Vec<u8> {
    let mut raw = vec![
        0x09, 0x00, 0x10, 0x10, b'U', b'N', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ];
    raw.extend_from_slice(content);
    raw.extend_from_slice(&SEQ_END);
    part10(
        EXPLICIT_LE,
        &insert_before_pixel_data(dataset(Spec::default(), EXPLICIT_LE), &raw),
    )
}

#[test]
fn un_of_undefined_length_is_read_as_implicit_vr() {
    // well-formed content: an item holding (0010,0010) "AB^C" in implicit VR. Read as explicit VR (as
    // dicom-rs does) its bytes 'AB^C' would be a 1.1 GB length.
    let mut item = ITEM_UNDEFINED.to_vec();
    item.extend_from_slice(&[0x10, 0x00, 0x10, 0x00, 4, 0, 0, 0, b'A', b'B', b'^', b'C']);
    item.extend_from_slice(&ITEM_END);
    let d = decode_instance(&un_file(&item), &Limits::default()).expect("decodes");
    assert_eq!(
        values(&d.frames[0]),
        vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0]
    );
}

#[test]
fn un_of_undefined_length_with_a_huge_inner_length_is_rejected() {
    let mut item = ITEM_UNDEFINED.to_vec();
    item.extend_from_slice(&[0x09, 0x00, 0x11, 0x10, 0xF0, 0xFF, 0xFF, 0xFF]);
    let r = reject(&un_file(&item), &Limits::default());
    assert_eq!(r.error.code(), "malformed");
    let msg = r.error.to_string();
    assert!(
        msg.contains("(0009,1011)") && msg.contains("4294967280"),
        "{msg}"
    );
    assert_eq!(r.sop_instance_uid.as_deref(), Some("1.2.3.4.5"));
}

#[test]
fn implicit_vr_undefined_length_sequence_with_a_huge_inner_length_is_rejected() {
    let mut raw = vec![0x40, 0x00, 0x30, 0xA7, 0xFF, 0xFF, 0xFF, 0xFF];
    raw.extend_from_slice(&ITEM_UNDEFINED);
    raw.extend_from_slice(&[0x08, 0x00, 0x04, 0x01, 0x00, 0xFF, 0xFF, 0xFF]); // ~4 GB
    let ds = insert_before_pixel_data(dataset(Spec::default(), IMPLICIT_LE), &raw);
    let r = reject(&part10(IMPLICIT_LE, &ds), &Limits::default());
    assert_eq!(r.error.code(), "malformed");
    assert!(r.error.to_string().contains("(0008,0104)"), "{}", r.error);
    assert_eq!(r.study_instance_uid.as_deref(), Some("1.2.3.4"));
}

#[test]
fn deflated_data_set_is_inflated_with_a_cap() {
    // 512 x 512 x 16-bit zeros: 512 KiB inflated, about 1 KiB deflated
    let ds = dataset(
        Spec {
            rows: 512,
            cols: 512,
            pixels: Some(vec![0; 512 * 512 * 2]),
            ..Spec::default()
        },
        EXPLICIT_LE,
    );
    let file = part10(DEFLATED, &deflate(&ds));
    assert!(file.len() < 8 << 10, "{} bytes", file.len());
    let d = decode_instance(&file, &Limits::default()).expect("under the cap");
    assert_eq!(d.frames[0].samples().len(), 512 * 512);
    let limits = Limits {
        max_instance_bytes: 64 << 10,
        ..Limits::default()
    };
    let r = reject(&file, &limits);
    assert_eq!(r.error.code(), "too_large");
    assert!(matches!(
        r.error,
        DecodeError::TooLarge { inflated: true, .. }
    ));
    assert!(
        r.error.to_string().contains("inflates past 65536 bytes"),
        "{}",
        r.error
    );
    // not a deflate stream at all
    let r = reject(&part10(DEFLATED, &[0xFF; 64]), &Limits::default());
    assert_eq!(r.error.code(), "malformed");
}

/// An 8-bit monochrome `rows` x `cols` instance in `ts` whose only fragment is `fragment`.
fn encapsulated(ts: &str, rows: u16, cols: u16, fragment: &[u8]) -> Vec<u8> {
    let mut ds = dataset(
        Spec {
            rows,
            cols,
            bits_allocated: 8,
            bits_stored: 8,
            pixels: None,
            ..Spec::default()
        },
        EXPLICIT_LE,
    );
    ds.extend_from_slice(&[
        0xE0, 0x7F, 0x10, 0x00, b'O', b'B', 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,
    ]);
    ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0, 0, 0, 0, 0]);
    let mut frag = fragment.to_vec();
    if frag.len() % 2 == 1 {
        frag.push(0);
    }
    ds.extend_from_slice(&[0xFE, 0xFF, 0x00, 0xE0]);
    ds.extend_from_slice(&(frag.len() as u32).to_le_bytes());
    ds.extend_from_slice(&frag);
    ds.extend_from_slice(&SEQ_END);
    part10(ts, &ds)
}

fn jpeg_header(sof: u8, width: u16, height: u16) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, sof, 0x00, 11, 8];
    v.extend_from_slice(&height.to_be_bytes());
    v.extend_from_slice(&width.to_be_bytes());
    v.extend_from_slice(&[1, 1, 0x11, 0]);
    v.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x08, 1, 1, 0, 0, 63, 0, 0xFF, 0xD9]);
    v
}

fn j2k_header(width: u32, height: u32) -> Vec<u8> {
    let mut v = vec![0xFF, 0x4F, 0xFF, 0x51, 0x00, 41, 0x00, 0x00];
    for x in [width, height, 0, 0, width, height, 0, 0] {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v.extend_from_slice(&[0, 1, 7, 1, 1]);
    v
}

#[test]
fn codestream_larger_than_the_dicom_header_never_reaches_the_codec() {
    for (ts, frag, name) in [
        (
            "1.2.840.10008.1.2.4.50",
            jpeg_header(0xC0, 65535, 65535),
            "JPEG",
        ),
        (
            "1.2.840.10008.1.2.4.70",
            jpeg_header(0xC3, 65535, 65535),
            "JPEG",
        ),
        (
            "1.2.840.10008.1.2.4.80",
            jpeg_header(0xF7, 65535, 65535),
            "JPEG",
        ),
        (
            "1.2.840.10008.1.2.4.90",
            j2k_header(65535, 65535),
            "JPEG 2000",
        ),
    ] {
        let r = reject(&encapsulated(ts, 64, 64, &frag), &Limits::default());
        assert_eq!(r.error.code(), "malformed", "{ts}");
        let msg = r.error.to_string();
        assert!(
            msg.contains(&format!("the {name} codestream"))
                && msg.contains("65535 columns x 65535 rows x 1 components")
                && msg.contains("64 x 64 x 1"),
            "{ts}: {msg}"
        );
        // a header that agrees passes the check and reaches the codec (which fails on the empty scan)
        let r = reject(
            &encapsulated(
                ts,
                64,
                64,
                &match name {
                    "JPEG" => jpeg_header(frag[3], 64, 64),
                    _ => j2k_header(64, 64),
                },
            ),
            &Limits::default(),
        );
        assert_eq!(r.error.code(), "pixel_decode", "{ts}: {}", r.error);
    }
}

#[test]
fn trailing_zero_padding_is_not_parsed() {
    let bytes = build(Spec::default());
    let want = decode_instance(&bytes, &Limits::default()).expect("original");
    let mut padded = bytes.clone();
    padded.resize(bytes.len() + 2_500_000, 0);
    let got = decode_instance(&padded, &Limits::default()).expect("padded");
    assert_eq!(got.frames, want.frames);
    // padding that is not all zeros is still data: rejected
    let mut junk = padded.clone();
    let last = junk.len() - 1;
    junk[last] = 1;
    assert!(decode_instance(&junk, &Limits::default()).is_err());
}

#[test]
fn malformed_uids_are_replaced_by_stand_ins_never_echoed() {
    let bad = "1.2.840.99999.1234567890.1234567890.1234567890.1234567890.12345678"; // 66 chars
                                                                                    // the instance is read (pydicom and dcmtk read such files), under a stand-in identity
    let ok = decode_instance(
        &build(Spec {
            sop_uid: bad,
            study_uid: "DOE^JOHN",
            ..Spec::default()
        }),
        &Limits::default(),
    )
    .expect("a malformed UID alone does not reject the instance");
    let m = &ok.meta;
    assert!(m.sop_instance_uid.starts_with("2.25."), "{m:?}");
    assert!(m.study_instance_uid.starts_with("2.25."), "{m:?}");
    assert_eq!(m.series_instance_uid, "1.2.3.4.1", "a valid UID is kept");
    let shown = format!("{m:?}");
    assert!(!shown.contains(bad) && !shown.contains("DOE"), "{shown}");
    // the same bad value always names the same study
    let again = decode_instance(
        &build(Spec {
            study_uid: "DOE^JOHN",
            ..Spec::default()
        }),
        &Limits::default(),
    )
    .expect("decodes");
    assert_eq!(again.meta.study_instance_uid, m.study_instance_uid);

    // a rejection for another reason is named by the stand-ins, and quotes neither value
    let r = reject(
        &build(Spec {
            sop_uid: bad,
            study_uid: "DOE^JOHN",
            pi: "PALETTE COLOR",
            ..Spec::default()
        }),
        &Limits::default(),
    );
    let msg = r.to_string();
    assert!(!msg.contains(bad) && !msg.contains("DOE"), "{msg}");
    assert_eq!(
        r.sop_instance_uid.as_deref(),
        Some(m.sop_instance_uid.as_str())
    );
    assert_eq!(
        r.study_instance_uid.as_deref(),
        Some(m.study_instance_uid.as_str())
    );
    assert_eq!(r.series_instance_uid.as_deref(), Some("1.2.3.4.1"));
}

#[test]
fn photometric_values_are_quoted_only_when_defined_terms() {
    let msg = reject(
        &build(Spec {
            pi: "DOE^JANE",
            ..Spec::default()
        }),
        &Limits::default(),
    )
    .to_string();
    assert!(!msg.contains("DOE") && !msg.contains("JANE"), "{msg}");
    assert!(
        msg.contains("PhotometricInterpretation (0028,0004) (a value of 8 characters"),
        "{msg}"
    );
    let msg = reject(
        &build(Spec {
            pi: "PALETTE COLOR",
            ..Spec::default()
        }),
        &Limits::default(),
    )
    .to_string();
    assert!(msg.contains("'PALETTE COLOR'"), "{msg}");
}

/// Counts what the decoder reserves; refuses when told to.
#[derive(Default)]
struct CountingBudget {
    reserved: std::sync::Mutex<Vec<u64>>,
    refuse: bool,
}

impl DecodeBudget for CountingBudget {
    fn reserve(&self, bytes: u64) -> Result<Reservation, DecodeError> {
        self.reserved.lock().expect("lock").push(bytes);
        if self.refuse {
            Err(DecodeError::DecodedTooLarge {
                bytes,
                limit: 0,
                rows: 0,
                cols: 0,
                frames: 0,
                samples: 0,
            })
        } else {
            Ok(Reservation::new(()))
        }
    }
}

/// Counts the reservations alive when each is asked for.
#[derive(Default)]
struct LiveBudget {
    live: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    asked: std::sync::Mutex<Vec<(u64, usize)>>,
}

struct LiveGuard(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl DecodeBudget for LiveBudget {
    fn reserve(&self, bytes: u64) -> Result<Reservation, DecodeError> {
        let live = self.live.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.asked.lock().expect("lock").push((bytes, live));
        Ok(Reservation::new(LiveGuard(self.live.clone())))
    }
}

#[test]
fn a_deflated_data_set_holds_the_budget_while_it_is_inflated() {
    let file = part10(DEFLATED, &deflate(&dataset(Spec::default(), EXPLICIT_LE)));
    let limits = Limits::default();
    let budget = LiveBudget::default();
    let d = decode_instance_with_budget(&file, &limits, Some(&budget)).expect("decodes");
    // first the inflation (its size unknown: the cap), given back before the decoded size is asked for
    assert_eq!(
        *budget.asked.lock().expect("lock"),
        vec![(limits.max_instance_bytes as u64, 0), (2 * 3 * 2, 0)]
    );
    drop(d);
    assert_eq!(budget.live.load(std::sync::atomic::Ordering::SeqCst), 0);
    // a plain data set asks once
    let plain = LiveBudget::default();
    decode_instance_with_budget(&build(Spec::default()), &limits, Some(&plain)).expect("decodes");
    assert_eq!(plain.asked.lock().expect("lock").len(), 1);
}

#[test]
fn decoded_size_is_reserved_once_before_decoding() {
    let budget = CountingBudget::default();
    let d = decode_instance_with_budget(&build(Spec::default()), &Limits::default(), Some(&budget))
        .expect("decodes");
    assert!(d.reservation.is_some());
    assert_eq!(
        *budget.reserved.lock().expect("lock"),
        vec![2 * 3 * 2],
        "2x3 stored 16-bit samples"
    );
    assert!(decode_instance(&build(Spec::default()), &Limits::default())
        .expect("decodes")
        .reservation
        .is_none());

    // nothing is reserved for an instance rejected from its header
    let budget = CountingBudget::default();
    let missing = build(Spec {
        pixels: None,
        ..Spec::default()
    });
    assert!(decode_instance_with_budget(&missing, &Limits::default(), Some(&budget)).is_err());
    assert!(budget.reserved.lock().expect("lock").is_empty());

    // a refusal rejects the instance, under its UIDs
    let budget = CountingBudget {
        refuse: true,
        ..CountingBudget::default()
    };
    let r = decode_instance_with_budget(&build(Spec::default()), &Limits::default(), Some(&budget))
        .expect_err("refused");
    assert_eq!(r.error.code(), "decoded_too_large");
    assert_eq!(r.series_instance_uid.as_deref(), Some("1.2.3.4.1"));
}

#[test]
fn raw_native_pixels_match_what_dicom_rs_would_give() {
    // 8-bit samples in OW words of a big endian file are the words' little endian bytes
    let be_ow = raw_stream_bytes(&[1, 2, 3, 4], Some(*b"OW"), true, 1).expect("OW");
    assert_eq!(&be_ow[..], &[2, 1, 4, 3]);
    // otherwise the file's bytes, in place
    for (vr, be, bps) in [
        (Some(*b"OW"), true, 2),
        (Some(*b"OB"), true, 1),
        (Some(*b"OW"), false, 1),
        (None, false, 2),
        (Some(*b"ZZ"), false, 2),
    ] {
        let out = raw_stream_bytes(&[1, 2, 3, 4], vr, be, bps).expect("bytes");
        assert!(matches!(out, Cow::Borrowed(_)), "{vr:?}");
        assert_eq!(&out[..], &[1, 2, 3, 4]);
    }
    let e = raw_stream_bytes(&[0; 4], Some(*b"FL"), false, 4).expect_err("FL");
    assert!(e.to_string().contains("unexpected VR FL"), "{e}");
}

#[test]
fn only_defined_term_modalities_are_kept() {
    let kept = decode_instance(&build(Spec::default()), &Limits::default()).expect("decodes");
    assert_eq!(kept.meta.modality.as_deref(), Some("OT"));
    // free text, and a name that happens to have the Code String form, are both dropped
    for planted in ["Doe, John", "DOE"] {
        let mut obj = object(Spec::default());
        obj.put(DataElement::new(
            tags::MODALITY,
            VR::CS,
            PrimitiveValue::from(planted),
        ));
        let file = obj
            .with_meta(FileMetaTableBuilder::new().transfer_syntax(EXPLICIT_LE))
            .expect("meta");
        let mut out = Vec::new();
        file.write_all(&mut out).expect("write");
        let d = decode_instance(&out, &Limits::default()).expect("decodes");
        assert_eq!(d.meta.modality, None, "{planted}");
    }
}

#[test]
fn rejection_stays_small() {
    // returned by value from every decode (and from closures around it): keep it under clippy's
    // large-error threshold of 128 bytes
    assert!(
        std::mem::size_of::<Rejection>() < 128,
        "{}",
        std::mem::size_of::<Rejection>()
    );
}

#[test]
fn element_count_limit_rejects_a_data_set_of_tiny_elements() {
    // 1,000 empty private elements: dicom-rs would hold a node for each
    let mut many = Vec::new();
    for _ in 0..1000 {
        many.extend_from_slice(&explicit_short(0x0009, 0x1000, b"LO", b"", b' '));
    }
    let file = part10(
        EXPLICIT_LE,
        &insert_before_pixel_data(dataset(Spec::default(), EXPLICIT_LE), &many),
    );
    let small = Limits {
        max_elements: 500,
        ..Limits::default()
    };
    let r = reject(&file, &small);
    assert_eq!(r.error.code(), "malformed");
    assert!(
        r.error.to_string().contains("limits.max_elements"),
        "{}",
        r.error
    );
    assert_eq!(r.sop_instance_uid.as_deref(), Some("1.2.3.4.5"), "{r:?}");
    let enough = Limits {
        max_elements: 2000,
        ..Limits::default()
    };
    decode_instance(&file, &enough).expect("within the limit it decodes");
}

#[test]
fn a_binary_value_that_is_not_whole_values_is_rejected() {
    // FD of 2 bytes: dicom-rs would read no value, skip nothing, and take the next header from inside
    // this value (a fuzzer's 4 GiB "length" came from there)
    let fd = explicit_short(0x0018, 0x9087, b"FD", &[0, 0], 0);
    let file = part10(
        EXPLICIT_LE,
        &insert_before_pixel_data(dataset(Spec::default(), EXPLICIT_LE), &fd),
    );
    let r = reject(&file, &Limits::default());
    assert_eq!(r.error.code(), "malformed");
    let msg = r.error.to_string();
    assert!(
        msg.contains("(0018,9087)") && msg.contains("not a multiple of 8"),
        "{msg}"
    );
    // the same rule in implicit VR, where the VR comes from the dictionary: Rows (US) of 3 bytes
    let mut rows = vec![0x28, 0x00, 0x10, 0x00, 3, 0, 0, 0];
    rows.extend_from_slice(&[1, 0, 0]);
    // (a second Rows element, odd-length, before the pixel data: the length alone rejects it)
    let ds = insert_before_pixel_data(dataset(Spec::default(), IMPLICIT_LE), &rows);
    let r = reject(&part10(IMPLICIT_LE, &ds), &Limits::default());
    assert!(
        r.error.to_string().contains("not a multiple of 2"),
        "{}",
        r.error
    );
    // whole values pass
    let fd = explicit_short(0x0018, 0x9087, b"FD", &1.5f64.to_le_bytes(), 0);
    let file = part10(
        EXPLICIT_LE,
        &insert_before_pixel_data(dataset(Spec::default(), EXPLICIT_LE), &fd),
    );
    decode_instance(&file, &Limits::default()).expect("an 8-byte FD decodes");
}

/// A file of pydicom's test set (shipped in the pydicom wheel of the oracle Python, as in
/// `tests/common`: `RADSTREAM_PYTHON`, else the cache's venv).
fn pydicom_test_file(name: &str) -> Vec<u8> {
    let python = std::env::var_os("RADSTREAM_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| crate::config::Config::cache_dir().join("venv/bin/python"));
    let out = std::process::Command::new(&python)
        .args([
            "-c",
            "import os, pydicom; print(os.path.join(os.path.dirname(pydicom.__file__), 'data', 'test_files'))",
        ])
        .output()
        .unwrap_or_else(|e| panic!("oracle Python {} (scripts/setup.sh --test): {e}", python.display()));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::read(std::path::Path::new(&dir).join(name)).expect("pydicom test file")
}

/// The position of the first `marker` (two bytes) at or after `from`.
fn find_marker(bytes: &[u8], from: usize, marker: [u8; 2]) -> usize {
    from + bytes[from..]
        .windows(2)
        .position(|w| w == marker)
        .expect("marker")
}

#[test]
fn the_header_is_the_full_decodes_metadata_without_decoding_pixels() {
    for (name, ts, soc, scan) in [
        // JPEG 2000: SOC, then the first tile-part (SOT) after the main header
        (
            "JPEG2000.dcm",
            "1.2.840.10008.1.2.4.91",
            [0xFF, 0x4F],
            [0xFF, 0x90],
        ),
        // JPEG baseline: SOI, then the scan (SOS)
        (
            "SC_rgb_jpeg_dcmtk.dcm",
            "1.2.840.10008.1.2.4.50",
            [0xFF, 0xD8],
            [0xFF, 0xDA],
        ),
    ] {
        let bytes = pydicom_test_file(name);
        let budget = CountingBudget::default();
        let full = decode_instance(&bytes, &Limits::default()).expect("decodes");
        let header = read_header(&bytes, &Limits::default(), Some(&budget)).expect("header");
        assert_eq!(header.meta().transfer_syntax, ts, "{name}");
        assert_eq!(
            format!("{:?}", header.meta()),
            format!("{:?}", full.meta),
            "{name}"
        );
        assert_eq!(header.meta().patient_id, full.meta.patient_id, "{name}");
        assert_eq!(header.frames() as usize, full.frames.len(), "{name}");
        assert!(budget.reserved.lock().expect("lock").is_empty(), "{name}");
        let decoded = header.decode_pixels(Some(&budget)).expect("decodes");
        assert_eq!(decoded.frames, full.frames, "{name}");
        assert_eq!(
            *budget.reserved.lock().expect("lock"),
            vec![full.frames.len() as u64 * full.frames[0].samples().as_bytes().len() as u64],
            "{name}"
        );

        // The codestream's header is intact but everything from its first tile / scan on is garbage:
        // the header phase accepts it (it decodes no pixel), the pixel phase rejects it, named.
        let start = find_marker(&bytes, 0, soc);
        let from = find_marker(&bytes, start, scan);
        let mut broken = bytes.clone();
        // (the garbage stops short of the end: the fragment and sequence delimiters stay intact)
        let end = (from + 2048).min(broken.len() - 16);
        broken[from..end].fill(0x5A);
        let header =
            read_header(&broken, &Limits::default(), None).expect("header of a broken file");
        assert_eq!(
            format!("{:?}", header.meta()),
            format!("{:?}", full.meta),
            "{name}"
        );
        let r = header.decode_pixels(None).expect_err("pixels are broken");
        assert_eq!(r.error.code(), "pixel_decode", "{name}: {}", r.error);
        assert_eq!(
            r.sop_instance_uid.as_deref(),
            Some(full.meta.sop_instance_uid.as_str())
        );
        assert_eq!(
            r.study_instance_uid.as_deref(),
            Some(full.meta.study_instance_uid.as_str())
        );
        assert_eq!(
            r.series_instance_uid.as_deref(),
            Some(full.meta.series_instance_uid.as_str())
        );
        // and the one-call decode rejects it the same way
        let again = reject(&broken, &Limits::default());
        assert_eq!(again.error.to_string(), r.error.to_string(), "{name}");
        assert_eq!(again.sop_instance_uid, r.sop_instance_uid, "{name}");
    }
}

#[test]
fn a_deflated_instances_header_holds_the_budget_until_it_is_dropped() {
    let file = part10(DEFLATED, &deflate(&dataset(Spec::default(), EXPLICIT_LE)));
    let limits = Limits::default();
    let budget = LiveBudget::default();
    let header = read_header(&file, &limits, Some(&budget)).expect("header");
    assert_eq!(header.meta().sop_instance_uid, "1.2.3.4.5");
    assert_eq!(budget.live.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        *budget.asked.lock().expect("lock"),
        vec![(limits.max_instance_bytes as u64, 0)]
    );
    // skipped (a duplicate): the inflation's share comes back, and the decoded size was never asked for
    drop(header);
    assert_eq!(budget.live.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!(budget.asked.lock().expect("lock").len(), 1);

    // decoded: the share comes back before the decoded size is asked for
    let header = read_header(&file, &limits, Some(&budget)).expect("header");
    let d = header.decode_pixels(Some(&budget)).expect("decodes");
    assert_eq!(
        budget.asked.lock().expect("lock")[1..],
        [(limits.max_instance_bytes as u64, 0), (2 * 3 * 2, 0)]
    );
    assert_eq!(budget.live.load(std::sync::atomic::Ordering::SeqCst), 1);
    drop(d);
    assert_eq!(budget.live.load(std::sync::atomic::Ordering::SeqCst), 0);

    // a plain data set's header holds nothing
    let plain = LiveBudget::default();
    let bytes = build(Spec::default());
    drop(read_header(&bytes, &limits, Some(&plain)).expect("header"));
    assert!(plain.asked.lock().expect("lock").is_empty());
}

#[test]
fn a_header_can_move_to_another_thread() {
    // the service reads the header, hands the metadata to its bookkeeping, and may decode elsewhere
    fn send<T: Send>(_: &T) {}
    let bytes = build(Spec::default());
    let header = read_header(&bytes, &Limits::default(), None).expect("header");
    send(&header);
    let d = std::thread::scope(|s| s.spawn(move || header.decode_pixels(None)).join())
        .expect("thread")
        .expect("decodes");
    assert_eq!(d.frames[0].samples().len(), 6);
}

/// A frame's values as pydicom's `pixel_array` gives them.
fn values(f: &Frame) -> Vec<f32> {
    f.samples().values().collect()
}

/// Native little endian Pixel Data is not copied: read from a `Bytes` message with
/// `decode_pixels_sharing`, the frames are slices of that message (2 bytes a sample, as stored); the
/// same file read with `decode_pixels` owns its copy, and both give the same values.
#[test]
fn native_little_endian_frames_are_slices_of_the_message() {
    let message = bytes::Bytes::from(build(Spec::default()));
    let limits = Limits::default();
    let shared = read_header(&message, &limits, None)
        .expect("header")
        .decode_pixels_sharing(&message, None)
        .expect("decodes");
    let stored = shared.frames[0].samples().as_bytes();
    assert_eq!(stored.len(), 2 * 3 * 2, "2x3 samples of 2 bytes, as stored");
    let (start, end) = (
        message.as_ptr() as usize,
        message.as_ptr() as usize + message.len(),
    );
    let at = stored.as_ptr() as usize;
    assert!(
        at >= start && at + stored.len() <= end,
        "the frame is the message's memory"
    );
    let copied = decode_instance(&message, &limits).expect("decodes");
    let own = copied.frames[0].samples().as_bytes().as_ptr() as usize;
    assert!(own < start || own >= end, "decode_pixels copies");
    assert_eq!(
        values(&shared.frames[0]),
        [0.0, 100.0, 200.0, 300.0, 400.0, 500.0]
    );
    assert_eq!(shared.frames, copied.frames);
}
