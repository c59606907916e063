//! Per-stage throughput on real files: decode of the bundled sample study (real CT-derived 512² slices)
//! in each transfer syntax `radstream bench load` builds (explicit VR little endian, JPEG-LS, JPEG 2000,
//! RLE; JPEG 2000 is encoded by pydicom, skipped without the oracle venv), preprocessing on the CPU
//! reference vs the WGSL path side by side per output size (the bundled model's 64², the realistic
//! model's 256², native 512²), scoring per batch size for the bundled model and the realistic 256² CNN,
//! and the whole stream over loopback. `cargo bench --bench pipeline`; compare the lines of one run,
//! not numbers across machines.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use radstream::{
    bench::{cnn, study},
    client::{self, Source},
    config::{Config, PreprocessBackend},
    decode::{decode_instance, DecodedInstance, Limits},
    inference::{self, ModelSession},
    model::ModelPackage,
    preprocess::{CpuPreprocessor, GpuPreprocessor, Preprocessor, SliceView},
    server,
};

fn sample() -> Vec<Vec<u8>> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/lesion-demo/sample-study");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("sample study")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect()
}

fn views(decoded: &[DecodedInstance]) -> Vec<SliceView<'_>> {
    decoded
        .iter()
        .flat_map(|d| (0..d.frames.len()).filter_map(move |i| SliceView::of(d, i)))
        .collect()
}

fn stages(c: &mut Criterion) {
    let files = sample();
    let limits = Limits::default();
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(files.len() as u64));
    g.bench_function("sample_study", |b| {
        b.iter(|| {
            for f in &files {
                black_box(decode_instance(black_box(f), &limits).expect("decode"));
            }
        })
    });
    // The sample's 12 slices in each syntax, as the load generator builds them.
    let dir = tempfile::tempdir().expect("tempdir");
    for syntax in [
        study::Syntax::Explicit,
        study::Syntax::JpegLs,
        study::Syntax::J2k,
        study::Syntax::Rle,
    ] {
        let series = match study::build(&dir.path().join(syntax.name()), None, 12, &[syntax]) {
            Ok(mut s) => s.remove(0),
            Err(e) => {
                eprintln!("{syntax} not measured: {e}");
                continue;
            }
        };
        let slices: Vec<Vec<u8>> = (0..series.len()).map(|i| series.slice(0, i)).collect();
        g.bench_function(BenchmarkId::new("syntax", syntax.name()), |b| {
            b.iter(|| {
                for f in &slices {
                    black_box(decode_instance(black_box(f), &limits).expect("decode"));
                }
            })
        });
    }
    g.finish();

    let decoded: Vec<DecodedInstance> = files
        .iter()
        .map(|f| decode_instance(f, &limits).expect("decode"))
        .collect();
    let package = ModelPackage::embedded_default().expect("model");
    let spec = package.manifest.preprocess_spec();
    let per = (spec.channels * spec.height * spec.width) as usize;
    let views = views(&decoded);
    let mut out = vec![0.0f32; views.len() * per];
    let mut g = c.benchmark_group("preprocess");
    g.throughput(Throughput::Elements(views.len() as u64));
    let mut cpu = CpuPreprocessor;
    g.bench_function(BenchmarkId::new("cpu", views.len()), |b| {
        b.iter(|| {
            cpu.preprocess(&spec, black_box(&views), &mut out)
                .expect("cpu")
        })
    });
    let mut gpu = GpuPreprocessor::new()
        .map_err(|e| eprintln!("no wgpu adapter, GPU preprocessing not measured: {e}"))
        .ok();
    if let Some(gpu) = gpu.as_mut() {
        g.bench_function(BenchmarkId::new("gpu", views.len()), |b| {
            b.iter(|| {
                gpu.preprocess(&spec, black_box(&views), &mut out)
                    .expect("gpu")
            })
        });
    }
    g.finish();
    // Per output size: the 12 slices of 512² to 64² (bundled model), 256² (the realistic model) and
    // 512² (native: an overlay's windowing), CPU and WGSL side by side.
    let mut g = c.benchmark_group("preprocess_size");
    g.throughput(Throughput::Elements(views.len() as u64));
    for side in [64u32, 256, 512] {
        let sized = radstream::preprocess::PreprocessSpec {
            height: side,
            width: side,
            ..spec.clone()
        };
        let mut out = vec![0.0f32; sized.output_len(views.len())];
        g.bench_function(BenchmarkId::new("cpu", side), |b| {
            b.iter(|| {
                cpu.preprocess(&sized, black_box(&views), &mut out)
                    .expect("cpu")
            })
        });
        if let Some(gpu) = gpu.as_mut() {
            g.bench_function(BenchmarkId::new("gpu", side), |b| {
                b.iter(|| {
                    gpu.preprocess(&sized, black_box(&views), &mut out)
                        .expect("gpu")
                })
            });
        }
    }
    g.finish();

    let env = inference::runtime(&Config::default().ort_library_path())
        .expect("ONNX Runtime (scripts/setup.sh)");
    let mut session = ModelSession::load(env, &package, &Default::default()).expect("session");
    score_batches(c, "score", &mut session, per, 100);
    // The realistic model: a 256² CNN of ~2.4 M parameters (see `radstream bench load --model realistic`).
    let models = tempfile::tempdir().expect("tempdir");
    let cnn_dir = cnn::ensure(models.path()).expect("realistic model");
    let cnn_package = ModelPackage::load_dir(&cnn_dir).expect("realistic model loads");
    let cnn_per = cnn_package.manifest.preprocess_spec().output_len(1);
    let mut cnn_session =
        ModelSession::load(env, &cnn_package, &Default::default()).expect("session");
    score_batches(c, "score_cnn256", &mut cnn_session, cnn_per, 10);
}

/// One model call per batch size (1, 4, 16) of `per` input values a slice.
fn score_batches(
    c: &mut Criterion,
    group: &str,
    session: &mut ModelSession,
    per: usize,
    samples: usize,
) {
    let mut g = c.benchmark_group(group);
    g.sample_size(samples);
    for n in [1usize, 4, 16] {
        let input = vec![0.1f32; n * per];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("batch", n), |b| {
            b.iter(|| session.run(black_box(&input), n).expect("run"))
        });
    }
    g.finish();
}

fn end_to_end(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let files = sample();
    let mut g = c.benchmark_group("analyze_stream");
    g.sample_size(10);
    g.throughput(Throughput::Elements(files.len() as u64));
    for backend in [PreprocessBackend::Cpu, PreprocessBackend::Auto] {
        let config = Config {
            listen: ([127, 0, 0, 1], 0).into(),
            preprocess: backend,
            ..Config::default()
        };
        let server = runtime.block_on(server::start(config)).expect("server");
        let endpoint = server.endpoint();
        g.bench_function(format!("sample_study/{backend:?}").to_lowercase(), |b| {
            b.iter(|| {
                let items = files
                    .iter()
                    .enumerate()
                    .map(|(i, f)| (i.to_string(), f.clone()))
                    .collect();
                runtime
                    .block_on(client::push(
                        &endpoint,
                        Source::Memory(items),
                        64 << 20,
                        |_| {},
                    ))
                    .expect("push")
            })
        });
        runtime.block_on(server.stop()).expect("stop");
    }
    g.finish();
}

criterion_group!(benches, stages, end_to_end);
criterion_main!(benches);
