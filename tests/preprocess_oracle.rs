//! The preprocessing specification, checked three ways on real files no one here wrote: the WGSL shaders
//! (run for real on whatever wgpu adapter exists — lavapipe on a machine without a GPU) against the CPU
//! reference, and the CPU reference against an independent numpy implementation (tests/oracle/spec.py).

mod common;

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use common::*;
use radstream::{
    decode::{decode_instance, Limits, Photometric},
    model::Manifest,
    preprocess::{CpuPreprocessor, GpuPreprocessor, PreprocessSpec, Preprocessor, SliceView},
};
use serde::Deserialize;

const TOLERANCE: f32 = 1e-4;

/// Real files covering every photometric / bit-depth / signedness combination the decoder supports.
fn corpus() -> Vec<PathBuf> {
    let t = pydicom_test_files();
    let d = pydicom_data_files();
    vec![
        t.join("CT_small.dcm"),   // MONOCHROME2, 16-bit signed, rescale
        t.join("MR_small.dcm"),   // MONOCHROME2, 16-bit signed
        d.join("emri_small.dcm"), // MONOCHROME2, 16-bit unsigned, multi-frame
        d.join("RG1_UNCR.dcm"),   // MONOCHROME1, 16-bit unsigned
        d.join("JPGLosslessP14SV1_1s_1f_8b.dcm"), // MONOCHROME2, 8-bit, JPEG lossless
        t.join("JPEG2000.dcm"),   // JPEG 2000, MONOCHROME2 16-bit
        t.join("MR_small_jpeg_ls_lossless.dcm"), // JPEG-LS
        t.join("MR_small_RLE.dcm"), // RLE
        d.join("US1_UNCR.dcm"),   // RGB 8-bit
        d.join("SC_rgb_16bit.dcm"), // RGB 16-bit
        t.join("SC_ybr_full_422_uncompressed.dcm"), // YBR_FULL_422 → RGB
        t.join("image_dfl.dcm"),  // deflated
    ]
}

#[derive(Deserialize)]
struct OracleEntry {
    file: String,
    frame: usize,
    shape: [usize; 3],
    path: String,
}

fn oracle(manifest: &std::path::Path, files: &[PathBuf]) -> Vec<(OracleEntry, Vec<f32>)> {
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new(python())
        .arg(repo().join("tests/oracle/oracle.py"))
        .args(["preprocess", "--manifest"])
        .arg(manifest)
        .arg("--out")
        .arg(out.path())
        .args(files)
        .status()
        .expect("run oracle");
    assert!(status.success(), "oracle preprocess failed");
    let index: Vec<OracleEntry> =
        serde_json::from_slice(&read(&out.path().join("index.json"))).expect("oracle index");
    index
        .into_iter()
        .map(|e| {
            let p = PathBuf::from(&e.path);
            let p = if p.is_absolute() {
                p
            } else {
                out.path().join(p)
            };
            let bytes = read(&p);
            let values = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (e, values)
        })
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check(manifest_path: &std::path::Path) {
    let text = std::fs::read_to_string(manifest_path).expect("manifest");
    let manifest =
        Manifest::parse(&text, &manifest_path.display().to_string()).expect("valid manifest");
    let spec: PreprocessSpec = manifest.preprocess_spec();
    let files = corpus();
    let expected = oracle(manifest_path, &files);
    let mut gpu =
        GpuPreprocessor::new().expect("a wgpu adapter (lavapipe: apt install mesa-vulkan-drivers)");
    let mut cpu = CpuPreprocessor;
    let per = (spec.channels * spec.height * spec.width) as usize;
    let mut combos = BTreeSet::new();
    let mut compared = 0;
    let mut worst_numpy = 0.0f32;
    for file in &files {
        let decoded = decode_instance(&read(file), &Limits::default())
            .unwrap_or_else(|r| panic!("{} must decode: {}", file.display(), r.error));
        let m = &decoded.meta;
        combos.insert(format!(
            "{:?}/{}bit/{}",
            m.photometric,
            m.bits_allocated,
            if m.pixel_representation == 1 {
                "signed"
            } else {
                "unsigned"
            }
        ));
        let views: Vec<SliceView<'_>> = (0..decoded.frames.len())
            .filter_map(|i| SliceView::of(&decoded, i))
            .collect();

        let mut on_cpu = vec![0.0; views.len() * per];
        let mut on_gpu = vec![0.0; views.len() * per];
        cpu.preprocess(&spec, &views, &mut on_cpu).expect("cpu");
        gpu.preprocess(&spec, &views, &mut on_gpu).expect("gpu");
        let name = file.display().to_string();
        let gpu_err = max_abs(&on_gpu, &on_cpu);
        assert!(
            gpu_err <= TOLERANCE,
            "{name}: WGSL vs CPU max abs error {gpu_err}"
        );
        let mine: Vec<&(OracleEntry, Vec<f32>)> =
            expected.iter().filter(|(e, _)| e.file == name).collect();
        assert_eq!(mine.len(), views.len(), "{name}: oracle frames");
        for (entry, values) in mine {
            assert_eq!(
                entry.shape,
                [
                    spec.channels as usize,
                    spec.height as usize,
                    spec.width as usize
                ]
            );
            let ours = &on_cpu[entry.frame * per..(entry.frame + 1) * per];
            let err = max_abs(ours, values);
            worst_numpy = worst_numpy.max(err);
            assert!(
                err <= TOLERANCE,
                "{name} frame {}: CPU vs numpy max abs error {err}",
                entry.frame
            );
            compared += 1;
        }
        println!("{name}: {} frame(s), WGSL-CPU {gpu_err:.2e}", views.len());
    }
    for needed in [
        "Monochrome1",
        "Monochrome2/8bit",
        "Monochrome2/16bit/signed",
        "Monochrome2/16bit/unsigned",
        "Rgb/8bit",
        "Rgb/16bit",
    ] {
        assert!(
            combos.iter().any(|c| c.starts_with(needed)),
            "corpus lacks {needed}: {combos:?}"
        );
    }
    assert!(compared >= files.len());
    println!("{compared} frames: max |CPU - numpy| = {worst_numpy:.2e}");
    let _ = Photometric::Monochrome1;
}

#[test]
fn wgsl_and_cpu_and_numpy_agree_with_the_default_manifest() {
    check(&repo().join("models/lesion-demo/model.toml"));
}

#[test]
fn wgsl_and_cpu_and_numpy_agree_with_a_fixed_window_three_channel_non_square_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.toml");
    std::fs::write(
        &path,
        r#"
[model]
name = "three-channel"
version = "0"
file = "absent.onnx"
[input]
name = "image"
channels = 3
height = 80
width = 96
[preprocess]
window = { center = 40.0, width = 400.0 }
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[outputs]
scores = "scores"
[[labels]]
name = "x"
threshold = 0.5
"#,
    )
    .expect("write manifest");
    check(&path);
}
