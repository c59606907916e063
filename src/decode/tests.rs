//! Error-path and small-format tests with in-memory instances.

use super::*;
use dicom::core::{DataElement, PrimitiveValue, VR};
use dicom::object::{FileMetaTableBuilder, InMemDicomObject};

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
        }
    }
}

fn build(s: Spec) -> Vec<u8> {
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
    put_str(&mut obj, tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4.5");
    put_str(&mut obj, tags::STUDY_INSTANCE_UID, VR::UI, "1.2.3.4");
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
    let file = obj
        .with_meta(FileMetaTableBuilder::new().transfer_syntax(EXPLICIT_LE))
        .expect("meta");
    let mut out = Vec::new();
    file.write_all(&mut out).expect("write");
    out
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
        d.meta.window,
        Some(Window {
            center: 40.0,
            width: 400.0
        })
    );
    assert_eq!(d.meta.pixel_spacing, Some([0.5, 0.25]));
    assert_eq!(d.meta.rescale_slope, 1.0);
    assert_eq!(d.frames.len(), 1);
    assert_eq!(
        d.frames[0].pixels,
        vec![0.0, 100.0, 200.0, 300.0, 400.0, 500.0]
    );
    assert_eq!((d.frames[0].min, d.frames[0].max), (0.0, 500.0));
    // patient id is present but redacted from Debug output
    assert_eq!(d.meta.patient_id.as_deref(), Some("SECRET-ID"));
    assert!(!format!("{:?}", d.meta).contains("SECRET"));
}

#[test]
fn accepts_bytes_without_preamble() {
    let bytes = build(Spec::default());
    let d = decode_instance(&bytes[128..], &Limits::default()).expect("decodes");
    assert_eq!(d.frames[0].pixels.len(), 6);
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
        d.frames[0].pixels,
        vec![-1.0, -2048.0, 2047.0, 1.0, 0.0, 5.0]
    );
    assert_eq!((d.frames[0].min, d.frames[0].max), (-2048.0, 2047.0));
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
    assert_eq!(d.frames[0].pixels, vec![1.0, 10.0, 100.0, 2.0, 20.0, 200.0]);
    assert_eq!(d.frames[1].pixels, vec![3.0, 30.0, 130.0, 4.0, 40.0, 140.0]);
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
        d.frames[0].pixels,
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
            limit: 10
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
        max_decoded_bytes: 3599,
        ..Limits::default()
    };
    let e = err(&bytes, &limits);
    assert_eq!(e.code(), "decoded_too_large");
    assert!(e.to_string().contains("3600 bytes"), "{e}");
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
    let got: Vec<Vec<f32>> = d.frames.iter().map(|f| f.pixels.clone()).collect();
    assert_eq!(
        got,
        vec![
            vec![1.0, 0.0, 1.0],
            vec![1.0, 0.0, 1.0],
            vec![0.0, 1.0, 1.0]
        ]
    );
}
